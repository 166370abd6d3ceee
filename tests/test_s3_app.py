"""The app with its bytes in an S3 bucket (issue 14), in-process, against the run's
real ``rclone serve s3`` (tests/support/fixtures.py, ``s3_server``): the backend chosen
by ``STORAGE_URL``, the embedded default streaming downloads from the bucket (ranges
included), the sweep and ``files verify`` on the bucket, a store that does not answer.

Each test has a key prefix of its own in the bucket, so tests never see each other's
objects. The stack on S3 (nginx in front) is tests/stack/test_s3.py's.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import secrets
import time

import pytest

from deploy.stack import free_port
from support import API, ERROR_KEYS
from support.stacks import Bucket
from support.uploads import upload
from vimeo_api import create_app, sweep
from vimeo_api.extensions import db
from vimeo_api.storage import FallbackStorage
from vimeo_api.storage_s3 import S3Storage

MiB = 1024 * 1024


@pytest.fixture
def bucket(s3_server):
    """This test's own prefix of the run's bucket, emptied afterwards."""
    part = Bucket(s3_server, f"app-{os.getpid()}-{secrets.token_hex(4)}")
    yield part
    part.empty()


@pytest.fixture
def s3_app(make_app, s3_server, bucket):
    """The embedded default (SQLite, the app sends the bytes) on the bucket."""
    return make_app(backend="sqlite", **s3_server.settings(bucket.prefix))


def test_storage_url_selects_the_s3_backend(s3_app, bucket):
    store = s3_app.extensions["vimeo_storage"]
    assert isinstance(store, S3Storage)
    assert (store.bucket, store.prefix) == (bucket.name, bucket.prefix)


def test_an_unknown_scheme_or_a_bad_url_fails_at_start(tmp_path):
    for url in ("gs://bucket/x", "s3://", "s3://b/../x"):
        with pytest.raises(ValueError):
            create_app({"TESTING": True, "DATABASE_URL": f"sqlite:///{tmp_path / 'x.sqlite3'}",
                        "STORAGE_DIR": str(tmp_path / "s"), "STORAGE_URL": url})


def test_the_local_fallback_wraps_the_bucket(make_app, s3_server, bucket):
    app = make_app(backend="sqlite", STORAGE_LOCAL_FALLBACK=True, **s3_server.settings(bucket.prefix))
    store = app.extensions["vimeo_storage"]
    assert isinstance(store, FallbackStorage) and isinstance(store.primary, S3Storage)


# -- the embedded default streams from the bucket ------------------------------------------

@pytest.mark.parametrize("size", [300 * 1024, 9 * MiB + 11], ids=["one-put", "multipart"])
def test_the_embedded_default_streams_downloads_from_the_bucket(s3_app, bucket, size):
    client = s3_app.test_client()
    content = os.urandom(size)
    sha = hashlib.sha256(content).hexdigest()
    body = upload(client, content, "data.bin", max_downloads=0)
    assert bucket.keys() == [f"blobs/{sha[:2]}/{sha[2:4]}/{sha}"]
    assert bucket.multipart_uploads() == []
    # Nothing of the bytes on local disk: STORAGE_DIR is scratch space only.
    assert not os.path.exists(os.path.join(s3_app.config["STORAGE_DIR"], "blobs"))
    url = API + "/file/" + body["filehash"]

    whole = client.get(url)
    assert (whole.status_code, whole.get_data()) == (200, content)
    assert whole.headers["Content-Length"] == str(size)
    one = client.get(url, headers={"Range": f"bytes={size - 5000}-{size - 1001}"})
    assert (one.status_code, one.get_data()) == (206, content[size - 5000:size - 1000])
    assert one.headers["Content-Range"] == f"bytes {size - 5000}-{size - 1001}/{size}"
    tail = client.get(url, headers={"Range": "bytes=-10"})
    assert (tail.status_code, tail.get_data()) == (206, content[-10:])
    multi = client.get(url, headers={"Range": "bytes=0-9,100-109,-5"})
    assert multi.status_code == 206
    boundary = re.search(r"boundary=(\S+)", multi.headers["Content-Type"])[1]
    parts = multi.get_data().split(b"--" + boundary.encode())[1:-1]
    assert [p.split(b"\r\n\r\n", 1)[1][:-2] for p in parts] == [content[0:10], content[100:110], content[-5:]]
    head = client.head(url)
    assert (head.status_code, head.get_data(), head.headers["Content-Length"]) == (200, b"", str(size))


def test_replace_and_a_raw_upload_on_the_bucket(s3_app, bucket):
    client = s3_app.test_client()
    body = upload(client, b"first", "a.txt", max_downloads=0)
    raw = client.put(API + "/upload/b.txt", data=b"second", headers={"X-Max-Downloads": "0"})
    assert raw.status_code == 201
    replaced = client.put(API + "/file/" + body["filehash"], data=b"third",
                          headers={"X-Owner-Token": body["owner_token"]})
    assert replaced.status_code == 200
    assert client.get(API + "/file/" + body["filehash"]).get_data() == b"third"
    assert client.get(API + "/file/" + raw.get_json()["filehash"]).get_data() == b"second"
    shas = sorted(hashlib.sha256(c).hexdigest() for c in (b"first", b"second", b"third"))
    assert bucket.keys() == [f"blobs/{s[:2]}/{s[2:4]}/{s}" for s in shas]


# -- deletion and the sweep on the bucket -----------------------------------------------------

def test_released_bytes_leave_the_bucket_after_the_grace_period(make_app, s3_server, bucket):
    app = make_app(backend="sqlite", DELETE_GRACE_SECONDS=1, **s3_server.settings(bucket.prefix))
    client = app.test_client()
    kept = upload(client, b"kept", "k.txt", max_downloads=0)
    gone = upload(client, b"gone soon", "g.txt", max_downloads=0)
    assert client.delete(API + "/file/" + gone["filehash"], headers={"X-Owner-Token": gone["owner_token"]}).status_code == 202
    with app.app_context():
        # Within the grace period the bytes stay (a transfer just begun finishes).
        assert sweep.run().released == 0
        assert bucket.blob_key(gone["sha256"])[len(bucket.prefix):] in bucket.keys()

        def released():
            return sweep.run().released == 1

        deadline = time.monotonic() + 10
        while not released():
            assert time.monotonic() < deadline, "the grace period never ended"
            time.sleep(0.2)
        rows = db.session.execute(db.text("select sha256 from blobs")).scalars().all()
    assert rows == [kept["sha256"]]
    assert bucket.keys() == [bucket.blob_key(kept["sha256"])[len(bucket.prefix):]]


def test_the_orphan_sweep_removes_objects_no_row_knows(make_app, s3_server, bucket):
    app = make_app(backend="sqlite", STALE_UPLOAD_SECONDS=60, **s3_server.settings(bucket.prefix))
    client = app.test_client()
    known = upload(client, b"known", "k.txt", max_downloads=0)
    orphan, young = os.urandom(100), os.urandom(100)
    for content, mtime in ((orphan, time.time() - 3600), (young, time.time())):
        sha = hashlib.sha256(content).hexdigest()
        bucket.client.put_object(Bucket=bucket.name, Key=bucket.blob_key(sha), Body=content,
                                 Metadata={"mtime": str(int(mtime))})
    with app.app_context():
        report = sweep.run()
    assert (report.orphans, report.released) == (1, 1)
    expected = sorted(bucket.blob_key(hashlib.sha256(c).hexdigest())[len(bucket.prefix):] for c in (b"known", young))
    assert bucket.keys() == expected  # the young one may still be an upload committing
    assert client.get(API + "/file/" + known["filehash"]).get_data() == b"known"


def test_the_sweep_aborts_multipart_uploads_older_than_stale_upload_seconds(make_app, s3_server, bucket):
    app = make_app(backend="sqlite", STALE_UPLOAD_SECONDS=2, **s3_server.settings(bucket.prefix))
    started = bucket.client.create_multipart_upload(Bucket=bucket.name, Key=bucket.prefix + "tmp/" + "a" * 32)
    bucket.client.upload_part(Bucket=bucket.name, Key=bucket.prefix + "tmp/" + "a" * 32,
                              UploadId=started["UploadId"], PartNumber=1, Body=b"x" * 1000)
    with app.app_context():
        assert sweep.run().stale_uploads == 0  # too young yet
        assert bucket.multipart_uploads() == ["tmp/" + "a" * 32]
        deadline = time.monotonic() + 15
        while sweep.run().stale_uploads == 0:
            assert time.monotonic() < deadline, "the stale upload was never aborted"
            time.sleep(0.5)
    assert bucket.multipart_uploads() == []
    assert bucket.keys() == []


def test_files_verify_rehashes_the_objects(s3_app, bucket):
    client, runner = s3_app.test_client(), s3_app.test_cli_runner()
    files = [upload(client, f"content number {i}".encode(), f"f{i}.txt", max_downloads=0) for i in range(3)]
    intact = runner.invoke(args=["files", "verify", "--json"])
    assert intact.exit_code == 0, intact.output
    assert json.loads(intact.stdout) == {"checked": 3, "problems": [], "repaired": []}

    corrupt, missing = files[1], files[2]
    bucket.client.put_object(Bucket=bucket.name, Key=bucket.blob_key(corrupt["sha256"]), Body=b"content number X")
    bucket.client.delete_object(Bucket=bucket.name, Key=bucket.blob_key(missing["sha256"]))
    found = runner.invoke(args=["files", "verify", "--json"])
    assert found.exit_code == 1
    problems = {(p["filehash"], p["problem"]) for p in json.loads(found.stdout)["problems"]}
    assert problems == {(corrupt["filehash"], "corrupt"), (missing["filehash"], "missing")}

    repaired = runner.invoke(args=["files", "verify", "--repair", "--json"])
    assert sorted(json.loads(repaired.stdout)["repaired"]) == sorted([corrupt["filehash"], missing["filehash"]])
    # The corrupt object is removed, so the true content can be stored afresh.
    assert bucket.keys() == [bucket.blob_key(files[0]["sha256"])[len(bucket.prefix):]]


# -- a store that does not answer -------------------------------------------------------------

def test_a_store_that_refuses_connections_is_a_503_with_retry_after(make_app, s3_server, bucket):
    settings = {**s3_server.settings(bucket.prefix), "S3_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}",
                "S3_CONNECT_TIMEOUT": 1, "S3_MAX_ATTEMPTS": 2}
    app = make_app(backend="sqlite", **settings)
    client = app.test_client()
    answer = client.put(API + "/file", data={"file": (io.BytesIO(b"x" * 100), "x.bin")},
                        content_type="multipart/form-data")
    assert answer.status_code == 503
    body = answer.get_json()
    assert set(body) == ERROR_KEYS and body["error"] == "Service Unavailable"
    assert body["message"] == "The storage is unavailable; retry shortly."
    assert int(answer.headers["Retry-After"]) >= 5
    assert "127.0.0.1" not in answer.get_data(as_text=True)  # no endpoint, no key
    with app.app_context():
        assert db.session.execute(db.text("select count(*) from files")).scalar() == 0
    ready = client.get("/readyz")
    assert ready.status_code == 503 and "storage is down" in ready.get_json()["message"]

