#!/usr/bin/env python
"""The sweep against 100,000 expired files on PostgreSQL: elapsed time and peak memory.

    .venv/bin/python bench/sweep.py [--files 100000] [--batch-size 500] [--per-file 10000]

A throwaway database (on the local server, ``VIMEO_BENCH_PG_ADMIN_URL``) is migrated and
filled with that many expired files, each with its own small blob on disk (so every
blob must be released and every byte file unlinked). The sweep then runs in a child
process exactly as Celery beat runs it in the stack (``sweep.run(orphans=False)``), with the grace
period at 0 so that one sweep both expires the files and releases their bytes. Printed:
elapsed time, files per second, the child's RSS before the sweep and its peak (psutil and
``getrusage``), and a check that no row, blob or byte file is left.

``--per-file N`` also times the sweep as it was before it was made set-based (one
transaction per file, then one per blob) on N files, for the ratio.

A last figure: the hourly sweep with the orphan scan (``ORPHAN_SWEEP_INTERVAL``) over
the same number of *live* files, nothing due: the cost of reading the whole storage
directory, which is why the every-minute sweep leaves it out.

The cache is a private redis-server (as the stack's worker uses Redis): each expired
file's cached metadata is invalidated there. Phases are timed inside the child: expire
(SQL + cache invalidation) and release (SQL + unlinks, eight at a time). Beside them, the
time plain ``os.unlink`` takes here, one file after another, on as many files laid out
the same way: the disk's own floor for the release pass.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import resource
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import psutil
from sqlalchemy import create_engine, text

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
PG_ADMIN_URL = os.environ.get("VIMEO_BENCH_PG_ADMIN_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres")
CHUNK = 10_000  # rows per COPY: the filler's memory stays flat too
CACHE_URL = ""  # set by start_redis()


# -- a database and a storage directory full of files ---------------------------------

def create_database() -> str:
    name = f"vimeo_bench_sweep_{secrets.token_hex(3)}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    subprocess.run(
        [sys.executable, "manage.py", "db", "upgrade"],
        cwd=ROOT, env={**os.environ, "VIMEO_DATABASE_URL": url}, check=True, capture_output=True,
    )
    return url


def drop_database(url: str) -> None:
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)'))
    admin.dispose()


def fill(url: str, storage: Path, count: int, expired: bool) -> None:
    """``count`` files with distinct 64-byte contents, rows by COPY, bytes on disk."""
    now = datetime.now(timezone.utc).replace(tzinfo=None, microsecond=0)
    expires = now - timedelta(minutes=5) if expired else now + timedelta(days=7)
    engine = create_engine(url)
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        for start in range(0, count, CHUNK):
            blobs, files = io.StringIO(), io.StringIO()
            for i in range(start, min(start + CHUNK, count)):
                content = secrets.token_bytes(64)
                sha = hashlib.sha256(content).hexdigest()
                path = storage / "blobs" / sha[:2] / sha[2:4] / sha
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(content)
                blobs.write(f"{sha}\t64\t1\t{now}\t\\N\n")
                files.write(
                    f"{secrets.token_hex(16)}\tbench-{i}.bin\tapplication/octet-stream\t64\t{sha}\t\\N\t"
                    f"{secrets.token_hex(32)}\t1\t0\tavailable\t\\N\t{now}\t{now}\t{expires}\t\\N\n"
                )
            blobs.seek(0)
            files.seek(0)
            cursor.copy_expert("COPY blobs (sha256, size, refcount, created_at, release_after) FROM STDIN", blobs)
            cursor.copy_expert(
                "COPY files (filehash, filename, content_type, size, sha256, password_hash, owner_token_hash,"
                " max_downloads, downloads, status, gone_reason, created_at, modified_at, expires_at, gone_at)"
                " FROM STDIN",
                files,
            )
            raw.commit()
        cursor.execute("ANALYZE files")
        cursor.execute("ANALYZE blobs")
        raw.commit()
    finally:
        raw.close()
        engine.dispose()
    # The filler's own writeback must not be billed to the sweep's unlinks.
    os.sync()


def leftovers(url: str, storage: Path) -> dict:
    engine = create_engine(url)
    with engine.connect() as conn:
        available = conn.execute(text("SELECT count(*) FROM files WHERE status = 'available'")).scalar_one()
        blobs = conn.execute(text("SELECT count(*) FROM blobs")).scalar_one()
    engine.dispose()
    stored = sum(len(names) for _dirs, _sub, names in os.walk(storage / "blobs"))
    return {"available_files": available, "blob_rows": blobs, "byte_files": stored}


# -- the sweep, in a child process of its own (clean memory figures) --------------------

def child(url: str, storage: str, batch_size: int, strategy: str, cache_url: str) -> None:
    from vimeo_api import create_app, files, sweep
    from vimeo_api.extensions import db
    from vimeo_api.models import File, FileStatus, GoneReason

    app = create_app({
        "DATABASE_URL": url, "STORAGE_DIR": storage, "DELETE_GRACE_SECONDS": 0,
        "EMBEDDED_SWEEP_INTERVAL": 0, "LOG_LEVEL": "WARNING",
        # As the stack's worker runs it: each expired file's cached metadata is
        # invalidated in Redis.
        "CACHE_TYPE": "RedisCache", "CACHE_REDIS_URL": cache_url,
    })
    phases = {"expire": 0.0, "release": 0.0, "orphan_scan": 0.0}

    def timed(name, function):
        def wrapper(*args, **kwargs):
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                phases[name] += time.perf_counter() - started
        return wrapper

    files.expire_due = timed("expire", files.expire_due)
    files.release_due_blobs = timed("release", files.release_due_blobs)
    sweep.remove_orphans = timed("orphan_scan", sweep.remove_orphans)
    with app.app_context():
        db.session.execute(text("SELECT 1"))  # connect before measuring
        db.session.rollback()
        rss_before = psutil.Process().memory_info().rss
        started = time.perf_counter()
        if strategy == "per-file":
            report = _per_file_sweep(batch_size, db, files, File, FileStatus, GoneReason)
        else:
            # The periodic sweep runs without the orphan scan; the hourly one with it.
            report = sweep.run(batch_size, orphans=strategy == "orphan-scan").as_dict()
        elapsed = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({
        "elapsed": elapsed, "rss_before": rss_before, "peak_rss": peak, "report": report,
        "phases": {k: round(v, 2) for k, v in phases.items()},
    }))


def _per_file_sweep(batch_size, db, files, File, FileStatus, GoneReason) -> dict:
    """The sweep as it was: one transaction per expired file, then one per blob."""
    from sqlalchemy import select

    from vimeo_api.models import utcnow

    expired = released = 0
    while True:
        ids = db.session.execute(
            select(File.id).where(File.status == FileStatus.AVAILABLE, File.expires_at <= utcnow())
            .order_by(File.id).limit(batch_size)
        ).scalars().all()
        db.session.rollback()
        if not ids:
            break
        expired += sum(files.mark_gone(file_id, GoneReason.EXPIRED) for file_id in ids)
    while shas := files.releasable_blobs(batch_size):
        done = sum(files.release_blob(sha) for sha in shas)
        released += done
        if done == 0:
            break
    return {"expired": expired, "released": released}


def run_child(url: str, storage: Path, batch_size: int, strategy: str) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", url, str(storage), str(batch_size), strategy, CACHE_URL],
        cwd=ROOT, check=True, capture_output=True, text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def scenario(count: int, batch_size: int, strategy: str, expired: bool = True) -> dict:
    url = create_database()
    storage = Path(tempfile.mkdtemp(prefix="vimeo-bench-sweep-"))
    try:
        started = time.perf_counter()
        fill(url, storage, count, expired)
        filled = time.perf_counter() - started
        result = run_child(url, storage, batch_size, strategy)
        result.update(files=count, strategy=strategy, fill_seconds=filled, left=leftovers(url, storage))
        return result
    finally:
        shutil.rmtree(storage, ignore_errors=True)
        drop_database(url)


def unlink_floor(count: int) -> float:
    """Seconds per file that plain ``os.unlink`` takes here, on files laid out as the
    storage lays out blobs: the physical floor of the release pass."""
    root = Path(tempfile.mkdtemp(prefix="vimeo-bench-unlink-"))
    try:
        paths = []
        for _ in range(count):
            content = secrets.token_bytes(64)
            sha = hashlib.sha256(content).hexdigest()
            path = root / sha[:2] / sha[2:4] / sha
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
            paths.append(path)
        os.sync()
        started = time.perf_counter()
        for path in paths:
            os.unlink(path)
        return (time.perf_counter() - started) / count
    finally:
        shutil.rmtree(root, ignore_errors=True)


def show(title: str, r: dict) -> None:
    MiB = 1024 * 1024
    print(
        f"{title}: {r['files']} files in {r['elapsed']:.2f} s ({r['files'] / r['elapsed']:,.0f} files/s), "
        f"RSS {r['rss_before'] / MiB:.0f} MiB before, peak {r['peak_rss'] / MiB:.0f} MiB "
        f"(+{(r['peak_rss'] - r['rss_before']) / MiB:.1f} MiB); phases (s) {r['phases']}; "
        f"report {r['report']}; left {r['left']}",
        flush=True,
    )


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5], sys.argv[6])
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--per-file", type=int, default=10_000, help="files for the per-file comparison (0: skip)")
    args = parser.parse_args()
    redis_server = start_redis()
    try:
        sys.exit(bench(args))
    finally:
        redis_server.terminate()
        redis_server.wait()


def start_redis() -> subprocess.Popen:
    """A private redis-server for the cache (the shared one is left alone)."""
    global CACHE_URL
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    CACHE_URL = f"redis://127.0.0.1:{port}/1"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("redis-server did not start")


def bench(args) -> int:
    print(
        f"sweep bench {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: PostgreSQL at "
        f"{PG_ADMIN_URL.rsplit('@', 1)[-1]}, batch size {args.batch_size}, load average {os.getloadavg()[0]:.2f}",
        flush=True,
    )

    main_run = scenario(args.files, args.batch_size, "set-based")
    show("set-based sweep (expire + release)", main_run)
    failed = main_run["left"] != {"available_files": 0, "blob_rows": 0, "byte_files": 0}
    failed |= main_run["report"]["expired"] != args.files or main_run["report"]["released"] != args.files

    floor = unlink_floor(min(args.files, 20_000))
    print(
        f"plain os.unlink here, one file after another: {floor * 1000:.2f} ms per file, so "
        f"{floor * args.files:.1f} s for {args.files} files; the whole sweep took "
        f"{main_run['elapsed'] / (floor * args.files):.2f}x that",
        flush=True,
    )

    if args.per_file:
        old = scenario(args.per_file, args.batch_size, "per-file")
        show("per-file sweep, as before (one transaction per file and per blob)", old)
        ratio = (main_run["files"] / main_run["elapsed"]) / (old["files"] / old["elapsed"])
        print(f"set-based / per-file throughput: {ratio:.1f}x", flush=True)

    idle = scenario(args.files, args.batch_size, "orphan-scan", expired=False)
    show("hourly sweep with the orphan scan, nothing due, over live files", idle)
    print(f"load average at the end {os.getloadavg()[0]:.2f}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    main()
