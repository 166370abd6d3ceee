"""HTTP over a raw socket, for requests no client library would send (bad request lines,
NULs, broken chunking, huge headers) and for reading exactly what came back.

``exchange`` sends bytes and reads one answer: the status line, the header lines and
the body (by Content-Length, chunked, or up to the close). A connection closed with no
answer at all comes back as ``RawAnswer(status=None)``.
"""

from __future__ import annotations

import socket
import ssl
import time
from dataclasses import dataclass, field


@dataclass
class RawAnswer:
    """One answer as it came over the wire."""

    status: int | None
    reason: str = ""
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    raw_head: bytes = b""

    def header(self, name: str) -> str | None:
        values = self.headers_named(name)
        return values[0] if values else None

    def headers_named(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key.lower() == name.lower()]

    def __repr__(self):
        return f"<RawAnswer {self.status} {self.raw_head[:200]!r} {self.body[:200]!r}>"


class _Reader:
    def __init__(self, sock: socket.socket, deadline: float):
        self.sock = sock
        self.deadline = deadline
        self.buf = b""
        self.closed = False

    def _fill(self) -> bool:
        if self.closed:
            return False
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("no complete answer before the deadline")
        self.sock.settimeout(left)
        try:
            chunk = self.sock.recv(65536)
        except (ConnectionResetError, BrokenPipeError):
            chunk = b""
        if not chunk:
            self.closed = True
            return False
        self.buf += chunk
        return True

    def until(self, marker: bytes) -> bytes | None:
        while marker not in self.buf:
            if not self._fill():
                return None
        head, self.buf = self.buf.split(marker, 1)
        return head

    def exactly(self, n: int) -> bytes:
        while len(self.buf) < n:
            if not self._fill():
                break
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def rest(self) -> bytes:
        while self._fill():
            pass
        data, self.buf = self.buf, b""
        return data


def connect(host: str, port: int, *, timeout: float = 10.0, source: str | None = None,
            tls: ssl.SSLContext | None = None, server_hostname: str | None = None) -> socket.socket:
    sock = socket.create_connection((host, port), timeout=timeout,
                                    source_address=(source, 0) if source else None)
    if tls is not None:
        sock = tls.wrap_socket(sock, server_hostname=server_hostname or host)
    return sock


def send_all(sock: socket.socket, data: bytes) -> None:
    """Send what the peer takes: a server may answer and close before the request ends
    (a 413, a 400 on the request line), which is an answer, not a failure."""
    try:
        sock.sendall(data)
    except (BrokenPipeError, ConnectionResetError):
        pass


def read_answer(sock: socket.socket, *, timeout: float = 10.0, head_request: bool = False) -> RawAnswer:
    """One answer from ``sock`` (1xx interim answers are skipped)."""
    reader = _Reader(sock, time.monotonic() + timeout)
    while True:
        head = reader.until(b"\r\n\r\n")
        if head is None:
            leftover = reader.buf
            if leftover:
                raise AssertionError(f"an answer that is not HTTP: {leftover[:300]!r}")
            return RawAnswer(status=None)
        lines = head.split(b"\r\n")
        version, _, rest = lines[0].partition(b" ")
        code, _, reason = rest.partition(b" ")
        if not version.startswith(b"HTTP/1.") or not code.isdigit():
            raise AssertionError(f"not an HTTP status line: {lines[0][:200]!r}")
        headers = []
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep:
                raise AssertionError(f"not a header line: {line[:200]!r}")
            headers.append((name.decode("latin-1"), value.strip(b" \t").decode("latin-1")))
        answer = RawAnswer(int(code), reason.decode("latin-1"), headers, raw_head=head)
        if 100 <= answer.status < 200:
            continue
        break
    if head_request or answer.status in (204, 304):
        return answer
    length = answer.header("Content-Length")
    if length is not None:
        answer.body = reader.exactly(int(length))
    elif (answer.header("Transfer-Encoding") or "").lower() == "chunked":
        body = b""
        while True:
            size_line = reader.until(b"\r\n")
            if size_line is None:
                break
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                reader.until(b"\r\n")
                break
            body += reader.exactly(size)
            reader.exactly(2)
        answer.body = body
    else:
        answer.body = reader.rest()
    return answer


def exchange(host: str, port: int, data: bytes, *, timeout: float = 10.0, source: str | None = None,
             tls: ssl.SSLContext | None = None, head_request: bool = False) -> RawAnswer:
    """Send ``data`` on a new connection and read one answer."""
    with connect(host, port, timeout=timeout, source=source, tls=tls) as sock:
        send_all(sock, data)
        return read_answer(sock, timeout=timeout, head_request=head_request)
