#!/usr/bin/env python
"""Every benchmark scenario in one run, each as a ratio to a baseline measured in the same run.

    .venv/bin/python bench/suite.py [--duration 10] [--rounds 2] [--quick] [--write | --no-write]
    make bench                      # the same, full length (installs wrk when missing)

One private stack on free loopback ports, shaped as ``make stack`` runs it, on a
throwaway PostgreSQL database (dropped at the end) and a storage directory under var/:
gunicorn (gunicorn.conf.py's defaults, ``VIMEO_DELIVERY=accel``, the upload offload,
metadata cache and rate limits in Redis under a key prefix of the run's own, Prometheus
multiprocess metrics) and a Celery worker (on a redis-server of the run's own as broker)
behind nginx rendered from nginx.conf plus plain static locations on the blobs, and a
second gunicorn with ``VIMEO_DELIVERY=app`` (no nginx). The same nginx fronts the
baselines (bench/baselines/). Measured (wrk on loopback, 2 threads; each scenario's
answer is checked once, status and bytes, before it is timed), each wrk figure against
every baseline of its size (BASELINES): raw nginx static without an access log (the
limit) and with one, a minimal Flask app that only answers X-Accel-Redirect under the
same gunicorn configuration, a minimal FastAPI ``FileResponse`` app under uvicorn:

* 4 KiB: hot public (unlimited, no password), a published version, a password-protected
  file, a limited file (the app decides and counts every download), a token download,
  one-time files (a wrk script walks a list of files uploaded for the round, each
  request a first download; only 200s count; exactly-once checked after every run from
  nginx's access log and the database), a 304 revalidation, a cached 404; meanwhile the
  RSS of every process (ProcessMemory);
* 16 MiB: hot public, X-Accel via the app (a file whose download limit makes the app
  decide every request), the app sending the bytes itself;
* 1 GiB (64 MiB with --quick): downloads (curl, raw nginx static against hot public);
  uploads (curl -T through nginx with the offload, curl -T and curl -F to the app that
  writes the bytes itself) against ``dd conv=fsync`` of the same size on the same disk,
  with the app's peak RSS;
* the bytes in an S3 bucket (bench/s3.py: ``rclone serve s3`` and the stack on it, its
  own database): hot public 4 KiB against raw nginx static on local disk; 16 MiB through
  the stack from the bucket (the app decides each download, nginx proxies the store)
  and hot public 16 MiB (nginx's content cache), each against the S3 server's own GET
  of the same object; the large raw upload into the bucket against dd, with the app's
  peak RSS;
* the sweep of 100,000 expired files (10,000 with --quick) against the same end state
  reached by one plain SQL transaction and the unlinks (bench/sweep.py).

wrk scenarios run round-robin ``--rounds`` times, each after a 2 s warm-up, and keep each
one's best. A full run writes its table between ``<!-- bench:suite:begin -->`` and
``<!-- bench:suite:end -->`` in PERFORMANCE.md and draws bench/suite.png; a --quick run
only prints them (the chart goes to bench/results/) unless --write is given.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import requests
from sqlalchemy import create_engine, text

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.downloads import check, start_stack  # noqa: E402
from bench.harness import (  # noqa: E402
    API,
    Baselines,
    WrkScenario,
    create_database,
    delete_redis_keys,
    describe_machine,
    drop_database,
    machine,
    redis_env,
    run_rounds,
    settle,
    static_path,
    upload,
)
from bench.measure import (  # noqa: E402
    MiB,
    ProcessMemory,
    dd_seconds,
    make_source,
    wrk,
    wrk_threads,
    write_wrk_script,
)
from bench.s3 import start_s3_stack, upload_to_s3_through_nginx  # noqa: E402
from bench.sweep import sweep_against_plain_sql  # noqa: E402
from bench.upload_memory import UPLOADS, idle_rss, upload_to_app  # noqa: E402
from bench.tus_upload import tus_upload  # noqa: E402
from bench.upload_offload import upload_through_nginx  # noqa: E402
from deploy.stack import stop  # noqa: E402

PERFORMANCE = ROOT / "PERFORMANCE.md"
BEGIN, END = "<!-- bench:suite:begin -->", "<!-- bench:suite:end -->"
CHART = ROOT / "bench" / "suite.png"
RESULTS = ROOT / "bench" / "results"  # git-ignored: quick charts, the last run's JSON
KiB = 1024

# What every wrk scenario is measured against, each a column of the table (key → name),
# each measured at 4 KiB and at 16 MiB on the same blob bytes as the scenarios:
BASELINES = {
    "nolog": "raw nginx static, no log",  # the machine's limit: /static-nolog/, access_log off
    "logged": "raw nginx static, logged",  # /static/, with the access log every request gets
    "flask": "minimal Flask X-Accel",  # the Python-path limit (bench/baselines/flask_accel.py)
    "fastapi": "minimal FastAPI FileResponse",  # the seeds' style (bench/baselines/fastapi_file.py)
}
BASELINE_COLUMNS = {"nolog": "× nginx no log", "logged": "× nginx logged", "flask": "× Flask X-Accel",
                    "fastapi": "× FastAPI FileResponse"}

# The goals (issues 17 and earlier), judged from the figures of the run.
HOT_4K_GOAL = 0.5  # hot public 4 KiB: at least this × raw nginx static req/s (no log; and logged)
MIB16_GOAL = 0.9  # hot public 16 MiB: at least this × raw nginx static MB/s (no log; and logged)
ACCEL_16M_GOAL = 0.8  # app-decided 16 MiB (X-Accel): at least this × raw nginx static, no log
ACCEL_16M_LOGGED_GOAL = 0.9  # the earlier goal of the same: × raw nginx static, logged
PYTHON_PATH_GOAL = 0.5  # app-decided 4 KiB, 304, 404: at least this × the minimal Flask X-Accel handler
FASTAPI_GOAL = 1.0  # the same: more than this × the minimal FastAPI FileResponse app
ONE_TIME_GOAL = 1000  # one-time 4 KiB: first downloads per second
UPLOAD_RSS_GOAL = 100 * MiB  # 1 GiB upload: the app's peak RSS below this
TUS_CHUNK = 64 * MiB  # the tus upload's chunks (issue 15)
S3_16M_GOAL = 0.9  # issue 14: 16 MiB through the stack from S3, at least this × the S3 server's own GET
# Tokens are asked for with this lifetime: longer than any run.
TOKEN_EXPIRES_IN = 3600
# A download limit no run reaches, so the app decides every request: the largest the API
# takes (9 digits; 1,000,000,000 is refused with a 400).
LIMITED_DOWNLOADS = "999999999"

# One-time downloads: each wrk thread walks its own slice of a list of paths (one file
# per line, uploaded for this round), one request per path, and counts the 200 answers
# apart from the rest. A thread that reaches the end of its slice stops (wrk.thread:stop;
# at most a request or so more goes out, repeating its last path) and says after how
# many seconds: it would otherwise spin on cheap 410s and take the CPU from the others.
ONE_TIME_LUA = """
local threads = {}
local next_id = 0

function setup(thread)
  thread:set("id", next_id)
  next_id = next_id + 1
  table.insert(threads, thread)
end

function init(args)
  local nthreads = tonumber(args[2])
  paths = {}
  local i = 0
  for line in io.lines(args[1]) do
    if i % nthreads == id then paths[#paths + 1] = line end
    i = i + 1
  end
  pos = 0
  ok = 0
  other = 0
  out = 0
  out_after = -1
  started = os.time()
end

function request()
  pos = pos + 1
  if pos > #paths then
    if out == 0 then
      out = 1
      out_after = os.time() - started
      wrk.thread:stop()
    end
    pos = #paths
  end
  return wrk.format(nil, paths[pos], {["X-Bench-Path-Log"] = "1"})
end

function response(status, headers, body)
  if status == 200 then ok = ok + 1 else other = other + 1 end
end

function report_more()
  local total_ok, total_other, ran_out, first_out = 0, 0, 0, -1
  for _, thread in ipairs(threads) do
    total_ok = total_ok + thread:get("ok")
    total_other = total_other + thread:get("other")
    if thread:get("out") == 1 then
      ran_out = ran_out + 1
      local after = thread:get("out_after")
      if first_out < 0 or after < first_out then first_out = after end
    end
  end
  return string.format(', "ok": %d, "other": %d, "threads_ran_out": %d, "first_out_after_s": %d',
    total_ok, total_other, ran_out, first_out)
end
"""


@dataclass
class Goal:
    """A goal of the issue, judged from the figures of the run."""

    kind: str  # ">=" or ">": the ratio to the baseline ``against``; "rate>=": the figure; "rss<": the peak RSS
    value: float
    against: str = ""  # a key of BASELINES (the wrk rows), or the row's own baseline

    def text(self, row: "Row") -> str:
        if self.kind == "rate>=":
            return f"≥ {self.value:,.0f} {row.unit}"
        if self.kind == "rss<":
            return f"peak RSS < {self.value / MiB:.0f} MiB"
        return f"{'≥' if self.kind == '>=' else '>'} {self.value:g}× {baseline_label(self.against)}"

    def met(self, row: "Row") -> bool:
        if self.kind == "rate>=":
            return row.figure is not None and row.figure >= self.value
        if self.kind == "rss<":
            return row.peak_rss is not None and row.peak_rss < self.value
        ratio = row.ratio_to(self.against)
        return ratio is not None and (ratio >= self.value if self.kind == ">=" else ratio > self.value)

    def measured(self, row: "Row") -> str:
        if self.kind == "rate>=":
            return fmt_figure(row.figure, row.unit)
        if self.kind == "rss<":
            return "—" if row.peak_rss is None else f"{row.peak_rss / MiB:.1f} MiB"
        return f"{fmt_ratio(row.ratio_to(self.against))}×"


@dataclass
class Row:
    """One line of a table: a figure against its baselines' figures, all measured in the
    same run. The wrk rows have one baseline per column (``baselines``, keyed as
    BASELINES); ``baseline`` is the one the chart shows (its key there, else its name)."""

    group: str
    scenario: str
    baseline: str
    unit: str  # req/s, MB/s, files/s
    figure: float | None
    baseline_figure: float | None
    p99_ms: float | None = None
    peak_rss: int | None = None
    notes: str = ""
    goals: list[Goal] = field(default_factory=list)
    is_baseline: bool = False
    baselines: dict[str, float | None] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        return self.ratio_to(self.baseline)

    def ratio_to(self, key: str) -> float | None:
        base = self.baselines.get(key) if self.baselines else (self.baseline_figure if key == self.baseline else None)
        if not self.figure or not base:
            return None
        return self.figure / base

    def goal_states(self) -> list[tuple[str, bool, str]]:
        """Each goal in words, whether the figures meet it, and the figure it is judged on."""
        return [(goal.text(self), goal.met(self), goal.measured(self)) for goal in self.goals]


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def size_label(size: int) -> str:
    return f"{size // (1024 * MiB)} GiB" if size % (1024 * MiB) == 0 else f"{size // MiB} MiB"


def ask(url: str, headers: dict | None = None, method: str = "GET", until_hit: int = 3) -> requests.Response:
    """Warm a URL: up to ``until_hit`` requests until one answers ``X-Cache: HIT`` (nginx's
    fast path, or the app's metadata cache); the last answer."""
    for _ in range(until_hit):
        answer = requests.request(method, url, headers=headers or {}, timeout=120)
        if answer.headers.get("X-Cache") == "HIT":
            break
    return answer


def x_cache(answer: requests.Response) -> str:
    """What answered the check, when the answer says (nginx's fast path or the app's cache)."""
    value = answer.headers.get("X-Cache")
    return f"X-Cache: {value} on the check" if value else ""


def join(*parts: str) -> str:
    return "; ".join(part for part in parts if part)


# -- one-time downloads ------------------------------------------------------------------

class OneTime:
    """The one-time scenario's files: before each round, uploads enough fresh files (one
    download each) through nginx for the round to take only first downloads. The first
    round is sized by a 2 s probe over a first batch (which also warms the path up);
    later rounds by the best rate seen so far; ``margin`` times what the rate needs, plus
    100. The list is capped at what uploads in ``max_upload_seconds``.

    After every run over a list (the probes' included) ``verify`` checks exactly-once."""

    def __init__(self, base: str, work: Path, duration: int, connections: int, script: Path,
                 max_upload_seconds: float, *, db_url: str, access_log: Path, quiet: Callable[[], object],
                 probe_files: int = 600, margin: float = 2.0):
        self.base, self.work, self.duration = base, work, duration
        self.connections, self.script = connections, script
        self.max_upload_seconds, self.probe_files, self.margin = max_upload_seconds, probe_files, margin
        self.db_url, self.access_log, self.quiet = db_url, access_log, quiet
        self.rates: list[float] = []  # 200s per second seen
        self.upload_rate = 0.0
        self.lists: dict[int, int] = {}  # round → files in its list
        self.capped: dict[int, bool] = {}
        self.paths: dict[int, list[str]] = {}  # round → its list
        self.log_offsets: dict[int, int] = {}  # round → the access log's size before it
        self._local = threading.local()

    def _upload_one(self, i: int) -> str:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
        body = upload(self.base, os.urandom(4 * KiB), name=f"once-{i}.bin", session=session)
        return f"{API}/file/{body['filehash']}"

    def upload_list(self, count: int, name: str) -> tuple[Path, list[str]]:
        started = time.perf_counter()
        with ThreadPoolExecutor(4) as pool:
            paths = list(pool.map(self._upload_one, range(count)))
        elapsed = time.perf_counter() - started
        self.upload_rate = max(self.upload_rate, count / elapsed)
        listing = self.work / name
        listing.write_text("".join(path + "\n" for path in paths))
        log(f"  one-time: uploaded {count} files in {elapsed:.1f} s ({count / elapsed:.0f}/s, 4 threads)")
        return listing, paths

    def args(self, listing: Path) -> list[str]:
        return [str(listing), str(wrk_threads(self.connections))]

    def log_size(self) -> int:
        return self.access_log.stat().st_size if self.access_log.exists() else 0

    def prepare(self, round_: int) -> list[str]:
        if not self.rates:
            probe = self.probe_files
            for _ in range(3):
                listing, paths = self.upload_list(probe, f"one-time-probe-{probe}.txt")
                offset = self.log_size()
                report = wrk(self.base, 2, self.connections, self.script, None, self.args(listing))
                checked = self.verify(paths, report, offset)
                rate = report["ok"] / (report["duration_us"] / 1e6)
                log(f"  one-time probe: {report['ok']} first downloads in 2 s over {probe} files"
                    f"{' (ran out)' if report['threads_ran_out'] else ''}; {checked['summary']}")
                if not report["threads_ran_out"]:
                    break
                probe *= 3
            self.rates.append(rate)
        need = int(max(self.rates) * self.duration * self.margin) + 100
        cap = max(100, int(self.upload_rate * self.max_upload_seconds))
        self.capped[round_] = need > cap
        count = min(need, cap)
        self.lists[round_] = count
        listing, self.paths[round_] = self.upload_list(count, f"one-time-{round_}.txt")
        self.log_offsets[round_] = self.log_size()
        return self.args(listing)

    def after(self, report: dict) -> None:
        round_ = report["round"]
        report["threads"] = wrk_threads(self.connections)
        report["list"] = self.lists[round_]
        report["capped"] = self.capped[round_]
        report["exactly_once"] = self.verify(self.paths[round_], report, self.log_offsets[round_])
        log(f"  one-time round {round_}: {report['exactly_once']['summary']}")
        self.rates.append(report["figure"])

    def verify(self, paths: list[str], report: dict, offset: int) -> dict:
        """Exactly-once over one run of the list ``paths``, from nginx's log of them (the
        lines after ``offset``) and the database, once the stack has finished what wrk
        left in flight; raises AssertionError when it does not hold:

        * no path was answered 200 twice (no file served twice);
        * no file counts more than one download;
        * every path answered 200 counts its one download (nothing served unconsumed);
        * every file consumed without a 200 was asked for by a client that had gone
          (499: wrk closes its connections at the end with requests in flight, and the
          app may still consume those);
        * wrk's count of 200s is nginx's, less at most one request in flight per connection.

        So the number of files consumed equals the number of 200 answers, plus the
        requests wrk gave up on at its end."""
        self.quiet()
        wanted = set(paths)
        seen = report["ok"] + report["other"]
        deadline = time.monotonic() + 30
        while True:
            statuses = access_log_statuses(self.access_log, offset, wanted)
            logged = sum(len(codes) for codes in statuses.values())
            if logged >= seen:
                break
            if time.monotonic() > deadline:
                raise AssertionError(f"one-time: nginx logged {logged} requests of the list, wrk saw {seen} answers "
                                     f"(waited 30 s for {self.access_log})")
            time.sleep(0.1)
        downloads = file_downloads(self.db_url, [path.rsplit("/", 1)[1] for path in paths])
        served = {path for path, codes in statuses.items() if 200 in codes}
        twice = sorted(path for path, codes in statuses.items() if codes.count(200) > 1)
        missing = sorted(path for path in paths if path.rsplit("/", 1)[1] not in downloads)
        over = sorted(path for path in paths if downloads.get(path.rsplit("/", 1)[1], 0) > 1)
        consumed = {path for path in paths if downloads.get(path.rsplit("/", 1)[1]) == 1}
        unconsumed = sorted(path for path in served if downloads.get(path.rsplit("/", 1)[1], 0) < 1)
        gave_up = consumed - served
        unexplained = sorted(path for path in gave_up if 499 not in statuses.get(path, []))
        problems = []
        if twice:
            problems.append(f"{len(twice)} file(s) answered 200 more than once (e.g. {twice[:3]})")
        if missing:
            problems.append(f"{len(missing)} listed file(s) not in the database (e.g. {missing[:3]})")
        if over:
            problems.append(f"{len(over)} file(s) counting more than one download (e.g. {over[:3]})")
        if unconsumed:
            problems.append(f"{len(unconsumed)} file(s) answered 200 counting no download (e.g. {unconsumed[:3]})")
        if unexplained:
            problems.append(f"{len(unexplained)} file(s) counting a download without a 200 or a client that left "
                            f"(e.g. {unexplained[:3]}: {[statuses.get(path) for path in unexplained[:3]]})")
        if not report["ok"] <= len(served) <= report["ok"] + self.connections:
            problems.append(f"wrk counted {report['ok']} answers 200, nginx logged {len(served)} "
                            f"(expected at most {self.connections} more, the requests in flight at the end)")
        if problems:
            raise AssertionError("one-time downloads are not exactly-once: " + "; ".join(problems))
        return {"files": len(paths), "consumed": len(consumed), "served": len(served), "wrk_ok": report["ok"],
                "gave_up": len(gave_up),
                "summary": (f"exactly-once holds: {len(consumed):,} of {len(paths):,} files consumed, "
                            f"{len(served):,} answered 200 (wrk read {report['ok']:,}), none twice, "
                            f"{len(gave_up)} consumed for a client that had gone (499)")}


ACCESS_LINE = re.compile(r'"GET (\S+) HTTP/[0-9.]+" (\d{3}) ')


def access_log_statuses(path: Path, offset: int, wanted: set[str]) -> dict[str, list[int]]:
    """The statuses nginx logged (nginx.conf's ``vimeo`` format) for the GETs of the
    paths ``wanted``, from the complete lines after byte ``offset``."""
    with open(path, "rb") as log_file:
        log_file.seek(offset)
        data = log_file.read()
    statuses: dict[str, list[int]] = {}
    for line in data[: data.rfind(b"\n") + 1].decode(errors="replace").splitlines():
        found = ACCESS_LINE.search(line)
        if found and found.group(1) in wanted:
            statuses.setdefault(found.group(1), []).append(int(found.group(2)))
    return statuses


def file_downloads(db_url: str, filehashes: list[str]) -> dict[str, int]:
    """filehash → its downloads count in the database."""
    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT filehash, downloads FROM files WHERE filehash = ANY(:hashes)"),
                                {"hashes": filehashes}).all()
    finally:
        engine.dispose()
    return {filehash: downloads for filehash, downloads in rows}


def one_time_notes(report: dict) -> str:
    note = (f"{report['ok']:,} answers 200, {report['other']:,} other, {report['errors']} socket errors; "
            f"list of {report['list']:,} files")
    if report["threads_ran_out"]:
        note += (f", which ran out: {report['threads_ran_out']} of {report['threads']} wrk threads reached the end "
                 f"of their slice (the first after about {report['first_out_after_s']} s of "
                 f"{report['duration_us'] / 1e6:.0f}) and stopped, so the 200 rate, taken over the whole run, "
                 f"understates")
        if report["capped"]:
            note += "; the list was capped by the upload time allowed"
    return f"{note}; {report['exactly_once']['summary']}"


# -- the run -----------------------------------------------------------------------------

def baseline_label(key: str) -> str:
    return BASELINES.get(key, key)


def app_decided_goals() -> list[Goal]:
    """Issue 17's goals of the answers the app decides (password, limited, token, 304, 404)."""
    return [Goal(">=", PYTHON_PATH_GOAL, "flask"), Goal(">", FASTAPI_GOAL, "fastapi")]


def wrk_rows(stack, work: Path, args, db_url: str, procs: list, memory: ProcessMemory,
             size_4k: int, size_16m: int) -> list[Row]:
    """Upload the files, start the baseline apps, check every scenario's answer once, run
    wrk round-robin (memory sampled during the 4 KiB ones)."""
    c4, c16 = args.connections
    script = write_wrk_script(work)
    walk = write_wrk_script(work, "one-time.lua", ONE_TIME_LUA)
    nginx = stack.nginx
    notes: dict[str, str] = {}
    scenarios: list[WrkScenario] = []
    meta: dict[str, dict] = {}
    labels = {size_4k: "4 KiB", size_16m: "16 MiB"}

    def add(name, url, content, connections, size, primary="nolog", *, headers=None, status=200, check_answer=None,
            goals=(), baseline_of=None, **extra):
        answer = check_answer or check(name, url, content, status, headers)
        notes[name] = x_cache(answer)
        meta[name] = {"size": size, "primary": baseline_of or primary, "goals": list(goals), "status": status,
                      "baseline_of": baseline_of}
        scenarios.append(WrkScenario(name, url, connections, extra.pop("script", script), headers or {}, **extra))

    def add_baselines(size: int, content: bytes, sha256: str, blob_name: str, connections: int) -> None:
        urls = {
            "nolog": nginx + static_path(sha256, logged=False),
            "logged": nginx + static_path(sha256),
            "flask": nginx + Baselines.path(Baselines.FLASK, blob_name),
            "fastapi": nginx + Baselines.path(Baselines.FASTAPI, blob_name),
        }
        for key, url in urls.items():
            add(f"{BASELINES[key]} {labels[size]}", url, content, connections, size, baseline_of=key)

    # The public files first: their blobs are the ones the baselines answer.
    public = os.urandom(size_4k)
    up = upload(nginx, public, {"X-Max-Downloads": "0"}, name="public.bin")
    big = os.urandom(size_16m)
    up16 = upload(nginx, big, {"X-Max-Downloads": "0"}, name="public16.bin")
    stack.baselines.start(work, stack.storage, stack.accel_env, {"4k": up["sha256"], "16m": up16["sha256"]}, procs)
    memory.roots.update({"gunicorn (Flask baseline)": stack.baselines.procs[Baselines.FLASK].pid,
                         "uvicorn (FastAPI baseline)": stack.baselines.procs[Baselines.FASTAPI].pid})

    # 4 KiB
    add_baselines(size_4k, public, up["sha256"], "4k", c4)
    hot_url = f"{nginx}{API}/file/{up['filehash']}"
    ask(hot_url, method="HEAD")
    add("hot public 4 KiB", hot_url, public, c4, size_4k,
        goals=[Goal(">=", HOT_4K_GOAL, "nolog"), Goal(">=", HOT_4K_GOAL, "logged")])

    published = os.urandom(size_4k)
    owned = upload(nginx, published, {"X-Max-Downloads": "0"}, name="published.bin")
    answer = requests.post(f"{nginx}{API}/file/{owned['filehash']}/versions",
                           headers={"X-Owner-Token": owned["owner_token"]}, timeout=60)
    if answer.status_code != 201 or "/v/" not in answer.json().get("url", ""):
        raise AssertionError(f"publishing a version: HTTP {answer.status_code} {answer.text[:300]}")
    version_url = answer.json()["url"]
    ask(version_url, method="HEAD")
    add("published version 4 KiB", version_url, published, c4, size_4k)

    secret = secrets.token_urlsafe(12)
    protected = os.urandom(size_4k)
    up_pw = upload(nginx, protected, {"X-Max-Downloads": "0", "X-Password": secret}, name="password.bin")
    pw_url = f"{nginx}{API}/file/{up_pw['filehash']}"
    check("password 4 KiB (no password)", pw_url, None, 401)
    ask(pw_url, {"X-Password": secret})
    add("password 4 KiB", pw_url, protected, c4, size_4k, "flask", headers={"X-Password": secret},
        goals=app_decided_goals())

    limited = os.urandom(size_4k)
    up_lim4 = upload(nginx, limited, {"X-Max-Downloads": LIMITED_DOWNLOADS}, name="limited.bin")
    limited_url = f"{nginx}{API}/file/{up_lim4['filehash']}"
    ask(limited_url)
    add("limited 4 KiB", limited_url, limited, c4, size_4k, "flask", goals=app_decided_goals())

    tokened = os.urandom(size_4k)
    up_tok = upload(nginx, tokened, {"X-Max-Downloads": LIMITED_DOWNLOADS}, name="token.bin")
    answer = requests.post(f"{nginx}{API}/file/{up_tok['filehash']}/tokens", json={"expires_in": TOKEN_EXPIRES_IN},
                           headers={"X-Owner-Token": up_tok["owner_token"]}, timeout=60)
    if answer.status_code != 201 or "/t/" not in answer.json().get("url", ""):
        raise AssertionError(f"asking for a token: HTTP {answer.status_code} {answer.text[:300]}")
    token_url = answer.json()["url"]
    ask(token_url)
    add("token 4 KiB", token_url, tokened, c4, size_4k, "flask", goals=app_decided_goals())

    once = os.urandom(size_4k)
    up_once = upload(nginx, once, name="once.bin")
    once_url = f"{nginx}{API}/file/{up_once['filehash']}"
    first = check("one-time 4 KiB", once_url, once)
    check("one-time 4 KiB (second download)", once_url, None, 410)

    def quiet() -> None:
        waited = settle([stack.accel_gunicorn.pid, stack.app_gunicorn.pid, stack.nginx_proc.pid,
                         *(proc.pid for proc in stack.baselines.procs.values())])
        if waited > 1:
            log(f"  (waited {waited:.1f} s for the stack to finish the requests wrk left in flight)")

    one_time = OneTime(nginx, work, args.duration, c4, walk, max_upload_seconds=90 if not args.quick else 20,
                       db_url=db_url, access_log=stack.log_dir / "bench-paths.log", quiet=quiet)
    add("one-time 4 KiB", nginx, once, c4, size_4k, "flask", check_answer=first, script=walk,
        prepare=one_time.prepare, warmup=False, after=one_time.after,
        figure=lambda report: report["ok"] / (report["duration_us"] / 1e6), goals=[Goal("rate>=", ONE_TIME_GOAL)])
    notes["one-time 4 KiB"] = "each request a first download"

    revalidate = {"If-None-Match": up["etag"]}
    ask(hot_url, revalidate)
    add("304 revalidation 4 KiB", hot_url, b"", c4, size_4k, "flask", headers=revalidate, status=304,
        goals=app_decided_goals())

    unknown = f"{nginx}{API}/file/{secrets.token_hex(16)}"
    ask(unknown)
    add("cached 404", unknown, None, c4, size_4k, "flask", status=404, goals=app_decided_goals())

    # 16 MiB
    add_baselines(size_16m, big, up16["sha256"], "16m", c16)
    hot16 = f"{nginx}{API}/file/{up16['filehash']}"
    ask(hot16, method="HEAD")
    add("hot public 16 MiB", hot16, big, c16, size_16m,
        goals=[Goal(">=", MIB16_GOAL, "nolog"), Goal(">=", MIB16_GOAL, "logged")])
    big_limited = os.urandom(size_16m)
    up_lim = upload(nginx, big_limited, {"X-Max-Downloads": LIMITED_DOWNLOADS}, name="limited16.bin")
    add("X-Accel via app 16 MiB", f"{nginx}{API}/file/{up_lim['filehash']}", big_limited, c16, size_16m,
        goals=[Goal(">=", ACCEL_16M_GOAL, "nolog"), Goal(">=", ACCEL_16M_LOGGED_GOAL, "logged")])
    add("app sends 16 MiB", f"{stack.app}{API}/file/{up16['filehash']}", big, c16, size_16m)

    def describe(scenario, report):
        size = meta[scenario.key]["size"]
        figure = report["figure"]
        return (f"{scenario.key:<36} {figure:>9,.0f} req/s {figure * size / 1e6:>8,.1f} MB/s  "
                f"p99 {report['p99_ms']:.1f} ms  non-2xx/3xx {report['non_2xx_3xx']}  errors {report['errors']}")

    def during(scenario):
        return memory.sampling() if meta[scenario.key]["size"] == size_4k else contextlib.nullcontext()

    best = run_rounds(scenarios, args.rounds, args.duration, describe, quiet, during)
    rows = []
    for scenario in scenarios:
        name, report, info = scenario.key, best[scenario.key], meta[scenario.key]
        mb = info["size"] >= MiB
        unit = "MB/s" if mb else "req/s"
        scale = info["size"] / 1e6 if mb else 1
        figures = {key: best[f"{label} {labels[info['size']]}"]["figure"] * scale for key, label in BASELINES.items()}
        if name == "one-time 4 KiB":
            note = one_time_notes(report)
        elif info["status"] == 404:
            note = join(f"{report['non_2xx_3xx']:,} of {report['requests']:,} answers 404 as expected, "
                        f"{report['errors']} socket errors", notes[name])
        else:
            note = join(f"non-2xx/3xx {report['non_2xx_3xx']:,}, socket errors {report['errors']}", notes[name])
        if mb:
            note = f"{report['figure']:,.1f} req/s; " + note
        rows.append(Row(
            group="16 MiB" if mb else "4 KiB", scenario=name, baseline=info["primary"], unit=unit,
            figure=report["figure"] * scale, baseline_figure=figures[info["primary"]],
            p99_ms=report["p99_ms"], notes=note, goals=info["goals"], is_baseline=info["baseline_of"] is not None,
            baselines=figures,
        ))
    return rows


def curl_download(url: str, size: int) -> float:
    """Seconds curl takes to download ``url`` (to /dev/null), which must be 200 and ``size`` bytes."""
    out = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code} %{size_download} %{time_total}", url],
                         check=True, capture_output=True, text=True).stdout.split()
    if int(out[0]) != 200 or int(out[1]) != size:
        raise AssertionError(f"{url}: HTTP {out[0]}, {out[1]} bytes (expected 200, {size})")
    return float(out[2])


def check_big(name: str, url: str, size: int, sha256: str) -> requests.Response:
    """A large download checked by its length and SHA-256, streamed."""
    digest, length = hashlib.sha256(), 0
    with requests.get(url, stream=True, timeout=600) as answer:
        for chunk in answer.iter_content(8 * MiB):
            digest.update(chunk)
            length += len(chunk)
    if answer.status_code != 200 or length != size or digest.hexdigest() != sha256:
        raise AssertionError(f"{name}: HTTP {answer.status_code}, {length} bytes (expected 200, {size}, same sha256)")
    return answer


def big_rows(stack, work: Path, size: int, downloads: int) -> list[Row]:
    """The large file: uploaded through nginx with the offload (against dd), downloaded
    (raw nginx static against hot public), then uploaded to the app itself, raw and
    multipart (each against its own dd)."""
    label, mib = size_label(size), size // MiB
    dd_name = f"dd conv=fsync {label}, same disk"
    rows = []
    source = work / "source.bin"

    def fresh_source_and_dd() -> tuple[str, float]:
        sha = make_source(source, size)
        subprocess.run(["sync"], check=True)
        return sha, size / dd_seconds(stack.storage, mib) / 1e6

    def rss_note(result_peak: int, idle: int) -> str:
        return f"idle worker {idle / MiB:.1f} MiB, peak +{(result_peak - idle) / MiB:.1f} MiB"

    # Upload through nginx (offload): the file the downloads then use.
    idle_accel = idle_rss(stack.accel_gunicorn.pid)
    sha, dd = fresh_source_and_dd()
    log(f"  {label} upload through nginx (offload) ...")
    offload = upload_through_nginx(stack.nginx, source, sha, stack.storage, stack.accel_gunicorn.pid,
                                   stack.nginx_proc.pid, {"X-Max-Downloads": "0"})
    log(f"  {label} upload through nginx (offload): {offload['mbps']:.0f} MB/s, dd {dd:.0f} MB/s")
    offload_row = Row(f"{label} upload", f"raw upload through nginx (offload) {label}", dd_name, "MB/s",
                      offload["mbps"], dd, peak_rss=offload["app_peak"], goals=[Goal("rss<", UPLOAD_RSS_GOAL)],
                      notes=f"curl -T, {offload['seconds']:.2f} s; gunicorn {rss_note(offload['app_peak'], idle_accel)}; "
                            f"nginx worker peak {offload['nginx_peak'] / MiB:.1f} MiB")

    # Downloads of that file.
    body = offload["body"]
    static_url = stack.nginx + static_path(body["sha256"])
    hot_url = f"{stack.nginx}{API}/file/{body['filehash']}"
    check_big(f"raw nginx static {label}", static_url, size, sha)
    ask(hot_url, method="HEAD")
    hot_answer = check_big(f"hot public {label}", hot_url, size, sha)
    seconds = {"static": [], "hot": []}
    for attempt in range(1, downloads + 1):
        for key, url in (("static", static_url), ("hot", hot_url)):
            seconds[key].append(curl_download(url, size))
        log(f"  {label} download {attempt}: static {size / seconds['static'][-1] / 1e6:,.0f} MB/s, "
            f"hot public {size / seconds['hot'][-1] / 1e6:,.0f} MB/s")
    static_name = f"raw nginx static {label}"
    best_static, best_hot = size / min(seconds["static"]) / 1e6, size / min(seconds["hot"]) / 1e6
    rows.append(Row(f"{label} download", static_name, static_name, "MB/s", best_static, best_static,
                    notes=f"curl, best of {downloads}: {min(seconds['static']):.2f} s", is_baseline=True))
    rows.append(Row(f"{label} download", f"hot public {label}", static_name, "MB/s", best_hot, best_static,
                    notes=join(f"curl, best of {downloads}: {min(seconds['hot']):.2f} s", x_cache(hot_answer))))
    rows.append(offload_row)
    offload["stored"].unlink()

    # The same size as a resumable (tus) upload in 64 MiB chunks through the same nginx
    # (issue 15): against dd, and against the raw PUT just measured.
    sha, dd = fresh_source_and_dd()
    log(f"  {label} tus upload through nginx in {TUS_CHUNK // MiB} MiB chunks ...")
    tus = tus_upload(stack.nginx, source, sha, TUS_CHUNK, stack.accel_gunicorn.pid)
    log(f"  {label} tus upload: {tus['mbps']:.0f} MB/s, dd {dd:.0f} MB/s, last chunk {tus['last_chunk']:.2f} s")
    tus_name = f"tus upload through nginx {label}, {TUS_CHUNK // MiB} MiB chunks"
    tus_notes = (f"tuspy's way (POST, then a PATCH per chunk read into memory), {tus['seconds']:.2f} s; last "
                 f"chunk's answer {tus['last_chunk']:.2f} s; gunicorn {rss_note(tus['app_peak'], idle_accel)}")
    rows.append(Row(f"{label} upload", tus_name, dd_name, "MB/s", tus["mbps"], dd, peak_rss=tus["app_peak"],
                    goals=[Goal("rss<", UPLOAD_RSS_GOAL)], notes=tus_notes))
    rows.append(Row(f"{label} upload", f"{tus_name} (against one raw PUT)",
                    f"raw upload through nginx (offload) {label}", "MB/s", tus["mbps"], offload["mbps"],
                    notes="the raw PUT's figure is the row above's, same run"))
    stored = stack.storage / "blobs" / sha[:2] / sha[2:4] / sha
    stored.unlink(missing_ok=True)

    # Uploads the app writes itself (gunicorn with DELIVERY=app, no nginx, no offload).
    idle_app = idle_rss(stack.app_gunicorn.pid)
    for kind, (how, _args) in UPLOADS.items():
        sha, dd = fresh_source_and_dd()
        log(f"  {label} {how} to the app ...")
        result = upload_to_app(stack.app + API, kind, source, stack.app_gunicorn.pid, sha)
        log(f"  {label} {how} to the app: {result['mbps']:.0f} MB/s, dd {dd:.0f} MB/s")
        rows.append(Row(f"{label} upload", f"{kind} upload to the app {label}", dd_name, "MB/s", result["mbps"], dd,
                        peak_rss=result["peak"], goals=[Goal("rss<", UPLOAD_RSS_GOAL)],
                        notes=f"{how.split('(')[-1].rstrip(')')}, {result['seconds']:.2f} s; "
                              f"gunicorn {rss_note(result['peak'], idle_app)}"))
        stored = stack.storage / "blobs" / sha[:2] / sha[2:4] / sha
        stored.unlink(missing_ok=True)
    source.unlink()
    return rows


def s3_rows(stack, work: Path, args, procs: list, big: int, env: dict) -> list[Row]:
    """The stack with its bytes in a bucket (bench/s3.py, issue 14), beside the local stack
    of the same run: hot public 4 KiB (nginx's fast path and content cache) against raw
    nginx static of a 4 KiB blob on local disk; 16 MiB through the stack from the bucket
    (a file the app decides every download of, so nginx proxies the store every time)
    and hot public 16 MiB, against the S3 server's own GET of the same object (its
    presigned URL); the large raw upload through nginx into the bucket against dd."""
    c4, c16 = args.connections
    # A database of its own: the bucket's blobs are not the local stack's.
    s3_db = create_database()
    s3 = start_s3_stack(work, s3_db, procs, env, max_body_size=max(2 * big, 64 * MiB))
    log(f"suite: S3 stack: nginx {s3.nginx} → gunicorn, bucket on {s3.server.endpoint_url}")
    script = write_wrk_script(work, "s3.lua")
    try:
        local = os.urandom(4 * KiB)
        up_local = upload(stack.nginx, local, {"X-Max-Downloads": "0"}, name="s3-baseline.bin")
        small = os.urandom(4 * KiB)
        up_small = upload(s3.nginx, small, {"X-Max-Downloads": "0"}, name="hot4k.bin")
        big16 = os.urandom(16 * MiB)
        up_lim = upload(s3.nginx, big16, {"X-Max-Downloads": LIMITED_DOWNLOADS}, name="limited16.bin")
        pub16 = os.urandom(16 * MiB)
        up_pub = upload(s3.nginx, pub16, {"X-Max-Downloads": "0"}, name="public16.bin")
        urls = {
            "raw nginx static, no log 4 KiB (local disk)": (stack.nginx + static_path(up_local["sha256"], logged=False),
                                                            local, c4),
            "S3: hot public 4 KiB": (f"{s3.nginx}{API}/file/{up_small['filehash']}", small, c4),
            "S3 server's own GET 16 MiB": (s3.presigned(up_lim["sha256"]), big16, c16),
            "S3: X-Accel via app 16 MiB": (f"{s3.nginx}{API}/file/{up_lim['filehash']}", big16, c16),
            "S3 server's own GET, public 16 MiB": (s3.presigned(up_pub["sha256"]), pub16, c16),
            "S3: hot public 16 MiB": (f"{s3.nginx}{API}/file/{up_pub['filehash']}", pub16, c16),
        }
        notes = {}
        for name, (url, content, _connections) in urls.items():
            if "hot public" in name:
                ask(url, method="HEAD")
                ask(url)
            notes[name] = x_cache(check(name, url, content))
        scenarios = [WrkScenario(name, url, connections, script) for name, (url, _c, connections) in urls.items()]
        sizes = {name: len(content) for name, (_u, content, _c) in urls.items()}

        def describe(scenario, report):
            return (f"{scenario.key:<44} {report['figure']:>9,.0f} req/s "
                    f"{report['figure'] * sizes[scenario.key] / 1e6:>8,.1f} MB/s  p99 {report['p99_ms']:.1f} ms  "
                    f"non-2xx/3xx {report['non_2xx_3xx']}  errors {report['errors']}")

        best = run_rounds(scenarios, args.rounds, args.duration, describe)
        rows = []
        pairs = {
            "raw nginx static, no log 4 KiB (local disk)": (None, []),
            "S3: hot public 4 KiB": ("raw nginx static, no log 4 KiB (local disk)", []),
            "S3 server's own GET 16 MiB": (None, []),
            "S3: X-Accel via app 16 MiB": ("S3 server's own GET 16 MiB", [Goal(">=", S3_16M_GOAL, "S3 server's own GET 16 MiB")]),
            "S3 server's own GET, public 16 MiB": (None, []),
            "S3: hot public 16 MiB": ("S3 server's own GET, public 16 MiB", []),
        }
        for name, (baseline, goals) in pairs.items():
            mb = sizes[name] >= MiB
            scale = sizes[name] / 1e6 if mb else 1
            report = best[name]
            base = best[baseline or name]["figure"] * scale
            note = join(f"{report['figure']:,.1f} req/s" if mb else "",
                        f"non-2xx/3xx {report['non_2xx_3xx']:,}, socket errors {report['errors']}", notes[name])
            rows.append(Row("S3", name, baseline or name, "MB/s" if mb else "req/s", report["figure"] * scale, base,
                            p99_ms=report["p99_ms"], notes=note, goals=goals, is_baseline=baseline is None))

        # The large upload, through nginx (the offload) into the bucket, against dd.
        label, source = size_label(big), work / "s3-source.bin"
        sha = make_source(source, big)
        subprocess.run(["sync"], check=True)
        dd = big / dd_seconds(s3.scratch, big // MiB) / 1e6
        idle = idle_rss(s3.gunicorn_proc.pid)
        log(f"  {label} upload through nginx into the bucket ...")
        result = upload_to_s3_through_nginx(s3, source, sha, {"X-Max-Downloads": "0"})
        log(f"  {label} upload into the bucket: {result['mbps']:.0f} MB/s, dd {dd:.0f} MB/s, "
            f"gunicorn peak {result['app_peak'] / MiB:.1f} MiB")
        source.unlink()
        rows.append(Row("S3", f"raw upload through nginx into the bucket {label}", f"dd conv=fsync {label}, same disk",
                        "MB/s", result["mbps"], dd, peak_rss=result["app_peak"], goals=[Goal("rss<", UPLOAD_RSS_GOAL)],
                        notes=(f"curl -T, {result['seconds']:.2f} s: nginx writes the body to the node's disk, the "
                               f"app streams it into the bucket in 8 MiB parts (rclone writes them to the same disk), "
                               f"then the store copies it to its content address; gunicorn idle worker "
                               f"{idle / MiB:.1f} MiB, peak +{(result['app_peak'] - idle) / MiB:.1f} MiB; nginx worker "
                               f"peak {result['nginx_peak'] / MiB:.1f} MiB")))
        return rows
    finally:
        for proc in (s3.nginx_proc, s3.gunicorn_proc, s3.server.proc):
            stop(proc)
        drop_database(s3_db)


def sweep_rows(files: int) -> list[Row]:
    log(f"  sweep of {files:,} expired files, then the plain SQL baseline ...")
    result = sweep_against_plain_sql(files)
    sweep, plain = result["sweep"], result["plain"]
    phases = sweep["phases"]
    return [Row(
        "sweep", f"sweep {files:,} expired files", "one plain SQL transaction + unlinks", "files/s",
        files / sweep["elapsed"], files / plain["elapsed"], peak_rss=sweep["peak_rss"],
        notes=(f"sweep {sweep['elapsed']:.1f} s (expire {phases['expire']:.1f} s, release {phases['release']:.1f} s), "
               f"RSS {sweep['rss_before'] / MiB:.0f} MiB before; baseline {plain['elapsed']:.1f} s "
               f"(SQL {plain['sql_seconds']:.1f} s, unlinks {plain['unlink_seconds']:.1f} s, 8 in flight)"),
    )]


# -- the report --------------------------------------------------------------------------

def fmt_figure(value: float | None, unit: str) -> str:
    if value is None:
        return "—"
    if unit == "MB/s" and value < 100:
        return f"{value:,.1f} {unit}"
    return f"{value:,.0f} {unit}"


def fmt_ratio(ratio: float | None) -> str:
    """Two decimals, or two significant digits below 0.1 (0.038, 0.00042)."""
    if ratio is None:
        return "—"
    if ratio >= 0.1:
        return f"{ratio:.2f}"
    return f"{ratio:.{1 - math.floor(math.log10(ratio))}f}"


def goals_text(row: Row) -> str:
    return "<br>".join(f"{words}: **{'met' if met else 'not met'}**" for words, met, _ in row.goal_states())


def wrk_table(rows: list[Row]) -> str:
    """The wrk scenarios: each figure with its ratio to every baseline of its size."""
    lines = ["| scenario | figure | p99 | " + " | ".join(BASELINE_COLUMNS.values()) + " | goals | notes |",
             "|---|---:|---:|" + "---:|" * len(BASELINE_COLUMNS) + "---|---|"]
    for row in rows:
        ratios = []
        for key in BASELINE_COLUMNS:
            own = row.is_baseline and row.baseline == key
            ratios.append("**1.00** (itself)" if own else fmt_ratio(row.ratio_to(key)))
        scenario = f"**{row.scenario}** (baseline)" if row.is_baseline else row.scenario
        lines.append(f"| {scenario} | {fmt_figure(row.figure, row.unit)} | "
                     f"{'' if row.p99_ms is None else f'{row.p99_ms:,.1f} ms'} | {' | '.join(ratios)} | "
                     f"{goals_text(row)} | {row.notes} |")
    return "\n".join(lines)


def table(rows: list[Row]) -> str:
    """The other scenarios, each against its own baseline."""
    lines = ["| scenario | baseline | figure | baseline figure | ratio | peak RSS | goal | notes |",
             "|---|---|---:|---:|---:|---:|---|---|"]
    for row in rows:
        extra = "" if row.peak_rss is None else f"{row.peak_rss / MiB:.1f} MiB"
        ratio = "1.00 (baseline)" if row.is_baseline else fmt_ratio(row.ratio)
        lines.append(f"| {row.scenario} | {'—' if row.is_baseline else row.baseline} | "
                     f"{fmt_figure(row.figure, row.unit)} | {fmt_figure(row.baseline_figure, row.unit)} | "
                     f"{ratio} | {extra} | {goals_text(row)} | {row.notes} |")
    return "\n".join(lines)


def memory_table(processes: list[dict]) -> str:
    """Every process's RSS while the 4 KiB scenarios ran."""
    lines = ["| process | pid | peak RSS | mean RSS | samples |", "|---|---:|---:|---:|---:|"]
    groups: dict[str, list[dict]] = {}
    for proc in processes:
        groups.setdefault(proc["root"], []).append(proc)
    for root, members in groups.items():
        for proc in members:
            lines.append(f"| {proc['name']} | {proc['pid']} | {proc['peak'] / MiB:,.1f} MiB | "
                         f"{proc['mean'] / MiB:,.1f} MiB | {proc['samples']:,} |")
        # The sum of the peaks bounds the group's peak (they need not coincide).
        lines.append(f"| *{root}: {len(members)} processes together* | | ≤ {sum(p['peak'] for p in members) / MiB:,.1f} MiB | "
                     f"{sum(p['mean'] for p in members) / MiB:,.1f} MiB | |")
    return "\n".join(lines)


def goals_summary(rows: list[Row]) -> list[str]:
    lines = []
    for row in rows:
        for words, met, measured in row.goal_states():
            lines.append(f"* {row.scenario}: {words}: **{'met' if met else 'not met'}** ({measured})")
    return lines


def chart(rows: list[Row], path: Path, title: str) -> None:
    """Horizontal bars of each scenario's ratio to its main baseline (log scale; the colour
    says which: raw nginx with no log for what nginx sends, the minimal Flask X-Accel
    handler for what the app decides), a line at 1.0 and a marker at each goal (one against
    another baseline, FastAPI's, or in req/s, put on the bar's scale from the figures)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch
    from matplotlib.ticker import FixedLocator, NullLocator

    shown = [row for row in rows if not row.is_baseline and row.ratio]
    palette = ["#4c72b0", "#55a868", "#dd8452", "#c44e52", "#8172b2", "#937860"]
    colours: dict[str, str] = {}
    for row in shown:
        colours.setdefault(row.baseline, palette[len(colours) % len(palette)])
    fig, ax = plt.subplots(figsize=(9, 0.3 * len(shown) + 2.4), dpi=100)
    ys = list(range(len(shown)))[::-1]
    ratios = [row.ratio for row in shown]
    ax.barh(ys, ratios, color=[colours[row.baseline] for row in shown], height=0.65)
    ax.set_xscale("log")
    low = 10 ** math.floor(math.log10(min(min(ratios), 0.05) / 1.5))
    high = max(max(ratios) * 2, 2.0)
    ax.set_xlim(low, high)
    ticks = [t for t in (0.0001, 0.001, 0.01, 0.1, 0.5, 1, 2, 5, 10) if low <= t <= high]
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticklabels([f"{t:g}×" for t in ticks], fontsize=8)
    ax.set_yticks(ys)
    ax.set_yticklabels([row.scenario for row in shown], fontsize=8)
    ax.axvline(1.0, color="black", linewidth=1)
    for y, row in zip(ys, shown):
        right = row.ratio
        for goal in row.goals:
            if goal.kind in (">=", ">") and goal.against == row.baseline:
                ax.plot([goal.value, goal.value], [y - 0.45, y + 0.45], color="#d62728", linewidth=2.5)
                right = max(right, goal.value)
                continue
            # A goal against another baseline (FastAPI's) or a rate, put on this bar's scale.
            if not row.baseline_figure or goal.kind == "rss<":
                continue
            if goal.kind == "rate>=":
                at = goal.value / row.baseline_figure
            elif row.baselines.get(goal.against):
                at = goal.value * row.baselines[goal.against] / row.baseline_figure
            else:
                continue
            ax.plot([at, at], [y - 0.45, y + 0.45], color="#7f3fbf", linewidth=2, linestyle=(0, (2, 1)))
            right = max(right, at)
        ax.text(right * 1.1, y, f"{fmt_ratio(row.ratio)}×", va="center", fontsize=7)
    handles = [Patch(color=colour, label=f"vs {baseline_label(baseline)}") for baseline, colour in colours.items()]
    handles += [Line2D([0], [0], color="black", linewidth=1, label="1.0× the baseline"),
                Line2D([0], [0], color="#d62728", linewidth=2.5, label="goal against the bar's baseline"),
                Line2D([0], [0], color="#7f3fbf", linewidth=2, linestyle=(0, (2, 1)),
                       label="goal against another baseline, or in req/s, on the bar's scale")]
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.4, -0.09), ncol=2, fontsize=7, frameon=False)
    ax.set_xlabel("figure ÷ its baseline's, both from the same run (log scale; higher is better)", fontsize=8)
    ax.set_title(title, fontsize=9)
    ax.grid(axis="x", color="#dddddd", linewidth=0.5)
    ax.set_axisbelow(True)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def duration_text(seconds: float) -> str:
    return f"{int(seconds // 60)} min {int(seconds % 60)} s"


def command_line() -> str:
    python = os.path.relpath(sys.executable, ROOT) if sys.executable.startswith(str(ROOT)) else sys.executable
    command = " ".join([python, "bench/suite.py", *sys.argv[1:]])
    return f"make bench (= {command})" if os.environ.get("MAKELEVEL") else command


def report_block(rows, memory: list[dict], args, info_before, load_after, elapsed, chart_link: str | None) -> str:
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(info_before["time"]))
    c4, c16 = args.connections
    big = size_label(args.big_mib * MiB)
    rounds = f"{args.rounds} round{'s' if args.rounds != 1 else ''}"
    load = " / ".join(f"{x:.2f}" for x in info_before["load"]), " / ".join(f"{x:.2f}" for x in load_after)
    wrk_group = [row for row in rows if row.baselines]
    other = [row for row in rows if not row.baselines]
    lines = [
        "## Every scenario side by side: `make bench`",
        "",
        "    make bench          # = .venv/bin/python bench/suite.py (installs wrk when missing)",
        "    make bench-quick    # --quick: 2 s per scenario, 64 MiB, 10,000 files; checks the harness, writes nothing",
        "",
        f"This section is written by `bench/suite.py` (between its markers); the sections after it are earlier runs "
        f"of the single benches. Command: `{command_line()}`; run of {when}, {duration_text(elapsed)}. Machine: "
        f"{describe_machine(info_before)}; load average (1 / 5 / 15 min) {load[0]} before, {load[1]} after.",
        "",
        f"One private stack on loopback, shaped as `make stack` runs it, on a throwaway PostgreSQL database: nginx "
        f"rendered from nginx.conf in front of gunicorn (gunicorn.conf.py's defaults) with `VIMEO_DELIVERY=accel` and "
        f"the upload offload, metadata cache and rate limits in Redis, Prometheus multiprocess metrics, a Celery "
        f"worker on a Redis broker of the run's own (releases are queued, not run in the request; no beat, so no "
        f"sweep runs meanwhile); a second gunicorn with `VIMEO_DELIVERY=app`, no nginx. The same nginx also serves "
        f"the baselines below. wrk: {args.duration} s per scenario after a 2 s warm-up, 2 threads, {c4} connections "
        f"for 4 KiB and {c16} for 16 MiB, {rounds} round-robin, each scenario's best kept; between runs the suite "
        f"waits for the stack to finish what wrk left in flight. Every answer is checked once (status and bytes) "
        f"before it is timed. Every ratio is a figure ÷ a baseline's figure, both from this run; goals are judged "
        f"from these figures.",
        "",
        "The baselines, each answering the same blob bytes (4 KiB and 16 MiB) as the scenarios:",
        "",
        f"* **{BASELINES['nolog']}**: nginx alone sending the blob file from a plain location with `access_log off`: "
        "the machine's limit.",
        f"* **{BASELINES['logged']}**: the same from `location /static/`, with the access log every request of the "
        "stack gets.",
        f"* **{BASELINES['flask']}**: bench/baselines/flask_accel.py, a Flask view that only answers "
        "`X-Accel-Redirect` to the stack's internal `/_vimeo_blobs/` location, under the project's gunicorn.conf.py "
        "with the app's `GUNICORN_*` environment (same workers, threads, worker class, keep-alive, access log), "
        "behind the same nginx through an upstream with the app's keepalive settings: the Python-path limit.",
        f"* **{BASELINES['fastapi']}**: bench/baselines/fastapi_file.py, a FastAPI route answering Starlette's "
        "`FileResponse` (the bytes go through Python), the seeds' style, under uvicorn with as many worker "
        "processes as gunicorn's (`uvicorn --workers`), uvloop and httptools, no access log, behind the same nginx "
        "(same upstream settings).",
        "",
        "The scenarios:",
        "",
        "* **hot public**: `GET /file/<filehash>` of a file uploaded with `X-Max-Downloads: 0` and no password "
        "(nginx's fast path); **published version**: `GET /v/<version_id>` (POST `/file/<filehash>/versions`); "
        "**password**: a file with `X-Password`, requested with the right `X-Password`; **limited**: a file with "
        f"`X-Max-Downloads: {LIMITED_DOWNLOADS}` (the API's largest), so the app decides and counts every download; "
        "**token**: `GET /t/<token>` of a token asked for with the owner token (POST `/file/<filehash>/tokens`) on "
        "a file with the same large limit (a token download uses downloads); **304 revalidation**: the hot public "
        "file with `If-None-Match` of its ETag; **cached 404**: one unknown 32-hex filehash, again and again.",
        "* **one-time**: files uploaded before each round with the default of one download; a wrk script walks the "
        "list (each thread its own slice), so every request is a first download; only 200 answers count. After "
        "every run over a list the suite checks exactly-once, from nginx's access log and the database, and fails "
        "the run otherwise: no file answered 200 twice, none counts more than one download, every 200 counts its "
        "download, and a file consumed without a 200 was asked for by a client that had gone (499: wrk closes its "
        "connections with requests in flight at its end).",
        "* **X-Accel via app**: the same large limit on a 16 MiB file, so the app decides every download and "
        "answers X-Accel-Redirect; **app sends**: the hot public file from the `VIMEO_DELIVERY=app` gunicorn.",
        f"* **{big} downloads**: curl, raw nginx static against hot public, best of 3 each, alternating. **{big} "
        "uploads**: fresh random bytes, `curl -T` through nginx with the offload (the file the downloads use), "
        "`curl -T` and `curl -F` to the `VIMEO_DELIVERY=app` gunicorn, which writes the bytes itself; each against "
        f"`dd if=/dev/zero bs=1M conv=fsync` of {big} into the storage directory just before it; peak RSS: the "
        "largest gunicorn worker's, sampled every 10 ms.",
        "* **S3** (issue 14): a second stack on a local S3 server, `rclone serve s3` (deploy/s3server.py; its objects "
        "on the same disk), with a database of its own: gunicorn with `VIMEO_STORAGE_URL` on the bucket behind nginx "
        "rendered with the bucket's locations. **hot public 4 KiB** (the fast path, from nginx's content cache) "
        "against raw nginx static of a 4 KiB blob on local disk; **X-Accel via app 16 MiB** (a file with the large "
        "download limit: the app decides every download, nginx proxies a presigned GET of the store, unbuffered and "
        "uncached) and **hot public 16 MiB** (the fast path, nginx's content cache) each against the S3 server's own "
        "GET of the same object (wrk on its presigned URL); all in one round-robin of their own. The large **raw "
        "upload into the bucket**: `curl -T` through nginx (the body written to the node's disk, streamed by the app "
        "into the bucket in 8 MiB parts, copied by the store to its content address) against dd, with the largest "
        "gunicorn worker's peak RSS.",
        f"* **sweep**: bench/sweep.py's periodic sweep (set-based batches, expire and release) over {args.sweep_files:,} "
        "expired files, each with its own blob; baseline: the same end state reached the plainest way on a database "
        "and storage filled the same way: one SQL transaction (`UPDATE files` to gone, `DELETE FROM blobs`), then "
        "the byte files unlinked 8 in flight, as the sweep does. Peak RSS: the sweep's process.",
        "",
        "### Downloads (wrk): each scenario against every baseline of its size",
        "",
        wrk_table(wrk_group),
        "",
        f"### {big} transfers and the sweep",
        "",
        table(other),
        "",
        "### Goals",
        "",
        *goals_summary(rows),
        "",
        "### Memory under load: every process, during the 4 KiB scenarios",
        "",
        "RSS of every process of the stack and of the baselines (psutil, every 100 ms while a timed 4 KiB wrk run "
        "was under way, the warm-ups excluded): peak and mean per process; the broker's redis-server and the shared "
        "Redis and PostgreSQL servers are left out.",
        "",
        memory_table(memory),
        "",
    ]
    if chart_link:
        lines += [f"![Each scenario's ratio to its main baseline, log scale]({chart_link})", ""]
    return "\n".join(lines)


def write_performance(block: str, path: Path = PERFORMANCE) -> None:
    """Replace what lies between the markers (added after the introduction, before the
    first ``## `` section, when missing); the rest of the file stays as it is."""
    text = path.read_text()
    section = f"{BEGIN}\n{block.rstrip()}\n{END}"
    if BEGIN in text and END in text:
        start, end = text.index(BEGIN), text.index(END) + len(END)
        text = text[:start] + section + text[end:]
    else:
        at = text.find("\n## ")
        at = len(text) if at < 0 else at + 1
        text = text[:at] + section + "\n\n" + text[at:]
    path.write_text(text)


PARTS = ("wrk", "big", "s3", "sweep")  # the suite's parts, in the order they run


class _Skip(Exception):
    """No part needs the local stack."""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, help="seconds per wrk scenario (default 10; --quick: 2)")
    parser.add_argument("--rounds", type=int, help="round-robin runs of every wrk scenario, best kept (default 2; --quick: 1)")
    parser.add_argument("--quick", action="store_true",
                        help="check the harness: 2 s, 1 round, 64 MiB instead of 1 GiB, a 10,000-file sweep; "
                             "writes nothing unless --write")
    parser.add_argument("--write", action=argparse.BooleanOptionalAction, default=None,
                        help="write PERFORMANCE.md and bench/suite.png (default: yes, unless --quick)")
    parser.add_argument("--connections", default="32,16", help="wrk connections for 4 KiB, 16 MiB")
    parser.add_argument("--big-mib", type=int, help="size of the large upload/download (default 1024; --quick: 64)")
    parser.add_argument("--sweep-files", type=int, help="files of the sweep (default 100,000; --quick: 10,000)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs) and print it")
    parser.add_argument("--only", default=",".join(PARTS),
                        help=f"a comma-separated subset of {','.join(PARTS)} (the local stack is started for any "
                             "but sweep); writes nothing unless --write")
    args = parser.parse_args()
    args.only = set(args.only.split(","))
    if args.only - set(PARTS):
        parser.error(f"--only: unknown part(s) {', '.join(sorted(args.only - set(PARTS)))}")
    args.duration = args.duration or (2 if args.quick else 10)
    args.rounds = args.rounds or (1 if args.quick else 2)
    args.big_mib = args.big_mib or (64 if args.quick else 1024)
    args.sweep_files = args.sweep_files or (10_000 if args.quick else 100_000)
    args.connections = tuple(int(c) for c in args.connections.split(","))
    write = (not args.quick and args.only == set(PARTS)) if args.write is None else args.write
    if not shutil.which("wrk"):
        sys.exit("wrk is not installed: bash scripts/install-nginx wrk (make bench does)")

    # SIGTERM (a CI timeout, kill) ends the run through the finally blocks below: the
    # stack stopped, the databases dropped, the work directory removed.
    signal.signal(signal.SIGTERM, lambda _signum, _frame: sys.exit(143))
    started = time.monotonic()
    info = machine()
    log(f"suite: {describe_machine(info)}; load average {' '.join(f'{x:.2f}' for x in info['load'])}")
    big = args.big_mib * MiB
    work = ROOT / "var" / f"bench-suite-{secrets.token_hex(3)}"  # the project's disk, like a stack's storage
    work.mkdir(parents=True)
    prefix = f"vimeo_bench_{secrets.token_hex(4)}"
    db_url = create_database()
    procs: list = []
    rows: list[Row] = []
    memory: list = []
    try:
        if not args.only & {"wrk", "big", "s3"}:
            raise _Skip
        env = {**redis_env(prefix), "VIMEO_TRUSTED_PROXY_COUNT": "1",
               # The one-time scenario uploads thousands of files from 127.0.0.1.
               "VIMEO_UPLOAD_RATE_LIMIT": "1000000/minute",
               # Download tokens signed with a key of the run's own (else one is written
               # into the checkout's instance folder).
               "VIMEO_TOKEN_SIGNING_KEYS": json.dumps([secrets.token_hex(32)]),
               # ... and more bytes than the default hourly budget of 1 GiB per address.
               "VIMEO_UPLOAD_BYTES_LIMIT": f"{1 << 40}/hour"}
        stack = start_stack(work, db_url, procs, env, max_body_size=max(2 * big, 64 * MiB), celery=True,
                            metrics=True, baselines=True)
        log(f"suite: nginx {stack.nginx} → gunicorn (accel), gunicorn (app) {stack.app}, Celery worker; "
            f"work directory {work}")
        if "wrk" in args.only:
            sampler = ProcessMemory({"nginx": stack.nginx_proc.pid, "gunicorn (accel)": stack.accel_gunicorn.pid,
                                     "Celery worker": stack.celery_worker.pid,
                                     "gunicorn (app)": stack.app_gunicorn.pid})
            sampler.start()
            try:
                rows += wrk_rows(stack, work, args, db_url, procs, sampler, 4 * KiB, 16 * MiB)
            finally:
                sampler.stop()
            memory = sampler.results()
        if "big" in args.only:
            rows += big_rows(stack, work, big, downloads=3)
        if "s3" in args.only:
            rows += s3_rows(stack, work, args, procs, big, env)
    except _Skip:
        pass
    finally:
        for proc in reversed(procs):
            stop(proc)
        drop_database(db_url)
        delete_redis_keys(prefix)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    if "sweep" in args.only:
        rows += sweep_rows(args.sweep_files)
    load_after = os.getloadavg()
    elapsed = time.monotonic() - started

    RESULTS.mkdir(parents=True, exist_ok=True)
    chart_path = CHART if write else RESULTS / "suite-quick.png"
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(info["time"]))
    chart(rows, chart_path, f"Ratio to the baseline of the same run — {when}, {info['cpus']} CPUs"
                            f"{', --quick' if args.quick else ''}")
    block = report_block(rows, memory, args, info, load_after, elapsed,
                         os.path.relpath(chart_path, PERFORMANCE.parent) if write else None)
    (RESULTS / "suite.json").write_text(json.dumps({
        "command": command_line(), "machine": info, "load_after": load_after, "elapsed": elapsed,
        "rows": [{**asdict(row), "ratios": {key: row.ratio_to(key) for key in (row.baselines or [row.baseline])},
                  "goals_met": [met for _, met, _ in row.goal_states()]} for row in rows],
        "memory": memory}, indent=1))
    print(block)
    if write:
        write_performance(block)
        log(f"suite: wrote {PERFORMANCE.relative_to(ROOT)} and {chart_path.relative_to(ROOT)} "
            f"({chart_path.stat().st_size // 1024} KiB)")
    else:
        log(f"suite: chart in {chart_path.relative_to(ROOT)} ({chart_path.stat().st_size // 1024} KiB); "
            f"PERFORMANCE.md left as it is (--write writes it)")
    if args.keep:
        log(f"work directory: {work}")
    log(f"suite: took {duration_text(elapsed)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
