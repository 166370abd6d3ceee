"""limits.py: wrong passwords per file and client address, uploads per client address,
429 answers, the client address from the trusted proxy only, and a limiter storage
that fails without failing requests."""

from __future__ import annotations

import http.client
import json
import time

import pytest

from support import API
from support.cache import redis_cache_config
from support.uploads import upload
from vimeo_api import create_app


def guarded_file(client) -> dict:
    return upload(client, b"limited", "l.txt", password="right", max_downloads=0)


def from_address(address: str) -> dict:
    return {"REMOTE_ADDR": address}


def assert_429(answer, limit: int):
    assert answer.status_code == 429
    body = answer.get_json()
    assert body["error"] == "Too Many Requests"
    assert body["request_id"]
    assert answer.headers["Content-Type"] == "application/json"
    retry_after = int(answer.headers["Retry-After"])
    assert 1 <= retry_after <= 60
    assert answer.headers["X-RateLimit-Limit"] == str(limit)
    assert answer.headers["X-RateLimit-Remaining"] == "0"
    assert int(answer.headers["X-RateLimit-Reset"]) >= int(time.time())
    return body


@pytest.fixture(params=["sqlite+memory", "postgresql+Redis"])
def limited_app(request, make_app):
    backend, kind = request.param.split("+")
    if kind == "Redis":
        return make_app(backend=backend, **redis_cache_config(request.getfixturevalue("shared_redis_prefix")))
    return make_app(backend=backend)


def test_the_defaults_leave_room_for_scripts_and_stop_guessing(tmp_path):
    app = create_app({"DATABASE_URL": f"sqlite:///{tmp_path}/d.sqlite3", "STORAGE_DIR": str(tmp_path / "s")})
    assert app.config["UPLOAD_RATE_LIMIT"] == "600/minute"
    assert app.config["PASSWORD_RATE_LIMIT"] == "10/minute"
    assert app.config["PASSWORD_ADDRESS_RATE_LIMIT"] == "30/minute"
    assert app.config["TRUSTED_PROXY_COUNT"] == 0


# -- wrong passwords ---------------------------------------------------------------------

def test_ten_wrong_passwords_in_a_minute_then_429(limited_app):
    client = limited_app.test_client()
    body = guarded_file(client)
    link = f"{API}/file/{body['filehash']}"
    here = from_address("192.0.2.10")
    for _ in range(10):
        assert client.get(link, headers={"X-Password": "guess"}, environ_base=here).status_code == 401
    assert_429(client.get(link, headers={"X-Password": "guess"}, environ_base=here), 10)
    # The budget is checked before the password: even the right one waits now.
    assert_429(client.get(link, headers={"X-Password": "right"}, environ_base=here), 10)
    head = client.head(link, headers={"X-Password": "right"}, environ_base=here)
    assert (head.status_code, head.headers["X-RateLimit-Remaining"]) == (429, "0")
    # Another address, and the same address for another file, are not held back.
    other = client.get(link, headers={"X-Password": "right"}, environ_base=from_address("192.0.2.11"))
    assert (other.status_code, other.get_data()) == (200, b"limited")
    second = guarded_file(client)
    assert client.get(f"{API}/file/{second['filehash']}?password=right", environ_base=here).status_code == 200


def test_only_failed_attempts_count(limited_app):
    client = limited_app.test_client()
    link = f"{API}/file/{guarded_file(client)['filehash']}"
    here = from_address("192.0.2.20")
    for _ in range(9):
        assert client.get(link, headers={"X-Password": "guess"}, environ_base=here).status_code == 401
    for _ in range(15):
        assert client.head(link, headers={"X-Password": "right"}, environ_base=here).status_code == 200
    assert client.get(link, headers={"X-Password": "guess"}, environ_base=here).status_code == 401
    assert client.get(link, headers={"X-Password": "right"}, environ_base=here).status_code == 429


def test_files_without_a_password_are_not_limited(limited_app):
    client = limited_app.test_client()
    body = upload(client, max_downloads=0)
    for _ in range(30):
        assert client.head(f"{API}/file/{body['filehash']}", headers={"X-Password": "x"}).status_code == 200


def test_token_issuing_shares_the_password_budget(limited_app):
    client = limited_app.test_client()
    body = guarded_file(client)
    here = from_address("192.0.2.30")
    tokens = f"{API}/file/{body['filehash']}/tokens"
    for _ in range(5):
        assert client.post(tokens, headers={"X-Password": "guess"}, environ_base=here).status_code == 401
    for _ in range(5):
        assert client.get(f"{API}/file/{body['filehash']}?password=guess", environ_base=here).status_code == 401
    assert_429(client.post(tokens, headers={"X-Password": "right"}, environ_base=here), 10)
    assert client.post(tokens, headers={"X-Owner-Token": body["owner_token"]}, environ_base=here).status_code == 201


def test_wrong_passwords_are_also_budgeted_per_address_across_files(limited_app, monkeypatch):
    """Issue 13, item 9: each wrong password costs a slow hash; an attacker with files of
    their own (a budget per file each) must not burn the CPU. Past the per-address budget
    every password-protected file answers 429 to that address, before any hash."""
    from vimeo_api import security

    limit = int(limited_app.config["PASSWORD_ADDRESS_RATE_LIMIT"].split("/")[0])
    assert 10 < limit <= 60
    client = limited_app.test_client()
    attacker, victim = from_address("192.0.2.40"), from_address("192.0.2.41")
    owned = [guarded_file(client) for _ in range(limit // 8 + 1)]
    hashes = []
    original = security.password_matches
    monkeypatch.setattr(security, "password_matches", lambda *a: hashes.append(1) or original(*a))
    answers = []
    for body in owned:  # 8 wrong passwords per file: within each file's own budget of 10
        for _ in range(8):
            answers.append(client.get(f"{API}/file/{body['filehash']}?password=guess", environ_base=attacker))
    assert [a.status_code for a in answers] == [401] * limit + [429] * (len(answers) - limit)
    assert len(hashes) == limit  # no slow hash past the budget
    assert_429(answers[-1], limit)
    fresh = guarded_file(client)
    for path in (f"/file/{fresh['filehash']}?password=right", f"/file/{fresh['filehash']}/tokens"):
        method = client.post if path.endswith("/tokens") else client.get
        assert method(API + path, headers={"X-Password": "right"}, environ_base=attacker).status_code == 429
    assert len(hashes) == limit
    # Other addresses are not held back.
    assert client.get(f"{API}/file/{fresh['filehash']}?password=right", environ_base=victim).status_code == 200


def test_the_limit_is_configuration(make_app):
    app = make_app(PASSWORD_RATE_LIMIT="3/minute")
    client = app.test_client()
    link = f"{API}/file/{guarded_file(client)['filehash']}"
    for _ in range(3):
        assert client.get(link, headers={"X-Password": "guess"}).status_code == 401
    assert_429(client.get(link, headers={"X-Password": "guess"}), 3)


# -- the client address --------------------------------------------------------------------

def test_x_forwarded_for_from_an_untrusted_client_is_ignored(make_app):
    client = make_app().test_client()  # TRUSTED_PROXY_COUNT = 0: the embedded default
    link = f"{API}/file/{guarded_file(client)['filehash']}"
    for i in range(10):
        spoofed = {"X-Password": "guess", "X-Forwarded-For": f"198.51.100.{i}"}
        assert client.get(link, headers=spoofed).status_code == 401
    answer = client.get(link, headers={"X-Password": "right", "X-Forwarded-For": "198.51.100.99"})
    assert answer.status_code == 429


def test_the_trusted_proxys_address_is_believed(make_app):
    client = make_app(TRUSTED_PROXY_COUNT=1).test_client()
    link = f"{API}/file/{guarded_file(client)['filehash']}"
    proxy = from_address("127.0.0.1")
    for _ in range(10):
        headers = {"X-Password": "guess", "X-Forwarded-For": "203.0.113.5"}
        assert client.get(link, headers=headers, environ_base=proxy).status_code == 401
    assert client.get(link, headers={"X-Password": "right", "X-Forwarded-For": "203.0.113.5"},
                      environ_base=proxy).status_code == 429
    assert client.get(link, headers={"X-Password": "right", "X-Forwarded-For": "203.0.113.6"},
                      environ_base=proxy).status_code == 200
    # With one trusted proxy only the last address counts: a client's own entry before
    # it (a spoof the proxy appended to) changes nothing.
    spoof = {"X-Password": "right", "X-Forwarded-For": "203.0.113.77, 203.0.113.5"}
    assert client.get(link, headers=spoof, environ_base=proxy).status_code == 429


# -- uploads ---------------------------------------------------------------------------

def test_uploads_per_client_address(make_app):
    app = make_app(UPLOAD_RATE_LIMIT="3/minute")
    client = app.test_client()
    here = from_address("192.0.2.40")
    assert upload(client, environ=here, expect=None).status_code == 201
    raw = client.put(f"{API}/upload/r.bin", data=b"raw", environ_base=here)
    assert raw.status_code == 201
    assert int(raw.headers["X-RateLimit-Remaining"]) == 1
    assert upload(client, environ=here, expect=None).status_code == 201
    assert_429(upload(client, environ=here, expect=None), 3)
    assert_429(client.put(f"{API}/upload/r.bin", data=b"raw", environ_base=here), 3)
    # Nothing else is counted against uploads, and other addresses upload on.
    assert client.get(f"{API}/file/{'0' * 32}", environ_base=here).status_code == 404
    assert upload(client, environ=from_address("192.0.2.41"), expect=None).status_code == 201


def test_an_upload_refused_with_429_leaves_nothing(make_app):
    app = make_app(UPLOAD_RATE_LIMIT="1/minute")
    client = app.test_client()
    assert upload(client, expect=None).status_code == 201
    assert upload(client, b"x" * 100_000, expect=None).status_code == 429
    from sqlalchemy import text

    from vimeo_api.extensions import db

    with app.app_context():
        assert db.session.execute(text("select count(*) from files")).scalar() == 1


# -- the limiter's storage down -----------------------------------------------------------

def test_storage_down_never_500_and_guessing_stays_throttled(make_app, private_redis):
    app = make_app(RATELIMIT_STORAGE_URI=private_redis.url(1), UPLOAD_RATE_LIMIT="5/minute")
    client = app.test_client()
    link = f"{API}/file/{guarded_file(client)['filehash']}"
    private_redis.stop()
    statuses = [upload(client, expect=None).status_code for _ in range(3)]
    assert statuses == [201, 201, 201]
    for _ in range(10):
        assert client.get(link, headers={"X-Password": "guess"}).status_code == 401
    # Counted in-process meanwhile: guessing is still stopped.
    assert client.get(link, headers={"X-Password": "guess"}).status_code == 429
    assert client.get(link, headers={"X-Password": "right"}, environ_base=from_address("192.0.2.50")).status_code == 200


# -- through nginx --------------------------------------------------------------------------

def request_from(source: str, port: int, method: str, path: str, headers: dict) -> tuple[int, dict, bytes]:
    """HTTP from a chosen loopback address (127.0.0.0/8 is all ours on Linux)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30, source_address=(source, 0))
    try:
        conn.request(method, path, headers=headers)
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


@pytest.fixture
def limited_stack(private_redis, own_stack):
    """nginx + gunicorn with the stack's settings, limits counted in a Redis of our own."""
    return own_stack(
        VIMEO_RATELIMIT_STORAGE_URI=private_redis.url(2),
        VIMEO_CACHE_REDIS_URL=private_redis.url(1),
    )


def test_through_nginx_the_client_is_nginxs_peer(limited_stack):
    stack = limited_stack
    port = int(stack.base.rsplit(":", 1)[1])
    body = _upload_over_http(port)
    link = f"{API}/file/{body['filehash']}"
    for i in range(10):
        # A client's X-Forwarded-For is replaced by nginx with its real peer address.
        spoof = {"X-Password": "guess", "X-Forwarded-For": f"198.51.100.{i}"}
        assert request_from("127.0.0.2", port, "GET", link, spoof)[0] == 401
    status, headers, raw = request_from("127.0.0.2", port, "GET", link,
                                        {"X-Password": "right", "X-Forwarded-For": "198.51.100.200"})
    assert status == 429
    assert json.loads(raw)["error"] == "Too Many Requests"
    assert int(headers["Retry-After"]) >= 1 and headers["X-RateLimit-Limit"] == "10"
    status, _, raw = request_from("127.0.0.3", port, "GET", link, {"X-Password": "right"})
    assert (status, raw) == (200, b"through nginx")


def _upload_over_http(port: int) -> dict:
    return upload(f"http://127.0.0.1:{port}", b"through nginx", "n.txt", password="right", max_downloads=0)


def test_nginx_limit_req_is_a_coarse_outer_guard(limited_stack):
    """Past a burst of 200, nginx answers 429 itself (JSON, Retry-After) to a client
    address sending more than 100 requests a second; 127.0.0.1 (the machine's own
    tools, and every other test here) is not counted."""
    import concurrent.futures

    port = int(limited_stack.base.rsplit(":", 1)[1])

    def burst(source: str, path: str, count: int) -> list[tuple[int, dict, bytes]]:
        with concurrent.futures.ThreadPoolExecutor(max_workers=24) as pool:
            return list(pool.map(lambda _: request_from(source, port, "GET", path, {}), range(count)))

    # /metrics refuses other addresses in nginx's access phase, after limit_req counted
    # the request: nginx alone answers, fast, whatever the load on the app.
    guarded = burst("127.0.0.4", "/metrics", 600)
    assert {status for status, _, _ in guarded} == {403, 429}
    refused = [(headers, raw) for status, headers, raw in guarded if status == 429]
    assert len(refused) >= 600 - 200 - 150  # the burst, and what 100/s refills meanwhile
    for headers, raw in refused[:5]:
        assert json.loads(raw)["error"] == "Too Many Requests"
        assert headers["Retry-After"] == "1"
    assert {status for status, _, _ in burst("127.0.0.1", f"{API}/file/{'9' * 32}", 300)} == {404}
