"""Raw-PUT upload offload: in the stack nginx writes a raw upload's body to a file on the
storage filesystem and names it in ``X-Vimeo-Body-File``; the app hashes that file and
renames it into place instead of copying the bytes through Python (with the bytes in a
bucket, the file is the node's local scratch and ``adopt`` streams it up in parts).

nginx sets the header on the upload location only and blanks it everywhere else, so a
client never chooses it; the path is still checked to lie in ``<STORAGE_DIR>/nginx-body/``
(where nginx.conf's ``client_body_temp_path`` points), so even a request that reaches
gunicorn directly can adopt nothing but a body file nginx wrote.
"""

from __future__ import annotations

import logging
import os
import stat

from flask import Request, current_app
from werkzeug.exceptions import BadRequest, RequestEntityTooLarge

from . import storage

log = logging.getLogger(__name__)

BODY_FILE_HEADER = "X-Vimeo-Body-File"
BODY_DIR = storage.BODY_DIR


def offloaded_body(request: Request) -> storage.Upload | None:
    """The body file nginx already wrote for this request, adopted as an upload; None when
    the body is to be read from the request stream (no header, or offload off)."""
    cfg = current_app.config
    path = request.headers.get(BODY_FILE_HEADER)
    if not path:
        return None
    if not cfg["UPLOAD_OFFLOAD"]:
        if request.content_length is None and "chunked" not in request.headers.get("Transfer-Encoding", ""):
            # No body, and a header only nginx's upload location sets: either nginx kept
            # the body and this app does not adopt body files (storing the empty stream
            # would lose the upload), or a client sent the header to gunicorn directly.
            # Either way the request cannot be served as sent: a 400, never a 500 a
            # client could provoke. The warning tells an operator which it was.
            log.warning(
                "refused a raw upload naming a body file while UPLOAD_OFFLOAD is off "
                "(behind an offloading nginx, set VIMEO_UPLOAD_OFFLOAD=1)"
            )
            raise BadRequest(f"{BODY_FILE_HEADER} is not accepted here: send the upload as the request body.")
        return None  # a client's header, beside a body of its own: read the body
    real = checked_body_path(path)
    try:
        if not stat.S_ISREG(os.stat(real).st_mode):
            raise FileNotFoundError(real)
        upload = storage.current().adopt(real)
    except (FileNotFoundError, PermissionError):
        # nginx removes the file when it gives up on the request (client gone, timeout).
        log.warning("the upload body file nginx named cannot be opened")
        raise BadRequest("The upload body could not be read.") from None
    if upload.size > cfg["MAX_UPLOAD_SIZE"]:
        # nginx's client_max_body_size should have refused it: a second line of defence.
        upload.close()
        raise RequestEntityTooLarge()
    return upload


def checked_body_path(path: str) -> str:
    """The real path of a body file nginx named, which must lie in ``<STORAGE_DIR>/nginx-body/``
    (400 otherwise). The tus routes read their chunks from such files too (tus.py)."""
    body_dir = os.path.realpath(os.path.join(current_app.config["STORAGE_DIR"], BODY_DIR))
    real = os.path.realpath(path)
    if not real.startswith(body_dir + os.sep):
        # Not where nginx.conf writes bodies: a misconfiguration or a forged header.
        log.warning("refused an upload body file outside %s", BODY_DIR)
        raise BadRequest("The upload body could not be read.")
    return real
