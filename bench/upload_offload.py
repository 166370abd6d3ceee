#!/usr/bin/env python
"""A 1 GiB raw upload through nginx with the body offload, against ``dd``.

    .venv/bin/python bench/upload_offload.py [--size-mib 1024] [--runs 3]

nginx (the project's nginx.conf, client_max_body_size raised for the run) writes the body
of ``curl -T`` to ``<storage>/nginx-body/``; gunicorn (``VIMEO_UPLOAD_OFFLOAD=1``) hashes
that file, fsyncs it and renames it into ``blobs/``. The figure is the client's wall time
from the first byte sent to the 201, as MB/s, next to ``dd if=/dev/zero bs=1M
conv=fsync`` writing the same size into the same directory. The gunicorn workers' and
nginx workers' RSS is sampled every 10 ms with psutil; the peak is printed.

bench/suite.py calls ``upload_through_nginx`` for its offload row (and downloads the
uploaded file afterwards).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from sqlalchemy import create_engine, text

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.harness import API, app_env, create_database, drop_database, start_gunicorn, start_nginx  # noqa: E402
from bench.measure import MiB, PeakRSS, dd_seconds, make_source  # noqa: E402
from deploy.stack import BODY_DIR, free_port, stop  # noqa: E402


def upload_through_nginx(base: str, source: Path, sha256: str, storage: Path, app_pid: int, nginx_pid: int,
                         headers: dict | None = None) -> dict:
    """``curl -T source`` to nginx's ``/upload/``; the client's wall time to the 201, the
    peak RSS of gunicorn's and nginx's workers meanwhile, and the 201's JSON. Checks that
    the stored blob has the source's size and SHA-256 and that nginx left no body file."""
    size = source.stat().st_size
    app_rss, nginx_rss = PeakRSS(app_pid), PeakRSS(nginx_pid)
    app_rss.start()
    nginx_rss.start()
    argv = ["curl", "-sS", "--fail-with-body", "-T", str(source), "-H", "Expect:"]
    for name, value in (headers or {}).items():
        argv += ["-H", f"{name}: {value}"]
    start = time.monotonic()
    try:
        out = subprocess.run([*argv, f"{base}{API}/upload/big.bin"], check=True, capture_output=True,
                             text=True).stdout
        seconds = time.monotonic() - start
    finally:
        app_peak, nginx_peak = app_rss.stop(), nginx_rss.stop()
    body = json.loads(out)
    assert body["size"] == size and body["sha256"] == sha256, body
    stored = storage / "blobs" / sha256[:2] / sha256[2:4] / sha256
    assert stored.stat().st_size == size
    assert not any((storage / BODY_DIR).iterdir()), "nginx left a body file"
    return {"seconds": seconds, "mbps": size / seconds / 1e6, "app_peak": app_peak, "nginx_peak": nginx_peak,
            "body": body, "stored": stored}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    size = args.size_mib * MiB

    # On the disk the project lives on (var/ is git-ignored), like a stack's storage.
    work = ROOT / "var" / f"bench-upload-{secrets.token_hex(3)}"
    storage = work / "storage"
    storage.mkdir(parents=True)
    db_url = create_database()
    procs: list = []
    try:
        nginx_port, app_port = free_port(), free_port()
        env = app_env(db_url, storage, f"http://127.0.0.1:{nginx_port}", f"127.0.0.1:{app_port}",
                      VIMEO_DELIVERY="accel", VIMEO_UPLOAD_OFFLOAD="1", VIMEO_MAX_UPLOAD_SIZE=str(2 * size),
                      VIMEO_UPLOAD_BYTES_LIMIT=f"{1 << 40}/hour",
                      GUNICORN_ACCESSLOG="-")
        gunicorn = start_gunicorn(env, work / "gunicorn.log", procs)
        nginx = start_nginx(work, "offload", nginx_port, env["GUNICORN_BIND"], storage, env, procs,
                            max_body_size=2 * size)
        base = f"http://127.0.0.1:{nginx_port}"

        uploads, dds, app_peaks, nginx_peaks = [], [], [], []
        source = work / "source.bin"
        for run in range(1, args.runs + 1):
            sha = make_source(source, size)
            dds.append(args.size_mib * MiB / dd_seconds(work, args.size_mib) / 1e6)
            result = upload_through_nginx(base, source, sha, storage, gunicorn.pid, nginx.pid, {"X-Max-Downloads": "0"})
            uploads.append(result["mbps"])
            app_peaks.append(result["app_peak"])
            nginx_peaks.append(result["nginx_peak"])
            print(f"  run {run}: upload {uploads[-1]:.0f} MB/s, dd {dds[-1]:.0f} MB/s, "
                  f"gunicorn worker peak RSS {result['app_peak'] / MiB:.1f} MiB, "
                  f"nginx worker {result['nginx_peak'] / MiB:.1f} MiB",
                  file=sys.stderr, flush=True)
            # The next run starts from an empty storage: no deduplication, same disk use.
            result["stored"].unlink()
            engine = create_engine(db_url)
            with engine.begin() as conn:
                conn.execute(text("TRUNCATE files, blobs RESTART IDENTITY CASCADE"))
            engine.dispose()
        source.unlink()

        up, base_dd = statistics.median(uploads), statistics.median(dds)
        print(f"\nmachine: nproc {os.cpu_count()}, {platform.machine()}, {platform.platform()}")
        print(f"{args.size_mib} MiB raw upload (curl -T) through nginx with the body offload, {args.runs} runs, medians\n")
        print("| what | MB/s | × dd | peak RSS |")
        print("|---|---:|---:|---:|")
        print(f"| dd if=/dev/zero bs=1M conv=fsync, same directory | {base_dd:,.0f} | 1.00 | |")
        print(f"| upload through nginx (offload) | {up:,.0f} | {up / base_dd:.2f} | gunicorn worker "
              f"{max(app_peaks) / MiB:.1f} MiB, nginx worker {max(nginx_peaks) / MiB:.1f} MiB |")
    finally:
        for proc in reversed(procs):
            stop(proc)
        drop_database(db_url)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
