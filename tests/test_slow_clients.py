"""The embedded default (gunicorn alone, four gthread workers of four threads) stays
responsive while clients trickle their upload bodies (issue 13, item 11): a worker takes
a connection only with a thread free for it (vimeo_api/serving.py), and the app cuts off
a body that stalls or arrives too slowly (vimeo_api/body_reading.py)."""

from __future__ import annotations

import json
import select
import socket
import threading
import time
from pathlib import Path

import requests

from support.raw_http import read_answer

SLOW_HEAD = (
    b"PUT /vimeo/api/v1.0/upload/slow.bin HTTP/1.1\r\nHost: files.test\r\n"
    b"Content-Length: 1000000\r\n\r\n"
)


class Tricklers:
    """Clients that each send an upload's headers, then one byte every ``interval``
    seconds, until stopped; what each was answered, if anything, is kept."""

    def __init__(self, base: str, count: int, interval: float = 0.25):
        host, port = base.removeprefix("http://").split(":")
        self.address = (host, int(port))
        self.interval = interval
        self.stopping = threading.Event()
        self.answers: list = []
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(count)]

    def __enter__(self):
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc):
        self.stopping.set()
        for thread in self.threads:
            thread.join(timeout=10)

    def _run(self):
        with socket.create_connection(self.address, timeout=30) as sock:
            sock.sendall(SLOW_HEAD)
            while not self.stopping.wait(self.interval):
                if select.select([sock], [], [], 0)[0]:
                    break  # the server answered (or closed): read what it said
                try:
                    sock.sendall(b"x")
                except OSError:
                    break
            sock.settimeout(5)
            try:
                answer = read_answer(sock, timeout=5)
            except (OSError, TimeoutError):
                answer = None
            with self.lock:
                self.answers.append(answer)


def uploads_in_progress(server) -> int:
    """Bodies the app is reading now: each has its temporary file in the storage."""
    tmp = Path(server.env["VIMEO_STORAGE_DIR"], "tmp")
    return len(list(tmp.iterdir())) if tmp.exists() else 0


def wait_until(check, timeout: float, message: str):
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(message)
        time.sleep(0.05)


def public_file(server) -> str:
    created = requests.put(server.api + "/upload/public.bin", data=b"p" * 4096,
                           headers={"X-Max-Downloads": "0"}, timeout=10)
    assert created.status_code == 201, created.text
    return created.json()["url"]


def download_answers(url: str, count: int) -> None:
    """``count`` downloads, each on a new connection, each answered within 10 s (a
    liveness bound, not a speed assertion)."""
    for _ in range(count):
        with requests.Session() as session:
            answer = session.get(url, timeout=10)
        assert answer.status_code == 200 and len(answer.content) == 4096


def test_ten_slow_bodies_do_not_stop_a_download(gunicorn_server):
    server = gunicorn_server()  # gunicorn.conf.py's default: 4 workers x 4 threads
    url = public_file(server)
    with Tricklers(server.base, 10):
        # Until the app reads all ten bodies; a worker that queued some behind its busy
        # threads never gets there (then the downloads below show what that costs).
        deadline = time.monotonic() + 10
        while uploads_in_progress(server) < 10 and time.monotonic() < deadline:
            time.sleep(0.05)
        download_answers(url, 24)
        assert uploads_in_progress(server) == 10  # all ten were being read meanwhile


def test_bodies_that_trickle_are_cut_off_and_answered_408(gunicorn_server):
    """More slow clients than threads (4 x 4): without a limit on how slowly a body may
    arrive they would hold every thread for as long as they like."""
    server = gunicorn_server(VIMEO_BODY_READ_TIMEOUT=2, VIMEO_BODY_MIN_RATE=1000)
    url = public_file(server)
    with Tricklers(server.base, 20) as tricklers:
        download_answers(url, 5)
        wait_until(lambda: len(tricklers.answers) == 20, 20, "slow bodies were never cut off")
    answers = tricklers.answers
    assert all(answer is not None and answer.status == 408 for answer in answers), answers
    body = json.loads(answers[0].body)
    assert body["error"] == "Request Timeout" and body["request_id"] == answers[0].header("X-Request-Id")
    wait_until(lambda: uploads_in_progress(server) == 0, 10, "a cut-off upload left its temporary file")


def test_a_body_that_stops_is_cut_off_after_the_read_timeout(gunicorn_server):
    server = gunicorn_server(VIMEO_BODY_READ_TIMEOUT=1)
    host, port = server.base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(SLOW_HEAD + b"x" * 100)
        started = time.monotonic()
        answer = read_answer(sock, timeout=20)
    assert answer.status == 408, answer
    assert time.monotonic() - started < 15
    assert json.loads(answer.body)["error"] == "Request Timeout"
