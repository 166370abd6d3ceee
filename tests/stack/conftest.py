"""Fixtures of the stack tests: the session's nginx + gunicorn (see harness.py), emptied
before each test, and stacks of their own for tests that break one."""

from __future__ import annotations

import pytest

from .harness import start_stack


@pytest.fixture
def stack(nginx_stack):
    """The session's stack with empty tables and storage."""
    nginx_stack.reset()
    yield nginx_stack
    nginx_stack.reset()


@pytest.fixture
def own_stack(pg_url, tmp_path):
    """Start a stack for this test alone (one that the test may break)."""
    started = []

    def start(**options):
        s = start_stack(tmp_path / f"stack{len(started)}", pg_url, **options)
        started.append(s)
        return s

    yield start
    for s in started:
        s.stop()
        s.reset()
