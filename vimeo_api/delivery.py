"""How the bytes of an allowed download are sent.

``DELIVERY = "app"`` (embedded default): the app streams from the blob, with sendfile
for whole files when the server offers it; range and multipart answers are built here.

``DELIVERY = "accel"`` (the stack): the app answers ``X-Accel-Redirect`` and nginx
sends the bytes, ranges included. nginx copies only a few of the app's headers on such
a redirect (Content-Type, Content-Disposition, Cache-Control, Expires, Set-Cookie,
Accept-Ranges) and drops ETag and Last-Modified, so the validators and the cache class
travel under private ``X-File-*`` names that the internal location re-adds
(``add_header ETag $upstream_http_x_file_etag``); see nginx.conf.
"""

from __future__ import annotations

import re
from urllib.parse import quote

from flask import Response, current_app, request
from werkzeug.exceptions import Gone, PreconditionFailed, RequestedRangeNotSatisfiable
from werkzeug.wsgi import wrap_file

from . import files
from .http_semantics import (
    CACHE_CONTROL,
    RangeDecision,
    Representation,
    content_disposition,
    evaluate_preconditions,
    evaluate_range,
    format_etag,
    format_http_date,
    multipart_byteranges,
    new_boundary,
)
from .models import File

CHUNK = 256 * 1024
# The internal nginx location that maps the storage's blobs/ directory.
ACCEL_PREFIX = "/_vimeo_blobs/"
# The same blobs, where nginx ignores Range (max_ranges 0): for whole-file answers to a
# request that has a Range the app did not honour.
ACCEL_WHOLE_PREFIX = "/_vimeo_whole/"


def respond(resource, cache_class: str, consume=None) -> Response:
    """Preconditions, then range, then the bytes, for a resource whose access was decided
    (a file, or a published version: both have the same descriptive attributes).

    ``consume(nbytes)`` is called for a GET that will send bytes; it uses a download and
    returns False when none is left (the answer is then 410). 304, 412, 416 and HEAD use
    none.
    """
    rep = representation(resource)
    verdict = evaluate_preconditions(request.method, request.headers, rep)
    if verdict == 304:
        return not_modified(resource, cache_class)
    if verdict == 412:
        raise PreconditionFailed("The file does not match the request's preconditions.")
    decision = evaluate_range(request.method, request.headers, rep)
    if decision.status == 416:
        raise RequestedRangeNotSatisfiable(length=resource.size)
    blob = None
    if request.method == "GET":
        blob = open_blob(resource)
        nbytes = sum(stop - start for start, stop in decision.ranges) if decision.status == 206 else resource.size
        if consume is not None and not consume(nbytes):
            blob.close()
            raise Gone()
    return send(resource, blob, decision, cache_class, use_accel=nginx_agrees(request.headers, decision))


# One plain byte range, as media players send: nginx parses it exactly as we do.
_PLAIN_RANGE = re.compile(r"^bytes=(\d{1,18}-\d{0,18}|-\d{1,18})$")


def nginx_agrees(headers, decision: RangeDecision) -> bool:
    """Whether nginx, given the same request, answers exactly what the app decided.

    Not for a matching If-Match (nginx compares it with its own ETag and answers 412), nor
    for a Range that is not one plain range: nginx parses lists, spaces and malformed
    values its own way (416 where RFC 9110 says ignore, no merging of ranges), so the app
    sends those answers itself.
    """
    if "If-Match" in headers:
        return False
    value = headers.get("Range")
    if value is None or decision.status == 200:
        # A Range the app ignored (malformed, If-Range not holding, too many ranges) goes
        # to nginx's /_vimeo_whole/, where nginx ignores it too: see send().
        return True
    return _PLAIN_RANGE.match(value) is not None


def representation(file: File) -> Representation:
    return Representation(etag=file.sha256, last_modified=file.modified_at, size=file.size)


def validator_headers(file: File, cache_class: str) -> dict[str, str]:
    """Headers a 304 repeats from the 200 (RFC 9110 §15.4.5)."""
    return {
        "ETag": format_etag(file.sha256),
        "Last-Modified": format_http_date(file.modified_at),
        "Cache-Control": CACHE_CONTROL[cache_class],
    }


def content_headers(file: File, cache_class: str) -> dict[str, str]:
    headers = validator_headers(file, cache_class)
    headers.update(
        {
            "Content-Type": file.content_type,
            "Content-Disposition": content_disposition(file.filename, file.content_type),
            "Accept-Ranges": "bytes",
            "X-Content-Type-Options": "nosniff",
        }
    )
    return headers


def not_modified(file: File, cache_class: str) -> Response:
    return Response(status=304, headers=validator_headers(file, cache_class))


def open_blob(file: File):
    """Open the bytes before a download is consumed, so a missing blob costs no download."""
    return files.storage().open(file.sha256)


def send(file: File, blob, decision: RangeDecision, cache_class: str, *, use_accel: bool = True) -> Response:
    """The 200/206 answer. ``blob`` is None for HEAD (headers only).

    With X-Accel delivery a GET goes to nginx, except when the caller says otherwise
    (a GET with a matching If-Match: nginx would compare it with its own ETag and 412).
    """
    if blob is not None and use_accel and current_app.config["DELIVERY"] == "accel":
        blob.close()
        return accel_redirect(file, cache_class, whole=decision.status == 200 and "Range" in request.headers)
    headers = content_headers(file, cache_class)
    if decision.status == 206 and len(decision.ranges) > 1:
        return _multipart(file, blob, decision, headers)
    if decision.status == 206:
        start, stop = decision.ranges[0]
        headers["Content-Range"] = decision.content_range
        headers["Content-Length"] = str(stop - start)
        body = _slice(blob, start, stop) if blob else ()
        return Response(body, status=206, headers=headers, direct_passthrough=True)
    headers["Content-Length"] = str(file.size)
    body = wrap_file(request.environ, blob, CHUNK) if blob else ()
    return Response(body, status=200, headers=headers, direct_passthrough=True)


def accel_redirect(file: File, cache_class: str, *, whole: bool = False) -> Response:
    """Hand the transfer to nginx. nginx answers a plain Range itself against the same
    size the app checked, and re-adds the validators below. ``whole``: the app decided on
    the whole file although the request has a Range (nginx.conf's /_vimeo_whole/)."""
    prefix = ACCEL_WHOLE_PREFIX if whole else ACCEL_PREFIX
    path = prefix + files.storage().relative_path(file.sha256).split("/", 1)[1]
    validators = validator_headers(file, cache_class)
    headers = {
        # nginx percent-decodes this value and cuts it at "?": encode it.
        "X-Accel-Redirect": quote(path),
        "Content-Type": file.content_type,
        "Content-Disposition": content_disposition(file.filename, file.content_type),
        "X-File-ETag": validators["ETag"],
        "X-File-Last-Modified": validators["Last-Modified"],
        "X-File-Cache-Control": validators["Cache-Control"],
    }
    return Response(status=200, headers=headers)


def _multipart(file: File, blob, decision: RangeDecision, headers: dict) -> Response:
    boundary = new_boundary()
    parts, closing, length = multipart_byteranges(decision.ranges, file.size, file.content_type, boundary)
    headers["Content-Type"] = f"multipart/byteranges; boundary={boundary}"
    headers["Content-Length"] = str(length)

    def body():
        try:
            for part_header, start, stop in parts:
                yield part_header
                yield from _read(blob, start, stop)
            yield closing
        finally:
            blob.close()

    return Response(body() if blob else (), status=206, headers=headers, direct_passthrough=True)


def _slice(blob, start: int, stop: int):
    try:
        yield from _read(blob, start, stop)
    finally:
        blob.close()


def _read(blob, start: int, stop: int):
    blob.seek(start)
    left = stop - start
    while left > 0:
        chunk = blob.read(min(CHUNK, left))
        if not chunk:
            current_app.logger.error("stored bytes shorter than recorded")
            return
        left -= len(chunk)
        yield chunk
