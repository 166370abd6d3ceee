"""A right password is remembered for PASSWORD_CACHE_TTL (access._password_ok): repeated
downloads skip the slow hash; wrong passwords never do, and a changed password never
matches what was remembered for the old one."""

from __future__ import annotations

import pytest

from support import API
from support.uploads import upload
from vimeo_api import security
from vimeo_api.extensions import cache


@pytest.fixture
def hashes(monkeypatch):
    """Counts the slow password hash computations."""
    calls = []
    real = security.password_matches

    def counting(password, stored_hash):
        calls.append(password)
        return real(password, stored_hash)

    monkeypatch.setattr(security, "password_matches", counting)
    return calls


def secret_file(client, password="right one") -> dict:
    """An unlimited file behind ``password``."""
    return upload(client, b"secret bytes", "s.txt", password=password, max_downloads=0)


def test_a_right_password_is_hashed_once_then_remembered(client, hashes):
    up = secret_file(client)
    url = f"{API}/file/{up['filehash']}"
    for _ in range(3):
        answer = client.get(url, headers={"X-Password": "right one"})
        assert answer.status_code == 200 and answer.data == b"secret bytes"
    assert hashes == ["right one"]
    # Other ways of sending it are the same password.
    assert client.get(url + "?password=right%20one").status_code == 200
    assert hashes == ["right one"]


def test_wrong_passwords_are_hashed_every_time(client, hashes):
    up = secret_file(client)
    url = f"{API}/file/{up['filehash']}"
    assert client.get(url, headers={"X-Password": "right one"}).status_code == 200
    for _ in range(3):
        assert client.get(url, headers={"X-Password": "wrong"}).status_code == 401
    assert hashes == ["right one", "wrong", "wrong", "wrong"]


def test_a_changed_password_does_not_match_what_was_remembered(client, hashes):
    up = secret_file(client)
    url = f"{API}/file/{up['filehash']}"
    assert client.get(url, headers={"X-Password": "right one"}).status_code == 200
    patched = client.patch(url, json={"password": "new one"}, headers={"X-Owner-Token": up["owner_token"]})
    assert patched.status_code == 200
    assert client.get(url, headers={"X-Password": "right one"}).status_code == 401
    assert client.get(url, headers={"X-Password": "new one"}).status_code == 200


def test_the_cache_holds_no_password(app, client):
    up = secret_file(client, password="findable-password")
    assert client.get(f"{API}/file/{up['filehash']}", headers={"X-Password": "findable-password"}).status_code == 200
    with app.app_context():
        backend = cache.cache
        stored = repr(backend._cache) if hasattr(backend, "_cache") else ""
    assert "pwok:" in stored
    assert "findable-password" not in stored


def test_ttl_zero_hashes_on_every_request(make_app, hashes):
    client = make_app(PASSWORD_CACHE_TTL=0).test_client()
    up = secret_file(client)
    for _ in range(2):
        assert client.get(f"{API}/file/{up['filehash']}", headers={"X-Password": "right one"}).status_code == 200
    assert hashes == ["right one", "right one"]


def test_a_remembered_password_survives_the_shared_cache_failing(app, client, hashes, monkeypatch):
    """Under load a Redis call may time out and open the breaker; a worker must not then
    compute the slow hash on every request (that made the load worse)."""
    up = secret_file(client)
    url = f"{API}/file/{up['filehash']}"
    assert client.get(url, headers={"X-Password": "right one"}).status_code == 200

    def down(*args, **kwargs):
        raise ConnectionError("cache down")

    with app.app_context():
        monkeypatch.setattr(cache.cache, "get", down)
        monkeypatch.setattr(cache.cache, "get_many", down)
    for _ in range(3):
        assert client.get(url, headers={"X-Password": "right one"}).status_code == 200
    assert hashes == ["right one"]


def test_another_process_uses_the_shared_entry_and_keeps_it_no_longer(make_app, hashes, monkeypatch):
    """Two apps on one shared cache (two gunicorn workers): the second does not hash a
    password the first checked, and keeps it in memory only as long as the shared entry."""
    from vimeo_api import password_cache

    shared = {}
    first, second = make_app(), make_app()
    for app in (first, second):
        with app.app_context():
            monkeypatch.setattr(cache.cache, "get", lambda key, shared=shared: shared.get(key), raising=False)
            monkeypatch.setattr(cache.cache, "set", lambda key, value, timeout=None, shared=shared: shared.__setitem__(key, value) or True, raising=False)
    up = secret_file(first.test_client())
    url = f"{API}/file/{up['filehash']}"
    assert first.test_client().get(url, headers={"X-Password": "right one"}).status_code == 200
    assert second.test_client().get(url, headers={"X-Password": "right one"}).status_code == 200
    assert hashes == ["right one"]
    [key] = [k for k in shared if k.startswith(password_cache.VERIFIED)]
    with second.app_context():
        [(local_key, until)] = second.extensions["vimeo_password_cache"].entries.items()
    assert key == password_cache.VERIFIED + local_key
    import time

    assert until - time.monotonic() <= shared[key] - time.time() + 0.5
