"""Resumable uploads over the tus protocol, version 1.0.0, at ``/vimeo/api/v1.0/tus/``.

Core protocol plus the creation, creation-defer-length, creation-with-upload,
termination, checksum and expiration extensions, and ``X-HTTP-Method-Override``
(https://tus.io/protocols/resumable-upload, 1.0.0). The views parse headers and shape
answers; what happens to an upload is decided in resumable.py.

Choices the protocol leaves to the server:

- ``Location`` of a new upload is relative (``/vimeo/api/v1.0/tus/<id>``, which tus
  allows): the client resolves it against the creation URL it reached us by.
- The product's options travel in ``Upload-Metadata`` (``filename``, ``filetype``,
  ``password``, ``max_downloads``, ``expires_in``), validated at creation by the same
  rules as the other upload routes. The password is kept only hashed, and HEAD echoes
  the metadata without it.
- When the last byte arrives, the answer (the last PATCH's, or the creation's when it
  carried everything) names the file: ``X-File-Url`` (its download URL) and
  ``X-Owner-Token``; HEAD on the upload's URL repeats both until the upload expires.
  Whoever knows only the download URL cannot learn the owner token from it.
- A second request writing to an upload that one is writing to gets ``423 Locked``.
- Every answer carries ``Tus-Resumable: 1.0.0``; errors are the API's JSON ones.
"""

from __future__ import annotations

import base64
import binascii
import io
import os
import re
import stat

from flask import Blueprint, Response, current_app, g, request
from werkzeug.exceptions import BadRequest
from werkzeug.http import http_date

from . import files, offload, request_options, resumable
from .errors import error_response
from .models import UploadStatus
from .resumable_storage import UPLOAD_ID
from .representation import clean_filename
from .uploads import content_type_for
from .urls import file_url

PREFIX = "/vimeo/api/v1.0/tus"
TUS_VERSION = "1.0.0"
EXTENSIONS = "creation,creation-defer-length,creation-with-upload,termination,checksum,expiration"
CHUNK_TYPE = "application/offset+octet-stream"
# The largest Upload-Metadata accepted (nginx allows 8 KiB of headers per line anyway).
MAX_METADATA = 4096
_DIGITS = re.compile(r"^[0-9]{1,19}$")
_TOKEN = re.compile(r"^[A-Za-z]{1,16}$")

bp = Blueprint("tus", __name__, url_prefix=PREFIX)


def init_app(app) -> None:
    """What the routes alone cannot do: honour X-HTTP-Method-Override before routing,
    and put Tus-Resumable on every answer under the prefix (routing's 404 and 405 too)."""
    app.wsgi_app = MethodOverride(app.wsgi_app, PREFIX)

    @app.after_request
    def tus_resumable_header(response):
        if request.path.startswith(PREFIX):
            response.headers["Tus-Resumable"] = TUS_VERSION
        return response


class MethodOverride:
    """WSGI middleware: under ``prefix``, the method is X-HTTP-Method-Override's when the
    request has one (tus 1.0.0: "The actual method of the request MUST be ignored")."""

    def __init__(self, wsgi_app, prefix: str):
        self.wsgi_app = wsgi_app
        self.prefix = prefix

    def __call__(self, environ, start_response):
        override = environ.get("HTTP_X_HTTP_METHOD_OVERRIDE", "").strip()
        if override and _TOKEN.match(override) and environ.get("PATH_INFO", "").startswith(self.prefix):
            environ["REQUEST_METHOD"] = override.upper()
        return self.wsgi_app(environ, start_response)


# -- pure functions over the protocol's headers ----------------------------------------

def parse_offset(value: str | None, name: str) -> int:
    """A non-negative integer header (Upload-Offset, Upload-Length)."""
    if value is None or not _DIGITS.match(value.strip()):
        raise BadRequest(f"{name} must be a non-negative integer.")
    return int(value.strip())


def parse_metadata(value: str | None) -> list[tuple[str, bytes, str]]:
    """Upload-Metadata → [(key, decoded value, the pair as sent)]: comma-separated pairs
    of a key and a base64 value (which may be left out); keys unique, without spaces."""
    if value is None or not value.strip():
        return []
    if len(value) > MAX_METADATA:
        raise BadRequest(f"Upload-Metadata is longer than {MAX_METADATA} characters.")
    pairs = []
    seen = set()
    for raw in value.split(","):
        pair = raw.strip()
        key, _, encoded = pair.partition(" ")
        encoded = encoded.strip()
        if not key or " " in encoded or not key.isascii() or not key.isprintable():
            raise BadRequest("Upload-Metadata must be comma-separated pairs of a key and a base64 value.")
        if key in seen:
            raise BadRequest(f"Upload-Metadata names {key!r} twice.")
        seen.add(key)
        try:
            decoded = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise BadRequest(f"The value of {key!r} in Upload-Metadata is not base64.") from None
        pairs.append((key, decoded, pair))
    return pairs


def parse_checksum(value: str | None) -> resumable.Checksum | None:
    """Upload-Checksum: an algorithm name and the base64 digest of the chunk."""
    if value is None:
        return None
    algorithm, _, encoded = value.strip().partition(" ")
    if algorithm not in resumable.CHECKSUM_ALGORITHMS:
        raise BadRequest(f"Upload-Checksum: supported algorithms are {', '.join(resumable.CHECKSUM_ALGORITHMS)}.")
    try:
        digest = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest("Upload-Checksum: the checksum is not base64.") from None
    return resumable.Checksum(algorithm, digest)


def file_options(source: dict) -> files.Options:
    """The product's options (password, max_downloads, expires_in), validated exactly as
    the other upload routes validate them: the one place tus reaches for those rules."""
    return request_options.parse(source)


def file_fields(headers) -> resumable.FileFields:
    """What the completed upload will be, from the creation request's Upload-Metadata and
    option headers (``X-Password``...: request_options.upload_fields), 400 on anything
    invalid."""
    pairs = parse_metadata(headers.get("Upload-Metadata"))
    text = {}
    for key, decoded, _pair in pairs:
        if key in ("filename", "filetype", "name", "type", "password", "max_downloads", "expires_in"):
            try:
                text[key] = decoded.decode("utf-8")
            except UnicodeDecodeError:
                raise BadRequest(f"The value of {key!r} in Upload-Metadata is not UTF-8.") from None
    options = file_options(request_options.upload_fields(headers, text, "Upload-Metadata"))
    # tus-js-client and Uppy send filename/filetype; name/type are Uppy's own names.
    filename = clean_filename(text.get("filename") or text.get("name") or "upload")
    declared = text.get("filetype") or text.get("type")
    echoed = ",".join(pair for key, _decoded, pair in pairs if key != "password")
    return resumable.FileFields(
        filename=filename,
        content_type=content_type_for(declared, filename),
        options=options,
        metadata_header=echoed or None,
    )


# -- the routes ------------------------------------------------------------------------

@bp.before_request
def require_tus_version():
    """Tus-Resumable on every request but OPTIONS, or 412 without processing it."""
    # Chunks are bounded by the upload's length and MAX_RESUMABLE_CHUNK_SIZE, not by
    # the single-request MAX_UPLOAD_SIZE. One byte more for werkzeug: at its bound it
    # cannot tell a body that ends there from one that goes on (resumable.append
    # enforces the bound itself, and _chunk_body a Content-Length past it).
    request.max_content_length = current_app.config["MAX_RESUMABLE_CHUNK_SIZE"] + 1
    if request.method == "OPTIONS":
        return None
    if request.headers.get("Tus-Resumable", "").strip() != TUS_VERSION:
        return error_response(
            412, f"This server speaks tus {TUS_VERSION}: send Tus-Resumable: {TUS_VERSION}.",
            [("Tus-Version", TUS_VERSION)],
        )
    return None


@bp.route("/", methods=["OPTIONS"], endpoint="discover")
@bp.route("/<upload_id>", methods=["OPTIONS"], endpoint="discover_upload")
def discover(upload_id=None):
    """What this server supports (tus OPTIONS)."""
    if upload_id is not None:
        _checked_id(upload_id)
    response = _empty(204)
    response.headers["Tus-Version"] = TUS_VERSION
    response.headers["Tus-Extension"] = EXTENSIONS
    response.headers["Tus-Max-Size"] = str(current_app.config["MAX_RESUMABLE_UPLOAD_SIZE"])
    response.headers["Tus-Checksum-Algorithm"] = ",".join(resumable.CHECKSUM_ALGORITHMS)
    return response


@bp.post("/", endpoint="create_upload")
def create_upload():
    """A new upload (tus creation), with its first bytes if the body carries any."""
    length = _creation_length()
    fields = file_fields(request.headers)
    stream, content_length = _chunk_body(required=False)
    checksum = parse_checksum(request.headers.get("Upload-Checksum"))
    if content_length and length is not None and content_length > length:
        raise resumable.UploadTooLarge("The body is longer than Upload-Length.")
    upload = resumable.create(length, fields)
    headers = {"Location": f"{PREFIX}/{upload.upload_id}"}
    progress = resumable.Progress(upload)
    # content_length is None for a chunked body, 0 when there is none.
    if content_length != 0 or length == 0:
        try:
            progress = resumable.append(upload.upload_id, stream, offset=0, content_length=content_length,
                                        checksum=checksum, chunk_limit=_chunk_limit())
        except (resumable.ChecksumMismatch, resumable.ClientGone) as exc:
            return _refused(exc, headers)
        headers["Upload-Offset"] = str(progress.upload.upload_offset)
    return _answer(201, progress, headers)


@bp.route("/<upload_id>", methods=["HEAD"], endpoint="upload_status")
def upload_status(upload_id):
    """Where an upload stands (tus HEAD); after its completion, the file it became."""
    upload = resumable.find(_checked_id(upload_id))
    headers = {"Upload-Offset": str(upload.upload_offset), "Cache-Control": "no-store"}
    if upload.upload_length is None:
        headers["Upload-Defer-Length"] = "1"
    else:
        headers["Upload-Length"] = str(upload.upload_length)
    if upload.upload_metadata:
        headers["Upload-Metadata"] = upload.upload_metadata
    file, token = resumable.completed_file(upload)
    return _answer(200, resumable.Progress(upload, file, token), headers)


@bp.patch("/<upload_id>", endpoint="append_chunk")
def append_chunk(upload_id):
    """The next bytes of an upload, at Upload-Offset (tus PATCH)."""
    upload_id = _checked_id(upload_id)
    offset = parse_offset(request.headers.get("Upload-Offset"), "Upload-Offset")
    length = request.headers.get("Upload-Length")
    length = None if length is None else parse_offset(length, "Upload-Length")
    checksum = parse_checksum(request.headers.get("Upload-Checksum"))
    stream, content_length = _chunk_body(required=True)
    try:
        progress = resumable.append(upload_id, stream, offset=offset, content_length=content_length,
                                    length=length, checksum=checksum, chunk_limit=_chunk_limit())
    except (resumable.ChecksumMismatch, resumable.ClientGone) as exc:
        return _refused(exc, {})
    return _answer(204, progress, {"Upload-Offset": str(progress.upload.upload_offset)})


@bp.delete("/<upload_id>", endpoint="terminate_upload")
def terminate_upload(upload_id):
    """Forget an upload and free its bytes (tus termination)."""
    resumable.terminate(_checked_id(upload_id))
    return _empty(204)


# -- shaping ---------------------------------------------------------------------------

def _checked_id(upload_id: str) -> str:
    if not UPLOAD_ID.match(upload_id):
        raise resumable.UploadNotFound(upload_id)
    return upload_id


def _creation_length() -> int | None:
    length = request.headers.get("Upload-Length")
    deferred = request.headers.get("Upload-Defer-Length")
    if length is not None and deferred is not None:
        raise BadRequest("Send Upload-Length or Upload-Defer-Length, not both.")
    if deferred is not None:
        if deferred.strip() != "1":
            raise BadRequest("Upload-Defer-Length must be 1.")
        return None
    if length is None:
        raise BadRequest("Send Upload-Length (or Upload-Defer-Length: 1).")
    return parse_offset(length, "Upload-Length")


def _chunk_body(required: bool):
    """(stream, length) of the request's chunk: the body file nginx wrote (the stack, see
    nginx.conf), or the request's own stream; the length is 0 without a body and None
    for a chunked one."""
    body_file = request.headers.get(offload.BODY_FILE_HEADER)
    if body_file and current_app.config["UPLOAD_OFFLOAD"]:
        if request.mimetype != CHUNK_TYPE:
            if required:
                raise _UnsupportedChunkType()
            return io.BytesIO(), 0
        path = offload.checked_body_path(body_file)
        try:
            handle = open(path, "rb")
        except (FileNotFoundError, PermissionError):
            raise BadRequest("The chunk could not be read.") from None
        g.tus_body_files = [*g.get("tus_body_files", ()), handle]
        size = os.fstat(handle.fileno()).st_size
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            raise BadRequest("The chunk could not be read.")
        return handle, size
    content_length = request.content_length
    if content_length is not None and content_length > current_app.config["MAX_RESUMABLE_CHUNK_SIZE"]:
        raise resumable.UploadTooLarge(
            f"A chunk is at most {current_app.config['MAX_RESUMABLE_CHUNK_SIZE']} bytes (MAX_RESUMABLE_CHUNK_SIZE).")
    chunked = "chunked" in request.headers.get("Transfer-Encoding", "").lower()
    if request.mimetype != CHUNK_TYPE:
        if required or content_length or chunked:
            raise _UnsupportedChunkType()
        return io.BytesIO(), 0
    if content_length is None and not chunked:
        return io.BytesIO(), 0
    return request.stream, content_length


def _chunk_limit() -> int:
    return current_app.config["MAX_RESUMABLE_CHUNK_SIZE"]


class _UnsupportedChunkType(Exception):
    pass


def _answer(status: int, progress: resumable.Progress, headers: dict) -> Response:
    response = _empty(status)
    upload = progress.upload
    if upload.status == UploadStatus.OPEN:
        response.headers["Upload-Expires"] = http_date(upload.expires_at)
    for name, value in headers.items():
        response.headers[name] = value
    if progress.file is not None:
        response.headers["X-File-Url"] = file_url(progress.file.filehash)
        if progress.owner_token:
            response.headers["X-Owner-Token"] = progress.owner_token
        response.headers["Cache-Control"] = "no-store"
    return response


def _empty(status: int) -> Response:
    """An answer whose headers say it all (no body, so no Content-Type)."""
    response = Response(status=status)
    del response.headers["Content-Type"]
    return response


def _refused(exc: Exception, headers: dict):
    if isinstance(exc, resumable.ChecksumMismatch):
        return error_response(460, "The chunk does not match Upload-Checksum; it was discarded.", headers.items())
    return error_response(400, "The chunk ended before all of it arrived.", headers.items())


@bp.teardown_request
def _close_body_files(_exc=None):
    for handle in g.get("tus_body_files", ()):
        handle.close()


def _json_error(status: int, message: str | None = None, headers=()):
    def handler(exc):
        return error_response(status, message or (str(exc) or None), headers)
    return handler


bp.register_error_handler(resumable.UploadNotFound, _json_error(404, "No upload at this address."))
bp.register_error_handler(resumable.UploadExpired, _json_error(410, "This upload has expired; start a new one."))
bp.register_error_handler(resumable.UploadBusy, _json_error(
    423, "Another request is writing to this upload; retry after it ends."))
bp.register_error_handler(resumable.UploadTooLarge, _json_error(413))
bp.register_error_handler(resumable.InsufficientStorage, _json_error(507))
bp.register_error_handler(resumable.InvalidRequest, _json_error(400))
bp.register_error_handler(_UnsupportedChunkType, _json_error(
    415, f"A chunk is sent as Content-Type: {CHUNK_TYPE}."))


@bp.errorhandler(resumable.OffsetMismatch)
def _offset_mismatch(exc: resumable.OffsetMismatch):
    return error_response(409, f"Upload-Offset does not match this upload's offset, {exc.expected}; "
                               "ask with HEAD and resume from there.")
