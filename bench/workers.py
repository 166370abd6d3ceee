#!/usr/bin/env python
"""gunicorn settings for the Python path, side by side: which worker class and count.

    .venv/bin/python bench/workers.py [--duration 5] [--rounds 2]
    make bench-workers

For each gunicorn configuration below it starts the stack (nginx from nginx.conf in front
of gunicorn with X-Accel delivery, on a throwaway PostgreSQL database, cache and limits
in Redis) and runs wrk, 32 connections, on the two requests that always reach the app:

* ``app-decided 4 KiB``: a file with ``X-Max-Downloads: 999999999``: every request is
  checked, counted in PostgreSQL and answered with X-Accel-Redirect;
* ``304 4 KiB``: ``If-None-Match`` of a public file's ETag (metadata from Redis).

The stacks run one after the other and every scenario ``--rounds`` times round-robin
(best kept); raw nginx static of the same 4 KiB blob is measured in each stack as the
baseline. The first configuration is gunicorn.conf.py's default.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.downloads import check, start_stack  # noqa: E402
from bench.harness import API, WrkScenario, create_database, drop_database, redis_env, run_rounds, static_path, upload  # noqa: E402
from bench.measure import write_wrk_script  # noqa: E402
from deploy.stack import stop  # noqa: E402

CONFIGS = {
    "gthread 4 workers x 4 threads (default)": {},
    "gthread 2 workers x 8 threads": {"GUNICORN_WORKERS": "2", "GUNICORN_THREADS": "8"},
    "gthread 3 workers x 2 threads": {"GUNICORN_WORKERS": "3", "GUNICORN_THREADS": "2"},
    "sync 5 workers": {"GUNICORN_WORKER_CLASS": "sync", "GUNICORN_WORKERS": "5"},
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=5, help="seconds per scenario")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk is not installed: scripts/install-nginx wrk")
    load_before = os.getloadavg()
    results = {}
    for name, settings in CONFIGS.items():
        work = Path(tempfile.mkdtemp(prefix="vimeo-bench-workers-"))
        db_url = create_database()
        procs: list = []
        try:
            prefix = "vimeo_bench_workers_" + work.name[-8:]
            stack = start_stack(work, db_url, procs, env_extra={**redis_env(prefix), **settings})
            content = os.urandom(4096)
            public = upload(stack.nginx, content, {"X-Max-Downloads": "0"})
            limited = upload(stack.nginx, content + b"!", {"X-Max-Downloads": "999999999"})
            script = write_wrk_script(work)
            static = stack.nginx + static_path(public["sha256"])
            decided = f"{stack.nginx}{API}/file/{limited['filehash']}"
            etag = {"If-None-Match": public["etag"]}
            revalidate = f"{stack.nginx}{API}/file/{public['filehash']}"
            check("static", static, content)
            check("app-decided", decided, content + b"!")
            check("304", revalidate, None, status=304, headers=etag)
            best = run_rounds([
                WrkScenario("raw nginx static 4 KiB", static, 32, script),
                WrkScenario("app-decided 4 KiB", decided, 32, script),
                WrkScenario("304 4 KiB", revalidate, 32, script, etag),
            ], args.rounds, args.duration, quiet=None)
            results[name] = best
        finally:
            for proc in reversed(procs):
                stop(proc)
            drop_database(db_url)
            shutil.rmtree(work, ignore_errors=True)
    print(f"\nload average before: {' '.join(f'{x:.2f}' for x in load_before)}, after: "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}; wrk {args.duration} s, 32 connections, "
          f"best of {args.rounds} rounds\n")
    print("| gunicorn | app-decided 4 KiB req/s | × static | 304 req/s | × static | static req/s |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, best in results.items():
        base = best["raw nginx static 4 KiB"]["rps"]
        decided, revalidated = best["app-decided 4 KiB"]["rps"], best["304 4 KiB"]["rps"]
        print(f"| {name} | {decided:,.0f} | {decided / base:.3f} | {revalidated:,.0f} | {revalidated / base:.3f} | {base:,.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
