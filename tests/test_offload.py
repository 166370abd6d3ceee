"""offload.py: adopting the body file nginx wrote for a raw upload, and only such a file."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from support import API

UPLOAD = API + "/upload/clip.bin"


@pytest.fixture
def offload_app(make_app):
    return make_app(backend="sqlite", UPLOAD_OFFLOAD=True, MAX_UPLOAD_SIZE=1024)


def body_dir(app) -> Path:
    path = Path(app.config["STORAGE_DIR"], "nginx-body")
    path.mkdir(parents=True, exist_ok=True)
    return path


def blobs(app) -> list[Path]:
    root = Path(app.config["STORAGE_DIR"], "blobs")
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


def test_the_body_file_is_hashed_and_renamed_into_place(offload_app):
    written = body_dir(offload_app) / "0000000001"
    written.write_bytes(b"bytes nginx wrote")
    inode = written.stat().st_ino
    answer = offload_app.test_client().put(UPLOAD, headers={"X-Vimeo-Body-File": str(written)})
    assert answer.status_code == 201, answer.json
    assert answer.json["sha256"] == hashlib.sha256(b"bytes nginx wrote").hexdigest()
    assert answer.json["size"] == len(b"bytes nginx wrote")
    [blob] = blobs(offload_app)
    assert blob.stat().st_ino == inode  # renamed, not copied
    assert blob.read_bytes() == b"bytes nginx wrote"
    assert not written.exists()


def test_same_content_twice_drops_the_second_body_file(offload_app):
    client = offload_app.test_client()
    for name in ("0000000001", "0000000002"):
        written = body_dir(offload_app) / name
        written.write_bytes(b"same")
        assert client.put(UPLOAD, headers={"X-Vimeo-Body-File": str(written)}).status_code == 201
        assert not written.exists()
    assert len(blobs(offload_app)) == 1


def test_without_the_header_the_stream_is_read(offload_app):
    answer = offload_app.test_client().put(UPLOAD, data=b"streamed")
    assert answer.status_code == 201
    assert answer.json["sha256"] == hashlib.sha256(b"streamed").hexdigest()


@pytest.mark.parametrize("where", ["outside", "traversal", "symlink", "directory", "missing", "system"])
def test_only_regular_files_inside_nginx_body_are_adopted(offload_app, where):
    storage = body_dir(offload_app).parent
    secret = storage / "secret"
    secret.write_bytes(b"not an upload")
    link = body_dir(offload_app) / "link"
    link.symlink_to(secret)
    path = {
        "outside": secret,
        "traversal": body_dir(offload_app) / ".." / "secret",
        "symlink": link,
        "directory": body_dir(offload_app),
        "missing": body_dir(offload_app) / "gone",
        "system": "/etc/hostname",
    }[where]
    answer = offload_app.test_client().put(UPLOAD, headers={"X-Vimeo-Body-File": str(path)})
    assert answer.status_code == 400
    assert answer.json["error"] == "Bad Request"
    assert str(storage) not in answer.get_data(as_text=True)
    assert secret.read_bytes() == b"not an upload"
    assert blobs(offload_app) == []


def test_a_body_file_over_the_limit_is_413_and_removed(offload_app):
    written = body_dir(offload_app) / "0000000003"
    written.write_bytes(os.urandom(1025))
    answer = offload_app.test_client().put(UPLOAD, headers={"X-Vimeo-Body-File": str(written)})
    assert answer.status_code == 413
    assert not written.exists()
    assert blobs(offload_app) == []


def test_offload_off_ignores_a_clients_header_beside_a_body(make_app):
    app = make_app(backend="sqlite")
    planted = body_dir(app) / "planted"
    planted.write_bytes(b"planted")
    answer = app.test_client().put(UPLOAD, data=b"real body", headers={"X-Vimeo-Body-File": str(planted)})
    assert answer.status_code == 201
    assert answer.json["sha256"] == hashlib.sha256(b"real body").hexdigest()
    assert planted.read_bytes() == b"planted"


def test_offload_off_behind_an_offloading_nginx_refuses_rather_than_store_nothing(make_app):
    """nginx kept the body (no Content-Length reaches the app): an app without
    UPLOAD_OFFLOAD must not store the empty stream as the upload. A client can send the
    same request to gunicorn directly, so it is its 400, not a 500 (issue 13)."""
    app = make_app(backend="sqlite")
    written = body_dir(app) / "0000000004"
    written.write_bytes(b"the real upload")
    client = app.test_client()
    environ = {"CONTENT_LENGTH": None}
    answer = client.put(UPLOAD, headers={"X-Vimeo-Body-File": str(written)}, environ_overrides=environ)
    assert answer.status_code == 400
    assert answer.json["error"] == "Bad Request"
    assert blobs(app) == []
