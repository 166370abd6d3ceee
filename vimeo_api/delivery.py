"""How the bytes of an allowed download are sent: one ``Sender``, chosen once at
start-up by ``DELIVERY`` (``init_app``); the download pipeline (``downloads``) decides
whether and what, this module only how.

``AppSender`` (``DELIVERY = "app"``, the embedded default): the app streams from the
blob, with sendfile for whole files when the server offers it; range and multipart
answers are built here.

``AccelSender`` (``DELIVERY = "accel"``, the stack): the app answers
``X-Accel-Redirect`` and nginx sends the bytes, ranges included, from the blob's file or
from the bucket (a presigned GET nginx proxies; the storage says which). nginx copies only a few
of the app's headers on such a redirect (Content-Type, Content-Disposition,
Cache-Control, Expires, Set-Cookie, Accept-Ranges) and drops ETag, Last-Modified,
Content-Security-Policy and Surrogate-Key, so the validators, the cache class, the policy
and the edge's keys travel under private ``X-File-*`` names that the internal location re-adds (``add_header ETag
$upstream_http_x_file_etag``; nginx.conf).
Where nginx would not answer exactly what the app decided, the app sends the bytes.

A transfer the pipeline records (``transfers``) learns what was sent: the app's own
answer counts the bytes the server took and reports them when the server closes it
(every byte, or the client went away: the bytes of the write that failed are not
counted); an X-Accel answer names the transfer in ``X-Vimeo-Transfer``, and nginx logs
what it sent (``transfer_log``). Recorded answers are streamed by the app in chunks
rather than by the server's sendfile, which would not say how far it got.
"""

from __future__ import annotations

import logging
import re

from flask import Flask, Response, current_app, request
from werkzeug.wsgi import wrap_file

from . import storage, transfers
from .http_semantics import Decision, multipart_byteranges, new_boundary

log = logging.getLogger(__name__)

CHUNK = 256 * 1024


class Sender:
    """Sends a resource's bytes for a decided GET or HEAD."""

    def prepare(self, sha256: str, decision: Decision):
        """Whatever ``send`` needs of the blob for a GET, before a download is consumed,
        so that missing bytes cost no download (raises FileNotFoundError)."""
        raise NotImplementedError

    def send(self, resource, blob, decision: Decision, headers: dict[str, str],
             transfer: int | None = None) -> Response:
        """The 200/206 answer. ``blob`` is what ``prepare`` gave, None for HEAD;
        ``transfer``: the recorded transfer to report the bytes sent for."""
        raise NotImplementedError

    def discard(self, blob) -> None:
        """``blob`` will not be sent (no download was left)."""


def init_app(app: Flask) -> None:
    app.extensions["vimeo_sender"] = AccelSender() if app.config["DELIVERY"] == "accel" else AppSender()


def current() -> Sender:
    return current_app.extensions["vimeo_sender"]


class AppSender(Sender):
    """The app streams the bytes itself.

    A whole file is one ``open``; a range is opened as that range (a bucket reads it
    with a ranged GET, memory stays flat), and the ranges of a multipart answer are
    opened one after another, so nothing here seeks in a stream that cannot.
    """

    def prepare(self, sha256: str, decision: Decision):
        store = storage.current()
        if decision.status == 206:
            # The first range now (its bytes must be there before a download is used).
            start, stop = decision.ranges[0]
            return _Ranges(store, sha256, store.open(sha256, start, stop))
        return store.open(sha256)

    def discard(self, blob) -> None:
        blob.close()

    def send(self, resource, blob, decision: Decision, headers: dict[str, str],
             transfer: int | None = None) -> Response:
        if decision.status == 206 and len(decision.ranges) > 1:
            response = _multipart(resource, blob, decision, headers)
        elif decision.status == 206:
            start, stop = decision.ranges[0]
            headers["Content-Range"] = decision.content_range
            headers["Content-Length"] = str(stop - start)
            body = _slice(blob, start, stop) if blob else ()
            response = Response(body, status=206, headers=headers, direct_passthrough=True)
        else:
            headers["Content-Length"] = str(resource.size)
            if not blob:
                body = ()
            elif transfer is not None:
                # Chunks the server takes one by one, so that what was sent is counted.
                body = _whole(blob, resource.size)
            else:
                body = wrap_file(request.environ, blob, CHUNK)
            response = Response(body, status=200, headers=headers, direct_passthrough=True)
        if blob and transfer is not None:
            response.response = _Counted(response.response, int(response.headers["Content-Length"]), transfer)
        return response


class _Counted:
    """An answer's body that reports, once the server closes it, how many bytes the
    server took: a chunk counts once the server asks for the next (its write returned),
    all of them when the body ran to its end."""

    def __init__(self, body, expected: int, transfer: int):
        self.body = body
        self.expected = expected
        self.transfer = transfer
        self.app = current_app._get_current_object()
        self.sent = 0
        self.ended = False
        self.closed = False

    def __iter__(self):
        pending = 0
        for chunk in self.body:
            self.sent += pending
            pending = len(chunk)
            yield chunk
        self.sent += pending
        self.ended = True

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            close = getattr(self.body, "close", None)
            if close is not None:
                close()
        finally:
            try:
                with self.app.app_context():
                    transfers.finish([(self.transfer, self.sent, self.ended and self.sent == self.expected)])
            except Exception:  # the answer is over; a lost report leaves the transfer unfinished
                log.exception("could not record what a transfer sent")


class _Ranges:
    """The open ranges of one 206 answer: the first opened by ``prepare``, each later
    one when its turn comes; ``close`` closes whichever is open."""

    def __init__(self, store, sha256: str, first):
        self._store, self._sha256, self._open = store, sha256, first
        self._first = True

    def stream(self, start: int, stop: int):
        """A stream of [start, stop) positioned at ``start``."""
        if self._first:
            self._first = False
        else:
            self._open.close()
            self._open = self._store.open(self._sha256, start, stop)
        return self._open

    def close(self) -> None:
        self._open.close()


# One plain byte range, as media players send: nginx parses it exactly as we do.
_PLAIN_RANGE = re.compile(r"^bytes=(\d{1,18}-\d{0,18}|-\d{1,18})$")


class AccelSender(AppSender):
    """nginx sends the bytes (X-Accel-Redirect); the app does where nginx would not agree.

    The storage names how nginx reaches the blob (``Storage.accel_headers``): a file in
    an internal location, or a presigned GET of the bucket that an internal location
    proxies (nginx.conf).
    """

    def prepare(self, sha256: str, decision: Decision):
        if _nginx_agrees(request.headers, decision):
            # A Range the app did not honour (malformed, If-Range not holding, too many
            # ranges) goes where nginx ignores it too.
            whole = decision.status == 200 and "Range" in request.headers
            # Whether the bytes are there, without opening them (FileNotFoundError).
            return _Accel(storage.current().accel_headers(sha256, whole=whole))
        return super().prepare(sha256, decision)

    def discard(self, blob) -> None:
        if not isinstance(blob, _Accel):
            super().discard(blob)

    def send(self, resource, blob, decision: Decision, headers: dict[str, str],
             transfer: int | None = None) -> Response:
        if not isinstance(blob, _Accel):  # HEAD (None), or an answer the app sends itself
            return super().send(resource, blob, decision, headers, transfer)
        response = Response(status=200, headers={
            **blob.headers,
            "Content-Type": headers["Content-Type"],
            "Content-Disposition": headers["Content-Disposition"],
            "X-File-ETag": headers["ETag"],
            "X-File-Last-Modified": headers["Last-Modified"],
            "X-File-Cache-Control": headers["Cache-Control"],
            "X-File-Content-Security-Policy": headers["Content-Security-Policy"],
            "X-File-Surrogate-Key": headers["Surrogate-Key"],
        })
        if transfer is not None:
            # Private: nginx passes none of the app's headers on but those named in the
            # module's docstring; it logs this one with what it sent (nginx.conf).
            response.headers["X-Vimeo-Transfer"] = str(transfer)
        return response


class _Accel:
    """AccelSender's handle: the bytes exist and nginx will send them, reached so."""

    def __init__(self, headers: dict[str, str]):
        self.headers = headers


def _nginx_agrees(headers, decision: Decision) -> bool:
    """Whether nginx, given the same request, answers exactly what the app decided.

    nginx's internal locations evaluate If-Match and If-Unmodified-Since again after the
    app decided (its not-modified filter, which no directive turns off for them): it
    compares If-Match with its own ETag and answers 412, and it answers 412 to an
    If-Unmodified-Since it cannot parse ("99999"), which RFC 9110 §13.1.4 says to ignore,
    dates it parses differently from us, and any where it knows no modification time (a
    bucket). Neither does it take a Range that is not one plain range as we do: it parses
    lists, spaces and malformed values its own way (416 where RFC 9110 says ignore, no
    merging of ranges). The app sends those answers itself. (If-None-Match and
    If-Modified-Since are safe: the app answered 304 where they hold, and nginx's etag
    and if_modified_since are off in those locations.)
    """
    if "If-Match" in headers or "If-Unmodified-Since" in headers:
        return False
    value = headers.get("Range")
    if value is None or decision.status == 200:
        return True
    return _PLAIN_RANGE.match(value) is not None


def _multipart(resource, blob, decision: Decision, headers: dict) -> Response:
    boundary = new_boundary()
    parts, closing, length = multipart_byteranges(decision.ranges, resource.size, resource.content_type, boundary)
    headers["Content-Type"] = f"multipart/byteranges; boundary={boundary}"
    headers["Content-Length"] = str(length)

    def body():
        try:
            for part_header, start, stop in parts:
                yield part_header
                yield from _read(blob.stream(start, stop), stop - start)
            yield closing
        finally:
            blob.close()

    return Response(body() if blob else (), status=206, headers=headers, direct_passthrough=True)


def _slice(blob, start: int, stop: int):
    """[start, stop) of ``blob``: the range ``_Ranges`` opened, or a whole blob opened at
    its start (a counted 200)."""
    try:
        stream = blob.stream(start, stop) if isinstance(blob, _Ranges) else blob
        yield from _read(stream, stop - start)
    finally:
        blob.close()


def _whole(blob, size: int):
    try:
        yield from _read(blob, size)
    finally:
        blob.close()


def _read(stream, length: int):
    left = length
    while left > 0:
        chunk = stream.read(min(CHUNK, left))
        if not chunk:
            log.error("stored bytes shorter than recorded")
            return
        left -= len(chunk)
        yield chunk
