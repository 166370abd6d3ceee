"""The operator API (SPEC 3.7): bearer tokens with scopes, made by ``manage.py tokens``.

Missing or unknown token → 401; a token without the route's scope → 403.
"""

from __future__ import annotations

import base64
import functools
import secrets

from flask import Blueprint, g, jsonify, request
from sqlalchemy import func, select
from werkzeug.datastructures import WWWAuthenticate
from werkzeug.exceptions import BadRequest, Forbidden, Unauthorized

from . import security
from .extensions import db
from .models import ApiToken, Blob, File, FileStatus, utcnow

PREFIX = "/vimeo/api/v1.0"
SCOPES = ("files:read", "files:write", "stats:read", "cache:purge")
MAX_PAGE = 100
bp = Blueprint("operators", __name__, url_prefix=PREFIX)


# -- tokens ---------------------------------------------------------------------------

def create_token(name: str, scopes: list[str]) -> tuple[ApiToken, str]:
    """A new bearer token; the secret is returned once and stored only as a hash."""
    unknown = set(scopes) - set(SCOPES)
    if unknown or not scopes:
        raise ValueError(f"scopes must be among {', '.join(SCOPES)}")
    secret = "vmo_" + secrets.token_urlsafe(32)
    token = ApiToken(name=name, token_hash=security.hash_token(secret), scopes=" ".join(sorted(set(scopes))))
    db.session.add(token)
    db.session.commit()
    return token, secret


def bearer_token(req) -> ApiToken | None:
    """The live operator token a request carries, if any."""
    header = req.headers.get("Authorization", "")
    scheme, _, secret = header.partition(" ")
    if scheme.lower() != "bearer" or not secret.strip():
        return None
    # A lookup by the hash of a 256-bit secret: nothing about the secret leaks by timing.
    token = db.session.execute(
        select(ApiToken).where(ApiToken.token_hash == security.hash_token(secret.strip()))
    ).scalar_one_or_none()
    if token is None or token.revoked_at is not None:
        return None
    return token


def require_scope(scope: str):
    def decorator(view):
        @functools.wraps(view)
        def wrapped(*args, **kwargs):
            token = bearer_token(request)
            if token is None:
                raise Unauthorized(
                    "An operator bearer token is required.",
                    www_authenticate=WWWAuthenticate("bearer", {"realm": "vimeo_api"}),
                )
            if scope not in token.scope_set:
                raise Forbidden(f"This token lacks the {scope} scope.")
            g.operator_token = token
            return view(*args, **kwargs)

        return wrapped

    return decorator


# -- routes ---------------------------------------------------------------------------

def available_clause(now):
    return (
        (File.status == FileStatus.AVAILABLE)
        & (File.expires_at.is_(None) | (File.expires_at > now))
        & ((File.max_downloads == 0) | (File.downloads < File.max_downloads))
    )


@bp.get("/files")
@require_scope("files:read")
def list_files():
    """Keyset pagination by id: files added meanwhile appear later, never twice."""
    try:
        limit = int(request.args.get("limit", 20))
    except ValueError:
        raise BadRequest("limit must be an integer.") from None
    if not 1 <= limit <= MAX_PAGE:
        raise BadRequest(f"limit must be between 1 and {MAX_PAGE}.")
    after = _decode_cursor(request.args.get("cursor"))
    status = request.args.get("status", "all")
    query = select(File).where(File.id > after).order_by(File.id).limit(limit + 1)
    now = utcnow()
    if status == "available":
        query = query.where(available_clause(now))
    elif status == "gone":
        query = query.where(~available_clause(now))
    elif status != "all":
        raise BadRequest("status must be available, gone or all.")
    rows = db.session.execute(query).scalars().all()
    page, more = rows[:limit], len(rows) > limit
    return jsonify(
        files=[_describe(file, now) for file in page],
        next_cursor=_encode_cursor(page[-1].id) if more else None,
    )


@bp.get("/stats")
@require_scope("stats:read")
def stats():
    now = utcnow()
    by_status = {}
    for label, clause in (("available", available_clause(now)), ("gone", ~available_clause(now))):
        count, size = db.session.execute(
            select(func.count(File.id), func.coalesce(func.sum(File.size), 0)).where(clause)
        ).one()
        by_status[label] = {"files": count, "bytes": int(size)}
    downloads, served = db.session.execute(
        select(func.coalesce(func.sum(File.downloads), 0), func.coalesce(func.sum(File.bytes_served), 0))
    ).one()
    blobs, stored = db.session.execute(
        select(func.count(Blob.sha256), func.coalesce(func.sum(Blob.size), 0))
    ).one()
    return jsonify(
        files=by_status,
        downloads=int(downloads),
        bytes_served=int(served),
        stored={"blobs": blobs, "bytes": int(stored)},
    )


def _describe(file: File, now) -> dict:
    return {
        "filehash": file.filehash,
        "filename": file.filename,
        "size": file.size,
        "content_type": file.content_type,
        "sha256": file.sha256,
        "status": "available" if file.is_available(now) else "gone",
        "gone_reason": file.gone_reason,
        "downloads": file.downloads,
        "max_downloads": file.max_downloads,
        "password_protected": file.password_hash is not None,
        "created_at": _iso(file.created_at),
        "expires_at": _iso(file.expires_at),
    }


def _iso(dt):
    return None if dt is None else dt.strftime("%Y-%m-%dT%H:%M:%SZ")


def _encode_cursor(last_id: int) -> str:
    return base64.urlsafe_b64encode(str(last_id).encode()).decode().rstrip("=")


def _decode_cursor(cursor: str | None) -> int:
    if not cursor:
        return 0
    try:
        value = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        if not value.isdigit():
            raise ValueError
        return int(value)
    except ValueError:
        raise BadRequest("cursor is not one this API handed out.") from None
