#!/usr/bin/env python
"""1 GiB uploads through a real gunicorn on the embedded default: throughput against
``dd`` writing the same size to the same disk, and the worker's peak RSS.

    .venv/bin/python bench/upload_memory.py [--size-mib 1024]

The worker's RSS is sampled every 10 ms with psutil while curl uploads (raw ``-T`` and
multipart ``-F``); each figure is printed with its ratio to the baseline of the same run.

bench/suite.py calls ``upload_to_app`` for its rows of uploads the app writes itself.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path


ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.measure import MiB, PeakRSS, dd_seconds, make_source  # noqa: E402
from deploy.stack import free_port  # noqa: E402

# How curl uploads a file: (label, arguments for curl given the source and the API's base).
UPLOADS = {
    "raw": ("raw PUT /upload (curl -T)", lambda source, api: ["-T", str(source), api + "/upload/big.bin"]),
    "multipart": ("multipart PUT /file (curl -F)",
                  lambda source, api: ["-X", "PUT", "-F", f"file=@{source}", api + "/file"]),
}


def curl_upload(args: list[str]) -> tuple[float, int, str]:
    """curl's total time, the HTTP status and the answer's body."""
    out = subprocess.run(
        ["curl", "-sS", "-w", "\n%{time_total} %{http_code}", *args],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    body, _, stats = out.rpartition("\n")
    seconds, status = stats.split()
    return float(seconds), int(status), body


def idle_rss(pid: int, seconds: float = 0.5) -> int:
    """The largest RSS of ``pid``'s children over ``seconds`` with nothing to do."""
    sampler = PeakRSS(pid)
    sampler.start()
    time.sleep(seconds)
    return sampler.stop()


def upload_to_app(api: str, kind: str, source: Path, pid: int, sha256: str | None = None) -> dict:
    """One upload of ``source`` (``kind``: raw or multipart) to the app at ``api`` (its
    ``/vimeo/api/v1.0``), the workers of ``pid`` sampled meanwhile: seconds, MB/s, peak
    RSS and the 201's JSON. With ``sha256``, checks the stored size and hash."""
    sampler = PeakRSS(pid)
    sampler.start()
    try:
        seconds, status, text = curl_upload(UPLOADS[kind][1](source, api))
    finally:
        peak = sampler.stop()
    if status != 201:
        raise SystemExit(f"{UPLOADS[kind][0]}: HTTP {status} {text[:300]}")
    body = json.loads(text)
    if sha256 is not None:
        assert body["size"] == source.stat().st_size and body["sha256"] == sha256, body
    return {"seconds": seconds, "mbps": source.stat().st_size / seconds / 1e6, "peak": peak, "body": body}


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
        "VIMEO_UPLOAD_BYTES_LIMIT": f"{1 << 40}/hour",
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
        idle = idle_rss(server.pid)

        rows = []
        baseline = dd_seconds(storage, opts.size_mib)
        rows.append(("dd to the storage disk (baseline)", baseline, None))
        for kind, (label, _args) in UPLOADS.items():
            source = work / "source.bin"
            # Fresh random content each time, so deduplication cannot shortcut the write.
            sha = make_source(source, size)
            subprocess.run(["sync"], check=True)
            result = upload_to_app(api, kind, source, server.pid, sha)
            rows.append((label, result["seconds"], result["peak"]))
            source.unlink()
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)

    print(f"upload of {opts.size_mib} MiB, machine: {os.cpu_count()} CPUs, {os.uname().machine}")
    print(f"gunicorn worker RSS when idle: {idle / MiB:.1f} MiB")
    print("| scenario | seconds | MB/s | ratio to dd | worker peak RSS |")
    print("|---|---|---|---|---|")
    for label, seconds, peak in rows:
        mbs = size / seconds / 1e6
        ratio = baseline / seconds
        rss = "-" if peak is None else f"{peak / MiB:.1f} MiB"
        print(f"| {label} | {seconds:.2f} | {mbs:.0f} | {ratio:.2f}x | {rss} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
