"""Fixtures of the worker tests: a private PostgreSQL cluster for the session and a
factory of worker stacks (support.stacks.WorkerStack) that stops every process it
started."""

from __future__ import annotations

import pytest

from support.services import PrivatePostgres
from support.stacks import WorkerStack


@pytest.fixture(scope="session")
def private_postgres():
    """One private PostgreSQL cluster for the worker tests; each stack has its own database."""
    pg = PrivatePostgres()
    pg.start()
    yield pg
    pg.destroy()


@pytest.fixture(scope="module")
def stack_factory(private_postgres, tmp_path_factory):
    """Build stacks for one test module; all of them are stopped when the module ends."""
    stacks: list[WorkerStack] = []

    def build(name: str, pg: PrivatePostgres | None = None, **settings) -> WorkerStack:
        stack = WorkerStack(tmp_path_factory.mktemp(name), pg or private_postgres, **settings)
        stacks.append(stack)
        return stack

    yield build
    for stack in stacks:
        stack.close()
