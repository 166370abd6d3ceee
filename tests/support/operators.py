"""Operator credentials and tools in tests: bearer tokens made the way the app makes
them, and ``manage.py`` run as a subprocess against a live server's environment."""

from __future__ import annotations

import json
import subprocess
import sys

from . import ROOT


def bearer(secret: str) -> dict:
    return {"Authorization": f"Bearer {secret}"}


def operator_token(app, *scopes: str) -> str:
    """A bearer token with these scopes (all of them by default), made in-process."""
    from vimeo_api.operator_tokens import SCOPES, create_token

    with app.app_context():
        _token, secret = create_token("test", list(scopes or SCOPES))
    return secret


def manage(env: dict, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """``python manage.py ARGS`` with a server's environment (its database and storage)."""
    result = subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    if check:
        assert result.returncode == 0, result.stdout + result.stderr
    return result


def live_operator_token(env: dict) -> str:
    """A bearer token with every scope, made by ``manage.py tokens create`` on a live server's database."""
    result = manage(
        env, "tokens", "create", "--name", "tests",
        "--scope", "files:read", "--scope", "files:write", "--scope", "stats:read", "--scope", "cache:purge",
        "--json",
    )
    return json.loads(result.stdout)["token"]
