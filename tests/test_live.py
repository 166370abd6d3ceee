"""Through a real gunicorn: races between concurrent downloads, and uploads cut off by
the client. These need real worker processes and sockets, not the Flask client."""

from __future__ import annotations

import os
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests
from sqlalchemy import create_engine, text

from support import API
from support.uploads import upload


def _count(db_url: str, statement: str) -> int:
    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            return conn.execute(text(statement)).scalar_one()
    finally:
        engine.dispose()


def _stored_files(storage: str) -> list[Path]:
    root = Path(storage)
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


def test_one_download_left_and_twenty_clients_exactly_one_wins(gunicorn_server, backend):
    server = gunicorn_server(workers=4, threads=8)
    url = upload(server, os.urandom(4096), "race.bin")["url"]
    barrier_sessions = [requests.Session() for _ in range(20)]

    def fetch(session):
        response = session.get(url, timeout=30)
        return response.status_code, response.content

    with ThreadPoolExecutor(max_workers=20) as pool:
        results = list(pool.map(fetch, barrier_sessions))
    statuses = sorted(status for status, _ in results)
    assert statuses == [200] + [410] * 19, statuses
    winner = next(body for status, body in results if status == 200)
    assert len(winner) == 4096
    assert _count(server.env["VIMEO_DATABASE_URL"], "select downloads from files") == 1


def test_upload_cut_off_by_the_client_leaves_no_row_and_no_file(gunicorn_server, backend):
    server = gunicorn_server(workers=1, threads=2)
    host, port = server.base.removeprefix("http://").split(":")
    storage = server.env["VIMEO_STORAGE_DIR"]
    for request_head in (
        # raw body: says 1 MiB, sends 100 KiB, hangs up
        (
            f"PUT {API}/upload/cut.bin HTTP/1.1\r\nHost: x\r\n"
            "Content-Length: 1048576\r\n\r\n"
        ),
        # multipart: the file part never ends
        (
            f"PUT {API}/file HTTP/1.1\r\nHost: x\r\n"
            "Content-Type: multipart/form-data; boundary=XyZ\r\nContent-Length: 1048576\r\n\r\n"
            "--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"cut.bin\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n"
        ),
    ):
        with socket.create_connection((host, int(port))) as sock:
            sock.sendall(request_head.encode() + os.urandom(100 * 1024))
            deadline = time.monotonic() + 10  # the worker streams part of it to disk
            while time.monotonic() < deadline and not any(p.parent.name == "tmp" for p in _stored_files(storage)):
                time.sleep(0.05)
            assert any(p.parent.name == "tmp" for p in _stored_files(storage)), "upload never reached disk"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and _stored_files(storage):
            time.sleep(0.1)
        assert _stored_files(storage) == []
    assert _count(server.env["VIMEO_DATABASE_URL"], "select count(*) from files") == 0
    assert _count(server.env["VIMEO_DATABASE_URL"], "select count(*) from blobs") == 0
    # the server is still healthy afterwards
    ok = requests.put(server.api + "/upload/after.txt", data=b"still here", timeout=10)
    assert ok.status_code == 201
