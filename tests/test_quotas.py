"""Anyone can upload (issue 13, item 4): what keeps one address from filling the disk.

- bytes per client address over a window (``UPLOAD_BYTES_LIMIT``), on the limiter's
  storage (in-process, and Redis as in the stack), for uploads and replacements;
- a storage high-water mark (``STORAGE_MIN_FREE_BYTES``): 507 before the disk is full,
  before the body is read (on a real tmpfs: test_disk.py);
- a default cap on expiry (``MAX_EXPIRES_IN``, 30 days; ``never`` refused), which
  operators can lift.
"""

from __future__ import annotations

import io
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from support import API
from support.cache import redis_cache_config
from vimeo_api import create_app


def put(client, content: bytes, address: str, **fields):
    data = {"file": (io.BytesIO(content), "q.bin"), **{k: str(v) for k, v in fields.items()}}
    return client.put(f"{API}/file", data=data, content_type="multipart/form-data",
                      environ_base={"REMOTE_ADDR": address})


def stored(app) -> list[str]:
    root = Path(app.config["STORAGE_DIR"])
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) if root.exists() else []


def rows(app) -> int:
    from sqlalchemy import func, select

    from vimeo_api.extensions import db
    from vimeo_api.models import File

    with app.app_context():
        return db.session.execute(select(func.count(File.id))).scalar_one()


def test_the_defaults(tmp_path):
    app = create_app({"DATABASE_URL": f"sqlite:///{tmp_path}/d.sqlite3", "STORAGE_DIR": str(tmp_path / "s"),
                      "STATE_DIR": str(tmp_path / "state")})
    assert app.config["UPLOAD_BYTES_LIMIT"] == "1073741824/hour"  # 1 GiB an hour per address
    assert app.config["STORAGE_MIN_FREE_BYTES"] == 1024**3
    assert app.config["MAX_EXPIRES_IN"] == 30 * 86400


# -- bytes per address ------------------------------------------------------------------

@pytest.fixture(params=["sqlite+memory", "postgresql+Redis"])
def quota_app(request, make_app):
    backend, kind = request.param.split("+")
    extra = redis_cache_config(request.getfixturevalue("shared_redis_prefix")) if kind == "Redis" else {}
    return make_app(backend=backend, UPLOAD_BYTES_LIMIT="1000/hour", **extra)


def test_bytes_uploaded_per_address_are_limited(quota_app):
    client = quota_app.test_client()
    first = put(client, b"a" * 400, "192.0.2.50", max_downloads=0)
    assert first.status_code == 201
    assert put(client, b"b" * 400, "192.0.2.50").status_code == 201
    before = stored(quota_app)
    refused = put(client, b"c" * 400, "192.0.2.50")  # 1,200 bytes in the hour
    assert refused.status_code == 429
    body = refused.get_json()
    assert body["error"] == "Too Many Requests" and "bytes" in body["message"] and body["request_id"]
    assert 1 <= int(refused.headers["Retry-After"]) <= 3600
    assert refused.headers["X-RateLimit-Limit"] == "1000"
    assert stored(quota_app) == before and rows(quota_app) == 2  # nothing of it kept
    # What is left still goes: 200 bytes, raw or multipart.
    raw = client.put(f"{API}/upload/small.bin", data=b"d" * 150, environ_base={"REMOTE_ADDR": "192.0.2.50"})
    assert raw.status_code == 201
    # A replacement stores bytes too.
    owner = {"X-Owner-Token": first.get_json()["owner_token"]}
    replaced = client.put(f"{API}/file/{first.get_json()['filehash']}", data=b"e" * 100, headers=owner,
                          environ_base={"REMOTE_ADDR": "192.0.2.50"})
    assert replaced.status_code == 429
    # A declared length past what is left is refused before the body is read.
    big = client.put(f"{API}/upload/big.bin", data=b"f" * 10, environ_base={"REMOTE_ADDR": "192.0.2.50"},
                     environ_overrides={"CONTENT_LENGTH": "5000"})
    assert big.status_code == 429
    # Another address has its own budget.
    assert put(client, b"g" * 900, "192.0.2.51").status_code == 201


# -- the expiry cap ----------------------------------------------------------------------

def test_expiry_is_capped_by_default_and_operators_can_lift_it(make_app):
    app = make_app(backend="sqlite")
    client = app.test_client()
    for value in ("never", "31d", str(30 * 86400 + 1)):
        answer = put(client, b"x", "192.0.2.70", expires_in=value)
        assert answer.status_code == 400 and "2592000" in answer.get_json()["message"], value
    ok = put(client, b"x", "192.0.2.70", expires_in="30d")
    assert ok.status_code == 201
    expires = datetime.strptime(ok.get_json()["expires_at"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
    assert expires - datetime.now(timezone.utc) <= timedelta(days=30)
    patch = client.patch(f"{API}/file/{ok.get_json()['filehash']}", json={"expires_in": None},
                         headers={"X-Owner-Token": ok.get_json()["owner_token"]})
    assert patch.status_code == 400
    raw = client.put(f"{API}/upload/x.bin", data=b"x", headers={"X-Expires-In": "never"})
    assert raw.status_code == 400

    lifted = make_app(backend="sqlite", MAX_EXPIRES_IN=None)
    answer = put(lifted.test_client(), b"x", "192.0.2.71", expires_in="never")
    assert answer.status_code == 201 and answer.get_json()["expires_at"] is None
