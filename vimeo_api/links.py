"""Links beside a file's own URL: immutable published versions (SPEC 3.5) and
short-lived signed tokens (SPEC 3.6); publishing, issuing and revoking, and their
download routes, which go through the one download pipeline (``downloads``)."""

from __future__ import annotations

import math
from datetime import datetime, timezone
from functools import partial

from flask import Blueprint, current_app, jsonify, request
from werkzeug.exceptions import BadRequest

from . import access, download_tokens, downloads, signing, versions
from .http_semantics import format_etag
from .models import utcnow
from .urls import API_PREFIX, absolute

bp = Blueprint("links", __name__, url_prefix=API_PREFIX)


@bp.post("/file/<filehash>/versions")
def publish_version(filehash):
    """Freeze the current content: ``201 {"version_id", "url", "etag"}`` (owner only)."""
    file = access.owned(filehash, request)
    version = versions.publish(file)
    url = absolute(f"/v/{version.version_id}")
    response = jsonify(version_id=version.version_id, url=url, etag=format_etag(version.sha256))
    response.status_code = 201
    response.headers["Location"] = url
    return response


@bp.route("/v/<version_id>", methods=["GET", "HEAD"])
def download_version(version_id):
    """A published version: immutable cache class, no password, no download used."""
    return downloads.serve(partial(access.version_offer, version_id))


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
    link_id = download_tokens.create(file, datetime.fromtimestamp(expires_at, timezone.utc))
    token = signing.issue(link_id, expires_at)
    url = absolute(f"/t/{token}")
    response = jsonify(
        token=token,
        url=url,
        expires_at=datetime.fromtimestamp(expires_at, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    )
    response.status_code = 201
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.delete("/file/<filehash>/tokens")
def revoke_tokens(filehash):
    """Revoke every live signed link of a file (owner only): ``{"revoked": n}``."""
    file = access.owned(filehash, request)
    response = jsonify(status="Links Revoked", revoked=download_tokens.revoke_for_file(file.id))
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.route("/t/<token>", methods=["GET", "HEAD"])
def download_with_token(token):
    """Tampered → 401, expired or revoked → 403, file gone → 410; uses a download like
    any other."""
    return downloads.serve(partial(access.token_offer, token))


@bp.post("/t/<token>")
def download_with_token_form(token):
    """The landing page's Download button for a token link."""
    return downloads.serve_form(partial(access.token_offer, token))
