#!/usr/bin/env python
"""A 1 GiB resumable (tus) upload in 64 MiB chunks through the stack, against ``dd`` and
against one raw PUT of the same size, in the same run.

    .venv/bin/python bench/tus_upload.py [--size-mib 1024] [--chunk-mib 64] [--runs 3] [--s3]

nginx (the project's nginx.conf) in front of gunicorn (2 workers × 4 threads, X-Accel,
upload offload, PostgreSQL). Per run, into the same storage directory:

- ``dd if=/dev/zero bs=1M conv=fsync`` of the same size (the disk's baseline);
- one raw ``curl -T`` PUT of the same size (bench/upload_offload.py's path);
- the tus upload, chunk after chunk (a POST, then PATCHes of 64 MiB), two ways:
  **buffered** — nginx.conf as shipped: nginx writes each chunk to a file on the storage
  filesystem and the app reads it from there; **streamed** — the same location with
  ``proxy_request_buffering off`` and no body file: gunicorn reads the chunk from nginx
  as it arrives.

Printed: MB/s (client wall time, first byte to the last answer), the last chunk's
latency (what completion costs), the gunicorn workers' peak RSS, and, for a client
sending one 64 MiB chunk at 32 MB/s, how long a gunicorn thread was busy with it
(gunicorn's access log): the point of buffering. Also what the other SHA-256 strategy
would add to the last chunk: hashing the whole stored file once it is complete, read
from the page cache and from the disk (pages dropped with posix_fadvise).

With ``--s3``, the same through the S3 stack instead (bench/s3.py: a local ``rclone
serve s3``, gunicorn with ``STORAGE_URL`` on its bucket, nginx): ``dd`` into the
directory rclone keeps its objects in, one raw PUT into the bucket, and the tus upload,
whose chunks become the parts of a multipart upload (vimeo_api/resumable_s3.py); the last
answer then includes completing it and copying 1 GiB to the content address
(CopyObject), and the bucket must hold nothing of the upload afterwards. Also printed:
how fast the two SHA-256s hash here (hashlib, and the one whose state travels with the
row, vimeo_api/sha256_state.py).

bench/suite.py (``make bench``) calls ``tus_upload`` for its tus rows (the buffered way,
through the suite's stack, against dd and the raw PUT of the same run).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import re
import secrets
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import requests
from sqlalchemy import create_engine, text

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.harness import app_env, create_database, drop_database, start_gunicorn  # noqa: E402
from bench.measure import MiB, PeakRSS, dd_seconds, make_source  # noqa: E402
from bench.upload_offload import upload_through_nginx  # noqa: E402
from deploy.stack import (  # noqa: E402
    NginxSettings, check_nginx_conf, free_port, nginx_command, render_nginx, spawn, stop, wait_for_http,
)

TUS = "/vimeo/api/v1.0/tus/"
V = {"Tus-Resumable": "1.0.0"}
# The tus location as shipped, and the streaming variant measured against it.
_BUFFERED = re.compile(r"(location \^~ /vimeo/api/v1\.0/tus/ \{)(.*?)(\n        \})", re.S)
STREAMED_BODY = """
            client_max_body_size {max_chunk};
            proxy_request_buffering off;
            proxy_read_timeout 600s;
            proxy_pass http://vimeo_app;"""


def start_nginx(work: Path, variant: str, port: int, app_bind: str, storage: Path, env: dict, procs: list,
                max_body: int, max_chunk: int):
    settings = NginxSettings(listen=f"127.0.0.1:{port}", app_address=app_bind, storage_dir=str(storage),
                             runtime_dir=str(work / f"nginx-{variant}"), log_dir=str(work / f"log-{variant}"),
                             max_body_size=max_body, max_chunk_size=max_chunk)
    conf_text = render_nginx(settings)
    assert _BUFFERED.search(conf_text), "nginx.conf has no tus location"
    if variant == "streamed":
        conf_text = _BUFFERED.sub(lambda m: m.group(1) + STREAMED_BODY.format(max_chunk=max_chunk) + m.group(3),
                                  conf_text)
    runtime = Path(settings.runtime_dir)
    runtime.mkdir(parents=True, exist_ok=True)
    Path(settings.log_dir).mkdir(parents=True, exist_ok=True)
    conf = runtime / "nginx.conf"
    conf.write_text(conf_text)
    check_nginx_conf(conf, settings)
    proc = spawn(nginx_command(conf, settings), env, work / f"nginx-{variant}.out")
    procs.append(proc)
    wait_for_http(f"http://127.0.0.1:{port}/healthz", procs=[proc])
    return proc


def tus_upload(base: str, source: Path, sha256: str, chunk: int, app_pid: int) -> dict:
    """Create, then PATCH chunk after chunk (each read from the source into memory, as
    tuspy does); wall time, the last chunk's latency, the workers' peak RSS."""
    size = source.stat().st_size
    rss = PeakRSS(app_pid)
    rss.start()
    session = requests.Session()
    start = time.monotonic()
    try:
        answer = session.post(base + TUS, headers={**V, "Upload-Length": str(size),
                                                   "Upload-Metadata": "max_downloads MA=="}, timeout=60)
        assert answer.status_code == 201, answer.text
        url = base + answer.headers["Location"]
        offset = 0
        with open(source, "rb") as fh:
            while offset < size:
                data = fh.read(chunk)
                t0 = time.monotonic()
                answer = session.patch(url, data=data, timeout=600, headers={
                    **V, "Upload-Offset": str(offset), "Content-Type": "application/offset+octet-stream"})
                last = time.monotonic() - t0
                assert answer.status_code == 204, (base, offset, answer.text)
                offset = int(answer.headers["Upload-Offset"])
        seconds = time.monotonic() - start
    finally:
        peak = rss.stop()
    file_url = answer.headers["X-File-Url"]
    assert file_url.rsplit("/", 1)[1]
    return {"seconds": seconds, "mbps": size / seconds / 1e6, "last_chunk": last, "app_peak": peak}


def slow_chunk_busy(base: str, work: Path, gunicorn_log: Path, chunk: int) -> tuple[float, float]:
    """One chunk sent at 32 MB/s with curl: (client seconds, seconds gunicorn spent on it)."""
    answer = requests.post(base + TUS, headers={**V, "Upload-Length": str(chunk)}, timeout=60)
    url = base + answer.headers["Location"]
    body = work / "slow.bin"
    body.write_bytes(os.urandom(chunk))
    before = len(_patch_lines(gunicorn_log))
    start = time.monotonic()
    subprocess.run(["curl", "-sS", "--fail", "-X", "PATCH", "--limit-rate", "32M", "--data-binary", f"@{body}",
                    "-H", "Tus-Resumable: 1.0.0", "-H", "Upload-Offset: 0", "-H", "Expect:",
                    "-H", "Content-Type: application/offset+octet-stream", url],
                   check=True, capture_output=True)
    client = time.monotonic() - start
    body.unlink()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        lines = _patch_lines(gunicorn_log)
        if len(lines) > before:
            return client, float(re.search(r" 204 \S+ ([\d.]+)s", lines[before]).group(1))
        time.sleep(0.05)
    raise RuntimeError("gunicorn did not log the slow chunk")


def _patch_lines(log: Path) -> list[str]:
    """gunicorn's access-log lines of answered chunks ('"PATCH /path" 204 0 1.234s'),
    complete lines only."""
    return [line for line in log.read_text(errors="replace").split("\n")[:-1]
            if '"PATCH ' in line and " 204 " in line]


def rehash_seconds(path: Path) -> tuple[float, float]:
    """SHA-256 of a whole file: from the page cache, then with its pages dropped first."""
    def once() -> float:
        start = time.perf_counter()
        digest = hashlib.sha256()
        with open(path, "rb", buffering=0) as fh:
            while block := fh.read(MiB):
                digest.update(block)
        return time.perf_counter() - start

    once()
    warm = once()
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    cold = once()
    return warm, cold


def hash_speeds(megabytes: int = 256) -> dict[str, float]:
    """MB/s of hashlib's SHA-256 and of Sha256State over the same 1 MiB blocks."""
    from vimeo_api.sha256_state import Sha256State

    block = os.urandom(MiB)
    speeds = {}
    for name, make in (("hashlib", hashlib.sha256), ("Sha256State", Sha256State)):
        state = make()
        start = time.perf_counter()
        for _ in range(megabytes):
            state.update(block)
        state.hexdigest()
        speeds[name] = megabytes * MiB / (time.perf_counter() - start) / 1e6
    return speeds


def s3_main(args) -> int:
    """The S3 run: dd, one raw PUT and the tus upload through the S3 stack."""
    from bench.s3 import start_s3_stack, upload_to_s3_through_nginx

    size, chunk = args.size_mib * MiB, args.chunk_mib * MiB
    work = ROOT / "var" / f"bench-tus-s3-{secrets.token_hex(3)}"
    work.mkdir(parents=True)
    db_url = create_database()
    procs: list = []
    stack = None
    try:
        stack = start_s3_stack(work, db_url, procs, {
            "GUNICORN_WORKERS": "2", "GUNICORN_THREADS": "4", "VIMEO_MAX_RESUMABLE_CHUNK_SIZE": str(chunk),
        }, max_body_size=2 * size)
        bucket_dir = Path(stack.server.data_dir) / stack.server.bucket
        client = stack.server.client()
        results = {"dd": [], "put": [], "tus": []}
        peaks = {"put": [], "tus": []}
        last = []
        source = work / "source.bin"
        for run in range(1, args.runs + 1):
            sha = make_source(source, size)
            results["dd"].append(size / dd_seconds(bucket_dir, args.size_mib) / 1e6)
            put = upload_to_s3_through_nginx(stack, source, sha, {"X-Max-Downloads": "0"})
            results["put"].append(put["mbps"])
            peaks["put"].append(put["app_peak"])
            _empty_s3(db_url, client, stack)
            result = tus_upload(stack.nginx, source, sha, chunk, stack.gunicorn_proc.pid)
            assert stack.object_size(sha) == size
            left = client.list_objects_v2(Bucket=stack.server.bucket, Prefix=f"{stack.prefix}/tus/").get("KeyCount")
            assert not left, "the tus upload left objects under tus/"
            results["tus"].append(result["mbps"])
            peaks["tus"].append(result["app_peak"])
            last.append(result["last_chunk"])
            _empty_s3(db_url, client, stack)
            print(f"  run {run}: dd {results['dd'][-1]:.0f}, PUT {results['put'][-1]:.0f}, "
                  f"tus {results['tus'][-1]:.0f} MB/s", file=sys.stderr, flush=True)
        source.unlink()
        med = {k: statistics.median(v) for k, v in results.items()}
        speeds = hash_speeds()
        print(f"\nmachine: nproc {os.cpu_count()}, {platform.machine()}, {platform.platform()}")
        print(f"{args.size_mib} MiB through the S3 stack (nginx → gunicorn 2×4 → rclone serve s3, PostgreSQL), "
              f"{args.runs} runs, medians; tus in {args.chunk_mib} MiB chunks\n")
        print("| what | MB/s | × dd | × PUT | last answer | gunicorn worker peak RSS |")
        print("|---|---:|---:|---:|---:|---:|")
        print(f"| dd if=/dev/zero bs=1M conv=fsync, rclone's directory | {med['dd']:,.0f} | 1.00 | | | |")
        print(f"| one raw PUT into the bucket (curl -T, nginx body offload) | {med['put']:,.0f} | "
              f"{med['put'] / med['dd']:.2f} | 1.00 | | {max(peaks['put']) / MiB:.1f} MiB |")
        print(f"| tus on S3: parts of a multipart upload | {med['tus']:,.0f} | {med['tus'] / med['dd']:.2f} | "
              f"{med['tus'] / med['put']:.2f} | {statistics.median(last) * 1000:.0f} ms | "
              f"{max(peaks['tus']) / MiB:.1f} MiB |")
        print(f"\nSHA-256 here: hashlib {speeds['hashlib']:,.0f} MB/s, Sha256State {speeds['Sha256State']:,.0f} MB/s")
    finally:
        for proc in reversed(procs):
            stop(proc)
        if stack is not None:
            stack.server.stop()
        drop_database(db_url)
        shutil.rmtree(work, ignore_errors=True)
    return 0


def _empty_s3(db_url: str, client, stack) -> None:
    """The next upload starts from empty tables and an empty bucket prefix."""
    engine = create_engine(db_url)
    with engine.begin() as conn:
        conn.execute(text("TRUNCATE files, blobs, resumable_uploads RESTART IDENTITY CASCADE"))
    engine.dispose()
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=stack.server.bucket, Prefix=stack.prefix + "/")
    for page in pages:
        for item in page.get("Contents", ()):
            client.delete_object(Bucket=stack.server.bucket, Key=item["Key"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--chunk-mib", type=int, default=64)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--s3", action="store_true", help="through the S3 stack (rclone) instead")
    args = parser.parse_args()
    if args.s3:
        return s3_main(args)
    size, chunk = args.size_mib * MiB, args.chunk_mib * MiB

    work = ROOT / "var" / f"bench-tus-{secrets.token_hex(3)}"
    storage = work / "storage"
    storage.mkdir(parents=True)
    db_url = create_database()
    procs: list = []
    try:
        app_port = free_port()
        ports = {"buffered": free_port(), "streamed": free_port()}
        env = app_env(db_url, storage, f"http://127.0.0.1:{ports['buffered']}", f"127.0.0.1:{app_port}",
                      VIMEO_DELIVERY="accel", VIMEO_UPLOAD_OFFLOAD="1", VIMEO_MAX_UPLOAD_SIZE=str(2 * size),
                      VIMEO_MAX_RESUMABLE_CHUNK_SIZE=str(chunk), GUNICORN_WORKERS="2", GUNICORN_THREADS="4",
                      GUNICORN_ACCESSLOG="-")
        gunicorn_log = work / "gunicorn.log"
        gunicorn = start_gunicorn(env, gunicorn_log, procs)
        nginx = {}
        for variant, port in ports.items():
            nginx[variant] = start_nginx(work, variant, port, env["GUNICORN_BIND"], storage, env, procs,
                                         2 * size, chunk)
        bases = {variant: f"http://127.0.0.1:{port}" for variant, port in ports.items()}

        results = {"dd": [], "put": [], "buffered": [], "streamed": []}
        last, peaks, rehash = {"buffered": [], "streamed": []}, {"put": [], "buffered": [], "streamed": []}, []
        source = work / "source.bin"
        for run in range(1, args.runs + 1):
            sha = make_source(source, size)
            results["dd"].append(size / dd_seconds(work, args.size_mib) / 1e6)
            put = upload_through_nginx(bases["buffered"], source, sha, storage, gunicorn.pid, nginx["buffered"].pid,
                                       {"X-Max-Downloads": "0"})
            results["put"].append(put["mbps"])
            peaks["put"].append(put["app_peak"])
            rehash.append(rehash_seconds(put["stored"]))
            _empty(db_url, storage)
            for variant in ("buffered", "streamed"):
                result = tus_upload(bases[variant], source, sha, chunk, gunicorn.pid)
                results[variant].append(result["mbps"])
                last[variant].append(result["last_chunk"])
                peaks[variant].append(result["app_peak"])
                _empty(db_url, storage)
            print(f"  run {run}: dd {results['dd'][-1]:.0f}, PUT {results['put'][-1]:.0f}, "
                  f"tus buffered {results['buffered'][-1]:.0f}, tus streamed {results['streamed'][-1]:.0f} MB/s",
                  file=sys.stderr, flush=True)
        source.unlink()
        slow = {variant: slow_chunk_busy(bases[variant], work, gunicorn_log, chunk) for variant in bases}

        med = {k: statistics.median(v) for k, v in results.items()}
        print(f"\nmachine: nproc {os.cpu_count()}, {platform.machine()}, {platform.platform()}")
        print(f"{args.size_mib} MiB through the stack (nginx → gunicorn 2×4, PostgreSQL), {args.runs} runs, medians; "
              f"tus in {args.chunk_mib} MiB chunks\n")
        print("| what | MB/s | × dd | × PUT | last answer | gunicorn worker peak RSS |")
        print("|---|---:|---:|---:|---:|---:|")
        print(f"| dd if=/dev/zero bs=1M conv=fsync, same directory | {med['dd']:,.0f} | 1.00 | | | |")
        print(f"| one raw PUT (curl -T, nginx body offload) | {med['put']:,.0f} | {med['put'] / med['dd']:.2f} | 1.00 | "
              f"| {max(peaks['put']) / MiB:.1f} MiB |")
        for variant, label in (("buffered", "tus, nginx buffers each chunk to a file (shipped)"),
                               ("streamed", "tus, proxy_request_buffering off (streamed)")):
            print(f"| {label} | {med[variant]:,.0f} | {med[variant] / med['dd']:.2f} | {med[variant] / med['put']:.2f} "
                  f"| {statistics.median(last[variant]) * 1000:.0f} ms | {max(peaks[variant]) / MiB:.1f} MiB |")
        warm = statistics.median(r[0] for r in rehash)
        cold = statistics.median(r[1] for r in rehash)
        print(f"\nSHA-256 of the whole {args.size_mib} MiB once complete (the strategy not taken): "
              f"{warm:.2f} s from the page cache, {cold:.2f} s from the disk, added to the last answer.")
        for variant, (client, busy) in slow.items():
            print(f"one {args.chunk_mib} MiB chunk at 32 MB/s, {variant}: the client took {client:.1f} s, "
                  f"a gunicorn thread {busy:.2f} s")
    finally:
        for proc in reversed(procs):
            stop(proc)
        drop_database(db_url)
        shutil.rmtree(work, ignore_errors=True)
    return 0


def _empty(db_url: str, storage: Path) -> None:
    """The next upload starts from an empty storage: no deduplication, same disk use."""
    engine = create_engine(db_url)
    with engine.begin() as conn:
        conn.execute(text("TRUNCATE files, blobs, resumable_uploads RESTART IDENTITY CASCADE"))
    engine.dispose()
    shutil.rmtree(storage / "blobs", ignore_errors=True)
    (storage / "blobs").mkdir()


if __name__ == "__main__":
    sys.exit(main())
