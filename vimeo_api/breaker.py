"""One circuit breaker for every dependency a request may find down (the cache's Redis,
the rate limiter's Redis, the Celery broker): after a failure, leave it alone for a
while and do without, so an outage costs one slow request per period instead of every
request, and is logged once per period instead of once per request."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable


class Breaker:
    """Open for ``retry_after()`` seconds after each failure; closed otherwise."""

    def __init__(self, what: str, retry_after: Callable[[], float], log: logging.Logger):
        self.what = what
        self.retry_after = retry_after
        self.log = log
        self.lock = threading.Lock()
        self.down_until = 0.0

    def usable(self) -> bool:
        return time.monotonic() >= self.down_until

    def trip(self, exc: BaseException, doing: str) -> bool:
        """Open the breaker after ``exc``; warn once per period. Returns whether this
        failure was the first of its period."""
        period = float(self.retry_after())
        with self.lock:
            first = self.usable()
            self.down_until = time.monotonic() + period
        if first:
            self.log.warning(
                "%s unavailable (%s: %s): %s for %gs",
                self.what, exc.__class__.__name__, str(exc)[:200], doing, period,
            )
        return first
