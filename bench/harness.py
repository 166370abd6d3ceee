"""What the benchmarks run against, shared by bench/suite.py and the single benches: a
throwaway PostgreSQL database, gunicorn (the project's gunicorn.conf.py) and nginx (the
project's nginx.conf, rendered by deploy.stack) on free loopback ports, uploads through
them, wrk scenarios run round-robin keeping each one's best, and a description of the
machine."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import secrets
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ContextManager

import psutil
import requests
from sqlalchemy import create_engine, text

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.measure import MiB, wrk  # noqa: E402
from deploy.stack import (  # noqa: E402
    NginxSettings,
    check_nginx_conf,
    free_port,
    gunicorn_command,
    nginx_command,
    render_nginx,
    spawn,
    wait_for_http,
    write_nginx_conf,
)

API = "/vimeo/api/v1.0"
PG_ADMIN_URL = os.environ.get("VIMEO_BENCH_PG_ADMIN_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("VIMEO_BENCH_REDIS_URL", "redis://127.0.0.1:6379")
# The download benches' baselines: the same blob files, served statically by nginx, with
# the access log every other request gets (/static/) and without any (/static-nolog/: the
# machine's limit).
STATIC_LOCATION = """
        # The benchmark's baselines: the same blob files, served statically.
        location /static/ {
            alias @storage/blobs/;
        }
        location /static-nolog/ {
            alias @storage/blobs/;
            access_log off;
        }
"""


# -- a throwaway database ------------------------------------------------------------------

def create_database(prefix: str = "vimeo_bench", migrate: bool = True) -> str:
    """A new database on the local server (``VIMEO_BENCH_PG_ADMIN_URL``), migrated; its URL."""
    name = f"{prefix}_{secrets.token_hex(4)}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    finally:
        admin.dispose()
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    if migrate:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("VIMEO_", "GUNICORN_"))}
        env["VIMEO_DATABASE_URL"] = url
        subprocess.run([sys.executable, "manage.py", "db", "upgrade"], cwd=ROOT, env=env, check=True,
                       capture_output=True)
    return url


def drop_database(url: str) -> None:
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)'))
    finally:
        admin.dispose()


def tear_down(procs: list, db_url: str, prefix: str | None = None, work: Path | None = None,
              keep: bool = False) -> None:
    """What a bench leaves: its processes stopped (last started first), its database
    dropped, its Redis keys deleted, its work directory removed (unless ``keep``: then
    printed)."""
    from deploy.stack import stop

    for proc in reversed(procs):
        stop(proc)
    drop_database(db_url)
    if prefix is not None:
        delete_redis_keys(prefix)
    if work is not None:
        if keep:
            print(f"work directory: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


def delete_redis_keys(prefix: str, databases=(1, 2)) -> None:
    """Remove what a run left under its own key prefix in the shared Redis."""
    import redis

    for database in databases:
        client = redis.Redis.from_url(f"{REDIS_URL}/{database}")
        try:
            keys = list(client.scan_iter(match=f"*{prefix}*", count=1000))
            if keys:
                client.delete(*keys)
        finally:
            client.close()


# -- gunicorn and nginx --------------------------------------------------------------------

def app_env(db_url: str, storage: Path, public_url: str, bind: str, **extra: str) -> dict[str, str]:
    """The environment of a benchmark's gunicorn: none of the caller's VIMEO_/GUNICORN_
    settings, a throwaway database and storage, no embedded sweep, gunicorn's access log
    as it is by default (off: nginx logs every request, the app its JSON line), plus
    ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIMEO_", "GUNICORN_"))}
    env.update({
        "VIMEO_DATABASE_URL": db_url,
        "VIMEO_STORAGE_DIR": str(storage),
        "VIMEO_PUBLIC_URL": public_url,
        "VIMEO_EMBEDDED_SWEEP_INTERVAL": "0",
        "GUNICORN_BIND": bind,
        "GUNICORN_KEEPALIVE": "75",  # longer than nginx's upstream keepalive_timeout
    })
    env.update(extra)
    return env


def redis_env(prefix: str) -> dict[str, str]:
    """The stack's metadata cache and rate-limit counts in the shared Redis (databases 1
    and 2, as ``make stack``), under a key prefix of the run's own (see delete_redis_keys).
    No broker: deletion tasks run in-process, nothing is queued for another worker."""
    return {
        "VIMEO_CACHE_TYPE": "RedisCache",
        "VIMEO_CACHE_REDIS_URL": f"{REDIS_URL}/1",
        "VIMEO_CACHE_KEY_PREFIX": prefix + ":",
        "VIMEO_RATELIMIT_STORAGE_URI": f"{REDIS_URL}/2",
        "VIMEO_RATELIMIT_KEY_PREFIX": prefix,
    }


def start_broker(work: Path, procs: list) -> str:
    """A redis-server of the run's own (no persistence) on a free port, appended to
    ``procs``; the Celery broker URL on it. The stack's broker is a Redis database
    (``make stack``: the shared server's database 0); a server of its own keeps this run's
    tasks and another run's or a developer's stack apart. A missing redis-server fails."""
    binary = shutil.which("redis-server")
    if not binary:
        raise RuntimeError("redis-server is not installed: the benchmark's Celery broker needs one")
    port = free_port()
    proc = spawn([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                  "--dir", str(work)], dict(os.environ), work / f"redis-{port}.log")
    procs.append(proc)
    import redis

    client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=2)
    deadline = time.monotonic() + 15
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {proc.returncode} while starting")
            try:
                if client.ping():
                    break
            except redis.RedisError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server on port {port} did not answer within 15 s") from None
                time.sleep(0.05)
    finally:
        client.close()
    return f"redis://127.0.0.1:{port}/0"


def log_has_line(path: Path, text: str) -> bool:
    """Whether a complete line of the log at ``path`` contains ``text``."""
    try:
        data = path.read_text(errors="replace")
    except FileNotFoundError:
        return False
    return any(text in line for line in data[: data.rfind("\n") + 1].splitlines())


def start_celery_worker(env: dict[str, str], log: Path, procs: list, timeout: float = 60.0) -> subprocess.Popen:
    """A Celery worker as ``make stack`` starts it (deploy/stack.py), on ``env``'s broker,
    appended to ``procs`` once it says it is ready."""
    proc = spawn([sys.executable, "-m", "celery", "-A", "celery_worker", "worker", "--loglevel", "INFO"], env, log)
    procs.append(proc)
    deadline = time.monotonic() + timeout
    while not log_has_line(log, " ready."):
        if proc.poll() is not None:
            raise RuntimeError(f"the Celery worker exited with {proc.returncode} while starting (see {log})")
        if time.monotonic() > deadline:
            raise RuntimeError(f"the Celery worker was not ready within {timeout:.0f} s (see {log})")
        time.sleep(0.1)
    return proc


def start_gunicorn(env: dict[str, str], log: Path, procs: list) -> subprocess.Popen:
    """gunicorn on ``env['GUNICORN_BIND']``, appended to ``procs`` (the caller stops them)."""
    proc = spawn(gunicorn_command(), env, log)
    procs.append(proc)
    wait_for_http(f"http://{env['GUNICORN_BIND']}/healthz", procs=[proc])
    return proc


def start_nginx(work: Path, name: str, port: int, app_bind: str, storage: Path, env: dict[str, str], procs: list,
                *, static: bool = False, max_body_size: int = 16 * MiB,
                baselines: Baselines | None = None, s3=None) -> subprocess.Popen:
    """nginx rendered from nginx.conf on 127.0.0.1:``port`` in front of ``app_bind``; with
    ``static``, also the plain ``location /static/`` on the blobs and the same without an
    access log (see static_path); with ``baselines``, their upstreams and locations; with
    ``s3`` (deploy.stack.S3Nginx), the bucket's locations. Its logs go to ``work/log-<name>/``."""
    settings = NginxSettings(
        listen=f"127.0.0.1:{port}", app_address=app_bind, storage_dir=str(storage),
        runtime_dir=str(work / f"nginx-{name}"), log_dir=str(work / f"log-{name}"),
        max_body_size=max_body_size,
        extra_locations=STATIC_LOCATION.replace("@storage", str(storage)) if static else "",
        s3=s3,
    )
    if baselines:
        settings.extra_locations += baselines.nginx_locations()
        settings.extra_http = baselines.nginx_upstreams(render_nginx(settings))
    settings.extra_http += BENCH_PATH_LOG.replace("@log_dir", settings.log_dir)
    conf = write_nginx_conf(settings)
    check_nginx_conf(conf, settings)
    proc = spawn(nginx_command(conf, settings), env, work / f"nginx-{name}.out")
    procs.append(proc)
    wait_for_http(f"http://127.0.0.1:{port}/healthz", procs=[proc])
    return proc


# The product's access log cuts every capability in a path to its first characters
# (nginx.conf), so a bench that must tell its requests apart (the one-time scenario's
# exactly-once check) asks for a log of its own: requests with ``X-Bench-Path-Log: 1``
# only, whole paths, in the access log's "METHOD PATH PROTOCOL" STATUS shape.
BENCH_PATH_LOG = """
    map $http_x_bench_path_log $vimeo_bench_path_logged {
        default 0;
        "1" 1;
    }
    log_format vimeo_bench_paths '"$request_method $request_uri $server_protocol" $status ';
    access_log @log_dir/bench-paths.log vimeo_bench_paths if=$vimeo_bench_path_logged;
"""


def static_path(sha256: str, logged: bool = True) -> str:
    """Where ``location /static/`` serves a blob; ``logged=False``: ``/static-nolog/``."""
    return f"/static{'' if logged else '-nolog'}/{sha256[:2]}/{sha256[2:4]}/{sha256}"


# -- the minimal apps measured against (bench/baselines/) ----------------------------------

def upstream_like_app(rendered: str, name: str, address: str) -> str:
    """An ``upstream`` block named ``name`` for ``address`` with every other line of the
    rendered nginx.conf's ``upstream vimeo_app`` (its keepalive settings), so a baseline
    app reaches nginx's side exactly as the app does."""
    found = re.search(r"^( *)upstream vimeo_app \{\n(.*?)^\1\}\n", rendered, re.S | re.M)
    if not found:
        raise RuntimeError("nginx.conf has no `upstream vimeo_app { ... }` block to copy")
    indent, body = found.groups()
    lines = body.splitlines(keepends=True)
    servers = [i for i, line in enumerate(lines) if line.strip().startswith("server ")]
    if len(servers) != 1:
        raise RuntimeError(f"nginx.conf's upstream vimeo_app has {len(servers)} server lines, expected 1")
    server = lines[servers[0]]
    lines[servers[0]] = server[: len(server) - len(server.lstrip())] + f"server {address};\n"
    return f"{indent}upstream {name} {{\n{''.join(lines)}{indent}}}\n"


def gunicorn_workers(env: dict[str, str]) -> int:
    """How many workers gunicorn.conf.py gives a gunicorn started with ``env``: read by
    gunicorn.conf.py itself, in a process with that environment."""
    code = f"import runpy; print(runpy.run_path({str(ROOT / 'gunicorn.conf.py')!r})['workers'])"
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, check=True)
    return int(out.stdout.strip())


class Baselines:
    """The two minimal apps of bench/baselines/, each behind the same nginx as the app
    under its own upstream (a copy of ``upstream vimeo_app``) and location:

    * ``flask``: bench/baselines/flask_accel.py under the project's gunicorn configuration
      (bench/baselines/gunicorn_conf.py) with the app's ``GUNICORN_*`` environment: the
      same bind kind, workers, threads, worker class, keep-alive and access log;
    * ``fastapi``: bench/baselines/fastapi_file.py under uvicorn, as many worker processes
      as gunicorn's (``uvicorn --workers``, uvicorn's own process manager: gunicorn's
      uvicorn worker class has moved out of uvicorn into a package of its own), uvloop and
      httptools, no access log (gunicorn writes none by default either), a keep-alive longer than nginx's upstream keepalive_timeout like the
      app's.

    The ports are chosen when nginx is rendered (``nginx_locations``, ``nginx_upstreams``);
    the processes start later (``start``), once the blobs they serve exist.
    """

    FLASK, FASTAPI = "flask", "fastapi"

    def __init__(self):
        self.ports = {self.FLASK: free_port(), self.FASTAPI: free_port()}
        self.procs: dict[str, subprocess.Popen] = {}

    def nginx_locations(self) -> str:
        return "".join(f"""
        # The benchmark's minimal {kind} app (bench/baselines/).
        location /bench/{kind}/ {{
            proxy_pass http://bench_{kind};
        }}
""" for kind in self.ports)

    def nginx_upstreams(self, rendered: str) -> str:
        return "".join(upstream_like_app(rendered, f"bench_{kind}", f"127.0.0.1:{port}")
                       for kind, port in self.ports.items())

    @staticmethod
    def path(kind: str, name: str) -> str:
        """The URL path (behind nginx) of the blob ``name`` from the baseline ``kind``."""
        return f"/bench/{kind}/{name}"

    def start(self, work: Path, storage: Path, app_environment: dict[str, str], blobs: dict[str, str],
              procs: list) -> None:
        """Both apps, serving ``blobs`` (name → sha256) from ``storage``; each is appended
        to ``procs`` (the caller stops them) once it answers."""
        base = {k: v for k, v in os.environ.items() if not k.startswith(("VIMEO_", "GUNICORN_", "BENCH_"))}
        base.update({"BENCH_BLOBS": json.dumps(blobs), "BENCH_STORAGE_DIR": str(storage)})
        gunicorn_env = {**base, **{k: v for k, v in app_environment.items() if k.startswith("GUNICORN_")},
                        "GUNICORN_BIND": f"127.0.0.1:{self.ports[self.FLASK]}"}
        workers = gunicorn_workers(app_environment)
        commands = {
            self.FLASK: [sys.executable, "-m", "gunicorn", "-c", str(ROOT / "bench" / "baselines" / "gunicorn_conf.py"),
                         "bench.baselines.flask_accel:app"],
            self.FASTAPI: [sys.executable, "-m", "uvicorn", "bench.baselines.fastapi_file:app",
                           "--host", "127.0.0.1", "--port", str(self.ports[self.FASTAPI]),
                           "--workers", str(workers), "--loop", "uvloop", "--http", "httptools",
                           "--no-access-log", "--timeout-keep-alive", app_environment.get("GUNICORN_KEEPALIVE", "75"),
                           "--log-level", "warning"],
        }
        envs = {self.FLASK: gunicorn_env, self.FASTAPI: base}
        for kind, command in commands.items():
            proc = spawn(command, envs[kind], work / f"baseline-{kind}.log")
            procs.append(proc)
            self.procs[kind] = proc
            wait_for_http(f"http://127.0.0.1:{self.ports[kind]}/", procs=[proc])


def upload(base: str, content: bytes, headers: dict | None = None, name: str = "bench.bin",
           session: requests.Session | None = None) -> dict:
    """A raw PUT /upload/<name>; the 201's JSON."""
    response = (session or requests).put(f"{base}{API}/upload/{name}", data=content, headers=headers or {},
                                         timeout=120)
    if response.status_code != 201:
        raise RuntimeError(f"upload: HTTP {response.status_code} {response.text[:300]}")
    return response.json()


# -- wrk scenarios, round-robin -------------------------------------------------------------

@dataclass
class WrkScenario:
    key: object  # how the caller names it (the key of run_rounds' result)
    url: str
    connections: int
    script: Path
    headers: dict = field(default_factory=dict)
    # Before each round: the wrk script's arguments for it (e.g. a fresh list of URLs).
    prepare: Callable[[int], list[str]] | None = None
    warmup: bool = True  # a 2 s run first, not counted
    # The figure a round is judged by (its best is kept): req/s unless told otherwise.
    figure: Callable[[dict], float] = lambda report: report["rps"]
    after: Callable[[dict], None] | None = None  # sees every round's report


def settle(pids: list[int], idle_cpus: float = 0.1, timeout: float = 15.0) -> float:
    """Wait until the processes ``pids`` and their children together use less than
    ``idle_cpus`` CPUs over a quarter of a second: the requests a finished wrk run left in
    flight (nginx logs them as 499) are still being worked on by the app, and would be
    billed to the next scenario. Returns the seconds waited."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        procs = []
        for pid in pids:
            try:
                parent = psutil.Process(pid)
                procs += [parent, *parent.children(recursive=True)]
            except psutil.NoSuchProcess:
                pass
        for proc in procs:
            try:
                proc.cpu_percent(None)
            except psutil.NoSuchProcess:
                pass
        time.sleep(0.25)
        used = 0.0
        for proc in procs:
            try:
                used += proc.cpu_percent(None) / 100
            except psutil.NoSuchProcess:
                pass
        if used < idle_cpus:
            break
    return time.monotonic() - started


def run_rounds(scenarios: list[WrkScenario], rounds: int, duration: int,
               describe: Callable[[WrkScenario, dict], str] | None = None,
               quiet: Callable[[], object] | None = None,
               during: Callable[[WrkScenario], ContextManager] | None = None) -> dict[object, dict]:
    """Every scenario ``rounds`` times, round-robin (load from elsewhere then skews one
    scenario less than another), each after a 2 s warm-up; each one's best report.
    ``quiet`` (e.g. ``settle``) runs after every wrk run, the warm-ups' included;
    ``during(scenario)``, a context manager, is entered around each timed run (e.g. to
    sample memory), the warm-ups excluded."""
    best: dict[object, dict] = {}
    for round_ in range(1, rounds + 1):
        for scenario in scenarios:
            args = scenario.prepare(round_) if scenario.prepare else []
            if quiet:
                quiet()
            if scenario.warmup:
                wrk(scenario.url, 2, scenario.connections, scenario.script, scenario.headers, args)
                if quiet:
                    quiet()
            with during(scenario) if during else contextlib.nullcontext():
                report = wrk(scenario.url, duration, scenario.connections, scenario.script, scenario.headers, args)
            report["figure"] = scenario.figure(report)
            report["round"] = round_
            if scenario.after:
                scenario.after(report)
            line = describe(scenario, report) if describe else (
                f"{scenario.key}: {report['rps']:,.0f} req/s, p99 {report['p99_ms']:.1f} ms, "
                f"non-2xx/3xx {report['non_2xx_3xx']}, errors {report['errors']}")
            print(f"  round {round_}  {line}", file=sys.stderr, flush=True)
            if scenario.key not in best or report["figure"] > best[scenario.key]["figure"]:
                best[scenario.key] = report
    return best


# -- the machine ----------------------------------------------------------------------------

def machine() -> dict:
    """CPU count and model, kernel, nginx, wrk and Python versions, load average now."""
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass

    def version(cmd: list[str]) -> str:
        try:
            out = subprocess.run(cmd, capture_output=True, text=True)
        except OSError:
            return "not installed"
        return (out.stdout + out.stderr).strip().splitlines()[0] if (out.stdout + out.stderr).strip() else "?"

    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "kernel": f"{platform.system()} {platform.release()} {platform.machine()}",
        "nginx": version(["nginx", "-v"]).split("/", 1)[-1],
        "wrk": version(["wrk", "--version"]).split(" [")[0].removeprefix("wrk "),
        "python": platform.python_version(),
        "load": os.getloadavg(),
        "time": time.time(),
    }


def describe_machine(info: dict) -> str:
    return (f"{info['cpus']} CPUs ({info['cpu_model']}), {info['kernel']}, nginx {info['nginx']}, "
            f"wrk {info['wrk']}, Python {info['python']}")
