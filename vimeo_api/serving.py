"""What gunicorn runs around the app (gunicorn.conf.py names both classes).

``ThreadWorker``: gunicorn's gthread worker with two changes.

* The answers gunicorn writes itself, for requests it cannot hand to the app (a bad
  request line, a header too large, broken chunking), are the API's JSON errors with
  the product's phrases and a request id, never 5xx for what a client sent. gunicorn has
  no setting for this: its worker writes a fixed HTML page (``Worker.handle_error`` and
  ``util.write_error`` in gunicorn 27.0.1), so this is the one place we answer HTTP by
  hand, and it is small: a status line, five headers, one JSON body.
* It accepts a connection only while one of its threads is free. gthread accepts up to
  ``worker_connections`` and queues them behind its busy threads, so with the four
  threads of one worker held by clients trickling their bodies, every connection that
  worker accepted waited behind them, while other workers had threads idle. A
  connection left unaccepted waits in the kernel for any worker with a free thread.
  (Slow bodies are also cut off by the app: ``body_reading``.)

``AccessLogger``: gunicorn's access log without capabilities and without control
characters: each path segment of ``LONG_SEGMENT`` characters or more (a filehash, a
version id, a signed link's token) is written as its first ``KEPT`` characters and
``...`` (a token under ``/t/``: ``...`` and its last ``KEPT``, as its first characters
are much the same for every token), the query string is never written, and every
character below 0x20 or from 0x7f is written as ``\\xNN``, so a ``%0A`` in a path cannot
forge a log line. nginx.conf's log_format applies the same rule.
"""

from __future__ import annotations

import json
import re
import uuid
from datetime import datetime
from http import HTTPStatus

from gunicorn import glogging, util
from gunicorn.http import errors as http_errors
from gunicorn.http.wsgi import Response, default_environ
from gunicorn.workers import gthread

from .errors import MESSAGES, PHRASES

# -- the worker ---------------------------------------------------------------------------

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
_UNREADABLE = "The request could not be read."

# What a client sent that gunicorn refused before the app saw it → (status, message).
# 501 (an unknown Transfer-Encoding) and gunicorn's 403 for a TLS error become 400: a
# client's request never gets a 5xx, and there is no TLS here (nginx terminates it).
_CLIENT_ERRORS: list[tuple[type, int, str]] = [
    (http_errors.LimitRequestLine, 414, MESSAGES[414]),
    (http_errors.LimitRequestHeaders, 431, MESSAGES[431]),
    (http_errors.ExpectationFailed, 417, MESSAGES[417]),
    (http_errors.ForbiddenProxyRequest, 403, "This address may not send proxy headers."),
    (http_errors.UnsupportedTransferCoding, 400,
     "The Transfer-Encoding of the request is not supported; send a Content-Length or a chunked body."),
    (http_errors.InvalidHTTPVersion, 400, "This HTTP version is not supported; use HTTP/1.1."),
    (http_errors.InvalidRequestMethod, 400, "The method of the request is not a valid HTTP method."),
    (http_errors.InvalidRequestLine, 400, "The request line could not be read."),
    ((http_errors.InvalidHeader, http_errors.InvalidHeaderName, http_errors.ObsoleteFolding), 400,
     "A header field of the request could not be read."),
    ((http_errors.InvalidChunkSize, http_errors.ChunkMissingTerminator, http_errors.InvalidChunkExtension), 400,
     "The chunked body of the request could not be read."),
    ((http_errors.InvalidProxyLine, http_errors.InvalidSchemeHeaders, http_errors.InvalidH2CPreface), 400,
     _UNREADABLE),
    (http_errors.ParseException, 400, _UNREADABLE),
]


def error_answer(exc: BaseException) -> tuple[int, str] | None:
    """The status and message of gunicorn's refusal ``exc`` of a client's request; None
    when it is not the client's doing (a response header the app got wrong, a bug: 500).
    A TLS error is the client's (gunicorn serves no TLS here, nginx does)."""
    if isinstance(exc, (http_errors.InvalidResponseHeader, http_errors.InvalidResponseHeaderName,
                        http_errors.ConfigurationProblem)):
        return None
    for kinds, status, message in _CLIENT_ERRORS:
        if isinstance(exc, kinds):
            return status, message
    if type(exc).__name__ == "SSLError":
        return 400, _UNREADABLE
    return None


def error_bytes(status: int, message: str, request_id: str, *, head: bool = False) -> bytes:
    """The whole answer, the connection closed after it (gunicorn does not know where
    the next request would start)."""
    body = (json.dumps({"error": PHRASES[status], "message": message, "request_id": request_id}) + "\n").encode()
    head_lines = (
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n"
        "Connection: close\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Cache-Control: no-store\r\n"
        f"X-Request-Id: {request_id}\r\n\r\n"
    )
    return head_lines.encode("ascii") + (b"" if head else body)


def _request_id(req) -> str:
    """nginx's id when the request got far enough to carry one (as the app takes it),
    else a new one."""
    for name, value in getattr(req, "headers", None) or ():
        if name == "X-REQUEST-ID" and _REQUEST_ID.match(value):
            return value
    return uuid.uuid4().hex


class ThreadWorker(gthread.ThreadWorker):
    """gthread, answering its own errors as the API's JSON and accepting only with a
    thread free (see the module's docstring)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # Connections handed to the thread pool and not finished yet. Only the main
        # thread changes it (accept, the poller's callbacks, finish_request).
        self.busy = 0

    # -- accepting only with a free thread

    def enqueue_req(self, conn):
        self.busy += 1
        super().enqueue_req(conn)
        if self.busy >= self.cfg.threads:
            self.set_accept_enabled(False)

    def finish_request(self, conn, fs):
        self.busy -= 1
        super().finish_request(conn, fs)

    def set_accept_enabled(self, enabled):
        # The main loop turns accepting back on as soon as it may; it stays off while
        # every thread is busy (the loop wakes when one finishes).
        super().set_accept_enabled(enabled and self.busy < self.cfg.threads)

    # -- gunicorn's own answers

    def _keepalive_after(self, conn, keepalive):
        # Draining a body the app did not read may find it malformed (broken chunking)
        # after the app's answer went out: close, rather than write a second answer.
        try:
            return super()._keepalive_after(conn, keepalive)
        except http_errors.ParseException:
            return False

    def handle_error(self, req, client, addr, exc):
        request_start = datetime.now()
        addr = addr or ("", -1)  # a unix socket
        if req is None and isinstance(exc, (http_errors.InvalidHeader, http_errors.InvalidHeaderName)):
            req = getattr(exc, "req", None)  # for the access log
        answer = error_answer(exc)
        request_id = _request_id(req)
        if answer is None:
            status, message = 500, MESSAGES[500]
            # No request line or URI in the message: it would carry capabilities.
            self.log.exception("error handling a request (request_id %s)", request_id)
        else:
            status, message = answer
            self.log.warning("invalid request from %s: %s (request_id %s)", addr[0], type(exc).__name__, request_id)
        data = error_bytes(status, message, request_id, head=getattr(req, "method", None) == "HEAD")
        if req is not None:
            try:
                environ = default_environ(req, client, self.cfg)
                environ["REMOTE_ADDR"] = addr[0]
                environ["REMOTE_PORT"] = str(addr[1])
                resp = Response(req, client, self.cfg)
                resp.status = f"{status} {HTTPStatus(status).phrase}"
                resp.headers.append(("X-Request-Id", request_id))
                resp.response_length = len(data)
                self.log.access(resp, req, environ, datetime.now() - request_start)
            except Exception:  # a request too broken to describe: the warning above says it
                self.log.debug("no access log line for a refused request")
        try:
            util.write_nonblock(client, data)
        except Exception:
            self.log.debug("failed to send an error answer")


# -- the access log -----------------------------------------------------------------------

LONG_SEGMENT = 16
KEPT = 6
_TOKEN_PATH = re.compile(r"^(/vimeo/api/v1\.0/t/)([^/]*)(.*)$", re.DOTALL)
_LONG = re.compile(r"(?<=/)([^/]{%d})[^/]{%d,}" % (KEPT, LONG_SEGMENT - KEPT))
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\"\\]")


def redact_path(path: str) -> str:
    """The form of a request path the logs keep (see the module's docstring)."""
    token = _TOKEN_PATH.match(path)
    if token and len(token[2]) >= LONG_SEGMENT:
        path = f"{token[1]}...{token[2][-KEPT:]}{token[3]}"
    return _LONG.sub(r"\1...", path)


def escape(value: str) -> str:
    """Control characters (and quotes, backslashes) as ``\\xNN``, as nginx writes them."""
    return _CONTROL.sub(lambda m: "\\x%02X" % ord(m[0]), value)


class AccessLogger(glogging.Logger):
    """gunicorn's logger, its access lines without capabilities or control characters."""

    def atoms(self, resp, req, environ, request_time):
        atoms = super().atoms(resp, req, environ, request_time)
        path = redact_path(environ.get("PATH_INFO") or "")
        atoms["U"] = path
        atoms["r"] = f"{environ.get('REQUEST_METHOD')} {path} {environ.get('SERVER_PROTOCOL')}"
        atoms["q"] = "-"
        if isinstance(atoms.get("f"), str):
            atoms["f"] = redact_path(atoms["f"])  # a Referer may be a download's URL
        for key in [k for k in atoms if k.endswith("}e")]:
            # The environ carries the raw URI and the query string: never in a log.
            atoms[key] = "-"
        return {key: escape(value) if isinstance(value, str) else value for key, value in atoms.items()}
