"""Real tus clients, real servers: tuspy (Python) and tus-js-client (Node 20), each
uploading 200 MiB in 8 MiB chunks through real gunicorn and through the stack (nginx in
front), on local disk and on S3 storage (a real ``rclone serve s3``: gunicorn with
``STORAGE_URL`` on PostgreSQL, and the S3 stack), killed twice mid-upload and resumed;
and ``kill -9`` of the gunicorn worker in the middle of a chunk. The downloaded file must
be byte-identical, with the SHA-256 ETag, and the upload's options must hold. On S3 an
upload that is cut off and then terminated or expired leaves no multipart upload and no
tail in the bucket.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import psutil
import pytest
import requests

from support import PUBLIC_URL
from support.database import empty_database
from support.stacks import Bucket, start_stack
from vimeo_api import sweep
from vimeo_api.extensions import db
from vimeo_api.models import utcnow

HERE = Path(__file__).resolve().parent
JS_DIR = HERE / "tus_js"
MiB = 1024 * 1024
SIZE = 200 * MiB
CHUNK = 8 * MiB
PASSWORD = "tus-s3cret"
V = {"Tus-Resumable": "1.0.0"}


# -- the deployments -----------------------------------------------------------------------

@dataclass
class Deployment:
    """Where a client uploads to, and where a test looks behind it."""

    name: str
    base: str  # what clients reach: gunicorn itself, or nginx
    storage_dir: str
    db_url: str
    public_url: str  # what the API writes into the URLs it hands out
    log: object  # () -> the app's log text
    bucket: Bucket | None = None  # the bytes are in S3
    settings: dict | None = None  # the app's VIMEO_* settings (to build an app on the same storage)

    @property
    def endpoint(self) -> str:
        return self.base + "/vimeo/api/v1.0/tus/"

    def reachable(self, url: str) -> str:
        return self.base + url[len(self.public_url):] if url.startswith(self.public_url) else url

    def sql(self, statement: str, **params):
        from sqlalchemy import create_engine, text

        engine = create_engine(self.db_url)
        try:
            with engine.begin() as conn:
                result = conn.execute(text(statement), params)
                return result.fetchall() if result.returns_rows else result.rowcount
        finally:
            engine.dispose()


def _gunicorn(gunicorn_server, **env) -> Deployment:
    server = gunicorn_server(workers=2, threads=4, **env)
    return Deployment("gunicorn", server.base, server.env["VIMEO_STORAGE_DIR"], server.env["VIMEO_DATABASE_URL"],
                      server.base, server.log, settings=server.env)


def _gunicorn_s3(request, gunicorn_server, **env) -> Deployment:
    """gunicorn alone with ``STORAGE_URL`` on a prefix of the run's rclone bucket, on
    PostgreSQL (so that chunks are locked by advisory locks, as on several nodes)."""
    s3_server, pg_url = request.getfixturevalue("s3_server"), request.getfixturevalue("pg_url")
    bucket = Bucket(s3_server, f"tus-clients-{os.getpid()}-{request.node.name[-40:]}".replace("[", "-")
                    .replace("]", "").replace("_", "-"))
    request.addfinalizer(bucket.empty)
    empty_database(pg_url)
    server = gunicorn_server(workers=2, threads=4, VIMEO_DATABASE_URL=pg_url, **s3_server.env(bucket.prefix), **env)
    return Deployment("gunicorn-s3", server.base, server.env["VIMEO_STORAGE_DIR"], pg_url, server.base, server.log,
                      bucket=bucket, settings=server.env)


def _stack(stack, name: str = "stack") -> Deployment:
    return Deployment(name, stack.base, stack.storage_dir, stack.db_url, PUBLIC_URL, stack.app_log,
                      bucket=stack.bucket, settings=stack.env)


@pytest.fixture(params=["gunicorn", "stack", "gunicorn-s3", "stack-s3"])
def deployment(request, gunicorn_server):
    if request.param == "gunicorn":
        yield _gunicorn(gunicorn_server)
        return
    if request.param == "gunicorn-s3":
        yield _gunicorn_s3(request, gunicorn_server)
        return
    stack = request.getfixturevalue("nginx_stack" if request.param == "stack" else "nginx_s3_stack")
    stack.reset()
    yield _stack(stack, request.param)
    stack.reset()


@pytest.fixture(scope="module")
def big_file(tmp_path_factory) -> tuple[Path, str]:
    """200 MiB of random bytes and their SHA-256 (made here, never committed)."""
    path = tmp_path_factory.mktemp("tus") / "video.bin"
    digest = hashlib.sha256()
    with open(path, "wb") as fh:
        for _ in range(SIZE // MiB):
            block = os.urandom(MiB)
            digest.update(block)
            fh.write(block)
    return path, digest.hexdigest()


# -- running a client ----------------------------------------------------------------------

def _node() -> str:
    node = shutil.which("node")
    assert node, "Node.js is required for the tus-js-client tests (Node 20)"
    version = subprocess.run([node, "--version"], capture_output=True, text=True, check=True).stdout.strip()
    assert version.startswith("v20."), f"the tus-js-client tests run on Node 20, found {version}"
    if not (JS_DIR / "node_modules" / "tus-js-client").is_dir():
        npm = shutil.which("npm")
        assert npm, "npm is required to install tus-js-client (npm ci in tests/tus_js)"
        subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=JS_DIR, check=True, capture_output=True, timeout=300)
    return node


def client_command(kind: str, cfg: dict) -> list[str]:
    if kind == "tuspy":
        return [sys.executable, str(HERE / "tus_py" / "upload.py"), json.dumps(cfg)]
    return [_node(), str(JS_DIR / "upload.mjs"), json.dumps(cfg)]


class ClientRun:
    """A client process and the events it prints, one JSON object per complete line."""

    def __init__(self, kind: str, cfg: dict):
        self.proc = subprocess.Popen(client_command(kind, cfg), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.events: queue.Queue = queue.Queue()
        self.seen: list[dict] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:  # whole lines only: the pipe yields them complete
            if line.endswith(b"\n"):
                self.events.put(json.loads(line))
        self.events.put(None)

    def next_event(self, timeout: float = 120) -> dict | None:
        event = self.events.get(timeout=timeout)
        if event is not None:
            self.seen.append(event)
        return event

    def until(self, predicate, timeout: float = 120) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            event = self.next_event(max(0.1, deadline - time.monotonic()))
            if event is None:
                raise AssertionError(f"the client ended first: {self.seen[-3:]} {self.proc.stderr.read()[-2000:]!r}")
            if predicate(event):
                return event

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)
        self.proc.stdout.close()
        self.proc.stderr.close()


def _in_flight(deployment: Deployment, upload_url: str, offset: int, timeout: float = 5.0) -> None:
    """Until the next chunk's bytes are on their way (in the upload's data file, in a
    body file nginx is writing, in the app's spool of a chunk with a checksum, or, on S3,
    in the part rclone is receiving), so that the kill cuts a chunk rather than falls
    between two; gives up quietly after ``timeout`` (the client is then killed between
    chunks)."""
    data = Path(deployment.storage_dir, "resumable", upload_url.rsplit("/", 1)[1])
    directories = [Path(deployment.storage_dir, "nginx-body"), Path(deployment.storage_dir, "tus-spool")]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if data.stat().st_size > offset:
                return
        except FileNotFoundError:
            pass
        if any(_any_body_file(directory) for directory in directories) or _part_arriving(deployment, offset):
            return
        time.sleep(0.001)


def _part_arriving(deployment: Deployment, offset: int) -> bool:
    """Whether rclone is writing a part beyond the acknowledged ones (it streams a
    multipart upload's parts into one hidden file, deploy/S3-NOTES.md)."""
    if deployment.bucket is None:
        return False
    area = Path(deployment.bucket.server.data_dir, deployment.bucket.name, deployment.bucket.prefix, "tus")
    try:
        entries = [e for e in os.scandir(area) if e.name.startswith(".rclone_temp_multipart_")]
    except FileNotFoundError:
        return False
    for entry in entries:
        try:
            if entry.stat().st_size > offset - offset % CHUNK:
                return True
        except FileNotFoundError:
            continue
    return False


def _any_body_file(directory: Path) -> bool:
    """Whether nginx is writing a request body there (files come and go meanwhile)."""
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return False
    for entry in entries:
        try:
            if entry.stat().st_size > 0:
                return True
        except FileNotFoundError:
            continue
    return False


def interrupted_upload(kind: str, deployment: Deployment, path: Path, metadata: dict, **extra) -> tuple[str, dict]:
    """Upload with the client killed after about 30% and 65%, each time resumed from the
    URL it had; returns the upload URL and the last run's "done" event."""
    cfg = {"endpoint": deployment.endpoint, "file": str(path), "chunkSize": CHUNK, "metadata": metadata, **extra}
    upload_url = None
    acknowledged = 0
    for stop_at in (SIZE * 30 // 100, SIZE * 65 // 100):
        run = ClientRun(kind, {**cfg, "uploadUrl": upload_url})
        url = run.until(lambda e: e["event"] == "url")["url"]
        assert upload_url in (None, url)
        upload_url = url
        event = run.until(lambda e: e["event"] == "offset" and e["offset"] >= stop_at)
        assert event["offset"] >= acknowledged
        acknowledged = event["offset"]
        _in_flight(deployment, upload_url, acknowledged)
        run.kill()
        # What the server acknowledged is what the next run resumes from.
        head = requests.head(deployment.reachable(_absolute(deployment, upload_url)), headers=V, timeout=10)
        assert head.status_code == 200
        offset = int(head.headers["Upload-Offset"])
        assert acknowledged <= offset < SIZE
    run = ClientRun(kind, {**cfg, "uploadUrl": upload_url})
    done = run.until(lambda e: e["event"] == "done", timeout=300)
    assert run.proc.wait(timeout=30) == 0
    offsets = [e["offset"] for e in run.seen if e["event"] == "offset"]
    assert offsets and offsets[0] > offset, "the last run resumed rather than started again"
    return upload_url, done


def _absolute(deployment: Deployment, url: str) -> str:
    return url if url.startswith("http") else deployment.base + url


def check_file(deployment: Deployment, upload_url: str, done: dict, digest: str, path: Path) -> None:
    """Byte-identical, with the SHA-256 ETag; password, download limit and expiry hold."""
    file_url = done["fileUrl"]
    assert file_url and done["ownerToken"]
    head = requests.head(_absolute(deployment, upload_url), headers=V, timeout=10)
    assert head.headers["Upload-Offset"] == head.headers["Upload-Length"] == str(SIZE)
    assert head.headers["X-File-Url"] == file_url and head.headers["X-Owner-Token"] == done["ownerToken"]
    url = deployment.reachable(file_url)
    assert requests.get(url, timeout=30).status_code == 401
    got = hashlib.sha256()
    size = 0
    with requests.get(url, headers={"X-Password": PASSWORD}, stream=True, timeout=60) as response:
        assert response.status_code == 200
        assert response.headers["ETag"] == f'"{digest}"'
        for block in response.iter_content(MiB):
            got.update(block)
            size += len(block)
    assert (size, got.hexdigest()) == (SIZE, digest)
    # One download allowed: the next is 410.
    assert requests.get(url, headers={"X-Password": PASSWORD}, timeout=30).status_code == 410
    (row,) = deployment.sql("select filename, expires_at, created_at, max_downloads from files where filehash = :h",
                            h=file_url.rsplit("/", 1)[1])
    expires_at, created_at = (_when(v) for v in (row.expires_at, row.created_at))
    assert (row.filename, row.max_downloads, (expires_at - created_at).total_seconds()) == (path.name, 1, 7200)
    assert not Path(deployment.storage_dir, "resumable", upload_url.rsplit("/", 1)[1]).exists()
    if deployment.bucket is not None:
        # Nothing of the upload is left: no multipart upload, no tail, no temporary object.
        assert deployment.bucket.stored("tus") == []
        assert deployment.bucket.stored("tmp") == []
        assert deployment.bucket.keys() == [f"blobs/{digest[:2]}/{digest[2:4]}/{digest}"]


def _when(value):
    from datetime import datetime

    return datetime.fromisoformat(value) if isinstance(value, str) else value


def _metadata(path: Path) -> dict:
    return {"filename": path.name, "filetype": "video/mp4", "password": PASSWORD, "max_downloads": "1",
            "expires_in": "2h"}


# -- the acceptance runs ---------------------------------------------------------------------

def test_tuspy_uploads_200_mib_killed_twice_and_resumed(deployment, big_file):
    path, digest = big_file
    upload_url, done = interrupted_upload("tuspy", deployment, path, _metadata(path), checksum=True)
    check_file(deployment, upload_url, done, digest, path)


def test_tus_js_client_uploads_200_mib_killed_twice_and_resumed(deployment, big_file):
    path, digest = big_file
    upload_url, done = interrupted_upload("tus-js-client", deployment, path, _metadata(path), withUpload=True)
    check_file(deployment, upload_url, done, digest, path)


# -- kill -9 of the worker mid-chunk, and a rival chunk ---------------------------------------

PAUSE_ENV = {"VIMEO_TEST_RESUMABLE_PAUSE": "60"}


@pytest.fixture(params=["gunicorn", "stack", "gunicorn-s3", "stack-s3"])
def pausing_deployment(request, gunicorn_server, tmp_path, pg_url):
    """A deployment whose chunks can be held mid-way (TEST_RESUMABLE_PAUSE)."""
    if request.param == "gunicorn":
        yield _gunicorn(gunicorn_server, **PAUSE_ENV)
        return
    if request.param == "gunicorn-s3":
        yield _gunicorn_s3(request, gunicorn_server, **PAUSE_ENV)
        return
    s3 = request.getfixturevalue("s3_server") if request.param == "stack-s3" else None
    stack = start_stack(tmp_path / "stack", pg_url, s3=s3, **PAUSE_ENV)
    try:
        stack.reset()
        yield _stack(stack, request.param)
    finally:
        stack.stop()
        stack.reset()


def _paused_pids(deployment: Deployment, already: int) -> list[int]:
    """Pids of the workers that logged a held chunk, from complete log lines only."""
    text = deployment.log()
    lines = text.split("\n")[:-1]
    return [int(line.split("pid ", 1)[1].split()[0]) for line in lines[already:]
            if "TEST_RESUMABLE_PAUSE: pid " in line]


def _wait_for_pause(deployment: Deployment, already: int, timeout: float = 30) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = _paused_pids(deployment, already)
        if pids:
            return pids[0]
        time.sleep(0.02)
    raise AssertionError("no chunk paused:\n" + deployment.log()[-3000:])


def _line_count(deployment: Deployment) -> int:
    return len(deployment.log().split("\n")) - 1


def _create(deployment: Deployment, length: int, metadata: str = "") -> str:
    headers = {**V, "Upload-Length": str(length)}
    if metadata:
        headers["Upload-Metadata"] = metadata
    answer = requests.post(deployment.endpoint, headers=headers, timeout=10)
    assert answer.status_code == 201, answer.text
    return deployment.base + answer.headers["Location"]


def _patch(url: str, offset: int, data: bytes, **headers):
    return requests.patch(url, headers={**V, "Content-Type": "application/offset+octet-stream",
                                        "Upload-Offset": str(offset), **headers}, data=data, timeout=120)


def _gone(proc: psutil.Process) -> bool:
    """Whether a killed process is dead: exited, reaped (even between two looks at it), or
    a zombie its parent has not reaped yet."""
    try:
        return not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_kill_9_of_the_worker_mid_chunk_then_resume_is_byte_identical(pausing_deployment, tmp_path):
    deployment = pausing_deployment
    size, chunk = 48 * MiB, 16 * MiB
    path = tmp_path / "clip.bin"
    path.write_bytes(os.urandom(size))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    data = path.read_bytes()
    url = _create(deployment, size)
    assert _patch(url, 0, data[:chunk]).status_code == 204

    marker = Path(deployment.storage_dir, "TEST_RESUMABLE_PAUSE")
    marker.parent.mkdir(parents=True, exist_ok=True)  # on S3 only the node's scratch space
    marker.touch()
    lines = _line_count(deployment)
    failures: list = []
    sender = threading.Thread(target=lambda: failures.append(_send_quietly(url, chunk, data[chunk:2 * chunk])))
    sender.start()
    pid = _wait_for_pause(deployment, lines)
    if deployment.bucket is None:
        assert Path(deployment.storage_dir, "resumable", url.rsplit("/", 1)[1]).stat().st_size > chunk
    else:
        # The first chunk is two whole parts of the multipart upload; of the held chunk
        # nothing is acknowledged (its first MiB waits in the worker's part buffer).
        assert deployment.bucket.stored("tus") == [url.rsplit("/", 1)[1]]
    victim = psutil.Process(pid)  # is_running() below holds even if the pid is reused
    victim.send_signal(signal.SIGKILL)
    marker.unlink()
    sender.join(timeout=60)
    assert failures and failures[0] != 204, "the killed worker's chunk was acknowledged"
    deadline = time.monotonic() + 10
    while not _gone(victim) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert _gone(victim)

    # Never ahead of what is durable: the cut chunk was not acknowledged.
    head = requests.head(url, headers=V, timeout=10)
    assert head.status_code == 200 and head.headers["Upload-Offset"] == str(chunk)
    # A real client resumes from there (gunicorn has started a new worker meanwhile).
    run = ClientRun("tuspy", {"endpoint": deployment.endpoint, "file": str(path), "chunkSize": chunk,
                              "metadata": {"filename": "clip.bin"}, "uploadUrl": url})
    done = run.until(lambda e: e["event"] == "done", timeout=120)
    assert run.proc.wait(timeout=30) == 0
    assert run.seen[0]["offset"] == chunk
    with requests.get(deployment.reachable(done["fileUrl"]), timeout=60) as response:
        assert response.status_code == 200
        assert response.headers["ETag"] == f'"{digest}"'
        assert response.content == data
    if deployment.bucket is not None:
        assert deployment.bucket.stored("tus") == []


def _send_quietly(url: str, offset: int, data: bytes):
    try:
        return _patch(url, offset, data).status_code
    except requests.RequestException as exc:
        return exc


def test_two_chunks_at_once_one_proceeds_the_other_is_423_never_interleaved(pausing_deployment):
    deployment = pausing_deployment
    first, rival = os.urandom(4 * MiB), os.urandom(4 * MiB)
    url = _create(deployment, 8 * MiB)
    marker = Path(deployment.storage_dir, "TEST_RESUMABLE_PAUSE")
    marker.parent.mkdir(parents=True, exist_ok=True)  # on S3 only the node's scratch space
    marker.touch()
    lines = _line_count(deployment)
    results: list = []
    sender = threading.Thread(target=lambda: results.append(_patch(url, 0, first)))
    sender.start()
    _wait_for_pause(deployment, lines)
    # The upload is held by the first chunk: the rival is refused at once, whole.
    answer = _patch(url, 0, rival)
    assert answer.status_code == 423, answer.text
    assert answer.json()["error"] == "Locked" and answer.headers["Tus-Resumable"] == "1.0.0"
    marker.unlink()
    sender.join(timeout=60)
    assert results[0].status_code == 204 and results[0].headers["Upload-Offset"] == str(4 * MiB)
    assert _patch(url, 4 * MiB, rival).status_code == 204
    data_url = requests.head(url, headers=V, timeout=10).headers["X-File-Url"]
    body = requests.get(deployment.reachable(data_url), timeout=30).content
    assert body == first + rival


# -- on S3: what a cut-off upload leaves once it ends ------------------------------------------

@pytest.fixture(params=["gunicorn-s3", "stack-s3"])
def s3_deployment(request, gunicorn_server):
    if request.param == "gunicorn-s3":
        yield _gunicorn_s3(request, gunicorn_server)
        return
    stack = request.getfixturevalue("nginx_s3_stack")
    stack.reset()
    yield _stack(stack, request.param)
    stack.reset()


def _cut_off(deployment: Deployment, path: Path) -> str:
    """An upload by tuspy, killed after about 40%, with a tail in the bucket (its last
    acknowledged chunk was cut short): the upload's URL."""
    run = ClientRun("tuspy", {"endpoint": deployment.endpoint, "file": str(path), "chunkSize": 3 * MiB,
                              "metadata": {"filename": path.name}})
    url = run.until(lambda e: e["event"] == "url")["url"]
    run.until(lambda e: e["event"] == "offset" and e["offset"] >= SIZE * 40 // 100)
    run.kill()
    url = _absolute(deployment, url)
    uid = url.rsplit("/", 1)[1]
    offset = _settled(deployment, url)
    tail = [f"{uid}.tail-{offset}"] if offset % CHUNK else []  # 3 MiB chunks: nearly always one
    assert deployment.bucket.stored("tus") == sorted([uid, *tail])
    return url


def _settled(deployment: Deployment, url: str, timeout: float = 30) -> int:
    """The upload's offset once the server is done with the chunk the killed client was
    sending (what arrived of it is recorded): an empty PATCH at the offset HEAD tells
    is answered 204 only when no request holds the upload (else 423, or 409 when the
    offset moved meanwhile). It changes nothing."""
    deadline = time.monotonic() + timeout
    while True:
        offset = int(requests.head(deployment.reachable(url), headers=V, timeout=10).headers["Upload-Offset"])
        answer = _patch(deployment.reachable(url), offset, b"")
        if answer.status_code == 204:
            assert answer.headers["Upload-Offset"] == str(offset)
            return offset
        assert answer.status_code in (409, 423), answer.text
        assert time.monotonic() < deadline, "the cut-off chunk never finished"
        time.sleep(0.05)


def test_a_cut_off_upload_terminated_or_expired_leaves_nothing_in_the_bucket(s3_deployment, big_file):
    from vimeo_api import create_app

    deployment = s3_deployment
    path, _digest = big_file
    terminated = _cut_off(deployment, path)
    assert requests.delete(deployment.reachable(terminated), headers=V, timeout=30).status_code == 204
    assert deployment.bucket.stored("tus") == [] and deployment.bucket.multipart_uploads() == []

    expired = _cut_off(deployment, path)
    deployment.sql("update resumable_uploads set expires_at = :t",
                   t=(utcnow() - timedelta(seconds=1)).replace(tzinfo=None))
    assert requests.head(deployment.reachable(expired), headers=V, timeout=10).status_code == 410
    # The sweep (Celery beat's, or the embedded one's) from an app on the same storage.
    names = ("DATABASE_URL", "STORAGE_DIR", "STORAGE_URL", "S3_ENDPOINT_URL", "S3_REGION", "S3_ACCESS_KEY_ID",
             "S3_SECRET_ACCESS_KEY")
    app = create_app({**{name: deployment.settings["VIMEO_" + name] for name in names},
                      "TESTING": True, "EMBEDDED_SWEEP_INTERVAL": 0})
    with app.app_context():
        try:
            assert sweep.run(orphans=False).expired_uploads == 1
        finally:
            db.session.remove()
            db.engine.dispose()
    assert deployment.bucket.stored("tus") == [] and deployment.bucket.multipart_uploads() == []
    assert deployment.sql("select count(*) from resumable_uploads")[0][0] == 0
    assert requests.head(deployment.reachable(expired), headers=V, timeout=10).status_code == 404
