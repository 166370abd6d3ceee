"""``manage.py storage migrate`` (migration.py, issue 14): a deployment on local disk,
with files, published versions and content shared by several files, moves into the
bucket; every file and version still downloads byte-identical afterwards, also from an
app that has no local copy at all. Reads never fail during the switch (the local
fallback), a stopped run resumes, a second run copies only what is new, and a local blob
whose bytes are not what its name says is reported, never copied.

The commands run as an operator runs them (``manage.py`` in a subprocess); the store is
the run's real ``rclone serve s3``.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import subprocess
import sys

import pytest

from support import API, ROOT
from support.services import clean_environment
from support.stacks import Bucket
from support.uploads import upload

MiB = 1024 * 1024


@pytest.fixture
def bucket(s3_server):
    part = Bucket(s3_server, f"migrate-{os.getpid()}-{secrets.token_hex(4)}")
    yield part
    part.empty()


@pytest.fixture
def deployment(make_app, tmp_path):
    """A deployment on local disk with what a real one holds; returns the app and every
    URL with the bytes it must answer."""
    app = make_app(backend="sqlite")
    client = app.test_client()
    expected = {}
    a = upload(client, b"shared by two files", "a.txt", max_downloads=0)
    b = upload(client, b"shared by two files", "b.txt", max_downloads=0)
    assert a["sha256"] == b["sha256"]
    expected[API + "/file/" + a["filehash"]] = expected[API + "/file/" + b["filehash"]] = b"shared by two files"
    big = os.urandom(9 * MiB + 5)
    c = upload(client, big, "big.bin", max_downloads=0, password="pw")
    expected[API + "/file/" + c["filehash"] + "?password=pw"] = big
    d = upload(client, b"the first version", "d.txt", max_downloads=0)
    version = client.post(API + f"/file/{d['filehash']}/versions", headers={"X-Owner-Token": d["owner_token"]})
    assert version.status_code == 201
    replaced = client.put(API + "/file/" + d["filehash"], data=b"the content now",
                          headers={"X-Owner-Token": d["owner_token"]})
    assert replaced.status_code == 200
    expected[API + "/v/" + version.get_json()["version_id"]] = b"the first version"
    expected[API + "/file/" + d["filehash"]] = b"the content now"
    return app, expected


def manage(app, bucket, *args, storage_dir=None, **settings):
    """``python manage.py ...`` on the deployment's database, pointed at the bucket."""
    env = clean_environment(
        VIMEO_DATABASE_URL=app.config["DATABASE_URL"],
        VIMEO_STORAGE_DIR=storage_dir or app.config["STORAGE_DIR"],
        **{f"VIMEO_{k}": v for k, v in {**bucket.server.settings(bucket.prefix), **settings}.items()},
    )
    return subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)


def downloads_identical(app, expected: dict) -> None:
    client = app.test_client()
    for url, content in expected.items():
        answer = client.get(url)
        assert (answer.status_code, answer.get_data() == content) == (200, True), url


def local_blobs(app) -> list[str]:
    root = os.path.join(app.config["STORAGE_DIR"], "blobs")
    return sorted(name for _dirs, _sub, names in os.walk(root) for name in names)


def test_migrate_moves_a_local_deployment_into_the_bucket(deployment, bucket, make_app, s3_server, tmp_path):
    app, expected = deployment
    shas = local_blobs(app)
    assert len(shas) == 4  # shared content once, the big file, the version's and the current content

    # During the switch the app reads what the bucket lacks from local disk.
    during = make_app(backend="sqlite", STORAGE_LOCAL_FALLBACK=True, **s3_server.settings(bucket.prefix))
    downloads_identical(during, expected)

    first = manage(app, bucket, "storage", "migrate", "--json")
    assert first.returncode == 0, first.stderr
    report = json.loads(first.stdout)
    sizes = sum(os.path.getsize(os.path.join(app.config["STORAGE_DIR"], "blobs", s[:2], s[2:4], s)) for s in shas)
    assert report == {"blobs": 4, "copied": 4, "already": 0, "bytes_copied": sizes, "missing": [], "corrupt": []}
    assert bucket.keys() == [f"blobs/{s[:2]}/{s[2:4]}/{s}" for s in shas]
    assert bucket.multipart_uploads() == []
    for sha in shas:
        assert hashlib.sha256(bucket.get(sha)).hexdigest() == sha

    # A second run copies nothing; one stopped half-way resumes with what is missing.
    again = json.loads(manage(app, bucket, "storage", "migrate", "--json").stdout)
    assert (again["copied"], again["already"]) == (0, 4)
    bucket.client.delete_object(Bucket=bucket.name, Key=bucket.blob_key(shas[0]))
    resumed = manage(app, bucket, "storage", "migrate")
    assert resumed.returncode == 0, resumed.stderr
    assert "copying 4 blob(s)" in resumed.stderr  # the progress bar, on stderr
    assert "4 blob(s): 1 copied" in resumed.stderr

    # After the switch: an app with no local copy at all serves every file and version.
    after = make_app(backend="sqlite", **s3_server.settings(bucket.prefix),
                     STORAGE_DIR=str(tmp_path / "empty-scratch"))
    downloads_identical(after, expected)
    verify = after.test_cli_runner().invoke(args=["files", "verify", "--json"])
    assert verify.exit_code == 0 and json.loads(verify.stdout)["problems"] == []


def test_a_corrupt_or_missing_local_blob_is_reported_never_copied(deployment, bucket):
    app, _expected = deployment
    shas = local_blobs(app)
    corrupt, missing = shas[0], shas[1]
    root = os.path.join(app.config["STORAGE_DIR"], "blobs")
    with open(os.path.join(root, corrupt[:2], corrupt[2:4], corrupt), "r+b") as blob:
        blob.write(b"X")
    os.unlink(os.path.join(root, missing[:2], missing[2:4], missing))

    result = manage(app, bucket, "storage", "migrate", "--json")
    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert (report["corrupt"], report["missing"], report["copied"]) == ([corrupt], [missing], 2)
    assert "2 blob(s) could not be copied" in result.stderr
    assert bucket.blob_key(corrupt)[len(bucket.prefix):] not in bucket.keys()
    assert bucket.multipart_uploads() == []


def test_migrate_needs_a_bucket(deployment, bucket):
    app, _expected = deployment
    result = manage(app, bucket, "storage", "migrate", STORAGE_URL="")
    assert result.returncode == 1
    assert "names no bucket" in result.stderr
