"""examples/: every curl script runs clean against a live deployment, so they never rot.

Once against gunicorn alone (the embedded delivery, SQLite) and once through the stack
(nginx with X-Accel delivery and the upload offload, in front of gunicorn on
PostgreSQL). Both use a private Redis as the cache, as the stack does, so that a purge's
record is found whichever worker answers.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from deploy.stack import free_port, spawn, stop, wait_for_http
from support import ROOT
from support.operators import live_operator_token

EXAMPLES = ROOT / "examples"
SCRIPTS = sorted(p for p in EXAMPLES.glob("*.sh") if not p.name.startswith("_"))
ROUTE_WORDS = {
    # Every route family has a script that calls it.
    "/file": "upload.sh", "/upload/": "upload.sh", "/t/": "tokens.sh", "/v/": "versions.sh",
    "/versions": "versions.sh", "/tokens": "tokens.sh", "/files": "operators.sh", "/stats": "operators.sh",
    "/purge": "operators.sh", "/healthz": "health.sh", "/readyz": "health.sh", "/metrics": "health.sh",
    "/openapi.json": "health.sh", "/downloads": "links.sh",
}


def run_all(base: str, token: str) -> list[str]:
    """Run every script; returns the failures with their output."""
    assert shutil.which("curl"), "curl is needed by the examples"
    failures = []
    for script in SCRIPTS:
        result = subprocess.run(
            ["bash", str(script), base, token], cwd=ROOT, capture_output=True, text=True, timeout=120
        )
        if result.returncode != 0:
            failures.append(f"{script.name} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
    return failures


def test_there_is_a_script_for_every_route_family():
    assert {p.name for p in SCRIPTS} >= set(ROUTE_WORDS.values())
    for word, name in ROUTE_WORDS.items():
        assert word in (EXAMPLES / name).read_text(), (word, name)


@pytest.fixture
def wrong_server(tmp_path):
    """An HTTP server that is not the API (Python's static server on an empty directory)."""
    port = free_port()
    (tmp_path / "www").mkdir()
    proc = spawn(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(tmp_path / "www")],
        dict(os.environ), tmp_path / "http.server.log",
    )
    try:
        wait_for_http(f"http://127.0.0.1:{port}/", timeout=10, procs=[proc])
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(proc)


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_a_script_fails_on_an_unexpected_status(script, wrong_server):
    result = subprocess.run(["bash", str(script), wrong_server, "token"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "FAIL: expected" in result.stderr


def test_a_script_fails_when_nothing_answers():
    result = subprocess.run(["bash", str(EXAMPLES / "upload.sh"), f"http://127.0.0.1:{free_port()}"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "FAIL: expected 201, got 000" in result.stderr


def test_a_script_needs_the_base_url():
    result = subprocess.run(["bash", str(EXAMPLES / "health.sh")], capture_output=True, text=True, timeout=30)
    assert result.returncode != 0
    assert "usage:" in result.stderr


def test_the_examples_against_gunicorn(gunicorn_server, private_redis):
    server = gunicorn_server(workers=2, threads=4, VIMEO_CACHE_TYPE="RedisCache",
                             VIMEO_CACHE_REDIS_URL=private_redis.url())
    failures = run_all(server.base, live_operator_token(server.env))
    assert not failures, "\n\n".join(failures)


def test_the_examples_through_the_nginx_stack(private_redis, own_stack):
    stack = own_stack(VIMEO_CACHE_TYPE="RedisCache", VIMEO_CACHE_REDIS_URL=private_redis.url())
    failures = run_all(stack.base, live_operator_token(stack.env))
    assert not failures, "\n\n".join(failures)
