"""The service run the way deploy/vimeo-web.service runs it (issue 13, item 1): gunicorn
started from a copy of the code made read-only, in a mount namespace where everything
but the state directory is read-only (``ProtectSystem=strict``, ``ReadWritePaths=``)
and /tmp is its own (``PrivateTmp=``), with the unit's umask and deploy/vimeo.env.example
as its environment (paths moved under the test's directory, a Redis of its own that
wants a password), behind the project's nginx.

Password downloads and signed links work, the key is made in the state directory, the
code directory is left as it was, stored bytes are not readable by others; an empty or
short key file stops the server at start with a message that names it.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from sqlalchemy import create_engine, text

from support.services import PrivateRedis
from deploy.stack import NginxSettings, check_nginx_conf, free_port, nginx_command, spawn, stop, wait_for_http, write_nginx_conf

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
CODE = ("vimeo_api", "migrations", "manage.py", "gunicorn.conf.py", "celery_worker.py")
API = "/vimeo/api/v1.0"
REDIS_PASSWORD = "redis-pass-" + "x" * 12


def unit_settings(name: str) -> dict[str, str]:
    """The [Service] settings of a unit file (the last of a repeated key)."""
    settings = {}
    for line in (DEPLOY / name).read_text().splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            key, value = line.split("=", 1)
            settings[key.strip()] = value.strip()
    return settings


def example_environment(state_dir: Path, redis: PrivateRedis, db_url: str, bind: str) -> dict[str, str]:
    """deploy/vimeo.env.example as systemd reads it, with the machine's paths moved under
    the test's state directory and the database, Redis and address made the test's."""
    env = {}
    for line in (DEPLOY / "vimeo.env.example").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, value = line.split("=", 1)
            env[key] = value.replace("/var/lib/vimeo_api", str(state_dir))
    for key in ("VIMEO_BROKER_URL", "VIMEO_CACHE_REDIS_URL", "VIMEO_RATELIMIT_STORAGE_URI"):
        database = env[key].rsplit("/", 1)[1]
        env[key] = redis.url(int(database))  # redis://:PASSWORD@host:port/db, as the example says
    env.update({"VIMEO_DATABASE_URL": db_url, "GUNICORN_BIND": bind, "GUNICORN_WORKERS": "2",
                "VIMEO_PASSWORD_HASH_METHOD": "pbkdf2:sha256:1000"})
    return env


class Service:
    """gunicorn confined as the unit confines it; see the module's docstring."""

    def __init__(self, tmp: Path, db_url: str, redis: PrivateRedis):
        self.code = tmp / "opt-vimeo_api"
        self.state = tmp / "var-lib-vimeo_api"
        self.private_tmp = tmp / "private-tmp"
        self.log = tmp / "gunicorn.log"
        self.port = free_port()
        unit = unit_settings("vimeo-web.service")
        assert unit["ProtectSystem"] == "strict" and unit["ReadWritePaths"] == "/var/lib/vimeo_api"
        self.umask = unit["UMask"]
        for name in CODE:
            source = ROOT / name
            if source.is_dir():
                shutil.copytree(source, self.code / name, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                self.code.mkdir(exist_ok=True)
                shutil.copy(source, self.code / name)
        subprocess.run(["chmod", "-R", "a-w", str(self.code)], check=True)
        self.state.mkdir(mode=int(unit["StateDirectoryMode"], 8))
        self.private_tmp.mkdir()
        self.env = {
            "PATH": os.environ["PATH"], "LANG": "C.UTF-8",
            **example_environment(self.state, redis, db_url, f"127.0.0.1:{self.port}"),
        }

    def confined(self, *command: str) -> list[str]:
        """``command`` in a mount namespace of its own: the state directory and a private
        /tmp writable, everything else read-only; the unit's umask."""
        script = " && ".join([
            "set -e",
            f"mount --bind {shlex.quote(str(self.state))} {shlex.quote(str(self.state))}",
            f"mount --bind {shlex.quote(str(self.private_tmp))} {shlex.quote(str(self.private_tmp))}",
            "mount -o remount,bind,ro /",
            f"umask {self.umask}",
            f"export TMPDIR={shlex.quote(str(self.private_tmp))}",
            "exec " + " ".join(shlex.quote(c) for c in command),
        ])
        return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script]

    def migrate(self) -> None:
        """ExecStartPre: manage.py db upgrade, confined too."""
        result = subprocess.run(self.confined(sys.executable, "manage.py", "db", "upgrade"), cwd=self.code,
                                env=self.env, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stdout + result.stderr

    def start(self) -> subprocess.Popen:
        command = self.confined(sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "vimeo_api.wsgi:app")
        out = open(self.log, "ab")
        try:
            return subprocess.Popen(command, cwd=self.code, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        finally:
            out.close()

    def code_listing(self) -> list[tuple[str, int]]:
        return sorted((str(p.relative_to(self.code)), p.stat().st_size) for p in self.code.rglob("*")
                      if "__pycache__" not in p.parts)


@pytest.fixture
def service(tmp_path, pg_url):
    redis = PrivateRedis(tmp_path / "redis", password=REDIS_PASSWORD)
    redis.start()
    engine = create_engine(pg_url)
    with engine.begin() as conn:
        conn.execute(text("TRUNCATE files, blobs, versions, api_tokens, download_tokens RESTART IDENTITY CASCADE"))
    engine.dispose()
    svc = Service(tmp_path, pg_url, redis)
    yield svc
    redis.stop()
    subprocess.run(["chmod", "-R", "u+w", str(svc.code)], check=True)


def test_the_service_runs_with_a_read_only_code_directory_and_the_example_environment(service, tmp_path):
    service.migrate()
    before = service.code_listing()
    web = service.start()
    nginx = None
    try:
        wait_for_http(f"http://127.0.0.1:{service.port}/healthz", procs=[web])
        settings = NginxSettings(
            listen=f"127.0.0.1:{free_port()}", app_address=service.env["GUNICORN_BIND"],
            storage_dir=service.env["VIMEO_STORAGE_DIR"], runtime_dir=str(tmp_path / "nginx"),
            log_dir=str(tmp_path / "nginx-log"), max_body_size=int(service.env["VIMEO_MAX_UPLOAD_SIZE"]),
            worker_processes="1",
        )
        conf = write_nginx_conf(settings)
        check_nginx_conf(conf, settings)
        nginx = spawn(nginx_command(conf, settings), service.env, tmp_path / "nginx.out")
        base = f"http://{settings.listen}"
        wait_for_http(base + "/healthz", procs=[nginx])

        up = requests.put(base + API + "/file", files={"file": ("secret.txt", b"for your eyes")},
                          data={"password": "s3cret", "max_downloads": "0"}, timeout=30)
        assert up.status_code == 201, up.text
        body = up.json()
        assert body["url"].startswith("https://files.example.com" + API)  # the example's PUBLIC_URL
        path = f"{API}/file/{body['filehash']}"
        assert requests.get(base + path, timeout=10).status_code == 401
        got = requests.get(base + path, headers={"X-Password": "s3cret"}, timeout=10)
        assert (got.status_code, got.content) == (200, b"for your eyes")
        # Twice: the second is answered from the password cache in the Redis that wants a password.
        assert requests.get(base + path, auth=("", "s3cret"), timeout=10).content == b"for your eyes"

        issued = requests.post(base + path + "/tokens", headers={"X-Password": "s3cret"}, timeout=10)
        assert issued.status_code == 201, issued.text
        token_path = issued.json()["url"].removeprefix("https://files.example.com")
        assert requests.get(base + token_path, timeout=10).content == b"for your eyes"

        raw = requests.put(base + API + "/upload/raw.bin", data=b"offloaded by nginx", timeout=30)
        assert raw.status_code == 201, raw.text
        ready = requests.get(base + "/readyz", timeout=10)
        assert ready.status_code == 200, ready.text

        key = service.state / "token-signing.key"
        assert stat.S_IMODE(key.stat().st_mode) == 0o600 and re.fullmatch(r"[0-9a-f]{64}\n", key.read_text())
        assert service.code_listing() == before  # nothing written beside the code
        storage = Path(service.env["VIMEO_STORAGE_DIR"])
        blobs = [p for p in (storage / "blobs").rglob("*") if p.is_file()]
        assert len(blobs) == 2
        for p in [storage, *storage.rglob("*")]:
            if p.is_symlink():
                continue
            assert p.stat().st_mode & 0o007 == 0, (p, oct(p.stat().st_mode))  # nothing for others
        assert "Traceback" not in service.log.read_text()
    finally:
        if nginx is not None:
            stop(nginx)
        stop(web, timeout=20)


@pytest.mark.parametrize("content", ["", "0123456789"])
def test_an_empty_or_short_key_stops_the_service_at_start(service, content):
    service.migrate()
    (service.state / "token-signing.key").write_text(content)
    web = service.start()
    try:
        web.wait(timeout=60)
    except subprocess.TimeoutExpired:
        stop(web)
        pytest.fail("gunicorn kept running with an unusable signing key")
    assert web.returncode != 0
    log = service.log.read_text()
    path = service.state / "token-signing.key"
    assert f"the token signing key {path} holds {len(content)} characters" in log
    assert "Remove the file to have a new key made" in log
    assert (service.state / "token-signing.key").read_text() == content
