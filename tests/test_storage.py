"""storage.py: upload files that hash as they are written, blobs placed once per hash."""

from __future__ import annotations

import hashlib
import io
import os
import time

import pytest

from vimeo_api.storage import BlobStat, LocalStorage, UploadFile

SHA_EMPTY = hashlib.sha256(b"").hexdigest()


@pytest.fixture
def storage(tmp_path):
    return LocalStorage(str(tmp_path / "storage"))


def written(storage: LocalStorage, *chunks: bytes) -> UploadFile:
    upload = storage.new_upload()
    for chunk in chunks:
        upload.write(chunk)
    return upload


def listing(directory) -> list[str]:
    return sorted(
        os.path.relpath(os.path.join(d, n), directory) for d, _dirs, names in os.walk(directory) for n in names
    )


# -- UploadFile ------------------------------------------------------------------------

def test_upload_hashes_and_counts_what_is_written(storage):
    upload = written(storage, b"hello ", b"", b"world")
    assert upload.sha256 == hashlib.sha256(b"hello world").hexdigest()
    assert upload.size == 11
    upload.flush()
    with open(upload.path, "rb") as f:
        assert f.read() == b"hello world"
    upload.close()


def test_empty_upload_hashes_as_empty(storage):
    upload = storage.new_upload()
    assert (upload.sha256, upload.size) == (SHA_EMPTY, 0)
    upload.close()


def test_upload_lives_in_the_storage_tmp_dir_with_a_random_name(storage):
    first, second = storage.new_upload(), storage.new_upload()
    assert os.path.dirname(first.path) == storage.tmp_dir
    assert first.path != second.path
    assert first.path.endswith(".part")
    assert oct(os.stat(first.path).st_mode & 0o777) == oct(0o600)
    first.close()
    second.close()


def test_closing_an_unplaced_upload_removes_it(storage):
    upload = written(storage, b"abandoned")
    assert os.path.exists(upload.path)
    upload.close()
    assert not os.path.exists(upload.path)
    upload.close()  # twice is harmless
    assert listing(storage.tmp_dir) == []


def test_context_manager_cleans_up_on_error(storage):
    with pytest.raises(RuntimeError):
        with storage.new_upload() as upload:
            upload.write(b"half")
            raise RuntimeError("client went away")
    assert not os.path.exists(upload.path)


def test_copy_from_streams_in_chunks(storage):
    content = os.urandom(3 * 1024 * 1024 + 17)  # more than one CHUNK

    class Stream(io.BytesIO):
        sizes = []

        def read(self, n=-1):
            self.sizes.append(n)
            return super().read(n)

    stream = Stream(content)
    upload = storage.new_upload()
    upload.copy_from(stream)
    assert upload.sha256 == hashlib.sha256(content).hexdigest()
    assert upload.size == len(content)
    assert all(0 < n <= 1024 * 1024 for n in Stream.sizes)  # never read() of everything
    upload.close()


def test_adopt_hashes_a_file_written_elsewhere(storage):
    storage.ensure_dirs()
    path = os.path.join(storage.tmp_dir, "nginx-body")
    with open(path, "wb") as f:
        f.write(b"written by nginx")
    upload = UploadFile.adopt(path)
    assert upload.sha256 == hashlib.sha256(b"written by nginx").hexdigest()
    assert upload.size == 16
    upload.close()
    assert not os.path.exists(path)


# -- LocalStorage ----------------------------------------------------------------------

def test_place_renames_into_the_hash_path_and_sets_mtime(storage):
    upload = written(storage, b"content")
    sha = hashlib.sha256(b"content").hexdigest()
    mtime = 1_700_000_000.0
    assert storage.place(upload, mtime=mtime) is True
    target = storage.blob_path(sha)
    assert target == os.path.join(storage.root, "blobs", sha[:2], sha[2:4], sha)
    with open(target, "rb") as f:
        assert f.read() == b"content"
    assert os.stat(target).st_mtime == mtime
    assert upload.placed is True
    assert not os.path.exists(upload.path)
    assert listing(storage.tmp_dir) == []
    assert storage.exists(sha)


def test_place_same_content_twice_keeps_one_copy(storage):
    first = written(storage, b"same")
    second = written(storage, b"same")
    assert storage.place(first, mtime=1_000_000_000) is True
    assert storage.place(second, mtime=2_000_000_000) is False
    sha = hashlib.sha256(b"same").hexdigest()
    assert listing(storage.blob_dir) == [os.path.join(sha[:2], sha[2:4], sha)]
    # The first copy (and its mtime, the earliest Last-Modified) stays.
    assert os.stat(storage.blob_path(sha)).st_mtime == 1_000_000_000
    assert second.placed is False
    assert not os.path.exists(second.path)
    assert listing(storage.tmp_dir) == []


def test_blob_path_only_from_a_sha256(storage):
    for bad in ("../../etc/passwd", "A" * 64, "0" * 63, "", "g" * 64):
        with pytest.raises(ValueError):
            storage.blob_path(bad)


def test_accel_path_names_the_blob_in_nginx_internal_locations(storage):
    sha = "ab" * 32
    assert storage.accel_path(sha) == f"/_vimeo_blobs/ab/ab/{sha}"
    assert storage.accel_path(sha, whole=True) == f"/_vimeo_whole/ab/ab/{sha}"
    assert storage.nginx_file(sha) == os.path.join(storage.root, "blobs", "ab", "ab", sha)


def test_open_a_range_and_stat(storage):
    upload = written(storage, b"0123456789")
    sha = upload.sha256
    storage.place(upload, mtime=1_000_000_000)
    with storage.open(sha, 3, 7) as blob:
        assert blob.read(4) == b"3456"
    assert storage.stat(sha) == BlobStat(10, 1_000_000_000)
    assert storage.stat("cd" * 32) is None


def test_open_and_delete(storage):
    upload = written(storage, b"to delete")
    storage.place(upload, mtime=time.time())
    sha = hashlib.sha256(b"to delete").hexdigest()
    with storage.open(sha) as f:
        assert f.read() == b"to delete"
    assert storage.delete(sha) is True
    assert storage.delete(sha) is False  # idempotent
    assert not storage.exists(sha)
    with pytest.raises(FileNotFoundError):
        storage.open(sha)


def test_iter_blobs_lists_stored_hashes_only(storage):
    shas = set()
    for content in (b"one", b"two"):
        storage.place(written(storage, content), mtime=time.time())
        shas.add(hashlib.sha256(content).hexdigest())
    with open(os.path.join(storage.blob_dir, "stray.txt"), "w") as f:
        f.write("not a blob")
    assert set(storage.iter_blobs()) == shas


def test_remove_stale_uploads_spares_young_ones(storage):
    old, young = written(storage, b"old"), written(storage, b"young")
    an_hour_ago = time.time() - 3600
    os.utime(old.path, (an_hour_ago, an_hour_ago))
    assert storage.remove_stale_uploads(older_than=600) == 1
    assert not os.path.exists(old.path)
    assert os.path.exists(young.path)
    young.close()


def test_remove_stale_uploads_without_a_tmp_dir(tmp_path):
    assert LocalStorage(str(tmp_path / "never-used")).remove_stale_uploads(0) == 0


def test_check_leaves_nothing(storage):
    storage.check()
    assert listing(storage.root) == []
