"""Counting the downloads nginx answered on the fast path (grants.py), which the app
never saw: nginx writes one line per such download to ``FAST_PATH_LOG`` (nginx.conf's
``vimeo_count`` log: the grant and the body bytes sent), and each sweep adds them to
the files' ``downloads`` and ``bytes_served``.

Hand-written because no library tails a log into a database: the position read so far
is kept beside the storage (``<STORAGE_DIR>/fast-downloads.position``, with the log's
inode, so a rotated log is read from its start), one sweep at a time (an exclusive
lock), and advanced only after the counts are committed: a crash between the two counts
that batch twice, a failed commit counts nothing and the batch is read again.
Only files are counted; published versions use no downloads (SPEC 3.5).

On several nodes each nginx writes its own log, which only its own machine can read:
there every gunicorn worker of a node counts it from a thread (``NODE_UPKEEP_INTERVAL``,
``sweep.start_node_upkeep``), the lock lets one count at a time, the bookmark lives in
the node's own ``STORAGE_DIR`` (its scratch space), and the sweep, which runs on a
worker machine, counts nothing.
"""

from __future__ import annotations

import fcntl
import os
import re
from collections import Counter

from flask import current_app
from sqlalchemy import bindparam, update

from .extensions import db
from .models import File

# One line: "/f/<ab>/<filehash>/<digest> <bytes>".
_LINE = re.compile(rb"^/f/[0-9a-f]{2}/([0-9a-f]{32})/[0-9a-f]{32} (\d{1,18})$")
CHUNK = 4 * 1024 * 1024


def count_served() -> int:
    """Add what the log holds beyond the recorded position; returns downloads counted."""
    log_path = current_app.config["FAST_PATH_LOG"]
    if not log_path or not current_app.config["FAST_PATH"]:
        return 0
    position_path = os.path.join(current_app.config["STORAGE_DIR"], "fast-downloads.position")
    with open(position_path + ".lock", "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return 0  # another sweep is counting
        try:
            log = open(log_path, "rb")
        except FileNotFoundError:
            return 0
        with log:
            inode, offset = _read_position(position_path)
            stat = os.fstat(log.fileno())
            if stat.st_ino != inode or stat.st_size < offset:
                offset = 0  # rotated or truncated: a new log
            total = 0
            log.seek(offset)
            while chunk := log.read(CHUNK):
                end = chunk.rfind(b"\n") + 1
                if end == 0:
                    break  # a line nginx is still writing
                total += _add(chunk[:end])
                offset += end
                _write_position(position_path, stat.st_ino, offset)
                log.seek(offset)
            return total


def _add(lines: bytes) -> int:
    downloads: Counter = Counter()
    served: Counter = Counter()
    for line in lines.splitlines():
        match = _LINE.match(line)
        if match:
            filehash = match.group(1).decode()
            downloads[filehash] += 1
            served[filehash] += int(match.group(2))
    if downloads:
        table = File.__table__
        db.session.execute(
            update(table)
            .where(table.c.filehash == bindparam("fh"))
            .values(downloads=table.c.downloads + bindparam("n"), bytes_served=table.c.bytes_served + bindparam("b")),
            [{"fh": fh, "n": n, "b": served[fh]} for fh, n in downloads.items()],
        )
        db.session.commit()
    return sum(downloads.values())


def _read_position(path: str) -> tuple[int, int]:
    try:
        with open(path) as fh:
            inode, offset = fh.read().split()
            return int(inode), int(offset)
    except (FileNotFoundError, ValueError):
        return -1, 0


def _write_position(path: str, inode: int, offset: int) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        fh.write(f"{inode} {offset}\n")
    os.replace(tmp, path)


def counted_by_nodes(cfg) -> bool:
    """Whether each node's web processes count their own log (``sweep.start_node_upkeep``),
    so that the sweep, which runs elsewhere, does not."""
    return bool(cfg["NODE_UPKEEP_INTERVAL"])
