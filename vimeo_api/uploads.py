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
from werkzeug.exceptions import BadRequest, ClientDisconnected

from . import offload, storage
from .storage import Upload

# Content types that say nothing about the content: the filename decides instead.
_UNSPECIFIC = {"", "application/octet-stream", "application/x-www-form-urlencoded", "binary/octet-stream"}
_MIME = re.compile(r"^[a-z0-9][a-z0-9!#$&^_.+-]{0,126}/[a-z0-9][a-z0-9!#$&^_.+-]{0,126}$")


class UploadRequest(Request):
    """Flask's request, with file parts streamed to the storage filesystem.

    Every upload file it hands out is closed with the request: one that was not placed
    is removed, even when the parser failed half-way through a part (a client that hung
    up) and the part never reached ``request.files``.
    """

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
