"""Counting the downloads nginx answered on the fast path (grants.py), which the app
never saw: nginx writes one line per such download to ``FAST_PATH_LOG`` (nginx.conf's
``vimeo_count`` log: the grant and the body bytes sent), and each sweep adds them to
the files' ``downloads`` and ``bytes_served``.

Hand-written because no library tails a log into a database: the position read so far
is kept beside the storage (``<STORAGE_DIR>/fast-downloads.position``, with the log's
inode, so a rotated log is read from its start), one sweep at a time (an exclusive
lock), and advanced only after the counts are committed: a crash between the two counts
that batch twice, a failed commit counts nothing and the batch is read again.
Only files are counted; published versions use no downloads (SPEC 3.5). The counts go
to the domain (``files.count_late_downloads``), which also ends the files they use up.
"""

from __future__ import annotations

import fcntl
import os
import re
from collections import Counter

from flask import current_app

from . import files

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
        files.count_late_downloads({fh: (n, served[fh]) for fh, n in downloads.items()})
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
