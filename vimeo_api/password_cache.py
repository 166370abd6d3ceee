"""Right passwords remembered for ``PASSWORD_CACHE_TTL`` (``access`` uses it), so that
repeated downloads with the right password skip the slow salted hash; wrong passwords
are never remembered, and are hashed and counted every time.

An entry is the HMAC ``security.verification_key`` of the filehash, the stored hash and
the password under a key derived from the signing key: the cache holds nothing a
password could be guessed from offline, and a new password (a new salt) never matches
an old entry. A cache that is down says no (the hash is computed instead).
"""

from __future__ import annotations

from .extensions import cache
from .metacache import CacheUnavailable, guarded

VERIFIED = "pwok:"


def verified(key: str) -> bool:
    """Whether a password check with this key succeeded within the TTL."""
    try:
        return guarded(cache.get, VERIFIED + key) is not None
    except CacheUnavailable:
        return False


def remember(key: str, ttl: int) -> None:
    try:
        guarded(cache.set, VERIFIED + key, 1, timeout=ttl)
    except CacheUnavailable:
        pass
