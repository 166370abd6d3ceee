#!/usr/bin/env python
"""Where the CPU of one request goes, by process, for the answers the app decides:

    .venv/bin/python bench/cost.py [--duration 5] [--connections 32] [--scenarios a,b]

The stack bench/suite.py measures (bench/downloads.py's start_stack: nginx rendered from
nginx.conf in front of gunicorn with X-Accel delivery, a Celery worker with its own broker,
Prometheus multiprocess metrics, metadata cache and rate limits in Redis, PostgreSQL) plus
the minimal Flask X-Accel baseline behind the same nginx. For each scenario, wrk runs for
``--duration`` seconds while the CPU time of each group of processes is read before and
after (psutil: user + system of every process of the group): gunicorn (the app), nginx,
PostgreSQL (every ``postgres`` process: the server is shared, so run this on a quiet
machine), Redis (every ``redis-server``), the Celery worker, wrk itself. Printed: requests
per second, and each group's CPU milliseconds per request. Unlike req/s on a busy machine,
CPU per request hardly depends on what else runs: it is the cost to cut.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psutil
import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.downloads import start_stack  # noqa: E402
from bench.harness import API, Baselines, create_database, redis_env, tear_down, upload  # noqa: E402
from bench.measure import wrk, write_wrk_script  # noqa: E402

KiB = 1024
LIMITED = "999999999"


def group_cpu(roots: dict[str, list[int]]) -> dict[str, float]:
    """CPU seconds (user + system) of each group: the given pids and their children, plus
    every process named postgres / redis-server / wrk."""
    totals: dict[str, float] = {}
    named = {"postgres": "postgres", "redis-server": "redis", "wrk": "wrk"}
    seen: set[int] = set()
    for group, pids in roots.items():
        for pid in pids:
            try:
                parent = psutil.Process(pid)
                procs = [parent, *parent.children(recursive=True)]
            except psutil.NoSuchProcess:
                continue
            for proc in procs:
                if proc.pid in seen:
                    continue
                seen.add(proc.pid)
                try:
                    t = proc.cpu_times()
                    totals[group] = totals.get(group, 0.0) + t.user + t.system
                except psutil.NoSuchProcess:
                    pass
    for proc in psutil.process_iter(["name", "cpu_times"]):
        group = named.get(proc.info["name"])
        if group and proc.pid not in seen and proc.info["cpu_times"] is not None:
            t = proc.info["cpu_times"]
            totals[group] = totals.get(group, 0.0) + t.user + t.system
    return totals


def top_frames(path: Path, count: int = 25) -> str:
    """The frames with the most samples anywhere on the stack (inclusive), from py-spy's
    collapsed stacks, idle waits left out."""
    inclusive: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        frames = stack.split(";")
        if any(idle in frames[-1] for idle in ("wait (threading", "select (selectors", "_poll", "accept (")):
            continue
        total += int(n)
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + int(n)
    rows = sorted(inclusive.items(), key=lambda item: -item[1])[:count]
    return "\n".join(f"  {n / max(total, 1):6.1%}  {frame[:140]}" for frame, n in rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--scenarios", default="flask,password,limited,token,304,404")
    parser.add_argument("--profile", metavar="FILE",
                        help="also record the app's workers with py-spy during each scenario; "
                             "writes FILE.<scenario>.txt (collapsed stacks) and prints the top frames")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk is not installed: bash scripts/install-nginx wrk")
    work = ROOT / "var" / f"bench-cost-{secrets.token_hex(3)}"
    work.mkdir(parents=True)
    prefix = f"vimeo_bench_{secrets.token_hex(4)}"
    db_url = create_database()
    procs: list = []
    try:
        env = {**redis_env(prefix), "VIMEO_TRUSTED_PROXY_COUNT": "1", "VIMEO_UPLOAD_RATE_LIMIT": "1000000/minute"}
        stack = start_stack(work, db_url, procs, env, celery=True, metrics=True, baselines=True)
        nginx = stack.nginx
        public = upload(nginx, os.urandom(4 * KiB), {"X-Max-Downloads": "0"}, name="public.bin")
        stack.baselines.start(work, stack.storage, stack.accel_env, {"4k": public["sha256"]}, procs)
        pw = upload(nginx, os.urandom(4 * KiB), {"X-Max-Downloads": "0", "X-Password": "s3cret"}, name="pw.bin")
        limited = upload(nginx, os.urandom(4 * KiB), {"X-Max-Downloads": LIMITED}, name="limited.bin")
        token = requests.post(f"{nginx}{API}/file/{limited['filehash']}/tokens", json={"expires_in": 3600},
                              headers={"X-Owner-Token": limited["owner_token"]}, timeout=30).json()["url"]
        scenarios = {
            "flask": (nginx + Baselines.path(Baselines.FLASK, "4k"), {}),
            "password": (f"{nginx}{API}/file/{pw['filehash']}", {"X-Password": "s3cret"}),
            "limited": (f"{nginx}{API}/file/{limited['filehash']}", {}),
            "token": (token, {}),
            "304": (f"{nginx}{API}/file/{public['filehash']}", {"If-None-Match": public["etag"]}),
            "404": (f"{nginx}{API}/file/{secrets.token_hex(16)}", {}),
        }
        roots = {"gunicorn": [stack.accel_gunicorn.pid], "nginx": [stack.nginx_proc.pid],
                 "baseline": [stack.baselines.procs[Baselines.FLASK].pid]}
        if stack.celery_worker is not None:
            roots["celery"] = [stack.celery_worker.pid]
        script = write_wrk_script(work)
        groups = ("gunicorn", "baseline", "nginx", "postgres", "redis", "celery", "wrk")
        print(f"{'scenario':<10} {'req/s':>8}  " + "  ".join(f"{g:>8}" for g in groups) + "   (CPU ms per request)")
        for name in args.scenarios.split(","):
            url, headers = scenarios[name]
            wrk(url, 1, args.connections, script, headers)  # warm-up
            spy = None
            if args.profile:
                spy = subprocess.Popen(
                    [str(Path(sys.executable).with_name("py-spy")), "record", "--pid", str(stack.accel_gunicorn.pid),
                     "--subprocesses", "--format", "raw", "--rate", "250", "--duration", str(args.duration),
                     "--output", f"{args.profile}.{name}.txt", "--nonblocking", "--gil"],
                    stdout=subprocess.DEVNULL, stderr=open(f"{args.profile}.{name}.err", "w"))
            before = group_cpu(roots)
            report = wrk(url, args.duration, args.connections, script, headers)
            after = group_cpu(roots)
            if spy is not None:
                spy.wait(timeout=60)
            n = max(report["requests"], 1)
            costs = {g: (after.get(g, 0) - before.get(g, 0)) / n * 1000 for g in groups}
            rps = report["requests"] / (report["duration_us"] / 1e6)
            print(f"{name:<10} {rps:>8,.0f}  " + "  ".join(f"{costs[g]:>8.3f}" for g in groups)
                  + f"   non-2xx/3xx {report['non_2xx_3xx']}", flush=True)
            if spy is not None:
                print(top_frames(Path(f"{args.profile}.{name}.txt")))
            time.sleep(1)
    finally:
        tear_down(procs, db_url, prefix, work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
