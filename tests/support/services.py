"""Processes of the test run's own: gunicorn, Celery worker and beat, redis-server and
a PostgreSQL cluster, each started the way production starts it and configured by
environment variables only.

Everything is started with deploy/stack.py's ``spawn`` (its own session, its output in
a log file) and stopped with its ``stop`` (the whole process group), on ports from its
``free_port``; HTTP servers are ready when ``wait_for_http`` gets an answer. A missing
binary (redis-server, initdb) fails the run: nothing is skipped.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import redis

from deploy.stack import free_port, gunicorn_command, spawn, stop, wait_for_http

from . import API, FAST_PASSWORD_HASH
from .database import create_database
from .logs import complete_lines, complete_text
from .polling import wait_until

# An unknown file: answered by the app alone, whatever it holds (a 404).
READY_PATH = API + "/file/" + "0" * 32


def clean_environment(**settings) -> dict[str, str]:
    """This process's environment without its ``VIMEO_*`` and ``GUNICORN_*`` settings
    (the test run's own must not leak into the app under test), plus ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIMEO_", "GUNICORN_"))}
    env.update({k: str(v) for k, v in settings.items()})
    return env


class Service:
    """A process started with ``spawn``, its output in ``log_path``."""

    def __init__(self, name: str, argv: list[str], env: dict, log_path: Path):
        self.name = name
        self.log_path = Path(log_path)
        self.env = env
        self.proc = spawn(argv, env, self.log_path)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log(self) -> str:
        """What it has logged so far, complete lines only."""
        return complete_text(self.log_path)

    def lines(self) -> list[str]:
        return complete_lines(self.log_path)

    def kill9(self) -> None:
        """SIGKILL to the whole process group: no cleanup of any kind runs."""
        if self.alive():
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        stop(self.proc, sig, timeout=15)


# -- gunicorn and Celery -----------------------------------------------------------------

def gunicorn_environment(env: dict, port: int, workers: int = 2, threads: int = 4) -> dict:
    return {
        **env,
        "GUNICORN_BIND": f"127.0.0.1:{port}",
        "GUNICORN_WORKERS": str(workers),
        "GUNICORN_THREADS": str(threads),
    }


def start_gunicorn(env: dict, log_path: Path, name: str = "gunicorn") -> Service:
    """gunicorn as ``make run`` and the stack start it, on ``env["GUNICORN_BIND"]``;
    returns once it answers HTTP."""
    web = Service(name, gunicorn_command(), env, log_path)
    try:
        wait_for_http(f"http://{env['GUNICORN_BIND']}{READY_PATH}", procs=[web.proc])
    except BaseException:
        web.stop()
        raise
    return web


def start_celery_worker(env: dict, log_path: Path, hostname: str) -> Service:
    """A Celery worker, one task at a time (solo pool); returns once it is ready."""
    worker = Service("worker", [
        sys.executable, "-m", "celery", "-A", "celery_worker", "worker",
        "--pool=solo", "--concurrency=1", "--loglevel=INFO", "--without-gossip", "--without-mingle",
        "--without-heartbeat", f"--hostname={hostname}",
    ], env, log_path)

    def ready() -> bool:
        if not worker.alive():
            raise RuntimeError(f"the Celery worker exited: {worker.log()[-3000:]}")
        return any(" ready." in line for line in worker.lines())

    try:
        wait_until(ready, 60, "the Celery worker did not become ready", interval=0.2)
    except BaseException:
        worker.stop()
        raise
    return worker


def start_celery_beat(env: dict, log_path: Path, schedule: Path) -> Service:
    return Service("beat", [
        sys.executable, "-m", "celery", "-A", "celery_worker", "beat", "--loglevel=INFO", f"--schedule={schedule}",
    ], env, log_path)


class LiveServer:
    """gunicorn alone on a free port (the embedded delivery), as ``make run`` runs it."""

    def __init__(self, directory: Path, db_url: str, storage_dir: str, workers: int = 4, threads: int = 4,
                 **settings):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.api = self.base + API
        self.env = gunicorn_environment(clean_environment(
            VIMEO_DATABASE_URL=db_url,
            VIMEO_STORAGE_DIR=storage_dir,
            VIMEO_STATE_DIR=Path(storage_dir).parent / f"state-{self.port}",
            VIMEO_PUBLIC_URL=self.base,
            VIMEO_PASSWORD_HASH_METHOD=FAST_PASSWORD_HASH,
        ), self.port, workers, threads)
        self.env.update({k: str(v) for k, v in settings.items()})
        self.service = start_gunicorn(self.env, directory / f"gunicorn-{self.port}.log")

    @property
    def pid(self) -> int:
        return self.service.pid

    def log(self) -> str:
        return self.service.log()

    def stop(self) -> None:
        self.service.stop()


# -- redis-server ----------------------------------------------------------------------

class PrivateRedis:
    """A redis-server of our own, without persistence, that a test may stop and start
    (a restart loses every message it held, as an outage of the broker can), or freeze
    (SIGSTOP: it accepts connections and never answers, like a hung server)."""

    def __init__(self, directory: Path, password: str | None = None):
        if shutil.which("redis-server") is None:
            raise RuntimeError("redis-server is not installed: these tests need a real Redis")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.password = password  # requirepass: clients must give it (in the URL)
        self.service: Service | None = None
        self.frozen = False

    def url(self, db: int = 0) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/{db}"

    def client(self, db: int = 0) -> redis.Redis:
        return redis.Redis.from_url(self.url(db), socket_timeout=2)

    def start(self) -> None:
        """Start it (again, on the same port) and wait until it answers PING."""
        argv = [
            "redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
            "--save", "", "--appendonly", "no", "--dir", str(self.directory),
            *(["--requirepass", self.password] if self.password else []),
        ]
        self.service = Service("redis", argv, dict(os.environ), self.directory / f"redis-{self.port}.log")
        wait_until(self._pings, 10, f"redis on port {self.port} did not start")

    def stop(self) -> None:
        if self.service is not None:
            self.thaw()  # a frozen server cannot act on SIGTERM
            self.service.stop()
            self.service = None

    def freeze(self) -> None:
        self.service.proc.send_signal(signal.SIGSTOP)
        self.frozen = True

    def thaw(self) -> None:
        if self.frozen:
            self.service.proc.send_signal(signal.SIGCONT)
            self.frozen = False

    def _pings(self) -> bool:
        if not self.service.alive():
            raise RuntimeError(f"redis-server exited: {self.service.log()[-2000:]}")
        try:
            return self.client().ping()
        except redis.RedisError:
            return False


# -- PostgreSQL --------------------------------------------------------------------------

def _pg_bin() -> Path:
    """Where initdb and pg_ctl are: VIMEO_TEST_PG_BIN, the PATH, or Debian's newest."""
    if os.environ.get("VIMEO_TEST_PG_BIN"):
        return Path(os.environ["VIMEO_TEST_PG_BIN"])
    if shutil.which("initdb"):
        return Path(shutil.which("initdb")).parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name))
    return versions[-1] if versions else Path("/usr/lib/postgresql/15/bin")


class PrivatePostgres:
    """A PostgreSQL cluster of our own (initdb + pg_ctl, as the ``postgres`` user when
    run as root), on a free port with trust authentication, that a test may stop and
    start. pg_ctl runs the server in the background itself: it is not ``spawn``ed."""

    def __init__(self):
        self.bin = _pg_bin()
        for tool in ("initdb", "pg_ctl"):
            if not (self.bin / tool).exists():
                raise RuntimeError(f"{self.bin / tool} is missing: these tests need PostgreSQL")
        self.directory = Path(tempfile.mkdtemp(prefix="vimeo-worker-pg-"))
        self.data = self.directory / "data"
        self.port = free_port()
        # PostgreSQL refuses to run as root: as root, the cluster belongs to "postgres".
        self.as_root = os.geteuid() == 0
        if self.as_root:
            shutil.chown(self.directory, "postgres")
        self._as_postgres(
            [self.bin / "initdb", "-D", self.data, "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync"]
        )
        self.admin_url = f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/postgres"

    def _as_postgres(self, argv) -> None:
        prefix = ["runuser", "-u", "postgres", "--"] if self.as_root else []
        subprocess.run([*prefix, *map(str, argv)], check=True, capture_output=True, cwd=self.directory)

    def start(self) -> None:
        options = f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._as_postgres(
            [self.bin / "pg_ctl", "-D", self.data, "-l", self.directory / "server.log", "-w", "-o", options, "start"]
        )

    def stop(self) -> None:
        """A fast shutdown: every client connection is cut, as in a real outage."""
        self._as_postgres([self.bin / "pg_ctl", "-D", self.data, "-w", "-m", "fast", "stop"])

    def create_database(self) -> str:
        """A new database migrated with the project's migrations; returns its URL."""
        return create_database(self.admin_url, "vimeo_worker")

    def destroy(self) -> None:
        try:
            self._as_postgres([self.bin / "pg_ctl", "-D", self.data, "-w", "-m", "immediate", "stop"])
        except subprocess.CalledProcessError:
            pass  # already stopped
        shutil.rmtree(self.directory, ignore_errors=True)
