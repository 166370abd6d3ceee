"""nginx's side of the fast path: the ``auth_request`` subrequest that asks whether a
shareable file or version may be answered without the app (nginx.conf's
``/_vimeo_grant``). The grants themselves, and why they are correct, are ``grants``'s.
Registered only with ``FAST_PATH`` on; nginx never lets a client reach it (internal).
"""

from __future__ import annotations

import time

from flask import Blueprint, Response

from . import files, grants, metacache, versions
from .grants import Grant

bp = Blueprint("fastpath", __name__)


@bp.get("/_vimeo/grant/f/<shard>/<ident>")
def grant_file(shard, ident):
    if not grants.enabled() or not grants.ID.match(ident) or shard != ident[:2]:
        return _refuse()
    file = metacache.lookup(ident, files.find)
    # nginx trusts this answer: an existing grant is checked against the database too.
    grant = grants.ensure_file(file, verify=True) if file is not None else None
    if grant is None:
        # Whatever grant is left (its writer's removal was lost) goes now, not at the
        # sweep's audit: nginx then stops asking (no grant directory).
        grants.revoke_files([ident], with_versions=False)
    return _answer(grant)


@bp.get("/_vimeo/grant/v/<shard>/<ident>")
def grant_version(shard, ident):
    if not grants.enabled() or not grants.ID.match(ident) or shard != ident[:2]:
        return _refuse()
    return _answer(grants.ensure_version(versions.find(ident), verify=True))


@bp.get("/_vimeo/grant/<path:anything>")
def grant_other(anything):
    """auth_request turns any status but 2xx, 401 and 403 into a 500: refuse with 403."""
    return _refuse()


def _answer(grant: Grant | None) -> Response:
    if grant is None:
        return _refuse()
    response = Response(status=200, headers=grant.headers())
    response.headers["X-Accel-Expires"] = f"@{grant.cache_until(time.time())}"
    return response


def _refuse() -> Response:
    """Not shareable (or unknown): nginx sends the request to the app's download view."""
    return Response(status=403)
