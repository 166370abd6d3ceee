"""Secrets: file passwords (salted slow hash) and owner tokens (random, stored hashed)."""

from __future__ import annotations

import hashlib
import hmac
import secrets

from werkzeug.security import check_password_hash, generate_password_hash


def new_filehash() -> str:
    """128 random bits as 32 lowercase hex: the unguessable part of a file's URL."""
    return secrets.token_hex(16)


def new_owner_token() -> str:
    return secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    """Tokens are 256 random bits, so one fast hash is enough to store them safely."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def token_matches(token: str | None, stored_hash: str) -> bool:
    if not token:
        return False
    return hmac.compare_digest(hash_token(token), stored_hash)


def hash_password(password: str, method: str) -> str:
    return generate_password_hash(password, method=method)


def verification_key(secret: bytes, filehash: str, stored_hash: str, password: str) -> str:
    """What a successful password check is remembered under (access.py): keyed with a
    server secret, so the cache holds nothing a password could be guessed from offline;
    the stored hash is part of it, so a new password (new salt) never matches an old one."""
    message = "\0".join((filehash, stored_hash, hashlib.sha256(password.encode("utf-8")).hexdigest()))
    return hmac.new(secret, message.encode(), hashlib.sha256).hexdigest()


def password_matches(password: str | None, stored_hash: str) -> bool:
    """Constant-time check (werkzeug compares with hmac.compare_digest)."""
    if password is None:
        return False
    return check_password_hash(stored_hash, password)


def keyed_digest(secret: bytes, value: str) -> str:
    """An HMAC-SHA256 of ``value``: recognises it again without storing it (a client's
    address, for resumed downloads)."""
    return hmac.new(secret, value.encode("utf-8"), hashlib.sha256).hexdigest()
