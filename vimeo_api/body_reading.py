"""Request bodies that stall or trickle are cut off with 408.

On the embedded default gunicorn's threads read bodies themselves, and a client that
sends its upload a byte at a time holds a thread for as long as it likes: a few such
clients stop the server (issue 13). In the stack nginx reads every body before the app
sees it, and this never triggers.

The rule: a body must deliver bytes at least every ``BODY_READ_TIMEOUT`` seconds, and
once it has been arriving for that long it must have averaged ``BODY_MIN_RATE`` bytes a
second. Either answers ``408``, and gunicorn closes the connection rather than reuse it
(where the next request would start is unknown).

Under gunicorn the rule must hold inside gunicorn's own reading: asked for 64 KiB, its
body reader loops on ``recv`` until it has them, so a client sending a byte every
second never lets a read return to be checked. Two hooks reach in there: a timeout on
gunicorn's socket (``gunicorn.socket`` in the WSGI environ), so a stalled ``recv``
ends, and a wrapper around the ``chunk`` method of the connection's reader (gunicorn
27.0.1's ``SocketUnreader``, the one place it calls ``recv``), which counts what
arrives and raises as soon as the body falls behind; it is removed when the request
ends. Elsewhere (the test client, another server) the count is kept after each read.

A WSGI middleware (``init_app``), so that every reader of the body (werkzeug's
multipart parser, raw uploads, JSON) goes through it.
"""

from __future__ import annotations

import socket
import time

from flask import Flask
from werkzeug.exceptions import RequestTimeout

TOO_SLOW = "The request's body arrived too slowly; send it again."


def init_app(app: Flask) -> None:
    """Wrap the app so that each request's body is read under the rule above."""
    timeout = float(app.config["BODY_READ_TIMEOUT"])
    min_rate = float(app.config["BODY_MIN_RATE"])
    if timeout <= 0:
        return
    inner = app.wsgi_app

    def guarded(environ, start_response):
        stream = environ.get("wsgi.input")
        if stream is None:
            return inner(environ, start_response)
        guard = GuardedInput(stream, environ.get("gunicorn.socket"), timeout, min_rate)
        environ["wsgi.input"] = guard
        try:
            return inner(environ, start_response)
        finally:
            # The app has read what it reads; the connection's reader serves the next
            # request on it too.
            guard.unhook()

    app.wsgi_app = guarded


class GuardedInput:
    """``wsgi.input`` under a read timeout and a minimum average rate."""

    def __init__(self, stream, sock: socket.socket | None, timeout: float, min_rate: float):
        self.stream = stream
        self.sock = sock
        self.timeout = timeout
        self.min_rate = min_rate
        self.started: float | None = None
        self.received = 0
        self.unreader = self._hook(stream)

    def _hook(self, stream):
        """Count each ``recv`` of gunicorn's reader of this body (see the module's docstring)."""
        unreader = getattr(getattr(stream, "reader", None), "unreader", None)
        original = getattr(unreader, "chunk", None)
        if not callable(original) or not hasattr(unreader, "sock"):
            return None

        def chunk(size_hint=None):
            if self.started is None:
                self._start()
            data = original(size_hint)
            self._count(len(data))
            return data

        unreader.chunk = chunk
        return unreader

    def unhook(self) -> None:
        if self.unreader is not None:
            self.unreader.__dict__.pop("chunk", None)
            self.unreader = None

    def _start(self) -> None:
        self.started = time.monotonic()
        if self.sock is not None:
            try:
                # gunicorn's gthread worker makes the socket blocking again for each
                # request it reads, so this lasts for this request only.
                self.sock.settimeout(self.timeout)
            except OSError:
                pass

    def _count(self, n: int) -> None:
        self.received += n
        elapsed = time.monotonic() - self.started
        if n and elapsed > self.timeout and self.received < self.min_rate * elapsed:
            raise self._fail()

    def _fail(self) -> RequestTimeout:
        # gunicorn (27) closes a connection whose body failed instead of draining the
        # rest of it for its next request (it marks the body itself when the failure
        # comes from inside its reading).
        if hasattr(self.stream, "failed"):
            self.stream.failed = True
        return RequestTimeout(TOO_SLOW)

    def _read(self, method, *args) -> bytes:
        if self.started is None:
            self._start()
        try:
            data = method(*args)
        except (socket.timeout, TimeoutError):
            raise self._fail() from None
        if self.unreader is None:  # not gunicorn: count here
            self._count(len(data))
        return data

    def read(self, size: int | None = -1) -> bytes:
        return self._read(self.stream.read, -1 if size is None else size)

    def readline(self, size: int | None = -1) -> bytes:
        return self._read(self.stream.readline, -1 if size is None else size)

    def readlines(self, hint: int = -1) -> list[bytes]:
        lines = []
        while line := self.readline():
            lines.append(line)
        return lines

    def __iter__(self):
        return self

    def __next__(self) -> bytes:
        line = self.readline()
        if not line:
            raise StopIteration
        return line
