"""What the benchmarks measure with: peak RSS of a process's children, the ``dd``
baseline for disk writes, and wrk runs that report as one JSON line."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from pathlib import Path

import psutil

MiB = 1024 * 1024

# wrk's done() hook: totals, non-2xx/3xx answers and latency percentiles as JSON.
WRK_REPORT = """
done = function(summary, latency, requests)
  io.write(string.format('{"requests": %d, "duration_us": %d, "bytes": %d, "non_2xx_3xx": %d, '
    .. '"errors": %d, "p50_ms": %.3f, "p99_ms": %.3f}\\n',
    summary.requests, summary.duration, summary.bytes, summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000))
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


def write_wrk_script(directory: Path) -> Path:
    script = directory / "report.lua"
    script.write_text(WRK_REPORT)
    return script


def wrk(url: str, duration: int, connections: int, script: Path, headers: dict | None = None) -> dict:
    """One wrk run on loopback; its JSON report plus ``rps``."""
    argv = ["wrk", f"-t{min(2, connections)}", f"-c{connections}", f"-d{duration}s", "--timeout", "30s",
            "-s", str(script)]
    for name, value in (headers or {}).items():
        argv += ["-H", f"{name}: {value}"]
    out = subprocess.run([*argv, url], capture_output=True, text=True, check=True).stdout
    report = json.loads(out.strip().splitlines()[-1])
    report["rps"] = report["requests"] / (report["duration_us"] / 1e6)
    return report
