"""The committed migrations build the schema the models describe, on both databases."""

import os
import subprocess
import sys

from support import ROOT
from support.database import migrate_database


def _db_check(url: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", "db", "check"],
        cwd=ROOT,
        env={**os.environ, "VIMEO_DATABASE_URL": url},
        capture_output=True,
        text=True,
    )


def test_migrations_match_models_on_postgresql(pg_url):
    result = _db_check(pg_url)
    assert result.returncode == 0, result.stderr
    assert "No new upgrade operations detected" in result.stdout + result.stderr


def test_migrations_build_sqlite_from_scratch(tmp_path):
    url = f"sqlite:///{tmp_path / 'fresh.sqlite3'}"
    migrate_database(url)
    result = _db_check(url)
    assert result.returncode == 0, result.stderr
    assert "No new upgrade operations detected" in result.stdout + result.stderr


def _manage_db(url: str, *args: str) -> None:
    result = subprocess.run(
        [sys.executable, "manage.py", "db", *args], cwd=ROOT, env={**os.environ, "VIMEO_DATABASE_URL": url},
        capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_0005_keeps_the_rows_and_makes_the_counters_64_bit_on_postgresql():
    """Issue 13: downloads were a 32-bit integer on PostgreSQL. The migrations keep
    every row (access_version 0, no links) and can be undone."""
    from sqlalchemy import create_engine, text

    from support import PG_ADMIN_URL
    from support.database import create_database, drop_database

    url = create_database(PG_ADMIN_URL, "vimeo_mig")
    engine = create_engine(url)
    try:
        _manage_db(url, "downgrade", "0002")  # made at the head: back to before the counters grew
        with engine.begin() as conn:
            conn.execute(text(
                "insert into files (filehash, filename, content_type, size, sha256, owner_token_hash, max_downloads,"
                " downloads, status, created_at, modified_at) values ('f' || repeat('0', 31), 'a', 'text/plain', 1,"
                " repeat('a', 64), repeat('b', 64), 0, 2147483647, 'available', now(), now())"))
        _manage_db(url, "upgrade")
        with engine.begin() as conn:
            conn.execute(text("update files set downloads = downloads + 1"))
            row = conn.execute(text("select downloads, access_version from files")).one()
            assert tuple(row) == (2**31, 0)
            assert conn.execute(text("select count(*) from download_tokens")).scalar_one() == 0
            conn.execute(text("update files set downloads = 7"))
        _manage_db(url, "downgrade", "0002")
        with engine.begin() as conn:
            assert conn.execute(text("select downloads from files")).scalar_one() == 7
    finally:
        engine.dispose()
        drop_database(PG_ADMIN_URL, url)
