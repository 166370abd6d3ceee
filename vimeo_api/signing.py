"""Short-lived signed download tokens (SPEC 3.6), and the keys that sign them.

A token carries a link's random id and its expiry (never the file's hash: see
``download_tokens``), signed with HMAC-SHA256 by itsdangerous. ``TOKEN_SIGNING_KEYS``
is a list: the first key signs, every key verifies, so keys rotate without breaking
live links (put the new key first, drop the old one later).

Without configured keys, a random key is made once per installation in ``STATE_DIR``
(``token-signing.key``, 0600): there is no built-in secret, and nothing is written
beside the code. It is made atomically (written and synced under a temporary name,
then linked into place), so the file either does not exist or holds a whole key; a key
file that is empty or short was cut or edited by something else, and the server
refuses to start (``SigningKeyError``, raised at start-up by ``init_keys``) rather than sign with a
guessable key. Configured keys are held to the same minimum.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import time

from flask import Flask, current_app
from itsdangerous import BadSignature, URLSafeSerializer
from itsdangerous.encoding import base64_decode, base64_encode

log = logging.getLogger(__name__)

SALT = "vimeo_api.download-token"
KEY_FILE = "token-signing.key"
# Characters a key needs: 32 characters of secrets.token_urlsafe are 192 bits.
MIN_KEY_LENGTH = 32


class TokenInvalid(Exception):
    """Tampered with, or signed by no key we know."""


class TokenExpired(Exception):
    """Genuine, but past its expiry."""


class SigningKeyError(RuntimeError):
    """The signing keys cannot be used; the message says what to do."""


def init_keys(app: Flask) -> None:
    """Check the signing keys at start-up, making the installation key if there is none:
    a server whose keys are unusable must not start (it would fail every password
    download and token, or sign with a guessable key)."""
    with app.app_context():
        try:
            _keys()
        except SigningKeyError as exc:
            log.critical("cannot start: %s", exc)
            raise


def _keys() -> list[str]:
    keys = current_app.config.get("TOKEN_SIGNING_KEYS") or []
    if isinstance(keys, str):
        keys = [keys]
    keys = [str(key) for key in keys]
    for position, key in enumerate(keys):
        if len(key) < MIN_KEY_LENGTH:
            raise SigningKeyError(
                f"TOKEN_SIGNING_KEYS[{position}] has {len(key)} characters; a key needs at least "
                f"{MIN_KEY_LENGTH} (python -c 'import secrets; print(secrets.token_urlsafe(32))')"
            )
    return keys or [_installation_key()]


def key_path() -> str:
    """Where the installation key lives: the state directory, never the code's."""
    return os.path.join(current_app.config["STATE_DIR"], KEY_FILE)


def _installation_key() -> str:
    path = key_path()
    try:
        with open(path) as fh:
            key = fh.read().strip()
    except FileNotFoundError:
        return _make_installation_key(path)
    if len(key) < MIN_KEY_LENGTH:
        raise SigningKeyError(
            f"the token signing key {path} holds {len(key)} characters, fewer than {MIN_KEY_LENGTH}: "
            "it was cut short or edited (this server writes whole keys only). Remove the file to have "
            "a new key made (links signed with the old one stop working), or set VIMEO_TOKEN_SIGNING_KEYS."
        )
    return key


def _make_installation_key(path: str) -> str:
    """Write a new key under a temporary name, sync it, then link it into place: a crash
    leaves no key file or a whole one, and of two processes starting at once the second
    finds the first's key (``link`` never replaces)."""
    directory = os.path.dirname(path)
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        key = secrets.token_hex(32)
        tmp = os.path.join(directory, f".{KEY_FILE}.{secrets.token_hex(8)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(key + "\n")
                fh.flush()
                os.fsync(fh.fileno())
            try:
                os.link(tmp, path)
            except FileExistsError:  # another process made it first
                return _installation_key()
        finally:
            os.unlink(tmp)
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        raise SigningKeyError(
            f"cannot make the token signing key in {directory} ({exc.strerror}): set STATE_DIR "
            "(VIMEO_STATE_DIR) to a directory this service may write, or set VIMEO_TOKEN_SIGNING_KEYS"
        ) from None
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


def issue(link_id: str, expires_at: int) -> str:
    """A token for a link (``download_tokens``) until ``expires_at`` (Unix seconds)."""
    return _serializer().dumps({"t": link_id, "e": int(expires_at)})


def verify(token: str) -> str:
    """The link id a token names, or TokenInvalid / TokenExpired."""
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
    if not isinstance(payload, dict) or not isinstance(payload.get("t"), str) or not isinstance(payload.get("e"), int):
        raise TokenInvalid()
    if payload["e"] <= time.time():
        raise TokenExpired()
    return payload["t"]
