"""health.py: liveness, readiness naming what is down, and the metrics endpoint.

Redis outages use a private redis-server that the test stops and starts again; the
shared Redis the other tests use is never touched.
"""

from __future__ import annotations

import time

from deploy.stack import free_port
from vimeo_api import create_app

ERROR_KEYS = {"error", "message", "request_id"}


def test_healthz_answers_without_touching_dependencies(make_app):
    # A database nobody can reach: liveness must not care.
    app = create_app({
        "TESTING": True,
        "DATABASE_URL": f"postgresql://postgres@127.0.0.1:{free_port()}/nowhere",
        "STORAGE_DIR": "/nonexistent/storage",
        "EMBEDDED_SWEEP_INTERVAL": 0,
    })
    response = app.test_client().get("/healthz")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok"}
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["X-Request-Id"]


def test_readyz_reports_each_check_on_the_embedded_default(client, backend):
    response = client.get("/readyz")
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.get_json() == {
        "status": "ready",
        "checks": {"database": "ok", "cache": "not used", "broker": "not used", "storage": "ok"},
    }


def test_readyz_names_redis_when_the_cache_redis_stops_and_recovers(make_app, private_redis):
    app = make_app(backend="sqlite", CACHE_TYPE="RedisCache", CACHE_REDIS_URL=private_redis.url())
    client = app.test_client()

    ready = client.get("/readyz")
    assert ready.status_code == 200, ready.get_data(as_text=True)
    assert ready.get_json()["checks"]["cache"] == "ok"

    private_redis.stop()
    started = time.monotonic()
    down = client.get("/readyz")
    assert time.monotonic() - started < 3  # a probe must answer before its own timeout
    assert down.status_code == 503
    body = down.get_json()
    assert set(body) == ERROR_KEYS
    assert body["error"] == "Service Unavailable"
    assert "cache is down (Redis" in body["message"]
    assert "database" not in body["message"] and "storage" not in body["message"]
    assert down.headers["Retry-After"] == "5"
    assert private_redis.url() not in body["message"]

    private_redis.start()  # the same port again
    back = client.get("/readyz")
    assert back.status_code == 200, back.get_data(as_text=True)
    assert back.get_json()["checks"]["cache"] == "ok"


def test_readyz_checks_the_broker_with_a_short_timeout(make_app, private_redis):
    app = make_app(backend="sqlite", BROKER_URL=private_redis.url())
    client = app.test_client()
    assert client.get("/readyz").get_json()["checks"]["broker"] == "ok"

    private_redis.stop()
    started = time.monotonic()
    down = client.get("/readyz")
    assert time.monotonic() - started < 5
    assert down.status_code == 503
    assert "broker is down" in down.get_json()["message"]


def test_readyz_names_the_database_when_it_is_unreachable(tmp_path):
    app = create_app({
        "TESTING": True,
        "DATABASE_URL": f"postgresql://postgres@127.0.0.1:{free_port()}/nowhere",
        "STORAGE_DIR": str(tmp_path / "storage"),
        "EMBEDDED_SWEEP_INTERVAL": 0,
    })
    response = app.test_client().get("/readyz")
    assert response.status_code == 503
    message = response.get_json()["message"]
    assert message.startswith("Not ready: database is down (database: OperationalError)")
    assert "storage" not in message
    assert response.headers["Retry-After"] == "5"


def test_readyz_names_storage_that_cannot_be_written(make_app, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    app = make_app(backend="sqlite", STORAGE_DIR=str(blocker / "storage"))
    response = app.test_client().get("/readyz")
    assert response.status_code == 503
    message = response.get_json()["message"]
    assert "storage is down" in message
    assert str(tmp_path) not in message  # no internal path reaches a client


def test_metrics_is_prometheus_text(client, backend):
    client.get("/healthz")
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.mimetype == "text/plain"
    assert "version=" in response.headers["Content-Type"]
    assert 'vimeo_http_requests_total{method="GET",route="/healthz",status="200"} 1.0' in response.get_data(as_text=True)
