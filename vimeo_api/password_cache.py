"""Right passwords remembered for ``PASSWORD_CACHE_TTL`` (``access`` uses it), so that
repeated downloads with the right password skip the slow salted hash; wrong passwords
are never remembered, and are hashed and counted every time.

An entry is the HMAC ``security.verification_key`` of the filehash, the stored hash and
the password under a key derived from the signing key: nothing here could let a password
be guessed offline, and a new password (a new salt) never matches an old entry.

Two levels: this process's own memory first (a bounded LRU: a hit costs no round trip),
then the shared cache (Redis in the stack), so one worker's check serves the others. A
shared cache that is down or slow says no, and the process's memory still answers: under
load, when Redis calls time out and the breaker opens, password downloads must not fall
back to computing the slow hash on every request (which made the load worse; measured).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict

from flask import Flask, current_app

from .extensions import cache
from .metacache import CacheUnavailable, guarded

VERIFIED = "pwok:"
# Entries one process keeps (each a 64-character key and a float).
LOCAL_ENTRIES = 4096


class _Local:
    """A bounded, thread-safe map of key → expiry (monotonic seconds)."""

    def __init__(self, size: int = LOCAL_ENTRIES):
        self.size = size
        self.entries: OrderedDict[str, float] = OrderedDict()
        self.lock = threading.Lock()

    def get(self, key: str) -> bool:
        with self.lock:
            until = self.entries.get(key)
            if until is None:
                return False
            if until < time.monotonic():
                del self.entries[key]
                return False
            self.entries.move_to_end(key)
            return True

    def put(self, key: str, ttl: float) -> None:
        with self.lock:
            self.entries[key] = time.monotonic() + ttl
            self.entries.move_to_end(key)
            while len(self.entries) > self.size:
                self.entries.popitem(last=False)


def init_app(app: Flask) -> None:
    app.extensions["vimeo_password_cache"] = _Local()


def _local() -> _Local:
    return current_app.extensions["vimeo_password_cache"]


def verified(key: str) -> bool:
    """Whether a password check with this key succeeded within the TTL."""
    if _local().get(key):
        return True
    try:
        until = guarded(cache.get, VERIFIED + key)
    except CacheUnavailable:
        return False
    # The shared entry holds its own end (wall clock): kept here no longer than there.
    left = until - time.time() if isinstance(until, (int, float)) else 0
    if left <= 0:
        return False
    _local().put(key, left)
    return True


def remember(key: str, ttl: int) -> None:
    _local().put(key, ttl)
    try:
        guarded(cache.set, VERIFIED + key, time.time() + ttl, timeout=ttl)
    except CacheUnavailable:
        pass
