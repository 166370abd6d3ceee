"""Counting the downloads nginx answered on the fast path (grants.py), which the app
never saw: nginx writes one line per such download to ``FAST_PATH_LOG`` (nginx.conf's
``vimeo_count`` log: the grant and the body bytes sent), and each sweep adds them to
the files' ``downloads`` and ``bytes_served``.

The log is read with ``logtail`` (its position kept in
``<STORAGE_DIR>/fast-downloads.position``), which advances only after the counts are
committed: a crash between the two counts that batch twice, a failed commit counts
nothing and the batch is read again.
Only files are counted; published versions use no downloads (SPEC 3.5). The counts go
to the domain (``files.count_late_downloads``), which also ends the files they use up.

On several nodes each nginx writes its own log, which only its own machine can read:
there every gunicorn worker of a node counts it from a thread (``NODE_UPKEEP_INTERVAL``,
``sweep.start_node_upkeep``), the lock lets one count at a time, the bookmark lives in
the node's own ``STORAGE_DIR`` (its scratch space), and the sweep, which runs on a
worker machine, counts nothing.
"""

from __future__ import annotations

import os
import re
from collections import Counter

from flask import current_app
from . import files, logtail

# One line: "/f/<ab>/<filehash>/<digest> <bytes>".
_LINE = re.compile(rb"^/f/[0-9a-f]{2}/([0-9a-f]{32})/[0-9a-f]{32} (\d{1,18})$")


def count_served() -> int:
    """Add what the log holds beyond the recorded position; returns downloads counted."""
    log_path = current_app.config["FAST_PATH_LOG"]
    if not log_path or not current_app.config["FAST_PATH"]:
        return 0
    position_path = os.path.join(current_app.config["STORAGE_DIR"], "fast-downloads.position")
    return logtail.consume(log_path, position_path, _add)


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


def counted_by_nodes(cfg) -> bool:
    """Whether each node's web processes count their own log (``sweep.start_node_upkeep``),
    so that the sweep, which runs elsewhere, does not."""
    return bool(cfg["NODE_UPKEEP_INTERVAL"])
