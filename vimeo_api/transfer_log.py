"""What nginx sent of the transfers the app handed it (X-Accel-Redirect): the app names
the transfer in a private ``X-Vimeo-Transfer`` header, which nginx never passes on, and
nginx.conf's ``transfers.log`` writes one line per such answer when it ends: the
transfer, the status, the body bytes sent and ``$request_completion`` (``OK`` only when
the whole answer went out). ``TRANSFER_LOG`` names that log; each sweep and each
``GET /file/<filehash>/downloads`` read what it gained (``logtail``, the position in
``<STORAGE_DIR>/transfers.position``) and finish those transfers.
"""

from __future__ import annotations

import os
import re

from flask import current_app

from . import logtail, transfers

# One line: "t=<transfer id> s=<status> b=<body bytes sent> c=<OK or nothing>".
_LINE = re.compile(rb"^t=(\d{1,18}) s=(\d{3}) b=(\d{1,18}) c=(OK)?$")


def read() -> int:
    """Finish the transfers the log reports beyond the recorded position; how many."""
    log_path = current_app.config["TRANSFER_LOG"]
    if not log_path:
        return 0
    position_path = os.path.join(current_app.config["STORAGE_DIR"], "transfers.position")
    return logtail.consume(log_path, position_path, _finish)


def _finish(lines: bytes) -> int:
    reports = []
    for line in lines.splitlines():
        match = _LINE.match(line)
        if match:
            status = int(match.group(2))
            done = match.group(4) is not None and status in (200, 206)
            reports.append((int(match.group(1)), int(match.group(3)), done))
    transfers.finish(reports)
    return len(reports)
