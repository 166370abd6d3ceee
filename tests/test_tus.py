"""tus 1.0.0 (vimeo_api/tus.py, resumable.py): every protocol rule, on every deployment.

The tests taking ``target`` speak HTTP only and look behind the answers with SQL and the
storage directory, so they run on SQLite and PostgreSQL in-process and through nginx
(the stack). Those that change settings or reach into a process (the hash states, a
held lock, the sweep) use the app directly.
"""

from __future__ import annotations

import base64
import hashlib
import os
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from werkzeug.http import parse_date

from vimeo_api import resumable, sweep, tus
from vimeo_api.extensions import db
from vimeo_api.models import utcnow

TUS = "/tus/"
V = {"Tus-Resumable": "1.0.0"}
CHUNK_TYPE = {"Content-Type": "application/offset+octet-stream"}
DATA = bytes((i * 31 + i // 251) % 256 for i in range(100_000))
ERROR_KEYS = {"error", "message", "request_id"}


def meta(**values: str) -> str:
    return ",".join(f"{k} {base64.b64encode(v.encode()).decode()}" for k, v in values.items())


def create(target, length: int | None, metadata: str | None = None, **headers):
    h = {**V, **headers}
    if length is None:
        h["Upload-Defer-Length"] = "1"
    else:
        h["Upload-Length"] = str(length)
    if metadata is not None:
        h["Upload-Metadata"] = metadata
    return target.request("POST", TUS, headers=h)


def created(target, length: int | None = len(DATA), metadata: str | None = None) -> str:
    answer = create(target, length, metadata)
    assert answer.status == 201, answer
    location = answer.headers["Location"]
    assert location.startswith("/vimeo/api/v1.0/tus/")
    return location


def patch(target, location: str, offset: int, data: bytes, **headers):
    return target.request("PATCH", location, headers={**V, **CHUNK_TYPE, "Upload-Offset": str(offset), **headers},
                          data=data)


def head(target, location: str):
    return target.request("HEAD", location, headers=V)


def upload_id(location: str) -> str:
    return location.rsplit("/", 1)[1]


def data_file(target, location: str) -> Path:
    return Path(target.storage_dir, "resumable", upload_id(location))


def _bucket(target):
    """The bucket behind an S3 target (the stack on S3), else None."""
    return getattr(getattr(target, "stack", None), "bucket", None)


def stored_size(target, location: str) -> int | None:
    """How many bytes of the upload are stored, None when nothing is: its data file on
    local disk; in a bucket its tail objects and the parts of its multipart upload."""
    bucket = _bucket(target)
    if bucket is None:
        path = data_file(target, location)
        return path.stat().st_size if path.exists() else None
    uid = upload_id(location)
    key = f"{bucket.prefix}tus/{uid}"
    if not [name for name in bucket.stored("tus") if name.startswith(uid)]:
        return None
    tails = [name for name in bucket.keys(f"tus/{uid}.tail-")]
    size = sum(bucket.client.head_object(Bucket=bucket.name, Key=bucket.prefix + name)["ContentLength"]
               for name in tails)
    started = f"tus/{uid}" in bucket.multipart_uploads()  # (rclone's quirks handled there)
    for found in bucket.client.list_multipart_uploads(Bucket=bucket.name, Prefix=key).get("Uploads", ()) if started else ():
        parts = bucket.client.list_parts(Bucket=bucket.name, Key=key, UploadId=found["UploadId"])
        size += sum(part["Size"] for part in parts.get("Parts", ()))
    return size


def stored_bytes(target, location: str) -> bytes | None:
    """The bytes stored of an upload smaller than one part: its data file, or in a
    bucket its one tail object (S3 keeps nothing for an upload with no bytes yet)."""
    bucket = _bucket(target)
    if bucket is None:
        path = data_file(target, location)
        return path.read_bytes() if path.exists() else None
    uid = upload_id(location)
    assert bucket.multipart_uploads() == []
    tails = bucket.keys(f"tus/{uid}.tail-")
    if not tails:
        return None
    (tail,) = tails
    return bucket.client.get_object(Bucket=bucket.name, Key=bucket.prefix + tail)["Body"].read()


def empty_upload(target):
    """What an upload with no bytes yet stores: an empty file; nothing in a bucket."""
    return None if _bucket(target) is not None else b""


def storage_settings(target) -> dict:
    """The settings an app needs to reach the target's storage (its bucket, on S3)."""
    bucket = _bucket(target)
    if bucket is None:
        return {"STORAGE_DIR": target.storage_dir}
    env = target.stack.env
    return {name[len("VIMEO_"):]: value for name, value in env.items()
            if name.startswith("VIMEO_S3_") or name in ("VIMEO_STORAGE_URL", "VIMEO_STORAGE_DIR")}


def offset_row(target, location: str):
    rows = target.sql("select upload_offset, status from resumable_uploads where upload_id = :u", u=upload_id(location))
    return rows[0] if rows else None


def is_json_error(answer, status: int, *, head: bool = False) -> None:
    """The API's JSON error (its headers only, for a HEAD), with the tus version."""
    assert answer.status == status, answer
    assert answer.headers["Content-Type"] == "application/json"
    if not head:
        assert set(answer.json()) == ERROR_KEYS
    assert answer.headers["Tus-Resumable"] == "1.0.0"


def checksum(algorithm: str, data: bytes) -> str:
    return f"{algorithm} {base64.b64encode(hashlib.new(algorithm, data).digest()).decode()}"


def local_path(url: str) -> str:
    return url.split("/vimeo/api/v1.0", 1)[1]


# -- the header parsers ------------------------------------------------------------------

def test_metadata_is_parsed_as_the_protocol_writes_it():
    pairs = tus.parse_metadata("filename d29ybGRfZG9taW5hdGlvbl9wbGFuLnBkZg==,is_confidential")
    assert [(k, v) for k, v, _ in pairs] == [("filename", b"world_domination_plan.pdf"), ("is_confidential", b"")]


@pytest.mark.parametrize("header", ["a b,a c", "a !!!", "a b c", " ,a YQ=="])
def test_invalid_metadata_is_refused(header):
    with pytest.raises(Exception) as info:
        tus.parse_metadata(header)
    assert getattr(info.value, "code", None) == 400


def test_checksum_header_names_a_supported_algorithm():
    assert tus.parse_checksum("sha1 Kq5sNclPz7QV2+lfQIuc6R7oRu0=").digest == hashlib.sha1(b"hello world").digest()
    with pytest.raises(Exception) as info:
        tus.parse_checksum("crc32 AAAA")
    assert info.value.code == 400


# -- discovery and the version ------------------------------------------------------------

def test_options_tells_the_version_extensions_maximum_and_checksums(target):
    for path in (TUS, TUS + "0" * 32):
        answer = target.request("OPTIONS", path)
        assert answer.status == 204
        assert answer.headers["Tus-Version"] == "1.0.0"
        assert set(answer.headers["Tus-Extension"].split(",")) == {
            "creation", "creation-defer-length", "creation-with-upload", "termination", "checksum", "expiration"}
        assert int(answer.headers["Tus-Max-Size"]) == 10 * 1024 ** 3
        assert {"sha1", "sha256"} <= set(answer.headers["Tus-Checksum-Algorithm"].split(","))
        assert answer.headers["Tus-Resumable"] == "1.0.0"


@pytest.mark.parametrize("version", [None, "0.2.2", "2.0.0"])
def test_a_missing_or_unsupported_version_is_412_and_nothing_happens(target, version):
    headers = {"Upload-Length": "10"} if version is None else {"Upload-Length": "10", "Tus-Resumable": version}
    answer = target.request("POST", TUS, headers=headers)
    is_json_error(answer, 412)
    assert answer.headers["Tus-Version"] == "1.0.0"
    assert target.sql("select count(*) from resumable_uploads")[0][0] == 0
    location = created(target, 10)
    answer = target.request("PATCH", location, headers={**CHUNK_TYPE, "Upload-Offset": "0"}, data=b"0123456789")
    is_json_error(answer, 412)
    assert offset_row(target, location).upload_offset == 0
    assert stored_bytes(target, location) == empty_upload(target)


# -- creation ------------------------------------------------------------------------------

def test_creation_then_head(target):
    answer = create(target, len(DATA), meta(filename="report.pdf", filetype="application/pdf", password="s3cret"))
    assert answer.status == 201
    assert parse_date(answer.headers["Upload-Expires"]) > utcnow() + timedelta(hours=23)
    location = answer.headers["Location"]
    assert len(upload_id(location)) == 32 and int(upload_id(location), 16) >= 0
    assert stored_bytes(target, location) == empty_upload(target)
    answer = head(target, location)
    assert answer.status == 200
    assert answer.headers["Upload-Offset"] == "0"
    assert answer.headers["Upload-Length"] == str(len(DATA))
    assert answer.headers["Cache-Control"] == "no-store"
    assert answer.headers["Tus-Resumable"] == "1.0.0"
    # The metadata comes back, but never the password.
    assert answer.headers["Upload-Metadata"] == meta(filename="report.pdf", filetype="application/pdf")
    assert "X-Owner-Token" not in answer.headers and "X-File-Url" not in answer.headers
    (password_hash,) = target.sql("select password_hash from resumable_uploads")[0]
    assert password_hash and "s3cret" not in password_hash


@pytest.mark.parametrize("headers", [{}, {"Upload-Length": "-1"}, {"Upload-Length": "ten"},
                                     {"Upload-Defer-Length": "2"}, {"Upload-Length": "5", "Upload-Defer-Length": "1"}])
def test_creation_needs_one_valid_length(target, headers):
    is_json_error(target.request("POST", TUS, headers={**V, **headers}), 400)


@pytest.mark.parametrize("metadata", [
    meta(max_downloads="many"), meta(expires_in="soon"), meta(expires_in="0"), "filename !!notbase64",
    "filename YQ==,filename Yg==", "password " + base64.b64encode(b"\xff\xfe").decode(),
])
def test_invalid_options_are_refused_at_creation(target, metadata):
    is_json_error(create(target, 10, metadata), 400)
    assert target.sql("select count(*) from resumable_uploads")[0][0] == 0


def test_option_headers_count_at_creation(target):
    """X-Password and its kin on the creation request, as on the other upload routes; a
    header and a metadata value that disagree are a 400 before anything is kept."""
    answer = create(target, 5, meta(filename="h.txt", max_downloads="2"),
                    **{"X-Password": "pw", "X-Max-Downloads": "2", "X-Expires-In": "1h"})
    assert answer.status == 201, answer
    assert patch(target, answer.headers["Location"], 0, b"hello").status == 204
    file_url = head(target, answer.headers["Location"]).headers["X-File-Url"]
    (row,) = target.sql("select max_downloads, password_hash, expires_at, created_at from files where filehash = :h",
                        h=file_url.rsplit("/", 1)[1])
    assert row.max_downloads == 2 and row.password_hash is not None
    expires_at, created_at = (v if not isinstance(v, str) else datetime.fromisoformat(v)
                              for v in (row.expires_at, row.created_at))
    assert (expires_at - created_at).total_seconds() == 3600
    assert target.request("GET", file_url).status == 401
    assert target.request("GET", file_url, headers={"X-Password": "pw"}).body == b"hello"

    uploads_before = target.sql("select count(*) from resumable_uploads")[0][0]
    refused = create(target, 5, meta(filename="h.txt", password="pw"), **{"X-Password": "other"})
    is_json_error(refused, 400)
    message = refused.json()["message"]
    assert "password" in message and "Upload-Metadata" in message and "other" not in message
    assert target.sql("select count(*) from resumable_uploads")[0][0] == uploads_before


def test_more_than_the_maximum_is_413(target):
    is_json_error(create(target, 10 * 1024 ** 3 + 1), 413)


def test_an_empty_upload_is_complete_at_creation(target):
    answer = create(target, 0, meta(filename="empty.txt"))
    assert answer.status == 201
    file_url = answer.headers["X-File-Url"]
    assert answer.headers["X-Owner-Token"]
    download = target.request("GET", file_url)
    assert download.status == 200 and download.body == b""
    assert download.headers["ETag"] == '"%s"' % hashlib.sha256(b"").hexdigest()


def test_creation_with_upload_carries_the_first_bytes_or_all_of_them(target):
    answer = target.request("POST", TUS, headers={**V, **CHUNK_TYPE, "Upload-Length": str(len(DATA))}, data=DATA[:1000])
    assert answer.status == 201
    assert answer.headers["Upload-Offset"] == "1000"
    location = answer.headers["Location"]
    assert patch(target, location, 1000, DATA[1000:]).status == 204

    answer = target.request("POST", TUS, headers={**V, **CHUNK_TYPE, "Upload-Length": "5",
                                                  "Upload-Metadata": meta(filename="hi.txt")}, data=b"hello")
    assert answer.status == 201
    assert answer.headers["Upload-Offset"] == "5"
    assert target.request("GET", answer.headers["X-File-Url"]).body == b"hello"


def test_creation_with_more_bytes_than_its_length_is_413(target):
    answer = target.request("POST", TUS, headers={**V, **CHUNK_TYPE, "Upload-Length": "3"}, data=b"hello")
    is_json_error(answer, 413)
    assert target.sql("select count(*) from resumable_uploads")[0][0] == 0


# -- PATCH ---------------------------------------------------------------------------------

def test_chunks_make_a_file_with_its_options(target):
    location = created(target, len(DATA), meta(filename="data.bin", password="pw", max_downloads="2", expires_in="1h"))
    offset = 0
    for size in (1, 4095, 30_000, 65_904):
        answer = patch(target, location, offset, DATA[offset:offset + size])
        assert answer.status == 204, answer
        offset += size
        assert answer.headers["Upload-Offset"] == str(offset)
        assert answer.headers["Tus-Resumable"] == "1.0.0"
        if offset < len(DATA):
            assert "X-File-Url" not in answer.headers
            assert parse_date(answer.headers["Upload-Expires"]) > utcnow()
    file_url, token = answer.headers["X-File-Url"], answer.headers["X-Owner-Token"]
    assert file_url.startswith("http://files.test/vimeo/api/v1.0/file/")
    # HEAD after completion tells the same again (the last answer may have been lost).
    again = head(target, location)
    assert again.headers["Upload-Offset"] == again.headers["Upload-Length"] == str(len(DATA))
    assert again.headers["X-File-Url"] == file_url and again.headers["X-Owner-Token"] == token
    # Hashed, deduplicated and committed like any upload.
    sha = hashlib.sha256(DATA).hexdigest()
    (row,) = target.sql("select sha256, size, filename, max_downloads, password_hash, expires_at, created_at"
                        " from files where filehash = :h", h=file_url.rsplit("/", 1)[1])
    assert (row.sha256, row.size, row.filename, row.max_downloads) == (sha, len(DATA), "data.bin", 2)
    assert row.password_hash is not None
    expires_at, created_at = (v if not isinstance(v, str) else datetime.fromisoformat(v)
                              for v in (row.expires_at, row.created_at))
    assert (expires_at - created_at).total_seconds() == 3600
    assert target.sql("select refcount from blobs where sha256 = :s", s=sha)[0][0] == 1
    assert stored_size(target, location) is None
    # The options hold.
    assert target.request("GET", file_url).status == 401
    for _ in range(2):
        download = target.request("GET", file_url, headers={"X-Password": "pw"})
        assert download.status == 200 and download.body == DATA
        assert download.headers["ETag"] == f'"{sha}"'
    assert target.request("GET", file_url, headers={"X-Password": "pw"}).status == 410
    # The owner token manages the file; the download URL's answers never carry it.
    assert "X-Owner-Token" not in download.headers
    assert target.request("DELETE", local_path(file_url), headers={"X-Owner-Token": token}).status in (202, 410)


def test_the_same_content_twice_is_stored_once(target):
    urls = []
    for _ in range(2):
        location = created(target, len(DATA))
        urls.append(patch(target, location, 0, DATA).headers["X-File-Url"])
    assert urls[0] != urls[1]
    assert target.sql("select refcount from blobs where sha256 = :s", s=hashlib.sha256(DATA).hexdigest())[0][0] == 2


def test_offset_mismatch_is_409_and_changes_nothing(target):
    location = created(target)
    assert patch(target, location, 0, DATA[:100]).status == 204
    for wrong in (0, 50, 101, 5000):
        is_json_error(patch(target, location, wrong, DATA[wrong:wrong + 100]), 409)
    assert head(target, location).headers["Upload-Offset"] == "100"
    assert stored_bytes(target, location) == DATA[:100]


def test_a_chunk_that_is_not_offset_octet_stream_is_415(target):
    location = created(target)
    answer = target.request("PATCH", location, headers={**V, "Upload-Offset": "0", "Content-Type": "text/plain"},
                            data=b"abc")
    is_json_error(answer, 415)
    assert head(target, location).headers["Upload-Offset"] == "0"


@pytest.mark.parametrize("algorithm", ["sha1", "sha256"])
def test_checksum_mismatch_is_460_the_chunk_discarded_and_the_offset_unchanged(target, algorithm):
    location = created(target)
    assert patch(target, location, 0, DATA[:10], **{"Upload-Checksum": checksum(algorithm, DATA[:10])}).status == 204
    answer = patch(target, location, 10, DATA[10:500], **{"Upload-Checksum": checksum(algorithm, b"other bytes")})
    is_json_error(answer, 460)
    assert answer.json()["error"] == "Checksum Mismatch"
    assert head(target, location).headers["Upload-Offset"] == "10"
    assert stored_bytes(target, location) == DATA[:10]
    assert patch(target, location, 10, DATA[10:], **{"Upload-Checksum": checksum(algorithm, DATA[10:])}).status == 204
    file_url = head(target, location).headers["X-File-Url"]
    assert target.request("GET", file_url).body == DATA


def test_an_unsupported_checksum_algorithm_is_400_and_the_chunk_discarded(target):
    location = created(target)
    is_json_error(patch(target, location, 0, DATA[:10], **{"Upload-Checksum": "crc32 AAAAAA=="}), 400)
    assert head(target, location).headers["Upload-Offset"] == "0"


def test_a_chunk_past_upload_length_is_413_and_changes_nothing(target):
    location = created(target, 100)
    assert patch(target, location, 0, DATA[:60]).status == 204
    is_json_error(patch(target, location, 60, DATA[60:160]), 413)
    assert head(target, location).headers["Upload-Offset"] == "60"
    assert stored_bytes(target, location) == DATA[:60]


def test_a_deferred_length_is_told_by_a_patch_and_then_fixed(target):
    location = created(target, None, meta(filename="later.bin"))
    answer = head(target, location)
    assert answer.headers["Upload-Defer-Length"] == "1" and "Upload-Length" not in answer.headers
    assert patch(target, location, 0, DATA[:300]).status == 204
    assert head(target, location).headers["Upload-Defer-Length"] == "1"
    assert patch(target, location, 300, DATA[300:600], **{"Upload-Length": str(len(DATA))}).status == 204
    answer = head(target, location)
    assert answer.headers["Upload-Length"] == str(len(DATA)) and "Upload-Defer-Length" not in answer.headers
    is_json_error(patch(target, location, 600, DATA[600:700], **{"Upload-Length": "999"}), 400)
    answer = patch(target, location, 600, DATA[600:])
    assert answer.status == 204
    assert target.request("GET", answer.headers["X-File-Url"]).body == DATA


def test_a_patch_to_an_unknown_upload_is_404(target):
    is_json_error(patch(target, TUS + "0123456789abcdef" * 2, 0, b"x"), 404)
    is_json_error(patch(target, TUS + "not-an-id", 0, b"x"), 404)
    is_json_error(head(target, TUS + "f" * 32), 404, head=True)


def test_a_completed_upload_takes_no_more_bytes(target):
    location = created(target, 10)
    assert patch(target, location, 0, DATA[:10]).status == 204
    is_json_error(patch(target, location, 10, b"x"), 409)
    is_json_error(patch(target, location, 0, DATA[:10]), 409)


# -- termination and expiry ------------------------------------------------------------------

def test_termination_removes_the_bytes_and_the_row(target):
    location = created(target)
    assert patch(target, location, 0, DATA[:5000]).status == 204
    assert stored_size(target, location) == 5000
    answer = target.request("DELETE", location, headers=V)
    assert answer.status == 204 and answer.headers["Tus-Resumable"] == "1.0.0"
    assert stored_size(target, location) is None
    assert offset_row(target, location) is None
    is_json_error(head(target, location), 404, head=True)
    is_json_error(patch(target, location, 5000, DATA[5000:6000]), 404)


def test_terminating_a_completed_upload_keeps_its_file(target):
    location = created(target, 10)
    file_url = patch(target, location, 0, DATA[:10]).headers["X-File-Url"]
    assert target.request("DELETE", location, headers=V).status == 204
    is_json_error(head(target, location), 404, head=True)
    assert target.request("GET", file_url).body == DATA[:10]


def test_an_expired_upload_is_410_then_the_sweep_removes_it_404(target, make_app):
    location = created(target)
    assert patch(target, location, 0, DATA[:100]).status == 204
    target.sql("update resumable_uploads set expires_at = :t", t=(utcnow() - timedelta(seconds=1)).replace(tzinfo=None))
    is_json_error(head(target, location), 410, head=True)
    is_json_error(patch(target, location, 100, DATA[100:200]), 410)
    assert stored_size(target, location) == 100
    app = make_app(backend="postgresql" if target.name in ("postgresql", "stack", "stack-s3") else "sqlite",
                   DATABASE_URL=target.db_url, **storage_settings(target))
    with app.app_context():
        assert sweep.run(orphans=False).expired_uploads == 1
    assert offset_row(target, location) is None
    assert stored_size(target, location) is None
    is_json_error(head(target, location), 404, head=True)


# -- X-HTTP-Method-Override ------------------------------------------------------------------

def test_method_override_lets_a_post_patch_and_delete(target):
    location = created(target)
    answer = target.request("POST", location, headers={**V, **CHUNK_TYPE, "Upload-Offset": "0",
                                                       "X-HTTP-Method-Override": "PATCH"}, data=DATA[:700])
    assert answer.status == 204 and answer.headers["Upload-Offset"] == "700"
    assert head(target, location).headers["Upload-Offset"] == "700"
    answer = target.request("POST", location, headers={**V, "X-HTTP-Method-Override": "DELETE"})
    assert answer.status == 204
    assert stored_size(target, location) is None


# -- what only the app shows ------------------------------------------------------------------

@pytest.fixture
def tus_app(make_app):
    return make_app(backend="sqlite")


def _flask_target(app):
    from support.targets import FlaskTarget

    return FlaskTarget("sqlite", app)


def test_bytes_a_killed_worker_wrote_past_the_offset_are_never_acknowledged(tus_app):
    target = _flask_target(tus_app)
    location = created(target)
    assert patch(target, location, 0, DATA[:1000]).status == 204
    # What a worker killed mid-chunk leaves: bytes on disk that no row acknowledged.
    with open(data_file(target, location), "ab") as fh:
        fh.write(b"garbage never acknowledged" * 100)
    assert head(target, location).headers["Upload-Offset"] == "1000"
    answer = patch(target, location, 1000, DATA[1000:])
    assert answer.status == 204
    assert target.request("GET", answer.headers["X-File-Url"]).body == DATA


def test_a_chunk_while_another_writes_is_423_and_changes_nothing(tus_app):
    target = _flask_target(tus_app)
    location = created(target)
    with tus_app.app_context():
        holder = resumable.storage().open_resumable(upload_id(location))
    try:
        is_json_error(patch(target, location, 0, DATA[:100]), 423)
        is_json_error(target.request("DELETE", location, headers=V), 423)
    finally:
        holder.close()
    assert head(target, location).headers["Upload-Offset"] == "0"
    assert patch(target, location, 0, DATA[:100]).status == 204


def test_the_sha256_is_right_whichever_worker_takes_each_chunk(tus_app):
    """A chunk landing on another process finds no hash state: it reads back from disk
    only what it has not seen."""
    target = _flask_target(tus_app)
    location = created(target)
    hashes = tus_app.extensions["vimeo_resumable_hashes"]
    assert patch(target, location, 0, DATA[:40_000]).status == 204
    assert hashes.bytes_reread == 0
    hashes.drop(upload_id(location))  # as if the next chunk went to another worker
    assert patch(target, location, 40_000, DATA[40_000:70_000]).status == 204
    assert hashes.bytes_reread == 40_000
    answer = patch(target, location, 70_000, DATA[70_000:])
    assert hashes.bytes_reread == 40_000
    sha = hashlib.sha256(DATA).hexdigest()
    assert target.request("GET", answer.headers["X-File-Url"]).headers["ETag"] == f'"{sha}"'


def test_an_upload_larger_than_the_free_space_is_507(make_app):
    app = make_app(backend="sqlite", MAX_RESUMABLE_UPLOAD_SIZE=2 ** 62)
    target = _flask_target(app)
    with app.app_context():
        free = resumable.storage().free_space()
    is_json_error(create(target, free + 1024 ** 3), 507)
    assert target.sql("select count(*) from resumable_uploads")[0][0] == 0
    # Space promised to unfinished uploads is not promised twice.
    half = free // 2 + 1024 ** 2
    assert create(target, half).status == 201
    is_json_error(create(target, half), 507)


def test_creations_are_rate_limited_per_client_chunks_are_not(make_app):
    app = make_app(backend="sqlite", UPLOAD_RATE_LIMIT="2/minute")
    target = _flask_target(app)
    location = created(target, 20)
    assert create(target, 20).status == 201
    answer = create(target, 20)
    is_json_error(answer, 429)
    assert answer.headers["Retry-After"]
    for offset in range(0, 20, 5):
        assert patch(target, location, offset, DATA[offset:offset + 5]).status == 204


def test_orphaned_bytes_and_stale_rows_are_swept(tus_app):
    target = _flask_target(tus_app)
    location = created(target)
    orphan = data_file(target, location).with_name("ab" * 16)
    orphan.write_bytes(b"left by a creation whose commit failed")
    old = utcnow().timestamp() - 7 * 3600
    os.utime(orphan, (old, old))
    with tus_app.app_context():
        report = sweep.run()
    assert report.stale_uploads >= 1
    assert not orphan.exists()
    assert data_file(target, location).exists()  # young, and known


def test_manage_uploads_list_and_abort(tus_app):
    target = _flask_target(tus_app)
    location = created(target, 1000, meta(filename="big.iso"))
    assert patch(target, location, 0, DATA[:10]).status == 204
    done = created(target, 5)
    assert patch(target, done, 0, DATA[:5]).status == 204
    runner = tus_app.test_cli_runner()
    result = runner.invoke(args=["uploads", "list", "--json"])
    assert result.exit_code == 0, result.output
    import json

    rows = [json.loads(line) for line in result.output.splitlines() if line.startswith("{")]
    assert [(r["upload_id"], r["offset"], r["length"], r["filename"]) for r in rows] == [
        (upload_id(location), 10, 1000, "big.iso")]
    result = runner.invoke(args=["uploads", "abort", upload_id(location)])
    assert result.exit_code == 0, result.output
    assert not data_file(target, location).exists()
    is_json_error(head(target, location), 404, head=True)
    result = runner.invoke(args=["uploads", "abort", upload_id(location)])
    assert result.exit_code != 0 and "no unfinished upload" in result.output
    result = runner.invoke(args=["uploads", "abort", upload_id(done)])
    assert result.exit_code != 0


def test_a_rotated_signing_key_withholds_the_owner_token_rather_than_tell_a_wrong_one(make_app):
    app = make_app(backend="sqlite", TOKEN_SIGNING_KEYS=["old-key-" + "o" * 32])
    target = _flask_target(app)
    location = created(target, 3)
    token = patch(target, location, 0, b"abc").headers["X-Owner-Token"]
    with app.app_context():
        assert resumable.owner_token(upload_id(location)) == token
    rotated = make_app(backend="sqlite", TOKEN_SIGNING_KEYS=["new-key-" + "n" * 32, "old-key-" + "o" * 32])
    answer = head(_flask_target(rotated), location)
    assert answer.headers["X-File-Url"] and "X-Owner-Token" not in answer.headers
    with app.app_context():
        db.session.remove()


def test_a_chunk_larger_than_max_resumable_chunk_size_is_413(make_app):
    app = make_app(backend="sqlite", MAX_RESUMABLE_CHUNK_SIZE=1000)
    target = _flask_target(app)
    location = created(target, 5000)
    is_json_error(patch(target, location, 0, DATA[:1001]), 413)
    assert head(target, location).headers["Upload-Offset"] == "0"
    assert patch(target, location, 0, DATA[:1000]).status == 204


def test_nginx_refuses_a_chunk_past_its_body_limit_as_json_with_the_tus_version(stack_target):
    """nginx's own errors in the tus routes are the API's JSON, with Tus-Resumable too."""
    location = created(stack_target, 100 * 1024 * 1024)
    answer = patch(stack_target, location, 0, b"\0" * (64 * 1024 * 1024 + 1))
    is_json_error(answer, 413)
    assert head(stack_target, location).headers["Upload-Offset"] == "0"
    assert "Tus-Resumable" not in stack_target.request("GET", "/file/" + "0" * 32).headers
