"""Real tus clients, real servers: tuspy (Python) and tus-js-client (Node 20), each
uploading 200 MiB in 8 MiB chunks through real gunicorn and through the stack (nginx in
front), killed twice mid-upload and resumed; and ``kill -9`` of the gunicorn worker in the
middle of a chunk. The downloaded file must be byte-identical, with the SHA-256 ETag, and
the upload's options must hold.
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
from pathlib import Path

import psutil
import pytest
import requests

from support import PUBLIC_URL
from support.stacks import start_stack

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
                return conn.execute(text(statement), params).fetchall()
        finally:
            engine.dispose()


def _gunicorn(gunicorn_server, **env) -> Deployment:
    server = gunicorn_server(workers=2, threads=4, **env)
    return Deployment("gunicorn", server.base, server.env["VIMEO_STORAGE_DIR"], server.env["VIMEO_DATABASE_URL"],
                      server.base, server.log)


def _stack(stack) -> Deployment:
    return Deployment("stack", stack.base, stack.storage_dir, stack.db_url, PUBLIC_URL, stack.app_log)


@pytest.fixture(params=["gunicorn", "stack"])
def deployment(request, gunicorn_server):
    if request.param == "gunicorn":
        yield _gunicorn(gunicorn_server)
        return
    stack = request.getfixturevalue("nginx_stack")
    stack.reset()
    yield _stack(stack)
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
    """Until the next chunk's bytes are on their way (in the upload's data file, or in a
    body file nginx is writing), so that the kill cuts a chunk rather than falls between
    two; gives up quietly after ``timeout`` (the client is then killed between chunks)."""
    data = Path(deployment.storage_dir, "resumable", upload_url.rsplit("/", 1)[1])
    bodies = Path(deployment.storage_dir, "nginx-body")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if data.stat().st_size > offset:
                return
        except FileNotFoundError:
            pass
        if _any_body_file(bodies):
            return
        time.sleep(0.001)


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


@pytest.fixture(params=["gunicorn", "stack"])
def pausing_deployment(request, gunicorn_server, tmp_path, pg_url):
    """A deployment whose chunks can be held mid-way (TEST_RESUMABLE_PAUSE)."""
    if request.param == "gunicorn":
        yield _gunicorn(gunicorn_server, **PAUSE_ENV)
        return
    stack = start_stack(tmp_path / "stack", pg_url, **PAUSE_ENV)
    try:
        stack.reset()
        yield _stack(stack)
    finally:
        stack.stop()


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
    marker.touch()
    lines = _line_count(deployment)
    failures: list = []
    sender = threading.Thread(target=lambda: failures.append(_send_quietly(url, chunk, data[chunk:2 * chunk])))
    sender.start()
    pid = _wait_for_pause(deployment, lines)
    assert Path(deployment.storage_dir, "resumable", url.rsplit("/", 1)[1]).stat().st_size > chunk
    victim = psutil.Process(pid)  # is_running() below holds even if the pid is reused
    victim.send_signal(signal.SIGKILL)
    marker.unlink()
    sender.join(timeout=60)
    assert failures and failures[0] != 204, "the killed worker's chunk was acknowledged"
    deadline = time.monotonic() + 10
    while victim.is_running() and victim.status() != psutil.STATUS_ZOMBIE and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not victim.is_running() or victim.status() == psutil.STATUS_ZOMBIE

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
