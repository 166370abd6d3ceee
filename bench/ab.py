#!/usr/bin/env python
"""The same small scenarios on two checkouts of the project, run in alternation, so that a
change is measured against its parent on the same machine at nearly the same time.

    git worktree add --detach /tmp/before <commit>
    .venv/bin/python bench/ab.py /tmp/before . [--rounds 3] [--duration 8]

Each round starts each checkout's own stack in turn (its ``bench/downloads.py``
``start_stack``: its nginx.conf, its gunicorn.conf.py, its app, with X-Accel delivery, on a
throwaway PostgreSQL database, metadata cache and rate limits in Redis) in a subprocess
that imports from that checkout only, and measures with wrk: raw nginx static (its
``location /static/``: the baseline of the same run), the hot public 4 KiB file (nginx's
fast path) and a password-protected 4 KiB file (the app decides every request). Printed:
each run's req/s and the ratio to that run's static figure, the CPU time gunicorn's and
nginx's processes spent per request (psutil, user + system, over the timed run: unlike
req/s it hardly depends on what else the machine does), then per checkout the best of
its rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Run in a subprocess with the checkout first on sys.path: its bench and vimeo_api only.
ONE_RUN = r"""
import json, os, secrets, shutil, sys, tempfile
from pathlib import Path
root = Path(sys.argv[1]); duration = int(sys.argv[2])
sys.path.insert(0, str(root))
from bench.downloads import start_stack
from bench.harness import API, create_database, delete_redis_keys, drop_database, redis_env, static_path, upload
from bench.measure import wrk, write_wrk_script
from deploy.stack import stop
work = Path(tempfile.mkdtemp(prefix="vimeo-ab-"))
prefix = "vimeo_ab_" + secrets.token_hex(4)
db_url = create_database()
procs = []
try:
    env = {**redis_env(prefix), "VIMEO_TRUSTED_PROXY_COUNT": "1", "VIMEO_UPLOAD_RATE_LIMIT": "1000000/minute",
           "VIMEO_TOKEN_SIGNING_KEYS": json.dumps([secrets.token_hex(32)]),
           "VIMEO_UPLOAD_BYTES_LIMIT": f"{1 << 40}/hour", "VIMEO_MAX_EXPIRES_IN": "null"}
    stack = start_stack(work, db_url, procs, env)
    content = os.urandom(4096)
    public = upload(stack.nginx, content, {"X-Max-Downloads": "0"}, name="public.bin")
    guarded = upload(stack.nginx, os.urandom(4096), {"X-Max-Downloads": "0", "X-Password": "s3cret"}, name="pw.bin")
    script = write_wrk_script(work)
    urls = {
        "static": (stack.nginx + static_path(public["sha256"]), {}),
        "hot public": (f"{stack.nginx}{API}/file/{public['filehash']}", {}),
        "password": (f"{stack.nginx}{API}/file/{guarded['filehash']}", {"X-Password": "s3cret"}),
    }
    import psutil

    def cpu_seconds(pid):
        # user + system CPU of a process and its children (gunicorn's master and workers).
        total = 0.0
        for proc in [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]:
            try:
                times = proc.cpu_times()
                total += times.user + times.system
            except psutil.NoSuchProcess:
                pass
        return total

    result = {}
    for name, (url, headers) in urls.items():
        wrk(url, 2, 32, script, headers)  # warm-up (the fast path's grant, the caches)
        apps_before, nginx_before = cpu_seconds(stack.accel_gunicorn.pid), cpu_seconds(stack.nginx_proc.pid)
        report = wrk(url, duration, 32, script, headers)
        apps, nginx = cpu_seconds(stack.accel_gunicorn.pid) - apps_before, cpu_seconds(stack.nginx_proc.pid) - nginx_before
        assert report["non_2xx_3xx"] == 0 and report["errors"] == 0, (name, report)
        result[name] = report["rps"]
        result[name + " ms"] = (1000 * apps / report["requests"], 1000 * nginx / report["requests"])
    print(json.dumps(result))
finally:
    for proc in reversed(procs):
        stop(proc)
    drop_database(db_url)
    delete_redis_keys(prefix)
    shutil.rmtree(work, ignore_errors=True)
"""


def one_run(root: Path, duration: int) -> dict:
    out = subprocess.run([sys.executable, "-c", ONE_RUN, str(root), str(duration)], cwd=root,
                         capture_output=True, text=True, env={k: v for k, v in os.environ.items()
                                                              if not k.startswith(("VIMEO_", "GUNICORN_"))})
    if out.returncode != 0:
        raise RuntimeError(f"{root}: {out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=8)
    args = parser.parse_args()
    roots = {"before": args.before.resolve(), "after": args.after.resolve()}
    runs: dict[str, list[dict]] = {name: [] for name in roots}
    for round_ in range(1, args.rounds + 1):
        for name, root in roots.items():
            result = one_run(root, args.duration)
            runs[name].append(result)
            print(f"round {round_} {name:6}: " + "  ".join(
                f"{k} {result[k]:,.0f} req/s ({result[k] / result['static']:.2f}x; CPU per request: gunicorn "
                f"{result[k + ' ms'][0]:.2f} ms, nginx {result[k + ' ms'][1]:.3f} ms)"
                for k in ("static", "hot public", "password")), flush=True)
    print("CPU per password download, gunicorn's processes (ms; robust to what else the machine does):")
    for name, results in runs.items():
        print(f"  {name:6} " + ", ".join(f"{r['password ms'][0]:.2f}" for r in results))
    print("best of each (ratio to the same run's static):")
    for name, results in runs.items():
        for scenario in ("hot public", "password"):
            best = max(results, key=lambda r: r[scenario] / r["static"])
            print(f"  {name:6} {scenario:10} {best[scenario]:9,.0f} req/s  {best[scenario] / best['static']:.3f}x static"
                  f" ({best['static']:,.0f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
