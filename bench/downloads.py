#!/usr/bin/env python
"""Downloads on loopback with wrk, in one run: how close the stack gets to raw nginx.

    .venv/bin/python bench/downloads.py [--duration 10] [--connections 32,16] [--rounds 2]

For a 4 KiB and a 16 MiB file (unlimited downloads, no password) it measures, one after
the other on the same machine:

* ``nginx static``: nginx serving the blob file from a plain ``location /static/`` (no
  app at all: the physical limit of this machine);
* ``stack X-Accel``: ``GET /file/<hash>`` through nginx: the app checks access and
  preconditions, counts the download in PostgreSQL and answers X-Accel-Redirect, nginx
  sends the bytes (with nginx.conf's fast path, nginx answers these public files itself
  once the app has granted them; bench/suite.py's "X-Accel via app" keeps the app on
  every request);
* ``app sends``: the same request to a gunicorn with ``DELIVERY=app`` (no nginx), the app
  streaming the bytes itself.

Both gunicorns run the project's gunicorn.conf.py defaults; nginx is the project's
nginx.conf. It prints req/s, MB/s of file bytes and each figure's ratio to nginx static.

bench/suite.py starts the same stack (``start_stack``) and checks its answers the same
way (``check``) for its download scenarios.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.harness import (  # noqa: E402
    API,
    Baselines,
    WrkScenario,
    app_env,
    create_database,
    drop_database,
    run_rounds,
    start_broker,
    start_celery_worker,
    start_gunicorn,
    start_nginx,
    static_path,
    upload,
)
from bench.measure import MiB, write_wrk_script  # noqa: E402
from deploy.stack import free_port, stop  # noqa: E402

SIZES = {"4 KiB": 4 * 1024, "16 MiB": 16 * MiB}


@dataclass
class Stack:
    nginx: str  # base URL: nginx (nginx.conf plus /static/) in front of the X-Accel gunicorn
    app: str  # base URL: the gunicorn with DELIVERY=app, no nginx
    accel_gunicorn: subprocess.Popen
    app_gunicorn: subprocess.Popen
    nginx_proc: subprocess.Popen
    storage: Path
    log_dir: Path  # nginx's logs (access.log)
    accel_env: dict  # the X-Accel gunicorn's environment
    celery_worker: subprocess.Popen | None = None
    baselines: Baselines | None = None  # rendered into nginx; started by Baselines.start


def start_stack(work: Path, db_url: str, procs: list, env_extra: dict | None = None,
                max_body_size: int = 16 * MiB, *, celery: bool = False, metrics: bool = False,
                baselines: bool = False) -> Stack:
    """On a migrated database: gunicorn with ``VIMEO_DELIVERY=accel`` and the upload
    offload behind nginx (the project's nginx.conf plus plain ``location /static/`` and
    ``/static-nolog/`` on the blobs), and a second gunicorn with ``VIMEO_DELIVERY=app``;
    both on one storage directory and the project's gunicorn.conf.py defaults. As
    ``make stack`` runs it, on request: ``celery``, a broker (a redis-server of the run's
    own, see start_broker) and a Celery worker, so releases are queued as in production
    rather than run in the request; ``metrics``, Prometheus multiprocess mode (each
    gunicorn its own ``PROMETHEUS_MULTIPROC_DIR``). ``baselines``: nginx gets the
    upstreams and locations of bench/baselines/' apps (``Stack.baselines.start`` starts
    them). Every process goes into ``procs`` (the caller stops them)."""
    storage = work / "storage"
    nginx_port, accel_port, app_port = free_port(), free_port(), free_port()
    public = f"http://127.0.0.1:{nginx_port}"
    extra = {"VIMEO_MAX_UPLOAD_SIZE": str(max_body_size), "VIMEO_UPLOAD_BYTES_LIMIT": f"{1 << 40}/hour",
             **(env_extra or {})}
    if celery:
        extra["VIMEO_BROKER_URL"] = start_broker(work, procs)

    def metrics_dir(port: int) -> dict:
        return {"PROMETHEUS_MULTIPROC_DIR": str(work / f"prometheus-{port}")} if metrics else {}

    accel_env = app_env(db_url, storage, public, f"127.0.0.1:{accel_port}",
                        VIMEO_DELIVERY="accel", VIMEO_UPLOAD_OFFLOAD="1", **extra, **metrics_dir(accel_port))
    direct_env = app_env(db_url, storage, public, f"127.0.0.1:{app_port}", VIMEO_DELIVERY="app", **extra,
                         **metrics_dir(app_port))
    accel = start_gunicorn(accel_env, work / f"gunicorn-{accel_port}.log", procs)
    direct = start_gunicorn(direct_env, work / f"gunicorn-{app_port}.log", procs)
    worker = start_celery_worker(accel_env, work / "celery-worker.log", procs) if celery else None
    apps = Baselines() if baselines else None
    nginx = start_nginx(work, "stack", nginx_port, accel_env["GUNICORN_BIND"], storage, accel_env, procs,
                        static=True, max_body_size=max_body_size, baselines=apps)
    return Stack(public, f"http://127.0.0.1:{app_port}", accel, direct, nginx, storage, work / "log-stack",
                 accel_env, worker, apps)


def check(name: str, url: str, content: bytes | None, status: int = 200, headers: dict | None = None) -> requests.Response:
    """One request before a scenario is timed: its status, and its bytes when given."""
    answer = requests.get(url, headers=headers or {}, timeout=120)
    if answer.status_code != status or (content is not None and answer.content != content):
        raise AssertionError(f"{name}: {url} answered {answer.status_code} with {len(answer.content)} bytes "
                             f"(expected {status}{'' if content is None else f' with {len(content)} bytes'})")
    return answer


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per scenario")
    parser.add_argument("--connections", default="32,16", help="wrk connections for 4 KiB, 16 MiB")
    parser.add_argument("--rounds", type=int, default=2,
                        help="run every scenario this many times, round-robin, and keep each one's best "
                             "(other load on the machine then skews one scenario less than another)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs) and print it")
    args = parser.parse_args()
    connections = dict(zip(SIZES, (int(c) for c in args.connections.split(","))))
    if not shutil.which("wrk"):
        sys.exit("wrk is not installed: scripts/install-nginx wrk (make bench-downloads does)")

    load_before = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="vimeo-bench-downloads-"))
    db_url = create_database()
    procs: list = []
    try:
        stack = start_stack(work, db_url, procs)
        script = write_wrk_script(work)

        scenarios = []
        for label, size in SIZES.items():
            content = os.urandom(size)
            body = upload(stack.nginx, content, {"X-Max-Downloads": "0"})
            urls = {
                "nginx static": stack.nginx + static_path(body["sha256"]),
                "stack X-Accel": f"{stack.nginx}{API}/file/{body['filehash']}",
                "app sends": f"{stack.app}{API}/file/{body['filehash']}",
            }
            for name, url in urls.items():
                check(name, url, content)
                scenarios.append(WrkScenario((label, name), url, connections[label], script))
        sizes = dict(SIZES)
        best = run_rounds(scenarios, args.rounds, args.duration, describe=lambda scenario, report: (
            f"{scenario.key[0]:>6}  {scenario.key[1]:<14} {report['rps']:>10.0f} req/s "
            f"{report['rps'] * sizes[scenario.key[0]] / 1e6:>9.1f} MB/s  p99 {report['p99_ms']:.1f} ms  "
            f"non-2xx {report['non_2xx_3xx']}  errors {report['errors']}"))
        print(f"\nmachine: {os.cpu_count()} CPUs (nproc {subprocess.run(['nproc'], capture_output=True, text=True).stdout.strip()}),"
              f" {platform.machine()}, {platform.platform()}")
        print(f"nginx {subprocess.run(['nginx', '-v'], capture_output=True, text=True).stderr.strip().split('/')[-1]},"
              f" wrk {args.duration} s per scenario, 2 threads, loopback, best of {args.rounds} rounds,"
              f" load average before: {' '.join(f'{x:.2f}' for x in load_before)}\n")
        print("| file | scenario | connections | req/s | MB/s | × nginx static | p99 ms | non-2xx |")
        print("|---|---|---:|---:|---:|---:|---:|---:|")
        for (label, name), row in best.items():
            baseline = best[label, "nginx static"]
            print(f"| {label} | {name} | {connections[label]} | {row['rps']:,.0f} | "
                  f"{row['rps'] * SIZES[label] / 1e6:,.1f} | {row['rps'] / baseline['rps']:.2f} | {row['p99_ms']:.1f} | "
                  f"{row['non_2xx_3xx']} |")
    finally:
        for proc in reversed(procs):
            stop(proc)
        drop_database(db_url)
        if args.keep:
            print(f"work directory: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
