"""Reading an upload out of a request, multipart or raw, in one streaming pass.

werkzeug's multipart parser asks ``Request._get_file_stream`` where to write each file
part; we hand it the storage's ``Upload`` (a file on the storage filesystem, or a
multipart upload to the bucket) that hashes as it writes, so a multipart upload is never
spooled to /tmp or copied a second time.
"""

from __future__ import annotations

import mimetypes
import re

from flask import Request, current_app
from werkzeug.exceptions import BadRequest, ClientDisconnected, HTTPException, RequestEntityTooLarge
from werkzeug.utils import cached_property
from werkzeug.wsgi import get_input_stream

from . import offload, storage
from .errors import InsufficientStorage
from .storage import Upload

# Content types that say nothing about the content: the filename decides instead.
_UNSPECIFIC = {"", "application/octet-stream", "application/x-www-form-urlencoded", "binary/octet-stream"}
_MIME = re.compile(r"^[a-z0-9][a-z0-9!#$&^_.+-]{0,126}/[a-z0-9][a-z0-9!#$&^_.+-]{0,126}$")


class UploadRequest(Request):
    """Flask's request, the app's request class, with file parts streamed to the storage
    filesystem and a body the client garbled answered ``400``, never ``500``.

    Every upload file it hands out is closed with the request: one that was not placed
    is removed, even when the parser failed half-way through a part (a client that hung
    up) and the part never reached ``request.files``.

    ``MAX_UPLOAD_SIZE`` is the size of the file, however it is sent: a multipart body
    may exceed it by ``MULTIPART_OVERHEAD`` (boundaries, part headers, option fields),
    and its file part is held to the limit itself (``multipart_file``).
    """

    @property
    def max_content_length(self) -> int | None:
        limit = super().max_content_length
        if limit is not None and self.mimetype == "multipart/form-data" and current_app:
            return limit + int(current_app.config["MULTIPART_OVERHEAD"])
        return limit

    @max_content_length.setter
    def max_content_length(self, value: int | None) -> None:
        Request.max_content_length.fset(self, value)

    @cached_property
    def stream(self):
        """werkzeug's guarded stream (Content-Length, MAX_CONTENT_LENGTH), over an input
        whose read failures are the client's (``ClientBody``)."""
        environ = {**self.environ, "wsgi.input": ClientBody(self.environ["wsgi.input"])}
        return get_input_stream(environ, max_content_length=self.max_content_length)

    def get_json(self, force=False, silent=False, cache=True):
        """Flask's, with JSON nested too deeply for the parser counted as malformed:
        ``json.loads`` raises RecursionError there, which Flask lets through (it catches
        ValueError only), so ``silent=True`` did not silence it."""
        try:
            return super().get_json(force=force, silent=silent, cache=cache)
        except RecursionError:
            if silent:
                return None
            raise BadRequest("The JSON body is nested too deeply.") from None

    def new_upload(self) -> Upload:
        upload = storage.current().new_upload()
        self.__dict__.setdefault("_uploads", []).append(upload)
        return upload

    def _get_file_stream(self, total_content_length, content_type, filename=None, content_length=None):
        return self.new_upload()

    def close(self) -> None:
        try:
            super().close()
        finally:
            for upload in self.__dict__.get("_uploads", ()):
                upload.close()


class ClientBody:
    """The WSGI input, whose read failures are the client's ``400``.

    werkzeug turns an OSError or ValueError of the server's input into a 400
    (ClientDisconnected), but gunicorn reports a malformed chunked body with exceptions
    of its own (``InvalidChunkSize``, ``ChunkMissingTerminator``…, neither of those), which
    reached the app's error handler as a 500. The app does not import the server: any
    failure to read what the client sent is the client's.
    """

    def __init__(self, stream):
        self._stream = stream

    def read(self, *args):
        return self._guard(self._stream.read, *args)

    def readline(self, *args):
        return self._guard(self._stream.readline, *args)

    @staticmethod
    def _guard(read, *args):
        try:
            return read(*args)
        except HTTPException:
            raise
        except Exception:  # the server's parse error for the client's bytes
            raise BadRequest(
                "The request body could not be read; check its framing (Content-Length or chunked encoding)."
            ) from None


def ensure_room(request: Request) -> None:
    """507 before the body is read when storing it would leave less than
    ``STORAGE_MIN_FREE_BYTES`` free on the storage (the declared length counts; a body
    nginx has written already is on the disk)."""
    minimum = int(current_app.config["STORAGE_MIN_FREE_BYTES"] or 0)
    if not minimum:
        return
    free = storage.current().free_bytes()
    if free is not None and free - (request.content_length or 0) < minimum:
        raise InsufficientStorage("The storage is nearly full (it keeps some space free); retry later.")


def multipart_file(request: Request) -> tuple[Upload, str, str | None]:
    """The uploaded part named ``file``, else the first file part → (upload, filename, type)."""
    files = request.files
    part = files.get("file")
    if part is None:
        part = next(iter(files.values()), None)
    if part is None or not part.filename:
        raise BadRequest("No file was sent: use a multipart part named 'file' (curl -F file=@path).")
    upload = part.stream
    if not isinstance(upload, Upload):  # defensive: never accept an in-memory part
        raise BadRequest("The file part could not be read.")
    if upload.size > current_app.config["MAX_UPLOAD_SIZE"]:
        # The body may carry MULTIPART_OVERHEAD more; the file may not.
        raise RequestEntityTooLarge()
    return upload, part.filename, part.mimetype


def raw_body(request: Request) -> Upload:
    """Copy a raw PUT body into an upload file, chunk by chunk (in the stack nginx has
    already written it to the storage filesystem: see offload.py)."""
    offloaded = offload.offloaded_body(request)
    if offloaded is not None:
        return offloaded
    upload = request.new_upload()
    try:
        upload.copy_from(request.stream)
        # gunicorn reports a client that hung up as a plain end of input; werkzeug does
        # not compare what arrived with Content-Length, so a cut-off body would be
        # stored as if complete.
        if request.content_length is not None and upload.size != request.content_length:
            raise ClientDisconnected("The upload ended before Content-Length bytes arrived.")
    except BaseException:
        upload.close()
        raise
    return upload


def content_type_for(declared: str | None, filename: str) -> str:
    """The declared type when it is specific and well-formed, else a guess from the name."""
    mime = (declared or "").split(";", 1)[0].strip().lower()
    if mime not in _UNSPECIFIC and not mime.startswith("multipart/") and _MIME.match(mime):
        return mime
    guessed, _encoding = mimetypes.guess_type(filename, strict=False)
    return guessed or "application/octet-stream"
