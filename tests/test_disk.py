"""The storage's disk as an attacker or an accident leaves it (issue 13): full (a real
tmpfs of 1 MiB: a 507 JSON answer, no temp file left), and how many files one multipart
request may open.
"""

from __future__ import annotations

import io
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
import requests

from vimeo_api.storage import LocalStorage

API = "/vimeo/api/v1.0"
MiB = 1024 * 1024


@pytest.fixture
def tmpfs(tmp_path):
    """``tmpfs(size)``: a real filesystem of its own (tmpfs), unmounted after the test."""
    mounted = []

    def mount(size: str) -> Path:
        mountpoint = tmp_path / f"disk-{len(mounted)}"
        mountpoint.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(mountpoint)], check=True)
        mounted.append(mountpoint)
        return mountpoint

    yield mount
    for mountpoint in mounted:
        subprocess.run(["umount", "-l", str(mountpoint)], check=True)


@pytest.fixture
def small_disk(tmpfs):
    """A real filesystem of 1 MiB."""
    return tmpfs("1m")


def files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def assert_error(response, status: int, phrase: str) -> dict:
    assert response.status_code == status, response.text[:300]
    body = response.json()
    assert set(body) == {"error", "message", "request_id"} and body["error"] == phrase
    assert body["request_id"] == response.headers["X-Request-Id"]
    return body


def test_uploads_on_a_full_disk_answer_507_and_leave_nothing(gunicorn_server, small_disk):
    """The disk itself full (the high-water mark below lifted: 0)."""
    storage = small_disk / "storage"
    server = gunicorn_server(workers=1, threads=2, VIMEO_STORAGE_DIR=str(storage), VIMEO_STORAGE_MIN_FREE_BYTES=0)
    too_big = os.urandom(2 * MiB)
    multipart = requests.put(server.api + "/file", files={"file": ("big.bin", too_big)}, timeout=30)
    assert_error(multipart, 507, "Insufficient Storage")
    raw = requests.put(server.api + "/upload/big.bin", data=too_big, timeout=30)
    assert_error(raw, 507, "Insufficient Storage")
    assert files_under(storage) == []
    assert "Socket error" not in server.log() and "Traceback" not in server.log()
    # The space came back: a small upload fits.
    small = requests.put(server.api + "/file", files={"file": ("small.bin", b"fits")}, timeout=30)
    assert small.status_code == 201, small.text


def test_uploads_are_refused_with_507_before_the_disk_is_full(gunicorn_server, make_app, tmpfs):
    """``STORAGE_MIN_FREE_BYTES`` of a 4 MiB disk kept free: an upload that would go
    below it is a 507 before its body is read; the disk never fills."""
    disk = tmpfs("4m")
    server = gunicorn_server(workers=1, threads=2, VIMEO_STORAGE_DIR=str(disk / "storage"),
                             VIMEO_STORAGE_MIN_FREE_BYTES=2 * MiB)
    assert requests.put(server.api + "/file", files={"file": ("a.bin", os.urandom(MiB))}, timeout=30).status_code == 201
    multipart = requests.put(server.api + "/file", files={"file": ("b.bin", os.urandom(MiB + MiB // 2))}, timeout=30)
    assert_error(multipart, 507, "Insufficient Storage")
    raw = requests.put(server.api + "/upload/c.bin", data=os.urandom(MiB + MiB // 2), timeout=30)
    assert_error(raw, 507, "Insufficient Storage")
    assert len(files_under(disk / "storage")) == 1  # the first upload, nothing of the others
    assert shutil.disk_usage(disk).free > 2 * MiB
    # On the embedded default's Flask client too, and an operator can lift the mark.
    app = make_app(backend="sqlite", STORAGE_DIR=str(disk / "flask-storage"), STORAGE_MIN_FREE_BYTES=2 * MiB)
    client = app.test_client()
    answer = client.put(API + "/file", data={"file": (io.BytesIO(os.urandom(MiB + MiB // 2)), "d.bin")},
                        content_type="multipart/form-data")
    assert answer.status_code == 507 and answer.get_json()["error"] == "Insufficient Storage"
    app.config["STORAGE_MIN_FREE_BYTES"] = 0
    answer = client.put(API + "/file", data={"file": (io.BytesIO(os.urandom(MiB + MiB // 2)), "d.bin")},
                        content_type="multipart/form-data")
    assert answer.status_code == 201


def _multipart(parts: int, files: int) -> tuple[str, bytes]:
    boundary = "b0undary"
    chunks = []
    for i in range(parts):
        filename = f'; filename="f{i}.bin"' if i < files else ""
        chunks.append(f'--{boundary}\r\nContent-Disposition: form-data; name="p{i}"{filename}\r\n\r\nx\r\n'.encode())
    return f"multipart/form-data; boundary={boundary}", b"".join(chunks) + f"--{boundary}--\r\n".encode()


def test_one_multipart_request_opens_a_bounded_number_of_files(make_app, monkeypatch):
    """werkzeug allows 1,000 parts by default, each file part an open file: two such
    requests exhaust a worker under a 1,024 descriptor limit. Past MAX_FORM_PARTS the
    answer is a 413 before more files are opened, and none is left behind."""
    app = make_app(backend="sqlite")
    assert app.config["MAX_FORM_PARTS"] <= 32
    opened = []
    original = LocalStorage.new_upload

    def counting(self):
        upload = original(self)
        opened.append(upload.path)
        return upload

    monkeypatch.setattr(LocalStorage, "new_upload", counting)
    content_type, body = _multipart(parts=1000, files=1000)
    answer = app.test_client().put(API + "/file", data=body, content_type=content_type)
    assert answer.status_code == 413
    assert answer.get_json()["error"] == "Request Entity Too Large"
    assert 0 < len(opened) <= app.config["MAX_FORM_PARTS"]
    assert not any(os.path.exists(p) for p in opened)
    # An ordinary upload, its options beside the file, is well within the cap.
    fields = {"password": "pw", "max_downloads": "2", "expires_in": "1h"}
    ok = app.test_client().put(API + "/file", data={"file": (io.BytesIO(b"x"), "x.bin"), **fields},
                               content_type="multipart/form-data")
    assert ok.status_code == 201


def test_many_parts_through_gunicorn_are_a_413_json(gunicorn_server):
    server = gunicorn_server(workers=1, threads=2)
    content_type, body = _multipart(parts=1000, files=1000)
    answer = requests.put(server.api + "/file", data=body, headers={"Content-Type": content_type}, timeout=30)
    assert_error(answer, 413, "Request Entity Too Large")
    assert files_under(Path(server.env["VIMEO_STORAGE_DIR"])) == []


# -- who may read what is stored (item 7) ------------------------------------------------

def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_stored_bytes_the_database_and_the_key_are_not_readable_by_others(gunicorn_server):
    """The embedded default as ``make run`` starts it (the ordinary umask, 022): blobs
    0640 in 0750 directories, uploads in progress 0700, the SQLite database and the
    signing key 0600, whatever the umask made of them."""
    server = gunicorn_server(workers=1, threads=2)
    up = requests.put(server.api + "/file", files={"file": ("p.txt", b"private bytes")},
                      data={"password": "pw", "max_downloads": "0"}, timeout=10)
    assert up.status_code == 201
    assert requests.get(up.json()["url"], headers={"X-Password": "pw"}, timeout=10).content == b"private bytes"
    storage = Path(server.env["VIMEO_STORAGE_DIR"])
    blob = next(p for p in (storage / "blobs").rglob("*") if p.is_file())
    assert mode(blob) == 0o640
    for directory in (storage, storage / "blobs", blob.parent, blob.parent.parent):
        assert mode(directory) == 0o750, directory
    assert mode(storage / "tmp") == 0o700
    database = server.env["VIMEO_DATABASE_URL"].removeprefix("sqlite:///")
    for name in (database, database + "-wal", database + "-shm"):
        if os.path.exists(name):
            assert mode(name) == 0o600, name
    state = Path(server.env["VIMEO_STATE_DIR"])
    assert mode(state) == 0o700 and mode(state / "token-signing.key") == 0o600


def test_an_older_storage_is_closed_to_others(make_app):
    """A storage directory an earlier version made 0755 is 0750 after the next upload."""
    app = make_app(backend="sqlite")
    root = Path(app.config["STORAGE_DIR"])
    root.mkdir(mode=0o755)
    root.chmod(0o755)
    answer = app.test_client().put(API + "/file", data={"file": (io.BytesIO(b"x"), "x.bin")},
                                   content_type="multipart/form-data")
    assert answer.status_code == 201
    assert mode(root) == 0o750
