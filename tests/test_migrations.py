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
