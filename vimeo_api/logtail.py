"""Reading what a log written by another process (nginx) gained since the last read.

Hand-written because no library tails a log into a database with the guarantees needed
here: the position read so far is kept in a small file (with the log's inode, so a
rotated or truncated log is read from its start), one reader at a time (an exclusive,
non-blocking lock: a second reader returns at once), only complete lines are handed
over (nginx may be writing the last one), and the position advances only after the
handler returned, that is after it committed what it made of those lines: a crash in
between hands the same lines over again, a failure hands them over on the next read.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable

CHUNK = 4 * 1024 * 1024


def consume(log_path: str, position_path: str, handle: Callable[[bytes], int]) -> int:
    """Hand the complete lines added since the last call to ``handle`` (a chunk at a
    time); returns the sum of what it returned. 0 when another reader is at work or
    there is no log yet."""
    with open(position_path + ".lock", "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return 0
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
                    break  # a line still being written
                total += handle(chunk[:end])
                offset += end
                _write_position(position_path, stat.st_ino, offset)
                log.seek(offset)
            return total


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
