"""Content delivery routes: immutable published versions and short-lived signed tokens."""

from __future__ import annotations

import math
from datetime import datetime, timezone

from flask import Blueprint, current_app, jsonify, request
from werkzeug.datastructures import WWWAuthenticate
from werkzeug.exceptions import BadRequest, Forbidden, Gone, NotFound, Unauthorized

from . import access, delivery, fastpath, files, signing, versions
from .http_semantics import cache_class, format_etag
from .models import utcnow

PREFIX = "/vimeo/api/v1.0"
bp = Blueprint("content", __name__, url_prefix=PREFIX)


@bp.post("/file/<filehash>/versions")
def publish_version(filehash):
    """Freeze the current content: ``201 {"version_id", "url", "etag"}`` (owner only)."""
    file = access.owned(filehash, request)
    version = versions.publish(file)
    url = f"{current_app.config['PUBLIC_URL']}{PREFIX}/v/{version.version_id}"
    response = jsonify(version_id=version.version_id, url=url, etag=format_etag(version.sha256))
    response.status_code = 201
    response.headers["Location"] = url
    return response


@bp.route("/v/<version_id>", methods=["GET", "HEAD"])
def download_version(version_id):
    """A published version: immutable cache class, no password, no download used."""
    found = versions.find(version_id) if len(version_id) == 32 else None
    if found is None:
        raise NotFound()
    version, file = found
    if not versions.is_available(version, file, utcnow()):
        raise Gone()
    response = delivery.respond(version, cache_class(max_downloads=0, has_password=False, published=True))
    fastpath.ensure_version(found)
    return response


@bp.post("/file/<filehash>/tokens")
def issue_token(filehash):
    """``{"expires_in": seconds}`` → ``201 {"token", "url", "expires_at"}``."""
    file = access.owner_or_password(filehash, request)
    body = request.get_json(silent=True) if request.content_length else {}
    if not isinstance(body, dict):
        raise BadRequest('Send a JSON object such as {"expires_in": 300}, or no body.')
    cfg = current_app.config
    expires_in = body.get("expires_in", cfg["TOKEN_DEFAULT_EXPIRES_IN"])
    if isinstance(expires_in, float) and expires_in.is_integer():  # JSON's 60.0 is 60
        expires_in = int(expires_in)
    if isinstance(expires_in, bool) or not isinstance(expires_in, int) or expires_in < 1:
        raise BadRequest("expires_in must be a whole number of seconds >= 1.")
    if expires_in > cfg["TOKEN_MAX_EXPIRES_IN"]:
        raise BadRequest(f"expires_in is more than the maximum of {cfg['TOKEN_MAX_EXPIRES_IN']} seconds.")
    expires_at = math.ceil(utcnow().timestamp() + expires_in)
    token = signing.issue(file.filehash, expires_at)
    url = f"{cfg['PUBLIC_URL']}{PREFIX}/t/{token}"
    response = jsonify(
        token=token,
        url=url,
        expires_at=datetime.fromtimestamp(expires_at, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    )
    response.status_code = 201
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.route("/t/<token>", methods=["GET", "HEAD"])
def download_with_token(token):
    """Tampered → 401, expired → 403, file gone → 410; uses a download like any other."""
    try:
        filehash = signing.verify(token)
    except signing.TokenInvalid:
        raise Unauthorized(
            "This token is not valid.", www_authenticate=WWWAuthenticate("token", {"realm": "vimeo_api"})
        ) from None
    except signing.TokenExpired:
        raise Forbidden("This token has expired.") from None
    file = files.find(filehash)
    if file is None or not file.is_available(utcnow()):
        raise Gone()
    return delivery.respond(
        file,
        cache_class(max_downloads=file.max_downloads, has_password=False, token=True),
        consume=lambda nbytes: files.consume_download(file.id, nbytes, file.sha256),
    )
