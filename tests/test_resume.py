"""Cut-off downloads resumed by real clients (issue 16), on the embedded default served
by a real gunicorn and through the stack's nginx (X-Accel-Redirect, ranges included):
curl and wget cut off by a time limit, then ``curl -C -`` / ``wget -c`` from the same
address fetch the rest without another download; a third address, a plain GET, another
content or the end of the window get 410. Clients are told apart by their source
address on loopback (127.0.0.1 and 127.0.0.3).

curl, wget and python-requests without Range still get the bytes directly (no page),
one download each.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from sqlalchemy import create_engine, text

API = "/vimeo/api/v1.0"
SIZE = 12 * 1024 * 1024
OTHER_CLIENT = "127.0.0.3"


@dataclass
class Live:
    """A deployment reached over HTTP, and its database."""

    name: str
    api: str
    db_url: str

    def sql(self, statement: str, **params):
        engine = create_engine(self.db_url)
        try:
            with engine.begin() as conn:
                result = conn.execute(text(statement), params)
                return result.fetchall() if result.returns_rows else result.rowcount
        finally:
            engine.dispose()

    def upload(self, content: bytes, **fields) -> dict:
        answer = requests.put(self.api + "/file", files={"file": ("big.bin", content)},
                              data={k: str(v) for k, v in fields.items()}, timeout=60)
        assert answer.status_code == 201, answer.text
        return answer.json()

    def url(self, body: dict) -> str:
        return f"{self.api}/file/{body['filehash']}"

    def downloads(self, body: dict) -> int:
        return self.sql("select downloads from files where filehash = :h", h=body["filehash"])[0][0]

    def transfers(self, body: dict, count: int) -> list[dict]:
        """The owner's list once it holds ``count`` transfers whose bytes are all known
        (the sender reports when the answer ends; nginx's log line too)."""
        deadline = time.monotonic() + 20
        while True:
            answer = requests.get(self.url(body) + "/downloads", headers={"X-Owner-Token": body["owner_token"]}, timeout=10)
            assert answer.status_code == 200, answer.text
            events = answer.json()["downloads"]
            if len(events) == count and all(e["bytes_sent"] is not None for e in events):
                return events
            assert time.monotonic() < deadline, events
            time.sleep(0.1)


@pytest.fixture(params=["gunicorn", "stack"])
def live(request, gunicorn_server):
    """The embedded default (SQLite, the app sends the bytes) under a real gunicorn, or
    the stack (nginx → gunicorn → PostgreSQL, nginx sends the bytes)."""
    if request.param == "gunicorn":
        server = gunicorn_server(workers=2, threads=4)
        yield Live("gunicorn", server.api, server.env["VIMEO_DATABASE_URL"])
    else:
        stack = request.getfixturevalue("nginx_stack")
        stack.reset()
        yield Live("stack", stack.base + API, stack.db_url)
        stack.reset()


def run(*command, cwd=None, timeout=60) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def cut_off_with_curl(url: str, out: Path) -> int:
    """curl at a crawl for two seconds: the transfer is cut off part way."""
    result = run("curl", "-sS", "--limit-rate", "200K", "-m", "2", "-o", str(out), url)
    assert result.returncode == 28, result.stderr  # curl's "operation timed out"
    partial = out.stat().st_size
    assert 0 < partial < SIZE
    return partial


def status_of(*curl_args: str) -> tuple[int, str]:
    result = run("curl", "-sS", "-o", "-", "-w", "\n%{http_code}", *curl_args)
    body, _, code = result.stdout.rpartition("\n")
    return int(code), body


def test_curl_resumes_a_cut_off_one_time_download_from_the_same_client_only(live, tmp_path):
    data = os.urandom(SIZE)
    body = live.upload(data)
    url = live.url(body)
    part = tmp_path / "part"
    partial = cut_off_with_curl(url, part)
    assert live.downloads(body) == 1

    resumed = run("curl", "-sS", "-f", "-C", "-", "-o", str(part), url)
    assert resumed.returncode == 0, resumed.stderr
    assert part.read_bytes() == data
    assert live.downloads(body) == 1  # the resumption used no download

    # A third client, even asking for the rest, and the first one without Range: 410.
    code, answer = status_of("--interface", OTHER_CLIENT, "-H", f"Range: bytes={partial}-", url)
    assert (code, json.loads(answer)["reason"]) == (410, "downloaded")
    code, answer = status_of(url)
    assert (code, json.loads(answer)["reason"]) == (410, "downloaded")
    code, _ = status_of("-H", "Range: bytes=0-", url)  # all of it again is no resumption
    assert code == 410

    cut, rest = live.transfers(body, 2)
    assert (cut["completed"], cut["resumed"]) == (False, False)
    assert cut["bytes_sent"] >= partial  # what left the server; the client kept less
    assert (rest["completed"], rest["resumed"], rest["bytes_sent"]) == (True, True, SIZE - partial)


def test_wget_continues_a_cut_off_one_time_download(live, tmp_path):
    data = os.urandom(SIZE)
    body = live.upload(data)
    url = live.url(body)
    saved = tmp_path / body["filehash"]  # wget names the file after the URL
    cut = run("timeout", "2", "wget", "-q", "--no-config", "--limit-rate=200k", url, cwd=tmp_path)
    assert cut.returncode == 124, cut.stderr  # timeout's "killed it"
    partial = saved.stat().st_size
    assert 0 < partial < SIZE

    resumed = run("wget", "-q", "--no-config", "-c", url, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert saved.read_bytes() == data
    assert live.downloads(body) == 1

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / body["filehash"]).write_bytes(data[:partial])
    third = run("wget", "-q", "--no-config", "-c", f"--bind-address={OTHER_CLIENT}", url, cwd=elsewhere)
    assert third.returncode == 8, third.stderr  # wget's "server issued an error response"
    assert (elsewhere / body["filehash"]).stat().st_size == partial
    again = run("wget", "-q", "--no-config", "-O", str(tmp_path / "again"), url)
    assert again.returncode == 8

    first, second = live.transfers(body, 2)
    assert (first["completed"], first["resumed"]) == (False, False)
    assert (second["completed"], second["resumed"], second["bytes_sent"]) == (True, True, SIZE - partial)


def test_another_content_is_not_resumed(live, tmp_path):
    old = os.urandom(SIZE)
    body = live.upload(old, max_downloads=2)
    url = live.url(body)
    part = tmp_path / "part"
    cut_off_with_curl(url, part)
    new = os.urandom(SIZE)
    replaced = requests.put(url, data=new, headers={"X-Owner-Token": body["owner_token"]}, timeout=60)
    assert replaced.status_code == 200, replaced.text
    # Someone else takes the last download of the new content.
    other = run("curl", "-sS", "-f", "--interface", OTHER_CLIENT, "-o", str(tmp_path / "other"), url)
    assert other.returncode == 0 and (tmp_path / "other").read_bytes() == new
    # The first client's transfer was of the old content: nothing of it is resumed.
    code, answer = status_of("-C", "-", "-o", str(part), url)
    assert (code, json.loads(answer)["reason"]) == (410, "downloaded")
    code, _ = status_of("-H", f"Range: bytes={part.stat().st_size}-", "-H", f"If-Range: {body['etag']}", url)
    assert code == 410
    assert live.downloads(body) == 2


def test_no_resumption_once_the_window_is_over(live, tmp_path):
    body = live.upload(os.urandom(1000))
    url = live.url(body)
    first = requests.get(url, headers={"Range": "bytes=0-99"}, timeout=10)
    assert first.status_code == 206
    # The transfer began 901 s ago: past RESUME_WINDOW (900 s by default).
    live.sql("update transfers set at = at - interval '901 seconds'" if live.name == "stack"
             else "update transfers set at = datetime(at, '-901 seconds')")
    later = requests.get(url, headers={"Range": "bytes=100-"}, timeout=10)
    assert (later.status_code, later.json()["reason"]) == (410, "downloaded")


def test_curl_wget_and_requests_get_the_bytes_directly_with_one_download_each(live, tmp_path):
    data = os.urandom(100_000)
    fetchers = {
        "curl": lambda url, out: run("curl", "-sS", "-f", "-o", str(out), url),
        "wget": lambda url, out: run("wget", "-q", "--no-config", "-O", str(out), url),
        "requests": lambda url, out: run(
            sys.executable, "-c",
            "import requests, sys; r = requests.get(sys.argv[1]); r.raise_for_status(); open(sys.argv[2], 'wb').write(r.content)",
            url, str(out),
        ),
    }
    for name, fetch in fetchers.items():
        body = live.upload(data)
        out = tmp_path / name
        result = fetch(live.url(body), out)
        assert result.returncode == 0, (name, result.stderr)
        assert out.read_bytes() == data, name
        assert live.downloads(body) == 1, name
        assert requests.get(live.url(body), timeout=10).status_code == 410, name
