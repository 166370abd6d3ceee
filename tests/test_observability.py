"""observability.py and logs.py: Prometheus counts that match the requests made (in
process, and summed over real gunicorn workers in multiprocess mode), and one JSON log
line per request that never carries a password, a token or a query string."""

from __future__ import annotations

import json
import logging

import requests
from prometheus_client.parser import text_string_to_metric_families

from support import API
from support.uploads import upload
from vimeo_api import observability, sweep
from vimeo_api.logs import JsonFormatter

OWNER_SECRET_HEADER = "X-Owner-Token"


def metric_samples(text: str, name: str) -> dict[tuple, float]:
    """``{labels: value}`` of one metric family in a Prometheus text exposition."""
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                samples[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def counts(text: str, name: str) -> dict[tuple, float]:
    """Samples of a metric without the zero-valued ones prometheus-client may keep."""
    return {labels: value for labels, value in metric_samples(text, name).items() if value}


def req(method: str, route: str, status: int) -> tuple:
    return (("method", method), ("route", route), ("status", str(status)))


# -- metrics, in process ------------------------------------------------------------------

def test_metrics_after_a_mixed_workload_match_the_requests_made(make_app, backend):
    app = make_app(DELETE_GRACE_SECONDS=0, RESUME_WINDOW=0)
    client = app.test_client()
    a = upload(client, b"a" * 1000, "a.bin", max_downloads=0)
    b = upload(client, b"b" * 300, "b.bin")
    raw = client.put(API + "/upload/raw.txt", data=b"r" * 42, headers={"X-Max-Downloads": "0"})
    assert raw.status_code == 201
    file_a = API + "/file/" + a["filehash"]

    assert client.get(file_a).status_code == 200  # 1000 bytes
    assert client.get(file_a, headers={"Range": "bytes=0-99"}).status_code == 206  # 100 bytes
    assert client.head(file_a).status_code == 200  # no download
    assert client.get(file_a, headers={"If-None-Match": f'"{a["sha256"]}"'}).status_code == 304
    assert client.get(API + "/file/" + b["filehash"]).status_code == 200  # 300 bytes, the last use
    assert client.get(API + "/file/" + b["filehash"]).status_code == 410
    assert client.get(API + "/file/" + "0" * 32).status_code == 404
    assert client.get("/no/such/route").status_code == 404
    deleted = client.delete(API + "/file/" + raw.get_json()["filehash"],
                            headers={OWNER_SECRET_HEADER: raw.get_json()["owner_token"]})
    assert deleted.status_code == 202
    cache_before = counts(client.get("/metrics").get_data(as_text=True), "vimeo_cache_lookups_total")
    with app.test_request_context():
        observability.record_cache(True)
        observability.record_cache(False)
        observability.record_cache(False)
        sweep.run()

    text = client.get("/metrics").get_data(as_text=True)
    file_route = API + "/file/<filehash>"
    assert counts(text, "vimeo_http_requests_total") == {
        req("GET", "/metrics", 200): 1,
        req("PUT", API + "/file", 201): 2,
        req("PUT", API + "/upload/<filename>", 201): 1,
        req("GET", file_route, 200): 2,
        req("GET", file_route, 206): 1,
        req("HEAD", file_route, 200): 1,
        req("GET", file_route, 304): 1,
        req("GET", file_route, 410): 1,
        req("GET", file_route, 404): 1,
        req("GET", "<unmatched>", 404): 1,
        req("DELETE", file_route, 202): 1,
    }
    assert counts(text, "vimeo_uploads_total") == {(("kind", "multipart"),): 2, (("kind", "raw"),): 1}
    assert counts(text, "vimeo_upload_bytes_total") == {(("kind", "multipart"),): 1300, (("kind", "raw"),): 42}
    assert counts(text, "vimeo_downloads_total") == {(("delivery", "app"), ("kind", "file")): 3}
    assert counts(text, "vimeo_download_bytes_total") == {(("kind", "file"),): 1000 + 100 + 300}
    # The metadata cache records its own lookups; these three come on top.
    cache_after = counts(text, "vimeo_cache_lookups_total")
    hit, miss = (("result", "hit"),), (("result", "miss"),)
    assert cache_after.get(hit, 0) - cache_before.get(hit, 0) == 1
    assert cache_after.get(miss, 0) - cache_before.get(miss, 0) == 2
    # b's last download and the deletion each released content: two eager release tasks.
    assert counts(text, "vimeo_task_outcomes_total") == {
        (("outcome", "success"), ("task", "vimeo_api.tasks.release_blob_task")): 2
    }
    backlog = metric_samples(text, "vimeo_sweep_backlog")
    assert set(dict(labels)["kind"] for labels in backlog) == {"expired", "retired", "released", "stale_grants", "stale_uploads", "orphans", "expired_uploads", "expired_links"}
    assert metric_samples(text, "vimeo_sweep_last_run_timestamp_seconds")[()] > 0
    # Histogram counts follow the same routes.
    durations = metric_samples(text, "vimeo_http_request_duration_seconds_count")
    assert durations[(("route", file_route),)] == 8
    # No raw path or secret ever becomes a label.
    assert a["filehash"] not in text and "owner_token" not in text


def test_two_apps_in_one_process_keep_their_own_counts(make_app):
    first, second = make_app(backend="sqlite"), make_app(backend="sqlite")
    first.test_client().get("/healthz")
    text = second.test_client().get("/metrics").get_data(as_text=True)
    assert req("GET", "/healthz", 200) not in counts(text, "vimeo_http_requests_total")


def test_the_sweep_sets_the_backlog_gauge(make_app):
    app = make_app(backend="sqlite")
    client = app.test_client()
    upload(client, b"soon gone", "s.txt", expires_in="1s")
    with app.app_context():
        from datetime import timedelta

        from vimeo_api.extensions import db
        from vimeo_api.models import File, utcnow

        db.session.execute(db.update(File).values(expires_at=utcnow() - timedelta(seconds=5)))
        db.session.commit()
        sweep.run()
    text = client.get("/metrics").get_data(as_text=True)
    assert metric_samples(text, "vimeo_sweep_backlog")[(("kind", "expired"),)] == 1


# -- metrics, gunicorn multiprocess -----------------------------------------------------

def test_metrics_add_up_every_gunicorn_worker(gunicorn_server, tmp_path):
    metrics_dir = tmp_path / "prometheus"
    metrics_dir.mkdir()
    # Left by an earlier run: gunicorn's on_starting must not add it to this one.
    (metrics_dir / "counter_999999.db").write_bytes(b"stale")
    # Each worker is replaced after four requests: the counts must add up over every
    # process that ever answered, the dead ones (child_exit) included.
    server = gunicorn_server(workers=2, threads=2, PROMETHEUS_MULTIPROC_DIR=str(metrics_dir),
                             GUNICORN_CMD_ARGS="--max-requests 4 --max-requests-jitter 0")
    made = [upload(server, b"x" * (10 + i), f"f{i}.txt", max_downloads=0) for i in range(6)]
    for file in made:
        # Fresh connections spread the requests over the workers.
        assert requests.get(file["url"], timeout=10).status_code == 200
    # Not /file/<filehash>: the fixture polls that route (with retries) while gunicorn boots.
    for _ in range(5):
        assert requests.get(server.api + "/v/" + "0" * 32, timeout=10).status_code == 404
    for _ in range(12):
        r = requests.get(server.base + "/healthz", timeout=10)
        assert r.status_code == 200
    text = requests.get(server.base + "/metrics", timeout=10).text
    got = counts(text, "vimeo_http_requests_total")
    assert got[req("PUT", API + "/file", 201)] == 6
    assert got[req("GET", API + "/file/<filehash>", 200)] == 6
    assert got[req("GET", API + "/v/<version_id>", 404)] == 5
    assert got[req("GET", "/healthz", 200)] == 12
    assert counts(text, "vimeo_uploads_total") == {(("kind", "multipart"),): 6}
    assert counts(text, "vimeo_upload_bytes_total") == {(("kind", "multipart"),): sum(10 + i for i in range(6))}
    assert counts(text, "vimeo_download_bytes_total") == {(("kind", "file"),): sum(10 + i for i in range(6))}
    # Many processes answered, and their files are all in the directory.
    pids = {p.name.rsplit("_", 1)[1] for p in metrics_dir.glob("counter_*.db")}
    assert len(pids) >= 5
    assert "999999.db" not in {p.name.rsplit("_", 1)[1] for p in metrics_dir.glob("*.db")}


# -- logs --------------------------------------------------------------------------------

def request_lines(stderr: str) -> list[dict]:
    entries = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    return [e for e in entries if e.get("logger") == "vimeo_api.requests"]


def test_one_json_line_per_request_without_passwords_or_tokens(make_app, backend, capsys):
    app = make_app()
    client = app.test_client()
    capsys.readouterr()
    file = upload(client, b"secret content", "s.txt", password="pw-in-form-0001", max_downloads=0)
    url = API + "/file/" + file["filehash"]
    answers = [
        client.get(url + "?password=pw-in-query-0002"),
        client.get(url, headers={"X-Password": "pw-in-header-0003"}),
        client.get(url, headers={"Authorization": "Basic " + __import__("base64").b64encode(b"u:pw-in-basic-0004").decode()}),
        client.patch(url, json={"max_downloads": 5}, headers={OWNER_SECRET_HEADER: file["owner_token"]}),
        client.post(url + "/tokens", json={"expires_in": 60}, headers={OWNER_SECRET_HEADER: file["owner_token"]}),
    ]
    token = answers[-1].get_json()["token"]
    answers.append(client.get(API + "/t/" + token))
    assert [a.status_code for a in answers] == [401, 401, 401, 200, 201, 200]

    out = capsys.readouterr().err
    for secret in ("pw-in-form-0001", "pw-in-query-0002", "pw-in-header-0003", "pw-in-basic-0004",
                   file["owner_token"], token, "?password", "password="):
        assert secret not in out
    lines = request_lines(out)
    assert len(lines) == 7  # the upload and the six above
    for entry, answer in zip(lines[1:], answers):
        assert entry["request_id"] == answer.headers["X-Request-Id"]
        assert entry["status"] == answer.status_code
        assert entry["route"] in (API + "/file/<filehash>", API + "/file/<filehash>/tokens", API + "/t/<token>")
        assert isinstance(entry["duration_ms"], float) and entry["duration_ms"] >= 0
        assert entry["client"] == "127.0.0.1"
        assert entry["level"] == "info" and entry["ts"].endswith("Z")
    assert lines[0]["method"] == "PUT" and lines[0]["status"] == 201 and lines[0]["bytes"] > 0
    assert lines[-1]["bytes"] == len(b"secret content")


def test_records_made_during_a_request_carry_its_id_and_secrets_are_masked(make_app, capsys):
    app = make_app(backend="sqlite")
    capsys.readouterr()
    with app.test_request_context("/x"):
        from flask import g

        g.request_id = "req-123"
        logging.getLogger("vimeo_api.files").warning("retrying https://h/x?password=hunter2&token=abc")
    entry = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert entry["request_id"] == "req-123"
    assert entry["logger"] == "vimeo_api.files" and entry["level"] == "warning"
    assert "hunter2" not in entry["message"] and "abc" not in entry["message"]
    assert "password=[masked]" in entry["message"]


def test_exceptions_are_one_json_line_too():
    formatter = JsonFormatter()
    try:
        raise ValueError("boom password=p4ss")
    except ValueError:
        record = logging.getLogger("vimeo_api").makeRecord(
            "vimeo_api", logging.ERROR, __file__, 1, "failed", (), __import__("sys").exc_info()
        )
    line = formatter.format(record)
    assert "\n" not in line
    entry = json.loads(line)
    assert "ValueError" in entry["exception"] and "p4ss" not in entry["exception"]


def test_a_live_servers_log_never_shows_a_password_or_owner_token(gunicorn_server):
    server = gunicorn_server(workers=1, threads=2)
    created = upload(server, b"live", "s.txt", password="live-form-pw-77", max_downloads=0)
    url = server.api + "/file/" + created["filehash"]
    assert requests.get(url + "?password=live-query-pw-88", timeout=10).status_code == 401
    assert requests.get(url + "?password=live-form-pw-77", timeout=10).status_code == 200
    deleted = requests.delete(url, headers={OWNER_SECRET_HEADER: created["owner_token"]}, timeout=10)
    assert deleted.status_code == 202
    log = server.log()
    for secret in ("live-form-pw-77", "live-query-pw-88", created["owner_token"], "password="):
        assert secret not in log
    # Without the fixture's start-up polls (404s).
    entries = [e for e in request_lines(log) if e["status"] != 404]
    assert [(e["method"], e["status"]) for e in entries] == [("PUT", 201), ("GET", 401), ("GET", 200), ("DELETE", 202)]
    assert all(e["request_id"] for e in entries)
