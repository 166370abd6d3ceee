"""tus uploads on S3 storage (vimeo_api/resumable_s3.py), in-process against the run's
real ``rclone serve s3``: chunks become parts of a multipart upload at
``<prefix>tus/<id>``, a remainder shorter than a part waits as a tail object, the row
records the parts and the hash state, and whatever ends an upload (completion,
termination, expiry, ``uploads abort``, the orphan sweep) leaves nothing under ``tus/``.

Parts are 5 MiB here (``S3_PART_SIZE``, S3's minimum) so that a few MiB cross several
part boundaries. The real servers and clients (gunicorn, the S3 stack, tuspy and
tus-js-client, ``kill -9``) are tests/test_tus_clients.py's.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
from datetime import timedelta

import pytest

from support.stacks import Bucket
from vimeo_api import resumable, sweep
from vimeo_api.extensions import db
from vimeo_api.models import utcnow
from vimeo_api.resumable_s3 import S3ResumableStorage
from vimeo_api.resumable_storage import AdvisoryLocks, FileLocks
from vimeo_api.storage import StorageUnavailable
from vimeo_api.storage_s3 import S3Storage

MiB = 1024 * 1024
PART = 5 * MiB
TUS = "/vimeo/api/v1.0/tus/"
V = {"Tus-Resumable": "1.0.0"}
CHUNK_TYPE = {"Content-Type": "application/offset+octet-stream"}


@pytest.fixture
def bucket(s3_server):
    part = Bucket(s3_server, f"tus-{os.getpid()}-{secrets.token_hex(4)}")
    yield part
    part.empty()


@pytest.fixture(params=["sqlite", "postgresql"])
def tus_s3_app(request, make_app, s3_server, bucket):
    """The app on the bucket: SQLite (a lock file per upload) or PostgreSQL (advisory locks)."""
    return make_app(backend=request.param, S3_PART_SIZE=PART, **s3_server.settings(bucket.prefix))


def create(client, length: int, **headers) -> str:
    answer = client.post(TUS, headers={**V, "Upload-Length": str(length), **headers})
    assert answer.status_code == 201, answer.get_data(as_text=True)
    return answer.headers["Location"]


def patch(client, location: str, offset: int, data: bytes, **headers):
    return client.patch(location, data=data, headers={**V, **CHUNK_TYPE, "Upload-Offset": str(offset), **headers})


def upload_id(location: str) -> str:
    return location.rsplit("/", 1)[1]


def tus_area(bucket: Bucket) -> list[str]:
    """What the bucket holds for unfinished uploads: objects and multipart uploads."""
    return bucket.stored("tus")


def row(app, location: str):
    with app.app_context():
        found = db.session.execute(
            db.text("select upload_offset, status, chunk_state from resumable_uploads where upload_id = :u"),
            {"u": upload_id(location)},
        ).first()
        db.session.rollback()
    return found


def file_path(url: str) -> str:
    return "/vimeo/api/v1.0" + url.split("/vimeo/api/v1.0", 1)[1]


def test_the_backend_and_its_lock_follow_the_configuration(tus_s3_app):
    chunks = tus_s3_app.extensions["vimeo_resumable_storage"]
    assert isinstance(chunks, S3ResumableStorage)
    expected = AdvisoryLocks if tus_s3_app.config["SQLALCHEMY_DATABASE_URI"].startswith("postgresql") else FileLocks
    assert isinstance(chunks.locks, expected)


def test_chunks_become_parts_a_remainder_waits_as_one_tail_and_the_file_is_byte_identical(tus_s3_app, bucket):
    client = tus_s3_app.test_client()
    data = os.urandom(3 * PART + 12345)
    location = create(client, len(data), **{"Upload-Metadata": "max_downloads " + base64.b64encode(b"0").decode()})
    uid = upload_id(location)
    offset, chunk = 0, 3 * MiB  # never a multiple of the part size: a tail after each chunk
    while offset + chunk < len(data):
        answer = patch(client, location, offset, data[offset:offset + chunk])
        assert answer.status_code == 204, answer.get_data(as_text=True)
        offset += chunk
        assert answer.headers["Upload-Offset"] == str(offset)
        whole, tail = divmod(offset, PART)
        # The parts acknowledged are recorded with the offset; the rest is one tail.
        state = json.loads(row(tus_s3_app, location).chunk_state)
        assert [(p[0], p[2]) for p in state["parts"]] == [(n, PART) for n in range(1, whole + 1)]
        expected = [f"{uid}.tail-{offset}"] if tail else []
        if whole:
            expected.append(uid)  # the multipart upload, once a part was sent
        assert tus_area(bucket) == sorted(expected)
        if tail:
            stored = bucket.client.get_object(Bucket=bucket.name, Key=f"{bucket.prefix}tus/{uid}.tail-{offset}")
            assert stored["Body"].read() == data[whole * PART:offset]
    answer = patch(client, location, offset, data[offset:])
    assert answer.status_code == 204, answer.get_data(as_text=True)
    sha = hashlib.sha256(data).hexdigest()
    got = client.get(file_path(answer.headers["X-File-Url"]))
    assert (got.status_code, got.headers["ETag"]) == (200, f'"{sha}"')
    assert got.get_data() == data
    # Nothing of the upload is left: only the content-addressed object.
    assert tus_area(bucket) == []
    assert bucket.keys() == [f"blobs/{sha[:2]}/{sha[2:4]}/{sha}"]
    assert bucket.multipart_uploads() == []


def test_a_small_upload_is_one_put_and_the_same_content_twice_is_stored_once(tus_s3_app, bucket):
    client = tus_s3_app.test_client()
    data = os.urandom(PART + 100)
    urls = []
    for _ in range(2):
        location = create(client, len(data))
        assert patch(client, location, 0, data[:100]).status_code == 204
        answer = patch(client, location, 100, data[100:])
        assert answer.status_code == 204
        urls.append(answer.headers["X-File-Url"])
    small = create(client, 5)
    assert bucket.multipart_uploads() == [] and tus_area(bucket) == []
    answer = patch(client, small, 0, b"hello")
    assert answer.status_code == 204
    shas = sorted(hashlib.sha256(c).hexdigest() for c in (data, b"hello"))
    assert bucket.keys() == [f"blobs/{s[:2]}/{s[2:4]}/{s}" for s in shas]
    assert bucket.multipart_uploads() == []
    with tus_s3_app.app_context():
        assert db.session.execute(db.text("select refcount from blobs where sha256 = :s"),
                                  {"s": hashlib.sha256(data).hexdigest()}).scalar() == 2
        db.session.rollback()
    assert [client.get(file_path(url)).get_data() for url in urls] == [data, data]


def test_a_hash_state_goes_from_process_to_process_with_the_row(make_app, s3_server, bucket, tmp_path):
    """Each chunk taken by another app (another process, another node) on the same rows:
    no process keeps the hash, the row does."""
    settings = {"S3_PART_SIZE": PART, **s3_server.settings(bucket.prefix)}
    first = make_app(backend="postgresql", **settings)
    data = os.urandom(2 * PART + 999)
    client = first.test_client()
    location = create(client, len(data))
    cuts = [0, 1 * MiB + 3, PART + 7, 2 * PART + 500, len(data)]
    answer = None
    for start, stop in zip(cuts, cuts[1:]):
        app = make_app(backend="postgresql", STORAGE_DIR=str(tmp_path / f"node-{start}"), **settings)
        answer = patch(app.test_client(), location, start, data[start:stop])
        assert answer.status_code == 204, answer.get_data(as_text=True)
        assert app.extensions["vimeo_resumable_hashes"].bytes_reread == 0
    assert client.get(file_path(answer.headers["X-File-Url"])).headers["ETag"] == f'"{hashlib.sha256(data).hexdigest()}"'


def test_a_checksum_mismatch_sends_no_part_and_the_right_chunk_then_completes(tus_s3_app, bucket):
    """rclone aborts a whole multipart upload when a part comes again with other bytes: a
    chunk with a checksum is verified before any of its parts is sent."""
    client = tus_s3_app.test_client()
    data = os.urandom(2 * PART + 10)
    location = create(client, len(data))
    assert patch(client, location, 0, data[:MiB]).status_code == 204
    good = data[MiB:]
    corrupted = bytearray(good)
    corrupted[-1] ^= 0xFF
    digest = base64.b64encode(hashlib.sha1(good).digest()).decode()
    refused = patch(client, location, MiB, bytes(corrupted), **{"Upload-Checksum": f"sha1 {digest}"})
    assert refused.status_code == 460
    assert row(tus_s3_app, location).upload_offset == MiB
    assert bucket.multipart_uploads() == []  # not one part of it was sent
    answer = patch(client, location, MiB, good, **{"Upload-Checksum": f"sha1 {digest}"})
    assert answer.status_code == 204, answer.get_data(as_text=True)
    assert client.get(file_path(answer.headers["X-File-Url"])).get_data() == data


def test_a_completion_that_failed_after_the_multipart_upload_was_completed_goes_on(tus_s3_app, bucket, monkeypatch):
    client = tus_s3_app.test_client()
    data = os.urandom(2 * PART + 3)
    location = create(client, len(data))
    assert patch(client, location, 0, data[:PART + 1]).status_code == 204
    real_copy = S3Storage._copy
    calls = []

    def copy_fails_once(self, *args, **kwargs):
        calls.append(args)
        if len(calls) == 1:
            raise StorageUnavailable("CopyObject failed: test")
        return real_copy(self, *args, **kwargs)

    monkeypatch.setattr(S3Storage, "_copy", copy_fails_once)
    failed = patch(client, location, PART + 1, data[PART + 1:])
    assert failed.status_code == 503
    assert row(tus_s3_app, location).upload_offset == PART + 1
    # The store completed the multipart upload before the copy failed: it knows it no more.
    assert bucket.multipart_uploads() == [] and upload_id(location) in tus_area(bucket)
    answer = patch(client, location, PART + 1, data[PART + 1:])
    assert answer.status_code == 204, answer.get_data(as_text=True)
    assert client.get(file_path(answer.headers["X-File-Url"])).get_data() == data
    assert tus_area(bucket) == [] and bucket.multipart_uploads() == []


def test_what_a_killed_worker_sent_past_the_offset_is_sent_again_and_removed(tus_s3_app, bucket):
    """A worker killed after sending a part and a new tail, before recording them."""
    client = tus_s3_app.test_client()
    data = os.urandom(2 * PART + 77)
    location = create(client, len(data))
    uid = upload_id(location)
    assert patch(client, location, 0, data[:PART + MiB]).status_code == 204
    state = json.loads(row(tus_s3_app, location).chunk_state)
    key = f"{bucket.prefix}tus/{uid}"
    bucket.client.upload_part(Bucket=bucket.name, Key=key, UploadId=state["multipart"], PartNumber=2,
                              Body=data[PART:2 * PART])
    stray = f"{key}.tail-{2 * PART + 5}"
    bucket.client.put_object(Bucket=bucket.name, Key=stray, Body=data[2 * PART:2 * PART + 5])
    assert row(tus_s3_app, location).upload_offset == PART + MiB  # nothing of it was acknowledged
    answer = patch(client, location, PART + MiB, data[PART + MiB:])
    assert answer.status_code == 204, answer.get_data(as_text=True)
    assert client.get(file_path(answer.headers["X-File-Url"])).get_data() == data
    assert tus_area(bucket) == [] and bucket.multipart_uploads() == []


def _unfinished(client, bucket, length=2 * PART) -> str:
    location = create(client, length)
    assert patch(client, location, 0, os.urandom(PART + 10)).status_code == 204
    uid = upload_id(location)
    assert tus_area(bucket) == sorted([uid, f"{uid}.tail-{PART + 10}"])
    return location


def test_termination_aborts_the_multipart_upload_and_removes_the_tail(tus_s3_app, bucket):
    client = tus_s3_app.test_client()
    location = _unfinished(client, bucket)
    assert client.delete(location, headers=V).status_code == 204
    assert tus_area(bucket) == [] and bucket.multipart_uploads() == []
    assert row(tus_s3_app, location) is None


def test_expiry_and_uploads_abort_leave_nothing_in_the_bucket(tus_s3_app, bucket):
    client = tus_s3_app.test_client()
    expired, aborted = _unfinished(client, bucket), None
    with tus_s3_app.app_context():
        db.session.execute(db.text("update resumable_uploads set expires_at = :t"),
                           {"t": (utcnow() - timedelta(seconds=1)).replace(tzinfo=None)})
        db.session.commit()
        assert sweep.run(orphans=False).expired_uploads == 1
    assert tus_area(bucket) == [] and row(tus_s3_app, expired) is None
    aborted = _unfinished(client, bucket)
    result = tus_s3_app.test_cli_runner().invoke(args=["uploads", "abort", upload_id(aborted)])
    assert result.exit_code == 0, result.output
    assert tus_area(bucket) == [] and bucket.multipart_uploads() == []


def test_the_orphan_sweep_removes_uploads_no_row_knows(make_app, s3_server, bucket):
    app = make_app(backend="sqlite", S3_PART_SIZE=PART, STALE_UPLOAD_SECONDS=0, **s3_server.settings(bucket.prefix))
    client = app.test_client()
    known = _unfinished(client, bucket)
    orphan = "ab" * 16
    key = f"{bucket.prefix}tus/{orphan}"
    started = bucket.client.create_multipart_upload(Bucket=bucket.name, Key=key)
    bucket.client.upload_part(Bucket=bucket.name, Key=key, UploadId=started["UploadId"], PartNumber=1, Body=b"x")
    bucket.client.put_object(Bucket=bucket.name, Key=key + ".tail-7", Body=b"x" * 7)
    with app.app_context():
        report = sweep.run()
    assert not report.failed
    uid = upload_id(known)
    assert tus_area(bucket) == sorted([uid, f"{uid}.tail-{PART + 10}"])


def test_a_chunk_while_another_writes_is_423(tus_s3_app):
    client = tus_s3_app.test_client()
    location = create(client, 100)
    with tus_s3_app.app_context():
        holder = resumable.storage().open_resumable(upload_id(location))
    try:
        answer = patch(client, location, 0, b"x" * 100)
        assert answer.status_code == 423 and answer.get_json()["error"] == "Locked"
        assert client.delete(location, headers=V).status_code == 423
    finally:
        holder.close()
    assert patch(client, location, 0, b"x" * 100).status_code == 204


def test_a_maximum_beyond_ten_thousand_parts_fails_at_start(make_app, s3_server, bucket):
    with pytest.raises(ValueError, match="10,000 parts"):
        make_app(backend="sqlite", S3_PART_SIZE=PART, MAX_RESUMABLE_UPLOAD_SIZE=10_000 * PART + 1,
                 **s3_server.settings(bucket.prefix))
