"""body_reading.py without a server: the rate rule on a stream that is not gunicorn's,
and the 408 the app answers (gunicorn's own reading: tests/test_slow_clients.py)."""

from __future__ import annotations

import io

import pytest
from werkzeug.exceptions import RequestTimeout

from vimeo_api import body_reading
from vimeo_api.body_reading import GuardedInput


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


class SlowStream(io.RawIOBase):
    """Gives ``per_read`` bytes a read, ``seconds`` apart (on the fake clock)."""

    def __init__(self, clock: Clock, per_read: int, seconds: float, total: int):
        self.clock, self.per_read, self.seconds, self.left = clock, per_read, seconds, total

    def read(self, size=-1):
        self.clock.now += self.seconds
        n = min(self.per_read, self.left)
        self.left -= n
        return b"x" * n


@pytest.fixture
def clock(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(body_reading.time, "monotonic", clock)
    return clock


def test_a_body_that_keeps_the_minimum_rate_is_read_whole(clock):
    guard = GuardedInput(SlowStream(clock, per_read=2000, seconds=1, total=100_000), None, timeout=5, min_rate=1000)
    assert sum(len(guard.read(65536)) for _ in range(50)) == 100_000


def test_a_body_below_the_minimum_rate_is_cut_off_once_the_timeout_passed(clock):
    guard = GuardedInput(SlowStream(clock, per_read=500, seconds=1, total=100_000), None, timeout=5, min_rate=1000)
    for _ in range(5):  # the first 5 seconds are free
        guard.read(65536)
    with pytest.raises(RequestTimeout):
        guard.read(65536)


class SlowBytes(io.BytesIO):
    """Bytes that take a second of the fake clock per read of at most 100."""

    def __init__(self, clock: Clock, data: bytes):
        super().__init__(data)
        self.clock = clock

    def read(self, size=-1):
        self.clock.now += 1
        return super().read(100 if size is None or size < 0 else min(size, 100))


def test_the_app_answers_408_json(make_app, clock):
    app = make_app(BODY_READ_TIMEOUT=5, BODY_MIN_RATE=1000)
    stream = SlowBytes(clock, b"x" * 10_000)
    answer = app.test_client().put("/vimeo/api/v1.0/upload/slow.bin", input_stream=stream,
                                   headers={"Content-Length": "10000"})
    assert answer.status_code == 408
    assert answer.get_json()["error"] == "Request Timeout"
