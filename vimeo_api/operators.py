"""The operator API (SPEC 3.7): bearer tokens with scopes, made by ``manage.py tokens``.

Missing or unknown token → 401; a token without the route's scope → 403.
"""

from __future__ import annotations

import base64
import functools
import re

from flask import Blueprint, g, jsonify, request
from sqlalchemy import select
from werkzeug.datastructures import WWWAuthenticate
from werkzeug.exceptions import BadRequest, Forbidden, NotFound, ServiceUnavailable, Unauthorized

from . import inventory, metacache, operator_tokens, purge as purging
from .extensions import db
from .inventory import available_clause
from .models import File, utcnow
from .urls import API_PREFIX
MAX_PAGE = 100
# The base64url (unpadded) of 1 to 18 decimal digits: what _encode_cursor produces for
# any id below 10**18. The OpenAPI document gives the same pattern.
_PAIR = "(MD|MT|Mj|Mz|ND|NT|Nj|Nz|OD|OT)"
_GROUP = _PAIR + "[AEIMQUYcgk][012345wxyz]"
_CURSOR = re.compile(f"({_GROUP}){{0,5}}({_GROUP}|{_PAIR}[AEIMQUYcgk]|(MA|MQ|Mg|Mw|NA|NQ|Ng|Nw|OA|OQ))")
_PURGE_ID = re.compile("[0-9a-f]{32}")
bp = Blueprint("operators", __name__, url_prefix=API_PREFIX)


# -- scopes ---------------------------------------------------------------------------

def require_scope(scope: str):
    def decorator(view):
        @functools.wraps(view)
        def wrapped(*args, **kwargs):
            token = operator_tokens.from_request(request)
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

@bp.get("/files")
@require_scope("files:read")
def list_files():
    """Keyset pagination by id: files added meanwhile appear later, never twice."""
    text = request.args.get("limit", "20")
    # ASCII digits only: int() would also take " 5", "+5" and other scripts' digits.
    if not (text.isascii() and text.isdigit() and len(text) <= 9):
        raise BadRequest("limit must be an integer.")
    limit = int(text)
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
        files=[inventory.describe_file(file, now) for file in page],
        next_cursor=_encode_cursor(page[-1].id) if more else None,
    )


@bp.get("/stats")
@require_scope("stats:read")
def stats():
    return jsonify(inventory.collect_stats())


@bp.post("/purge")
@require_scope("cache:purge")
def purge():
    """``{"type": "url"|"prefix"|"all", "items": [...]}`` → ``202 {"purge_id", "status"}``:
    drops cached metadata and cached 404/410 answers (never changes a file)."""
    body = request.get_json(silent=True)
    if not isinstance(body, dict) or set(body) - {"type", "items"}:
        raise BadRequest('Send a JSON object such as {"type": "url", "items": ["/vimeo/api/v1.0/file/<filehash>"]}.')
    try:
        record = purging.purge(body.get("type"), body.get("items", []))
    except ValueError as exc:
        raise BadRequest(str(exc)) from None
    response = jsonify(purge_id=record["purge_id"], status=record["status"])
    response.status_code = 202
    response.headers["Location"] = f"{API_PREFIX}/purge/{record['purge_id']}"
    return response


@bp.get("/purge/<purge_id>")
@require_scope("cache:purge")
def purge_status(purge_id):
    """A purge's record: type, items, status (``done`` or ``pending``), times."""
    try:
        record = metacache.load_purge(purge_id) if _PURGE_ID.fullmatch(purge_id) else None
    except metacache.CacheUnavailable:
        raise ServiceUnavailable("The cache is unavailable; retry shortly.", retry_after=5) from None
    if record is None:
        raise NotFound("No purge with this id (records are kept for a day).")
    return jsonify(record)


def _encode_cursor(last_id: int) -> str:
    return base64.urlsafe_b64encode(str(last_id).encode()).decode().rstrip("=")


def _decode_cursor(cursor: str | None) -> int:
    if not cursor:
        return 0
    # Only what _encode_cursor hands out: base64 is lenient (padding, stray characters)
    # and an id past SQLite's 64-bit integers failed the query with a 500.
    if not _CURSOR.fullmatch(cursor):
        raise BadRequest("cursor is not one this API handed out.")
    return int(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
