#!/usr/bin/env python
"""Downloads on loopback with wrk, in one run: how close the stack gets to raw nginx.

    .venv/bin/python bench/downloads.py [--duration 10] [--connections 32,16] [--rounds 2]

For a 4 KiB and a 16 MiB file (unlimited downloads, no password) it measures, one after
the other on the same machine:

* ``nginx static``: nginx serving the blob file from a plain ``location /static/`` (no
  app at all: the physical limit of this machine);
* ``stack X-Accel``: ``GET /file/<hash>`` through nginx: the app checks access and
  preconditions, counts the download in PostgreSQL and answers X-Accel-Redirect, nginx
  sends the bytes;
* ``app sends``: the same request to a gunicorn with ``DELIVERY=app`` (no nginx), the app
  streaming the bytes itself.

Both gunicorns run the project's gunicorn.conf.py defaults; nginx is the project's
nginx.conf. It prints req/s, MB/s of file bytes and each figure's ratio to nginx static.
"""

from __future__ import annotations

import argparse
import os
import platform
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import requests
from sqlalchemy import create_engine, text

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.measure import MiB, wrk, write_wrk_script  # noqa: E402
from deploy.stack import (  # noqa: E402
    NginxSettings,
    check_nginx_conf,
    free_port,
    gunicorn_command,
    nginx_command,
    spawn,
    stop,
    wait_for_http,
    write_nginx_conf,
)

API = "/vimeo/api/v1.0"
PG_ADMIN_URL = os.environ.get("VIMEO_BENCH_PG_ADMIN_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres")
SIZES = {"4 KiB": 4 * 1024, "16 MiB": 16 * MiB}
STATIC = """
        # The benchmark's baseline: the same blob files, served statically.
        location /static/ {
            alias @storage/blobs/;
        }
"""
# wrk prints one JSON line at the end: totals and non-2xx/3xx answers.
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
    db_name = f"vimeo_bench_{secrets.token_hex(4)}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{db_name}"'))
    db_url = PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + db_name
    procs = []
    try:
        storage = work / "storage"
        nginx_port, accel_port, app_port = free_port(), free_port(), free_port()
        base_env = {k: v for k, v in os.environ.items() if not k.startswith(("VIMEO_", "GUNICORN_"))}
        base_env.update({
            "VIMEO_DATABASE_URL": db_url,
            "VIMEO_STORAGE_DIR": str(storage),
            "VIMEO_PUBLIC_URL": f"http://127.0.0.1:{nginx_port}",
            "VIMEO_EMBEDDED_SWEEP_INTERVAL": "0",
            "GUNICORN_KEEPALIVE": "75",
            "GUNICORN_ACCESSLOG": "/dev/null",  # nginx logs every request; the app its JSON line
        })
        subprocess.run([sys.executable, "manage.py", "db", "upgrade"], cwd=ROOT, env=base_env, check=True,
                       capture_output=True)
        accel_env = {**base_env, "VIMEO_DELIVERY": "accel", "VIMEO_UPLOAD_OFFLOAD": "1",
                     "GUNICORN_BIND": f"127.0.0.1:{accel_port}"}
        app_env = {**base_env, "VIMEO_DELIVERY": "app", "GUNICORN_BIND": f"127.0.0.1:{app_port}"}
        for env in (accel_env, app_env):
            procs.append(spawn(gunicorn_command(), env, work / f"gunicorn-{env['GUNICORN_BIND'][-5:]}.log"))
            wait_for_http(f"http://{env['GUNICORN_BIND']}/healthz", procs=[procs[-1]])
        settings = NginxSettings(
            listen=f"127.0.0.1:{nginx_port}", app_address=accel_env["GUNICORN_BIND"], storage_dir=str(storage),
            runtime_dir=str(work / "nginx"), log_dir=str(work / "log"),
            extra_locations=STATIC.replace("@storage", str(storage)),
        )
        conf = write_nginx_conf(settings)
        check_nginx_conf(conf, settings)
        procs.append(spawn(nginx_command(conf, settings), base_env, work / "nginx.out"))
        nginx = f"http://127.0.0.1:{nginx_port}"
        wait_for_http(nginx + "/healthz", procs=[procs[-1]])
        script = write_wrk_script(work)

        scenarios = []
        for label, size in SIZES.items():
            content = os.urandom(size)
            up = requests.put(f"{nginx}{API}/upload/bench.bin", data=content, headers={"X-Max-Downloads": "0"}, timeout=60)
            up.raise_for_status()
            body = up.json()
            sha = body["sha256"]
            urls = {
                "nginx static": f"{nginx}/static/{sha[:2]}/{sha[2:4]}/{sha}",
                "stack X-Accel": f"{nginx}{API}/file/{body['filehash']}",
                "app sends": f"http://{app_env['GUNICORN_BIND']}{API}/file/{body['filehash']}",
            }
            for name, url in urls.items():
                check = requests.get(url, timeout=60)
                assert check.status_code == 200 and check.content == content, (name, check.status_code)
                scenarios.append((label, size, name, url))
        best: dict[tuple[str, str], dict] = {}
        for round_ in range(1, args.rounds + 1):
            for label, size, name, url in scenarios:
                wrk(url, 2, connections[label], script)  # warm-up
                report = wrk(url, args.duration, connections[label], script)
                report.update(size=label, scenario=name, connections=connections[label],
                              mbps=report["rps"] * size / 1e6)
                print(f"  round {round_}  {label:>6}  {name:<14} {report['rps']:>10.0f} req/s {report['mbps']:>9.1f} MB/s"
                      f"  p99 {report['p99_ms']:.1f} ms  non-2xx {report['non_2xx_3xx']}  errors {report['errors']}",
                      file=sys.stderr, flush=True)
                if (label, name) not in best or report["rps"] > best[label, name]["rps"]:
                    best[label, name] = report
        rows = list(best.values())
        print(f"\nmachine: {os.cpu_count()} CPUs (nproc {subprocess.run(['nproc'], capture_output=True, text=True).stdout.strip()}),"
              f" {platform.machine()}, {platform.platform()}")
        print(f"nginx {subprocess.run(['nginx', '-v'], capture_output=True, text=True).stderr.strip().split('/')[-1]},"
              f" wrk {args.duration} s per scenario, 2 threads, loopback, best of {args.rounds} rounds,"
              f" load average before: {' '.join(f'{x:.2f}' for x in load_before)}\n")
        print("| file | scenario | connections | req/s | MB/s | × nginx static | p99 ms | non-2xx |")
        print("|---|---|---:|---:|---:|---:|---:|---:|")
        for row in rows:
            baseline = next(r for r in rows if r["size"] == row["size"] and r["scenario"] == "nginx static")
            print(f"| {row['size']} | {row['scenario']} | {row['connections']} | {row['rps']:,.0f} | "
                  f"{row['mbps']:,.1f} | {row['rps'] / baseline['rps']:.2f} | {row['p99_ms']:.1f} | {row['non_2xx_3xx']} |")
    finally:
        for proc in reversed(procs):
            stop(proc)
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)'))
        admin.dispose()
        if args.keep:
            print(f"work directory: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
