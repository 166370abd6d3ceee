"""What the benchmarks measure with: peak RSS of a process's children, the ``dd``
baseline for disk writes, fresh random upload sources, and wrk runs that report as one
JSON line."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import threading
import time
from pathlib import Path

import psutil

MiB = 1024 * 1024

# wrk's done() hook: totals, non-2xx/3xx answers and latency percentiles as JSON. A script
# that counts more (see bench/suite.py's one-time downloads) defines ``report_more()``,
# returning more JSON members, each with a leading comma.
WRK_REPORT = """
done = function(summary, latency, requests)
  local more = ""
  if report_more then more = report_more() end
  io.write(string.format('{"requests": %d, "duration_us": %d, "bytes": %d, "non_2xx_3xx": %d, '
    .. '"errors": %d, "p50_ms": %.3f, "p99_ms": %.3f%s}\\n',
    summary.requests, summary.duration, summary.bytes, summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, more))
end
"""


class PeakRSS(threading.Thread):
    """The largest RSS seen of any child of ``pid`` (gunicorn's or nginx's workers),
    sampled every 10 ms until ``done`` is set."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.parent = psutil.Process(pid)
        self.peak = 0
        self.done = threading.Event()

    def run(self):
        while not self.done.is_set():
            for child in self.parent.children(recursive=True):
                try:
                    self.peak = max(self.peak, child.memory_info().rss)
                except psutil.NoSuchProcess:
                    pass
            time.sleep(0.01)

    def reset(self) -> None:
        self.peak = 0

    def stop(self) -> int:
        """Stop sampling; the peak."""
        self.done.set()
        self.join()
        return self.peak


def dd_seconds(directory: Path, size_mib: int) -> float:
    """Seconds ``dd`` takes to write and fsync ``size_mib`` MiB into ``directory``."""
    target = directory / "dd.bin"
    start = time.perf_counter()
    subprocess.run(
        ["dd", "if=/dev/zero", f"of={target}", "bs=1M", f"count={size_mib}", "conv=fsync"],
        check=True,
        capture_output=True,
    )
    elapsed = time.perf_counter() - start
    target.unlink()
    return elapsed


def make_source(path: Path, size: int) -> str:
    """``size`` fresh random bytes into ``path`` (no two runs share content, so nothing is
    deduplicated); their sha256."""
    digest = hashlib.sha256()
    with open(path, "wb") as out:
        left = size
        while left:
            chunk = os.urandom(min(8 * MiB, left))
            digest.update(chunk)
            out.write(chunk)
            left -= len(chunk)
    return digest.hexdigest()


def write_wrk_script(directory: Path, name: str = "report.lua", prelude: str = "") -> Path:
    """wrk's script: ``prelude`` (request/response hooks, report_more) and the report."""
    script = directory / name
    script.write_text(prelude + WRK_REPORT)
    return script


def wrk_threads(connections: int) -> int:
    return min(2, connections)


def wrk(url: str, duration: int, connections: int, script: Path, headers: dict | None = None,
        args: list[str] | None = None) -> dict:
    """One wrk run on loopback; its JSON report plus ``rps``. ``args`` go to the script's
    ``init(args)`` (as args[1], args[2]…)."""
    argv = ["wrk", f"-t{wrk_threads(connections)}", f"-c{connections}", f"-d{duration}s", "--timeout", "30s",
            "-s", str(script)]
    for name, value in (headers or {}).items():
        argv += ["-H", f"{name}: {value}"]
    out = subprocess.run([*argv, url, *(["--", *args] if args else [])], capture_output=True, text=True,
                         check=True).stdout
    report = json.loads(out.strip().splitlines()[-1])
    report["rps"] = report["requests"] / (report["duration_us"] / 1e6)
    return report
