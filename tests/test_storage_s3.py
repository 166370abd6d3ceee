"""The S3 storage backend against real S3 server processes over HTTP.

``rclone serve s3`` (deploy/s3server.py) is the server: it checks SigV4 signatures, so
presigned URLs and credentials are tested for real. moto's standalone server (which
checks no signature) is used only for what rclone cannot do: the multipart server-side
copy (UploadPartCopy) of objects larger than one CopyObject may copy, which rclone
answers without copying anything (a test shows the backend then refuses to place the
upload rather than store it empty), and AWS's 5 MiB minimum for every part but the last,
which rclone does not enforce. A server that cannot start fails the run.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import secrets
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import requests
from werkzeug.formparser import MultiPartParser

from deploy.s3server import start_moto, start_rclone
from vimeo_api.storage_s3 import (
    MiB,
    BlobStat,
    S3Storage,
    StorageUnavailable,
    _BlobReader,
    parse_storage_url,
)

ROOT = Path(__file__).resolve().parent.parent
MTIME = 1_700_000_000.0
CHUNK = 64 * 1024  # what werkzeug's multipart parser hands to write() at most


# -- servers and helpers ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def rclone(tmp_path_factory):
    root = tmp_path_factory.mktemp("rclone")
    server = start_rclone(root / "data", log_path=root / "rclone.log")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def moto(tmp_path_factory):
    server = start_moto(log_path=tmp_path_factory.mktemp("moto") / "moto.log")
    yield server
    server.stop()


def make_storage(server, **options) -> S3Storage:
    """A storage on its own random prefix, so that tests never see each other's keys."""
    settings = server.settings(prefix=f"t-{secrets.token_hex(4)}")
    bucket, prefix = parse_storage_url(settings["STORAGE_URL"])
    options.setdefault("connect_timeout", 2)
    options.setdefault("read_timeout", 10)
    return S3Storage(
        bucket, prefix, endpoint_url=settings["S3_ENDPOINT_URL"], region=settings["S3_REGION"],
        access_key_id=settings["S3_ACCESS_KEY_ID"], secret_access_key=settings["S3_SECRET_ACCESS_KEY"],
        **options,
    )


@pytest.fixture(params=["parts in memory", "parts on the scratch disk"])
def storage(rclone, request, tmp_path):
    # Both ways an upload fills its parts (S3Upload): a buffer, or a spool file in the
    # node's scratch space.
    scratch = str(tmp_path / "scratch") if request.param == "parts on the scratch disk" else None
    if scratch:
        os.makedirs(scratch)
    return make_storage(rclone, part_size=5 * MiB, scratch_dir=scratch)


def keys(server, storage: S3Storage, area: str = "") -> list[str]:
    """Every object key below the storage's prefix (or one of its areas), all pages."""
    client = server.client()
    found = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=storage.bucket, Prefix=storage.prefix + area):
        found += [item["Key"] for item in page.get("Contents", ())]
    return found


def multipart_uploads(server, storage: S3Storage) -> list[dict]:
    from botocore.exceptions import ClientError

    try:
        answer = server.client().list_multipart_uploads(Bucket=storage.bucket, Prefix=storage.prefix)
    except ClientError as exc:  # rclone after a restart, before any upload (S3-NOTES.md)
        if exc.response["Error"]["Code"] == "NoSuchUpload":
            return []
        raise
    return answer.get("Uploads", [])


def files_on_disk(server, storage: S3Storage) -> list[str]:
    """rclone keeps objects as files, in-flight uploads as hidden ``.rclone_temp_*`` files
    that no listing shows: a leftover of an abandoned upload is only visible here."""
    base = Path(server.data_dir) / storage.bucket / storage.prefix
    return sorted(str(p.relative_to(base)) for p in base.rglob("*") if p.is_file()) if base.exists() else []


def payload(size: int) -> bytes:
    return os.urandom(size)


def write_in_chunks(upload, data: bytes) -> None:
    view = memoryview(data)
    for offset in range(0, len(data), CHUNK):
        assert upload.write(view[offset:offset + CHUNK]) == len(view[offset:offset + CHUNK])


def upload_bytes(storage: S3Storage, data: bytes, mtime: float = MTIME) -> tuple[str, bool]:
    with storage.new_upload() as upload:
        write_in_chunks(upload, data)
        placed = storage.place(upload, mtime)
    return upload.sha256, placed


def read_all(storage: S3Storage, sha256: str, start: int = 0, stop: int | None = None, n: int = 100_000) -> bytes:
    out = bytearray()
    with storage.open(sha256, start, stop) as stream:
        while chunk := stream.read(n):
            out += chunk
    return bytes(out)


def assert_only_blobs(server, storage: S3Storage, shas: list[str]) -> None:
    """Exactly these blobs at their content addresses, no temporary object, no
    unfinished multipart upload, no hidden temporary file on the server's disk."""
    assert sorted(keys(server, storage)) == sorted(storage.blob_key(s) for s in shas)
    assert multipart_uploads(server, storage) == []
    if server.kind == "rclone":
        assert files_on_disk(server, storage) == sorted(storage.blob_key(s)[len(storage.prefix):] for s in shas)


# -- round trips -----------------------------------------------------------------------------

@pytest.mark.parametrize("size", [0, 1, 5 * MiB - 1, 5 * MiB, 5 * MiB + 1, 10 * MiB, 10 * MiB + 1])
def test_round_trip_at_part_boundaries(rclone, storage, size):
    data = payload(size)
    with storage.new_upload() as upload:
        write_in_chunks(upload, data)
        # werkzeug seeks to 0 after writing a part, before FileStorage wraps it.
        assert upload.seek(0) == 0 and upload.tell() == 0
        assert upload.size == size
        assert upload.sha256 == hashlib.sha256(data).hexdigest()
        # Bytes of every full part are already in the bucket before place().
        assert upload.started == (size >= 5 * MiB)
        assert storage.place(upload, MTIME) is True
    sha = hashlib.sha256(data).hexdigest()
    assert storage.exists(sha)
    assert storage.stat(sha) == BlobStat(size=size, mtime=MTIME)
    assert read_all(storage, sha) == data
    assert_only_blobs(rclone, storage, [sha])


def test_parts_stream_while_writing_at_the_default_part_size(rclone):
    storage = make_storage(rclone)  # 8 MiB parts
    assert storage.part_size == 8 * MiB
    data = payload(17 * MiB + 5)
    with storage.new_upload() as upload:
        write_in_chunks(upload, data[: 8 * MiB + 1])
        [mpu] = multipart_uploads(rclone, storage)
        parts = rclone.client().list_parts(Bucket=storage.bucket, Key=mpu["Key"], UploadId=mpu["UploadId"])["Parts"]
        assert [(p["PartNumber"], p["Size"]) for p in parts] == [(1, 8 * MiB)]
        assert mpu["Key"].startswith(storage.prefix + "tmp/")
        write_in_chunks(upload, data[8 * MiB + 1:])
        assert storage.place(upload, MTIME)
    assert read_all(storage, upload.sha256) == data
    assert_only_blobs(rclone, storage, [upload.sha256])


def test_werkzeug_multipart_parser_streams_a_file_part_into_the_bucket(rclone, storage):
    """Every call werkzeug 3.1's parser makes on the stream it is given, for real."""
    data = payload(6 * MiB + 123)
    boundary = "----s3test" + secrets.token_hex(8)
    body = (
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"max_downloads\"\r\n\r\n3\r\n"
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.bin\"\r\n"
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode() + data + f"\r\n--{boundary}--\r\n".encode()
    made = []

    def stream_factory(**_kwargs):
        made.append(storage.new_upload())
        return made[-1]

    parser = MultiPartParser(stream_factory=stream_factory, max_form_memory_size=500_000)
    form, files = parser.parse(io.BytesIO(body), boundary.encode(), len(body))
    assert form["max_downloads"] == "3"
    upload = files["file"].stream
    assert upload is made[0] and upload.tell() == 0
    assert upload.size == len(data)
    assert storage.place(upload, MTIME)
    files["file"].close()  # what the request's teardown does: harmless once placed
    assert read_all(storage, hashlib.sha256(data).hexdigest()) == data
    assert_only_blobs(rclone, storage, [upload.sha256])


def test_copy_from_a_raw_body_stream(rclone, storage):
    """A raw PUT body: werkzeug's LimitedStream (read straight into the part buffer with
    readinto), and a stream that only has read()."""
    from werkzeug.wsgi import LimitedStream

    class ReadOnly:
        def __init__(self, data):
            self._stream = io.BytesIO(data)

        def read(self, n=-1):
            return self._stream.read(n)

    shas = []
    for data, make in ((payload(9 * MiB + 17), lambda d: LimitedStream(io.BytesIO(d), len(d))),
                       (payload(5 * MiB + 3), ReadOnly)):
        with storage.new_upload() as upload:
            upload.copy_from(make(data))
            assert upload.size == len(data) and upload.sha256 == hashlib.sha256(data).hexdigest()
            assert storage.place(upload, MTIME)
        assert read_all(storage, upload.sha256) == data
        shas.append(upload.sha256)
    assert_only_blobs(rclone, storage, shas)


def test_an_upload_is_append_only(storage):
    with storage.new_upload() as upload:
        upload.write(b"abc")
        upload.seek(0)
        with pytest.raises(io.UnsupportedOperation):
            upload.write(b"x")
        with pytest.raises(io.UnsupportedOperation):
            upload.read()
        upload.seek(0, io.SEEK_END)
        upload.write(b"def")
        assert upload.size == 6 and upload.sha256 == hashlib.sha256(b"abcdef").hexdigest()


@pytest.mark.parametrize("size", [0, 100, 5 * MiB, 10 * MiB, 11 * MiB + 7])
def test_adopt_streams_a_local_body_file_and_removes_it(rclone, storage, tmp_path, size):
    # Nothing, less than a part, exactly one part (one PutObject), exactly two parts
    # (both sent from the file), and parts plus a tail.
    data = payload(size)
    body = tmp_path / "body"
    body.write_bytes(data)
    upload = storage.adopt(str(body))
    assert not body.exists()
    assert upload.size == len(data) and upload.sha256 == hashlib.sha256(data).hexdigest()
    assert storage.place(upload, MTIME)
    assert read_all(storage, upload.sha256) == data
    assert_only_blobs(rclone, storage, [upload.sha256])
    with pytest.raises(FileNotFoundError):
        storage.adopt(str(tmp_path / "missing"))
    assert_only_blobs(rclone, storage, [upload.sha256])


def test_adopt_sends_whole_parts_from_the_file_not_from_memory(moto, tmp_path):
    # moto enforces AWS's 5 MiB minimum for every part but the last; the traced peak
    # shows no part was gathered in memory (a part is 8 MiB, the tail 1 MiB; botocore
    # reads a part in 1 MiB pieces to sign it, checksum it and send it).
    import tracemalloc

    storage = make_storage(moto, part_size=8 * MiB)
    storage.client  # the client's own model is not what is measured
    data = payload(3 * 8 * MiB + MiB)
    body = tmp_path / "body"
    body.write_bytes(data)
    tracemalloc.start()
    try:
        upload = storage.adopt(str(body))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(upload.parts) == 3 and peak < 6 * MiB, peak
    assert upload.sha256 == hashlib.sha256(data).hexdigest()
    assert storage.place(upload, MTIME)
    assert read_all(storage, upload.sha256) == data


def test_a_form_upload_fills_its_parts_on_the_scratch_disk_not_in_memory(moto, tmp_path):
    # werkzeug's multipart parser writes 64 KiB pieces; with a scratch directory no part
    # is gathered in memory (8 MiB parts; moto enforces the 5 MiB minimum), the spool is
    # an unnamed file (nothing left in the directory), and the bytes arrive whole.
    import tracemalloc

    scratch = tmp_path / "scratch"
    scratch.mkdir()
    storage = make_storage(moto, part_size=8 * MiB, scratch_dir=str(scratch))
    storage.client
    data = payload(3 * 8 * MiB + 3 * MiB + 5)
    upload = storage.new_upload()
    tracemalloc.start()
    try:
        with memoryview(data) as view:
            for at in range(0, len(data), CHUNK):
                upload.write(view[at:at + CHUNK])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(upload.parts) == 3 and peak < 6 * MiB, peak
    assert list(scratch.iterdir()) == []
    assert storage.place(upload, MTIME)
    assert read_all(storage, upload.sha256) == data


@pytest.mark.parametrize("spooled", [False, True])
def test_writing_on_after_a_body_file_keeps_whole_parts(moto, tmp_path, spooled):
    storage = make_storage(moto, part_size=5 * MiB, scratch_dir=str(tmp_path) if spooled else None)
    first, second = payload(5 * MiB + 3), payload(6 * MiB)
    body = tmp_path / "body"
    body.write_bytes(first)
    upload = storage.new_upload()
    with open(body, "rb") as stream:
        upload.copy_file(stream)
    upload.write(second)
    assert upload.sha256 == hashlib.sha256(first + second).hexdigest()
    assert storage.place(upload, MTIME)
    assert read_all(storage, upload.sha256) == first + second


def test_threads_asking_for_a_client_at_once_share_one():
    # A busy worker's first requests arrive together: one session, one client per kind.
    import threading

    storage = S3Storage("bucket", "p", endpoint_url="http://127.0.0.1:9", region="us-east-1",
                        access_key_id="AKIDEXAMPLE", secret_access_key="secret")
    start, got = threading.Barrier(8), []

    def ask():
        start.wait()
        got.append((storage.client, storage.slow_client))

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({id(main) for main, _ in got}) == 1 and len({id(slow) for _, slow in got}) == 1
    assert got[0][0] is not got[0][1]


@pytest.mark.parametrize("region", ["us-east-1", "eu-west-3", "cn-north-1", "us-gov-west-1"])
@pytest.mark.parametrize("addressing", ["auto", "path", "virtual"])
@pytest.mark.parametrize("endpoint_url", [None, "http://127.0.0.1:9000"])
def test_the_endpoint_table_cut_to_s3_resolves_as_botocores_own(region, addressing, endpoint_url):
    # The worker's sessions read an endpoint table with S3's entries only (memory); every
    # client made from it must reach and sign exactly as one from botocore's whole table.
    import re

    import botocore.session
    from botocore.config import Config

    from vimeo_api.storage_s3 import _botocore_session, _S3EndpointsLoader

    def made(session):
        client = session.create_client(
            "s3", region_name=region, endpoint_url=endpoint_url, aws_access_key_id="AKIDEXAMPLE",
            aws_secret_access_key="secret", config=Config(signature_version="s3v4", s3={"addressing_style": addressing}),
        )
        url = client.generate_presigned_url("get_object", Params={"Bucket": "bkt", "Key": "k/x"}, ExpiresIn=60)
        return client.meta.endpoint_url, client.meta.partition, client.meta.region_name, \
            re.sub(r"X-Amz-(Date|Signature)=[^&]*", "", url)

    ours = _botocore_session()
    assert isinstance(ours.get_component("data_loader"), _S3EndpointsLoader)
    assert made(ours) == made(botocore.session.Session())


# -- dedup and abandoned uploads ---------------------------------------------------------------

@pytest.mark.parametrize("size", [100, 7 * MiB])  # PutObject at place(), and copy from tmp/
def test_same_content_is_stored_once(rclone, storage, size):
    data = payload(size)
    sha, first = upload_bytes(storage, data, mtime=MTIME)
    again, second = upload_bytes(storage, data, mtime=MTIME + 100)
    assert (first, second) == (True, False) and again == sha
    assert storage.stat(sha) == BlobStat(size=size, mtime=MTIME)  # the first upload's
    assert_only_blobs(rclone, storage, [sha])


@pytest.mark.parametrize("size", [1000, 12 * MiB])
def test_a_cut_off_upload_leaves_nothing(rclone, storage, size):
    upload = storage.new_upload()
    write_in_chunks(upload, payload(size))
    if size > 5 * MiB:
        assert len(multipart_uploads(rclone, storage)) == 1
        assert any(".rclone_temp_" in name for name in files_on_disk(rclone, storage))
    upload.close()
    upload.close()  # idempotent
    assert_only_blobs(rclone, storage, [])
    with pytest.raises(ValueError):
        storage.place(upload, MTIME)


def test_an_exception_in_the_with_block_discards_the_upload(rclone, storage):
    with pytest.raises(RuntimeError):
        with storage.new_upload() as upload:
            write_in_chunks(upload, payload(6 * MiB))
            raise RuntimeError("client hung up")
    assert upload.closed and not upload.placed
    assert_only_blobs(rclone, storage, [])


def test_remove_stale_uploads_aborts_old_multipart_uploads_and_temp_objects(rclone, storage):
    upload = storage.new_upload()
    write_in_chunks(upload, payload(6 * MiB))  # one part sent: a multipart upload exists
    leftover = storage.tmp_key("left-by-a-killed-process")
    rclone.client().put_object(Bucket=storage.bucket, Key=leftover, Body=b"partial")
    other = make_storage(rclone)
    with other.new_upload() as elsewhere:
        write_in_chunks(elsewhere, payload(8 * MiB))  # another prefix: not ours to remove

        assert storage.remove_stale_uploads(older_than=3600) == 0
        assert len(multipart_uploads(rclone, storage)) == 1 and keys(rclone, storage, "tmp/") == [leftover]

        # Both were made before this instant: a deadline, not a sleep, for the clock to pass them.
        deadline = time.monotonic() + 5
        removed = 0
        while removed < 2 and time.monotonic() < deadline:
            removed += storage.remove_stale_uploads(older_than=0)
        assert removed == 2
        assert multipart_uploads(rclone, storage) == [] and keys(rclone, storage, "tmp/") == []
        assert len(multipart_uploads(rclone, other)) == 1
    # The aborted upload cannot be placed any more, and placing it leaves nothing either.
    with pytest.raises(StorageUnavailable):
        write_in_chunks(upload, payload(5 * MiB))
        storage.place(upload, MTIME)
    upload.close()
    assert_only_blobs(rclone, storage, [])
    assert_only_blobs(rclone, other, [])


def test_an_upload_whose_part_failed_cannot_be_placed(own_rclone):
    storage = make_storage(own_rclone, part_size=5 * MiB, connect_timeout=1, max_attempts=1)
    upload = storage.new_upload()
    write_in_chunks(upload, payload(5 * MiB + 10))  # part 1 sent
    own_rclone.stop()
    with pytest.raises(StorageUnavailable):
        write_in_chunks(upload, payload(5 * MiB))  # part 2 lost
    own_rclone.start()
    # Part 2 never arrived: completing parts 1 and 3 would store the wrong bytes.
    with pytest.raises(StorageUnavailable, match="a part could not be sent"):
        storage.place(upload, MTIME)
    assert upload.closed
    # rclone forgets uploads in progress when it restarts (S3-NOTES.md): nothing listed,
    # and the part it had received stays on its disk as a hidden file no S3 call reaches.
    assert keys(own_rclone, storage) == [] and multipart_uploads(own_rclone, storage) == []
    assert [name for name in files_on_disk(own_rclone, storage) if ".rclone_temp_multipart_" in name]


# -- reading -----------------------------------------------------------------------------------

def test_ranged_open(storage):
    data = payload(6 * MiB + 11)
    sha, _ = upload_bytes(storage, data)
    size = len(data)
    for start, stop in [(0, None), (0, 1), (1, 2), (5 * MiB - 1, 5 * MiB + 1), (size - 1, None),
                        (size - 1, size), (123, size), (4096, 3 * MiB)]:
        assert read_all(storage, sha, start, stop, n=65536) == data[start:stop], (start, stop)
    assert read_all(storage, sha, 10, 10) == b""
    with storage.open(sha, 100, 200) as stream:  # read() without a size: the whole range
        assert stream.read() == data[100:200]
        assert stream.read(10) == b""
    with pytest.raises(ValueError):
        storage.open(sha, size + 10)
    with pytest.raises(ValueError):
        storage.open(sha, 10, 5)
    with pytest.raises(FileNotFoundError):
        storage.open("0" * 64)


def test_a_store_that_ignores_range_is_read_past_the_start():
    """A store answering a ranged GET with the whole object (no Content-Range): the
    reader skips to the start itself and stops at the end of the range."""
    data = bytes(range(256)) * 10
    reader = _BlobReader(io.BytesIO(data), skip=300, length=1000)
    assert reader.read(7) + reader.read() == data[300:1300]


def test_delete_is_idempotent(rclone, storage):
    sha, _ = upload_bytes(storage, b"to be deleted")
    assert storage.delete(sha) is True
    assert storage.delete(sha) is False
    assert not storage.exists(sha) and storage.stat(sha) is None
    with pytest.raises(FileNotFoundError):
        storage.open(sha)
    assert_only_blobs(rclone, storage, [])


def test_no_key_from_outside(storage):
    for bad in ("../../etc/passwd", "A" * 64, "a" * 63, "a" * 65, "g" * 64, None):
        with pytest.raises(ValueError):
            storage.blob_key(bad)
        with pytest.raises(ValueError):
            storage.exists(bad)


def test_iter_blobs_lists_page_by_page(rclone):
    storage = make_storage(rclone, list_page_size=2)
    shas = sorted(upload_bytes(storage, payload(50))[0] for _ in range(5))
    # Not blobs: a stray object below blobs/, one at a wrong address, a temporary one.
    client = rclone.client()
    client.put_object(Bucket=storage.bucket, Key=storage.prefix + "blobs/zz/stray", Body=b"x")
    wrong = "f" * 64
    client.put_object(Bucket=storage.bucket, Key=f"{storage.prefix}blobs/00/00/{wrong}", Body=b"x")
    client.put_object(Bucket=storage.bucket, Key=storage.tmp_key("t"), Body=b"x")

    calls = []
    storage.client.meta.events.register("before-call.s3.ListObjectsV2", lambda **kw: calls.append(kw["params"]))
    listing = storage.iter_blobs()
    first = next(listing)
    assert len(calls) == 1  # lazy: one page read for the first hash
    assert sorted([first, *listing]) == shas
    assert len(calls) == 4  # 7 keys, 2 a page
    assert [call["query_string"]["max-keys"] for call in calls] == [2, 2, 2, 2]


# -- presigned URLs ----------------------------------------------------------------------------

def test_presigned_get_is_fetchable_and_refused_when_tampered(storage):
    data = payload(300_000)
    sha, _ = upload_bytes(storage, data)
    url = storage.presigned_get(sha, 60)
    assert "X-Amz-Signature=" in url and "X-Amz-Algorithm=AWS4-HMAC-SHA256" in url
    answer = requests.get(url, timeout=10)
    assert answer.status_code == 200 and answer.content == data

    ranged = requests.get(url, headers={"Range": "bytes=1000-1999"}, timeout=10)
    # rclone answers 200 with a Content-Range (S3-NOTES.md); AWS answers 206.
    assert ranged.status_code in (200, 206)
    assert ranged.headers["Content-Range"] == f"bytes 1000-1999/{len(data)}"
    assert ranged.content == data[1000:2000]

    signature = url.rsplit("X-Amz-Signature=", 1)[1]
    forged = url.replace(signature, ("0" if signature[0] != "0" else "1") + signature[1:])
    assert requests.get(forged, timeout=10).status_code == 403
    other_sha, _ = upload_bytes(storage, b"someone else's")
    assert requests.get(url.replace(sha, other_sha), timeout=10).status_code == 403
    longer = url.replace("X-Amz-Expires=60", "X-Amz-Expires=600")
    assert requests.get(longer, timeout=10).status_code == 403
    for bad in (0, -1, 8 * 24 * 3600):
        with pytest.raises(ValueError):
            storage.presigned_get(sha, bad)


def test_presigned_get_expires(storage):
    sha, _ = upload_bytes(storage, b"short-lived")
    url = storage.presigned_get(sha, 1)
    assert requests.get(url, timeout=10).status_code == 200
    deadline = time.monotonic() + 10
    answer = requests.get(url, timeout=10)
    while answer.status_code == 200 and time.monotonic() < deadline:
        time.sleep(0.2)
        answer = requests.get(url, timeout=10)
    # AWS answers 403; rclone 400, both with the code AccessDenied (S3-NOTES.md).
    assert answer.status_code in (400, 403)
    assert "<Code>AccessDenied</Code>" in answer.text


# -- configuration -----------------------------------------------------------------------------

def test_from_config_with_explicit_credentials(rclone):
    storage = S3Storage.from_config({**rclone.settings("cfg/one"), "S3_PART_SIZE": str(6 * MiB)})
    assert (storage.bucket, storage.prefix, storage.part_size) == (rclone.bucket, "cfg/one/", 6 * MiB)
    assert rclone.secret_access_key not in repr(storage)
    storage.check()


def test_from_config_takes_credentials_from_the_aws_environment(rclone, monkeypatch):
    settings = rclone.settings()
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", settings.pop("S3_ACCESS_KEY_ID"))
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", settings.pop("S3_SECRET_ACCESS_KEY"))
    monkeypatch.setenv("AWS_DEFAULT_REGION", settings.pop("S3_REGION"))
    storage = S3Storage.from_config(settings)
    storage.check()
    sha, placed = upload_bytes(storage, b"credentials from the environment")
    assert placed and storage.exists(sha)
    storage.delete(sha)


def test_wrong_credentials_are_refused(rclone):
    settings = {**rclone.settings(), "S3_SECRET_ACCESS_KEY": "not-" + rclone.secret_access_key}
    storage = S3Storage.from_config(settings)
    with pytest.raises(StorageUnavailable) as raised:
        storage.check()
    assert rclone.secret_access_key not in str(raised.value)
    with pytest.raises(StorageUnavailable):
        storage.exists("a" * 64)


@pytest.mark.parametrize("settings", [
    {"STORAGE_URL": "s3:///prefix"},
    {"STORAGE_URL": "file:///tmp"},
    {"STORAGE_URL": "s3://Bad_Bucket/x"},
    {"STORAGE_URL": "s3://bucket/a/../b"},
    {"STORAGE_URL": "s3://bucket/a//b"},
    {"STORAGE_URL": "s3://bucket/x", "S3_ACCESS_KEY_ID": "only-the-id"},
    {"STORAGE_URL": "s3://bucket/x", "S3_SECRET_ACCESS_KEY": "only-the-secret"},
    {"STORAGE_URL": "s3://bucket/x", "S3_PART_SIZE": str(4 * MiB)},
    {"STORAGE_URL": "s3://bucket/x", "S3_ADDRESSING_STYLE": "sideways"},
    {"STORAGE_URL": "s3://bucket/x", "S3_READ_TIMEOUT": "0"},
    {"STORAGE_URL": "s3://bucket/x", "S3_MAX_ATTEMPTS": "0"},
])
def test_from_config_refuses_bad_settings(settings):
    with pytest.raises(ValueError):
        S3Storage.from_config(settings)


# -- the store going away ----------------------------------------------------------------------

@pytest.fixture
def own_rclone(tmp_path):
    """A server of this test's own, to stop, freeze and restart."""
    server = start_rclone(tmp_path / "data", log_path=tmp_path / "rclone.log")
    yield server
    if server.running():
        server.resume()
        server.stop()


def every_call(storage: S3Storage, sha: str):
    """Each operation that talks to the store, as a callable."""
    def open_and_read():
        with storage.open(sha) as stream:
            stream.read()

    def place_small():
        with storage.new_upload() as upload:
            upload.write(b"small")
            storage.place(upload, MTIME)

    def write_a_part():
        with storage.new_upload() as upload:
            write_in_chunks(upload, payload(storage.part_size))

    return {
        "check": storage.check, "exists": lambda: storage.exists(sha), "stat": lambda: storage.stat(sha),
        "open": open_and_read, "delete": lambda: storage.delete(sha), "iter_blobs": lambda: list(storage.iter_blobs()),
        "remove_stale_uploads": lambda: storage.remove_stale_uploads(0), "place": place_small,
        "write": write_a_part,
    }


def test_storage_unavailable_when_the_server_is_down_and_back_by_itself(own_rclone):
    storage = make_storage(own_rclone, part_size=5 * MiB, connect_timeout=1, read_timeout=2, max_attempts=2)
    sha, _ = upload_bytes(storage, b"survives a restart", mtime=1_600_000_000)
    own_rclone.stop()
    for name, call in every_call(storage, sha).items():
        started = time.monotonic()
        with pytest.raises(StorageUnavailable):
            call()
        # Connection refused: no timeout to wait for, only the bounded retries' backoff.
        assert time.monotonic() - started < 5, name
    own_rclone.start()
    # The same storage object works again: nothing to reset.
    storage.check()
    assert read_all(storage, sha) == b"survives a restart"
    # rclone keeps user metadata in memory only; the mtime survives as Last-Modified.
    assert storage.stat(sha) == BlobStat(size=18, mtime=1_600_000_000)
    # ... and after a restart it answers ListMultipartUploads with NoSuchUpload.
    assert storage.remove_stale_uploads(0) == 0
    assert list(storage.iter_blobs()) == [sha]


def test_storage_unavailable_when_the_server_hangs_within_the_timeout(own_rclone):
    storage = make_storage(own_rclone, part_size=5 * MiB, connect_timeout=1, read_timeout=1, max_attempts=2)
    sha, _ = upload_bytes(storage, b"frozen")
    own_rclone.pause()
    try:
        for name in ("check", "exists", "open", "place", "write"):
            call = every_call(storage, sha)[name]
            started = time.monotonic()
            with pytest.raises(StorageUnavailable):
                call()
            # Two attempts of at most connect + read timeout each, plus the retry's backoff
            # (at most 1 s in botocore's standard mode for the first retry) and the abort.
            assert time.monotonic() - started < 2 * (1 + 1) + 1 + 4, name
    finally:
        own_rclone.resume()
    assert storage.exists(sha)
    # The requests the frozen server had queued run now that it goes on (the client
    # gave up on them): multipart uploads nobody will complete. The sweep removes them.
    deadline = time.monotonic() + 10
    while True:
        storage.remove_stale_uploads(0)
        try:
            assert_only_blobs(own_rclone, storage, [sha])
            break
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


@pytest.mark.parametrize("size", [5 * MiB, 5 * MiB + 1, 10 * MiB + 1])
def test_parts_meet_the_aws_minimum_on_moto(moto, size):
    """rclone takes parts of any size; moto refuses a non-last part under 5 MiB
    (EntityTooSmall) as AWS does, so the part boundaries are checked there too."""
    storage = make_storage(moto, part_size=5 * MiB)
    data = payload(size)
    sha, placed = upload_bytes(storage, data)
    assert placed and read_all(storage, sha) == data
    assert_only_blobs(moto, storage, [sha])


# -- copies beyond CopyObject's limit ------------------------------------------------------------

def test_multipart_copy_beyond_the_single_copy_limit_on_moto(moto):
    """UploadPartCopy, exercised on moto with the 5 GiB limit lowered to 6 MiB: rclone
    cannot do it (next test)."""
    storage = make_storage(moto, part_size=5 * MiB, max_single_copy=6 * MiB, copy_part_size=5 * MiB)
    data = payload(12 * MiB + 3)
    calls = []
    storage.slow_client.meta.events.register("before-call.s3.UploadPartCopy", lambda **kw: calls.append(1))
    sha, placed = upload_bytes(storage, data)
    assert placed and len(calls) == 3  # 5 + 5 + 2 MiB
    assert storage.stat(sha) == BlobStat(size=len(data), mtime=MTIME)
    assert read_all(storage, sha) == data
    assert read_all(storage, sha, 5 * MiB - 2, 5 * MiB + 2) == data[5 * MiB - 2: 5 * MiB + 2]
    assert_only_blobs(moto, storage, [sha])


def test_rclone_cannot_copy_in_parts_and_nothing_is_placed(rclone):
    storage = make_storage(rclone, part_size=5 * MiB, max_single_copy=6 * MiB, copy_part_size=5 * MiB)
    with storage.new_upload() as upload:
        write_in_chunks(upload, payload(12 * MiB))
        with pytest.raises(StorageUnavailable, match="UploadPartCopy"):
            storage.place(upload, MTIME)
    assert_only_blobs(rclone, storage, [])


# -- memory ------------------------------------------------------------------------------------

MEMORY_SCRIPT = textwrap.dedent("""
    import json, os, re, sys
    import psutil
    from vimeo_api.storage_s3 import S3Storage, MiB

    def peak_rss():
        with open("/proc/self/status") as status:
            return int(re.search(r"VmHWM:\\s+(\\d+) kB", status.read()).group(1)) * 1024

    storage = S3Storage.from_config(json.loads(sys.argv[1]))
    total = int(sys.argv[2])
    # Warm up: botocore loads its model and opens its connection on the first calls.
    with storage.new_upload() as warm:
        warm.write(os.urandom(storage.part_size + 1))
    del warm
    # The peak so far is the warm-up's own: count from here (Linux resets the peak RSS
    # on writing 5 to clear_refs).
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")
    process = psutil.Process()
    baseline = process.memory_info().rss
    samples = []
    block = os.urandom(MiB)
    view = memoryview(block)
    with storage.new_upload() as upload:
        for n in range(total // MiB):
            for offset in range(0, MiB, 64 * 1024):
                upload.write(view[offset:offset + 64 * 1024])
            if n % 32 == 31:
                samples.append(round((process.memory_info().rss - baseline) / MiB, 1))
        placed = storage.place(upload, 1700000000)
    print(json.dumps({"baseline": baseline, "peak": peak_rss(), "samples_mib": samples,
                      "sha256": upload.sha256, "size": upload.size, "placed": placed}))
""")


def test_memory_stays_flat_for_a_256_mib_upload(rclone):
    storage = make_storage(rclone)
    settings = {**rclone.settings(storage.prefix.rstrip("/"))}
    total = 256 * MiB
    proc = subprocess.run(
        [sys.executable, "-c", MEMORY_SCRIPT, json.dumps(settings), str(total)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["placed"] and result["size"] == total
    assert storage.stat(result["sha256"]).size == total
    growth = result["peak"] - result["baseline"]
    print(f"256 MiB upload: peak RSS {result['peak'] / MiB:.1f} MiB, {growth / MiB:.1f} MiB above the warmed-up baseline")
    assert growth < 64 * MiB, f"peak RSS grew by {growth / MiB:.1f} MiB; every 32 MiB: {result['samples_mib']}"
    assert storage.delete(result["sha256"])
    assert_only_blobs(rclone, storage, [])
