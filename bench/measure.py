"""What the benchmarks measure with: peak RSS of a process's children, the ``dd``
baseline for disk writes, fresh random upload sources, and wrk runs that report as one
JSON line."""

from __future__ import annotations

import contextlib
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


class ProcessMemory(threading.Thread):
    """The RSS of every process of the stack: each of ``roots`` (name → pid: a master, a
    process manager) and all its descendants, sampled every ``interval`` seconds while
    ``sampling()`` is entered; per process the peak and the mean over its samples.
    Processes are named by their root and, below it, by what they are (``describe``).

    It runs beside the load it measures, so it stays cheap: the process tree (a walk of
    /proc) is looked up again only every ``rescan`` samples or when a process is gone,
    each sample reads only each known process's memory."""

    def __init__(self, roots: dict[str, int], interval: float = 0.1, rescan: int = 20):
        super().__init__(daemon=True)
        self.roots, self.interval, self.rescan = roots, interval, rescan
        self.samples: dict[int, list[int]] = {}  # pid → RSS samples
        self.names: dict[int, str] = {}
        self.order: dict[int, tuple[int, int]] = {}  # pid → (root's index, 0 for the root itself)
        self.family: list[psutil.Process] = []
        self.since_scan = 0
        self.scanned_roots = 0  # how many roots the last scan saw (roots may be added later)
        self.active = threading.Event()
        self.done = threading.Event()
        self.lock = threading.Lock()

    @staticmethod
    def describe(root: str, proc: psutil.Process) -> str:
        """A child's name: nginx's process title (``worker``, ``cache manager``), else
        a worker (gunicorn, uvicorn), a pool process (Celery) or multiprocessing's
        resource tracker."""
        try:
            cmdline = " ".join(proc.cmdline()).strip()  # nginx pads its titles with spaces
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            cmdline = ""
        if cmdline.startswith("nginx: "):
            return f"{root} {cmdline.removeprefix('nginx: ').removesuffix(' process')}"
        if "resource_tracker" in cmdline:
            return f"{root} resource tracker"
        return f"{root} {'pool process' if 'celery' in root.lower() else 'worker'}"

    def _scan(self) -> None:
        family = []
        for index, (root, pid) in enumerate(list(self.roots.items())):
            try:
                parent = psutil.Process(pid)
                members = [(parent, True), *((child, False) for child in parent.children(recursive=True))]
            except psutil.NoSuchProcess:
                continue
            for proc, is_root in members:
                if proc.pid not in self.names:
                    name = f"{root} master" if is_root else self.describe(root, proc)
                    with self.lock:
                        self.samples[proc.pid] = []
                        self.names[proc.pid] = name
                        self.order[proc.pid] = (index, 0 if is_root else 1)
                family.append(proc)
        self.family, self.since_scan, self.scanned_roots = family, 0, len(self.roots)

    def _sample(self) -> None:
        if not self.family or self.since_scan >= self.rescan or len(self.roots) != self.scanned_roots:
            self._scan()
        self.since_scan += 1
        gone = False
        for proc in self.family:
            try:
                rss = proc.memory_info().rss
            except psutil.NoSuchProcess:
                gone = True
                continue
            with self.lock:
                self.samples[proc.pid].append(rss)
        if gone:
            self.since_scan = self.rescan

    def run(self) -> None:
        while not self.done.is_set():
            if self.active.wait(0.5) and not self.done.is_set():
                self._sample()
                time.sleep(self.interval)

    @contextlib.contextmanager
    def sampling(self):
        """Sample while inside."""
        self.active.set()
        try:
            yield
        finally:
            self.active.clear()

    def stop(self) -> None:
        self.done.set()
        self.active.set()
        self.join()

    def results(self) -> list[dict]:
        """One entry per process seen, in the order of ``roots`` (the root first): its
        root's name, its own, pid, samples, peak and mean RSS in bytes."""
        with self.lock:
            pids = sorted((pid for pid in self.samples if self.samples[pid]), key=lambda pid: (*self.order[pid], pid))
            roots = list(self.roots)
            return [{"root": roots[self.order[pid][0]], "name": self.names[pid], "pid": pid,
                     "samples": len(self.samples[pid]),
                     "peak": max(self.samples[pid]), "mean": sum(self.samples[pid]) / len(self.samples[pid])}
                    for pid in pids]


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
