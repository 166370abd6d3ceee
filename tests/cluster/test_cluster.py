"""Two nodes behind a load balancer, sharing the bucket, PostgreSQL, Redis and Celery
(issue 14's acceptance): a file uploaded through one node downloads byte-identical
through the other; a one-time file asked 40 times at once over both nodes is sent once;
a change through one node is a 410 at once on the other, whose fast path stops within
a second; each node counts the downloads its own nginx answered, once; a node killed
with ``kill -9`` leaves the balancer sending every request to the other, no file lost
or served wrongly; a tus upload goes on whichever node takes each chunk.

Who answered is read from each node's nginx access log (``served=/f/...``: its fast
path). Every process is real: nginx (three), gunicorn (two), Celery worker and beat,
redis-server, PostgreSQL and ``rclone serve s3``.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
import time
from pathlib import Path

import requests
from sqlalchemy import create_engine, text

from support import API
from support.checks import assert_json_error
from support.logs import complete_lines
from support.polling import eventually, wait_until
from support.uploads import upload

MiB = 1024 * 1024


def get(base: str, path: str, headers=None, method="GET") -> requests.Response:
    return requests.request(method, base + API + path, headers=headers, timeout=30)


def served(node, response: requests.Response) -> str:
    """What the node's nginx finally served for this request (its access log)."""
    rid = response.headers["X-Request-Id"]
    path = node.log_dir / "access.log"
    lines = eventually(lambda: [line for line in complete_lines(path) if f"rid={rid} " in line])
    assert len(lines) == 1, f"{rid} not in {path}"
    return re.search(r" served=(\S+)", lines[0]).group(1)


def by_fast_path(node, response) -> bool:
    return served(node, response).startswith("/f/")


def hot(node, path: str) -> requests.Response:
    """GET through this node until its nginx answers on the fast path."""
    def attempt():
        answer = get(node.base, path)
        assert answer.status_code == 200, answer.text
        return answer if by_fast_path(node, answer) else None

    return wait_until(attempt, 10, f"{path} never reached {node.name}'s fast path", interval=0.05)


def sql(cluster, statement: str, **params):
    engine = create_engine(cluster.env["VIMEO_DATABASE_URL"])
    try:
        with engine.connect() as conn:
            return conn.execute(text(statement), params).fetchall()
    finally:
        engine.dispose()


def counts(cluster, filehash: str) -> tuple[int, int]:
    return tuple(sql(cluster, "select downloads, bytes_served from files where filehash = :h", h=filehash)[0])


# -- one bucket, any node ------------------------------------------------------------------

def test_a_file_uploaded_through_one_node_downloads_byte_identical_through_the_other(cluster):
    one, two = cluster.nodes
    small = os.urandom(300 * 1024)
    multipart = upload(one.base, small, "small.bin", max_downloads=0)
    big = os.urandom(9 * MiB + 17)  # a multipart upload to the bucket, via nginx's body file
    raw = requests.put(one.base + API + "/upload/big.bin", data=big, headers={"X-Max-Downloads": "0"}, timeout=60)
    assert raw.status_code == 201, raw.text
    for body, content in ((multipart, small), (raw.json(), big)):
        assert body["url"].startswith(cluster.base)  # the public URL is the balancer's
        for base in (two.base, cluster.base):
            answer = get(base, "/file/" + body["filehash"])
            assert answer.status_code == 200
            assert hashlib.sha256(answer.content).hexdigest() == body["sha256"] == hashlib.sha256(content).hexdigest()
        assert cluster.bucket.get(body["sha256"]) == content
    # Nothing of the bytes stayed on the node that took the uploads.
    scratch = Path(one.storage_dir)
    assert [p for p in scratch.rglob("*") if p.is_file() and p.parent.name in ("blobs", "tmp", "nginx-body")] == []
    assert not any((scratch / "blobs").rglob("*"))


def test_forty_concurrent_gets_of_a_one_time_file_over_both_nodes_send_it_once(cluster):
    content = os.urandom(64 * 1024)
    body = upload(cluster.nodes[0].base, content, "once.bin")
    start = threading.Barrier(40)
    answers: list[requests.Response] = [None] * 40

    def fetch(i: int) -> None:
        node = cluster.nodes[i % 2]
        session = requests.Session()
        start.wait()
        answers[i] = session.get(node.base + API + "/file/" + body["filehash"], timeout=60)
        session.close()

    threads = [threading.Thread(target=fetch, args=(i,)) for i in range(40)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    ok = [a for a in answers if a.status_code == 200]
    assert len(ok) == 1 and ok[0].content == content
    for answer in answers:
        if answer.status_code != 200:
            assert_json_error(answer, 410, "Gone")
    assert sql(cluster, "select downloads, status from files where filehash = :h", h=body["filehash"]) == [(1, "gone")]


# -- a change on one node, seen by the other ---------------------------------------------

BOUND = 1.0  # seconds: vimeo_api/grants.py, Grant.cache_until


def test_a_delete_through_one_node_is_410_at_once_on_the_other_and_stops_its_fast_path(cluster):
    one, two = cluster.nodes
    content = os.urandom(20000)
    body = upload(one.base, content, "shared.bin", max_downloads=0)
    path = "/file/" + body["filehash"]
    hot(one, path)  # node one's nginx answers it from its cached grant

    deleted = requests.delete(two.base + API + path, headers={"X-Owner-Token": body["owner_token"]}, timeout=30)
    assert deleted.status_code == 202
    answered = time.monotonic()
    # Anything node one's app decides is a 410 at once (a precondition keeps it from
    # the fast path).
    assert_json_error(get(one.base, path, {"If-None-Match": '"other"'}), 410, "Gone")
    # Its fast path may still answer from the grant it cached, but only for requests
    # begun within the bound; every later one is a 410.
    while (began := time.monotonic()) < answered + BOUND + 0.5:
        answer = get(one.base, path)
        if answer.status_code == 200:
            assert began - answered < BOUND, f"node one's fast path answered {began - answered:.3f}s after the DELETE"
            assert answer.content == content
        else:
            assert_json_error(answer, 410, "Gone")
    assert_json_error(get(one.base, path), 410, "Gone")
    # Node one's grant, outdated by node two, goes with its upkeep; the bytes leave the
    # bucket once the grace period is over (the Celery worker, which reads no node's log).
    grants = Path(one.storage_dir, "grants", "f", body["filehash"][:2], body["filehash"])
    wait_until(lambda: not grants.exists(), 10, "node one kept the grant node two outdated")
    key = cluster.bucket.blob_key(body["sha256"])[len(cluster.bucket.prefix):]
    wait_until(lambda: key not in cluster.bucket.keys(), 30, "the deleted file's bytes stayed in the bucket")


def test_a_replacement_through_one_node_is_served_by_the_other_within_the_bound(cluster):
    one, two = cluster.nodes
    body = upload(one.base, b"the first bytes", "doc.txt", max_downloads=0)
    path = "/file/" + body["filehash"]
    hot(one, path)
    replaced = requests.put(two.base + API + path, data=b"the second bytes!",
                            headers={"X-Owner-Token": body["owner_token"]}, timeout=30)
    assert replaced.status_code == 200
    answered = time.monotonic()
    while (began := time.monotonic()) < answered + BOUND + 0.5:
        answer = get(one.base, path)
        assert answer.status_code == 200
        if answer.content == b"the first bytes":
            assert began - answered < BOUND
        else:
            assert answer.content == b"the second bytes!"
            assert answer.headers["ETag"] == replaced.json()["etag"]
    assert get(one.base, path).content == b"the second bytes!"


# -- each node counts what its nginx answered -----------------------------------------------

def test_downloads_answered_by_each_nodes_nginx_are_counted_once(cluster):
    content = os.urandom(5000)
    body = upload(cluster.nodes[0].base, content, "counted.bin", max_downloads=0)
    path = "/file/" + body["filehash"]
    answers = []
    for node in cluster.nodes:
        answers += [(node, get(node.base, path)) for _ in range(3)]
        answers.append((node, hot(node, path)))
        answers += [(node, get(node.base, path)) for _ in range(3)]
    assert all(a.status_code == 200 and a.content == content for _node, a in answers)
    fast = {node.name: sum(by_fast_path(n, a) for n, a in answers if n is node) for node in cluster.nodes}
    assert all(n >= 4 for n in fast.values()), fast  # both nodes answered on their own
    total = len(answers)

    wait_until(lambda: counts(cluster, body["filehash"]) == (total, total * len(content)), 15,
               f"the fast downloads were not all counted: {counts(cluster, body['filehash'])} of {total}")

    # Each node has read its whole log, so nothing can be counted again.
    def all_read() -> bool:
        for node in cluster.nodes:
            log = Path(node.env["VIMEO_FAST_PATH_LOG"])
            position = Path(node.storage_dir, "fast-downloads.position").read_text().split()
            if int(position[1]) != log.stat().st_size:
                return False
        return True

    wait_until(all_read, 10, "a node did not read its whole log")
    assert counts(cluster, body["filehash"]) == (total, total * len(content))


# -- a node killed -----------------------------------------------------------------------

def test_a_node_killed_leaves_the_balancer_sending_everything_to_the_other(cluster):
    one, two = cluster.nodes
    files = []
    for i in range(6):
        content = os.urandom(10000 + i)
        files.append((upload(cluster.base, content, f"f{i}.bin", max_downloads=0), content))
    one.kill9()
    try:
        for _ in range(3):
            for body, content in files:
                answer = get(cluster.base, "/file/" + body["filehash"])
                assert (answer.status_code, answer.content) == (200, content)
        # Writes go to the living node too, and what they stored is whole.
        after = os.urandom(30000)
        body = upload(cluster.base, after, "after.bin", max_downloads=0)
        assert get(cluster.base, "/file/" + body["filehash"]).content == after
        raw = requests.put(cluster.base + API + "/upload/raw.bin", data=after[::-1], timeout=30)
        assert raw.status_code == 201
        assert get(cluster.base, "/file/" + raw.json()["filehash"]).content == after[::-1]
        gone = requests.delete(cluster.base + API + "/file/" + files[0][0]["filehash"],
                               headers={"X-Owner-Token": files[0][0]["owner_token"]}, timeout=30)
        assert gone.status_code == 202
        assert_json_error(get(cluster.base, "/file/" + files[0][0]["filehash"]), 410, "Gone")
    finally:
        one.start()

    # The balancer tries the restarted node again once its fail_timeout is over.
    def reached_one() -> bool:
        answer = get(cluster.base, "/file/" + files[1][0]["filehash"])
        assert (answer.status_code, answer.content) == (200, files[1][1])
        return any(f"rid={answer.headers['X-Request-Id']} " in line for line in complete_lines(one.log_dir / "access.log"))

    wait_until(reached_one, 15, "the balancer never sent a request to the restarted node", interval=0.2)

    # Only gunicorn dead on a node (its nginx answers 502): GETs go to the other node.
    two.kill9(only=("gunicorn",))
    try:
        for body, content in files[1:]:
            answer = get(cluster.base, "/file/" + body["filehash"])
            assert (answer.status_code, answer.content) == (200, content)
    finally:
        two.stop()
        two.start()
    # Both nodes serve again.
    for node in cluster.nodes:
        body, content = files[1]
        assert get(node.base, "/file/" + body["filehash"]).content == content


# -- a tus upload whose chunks land on both nodes ------------------------------------------------

def test_a_tus_upload_goes_on_whichever_node_takes_each_chunk(cluster):
    """Each chunk through the other node: the bytes after the last whole part (a tail in
    the bucket) and the SHA-256 state (in the row) are picked up there; the file is
    byte-identical and nothing of the upload stays in the bucket."""
    one, two = cluster.nodes
    tus = {"Tus-Resumable": "1.0.0"}
    data = os.urandom(29 * MiB + 321)
    created = requests.post(one.base + API + "/tus/", headers={**tus, "Upload-Length": str(len(data)),
                                                                "Upload-Metadata": "max_downloads MA=="}, timeout=30)
    assert created.status_code == 201, created.text
    path = created.headers["Location"]
    uid = path.rsplit("/", 1)[1]
    offset, nodes = 0, [one, two]
    for number, size in enumerate([3 * MiB, 9 * MiB + 5, 6 * MiB, 11 * MiB + 316]):
        node = nodes[number % 2]
        answer = requests.patch(node.base + path, data=data[offset:offset + size], timeout=60, headers={
            **tus, "Upload-Offset": str(offset), "Content-Type": "application/offset+octet-stream"})
        assert answer.status_code == 204, (node.name, answer.text)
        offset += size
        assert answer.headers["Upload-Offset"] == str(offset)
        if offset < len(data):
            tail = [f"{uid}.tail-{offset}"] if offset % (8 * MiB) else []
            started = [uid] if offset >= 8 * MiB else []  # the multipart upload, from the first whole part
            assert cluster.bucket.stored("tus") == sorted([*started, *tail])
    file_url = answer.headers["X-File-Url"]
    head = requests.head(one.base + path, headers=tus, timeout=30)
    assert head.headers["X-File-Url"] == file_url
    sha = hashlib.sha256(data).hexdigest()
    got = get(two.base, "/file/" + file_url.rsplit("/", 1)[1])
    assert (got.status_code, got.headers["ETag"]) == (200, f'"{sha}"')
    assert got.content == data
    assert cluster.bucket.stored("tus") == []
