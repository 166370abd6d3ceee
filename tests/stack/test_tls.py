"""TLS and the client's real address (issue 13, item 5).

nginx terminates TLS itself (``tls_cert``/``tls_key``: VIMEO_TLS_CERT / VIMEO_TLS_KEY),
with HSTS on every answer; and with a TLS proxy in front of it (here a second nginx, as
a load balancer would be) it takes the client's address from the proxy's
X-Forwarded-For (``trusted_proxies``: VIMEO_TRUSTED_PROXIES), so that /metrics stays
loopback-only, the flood guard counts each client, and the app's per-address password
budget sees the real client. The certificates are made here by a CA of the test's own
(the openssl command line).
"""

from __future__ import annotations

import grp
import http.client
import json
import os
import pwd
import re
import ssl
import subprocess
import time
from pathlib import Path

import pytest
import requests

from deploy.stack import free_port, nginx_binary, spawn, stop, wait_for_http

from support import API
from support.uploads import upload

HSTS = "max-age=31536000"


# -- certificates ------------------------------------------------------------------------

def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def certificates(tmp_path_factory) -> dict[str, Path]:
    """A CA and a server certificate it signed for 127.0.0.1 and localhost."""
    d = tmp_path_factory.mktemp("tls")
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
            "-subj", "/CN=vimeo_api test CA", "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)
    openssl("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1", cwd=d)
    (d / "server.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n"
                                  "extendedKeyUsage=serverAuth\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "server.pem", "-days", "2", "-extfile", "server.ext", cwd=d)
    return {"ca": d / "ca.pem", "cert": d / "server.pem", "key": d / "server.key"}


def curl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["curl", "-sS", "--max-time", "20", *args], capture_output=True)


def head_and_body(output: bytes) -> tuple[int, dict[str, list[str]], bytes]:
    """curl -i's output: the status, the headers (repeated ones kept), the body."""
    head, _, body = output.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers: dict[str, list[str]] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers.setdefault(name.strip().lower(), []).append(value.strip())
    return int(lines[0].split()[1]), headers, body


# -- nginx terminates TLS ----------------------------------------------------------------

def test_nginx_serves_https_with_hsts_on_every_answer(own_stack, certificates):
    s = own_stack(nginx={"tls_cert": str(certificates["cert"]), "tls_key": str(certificates["key"])})
    assert s.base.startswith("https://")
    ca = str(certificates["ca"])

    health = curl("--cacert", ca, "-i", s.base + "/healthz")
    assert health.returncode == 0, health.stderr
    status, headers, _ = head_and_body(health.stdout)
    assert status == 200 and headers["strict-transport-security"] == [HSTS]

    content = os.urandom(5000)
    (s.root / "up.bin").write_bytes(content)
    created = curl("--cacert", ca, "-X", "PUT", "-F", f"file=@{s.root / 'up.bin'}", "-F", "max_downloads=0",
                   s.base + API + "/file")
    assert created.returncode == 0, created.stderr
    filehash = json.loads(created.stdout)["filehash"]
    # The bytes nginx sends (X-Accel), nginx's own error, the app's error, the fast path.
    for path, expected in ((f"/file/{filehash}", 200), ("/file/" + "0" * 32, 404), (f"/file/{filehash}", 200)):
        got = curl("--cacert", ca, "-i", s.base + API + path)
        status, headers, body = head_and_body(got.stdout)
        assert status == expected, got.stdout[:300]
        assert headers["strict-transport-security"] == [HSTS], path
        if expected == 200:
            assert body == content
    internal = head_and_body(curl("--cacert", ca, "-i", s.base + "/_vimeo_blobs/x").stdout)
    assert internal[0] == 404 and internal[1]["strict-transport-security"] == [HSTS]

    # Without the CA the certificate is not trusted: TLS is real.
    untrusted = curl(s.base + "/healthz")
    assert untrusted.returncode == 60, untrusted.stderr
    # Plain HTTP to the TLS port: nginx's 497, as the API's JSON.
    plain = requests.get(s.base.replace("https://", "http://") + "/healthz", timeout=10)
    assert plain.status_code == 400
    assert plain.json()["error"] == "Bad Request" and "HTTPS" in plain.json()["message"]


# -- a TLS proxy in front ---------------------------------------------------------------

class TlsProxy:
    """A second nginx terminating TLS in front of the stack, as a load balancer would:
    it appends its client's address to X-Forwarded-For."""

    def __init__(self, root: Path, certificates: dict, upstream: str):
        root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        user = pwd.getpwuid(os.geteuid()).pw_name
        group = grp.getgrgid(os.getegid()).gr_name
        conf = root / "proxy.conf"
        conf.write_text(f"""
{f"user {user} {group};" if os.geteuid() == 0 else ""}
worker_processes 1;
pid {root}/proxy.pid;
error_log {root}/error.log crit;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {root}/body;
    proxy_temp_path {root}/proxy;
    fastcgi_temp_path {root}/fastcgi;
    uwsgi_temp_path {root}/uwsgi;
    scgi_temp_path {root}/scgi;
    server {{
        listen 127.0.0.1:{self.port} ssl;
        ssl_certificate {certificates["cert"]};
        ssl_certificate_key {certificates["key"]};
        location / {{
            proxy_pass {upstream};
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto https;
        }}
    }}
}}
""")
        self.proc = spawn([nginx_binary(), "-p", str(root), "-c", str(conf), "-e", str(root / "error.log"),
                           "-g", "daemon off;"], {"PATH": "/usr/sbin:/usr/bin:/bin"}, root / "proxy.out")
        wait_for_http(f"http://127.0.0.1:{self.port}/", procs=[self.proc])
        self.context = ssl.create_default_context(cafile=str(certificates["ca"]))

    def request(self, method: str, path: str, source: str, headers=None):
        """One request through the proxy, from the client address ``source``."""
        conn = http.client.HTTPSConnection("127.0.0.1", self.port, timeout=20, context=self.context,
                                           source_address=(source, 0))
        try:
            conn.request(method, path, headers=headers or {})
            response = conn.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            conn.close()

    def stop(self):
        stop(self.proc)


def direct(stack, method: str, path: str, source: str, headers=None):
    """One request to the stack's nginx itself, from ``source``."""
    host, port = stack.base.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=20, source_address=(source, 0))
    try:
        conn.request(method, path, headers=headers or {})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


@pytest.fixture
def behind_proxy(own_stack, certificates, tmp_path):
    """The stack trusting 127.0.0.1 (where the TLS proxy connects from), with a small
    flood allowance and password budget to reach in a test."""
    s = own_stack(nginx={"trusted_proxies": ("127.0.0.1",), "limit_req_rate": "1r/s", "limit_req_burst": 5},
                  VIMEO_PASSWORD_RATE_LIMIT="3/minute")
    proxy = TlsProxy(tmp_path / "proxy", certificates, s.base)
    yield s, proxy
    proxy.stop()


def test_metrics_refuse_a_client_seen_through_the_proxy(behind_proxy):
    s, proxy = behind_proxy
    # The proxy connects from 127.0.0.1, which /metrics admits; the client is elsewhere.
    status, _, body = proxy.request("GET", "/metrics", source="127.0.0.5")
    assert status == 403 and json.loads(body)["error"] == "Forbidden"
    status, _, _ = proxy.request("GET", "/metrics", source="127.0.0.1")
    assert status == 200
    # A forwarded address is believed only from a trusted peer, and only as the client's.
    assert direct(s, "GET", "/metrics", "127.0.0.6", {"X-Forwarded-For": "127.0.0.1"})[0] == 403
    assert direct(s, "GET", "/metrics", "127.0.0.1", {"X-Forwarded-For": "203.0.113.7"})[0] == 403
    # Sending a loopback address through the proxy does not help: the proxy appends the
    # real one, which nginx takes.
    spoofed = proxy.request("GET", "/metrics", source="127.0.0.5", headers={"X-Forwarded-For": "127.0.0.1"})
    assert spoofed[0] == 403


def test_the_app_and_the_logs_see_the_real_client(behind_proxy):
    s, proxy = behind_proxy
    status, headers, _ = proxy.request("GET", API + "/file/" + "0" * 32, source="127.0.0.9")
    assert status == 404
    rid = headers["X-Request-Id"]
    deadline = time.monotonic() + 5
    while not (lines := [line for line in s.app_log().splitlines() if rid in line and line.startswith("{")]):
        assert time.monotonic() < deadline, "the app never logged the request"
        time.sleep(0.05)
    assert json.loads(lines[0])["client"] == "127.0.0.9"
    # nginx writes its line once the answer is out: wait for it, complete.
    assert s.access_line(rid).startswith("127.0.0.9 ")


def test_the_password_budget_is_per_real_client(behind_proxy):
    """PASSWORD_RATE_LIMIT counts wrong passwords per file and client address: one
    client guessing through the proxy must not lock out another one."""
    s, proxy = behind_proxy
    body = upload(s, b"protected", "p.txt", max_downloads=0, password="right-one")
    path = f"{API}/file/{body['filehash']}"
    for _ in range(3):
        assert proxy.request("GET", path, "127.0.0.5", {"X-Password": "wrong"})[0] == 401
    assert proxy.request("GET", path, "127.0.0.5", {"X-Password": "wrong"})[0] == 429
    status, _, content = proxy.request("GET", path, "127.0.0.6", {"X-Password": "right-one"})
    assert (status, content) == (200, b"protected")


def test_the_flood_guard_counts_each_real_client(behind_proxy):
    s, proxy = behind_proxy
    statuses = [proxy.request("GET", "/healthz", "127.0.0.7")[0] for _ in range(12)]
    assert 429 in statuses and statuses[0] == 200, statuses
    refused = proxy.request("GET", "/healthz", "127.0.0.7")
    assert refused[0] == 429 and json.loads(refused[2])["error"] == "Too Many Requests"
    # Another client through the same proxy is not held back by the first one's count.
    assert proxy.request("GET", "/healthz", "127.0.0.8")[0] == 200
    assert re.search(r'"GET /healthz HTTP/1\.[01]" 429 ', s.access_log())
