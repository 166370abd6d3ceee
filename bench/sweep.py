#!/usr/bin/env python
"""The sweep against 100,000 expired files on PostgreSQL: elapsed time and peak memory.

    .venv/bin/python bench/sweep.py [--files 100000] [--batch-size 500] [--per-file 10000]

A throwaway database (on the local server, ``VIMEO_BENCH_PG_ADMIN_URL``) is migrated and
filled with that many expired files, each with its own small blob on disk (so every
blob must be released and every byte file unlinked). The sweep then runs in a child
process exactly as Celery beat runs it in the stack (``sweep.run(orphans=False)``), with the grace
period at 0 so that one sweep both expires the files and releases their bytes. Printed:
elapsed time, files per second, the child's RSS before the sweep and its peak (psutil and
the kernel's high-water mark, ``VmHWM``), and a check that no row, blob or byte file is left.

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
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path

import psutil
from sqlalchemy import create_engine, text

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# bench.harness (the throwaway databases) is imported where used: the sweep's child
# process measures its own memory and must not carry what only the parent needs.
CHUNK = 10_000  # rows per COPY: the filler's memory stays flat too


# -- a database and a storage directory full of files ---------------------------------

def create_database() -> str:
    from bench.harness import create_database

    return create_database("vimeo_bench_sweep")


def drop_database(url: str) -> None:
    from bench.harness import drop_database

    drop_database(url)


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
    from vimeo_api import blobs, create_app, files, sweep
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
    blobs.release_due = timed("release", blobs.release_due)
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
    peak = peak_rss()
    print(json.dumps({
        "elapsed": elapsed, "rss_before": rss_before, "peak_rss": peak, "report": report,
        "phases": {k: round(v, 2) for k, v in phases.items()},
    }))


def peak_rss() -> int:
    """This process's peak RSS: ``VmHWM``, which belongs to its own address space.
    ``getrusage``'s ru_maxrss survives exec, so a child started by a large parent (the
    suite, holding its test files) would report the parent's peak as its own."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _per_file_sweep(batch_size, db, files, File, FileStatus, GoneReason) -> dict:
    """The sweep as it was: one transaction per expired file, then one per blob."""
    from sqlalchemy import select

    from vimeo_api import blobs
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
    while shas := blobs.releasable(batch_size):
        done = sum(blobs.release(sha) for sha in shas)
        released += done
        if done == 0:
            break
    return {"expired": expired, "released": released}


def run_child(url: str, storage: Path, batch_size: int, strategy: str, cache_url: str) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", url, str(storage), str(batch_size), strategy, cache_url],
        cwd=ROOT, capture_output=True, text=True,
    )
    if out.returncode != 0:
        raise RuntimeError(f"the sweep's child process ({strategy}, {url.rsplit('/', 1)[-1]}) exited with "
                           f"{out.returncode}:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def scenario(count: int, batch_size: int, strategy: str, cache_url: str, expired: bool = True) -> dict:
    url = create_database()
    storage = Path(tempfile.mkdtemp(prefix="vimeo-bench-sweep-"))
    try:
        started = time.perf_counter()
        fill(url, storage, count, expired)
        filled = time.perf_counter() - started
        result = run_child(url, storage, batch_size, strategy, cache_url)
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


def plain_sql(count: int) -> dict:
    """The sweep's end state reached the plainest way, for a baseline: on a database and
    storage filled as ``scenario`` fills them, one transaction of plain SQL (every expired
    file made gone, and its blob row deleted: each blob has exactly one file here, so its
    refcount would reach 0), then every byte file unlinked, eight in flight as the sweep's
    release pass does. No batches, no row locks skipped, no cache invalidation."""
    url = create_database()
    storage = Path(tempfile.mkdtemp(prefix="vimeo-bench-sweep-plain-"))
    try:
        fill(url, storage, count, expired=True)
        engine = create_engine(url)
        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))  # connect before measuring
                conn.rollback()
                started = time.perf_counter()
                with conn.begin():
                    shas = conn.execute(text(
                        "WITH gone AS ("
                        " UPDATE files SET status = 'gone', gone_reason = 'expired', gone_at = now() AT TIME ZONE 'utc'"
                        " WHERE status = 'available' AND expires_at <= now() AT TIME ZONE 'utc'"
                        " RETURNING sha256)"
                        " DELETE FROM blobs WHERE sha256 IN (SELECT sha256 FROM gone) RETURNING sha256"
                    )).scalars().all()
                sql_seconds = time.perf_counter() - started
        finally:
            engine.dispose()
        unlinked = time.perf_counter()
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(os.unlink, (storage / "blobs" / sha[:2] / sha[2:4] / sha for sha in shas)))
        finished = time.perf_counter()
        return {"files": count, "elapsed": finished - started, "sql_seconds": sql_seconds,
                "unlink_seconds": finished - unlinked, "changed": len(shas), "left": leftovers(url, storage)}
    finally:
        shutil.rmtree(storage, ignore_errors=True)
        drop_database(url)


def sweep_against_plain_sql(count: int, batch_size: int = 500) -> dict:
    """For bench/suite.py: the periodic sweep (set-based batches, expire + release) over
    ``count`` expired files, and ``plain_sql`` over as many, each on its own throwaway
    database and storage. Raises if either leaves a file, blob row or byte file behind."""
    redis_server, cache_url = start_redis()
    try:
        sweep = scenario(count, batch_size, "set-based", cache_url)
    finally:
        redis_server.terminate()
        redis_server.wait()
    plain = plain_sql(count)
    nothing = {"available_files": 0, "blob_rows": 0, "byte_files": 0}
    if sweep["left"] != nothing or sweep["report"]["expired"] != count or sweep["report"]["released"] != count:
        raise AssertionError(f"the sweep left work undone: {sweep['report']}, left {sweep['left']}")
    if plain["left"] != nothing or plain["changed"] != count:
        raise AssertionError(f"the plain SQL baseline left work undone: {plain}")
    return {"sweep": sweep, "plain": plain}


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
    redis_server, cache_url = start_redis()
    try:
        sys.exit(bench(args, cache_url))
    finally:
        redis_server.terminate()
        redis_server.wait()


def start_redis() -> tuple[subprocess.Popen, str]:
    """A private redis-server for the cache (the shared one is left alone); its URL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, f"redis://127.0.0.1:{port}/1"
        except OSError:
            time.sleep(0.05)
    proc.terminate()
    proc.wait()
    raise RuntimeError("redis-server did not start")


def bench(args, cache_url: str) -> int:
    from bench.harness import PG_ADMIN_URL

    print(
        f"sweep bench {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: PostgreSQL at "
        f"{PG_ADMIN_URL.rsplit('@', 1)[-1]}, batch size {args.batch_size}, load average {os.getloadavg()[0]:.2f}",
        flush=True,
    )

    main_run = scenario(args.files, args.batch_size, "set-based", cache_url)
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
        old = scenario(args.per_file, args.batch_size, "per-file", cache_url)
        show("per-file sweep, as before (one transaction per file and per blob)", old)
        ratio = (main_run["files"] / main_run["elapsed"]) / (old["files"] / old["elapsed"])
        print(f"set-based / per-file throughput: {ratio:.1f}x", flush=True)

    idle = scenario(args.files, args.batch_size, "orphan-scan", cache_url, expired=False)
    show("hourly sweep with the orphan scan, nothing due, over live files", idle)
    print(f"load average at the end {os.getloadavg()[0]:.2f}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    main()
