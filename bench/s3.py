"""The stack with its bytes in an S3 bucket, for bench/suite.py's S3 rows (issue 14).

``start_s3_stack`` starts, on free loopback ports, a local S3 server (``rclone serve s3``,
deploy/s3server.py, its objects on the project's disk) and the stack on it: gunicorn
(``VIMEO_DELIVERY=accel``, the upload offload, ``STORAGE_URL`` on the bucket) behind nginx
rendered from nginx.conf with the bucket's locations. ``upload_to_s3_through_nginx``
times a large ``curl -T`` through it with the app's peak RSS, as bench/upload_offload.py
does for local disk. Run alone, it measures only that upload (bench/suite.py's S3 upload
row, without the rest of the suite):

    .venv/bin/python -m bench.s3 [--size-mib 1024] [--runs 2] [--workers 1]

Each run uploads fresh random bytes; printed per run: MB/s against ``dd conv=fsync`` of
the same size into the same directory just before it, and the peak RSS of the gunicorn
worker (sampled every 10 ms) next to its RSS before the first upload.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench.harness import API, app_env, start_gunicorn, start_nginx
from bench.measure import MiB, PeakRSS, dd_seconds, make_source
from deploy.s3server import S3Server, start_rclone
from deploy.stack import BODY_DIR, free_port, s3_nginx_settings


@dataclass
class S3Stack:
    nginx: str  # base URL of its nginx
    gunicorn_proc: subprocess.Popen
    nginx_proc: subprocess.Popen
    server: S3Server
    prefix: str
    scratch: Path  # the node's STORAGE_DIR: nginx's body files, grants

    def presigned(self, sha256: str, expires_in: int = 3600) -> str:
        """The S3 server's own GET of a blob (what nginx fetches), valid ``expires_in``."""
        from vimeo_api.storage_s3 import S3Storage, parse_storage_url

        settings = self.server.settings(self.prefix)
        bucket, prefix = parse_storage_url(settings["STORAGE_URL"])
        store = S3Storage(bucket, prefix, endpoint_url=settings["S3_ENDPOINT_URL"], region=settings["S3_REGION"],
                          access_key_id=settings["S3_ACCESS_KEY_ID"], secret_access_key=settings["S3_SECRET_ACCESS_KEY"])
        return store.presigned_get(sha256, expires_in)

    def object_size(self, sha256: str) -> int:
        key = f"{self.prefix}/blobs/{sha256[:2]}/{sha256[2:4]}/{sha256}"
        return int(self.server.client().head_object(Bucket=self.server.bucket, Key=key)["ContentLength"])


def start_s3_stack(work: Path, db_url: str, procs: list, env_extra: dict, max_body_size: int) -> S3Stack:
    """rclone, gunicorn and nginx as described above; every process goes into ``procs``
    (the caller stops them; rclone is stopped through its ``S3Server`` too)."""
    server = start_rclone(work / "s3-data", log_path=work / "rclone.log")
    procs.append(server.proc)
    prefix = "bench"
    scratch = work / "s3-scratch"
    nginx_port, app_port = free_port(), free_port()
    env = app_env(db_url, scratch, f"http://127.0.0.1:{nginx_port}", f"127.0.0.1:{app_port}",
                  VIMEO_DELIVERY="accel", VIMEO_UPLOAD_OFFLOAD="1", VIMEO_MAX_UPLOAD_SIZE=str(max_body_size),
                  **server.env(prefix), **env_extra)
    gunicorn = start_gunicorn(env, work / f"gunicorn-s3-{app_port}.log", procs)
    nginx = start_nginx(work, "s3", nginx_port, env["GUNICORN_BIND"], scratch, env, procs,
                        max_body_size=max_body_size, s3=s3_nginx_settings(env))
    return S3Stack(f"http://127.0.0.1:{nginx_port}", gunicorn, nginx, server, prefix, scratch)


def upload_to_s3_through_nginx(stack: S3Stack, source: Path, sha256: str, headers: dict | None = None,
                               form: bool = False) -> dict:
    """``curl -T source`` to the S3 stack's ``/upload/`` (``form``: ``curl -F`` to ``PUT
    /file``): the client's wall time to the 201 and the peak RSS of gunicorn's and nginx's
    workers meanwhile. Checks the 201 (size, SHA-256), the object's size in the bucket,
    and that nginx left no body file."""
    size = source.stat().st_size
    app_rss, nginx_rss = PeakRSS(stack.gunicorn_proc.pid), PeakRSS(stack.nginx_proc.pid)
    app_rss.start()
    nginx_rss.start()
    if form:
        argv, url = ["curl", "-sS", "--fail-with-body", "-X", "PUT", "-F", f"file=@{source}", "-H", "Expect:"], \
            f"{stack.nginx}{API}/file"
    else:
        argv, url = ["curl", "-sS", "--fail-with-body", "-T", str(source), "-H", "Expect:"], \
            f"{stack.nginx}{API}/upload/big.bin"
    for name, value in (headers or {}).items():
        argv += ["-H", f"{name}: {value}"]
    start = time.monotonic()
    try:
        out = subprocess.run([*argv, url], check=True, capture_output=True, text=True).stdout
        seconds = time.monotonic() - start
    finally:
        app_peak, nginx_peak = app_rss.stop(), nginx_rss.stop()
    body = json.loads(out)
    assert body["size"] == size and body["sha256"] == sha256, body
    assert stack.object_size(sha256) == size
    assert not any((stack.scratch / BODY_DIR).iterdir()), "nginx left a body file"
    return {"seconds": seconds, "mbps": size / seconds / 1e6, "app_peak": app_peak, "nginx_peak": nginx_peak,
            "body": body}


def main(argv: list[str] | None = None) -> int:
    import psutil

    from bench.harness import create_database, redis_env, tear_down, upload

    parser = argparse.ArgumentParser(description="A large raw upload through nginx into the bucket.")
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--workers", type=int, default=1, help="gunicorn workers")
    parser.add_argument("--load", type=int, default=0, metavar="SECONDS",
                        help="first, wrk on what the suite's S3 rows ask before its upload row "
                             "(hot public 4 KiB, 16 MiB the app decides, hot public 16 MiB), SECONDS each")
    parser.add_argument("--form", action="store_true", help="curl -F to PUT /file instead of curl -T")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="more environment for gunicorn (e.g. MALLOC_ARENA_MAX=2)")
    args = parser.parse_args(argv)
    size = args.size_mib * MiB
    work = Path(tempfile.mkdtemp(prefix="vimeo-bench-s3-"))
    prefix = f"vimeo_bench_s3_{secrets.token_hex(4)}"
    db_url = create_database()
    procs: list = []
    try:
        env = {**redis_env(prefix), "GUNICORN_WORKERS": str(args.workers),
               "VIMEO_UPLOAD_BYTES_LIMIT": f"{1 << 40}/hour", **dict(item.split("=", 1) for item in args.env)}
        stack = start_s3_stack(work, db_url, procs, env, max_body_size=2 * size)
        if args.load:
            # What the suite's S3 rows ask of the stack before its upload row: hot public
            # 4 KiB (32 connections), 16 MiB the app decides and hot public 16 MiB (16).
            from bench.measure import write_wrk_script, wrk

            script = write_wrk_script(work, "load.lua")
            for what, size_, limit, connections in (("hot public 4 KiB", 4096, "0", 32),
                                                    ("16 MiB the app decides", 16 * MiB, "999999999", 16),
                                                    ("hot public 16 MiB", 16 * MiB, "0", 16)):
                answer = upload(stack.nginx, os.urandom(size_), {"X-Max-Downloads": limit}, name="load.bin")
                report = wrk(f"{stack.nginx}{API}/file/{answer['filehash']}", args.load, connections, script)
                sizes = " ".join(f"{worker.memory_info().rss / MiB:.1f}"
                                 for worker in psutil.Process(stack.gunicorn_proc.pid).children())
                print(f"load: {what}, {report['rps']:.0f} req/s for {args.load} s; workers' RSS now {sizes} MiB",
                      flush=True)
        # One small upload first, as any worker has served before a large one: the
        # store's client exists, the database and Redis connections are open.
        upload(stack.nginx, b"warm-up", {"X-Max-Downloads": "0"}, name="warm.bin")
        workers = psutil.Process(stack.gunicorn_proc.pid).children()
        before = max(worker.memory_info().rss for worker in workers)
        print(f"S3 {'multipart form' if args.form else 'raw'} upload of {args.size_mib} MiB through nginx into "
              f"rclone's bucket, "
              f"{args.workers} gunicorn worker(s); worker RSS before: {before / MiB:.1f} MiB", flush=True)
        source = work / "source.bin"
        for run in range(1, args.runs + 1):
            sha256 = make_source(source, size)
            dd = size / dd_seconds(work, args.size_mib) / 1e6
            result = upload_to_s3_through_nginx(stack, source, sha256, {"X-Max-Downloads": "0"}, form=args.form)
            print(f"run {run}: {result['mbps']:.0f} MB/s ({result['seconds']:.2f} s), dd {dd:.0f} MB/s, "
                  f"ratio {result['mbps'] / dd:.2f}; gunicorn worker peak RSS {result['app_peak'] / MiB:.1f} MiB, "
                  f"nginx worker peak {result['nginx_peak'] / MiB:.1f} MiB", flush=True)
        source.unlink()
    finally:
        tear_down(procs, db_url, prefix, work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
