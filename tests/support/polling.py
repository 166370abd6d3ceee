"""Waiting for something another process does, to a deadline, never for a fixed time."""

from __future__ import annotations

import time
from typing import Callable, TypeVar

T = TypeVar("T")


def wait_until(predicate: Callable[[], T], timeout: float, message: str, interval: float = 0.05) -> T:
    """``predicate()``'s first truthy result; an ``AssertionError`` with ``message`` when
    none came within ``timeout`` seconds. The predicate runs once more at the deadline,
    so a slow machine still gets its last look."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{message} (waited {timeout}s)")
        time.sleep(interval)


def eventually(check: Callable[[], T], timeout: float = 5.0, interval: float = 0.02) -> T:
    """``check()``'s first truthy result, or its last (falsy) one at the deadline: for
    ``assert eventually(lambda: ...)``, where pytest shows the expression that failed."""
    deadline = time.monotonic() + timeout
    while not (result := check()) and time.monotonic() < deadline:
        time.sleep(interval)
    return result
