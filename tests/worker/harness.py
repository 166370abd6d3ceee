"""Real Celery workers on real Redis and PostgreSQL, with a real gunicorn in front.

Every deployment a test module builds is a ``Stack``: its own Redis server, its own
database and storage directory, and the processes it asks for (gunicorn, a Celery
worker, Celery beat), all started as the stack runs them in production and configured
by ``VIMEO_*`` variables only. Nothing here touches the shared Redis or PostgreSQL that
other test runs use: the Redis servers and the PostgreSQL cluster are private to this
run, so tests may stop and start them to simulate outages. A missing ``redis-server``
or PostgreSQL binary fails the run.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis
import requests
from sqlalchemy import create_engine, text

from deploy.stack import free_port, stop

ROOT = Path(__file__).resolve().parents[2]


def _pg_bin() -> Path:
    """Where initdb and pg_ctl are: VIMEO_TEST_PG_BIN, the PATH, or Debian's newest."""
    if os.environ.get("VIMEO_TEST_PG_BIN"):
        return Path(os.environ["VIMEO_TEST_PG_BIN"])
    if shutil.which("initdb"):
        return Path(shutil.which("initdb")).parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name))
    return versions[-1] if versions else Path("/usr/lib/postgresql/15/bin")


PG_BIN = _pg_bin()
FAST_PASSWORD_HASH = "pbkdf2:sha256:1000"
API = "/vimeo/api/v1.0"


# -- small helpers ---------------------------------------------------------------------

def wait_until(predicate, timeout: float, message: str, interval: float = 0.1):
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{message} (waited {timeout}s)")
        time.sleep(interval)


class Process:
    """A child process in its own session, with its output in a log file."""

    def __init__(self, name: str, argv: list[str], env: dict, log_path: Path):
        self.name = name
        self.log_path = log_path
        with log_path.open("ab") as log:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen(
                argv,
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill9(self) -> None:
        """SIGKILL to the whole process group: no cleanup of any kind runs."""
        if self.alive():
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        stop(self.proc, timeout=15)


# -- private services -----------------------------------------------------------------

class PrivateRedis:
    """A redis-server of our own, without persistence: a restart loses every message it
    held, which is what an outage of the broker can do in production."""

    def __init__(self, directory: Path):
        if shutil.which("redis-server") is None:
            raise RuntimeError("redis-server is not installed: the worker tests need a real Redis")
        self.directory = directory
        self.port = free_port()
        self.process: Process | None = None

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2, decode_responses=True)

    def start(self) -> None:
        argv = [
            "redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
            "--save", "", "--appendonly", "no", "--dir", str(self.directory),
        ]
        self.process = Process("redis", argv, dict(os.environ), self.directory / f"redis-{self.port}.log")
        wait_until(self._pings, 10, f"redis on port {self.port} did not start")

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
            self.process = None

    def _pings(self) -> bool:
        if self.process is not None and not self.process.alive():
            raise RuntimeError(f"redis-server exited: {self.process.log()[-2000:]}")
        try:
            return self.client().ping()
        except redis.RedisError:
            return False


class PrivatePostgres:
    """A PostgreSQL cluster of our own (initdb + pg_ctl, as the ``postgres`` user when
    run as root), on a free port with trust authentication, that a test may stop and
    start."""

    def __init__(self):
        for tool in ("initdb", "pg_ctl"):
            if not (PG_BIN / tool).exists():
                raise RuntimeError(f"{PG_BIN / tool} is missing: the worker tests need PostgreSQL")
        self.directory = Path(tempfile.mkdtemp(prefix="vimeo-worker-pg-"))
        self.data = self.directory / "data"
        self.port = free_port()
        # PostgreSQL refuses to run as root: as root, the cluster belongs to "postgres".
        self.as_root = os.geteuid() == 0
        if self.as_root:
            shutil.chown(self.directory, "postgres")
        self._as_postgres(
            [PG_BIN / "initdb", "-D", self.data, "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync"]
        )
        self.admin_url = f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/postgres"

    def _as_postgres(self, argv) -> None:
        prefix = ["runuser", "-u", "postgres", "--"] if self.as_root else []
        subprocess.run(
            [*prefix, *map(str, argv)],
            check=True,
            capture_output=True,
            cwd=self.directory,
        )

    def start(self) -> None:
        options = f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._as_postgres([PG_BIN / "pg_ctl", "-D", self.data, "-l", self.directory / "server.log", "-w", "-o", options, "start"])

    def stop(self) -> None:
        """A fast shutdown: every client connection is cut, as in a real outage."""
        self._as_postgres([PG_BIN / "pg_ctl", "-D", self.data, "-w", "-m", "fast", "stop"])

    def create_database(self) -> str:
        """A new database migrated with the project's migrations; returns its URL."""
        name = f"vimeo_worker_{secrets.token_hex(4)}"
        engine = create_engine(self.admin_url, isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        engine.dispose()
        url = self.admin_url.rsplit("/", 1)[0] + "/" + name
        subprocess.run(
            [sys.executable, "manage.py", "db", "upgrade"],
            cwd=ROOT,
            env={**os.environ, "VIMEO_DATABASE_URL": url},
            check=True,
            capture_output=True,
        )
        return url

    def destroy(self) -> None:
        try:
            self._as_postgres([PG_BIN / "pg_ctl", "-D", self.data, "-w", "-m", "immediate", "stop"])
        except subprocess.CalledProcessError:
            pass  # already stopped
        shutil.rmtree(self.directory, ignore_errors=True)


# -- one deployment -------------------------------------------------------------------

class Stack:
    """gunicorn + Celery worker + beat on one Redis, one database and one storage dir."""

    def __init__(self, root: Path, pg: PrivatePostgres, **settings):
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.pg = pg
        self.redis = PrivateRedis(root)
        self.redis.start()
        self.db_url = pg.create_database()
        self.storage_dir = root / "storage"
        self.web_port = free_port()
        self.base = f"http://127.0.0.1:{self.web_port}"
        self.api = self.base + API
        self.env = {
            **os.environ,
            "VIMEO_DATABASE_URL": self.db_url,
            "VIMEO_STORAGE_DIR": str(self.storage_dir),
            # Redis as the stack uses it: broker, cache and rate limits (deploy/vimeo.env.example).
            "VIMEO_BROKER_URL": self.redis.url(0),
            "VIMEO_CACHE_TYPE": "RedisCache",
            "VIMEO_CACHE_REDIS_URL": self.redis.url(1),
            "VIMEO_RATELIMIT_STORAGE_URI": self.redis.url(2),
            "VIMEO_PUBLIC_URL": self.base,
            "VIMEO_PASSWORD_HASH_METHOD": FAST_PASSWORD_HASH,
            **{f"VIMEO_{key.upper()}": str(value) for key, value in settings.items()},
        }
        self.processes: list[Process] = []
        self.http = requests.Session()
        self._engine = create_engine(self.db_url, pool_pre_ping=True)

    # processes

    def _spawn(self, name: str, argv: list[str], env: dict | None = None) -> Process:
        index = sum(p.name == name for p in self.processes)
        process = Process(name, argv, env or self.env, self.root / f"{name}-{index}.log")
        self.processes.append(process)
        return process

    def start_web(self, workers: int = 2, threads: int = 4) -> Process:
        env = {
            **self.env,
            "GUNICORN_BIND": f"127.0.0.1:{self.web_port}",
            "GUNICORN_WORKERS": str(workers),
            "GUNICORN_THREADS": str(threads),
        }
        web = self._spawn("gunicorn", [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "vimeo_api.wsgi:app"], env)
        self.web = web

        def answers():
            if not web.alive():
                raise RuntimeError(f"gunicorn exited: {web.log()[-3000:]}")
            try:
                return self.http.get(self.api + "/file/" + "0" * 32, timeout=2).status_code == 404
            except requests.RequestException:
                return False

        wait_until(answers, 30, "gunicorn did not answer")
        return web

    def start_worker(self, **settings) -> Process:
        """A Celery worker, one task at a time (solo pool), with extra ``VIMEO_*`` settings."""
        env = {**self.env, **{f"VIMEO_{k.upper()}": str(v) for k, v in settings.items()}}
        index = sum(p.name == "worker" for p in self.processes)
        worker = self._spawn(
            "worker",
            [
                sys.executable, "-m", "celery", "-A", "celery_worker", "worker",
                "--pool=solo", "--concurrency=1", "--loglevel=INFO", "--without-gossip", "--without-mingle",
                "--without-heartbeat", f"--hostname=w{index}-{self.web_port}@%h",
            ],
            env,
        )
        wait_until(lambda: self._ready(worker), 60, "the Celery worker did not become ready", interval=0.2)
        return worker

    def start_beat(self) -> Process:
        return self._spawn(
            "beat",
            [
                sys.executable, "-m", "celery", "-A", "celery_worker", "beat", "--loglevel=INFO",
                f"--schedule={self.root / 'beat-schedule'}",
            ],
        )

    @staticmethod
    def _ready(worker: Process) -> bool:
        if not worker.alive():
            raise RuntimeError(f"the Celery worker exited: {worker.log()[-3000:]}")
        return " ready." in worker.log()

    def close(self) -> None:
        for process in reversed(self.processes):
            process.stop()
        self.redis.stop()
        self.http.close()
        self._engine.dispose()

    # HTTP

    def upload(self, content: bytes, filename: str = "f.bin", **fields) -> dict:
        answer = self.http.put(
            self.api + "/file",
            files={"file": (filename, content)},
            data={k: str(v) for k, v in fields.items()},
            timeout=30,
        )
        assert answer.status_code == 201, answer.text
        return answer.json()

    # what is behind the answers

    def blob_path(self, sha256: str) -> Path:
        return self.storage_dir / "blobs" / sha256[:2] / sha256[2:4] / sha256

    def sql(self, statement: str, **params) -> list:
        with self._engine.begin() as conn:
            return conn.execute(text(statement), params).fetchall()

    def blob_row(self, sha256: str):
        rows = self.sql("SELECT refcount, release_after FROM blobs WHERE sha256 = :s", s=sha256)
        return rows[0] if rows else None

    def file_row(self, filehash: str):
        return self.sql("SELECT status, gone_reason FROM files WHERE filehash = :h", h=filehash)[0]

    def bytes_released(self, sha256: str) -> bool:
        """The whole release happened: no bytes on disk and no blob row."""
        return not self.blob_path(sha256).exists() and self.blob_row(sha256) is None

    def broker_backlog(self) -> dict:
        """What Redis still holds for the workers: queued and unacknowledged messages."""
        r = self.redis.client()
        return {"queued": r.llen("celery"), "unacked": r.hlen("unacked"), "unacked_index": r.zcard("unacked_index")}

    def task_lines(self, process: Process, task: str, outcome: str) -> list[str]:
        return [line for line in process.log().splitlines() if f"{task}[" in line and outcome in line]


def assert_no_errors(process: Process) -> None:
    """Nothing went wrong in this process's log (a killed predecessor's work included)."""
    log = process.log()
    for marker in ("Traceback", "ERROR/", "CRITICAL/", "WorkerLostError"):
        assert marker not in log, f"{process.name} logged {marker}:\n{log[-4000:]}"


def dump(stack: Stack) -> str:
    """Everything a failing assertion should show: the tail of every process's log."""
    return json.dumps({p.log_path.name: p.log()[-1500:] for p in stack.processes}, indent=1)
