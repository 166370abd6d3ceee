"""An edge cache in front of the stack (issue 13, "the edge"): Varnish from Debian with
the project's deploy/varnish.vcl, as a CDN would stand in front of nginx. It keeps
public files and published versions; DELETE, a replacement, a PATCH that ends public
sharing and POST /purge reach it (vimeo_api/edge.py sends a BAN of the surrogate keys),
and it stops serving what they changed within 2 s. An edge that is down fails nothing;
the purge record says how many edges took the ban."""

from __future__ import annotations

import http.client
import json
import time

import pytest
import requests
from sqlalchemy import create_engine, text

from deploy.stack import free_port, render_vcl, spawn, stop, varnish_command, wait_for_http

from support import API
from support.uploads import upload


class Edge:
    """varnishd on a free port, in front of ``backend`` (host:port)."""

    def __init__(self, root, port: int, backend: str):
        self.root, self.port, self.backend = root, port, backend
        self.base = f"http://127.0.0.1:{port}"
        self.proc = None

    def start(self):
        self.root.mkdir(parents=True, exist_ok=True)
        vcl = self.root / "varnish.vcl"
        vcl.write_text(render_vcl(self.backend))
        self.proc = spawn(varnish_command(vcl, f"127.0.0.1:{self.port}", self.root / "work"),
                          {"PATH": "/usr/sbin:/usr/bin:/bin"}, self.root / "varnish.log")
        wait_for_http(self.base + "/healthz", timeout=60, procs=[self.proc])

    def stop(self):
        if self.proc is not None:
            stop(self.proc)
            self.proc = None

    def get(self, path: str, **kwargs) -> requests.Response:
        return requests.get(self.base + API + path, timeout=30, **kwargs)


@pytest.fixture
def edged(own_stack, tmp_path):
    """A stack whose app bans at the edge, and Varnish in front of its nginx."""
    port = free_port()
    s = own_stack(VIMEO_EDGE_PURGE_URLS=json.dumps([f"http://127.0.0.1:{port}/"]))
    edge = Edge(tmp_path / "varnish", port, s.base.removeprefix("http://"))
    edge.start()
    yield s, edge
    edge.stop()


def cached(edge: Edge, path: str) -> requests.Response:
    """GET through the edge until it answers from its cache (the first request fills it)."""
    first = edge.get(path)
    assert first.status_code == 200, first.text
    second = edge.get(path)
    assert second.headers["X-Edge-Cache"] == "HIT", second.headers
    # Varnish names two transactions on a hit: this request's and the one that stored it.
    assert len(second.headers["X-Varnish"].split()) == 2
    assert second.content == first.content
    assert "Surrogate-Key" not in second.headers
    return second


def until(check, timeout: float = 2.0):
    """``check()``'s first truthy result within ``timeout`` seconds, else the last one."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(0.05)


def operator_token(stack) -> str:
    from support.targets import HttpTarget

    target = HttpTarget("stack", stack.base, stack.db_url, stack.storage_dir)
    try:
        return target.operator_token("cache:purge")
    finally:
        target.close()


def test_a_deleted_file_and_its_versions_leave_the_edge(edged):
    s, edge = edged
    body = upload(s, b"public bytes", "p.txt", max_downloads=0)
    owner = {"X-Owner-Token": body["owner_token"]}
    path = f"/file/{body['filehash']}"
    version = requests.post(s.base + API + path + "/versions", headers=owner, timeout=10).json()
    cached(edge, path)
    cached(edge, f"/v/{version['version_id']}")

    deleted = requests.delete(edge.base + API + path, headers=owner, timeout=30)
    assert deleted.status_code == 202
    assert until(lambda: edge.get(path).status_code == 410), "the edge still serves the deleted file"
    assert until(lambda: edge.get(f"/v/{version['version_id']}").status_code == 410)
    assert edge.get(path).headers["X-Edge-Cache"] == "MISS"


def test_a_purge_reaches_the_edge_and_its_record_counts_it(edged):
    s, edge = edged
    body = upload(s, b"purge me", "q.txt", max_downloads=0)
    path = f"/file/{body['filehash']}"
    cached(edge, path)
    token = {"Authorization": f"Bearer {operator_token(s)}"}
    accepted = requests.post(s.base + API + "/purge", headers=token, timeout=30,
                             json={"type": "url", "items": [API + path]})
    assert accepted.status_code == 202
    record = requests.get(s.base + API + f"/purge/{accepted.json()['purge_id']}", headers=token, timeout=10).json()
    assert (record["edges_targeted"], record["edges_done"]) == (1, 1)
    # Not gone: fetched from the origin again, then cached again.
    assert until(lambda: edge.get(path).headers["X-Edge-Cache"] == "MISS")
    cached(edge, path)
    everything = requests.post(s.base + API + "/purge", headers=token, json={"type": "all"}, timeout=30).json()
    assert everything["status"] == "done"
    assert until(lambda: edge.get(path).headers["X-Edge-Cache"] == "MISS")


def test_a_replacement_and_a_password_added_reach_the_edge(edged):
    s, edge = edged
    body = upload(s, b"first content", "r.txt", max_downloads=0)
    owner = {"X-Owner-Token": body["owner_token"]}
    path = f"/file/{body['filehash']}"
    cached(edge, path)
    replaced = requests.put(s.base + API + path, data=b"second content", headers=owner, timeout=30)
    assert replaced.status_code == 200
    assert until(lambda: edge.get(path).content == b"second content")
    cached(edge, path)
    patched = requests.patch(s.base + API + path, json={"password": "now-private"}, headers=owner, timeout=30)
    assert patched.status_code == 200
    assert until(lambda: edge.get(path).status_code == 401)
    assert edge.get(path, headers={"X-Password": "now-private"}).content == b"second content"


def test_the_edge_never_turns_a_head_or_a_conditional_request_into_a_download(edged):
    """A HEAD, or a GET the origin answers 304, uses none of a limited file's downloads;
    a cache that fetched a full GET in their place would use one."""
    s, edge = edged
    body = upload(s, b"one download", "o.txt", max_downloads=1)
    path = f"/file/{body['filehash']}"
    for _ in range(2):
        assert requests.head(edge.base + API + path, timeout=10).status_code == 200
        assert edge.get(path, headers={"If-None-Match": body["etag"]}).status_code == 304
    assert downloads(s, body["filehash"]) == 0
    got = edge.get(path)
    assert (got.status_code, got.content) == (200, b"one download")
    assert edge.get(path).status_code == 410


def downloads(stack, filehash: str) -> int:
    engine = create_engine(stack.db_url)
    try:
        with engine.connect() as conn:
            return conn.execute(text("select downloads from files where filehash = :h"), {"h": filehash}).scalar_one()
    finally:
        engine.dispose()


def test_only_the_services_machines_may_ban(edged):
    s, edge = edged
    conn = http.client.HTTPConnection("127.0.0.1", edge.port, timeout=10, source_address=("127.0.0.2", 0))
    conn.request("BAN", "/", headers={"Surrogate-Key": "vimeo"})
    assert conn.getresponse().status == 403
    conn.close()
    refused = requests.request("BAN", edge.base + "/", headers={"Surrogate-Key": "vimeo; rm"}, timeout=10)
    assert refused.status_code == 400


def test_an_edge_that_is_down_fails_nothing(edged):
    s, edge = edged
    body = upload(s, b"no edge", "n.txt", max_downloads=0)
    path = f"/file/{body['filehash']}"
    edge.stop()
    token = {"Authorization": f"Bearer {operator_token(s)}"}
    accepted = requests.post(s.base + API + "/purge", headers=token, timeout=30,
                             json={"type": "url", "items": [API + path]})
    assert accepted.status_code == 202
    record = requests.get(s.base + API + f"/purge/{accepted.json()['purge_id']}", headers=token, timeout=10).json()
    assert (record["status"], record["edges_targeted"], record["edges_done"]) == ("done", 1, 0)
    deleted = requests.delete(s.base + API + path, headers={"X-Owner-Token": body["owner_token"]}, timeout=30)
    assert deleted.status_code == 202
    assert requests.get(s.base + API + path, timeout=10).status_code == 410
    assert until(lambda: "did not take a ban" in s.app_log())
