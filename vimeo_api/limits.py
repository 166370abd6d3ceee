"""Rate limits (Flask-Limiter): uploads per client address, and wrong passwords per file
and client address, each answered ``429 Too Many Requests`` with ``Retry-After`` and
``X-RateLimit-*``; and where the client address comes from.

The client address is the peer's, or, behind ``TRUSTED_PROXY_COUNT`` proxies (nginx in
the stack), the one those proxies put in ``X-Forwarded-For`` (werkzeug's ``ProxyFix``).
With no trusted proxy (the embedded default) that header is never read, so a client
cannot pick the address it is counted under.

Each app gets its own ``Limiter``: Flask-Limiter keeps its storage and its outage state
on the instance, so one module-level instance shared by several apps (as in the tests)
would count every app's requests in the storage of whichever app was made last.

- Uploads: an application-wide limit shared by the upload routes, checked before the
  body is read (``UPLOAD_RATE_LIMIT``, default 600/minute: room for scripts).
- Bytes uploaded (and replaced) per address over a window (``UPLOAD_BYTES_LIMIT``,
  default 1 GiB an hour): checked against the declared length before the body is read,
  and charged with the real size once it is, before anything is stored (a sliding
  window counter, whose check-and-add is one step in Redis, so concurrent uploads cannot
  overdraw it together).
- Wrong passwords: only failures count, and the budget is checked before the password
  is hashed, so a client that used it up gets 429 without costing a slow hash, even
  with the right password, until the window moves. Two budgets: per file and address
  (``PASSWORD_RATE_LIMIT``, default 10/minute: guessing one file's password), and per
  address across all files (``PASSWORD_ADDRESS_RATE_LIMIT``, default 30/minute: each
  failure costs a slow hash, and an attacker can make password files of their own, each
  with a budget of its own). Only password-protected files pay the storage round trip.
  Downloads and the token-issuing route (which also accepts the password) share them.
  Flask-Limiter's ``deduct_when`` would do the counting too, but as a route limit it
  would cost every download a round trip to Redis, password or not.

If the storage (Redis) fails, nothing fails with it: Flask-Limiter falls back to
in-process counting for uploads (``RATELIMIT_IN_MEMORY_FALLBACK_ENABLED``,
``RATELIMIT_SWALLOW_ERRORS``) and the password budget does the same here, so guessing
stays throttled per process during an outage.
"""

from __future__ import annotations

import functools
import logging
import math
import time

from flask import Flask, current_app, request
from flask_limiter import ApplicationLimit, Limiter
from limits import RateLimitItem, parse
from limits.storage import MemoryStorage
from limits.strategies import STRATEGIES
from werkzeug.exceptions import TooManyRequests
from werkzeug.middleware.proxy_fix import ProxyFix

from .breaker import Breaker

log = logging.getLogger(__name__)

# A tus upload counts once, at its creation; its chunks are bounded by its length.
UPLOAD_ENDPOINTS = frozenset({"api.upload_multipart", "api.upload_raw", "api.upload_raw_bare", "tus.create_upload"})
# The blueprints whose requests Flask-Limiter checks (see init_app).
LIMITED_BLUEPRINTS = ("api", "tus")


def client_address() -> str:
    """The address a request is counted under (see the module's docstring)."""
    return request.remote_addr or "unknown"


def init_app(app: Flask) -> Limiter:
    """Trust the configured proxies for the client address and set up the limits."""
    proxies = int(app.config["TRUSTED_PROXY_COUNT"])
    if proxies > 0:
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=proxies, x_proto=0, x_host=0, x_port=0, x_prefix=0)

    limiter = Limiter(
        client_address,
        application_limits=[
            ApplicationLimit(
                lambda: current_app.config["UPLOAD_RATE_LIMIT"],
                scope="upload",
                exempt_when=lambda: request.endpoint not in UPLOAD_ENDPOINTS,
                error_message="Too many uploads from this address; retry after Retry-After seconds.",
            )
        ],
    )
    limiter.init_app(app)
    # Flask-Limiter checks in an app-wide before_request hook, registered here before the
    # hook that assigns the request id, so its 429 would carry none; and it costs every
    # request (a download's included) about as much as a cached 304's whole view. Run it
    # after every app-wide hook, as the API blueprint's, and for uploads only.
    hooks = app.before_request_funcs.setdefault(None, [])
    check = next(f for f in hooks if getattr(f, "__self__", None) is limiter)
    hooks.remove(check)

    def check_upload_limit():
        if request.endpoint in UPLOAD_ENDPOINTS:
            check()

    for blueprint in LIMITED_BLUEPRINTS:
        app.before_request_funcs.setdefault(blueprint, []).append(check_upload_limit)

    app.extensions["vimeo_limiter"] = limiter
    app.extensions["vimeo_password_limiter"] = _Budget(limiter, app)
    app.extensions["vimeo_bytes_limiter"] = _Budget(limiter, app, strategy="sliding-window-counter")
    return limiter


class TooManyAttempts(TooManyRequests):
    """A 429 that also tells the limit, as Flask-Limiter's headers do."""

    def __init__(self, description: str, item: RateLimitItem, reset_at: float):
        retry_after = max(1, math.ceil(reset_at - time.time()))
        super().__init__(description, retry_after=retry_after)
        self.rate_headers = [
            ("X-RateLimit-Limit", str(item.amount)),
            ("X-RateLimit-Remaining", "0"),
            ("X-RateLimit-Reset", str(math.ceil(reset_at))),
        ]

    def get_headers(self, environ=None, scope=None):
        return [*super().get_headers(environ, scope), *self.rate_headers]


class _Budget:
    """Counts of the app's own on the limiter's storage: failed password attempts, and
    (``strategy="sliding-window-counter"``) bytes uploaded. On failure the counting goes
    in-process for a while."""

    def __init__(self, limiter: Limiter, app: Flask, strategy: str | None = None):
        self.limiter = limiter
        self.app = app
        self.strategy = strategy
        self.prefix = app.config.get("RATELIMIT_KEY_PREFIX") or ""
        self.fallback = STRATEGIES[strategy or app.config.get("RATELIMIT_STRATEGY") or "moving-window"](MemoryStorage())
        self.breaker = Breaker("rate limit storage", lambda: float(app.config["CACHE_RETRY_AFTER"]), log)
        self._primary = None

    def primary(self):
        """Flask-Limiter's strategy on its storage, or this budget's own on that storage."""
        if self.strategy is None:
            return self.limiter.limiter
        if self._primary is None:
            self._primary = STRATEGIES[self.strategy](self.limiter.storage)
        return self._primary

    def keys(self, filehash: str | None) -> tuple[str, ...]:
        """Per file and address; ``None``: per address, across files."""
        scope = ("password", filehash) if filehash is not None else ("password-any",)
        return tuple(k for k in (self.prefix, *scope, client_address()) if k)

    def call(self, method: str, item: RateLimitItem, keys, **options):
        """Ask the storage; on failure count in this process for a while (and say so once)."""
        if self.breaker.usable():
            try:
                return getattr(self.primary(), method)(item, *keys, **options)
            except Exception as exc:  # Redis down or hung: never a 500 for this
                self.breaker.trip(exc, "counting in-process")
        return getattr(self.fallback, method)(item, *keys, **options)


@functools.lru_cache(maxsize=16)
def _item(text: str) -> RateLimitItem:
    return parse(text)


def _budgets(filehash: str):
    """(limit, keys, what a 429 says) of each wrong-password budget a check draws on."""
    budget: _Budget = current_app.extensions["vimeo_password_limiter"]
    cfg = current_app.config
    return budget, (
        (_item(cfg["PASSWORD_ADDRESS_RATE_LIMIT"]), budget.keys(None), "from this address"),
        (_item(cfg["PASSWORD_RATE_LIMIT"]), budget.keys(filehash), "for this file from this address"),
    )


def check_password_attempts(filehash: str) -> None:
    """429 when this client has used up its wrong-password budget, across files or for
    this file."""
    budget, budgets = _budgets(filehash)
    for item, keys, scope in budgets:
        if not budget.call("test", item, keys):
            stats = budget.call("get_window_stats", item, keys)
            raise TooManyAttempts(
                f"Too many wrong passwords {scope}; retry after Retry-After seconds.", item, stats.reset_time
            )


def record_failed_password(filehash: str) -> None:
    """Count one wrong password for this file from this client (in both budgets)."""
    budget, budgets = _budgets(filehash)
    for item, keys, _scope in budgets:
        budget.call("hit", item, keys)


# -- bytes uploaded ----------------------------------------------------------------------

def _bytes_budget():
    budget: _Budget = current_app.extensions["vimeo_bytes_limiter"]
    item = _item(current_app.config["UPLOAD_BYTES_LIMIT"])
    keys = tuple(k for k in (budget.prefix, "upload-bytes", client_address()) if k)
    return budget, item, keys


def _too_many_bytes(item: RateLimitItem) -> TooManyAttempts:
    # A sliding window frees bytes gradually; its "reset" is when the first of them is
    # free, too soon for an upload: retry when the window has moved on once.
    return TooManyAttempts(
        "Too many bytes uploaded from this address; retry after Retry-After seconds.",
        item,
        time.time() + item.get_expiry(),
    )


def check_upload_bytes(declared: int | None) -> None:
    """429 before the body is read when this address has not ``declared`` bytes left."""
    budget, item, keys = _bytes_budget()
    if not budget.call("test", item, keys, cost=max(1, declared or 0)):
        raise _too_many_bytes(item)


def charge_upload_bytes(size: int) -> None:
    """Take ``size`` bytes from this address's budget, or 429 (nothing is taken then)."""
    if size <= 0:
        return
    budget, item, keys = _bytes_budget()
    if not budget.call("hit", item, keys, cost=size):
        raise _too_many_bytes(item)
