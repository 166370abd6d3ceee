"""Short-lived signed download tokens (SPEC 3.6).

A token carries the filehash and its expiry, signed with HMAC-SHA256 by itsdangerous.
``TOKEN_SIGNING_KEYS`` is a list: the first key signs, every key verifies, so keys
rotate without breaking live links (put the new key first, drop the old one later).
Without configured keys, a random key is generated once per installation in the
instance folder: there is no built-in secret.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import time

from flask import current_app
from itsdangerous import BadSignature, URLSafeSerializer
from itsdangerous.encoding import base64_decode, base64_encode

SALT = "vimeo_api.download-token"


class TokenInvalid(Exception):
    """Tampered with, or signed by no key we know."""


class TokenExpired(Exception):
    """Genuine, but past its expiry."""


def _keys() -> list[str]:
    keys = current_app.config.get("TOKEN_SIGNING_KEYS") or []
    if isinstance(keys, str):
        keys = [keys]
    return list(keys) or [_installation_key()]


def _installation_key() -> str:
    path = os.path.join(current_app.instance_path, "token-signing.key")
    try:
        with open(path) as fh:
            return fh.read().strip()
    except FileNotFoundError:
        os.makedirs(current_app.instance_path, exist_ok=True)
        key = secrets.token_hex(32)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another worker made it first
            return _installation_key()
        with os.fdopen(fd, "w") as fh:
            fh.write(key)
        return key


def derived_secret(purpose: str) -> bytes:
    """A secret for another use than signing links, derived from the signing key (so it
    changes when that key is rotated), computed once per process and purpose."""
    secrets_by_purpose = current_app.extensions.setdefault("vimeo_derived_secrets", {})
    if purpose not in secrets_by_purpose:
        secrets_by_purpose[purpose] = hmac.new(_keys()[0].encode(), purpose.encode(), hashlib.sha256).digest()
    return secrets_by_purpose[purpose]


def _serializer() -> URLSafeSerializer:
    # itsdangerous signs with the LAST key of its list and verifies with all of them.
    return URLSafeSerializer(
        list(reversed(_keys())), salt=SALT, signer_kwargs={"digest_method": hashlib.sha256}
    )


def issue(filehash: str, expires_at: int) -> str:
    return _serializer().dumps({"f": filehash, "e": int(expires_at)})


def verify(token: str) -> str:
    """The filehash a token grants, or TokenInvalid / TokenExpired."""
    try:
        payload = _serializer().loads(token)
        # The last base64 character of a 32-byte signature carries 2 padding bits that
        # decoding ignores, so a token with that character changed would still verify.
        # A token is valid only in its canonical spelling.
        signature = token.rsplit(".", 1)[-1]
        if base64_encode(base64_decode(signature)).decode() != signature:
            raise BadSignature("non-canonical signature encoding")
    except BadSignature:
        raise TokenInvalid() from None
    if not isinstance(payload, dict) or not isinstance(payload.get("f"), str) or not isinstance(payload.get("e"), int):
        raise TokenInvalid()
    if payload["e"] <= time.time():
        raise TokenExpired()
    return payload["f"]
