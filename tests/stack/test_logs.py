"""Capabilities never reach the access logs whole, and a path cannot forge a log line:
nginx's access log and gunicorn's (the app's own JSON lines never carry a path), read
as written, complete lines only (issue 13, item 6)."""

from __future__ import annotations

import http.client
import re
import secrets
import time

import pytest
import requests

from support import API
from support.uploads import upload

# A line of nginx's access log (nginx.conf's log_format vimeo) and of gunicorn's
# (gunicorn.conf.py's access_log_format): each names its request id.
NGINX_LINE = re.compile(r'^\S+ \[[^\]]+\] "[A-Z]+ \S* HTTP/1\.[01]" \d{3} \d+ [\d.]+ rid=([0-9a-f]{32}) served=\S* ')
GUNICORN_ACCESS = re.compile(r'^\S+ "[A-Z]+ \S*" \d{3} \S+ [\d.]+s (\S+)$')


def complete_lines(text: str) -> list[str]:
    """The lines a writer has finished (a line still being written has no newline yet)."""
    return text[: text.rfind("\n") + 1].splitlines()


def lines_with(read, request_id: str, timeout: float = 5.0) -> list[str]:
    """The complete lines of a log naming ``request_id``, once there is one."""
    deadline = time.monotonic() + timeout
    while True:
        found = [line for line in complete_lines(read()) if request_id in line]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


@pytest.fixture
def stack(own_stack):
    """A stack whose gunicorn writes its access line too (off by default: the app writes
    its own JSON line), so that both access logs are checked."""
    return own_stack(GUNICORN_ACCESSLOG="-")


def test_no_capability_is_written_whole_to_either_access_log(stack):
    body = upload(stack, b"public bytes", "p.txt", max_downloads=0)
    filehash, owner = body["filehash"], {"X-Owner-Token": body["owner_token"]}
    version = requests.post(f"{stack.base}{API}/file/{filehash}/versions", headers=owner, timeout=10).json()
    token = requests.post(f"{stack.base}{API}/file/{filehash}/tokens", headers=owner, json={"expires_in": 60},
                          timeout=10).json()["token"]
    answers = [
        requests.get(f"{stack.base}{API}/file/{filehash}", timeout=10),
        requests.get(f"{stack.base}{API}/file/{filehash}", headers={"Range": "bytes=0-3,5-6"}, timeout=10),
        requests.head(f"{stack.base}{API}/file/{filehash}", timeout=10),
        requests.get(f"{stack.base}{API}/v/{version['version_id']}", timeout=10),
        requests.get(f"{stack.base}{API}/t/{token}", timeout=10),
        requests.post(f"{stack.base}{API}/file/{filehash}/tokens", headers=owner, timeout=10),
    ]
    # The fast path: nginx answers from the grant, whose path names the filehash.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        answer = requests.get(f"{stack.base}{API}/file/{filehash}", timeout=10)
        answers.append(answer)
        if answer.headers.get("X-Cache") == "HIT":
            break
        time.sleep(0.05)
    assert answers[-1].headers.get("X-Cache") == "HIT"
    for answer in answers:
        assert answer.status_code in (200, 201, 206), answer.text
        rid = answer.headers["X-Request-Id"]
        nginx_lines = lines_with(stack.access_log, rid)
        assert len(nginx_lines) == 1 and NGINX_LINE.match(nginx_lines[0]), nginx_lines
    # gunicorn's lines for the requests the app answered.
    for answer in answers[:6]:
        assert any(GUNICORN_ACCESS.match(line) for line in lines_with(stack.app_log, answer.headers["X-Request-Id"]))

    nginx_log, app_log = stack.access_log(), stack.app_log()
    for capability in (filehash, version["version_id"], token, token[-20:], token[:20]):
        assert capability not in nginx_log, capability
        assert capability not in app_log, capability
    # What is left lets an operator tell the requests apart.
    assert f"/file/{filehash[:6]}... " in nginx_log and f"/file/{filehash[:6]}...\"" in app_log
    assert f"/v/{version['version_id'][:6]}... " in nginx_log
    assert f"/t/...{token[-6:]} " in nginx_log and f"/t/...{token[-6:]}\"" in app_log
    assert re.search(rf"served=/f/{filehash[:2]}/{filehash[:6]}\.\.\./[0-9a-f]{{6}}\.\.\. ", nginx_log)


def test_a_path_cannot_forge_a_log_line(stack):
    """``%0A`` (and CR, quotes, escape sequences, NULs) in a path: nginx writes them as
    \\xNN; gunicorn, which decodes the path, wrote a real newline before (issue 13).
    Sent through nginx and to gunicorn directly; every line that shows the forged text
    still belongs to its own request."""
    # Short segments: a segment of 16 characters or more is cut in the logs.
    marker = "F" + secrets.token_hex(3)[:5]
    paths = [
        f"{API}/file/x%0A{marker}/%22GET/200",
        f"{API}/file/%0D%0A{marker}",
        f"{API}/upload/%22%5C{marker}",
        f"/%1b[31m{marker}",
        f"/%0a{marker}",
    ]
    sent = {"nginx": [], "gunicorn": []}
    for name, base, extra in (("nginx", stack.base, []), ("gunicorn", stack.app_base, [f"/%00{marker}"])):
        host, port = base.removeprefix("http://").split(":")
        for path in paths + extra:
            # http.client sends the path as it is.
            conn = http.client.HTTPConnection(host, int(port), timeout=10)
            conn.request("GET", path)
            response = conn.getresponse()
            response.read()
            conn.close()
            assert response.status in (404, 405), (name, path, response.status)
            sent[name].append(response.getheader("X-Request-Id"))
    for read, request_ids in ((stack.access_log, sent["nginx"]), (stack.app_log, sent["nginx"] + sent["gunicorn"])):
        for rid in request_ids:
            assert lines_with(read, rid), rid
        lines = [line for line in complete_lines(read()) if marker in line]
        assert lines
        for line in lines:
            assert any(rid in line for rid in request_ids), line
            assert not line.startswith(marker)
            assert "\x00" not in line and "\x1b" not in line and "\r" not in line
