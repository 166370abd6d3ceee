"""Fixture of the stack tests: the session's nginx + gunicorn (support.fixtures'
``nginx_stack``), emptied before and after each test. Stacks of a test's own (to
break one) come from ``own_stack``."""

from __future__ import annotations

import pytest


@pytest.fixture
def stack(nginx_stack):
    """The session's stack with empty tables and storage."""
    nginx_stack.reset()
    yield nginx_stack
    nginx_stack.reset()
