"""Operators' bearer tokens with scopes (SPEC 3.7), made by ``manage.py tokens``: the
secret is shown once and stored only as a hash."""

from __future__ import annotations

import secrets

from sqlalchemy import select

from . import security
from .extensions import db
from .models import ApiToken

SCOPES = ("files:read", "files:write", "stats:read", "cache:purge")


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


def from_request(req) -> ApiToken | None:
    """The live operator token a request carries in ``Authorization: Bearer``, if any."""
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
