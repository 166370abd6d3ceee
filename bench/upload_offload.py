#!/usr/bin/env python
"""A 1 GiB raw upload through nginx with the body offload, against ``dd``.

    .venv/bin/python bench/upload_offload.py [--size-mib 1024] [--runs 3]

nginx (the project's nginx.conf, client_max_body_size raised for the run) writes the body
of ``curl -T`` to ``<storage>/nginx-body/``; gunicorn (``VIMEO_UPLOAD_OFFLOAD=1``) hashes
that file, fsyncs it and renames it into ``blobs/``. The figure is the client's wall time
from the first byte sent to the 201, as MB/s, next to ``dd if=/dev/zero bs=1M
conv=fsync`` writing the same size into the same directory. The gunicorn workers' and
nginx workers' RSS is sampled every 10 ms with psutil; the peak is printed.
"""

from __future__ import annotations

import argparse
import hashlib
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

from bench.measure import MiB, PeakRSS, dd_seconds  # noqa: E402
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

PG_ADMIN_URL = os.environ.get("VIMEO_BENCH_PG_ADMIN_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres")


def make_source(path: Path, size: int) -> str:
    """Random bytes (no two runs share content, so nothing is deduplicated); their sha256."""
    digest = hashlib.sha256()
    with open(path, "wb") as out:
        left = size
        while left:
            chunk = os.urandom(min(8 * MiB, left))
            digest.update(chunk)
            out.write(chunk)
            left -= len(chunk)
    return digest.hexdigest()


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
    db_name = f"vimeo_bench_{secrets.token_hex(4)}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{db_name}"'))
    db_url = PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + db_name
    procs = []
    try:
        nginx_port, app_port = free_port(), free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("VIMEO_", "GUNICORN_"))}
        env.update({
            "VIMEO_DATABASE_URL": db_url,
            "VIMEO_STORAGE_DIR": str(storage),
            "VIMEO_PUBLIC_URL": f"http://127.0.0.1:{nginx_port}",
            "VIMEO_DELIVERY": "accel",
            "VIMEO_UPLOAD_OFFLOAD": "1",
            "VIMEO_MAX_UPLOAD_SIZE": str(2 * size),
            "VIMEO_EMBEDDED_SWEEP_INTERVAL": "0",
            "GUNICORN_BIND": f"127.0.0.1:{app_port}",
            "GUNICORN_KEEPALIVE": "75",
        })
        subprocess.run([sys.executable, "manage.py", "db", "upgrade"], cwd=ROOT, env=env, check=True,
                       capture_output=True)
        gunicorn = spawn(gunicorn_command(), env, work / "gunicorn.log")
        procs.append(gunicorn)
        wait_for_http(f"http://{env['GUNICORN_BIND']}/healthz", procs=[gunicorn])
        settings = NginxSettings(
            listen=f"127.0.0.1:{nginx_port}", app_address=env["GUNICORN_BIND"], storage_dir=str(storage),
            runtime_dir=str(work / "nginx"), log_dir=str(work / "log"), max_body_size=2 * size,
        )
        conf = write_nginx_conf(settings)
        check_nginx_conf(conf, settings)
        nginx = spawn(nginx_command(conf, settings), env, work / "nginx.out")
        procs.append(nginx)
        base = f"http://127.0.0.1:{nginx_port}"
        wait_for_http(base + "/healthz", procs=[nginx])

        uploads, dds, app_peaks, nginx_peaks = [], [], [], []
        source = work / "source.bin"
        for run in range(1, args.runs + 1):
            sha = make_source(source, size)
            dds.append(args.size_mib * MiB / dd_seconds(work, args.size_mib) / 1e6)
            app_rss, nginx_rss = PeakRSS(gunicorn.pid), PeakRSS(nginx.pid)
            app_rss.start()
            nginx_rss.start()
            start = time.monotonic()
            out = subprocess.run(
                ["curl", "-sS", "--fail-with-body", "-T", str(source), "-H", "X-Max-Downloads: 0",
                 "-H", "Expect:", f"{base}/vimeo/api/v1.0/upload/big.bin"],
                check=True, capture_output=True, text=True,
            ).stdout
            elapsed = time.monotonic() - start
            app_rss.done.set()
            nginx_rss.done.set()
            app_rss.join()
            nginx_rss.join()
            body = json.loads(out)
            assert body["size"] == size and body["sha256"] == sha, body
            stored = storage / "blobs" / sha[:2] / sha[2:4] / sha
            assert stored.stat().st_size == size
            assert not any((storage / "nginx-body").iterdir()), "nginx left a body file"
            uploads.append(size / elapsed / 1e6)
            app_peaks.append(app_rss.peak)
            nginx_peaks.append(nginx_rss.peak)
            print(f"  run {run}: upload {uploads[-1]:.0f} MB/s, dd {dds[-1]:.0f} MB/s, "
                  f"gunicorn worker peak RSS {app_rss.peak / MiB:.1f} MiB, nginx worker {nginx_rss.peak / MiB:.1f} MiB",
                  file=sys.stderr, flush=True)
            # The next run starts from an empty storage: no deduplication, same disk use.
            stored.unlink()
            with create_engine(db_url).begin() as conn:
                conn.execute(text("TRUNCATE files, blobs RESTART IDENTITY CASCADE"))
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
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)'))
        admin.dispose()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
