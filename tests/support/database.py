"""PostgreSQL databases of the test run: created, migrated with the project's own
migrations, emptied between tests, dropped at the end."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys

from sqlalchemy import create_engine, text

from . import ROOT


def migrate_database(url: str) -> None:
    """``manage.py db upgrade`` on ``url``, as an operator would run it."""
    subprocess.run(
        [sys.executable, "manage.py", "db", "upgrade"],
        cwd=ROOT,
        env={**os.environ, "VIMEO_DATABASE_URL": url},
        check=True,
        capture_output=True,
    )


def create_database(admin_url: str, prefix: str = "vimeo_test") -> str:
    """A new, migrated database on the server of ``admin_url``; returns its URL."""
    name = f"{prefix}_{os.getpid()}_{secrets.token_hex(3)}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    finally:
        admin.dispose()
    url = admin_url.rsplit("/", 1)[0] + "/" + name
    migrate_database(url)
    return url


def drop_database(admin_url: str, url: str) -> None:
    """Drop the database of ``url``, whoever is still connected to it."""
    name = url.rsplit("/", 1)[1]
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


def empty_tables(conn) -> None:
    """Every table but the migrations' own emptied, through ``conn`` (a connection or
    a session, whose transaction the caller commits)."""
    tables = conn.execute(text(
        "SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tablename <> 'alembic_version'"
    )).scalars().all()
    if tables:
        conn.execute(text(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE"))


def empty_database(url: str) -> None:
    """``empty_tables`` on ``url`` in a transaction of its own."""
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            empty_tables(conn)
    finally:
        engine.dispose()
