#!/usr/bin/env python
"""1 GiB uploads through a real gunicorn on the embedded default: throughput against
``dd`` writing the same size to the same disk, and the worker's peak RSS.

    .venv/bin/python bench/upload_memory.py [--size-mib 1024]

The worker's RSS is sampled every 10 ms with psutil while curl uploads (raw ``-T`` and
multipart ``-F``); each figure is printed with its ratio to the baseline of the same run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path


ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.measure import MiB, PeakRSS, dd_seconds  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def curl_upload(args: list[str]) -> tuple[float, int]:
    out = subprocess.run(
        ["curl", "-sS", "-o", "/dev/null", "-w", "%{time_total} %{http_code}", *args],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    return float(out[0]), int(out[1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    opts = parser.parse_args()
    size = opts.size_mib * MiB

    work = Path(tempfile.mkdtemp(prefix="vimeo-bench-", dir=ROOT / "instance" if (ROOT / "instance").exists() else None))
    storage = work / "storage"
    storage.mkdir()
    port = free_port()
    env = {
        **os.environ,
        "VIMEO_DATABASE_URL": f"sqlite:///{work / 'bench.sqlite3'}",
        "VIMEO_STORAGE_DIR": str(storage),
        "VIMEO_MAX_UPLOAD_SIZE": str(size + MiB),
        "VIMEO_PUBLIC_URL": f"http://127.0.0.1:{port}",
        "GUNICORN_BIND": f"127.0.0.1:{port}",
        "GUNICORN_WORKERS": "1",
        "GUNICORN_THREADS": "2",
        "GUNICORN_ACCESSLOG": "/dev/null",
    }
    subprocess.run([sys.executable, "manage.py", "db", "upgrade"], cwd=ROOT, env=env, check=True, capture_output=True)
    server = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "vimeo_api.wsgi:app"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    api = f"http://127.0.0.1:{port}/vimeo/api/v1.0"
    try:
        for _ in range(200):
            try:
                urllib.request.urlopen(api + "/file/" + "0" * 32, timeout=1)
            except urllib.error.HTTPError:
                break
            except OSError:
                time.sleep(0.1)
        sampler = PeakRSS(server.pid)
        sampler.start()
        time.sleep(0.5)
        idle_rss = sampler.peak

        rows = []
        baseline = dd_seconds(storage, opts.size_mib)
        rows.append(("dd to the storage disk (baseline)", baseline, None, None))
        for label, make_args in (
            ("raw PUT /upload (curl -T)", lambda f: ["-T", str(f), api + "/upload/big.bin"]),
            ("multipart PUT /file (curl -F)", lambda f: ["-X", "PUT", "-F", f"file=@{f}", api + "/file"]),
        ):
            source = work / "source.bin"
            # Fresh random content each time, so deduplication cannot shortcut the write.
            with open(source, "wb") as fh:
                for _ in range(opts.size_mib):
                    fh.write(os.urandom(MiB))
            subprocess.run(["sync"], check=True)
            sampler.reset()
            elapsed, status = curl_upload(make_args(source))
            if status != 201:
                raise SystemExit(f"{label}: HTTP {status}")
            rows.append((label, elapsed, sampler.peak, status))
            source.unlink()
        sampler.done.set()
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)

    print(f"upload of {opts.size_mib} MiB, machine: {os.cpu_count()} CPUs, {os.uname().machine}")
    print(f"gunicorn worker RSS when idle: {idle_rss / MiB:.1f} MiB")
    print("| scenario | seconds | MB/s | ratio to dd | worker peak RSS |")
    print("|---|---|---|---|---|")
    for label, seconds, peak, _status in rows:
        mbs = size / seconds / 1e6
        ratio = baseline / seconds
        rss = "-" if peak is None else f"{peak / MiB:.1f} MiB"
        print(f"| {label} | {seconds:.2f} | {mbs:.0f} | {ratio:.2f}x | {rss} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
