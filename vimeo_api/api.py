"""The v1.0 HTTP API: views parse the request, call the domain layer, shape the answer."""

from __future__ import annotations

from functools import partial

from flask import Blueprint, current_app, jsonify, request
from werkzeug.exceptions import BadRequest, PreconditionFailed, RequestEntityTooLarge, UnsupportedMediaType

from . import access, downloads, files, inventory, limits, request_options, versions
from .errors import FileGone
from .http_semantics import evaluate_preconditions, format_etag
from .models import File, GoneReason, utcnow
from .representation import clean_filename, representation_of
from .uploads import content_type_for, ensure_room, multipart_file, raw_body
from .urls import API_PREFIX, file_url

bp = Blueprint("api", __name__, url_prefix=API_PREFIX)
# Routes that store a body: each is admitted before it is read, and charged once it is.
STORING = frozenset({"api.upload_multipart", "api.upload_raw", "api.upload_raw_bare", "api.replace_file"})


@bp.before_request
def admit_body():
    """Before a body is read: not over MAX_UPLOAD_SIZE (413, whatever the rest), room on
    the storage (507), bytes left for this address (429)."""
    if request.endpoint in STORING:
        # The request's own limit: a multipart body may carry MULTIPART_OVERHEAD more.
        if (request.content_length or 0) > (request.max_content_length or 0):
            raise RequestEntityTooLarge()
        ensure_room(request)
        # A multipart body's length counts its framing and fields too: only a raw body's
        # is the upload's size.
        raw = request.mimetype != "multipart/form-data"
        limits.check_upload_bytes(request.content_length if raw else None)


def _received(upload):
    """A body read in full: its bytes are charged to the client's address (429 leaves
    nothing: the request's end removes an upload not stored)."""
    limits.charge_upload_bytes(upload.size)
    return upload


# -- upload -------------------------------------------------------------------------

@bp.put("/file")
def upload_multipart():
    """Multipart upload, the original contract: ``curl -F file=@x -X PUT .../file``
    (options as form fields, or as the raw upload's ``X-*`` headers)."""
    options = request_options.parse(request_options.upload_fields(request.headers, request.form, "form field"))
    upload, filename, declared = multipart_file(request)
    _received(upload)
    filename = clean_filename(filename)
    file, token = files.create(upload, filename, content_type_for(declared, filename), options)
    return _created(file, token)


@bp.put("/upload/", defaults={"filename": None})
# Its own endpoint: werkzeug redirects (308) between rules of one endpoint that share defaults.
@bp.put("/upload", defaults={"filename": None}, endpoint="upload_raw_bare")
@bp.put("/upload/<filename>")
def upload_raw(filename):
    """Raw body upload: ``curl -T x .../upload/`` (curl appends the file's name)."""
    if request.mimetype == "multipart/form-data":
        # ``curl -F file=@x -X PUT .../upload/``: stored as is, the file would be the form's
        # envelope (boundaries and part headers around the bytes), not what was sent.
        raise UnsupportedMediaType("This is a multipart form: send it to PUT /file (curl -F file=@x -X PUT "
                                   ".../file). PUT /upload/<name> takes the file's own bytes (curl -T x .../upload/).")
    options = request_options.parse(request_options.upload_fields(request.headers))
    filename = clean_filename(filename or "upload")
    upload = _received(raw_body(request))
    file, token = files.create(upload, filename, content_type_for(request.mimetype, filename), options)
    return _created(file, token)


# -- download -----------------------------------------------------------------------

@bp.route("/file/<filehash>", methods=["GET", "HEAD"])
def download(filehash):
    """404 → 410 → 401, then preconditions, range and the bytes (``downloads``); a
    browser or a robot gets the landing page of a limited or password-protected file."""
    return downloads.serve(
        partial(access.file_offer, filehash, request),
        claim=partial(access.claim_offer, filehash, request),
    )


@bp.post("/file/<filehash>")
def download_form(filehash):
    """The landing page's Download button: the whole file, one download used."""
    return downloads.serve_form(partial(access.file_offer, filehash, request))


@bp.get("/file/<filehash>/downloads")
def list_downloads(filehash):
    """The file's transfers, for its owner: a used-up or expired file's too (what happened
    is the question); a deleted file is gone with its history (410)."""
    file = access.owner_of(filehash, request, deleted=False)
    response = jsonify(downloads=inventory.downloads_of(file))
    response.headers["Cache-Control"] = "no-store"
    return response


# -- manage -------------------------------------------------------------------------

@bp.delete("/file/<filehash>")
def delete_file(filehash):
    """Its owner, or an operator with ``files:write``: 410 at once, bytes go later."""
    file = access.deletable(filehash, request)
    if not files.mark_gone(file.id, GoneReason.DELETED):
        # It went gone meanwhile: say why.
        raise FileGone(files.find(filehash).unavailable_reason(utcnow()) or GoneReason.DELETED)
    versions.retire_for_files([file.id])
    return jsonify(status="File Deletion Scheduled"), 202


@bp.put("/file/<filehash>")
def replace_file(filehash):
    """New content for the same URL; If-Match / If-Unmodified-Since guard against races."""
    file = access.owned(filehash, request)
    if evaluate_preconditions("PUT", request.headers, representation_of(file)) is not None:
        raise PreconditionFailed("The file changed since the version your preconditions name.")
    if request.mimetype == "multipart/form-data":
        upload, name, declared = multipart_file(request)
        content_type = content_type_for(declared, clean_filename(name))
    else:
        upload = raw_body(request)
        content_type = content_type_for(request.mimetype, file.filename) if request.mimetype else None
    _received(upload)
    if files.replace_content(file, upload, content_type) is None:
        raise PreconditionFailed("The file changed while this replacement was uploaded.")
    return jsonify(status="File Replaced", **_describe(file))


@bp.patch("/file/<filehash>")
def update_file(filehash):
    file = access.owned(filehash, request)
    changes = request.get_json(silent=True)
    if not isinstance(changes, dict):
        raise BadRequest("Send a JSON object with expires_in, max_downloads and/or password.")
    unknown = set(changes) - {"expires_in", "max_downloads", "password"}
    if unknown:
        raise BadRequest(f"Unknown option(s): {', '.join(sorted(unknown))}.")
    if "password" in changes and changes["password"] is not None and not isinstance(changes["password"], str):
        raise BadRequest("password must be a string, or null to remove it.")
    if changes.get("expires_in", 0) is None:
        changes["expires_in"] = "never"
    file = files.update_options(file, request_options.parse(changes, patch=True))
    return jsonify(status="File Updated", **_describe(file))


# -- shaping ------------------------------------------------------------------------

def _describe(file: File) -> dict:
    return {
        "url": file_url(file.filehash),
        "filehash": file.filehash,
        "filename": file.filename,
        "size": file.size,
        "content_type": file.content_type,
        "sha256": file.sha256,
        "etag": format_etag(file.sha256),
        "max_downloads": file.max_downloads,
        "downloads": file.downloads,
        "expires_at": _iso(file.expires_at),
        "password_protected": file.password_hash is not None,
    }


def _created(file: File, token: str):
    body = {"status": "File Uploaded Successfully", **_describe(file), "owner_token": token}
    response = jsonify(body)
    response.status_code = 201
    response.headers["Location"] = body["url"]
    response.headers["Cache-Control"] = "no-store"
    return response


def _iso(dt):
    return None if dt is None else dt.strftime("%Y-%m-%dT%H:%M:%SZ")
