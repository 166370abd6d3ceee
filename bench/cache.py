#!/usr/bin/env python
"""The metadata cache on loopback with wrk, in one run: what 304 revalidations and
repeated 404s gain from answering without SQL.

    .venv/bin/python bench/cache.py [--duration 10] [--connections 32] [--rounds 2]

Two stacks side by side, each nginx (the project's nginx.conf) in front of gunicorn (the
project's gunicorn.conf.py defaults) on one PostgreSQL database:

* ``cached``: the stack's settings, metadata cached in Redis (``RedisCache``);
* ``uncached``: the same with ``CACHE_TYPE=NullCache``, every request reads PostgreSQL.

For one small (4 KiB) unlimited file without a password, and an unknown filehash, it
measures:

* ``200 download``: ``GET /file/<hash>``: the access check (cached or not), the download
  counted by the database's atomic UPDATE, X-Accel-Redirect, nginx sends the bytes (with
  nginx.conf's fast path, nginx answers this public file itself once granted);
* ``304 revalidation``: the same GET with ``If-None-Match`` of the file's ETag;
* ``404 unknown``: ``GET /file/<unknown hash>``.

Every scenario is checked once before it is measured (status, X-Cache) and run
``--rounds`` times round-robin, keeping each one's best. It prints a table with the
ratios the cache is judged by: cached 304 against the 200 download of the same file and
against the uncached 304, and cached 404 against uncached 404.
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

import redis
import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.harness import (  # noqa: E402
    API,
    REDIS_URL,
    WrkScenario,
    app_env,
    create_database,
    delete_redis_keys,
    drop_database,
    redis_env,
    run_rounds,
    start_gunicorn,
    start_nginx,
    upload,
)
from bench.measure import write_wrk_script  # noqa: E402
from deploy.stack import free_port, stop  # noqa: E402


def start_stack(work: Path, name: str, db_url: str, storage: Path, env_extra: dict, procs: list) -> str:
    """gunicorn + nginx for one configuration; returns nginx's base URL."""
    nginx_port, app_port = free_port(), free_port()
    env = app_env(db_url, storage, f"http://127.0.0.1:{nginx_port}", f"127.0.0.1:{app_port}",
                  VIMEO_DELIVERY="accel", VIMEO_UPLOAD_OFFLOAD="1", VIMEO_TRUSTED_PROXY_COUNT="1", **env_extra)
    start_gunicorn(env, work / f"gunicorn-{name}.log", procs)
    start_nginx(work, name, nginx_port, env["GUNICORN_BIND"], storage, env, procs)
    return f"http://127.0.0.1:{nginx_port}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per scenario")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections")
    parser.add_argument("--rounds", type=int, default=2, help="round-robin runs of every scenario (best kept)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs) and print it")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk is not installed: scripts/install-nginx wrk (or apt-get install wrk)")

    load_before = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="vimeo-bench-cache-"))
    prefix = f"vimeo_bench_{secrets.token_hex(4)}"
    db_url = create_database()
    procs: list = []
    try:
        storage = work / "storage"
        shared = redis_env(prefix)
        limits = {k: v for k, v in shared.items() if k.startswith("VIMEO_RATELIMIT_")}
        bases = {
            "cached": start_stack(work, "cached", db_url, storage, shared, procs),
            "uncached": start_stack(work, "uncached", db_url, storage, {
                "VIMEO_CACHE_TYPE": "NullCache", "VIMEO_CACHE_NO_NULL_WARNING": "true", **limits}, procs),
        }
        script = write_wrk_script(work)

        content = os.urandom(4096)
        body = upload(bases["cached"], content, {"X-Max-Downloads": "0"}, name="small.bin")
        file_path, unknown_path = f"{API}/file/{body['filehash']}", f"{API}/file/{'0' * 32}"
        revalidate = {"If-None-Match": body["etag"]}
        scenarios = []
        for config, base in bases.items():
            for name, path, headers, status in [
                ("200 download", file_path, {}, 200),
                ("304 revalidation", file_path, revalidate, 304),
                ("404 unknown", unknown_path, {}, 404),
            ]:
                for _ in range(2):  # the second answer is the one measured: cached if it can be
                    check = requests.get(base + path, headers=headers, timeout=60)
                assert check.status_code == status, (config, name, check.status_code)
                if status == 200:
                    assert check.content == content
                else:
                    expected = "HIT" if config == "cached" else "MISS"
                    assert check.headers.get("X-Cache") == expected, (config, name, check.headers)
                scenarios.append(WrkScenario((config, name), base + path, args.connections, script, headers))

        best = run_rounds(scenarios, args.rounds, args.duration, describe=lambda scenario, report: (
            f"{scenario.key[0]:<8} {scenario.key[1]:<17} {report['rps']:>9.0f} req/s  "
            f"p99 {report['p99_ms']:.1f} ms  non-2xx/3xx {report['non_2xx_3xx']}  errors {report['errors']}"))

        nproc = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
        nginx_version = subprocess.run(["nginx", "-v"], capture_output=True, text=True).stderr.strip().split("/")[-1]
        print(f"\nmachine: {os.cpu_count()} CPUs (nproc {nproc}), {platform.machine()}, {platform.platform()}")
        print(f"nginx {nginx_version}, Redis {redis.Redis.from_url(REDIS_URL).info()['redis_version']},"
              f" wrk {args.duration} s per scenario, {args.connections} connections, 2 threads, loopback,"
              f" best of {args.rounds} rounds, load average before: {' '.join(f'{x:.2f}' for x in load_before)}\n")
        print("| stack | scenario | req/s | p50 ms | p99 ms | errors |")
        print("|---|---|---:|---:|---:|---:|")
        for (config, name), row in best.items():
            print(f"| {config} | {name} | {row['rps']:,.0f} | {row['p50_ms']:.1f} | {row['p99_ms']:.1f} | {row['errors']} |")
        rps = {key: row["rps"] for key, row in best.items()}
        print("\n| ratio | value |")
        print("|---|---:|")
        for label, num, den in [
            ("cached 304 / 200 download (same file, same stack)", ("cached", "304 revalidation"), ("cached", "200 download")),
            ("cached 304 / uncached 304", ("cached", "304 revalidation"), ("uncached", "304 revalidation")),
            ("cached 304 / uncached 200 download", ("cached", "304 revalidation"), ("uncached", "200 download")),
            ("cached 404 / uncached 404", ("cached", "404 unknown"), ("uncached", "404 unknown")),
        ]:
            print(f"| {label} | {rps[num] / rps[den]:.2f}× |")
    finally:
        for proc in reversed(procs):
            stop(proc)
        drop_database(db_url)
        delete_redis_keys(prefix)
        if args.keep:
            print(f"work directory: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
