"""Helpers for the operator-tool tests (CLI, health, metrics, logs, OpenAPI, examples).

A private Redis that a test may stop and start (the shared one on 6379 is never
touched), operator tokens made the way ``manage.py tokens create`` makes them, uploads
through the Flask client, and ``manage.py`` run as a subprocess against a live server's
environment.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

from deploy.stack import free_port  # noqa: F401  (the tests import it from here)


ROOT = Path(__file__).resolve().parent.parent
API = "/vimeo/api/v1.0"


def upload(client, content: bytes = b"hello world\n", filename: str = "hello.txt", **fields) -> dict:
    """Multipart PUT /file through the Flask client; returns the 201 body."""
    data = {k: str(v) for k, v in fields.items()}
    data["file"] = (io.BytesIO(content), filename)
    response = client.put(API + "/file", data=data, content_type="multipart/form-data")
    assert response.status_code == 201, response.get_data(as_text=True)
    return response.get_json()


def operator_token(app, *scopes: str) -> str:
    """A bearer token with these scopes (all of them by default)."""
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


def metric_samples(text: str, name: str) -> dict[tuple, float]:
    """``{labels: value}`` of one metric family in a Prometheus text exposition."""
    from prometheus_client.parser import text_string_to_metric_families

    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                samples[tuple(sorted(sample.labels.items()))] = sample.value
    return samples
