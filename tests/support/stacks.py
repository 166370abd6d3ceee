"""Deployments of several processes: nginx in front of gunicorn (``NginxStack``), and
gunicorn with Celery workers and beat on a Redis and a PostgreSQL of their own
(``WorkerStack``). Both are built from support.services and deploy/stack.py.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
from dataclasses import dataclass, field
from pathlib import Path

import requests
from sqlalchemy import create_engine, text

from deploy.stack import (
    BODY_DIR,
    FAST_DOWNLOADS_LOG,
    TRANSFERS_LOG,
    MiB,
    NginxSettings,
    check_nginx_conf,
    free_port,
    nginx_command,
    s3_nginx_settings,
    wait_for_http,
    write_nginx_conf,
)

from . import API, FAST_PASSWORD_HASH, PUBLIC_URL, SHARED_REDIS
from .database import empty_tables
from .logs import complete_lines, complete_text, wait_for_lines
from .polling import eventually
from .services import (
    PrivatePostgres,
    READY_PATH,
    PrivateRedis,
    Service,
    clean_environment,
    gunicorn_environment,
    start_celery_beat,
    start_celery_worker,
    start_gunicorn,
)
from .targets import HttpTarget, PublicURLAdapter


def blob_path(storage_dir: str | Path, sha256: str) -> Path:
    """Where the local storage keeps the bytes of ``sha256``."""
    return Path(storage_dir, "blobs", sha256[:2], sha256[2:4], sha256)


def files_in(directory: Path) -> list[Path]:
    return [p for p in directory.rglob("*") if p.is_file()] if directory.exists() else []


# -- a bucket -----------------------------------------------------------------------------

class Bucket:
    """The part of an S3 server's bucket one deployment uses (its key prefix), looked at
    over S3 as the app sees it: objects, and multipart uploads not yet completed."""

    def __init__(self, server, prefix: str):
        self.server = server
        self.name = server.bucket
        self.prefix = prefix.strip("/") + "/"
        self._client = None

    @property
    def client(self):
        if self._client is None:
            self._client = self.server.client()
        return self._client

    def keys(self, area: str = "") -> list[str]:
        """Every object key below ``<prefix><area>``, all pages, relative to the prefix."""
        found = []
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.name, Prefix=self.prefix + area)
        for page in pages:
            found += [item["Key"][len(self.prefix):] for item in page.get("Contents", ())]
        return sorted(found)

    def multipart_uploads(self) -> list[str]:
        """Keys (relative to the prefix) of the multipart uploads started and not yet
        completed or aborted."""
        from botocore.exceptions import ClientError

        try:
            answer = self.client.list_multipart_uploads(Bucket=self.name, Prefix=self.prefix)
        except ClientError as exc:  # rclone after a restart, before any upload (S3-NOTES.md)
            if exc.response["Error"]["Code"] == "NoSuchUpload":
                return []
            raise
        return sorted(item["Key"][len(self.prefix):] for item in answer.get("Uploads", ()))

    def stored(self, area: str = "") -> list[str]:
        """Objects below ``area`` and unfinished uploads there, relative to ``area``."""
        area = area.strip("/") + "/" if area.strip("/") else ""
        names = self.keys(area) + [key for key in self.multipart_uploads() if key.startswith(area)]
        return sorted(name[len(area):] for name in names)

    def blob_key(self, sha256: str) -> str:
        return f"{self.prefix}blobs/{sha256[:2]}/{sha256[2:4]}/{sha256}"

    def get(self, sha256: str) -> bytes:
        return self.client.get_object(Bucket=self.name, Key=self.blob_key(sha256))["Body"].read()

    def empty(self) -> None:
        """Every object and unfinished upload below the prefix removed."""
        for key in self.multipart_uploads():
            for upload in self.client.list_multipart_uploads(Bucket=self.name, Prefix=self.prefix + key).get("Uploads", ()):
                self.client.abort_multipart_upload(Bucket=self.name, Key=upload["Key"], UploadId=upload["UploadId"])
        for key in self.keys():
            self.client.delete_object(Bucket=self.name, Key=self.prefix + key)


# -- nginx in front of gunicorn -----------------------------------------------------------

@dataclass
class NginxStack:
    """One running nginx + gunicorn pair and where to look behind it."""

    root: Path
    db_url: str
    env: dict
    settings: NginxSettings
    base: str = ""  # nginx
    app_base: str = ""  # gunicorn, directly (to see what the app itself answered)
    services: dict = field(default_factory=dict)
    bucket: "Bucket | None" = None  # the bytes are in S3 (start_stack(s3=...))

    @property
    def storage_dir(self) -> str:
        """The app's STORAGE_DIR: the bytes, or with a bucket the node's scratch space."""
        return self.env["VIMEO_STORAGE_DIR"]

    def stored(self, area: str = "") -> list[str]:
        """What the storage holds below ``area`` ("blobs", "tmp"; "" for everything), as
        paths relative to it: files on local disk, or objects and unfinished multipart
        uploads in the bucket."""
        if self.bucket is not None:
            return self.bucket.stored(area)
        directory = Path(self.storage_dir, area)
        return sorted(str(p.relative_to(directory)) for p in files_in(directory))

    @property
    def body_dir(self) -> Path:
        return Path(self.storage_dir, BODY_DIR)

    @property
    def log_dir(self) -> Path:
        return self.root / "log"

    def access_log(self) -> str:
        return complete_text(self.log_dir / "access.log")

    def error_log(self) -> str:
        return complete_text(self.log_dir / "error.log")

    def app_log(self) -> str:
        return complete_text(self.log_dir / "gunicorn.log")

    def fast_downloads(self) -> list[str]:
        """nginx.conf's log of the downloads it answered on the fast path."""
        return complete_lines(self.log_dir / FAST_DOWNLOADS_LOG)

    def access_line(self, request_id: str) -> str:
        """nginx's access-log line of one request (written just after its answer)."""
        path = self.log_dir / "access.log"
        found = eventually(lambda: [line for line in complete_lines(path) if f"rid={request_id} " in line])
        assert len(found) == 1, self.access_log()[-2000:]
        return found[0]

    def app_line(self, request_id: str) -> str:
        """The app's JSON request line of one request through nginx (its X-Request-Id)."""
        return wait_for_lines(self.log_dir / "gunicorn.log",
                              lambda line: f'"request_id": "{request_id}"' in line and '"vimeo_api.requests"' in line,
                              timeout=5)[0]

    def settled_app_log(self) -> str:
        """The app's log once every request answered so far is in it.

        gunicorn writes a request's line just after its answer, so no wait for a
        particular line can show that no more are coming. A request sent after all
        the others (straight to gunicorn, about no file) is: once its line is complete,
        the lines of the requests answered before it are written too.
        """
        marker = requests.get(self.app_base + READY_PATH, timeout=10)
        self.app_line(marker.headers["X-Request-Id"])
        return self.app_log()

    def start_gunicorn(self) -> None:
        self.services["gunicorn"] = start_gunicorn(self.env, self.log_dir / "gunicorn.log")

    def stop_gunicorn(self) -> None:
        # SIGINT: gunicorn's quick shutdown (SIGTERM waits for nginx's idle keep-alive
        # connections to end).
        self.services.pop("gunicorn").stop(signal.SIGINT)

    def start_nginx(self) -> None:
        conf = write_nginx_conf(self.settings)
        check_nginx_conf(conf, self.settings)
        nginx = Service("nginx", nginx_command(conf, self.settings), self.env, self.log_dir / "nginx.out")
        self.services["nginx"] = nginx
        # Plain HTTP to a TLS port is an answer too (nginx's JSON 400).
        wait_for_http(self.base.replace("https://", "http://", 1) + "/_nothing_here", procs=[nginx.proc])

    def stop(self) -> None:
        if "nginx" in self.services:
            self.services.pop("nginx").stop()
        if "gunicorn" in self.services:
            self.stop_gunicorn()

    def reset(self) -> None:
        """Every table but the migrations' emptied, every stored byte removed."""
        engine = create_engine(self.db_url)
        try:
            with engine.begin() as conn:
                empty_tables(conn)
        finally:
            engine.dispose()
        if self.bucket is not None:
            self.bucket.empty()
        for entry in Path(self.storage_dir).iterdir():
            if entry == self.body_dir:
                # nginx created this directory and writes into it: empty it, keep it.
                for leftover in entry.iterdir():
                    leftover.unlink()
            elif entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        Path(self.storage_dir, "blobs").mkdir(exist_ok=True)
        # Its position went with the storage, and transfer ids restart with the tables:
        # lines of earlier tests must not finish this test's transfers (nginx appends).
        transfers_log = self.log_dir / TRANSFERS_LOG
        if transfers_log.exists():
            transfers_log.write_bytes(b"")

    def target(self, name: str = "stack") -> "StackTarget":
        """A target on nginx that also follows the public URLs the API hands out."""
        t = StackTarget(name, self)
        t.session.mount(PUBLIC_URL, PublicURLAdapter(PUBLIC_URL, self.base))
        return t


class StackTarget(HttpTarget):
    """A conformance target on a stack's nginx; what is stored is the stack's to say
    (files on disk, or objects in its bucket)."""

    def __init__(self, name: str, stack: NginxStack):
        super().__init__(name, stack.base, stack.db_url, stack.storage_dir)
        self.stack = stack

    def stored(self, area: str = "") -> list[str]:
        return self.stack.stored(area)


def start_stack(root: Path, db_url: str, *, public_url: str = PUBLIC_URL, delivery: str = "accel",
                offload: bool = True, max_upload: int = 16 * MiB, nginx: dict | None = None, s3=None,
                **env_overrides) -> NginxStack:
    """nginx + gunicorn on free ports, files under ``root``; stop with ``NginxStack.stop``.
    ``nginx``: more NginxSettings (TLS, trusted proxies, the flood guard's rate). ``s3``:
    an S3 server (deploy/s3server.py) whose bucket holds the bytes, under a key prefix of
    this stack's own; ``root/storage`` is then the node's scratch space."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "log").mkdir(exist_ok=True)
    nginx_port, app_port = free_port(), free_port()
    env = gunicorn_environment(clean_environment(
        VIMEO_DATABASE_URL=db_url,
        VIMEO_STORAGE_DIR=root / "storage",
        VIMEO_STATE_DIR=root / "state",
        VIMEO_PUBLIC_URL=public_url,
        VIMEO_DELIVERY=delivery,
        VIMEO_UPLOAD_OFFLOAD="1" if offload else "0",
        VIMEO_MAX_UPLOAD_SIZE=max_upload,
        VIMEO_PASSWORD_HASH_METHOD=FAST_PASSWORD_HASH,
        VIMEO_EMBEDDED_SWEEP_INTERVAL=0,
        # As in the stack: nginx is the one proxy whose X-Forwarded-For names the client.
        VIMEO_TRUSTED_PROXY_COUNT=1,
        GUNICORN_KEEPALIVE=75,
        # Redis for the metadata cache and the rate limits, as in `make stack`, under
        # keys of this stack's own (other runs share the server).
        VIMEO_CACHE_TYPE="RedisCache",
        VIMEO_CACHE_REDIS_URL=SHARED_REDIS + "/1",
        VIMEO_CACHE_KEY_PREFIX=f"vimeo_test_{os.getpid()}_{nginx_port}:",
        VIMEO_RATELIMIT_STORAGE_URI=SHARED_REDIS + "/2",
        VIMEO_RATELIMIT_KEY_PREFIX=f"vimeo_test_{os.getpid()}_{nginx_port}",
        # The conformance suite uploads from one address faster than the default allows
        # (tests/test_limits.py checks the limit itself).
        VIMEO_UPLOAD_RATE_LIMIT="100000/minute",
        VIMEO_UPLOAD_BYTES_LIMIT=f"{1 << 40}/hour",
        # ... and sends wrong passwords to many files from one address within a minute
        # (each file's own budget stays the default; tests/test_limits.py checks both).
        VIMEO_PASSWORD_ADDRESS_RATE_LIMIT="100000/minute",
        VIMEO_FAST_PATH_LOG=root / "log" / FAST_DOWNLOADS_LOG,
        VIMEO_TRANSFER_LOG=root / "log" / TRANSFERS_LOG,
    ), app_port, workers=2, threads=4)
    bucket = None
    if s3 is not None:
        bucket = Bucket(s3, f"stack-{os.getpid()}-{nginx_port}")
        env.update(s3.env(bucket.prefix))
    env.update({k: str(v) for k, v in env_overrides.items()})
    settings = NginxSettings(
        listen=f"127.0.0.1:{nginx_port}",
        app_address=env["GUNICORN_BIND"],
        storage_dir=env["VIMEO_STORAGE_DIR"],
        runtime_dir=str(root / "nginx"),
        log_dir=str(root / "log"),
        max_body_size=max_upload,
        worker_processes="2",
        s3=s3_nginx_settings(env),
        **(nginx or {}),
    )
    scheme = "https" if settings.tls_cert else "http"
    stack = NginxStack(root, db_url, env, settings, base=f"{scheme}://127.0.0.1:{nginx_port}",
                       app_base=f"http://{env['GUNICORN_BIND']}", bucket=bucket)
    try:
        stack.start_gunicorn()
        stack.start_nginx()
    except BaseException:
        stack.stop()
        raise
    return stack


# -- gunicorn with Celery workers ------------------------------------------------------------

class WorkerStack:
    """gunicorn + Celery worker + beat on a Redis of its own, a database of its own (on a
    private PostgreSQL cluster) and a storage directory of its own. Nothing touches the
    shared Redis or PostgreSQL: a test may stop and start both to simulate outages."""

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
        self.env = clean_environment(
            VIMEO_DATABASE_URL=self.db_url,
            VIMEO_STORAGE_DIR=self.storage_dir,
            VIMEO_STATE_DIR=root / "state",
            # Redis as the stack uses it: broker, cache and rate limits (deploy/vimeo.env.example).
            VIMEO_BROKER_URL=self.redis.url(0),
            VIMEO_CACHE_TYPE="RedisCache",
            VIMEO_CACHE_REDIS_URL=self.redis.url(1),
            VIMEO_RATELIMIT_STORAGE_URI=self.redis.url(2),
            VIMEO_PUBLIC_URL=self.base,
            VIMEO_PASSWORD_HASH_METHOD=FAST_PASSWORD_HASH,
            **{f"VIMEO_{key.upper()}": value for key, value in settings.items()},
        )
        self.services: list[Service] = []
        self.http = requests.Session()
        self._engine = create_engine(self.db_url, pool_pre_ping=True)

    # processes

    def _log_path(self, name: str) -> Path:
        return self.root / f"{name}-{sum(s.name == name for s in self.services)}.log"

    def start_web(self, workers: int = 2, threads: int = 4) -> Service:
        env = gunicorn_environment(self.env, self.web_port, workers, threads)
        self.web = start_gunicorn(env, self._log_path("gunicorn"))
        self.services.append(self.web)
        return self.web

    def start_worker(self, **settings) -> Service:
        """A Celery worker, one task at a time (solo pool), with extra ``VIMEO_*`` settings."""
        env = {**self.env, **{f"VIMEO_{k.upper()}": str(v) for k, v in settings.items()}}
        index = sum(s.name == "worker" for s in self.services)
        worker = start_celery_worker(env, self._log_path("worker"), f"w{index}-{self.web_port}@%h")
        self.services.append(worker)
        return worker

    def start_beat(self) -> Service:
        beat = start_celery_beat(self.env, self._log_path("beat"), self.root / "beat-schedule")
        self.services.append(beat)
        return beat

    def close(self) -> None:
        for service in reversed(self.services):
            service.stop()
        self.redis.stop()
        self.http.close()
        self._engine.dispose()

    # what is behind the answers

    def blob_path(self, sha256: str) -> Path:
        return blob_path(self.storage_dir, sha256)

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
        try:
            return {"queued": r.llen("celery"), "unacked": r.hlen("unacked"), "unacked_index": r.zcard("unacked_index")}
        finally:
            r.close()

    @staticmethod
    def task_lines(service: Service, task: str, outcome: str) -> list[str]:
        return [line for line in service.lines() if f"{task}[" in line and outcome in line]


def assert_no_errors(service: Service) -> None:
    """Nothing went wrong in this process's log (a killed predecessor's work included)."""
    log = service.log()
    for marker in ("Traceback", "ERROR/", "CRITICAL/", "WorkerLostError"):
        assert marker not in log, f"{service.name} logged {marker}:\n{log[-4000:]}"


def dump(stack: WorkerStack) -> str:
    """Everything a failing assertion should show: the tail of every process's log."""
    return json.dumps({s.log_path.name: s.log()[-1500:] for s in stack.services}, indent=1)
