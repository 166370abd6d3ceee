"""Every error is JSON: ``{"error": phrase, "message": detail, "request_id": id}``.

The phrases are the original product's, which its clients match on exactly. A ``410``
about a file also names why in ``reason`` (``FileGone``), for clients to match on.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Mapping

from flask import g, jsonify
from sqlalchemy.exc import DBAPIError, OperationalError
from werkzeug.exceptions import Gone, HTTPException, InternalServerError

log = logging.getLogger(__name__)

PHRASES = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method not Allowed",
    408: "Request Timeout",
    409: "Conflict",
    410: "Gone",
    411: "Length Required",
    412: "Precondition Failed",
    413: "Request Entity Too Large",
    414: "URI Too Long",
    415: "Unsupported Media Type",
    416: "Range Not Satisfiable",
    417: "Expectation Failed",
    # tus: another request is writing to the upload; a chunk's checksum did not match.
    423: "Locked",
    460: "Checksum Mismatch",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
    507: "Insufficient Storage",
}

MESSAGES = {
    404: "No file at this address.",
    405: "This method is not allowed here; see the Allow header.",
    408: "The request was not received in time.",
    410: "This file is no longer available.",
    411: "Send a Content-Length or a chunked body.",
    413: "The upload is larger than the configured maximum.",
    414: "The address of the request is too long.",
    416: "No part of the requested range is within the file; see Content-Range.",
    417: "Only Expect: 100-continue is understood.",
    431: "The header fields of the request are too large or too many.",
    500: "The server failed to answer this request.",
}


# Why a file serves no more (models.GoneReason's values), as a 410 says it.
GONE_MESSAGES = {
    "downloaded": "This file is no longer available: its downloads are used up.",
    "expired": "This file is no longer available: it has expired.",
    "deleted": "This file is no longer available: it was deleted.",
}


class FileGone(Gone):
    """``410`` for a file that serves no more, with the reason clients can match on:
    ``downloaded`` (used up), ``expired`` or ``deleted``."""

    def __init__(self, reason: str):
        super().__init__(GONE_MESSAGES[reason])
        self.reason = reason


class InsufficientStorage(HTTPException):
    """507 (RFC 4918 §11.5), which werkzeug does not define: the storage cannot take it."""

    code = 507
    description = "The storage is full."


def error_response(status: int, message: str | None = None, headers=None, **fields):
    """The one place an error body is built; ``fields`` add to it (a 410's ``reason``)."""
    body = {
        "error": PHRASES.get(status, "Error"),
        "message": message or MESSAGES.get(status, PHRASES.get(status, "Error")),
        **fields,
        "request_id": getattr(g, "request_id", None),
    }
    response = jsonify(body)
    response.status_code = status
    for name, value in headers or ():
        if name.lower() not in ("content-type", "content-length"):
            response.headers.add(name, value)
    response.headers["Cache-Control"] = "no-store"
    return response


def _http_error(exc: HTTPException):
    default = type(exc).description
    message = exc.description if exc.description != default else None
    fields = {"reason": exc.reason} if isinstance(exc, FileGone) else {}
    return error_response(exc.code or 500, message, exc.get_headers(), **fields)


def _database_down(exc: DBAPIError):
    # The driver's message says what failed (refused, timed out); statements and their
    # parameters are not logged.
    log.error("database unavailable: %s", str(getattr(exc, "orig", exc)).strip()[:300])
    return error_response(503, "The database is unavailable; retry shortly.", [("Retry-After", "5")])


def _unexpected(exc: Exception):
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return error_response(507, "The storage is full.")
    original = getattr(exc, "original_exception", None) or exc
    if isinstance(original, OperationalError):
        return _database_down(original)
    # The trace goes to the log only; the client sees the request id to quote.
    log.exception("unhandled error", exc_info=original)
    return error_response(500)


def _unavailable(message: str):
    """The handler of a dependency's own exception: 503 with Retry-After. What failed is
    logged (the exception names the call, never a secret); the client gets ``message``."""

    def handler(exc: Exception):
        log.warning("%s unavailable: %s", type(exc).__name__, str(exc)[:300])
        return error_response(503, message, [("Retry-After", "5")])

    return handler


def register_error_handlers(app, unavailable: Mapping[type[Exception], str] | None = None) -> None:
    """One JSON answer per kind of failure. ``unavailable`` maps exceptions of the
    dependencies a request may need (the storage) to the message of their 503."""
    for exc_class, message in (unavailable or {}).items():
        app.register_error_handler(exc_class, _unavailable(message))
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(OperationalError, _database_down)
    app.register_error_handler(InternalServerError, _unexpected)
    app.register_error_handler(Exception, _unexpected)
