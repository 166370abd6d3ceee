"""The v1.0 HTTP API: views parse the request, call the domain layer, shape the answer."""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify, request
from werkzeug.exceptions import BadRequest, Gone, PreconditionFailed

from . import access, delivery, fastpath, files, metacache, versions
from .http_semantics import cache_class, evaluate_preconditions, format_etag
from .models import File, GoneReason, utcnow
from .uploads import clean_filename, content_type_for, multipart_file, raw_body

PREFIX = "/vimeo/api/v1.0"
bp = Blueprint("api", __name__, url_prefix=PREFIX)


# -- upload -------------------------------------------------------------------------

@bp.put("/file")
def upload_multipart():
    """Multipart upload, the original contract: ``curl -F file=@x -X PUT .../file``."""
    options = _options(request.form)
    upload, filename, declared = multipart_file(request)
    filename = clean_filename(filename)
    file, token = files.create(upload, filename, content_type_for(declared, filename), options)
    return _created(file, token)


@bp.put("/upload/", defaults={"filename": None})
# Its own endpoint: werkzeug redirects (308) between rules of one endpoint that share defaults.
@bp.put("/upload", defaults={"filename": None}, endpoint="upload_raw_bare")
@bp.put("/upload/<filename>")
def upload_raw(filename):
    """Raw body upload: ``curl -T x .../upload/`` (curl appends the file's name)."""
    options = _options(_header_options(request.headers))
    filename = clean_filename(filename or "upload")
    upload = raw_body(request)
    file, token = files.create(upload, filename, content_type_for(request.mimetype, filename), options)
    return _created(file, token)


# -- download -----------------------------------------------------------------------

@bp.route("/file/<filehash>", methods=["GET", "HEAD"])
def download(filehash):
    """Access check (404 → 410 → 401), then preconditions, range and the bytes.

    The checks may be answered from the metadata cache; sending bytes is decided by the
    database alone (``files.consume_download``). When it refuses what a cached entry
    allowed, the entry is dropped, and unless the file is really gone (410) the request
    runs once more on fresh metadata: its content changed meanwhile.
    """
    stale: list[bool] = []
    try:
        return _download(filehash, fresh=False, stale=stale)
    except Gone:
        if not stale:
            raise
    return _download(filehash, fresh=True, stale=[])


def _download(filehash: str, *, fresh: bool, stale: list):
    file = access.downloadable(filehash, request, fresh=fresh)
    klass = cache_class(max_downloads=file.max_downloads, has_password=file.password_hash is not None)

    def consume(nbytes: int) -> bool:
        if files.consume_download(file.id, nbytes, file.sha256):
            return True
        metacache.invalidate(file.filehash)
        if not fresh:
            current = files.find(file.filehash)
            if current is not None and current.is_available(utcnow()):
                stale.append(True)
        return False

    response = delivery.respond(file, klass, consume=consume)
    if klass == "public":
        # From now on nginx may answer this file's plain downloads itself (fastpath.py).
        fastpath.ensure_file(file)
    return response


# -- manage -------------------------------------------------------------------------

@bp.delete("/file/<filehash>")
def delete_file(filehash):
    """Its owner, or an operator with ``files:write``: 410 at once, bytes go later."""
    file = access.deletable(filehash, request)
    if not files.mark_gone(file.id, GoneReason.DELETED):
        raise Gone()
    versions.retire_for_files([file.id])
    return jsonify(status="File Deletion Scheduled"), 202


@bp.put("/file/<filehash>")
def replace_file(filehash):
    """New content for the same URL; If-Match / If-Unmodified-Since guard against races."""
    file = access.owned(filehash, request)
    if evaluate_preconditions("PUT", request.headers, delivery.representation(file)) is not None:
        raise PreconditionFailed("The file changed since the version your preconditions name.")
    if request.mimetype == "multipart/form-data":
        upload, name, declared = multipart_file(request)
        content_type = content_type_for(declared, clean_filename(name))
    else:
        upload = raw_body(request)
        content_type = content_type_for(request.mimetype, file.filename) if request.mimetype else None
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
    file = files.update_options(file, _options(changes, patch=True))
    return jsonify(status="File Updated", **_describe(file))


# -- shaping ------------------------------------------------------------------------

def _options(source, patch: bool = False) -> files.Options:
    """Validate upload options from form fields, headers or JSON (400 on bad input)."""
    options = files.Options()
    try:
        if source.get("max_downloads") not in (None, ""):
            options.max_downloads = files.parse_max_downloads(source["max_downloads"])
        if source.get("expires_in") not in (None, ""):
            options.expires_at = files.parse_expires_in(source["expires_in"], utcnow())
    except ValueError as exc:
        raise BadRequest(str(exc)) from None
    if "password" in source:
        password = source["password"]
        if patch and password is None:
            options.password = None
        elif password:
            if len(password) > 1024:
                raise BadRequest("password is longer than 1024 characters.")
            options.password = password
    return options


def _header_options(headers) -> dict:
    mapping = {"X-Password": "password", "X-Max-Downloads": "max_downloads", "X-Expires-In": "expires_in"}
    return {key: headers[name] for name, key in mapping.items() if name in headers}


def file_url(file: File) -> str:
    return f"{current_app.config['PUBLIC_URL']}{PREFIX}/file/{file.filehash}"


def _describe(file: File) -> dict:
    return {
        "url": file_url(file),
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
