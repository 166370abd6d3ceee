"""The stack (SPEC 2): nginx in front of gunicorn, a Celery worker and beat, on loopback.

``python -m deploy.stack`` (what ``make stack`` runs) renders ``nginx.conf`` into
``var/stack/``, creates the PostgreSQL database if it is missing, runs the migrations,
then starts gunicorn (X-Accel delivery, raw-upload offload), the Celery worker, Celery
beat and nginx in the foreground. Ctrl-C or SIGTERM stops everything it started; if one
of them dies, the others are stopped too. ``python -m deploy.stack render`` only prints
the rendered nginx.conf (for /etc/nginx with the systemd units in deploy/); with
``VIMEO_STORAGE_URL`` set (an S3 bucket) both add nginx.conf's bucket locations.

Settings come from the environment (a ``.env`` file works): every ``VIMEO_*`` setting of
the app, plus ``VIMEO_STACK_HOST``/``VIMEO_STACK_PORT`` (nginx, default 127.0.0.1:8080),
``VIMEO_STACK_APP_PORT`` (gunicorn, default 8001), ``VIMEO_STACK_DIR`` (default
``var/stack``), ``VIMEO_TLS_CERT``/``VIMEO_TLS_KEY`` (nginx terminates TLS, with HSTS) and
``VIMEO_TRUSTED_PROXIES`` (proxies in front of nginx whose X-Forwarded-For names the
client). The tests and the benchmarks start nginx and gunicorn through the same
functions.
"""

from __future__ import annotations

import argparse
import grp
import ipaddress
import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import jinja2

from vimeo_api.errors import MESSAGES, PHRASES

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "nginx.conf"
MiB = 1024 * 1024
# Where nginx's raw-upload body files go, below the storage directory (same filesystem
# as the blobs, so the app renames them into place). vimeo_api/offload.py checks it.
BODY_DIR = "nginx-body"
# nginx.conf's log of the downloads it answered on the fast path (in its log_dir).
FAST_DOWNLOADS_LOG = "fast-downloads.log"
# nginx.conf's log of what it sent of the transfers the app recorded (in its log_dir).
TRANSFERS_LOG = "transfers.log"
# The errors nginx itself may answer, each as the API's JSON (nginx.conf's error_page
# lines lead to its /_vimeo_error/<code> locations), with the app's phrase
# (vimeo_api/errors.py).
JSON_ERROR_CODES = (400, 403, 404, 405, 408, 411, 412, 413, 414, 416, 429, 500, 502, 503, 504)
# Codes nginx decides that a client must not see as they are, and the status it gets
# instead: 494 (a header line too large; nginx itself sends it as 400), 495-497 (TLS: a
# client certificate that fails or is missing, plain HTTP to the TLS port), and the two
# 5xx that only a client's own request causes (501: a Transfer-Encoding nginx does not
# know; 505: an HTTP version other than 1.x). A hostile request never gets a 5xx.
NGINX_ALIASES = {494: 431, 495: 400, 496: 400, 497: 400, 501: 400, 505: 400}
# nginx's own message where the app's (errors.MESSAGES) does not fit what nginx saw, or
# the app has none: nginx answers before or instead of the app (its 405 has no Allow
# header to point at, its 413 names the limit). The other codes take the app's message.
# "{max_body_size}" is filled in.
NGINX_MESSAGES = {
    400: "The request could not be read.",
    403: "This address is not allowed here.",
    405: "This method is not allowed here.",
    412: "The file does not match the preconditions of the request.",
    413: "The upload is larger than the configured maximum of {max_body_size} bytes.",
    416: "The requested range is not within the file.",
    429: "Slow down and retry.",
    494: "A header field of the request is too large.",
    495: "The client certificate could not be verified.",
    496: "This address requires a client certificate.",
    497: "This port speaks HTTPS: use https://.",
    501: "The Transfer-Encoding of the request is not supported; send a Content-Length or a chunked body.",
    502: "The application is not answering; retry shortly.",
    503: "The service is unavailable; retry shortly.",
    504: "The application did not answer in time; retry shortly.",
    505: "This HTTP version is not supported; use HTTP/1.1.",
}


@dataclass(frozen=True)
class NginxError:
    """One of nginx's JSON error answers: the code nginx decided (the error_page it
    leads to), the status the client gets, and the body, with nginx's ``$request_id``
    as the request id."""

    code: int
    status: int
    body: str


def nginx_errors(max_body_size: int) -> list[NginxError]:
    """The JSON answers of JSON_ERROR_CODES, then of NGINX_ALIASES, in that order."""
    errors = []
    codes = [(code, code) for code in JSON_ERROR_CODES] + list(NGINX_ALIASES.items())
    for code, status in codes:
        message = NGINX_MESSAGES[code].format(max_body_size=max_body_size) if code in NGINX_MESSAGES else MESSAGES[code]
        phrase = PHRASES[status]
        # In nginx's `return` text every "$" starts a variable, and there is no escape
        # for it: only the request id may be one.
        if "$" in phrase + message:
            raise ValueError(f"the error text of {code} cannot be used in nginx.conf: {phrase!r}, {message!r}")
        body = json.dumps({"error": phrase, "message": message, "request_id": "$request_id"})
        errors.append(NginxError(code, status, body))
    return errors


def nginx_string(text: str) -> str:
    """``text`` inside nginx's single quotes: nginx reads a backslash as an escape there
    (``\\``, ``\\'``, ``\\n``...), so each backslash and quote gets one."""
    return text.replace("\\", "\\\\").replace("'", "\\'")


def _template() -> jinja2.Template:
    environment = jinja2.Environment(
        # A value missing from the render fails it rather than leaving nginx an empty word.
        undefined=jinja2.StrictUndefined,
        # Block tags on lines of their own leave no blank lines or indentation behind.
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )
    environment.filters["nginx_string"] = nginx_string
    return environment.from_string(TEMPLATE.read_text())


# Every header an S3-compatible store may answer a GET with, which nginx.conf's bucket
# locations keep from the client (proxy_hide_header; stock nginx has no wildcard): the
# store's validators and content headers (the app's replace them), checksums, metadata
# (rclone also answers ours as a bare "Mtime"), encryption, replication and lock state,
# CORS, request ids, and what AWS, MinIO, Ceph RGW, Cloudflare R2, Backblaze B2, Google
# Cloud Storage and rclone add (deploy/S3-NOTES.md). tests/stack checks that a download
# carries the app's headers and nginx's own, and nothing else.
S3_HIDDEN_HEADERS = (
    "Accept-Ranges", "Cache-Control", "Content-Disposition", "Content-Encoding", "Content-Language",
    "Content-Range", "Content-Type", "ETag", "Expires", "Last-Modified", "Set-Cookie", "Vary", "Mtime",
    "Access-Control-Allow-Credentials", "Access-Control-Allow-Headers", "Access-Control-Allow-Methods",
    "Access-Control-Allow-Origin", "Access-Control-Expose-Headers", "Access-Control-Max-Age",
    "X-Amz-Request-Id", "X-Amz-Id-2", "X-Amz-Date", "X-Amz-Content-Sha256", "X-Amz-Version-Id",
    "X-Amz-Delete-Marker", "X-Amz-Expiration", "X-Amz-Restore", "X-Amz-Missing-Meta",
    "X-Amz-Storage-Class", "X-Amz-Request-Charged", "X-Amz-Replication-Status", "X-Amz-Mp-Parts-Count",
    "X-Amz-Tagging-Count", "X-Amz-Website-Redirect-Location", "X-Amz-Server-Side-Encryption",
    "X-Amz-Server-Side-Encryption-Customer-Algorithm", "X-Amz-Server-Side-Encryption-Customer-Key-MD5",
    "X-Amz-Server-Side-Encryption-Aws-Kms-Key-Id", "X-Amz-Server-Side-Encryption-Bucket-Key-Enabled",
    "X-Amz-Object-Lock-Mode", "X-Amz-Object-Lock-Retain-Until-Date", "X-Amz-Object-Lock-Legal-Hold",
    "X-Amz-Checksum-Crc32", "X-Amz-Checksum-Crc32c", "X-Amz-Checksum-Crc64nvme", "X-Amz-Checksum-Sha1",
    "X-Amz-Checksum-Sha256", "X-Amz-Checksum-Type", "X-Amz-Meta-Mtime", "X-Amz-Bucket-Region",
    "X-Amz-Cf-Id", "X-Amz-Cf-Pop", "X-Amz-Rgw-Request-Id", "X-Rgw-Object-Type", "X-Minio-Deployment-Id",
    "X-Ratelimit-Limit", "X-Ratelimit-Remaining", "X-Xss-Protection", "X-Content-Type-Options",
    "X-Frame-Options", "Content-Security-Policy", "Strict-Transport-Security", "X-Request-Id",
    "X-Bz-Content-Sha1", "X-Bz-File-Id", "X-Bz-File-Name", "X-Bz-Upload-Timestamp", "X-Bz-Info-Src_last_modified_millis",
    "X-Goog-Generation", "X-Goog-Metageneration", "X-Goog-Stored-Content-Encoding",
    "X-Goog-Stored-Content-Length", "X-Goog-Hash", "X-Goog-Storage-Class", "X-GUploader-UploadID",
    "CF-Ray", "CF-Cache-Status", "Alt-Svc", "NEL", "Report-To", "Server-Timing", "Via", "Age",
)


@dataclass
class S3Nginx:
    """What nginx.conf needs to fetch blobs from a bucket (rendered only when the app's
    STORAGE_URL is s3://...): the store's address for its upstream, the timeouts of
    each request to it, and nginx's own content cache."""

    address: str  # "127.0.0.1:9000": where the presigned GETs go
    scheme: str = "http"  # "https" for AWS, R2 and other TLS endpoints
    ca_file: str = "/etc/ssl/certs/ca-certificates.crt"  # what a TLS store's certificate is checked with
    connect_timeout: str = "3s"  # as the app's S3_CONNECT_TIMEOUT
    read_timeout: str = "20s"  # as the app's S3_READ_TIMEOUT
    cache_size: str = "1g"
    cache_inactive: str = "10m"
    hidden_headers: tuple[str, ...] = S3_HIDDEN_HEADERS


def s3_nginx_settings(env: dict[str, str]) -> S3Nginx | None:
    """nginx's S3 settings for the app settings in ``env`` (``VIMEO_*``), or None when the
    bytes are on local disk. The store's address is where the app's presigned URLs point
    (the endpoint, or AWS's virtual host of the bucket), so both always agree."""
    if not env.get("VIMEO_STORAGE_URL"):
        return None
    from urllib.parse import urlsplit

    from vimeo_api.storage_s3 import S3Storage

    settings = {key[len("VIMEO_"):]: value for key, value in env.items() if key.startswith("VIMEO_")}
    store = S3Storage.from_config(settings)
    url = urlsplit(store.presigned_get("0" * 64, 60))
    if url.scheme not in ("http", "https"):
        raise ValueError(f"the store's endpoint must be http or https, not {url.scheme}")
    port = url.port or (443 if url.scheme == "https" else 80)
    return S3Nginx(
        address=f"{url.hostname}:{port}",
        scheme=url.scheme,
        connect_timeout=f"{max(1, round(store.connect_timeout))}s",
        read_timeout=f"{max(1, round(store.read_timeout))}s",
        cache_size=env.get("VIMEO_STACK_S3_CACHE_SIZE", "1g"),
        cache_inactive=env.get("VIMEO_STACK_S3_CACHE_INACTIVE", "10m"),
    )


@dataclass
class NginxSettings:
    """What differs between one rendering of nginx.conf and another."""

    listen: str  # "127.0.0.1:8080"
    app_address: str  # gunicorn: "127.0.0.1:8001" or "unix:/path/to.sock"
    storage_dir: str  # the app's STORAGE_DIR
    runtime_dir: str  # pid file and nginx's temporary files
    log_dir: str | None = None  # access.log and error.log; default: runtime_dir
    pid_file: str | None = None  # default: <runtime_dir>/nginx.pid
    max_body_size: int = 16 * MiB  # the app's MAX_UPLOAD_SIZE
    max_chunk_size: int = 64 * MiB  # the app's MAX_RESUMABLE_CHUNK_SIZE (tus)
    # The app's MULTIPART_OVERHEAD: what a multipart body may carry beyond its file.
    multipart_overhead: int = 64 * 1024
    # nginx's worker user: the user gunicorn runs as, so the app can read and rename
    # the 0600 body files nginx writes. None: the user running this (root included).
    user: str | None = None
    worker_processes: str = "auto"
    error_log_level: str = "crit"
    extra_locations: str = ""  # more location blocks (the benchmark's /static/)
    extra_http: str = ""  # more http-level blocks (the benchmark's upstreams of its baseline apps)
    # TLS terminated by nginx: the certificate (chain) and key files; both or neither.
    tls_cert: str | None = None
    tls_key: str | None = None
    hsts_max_age: int = 31536000
    # Addresses or CIDRs of proxies in front of nginx whose X-Forwarded-For it believes
    # for the client's address (ngx_http_realip_module). Only what really stands there.
    trusted_proxies: tuple[str, ...] = ()
    # nginx's coarse flood guard per client address (the app's limits are the fine ones).
    limit_req_rate: str = "100r/s"
    limit_req_burst: int = 200
    s3: S3Nginx | None = None  # the bytes are in a bucket (s3_nginx_settings)

    def user_directive(self) -> str:
        if self.user:
            return f"user {self.user};"
        if os.geteuid() == 0:
            # The master runs as root and would drop its workers to "nobody", who could
            # neither read the storage nor hand body files to gunicorn (running as us).
            name = pwd.getpwuid(os.geteuid()).pw_name
            group = grp.getgrgid(os.getegid()).gr_name
            return f"user {name} {group};"
        return "# user: not root, so nginx's workers run as the same user as gunicorn."


def render_nginx(settings: NginxSettings) -> str:
    """nginx.conf (the Jinja2 template at the repository's root) for ``settings``."""
    values = {
        "user_directive": settings.user_directive(),
        "worker_processes": settings.worker_processes,
        "runtime_dir": os.path.abspath(settings.runtime_dir),
        "log_dir": os.path.abspath(settings.log_dir or settings.runtime_dir),
        "pid_file": os.path.abspath(settings.pid_file or os.path.join(settings.runtime_dir, "nginx.pid")),
        "error_log_level": settings.error_log_level,
        "listen": settings.listen,
        "app_address": settings.app_address,
        "storage_dir": os.path.abspath(settings.storage_dir),
        "max_body_size": str(int(settings.max_body_size)),
        "max_chunk_size": str(int(settings.max_chunk_size)),
        "max_multipart_body_size": str(int(settings.max_body_size) + int(settings.multipart_overhead)),
        "extra_locations": settings.extra_locations,
        "extra_http": settings.extra_http,
        "json_errors": nginx_errors(int(settings.max_body_size)),
        "tls": bool(settings.tls_cert),
        "tls_cert": os.path.abspath(settings.tls_cert) if settings.tls_cert else "",
        "tls_key": os.path.abspath(settings.tls_key) if settings.tls_key else "",
        "hsts": f"max-age={int(settings.hsts_max_age)}",
        "trusted_proxies": [_address(proxy) for proxy in settings.trusted_proxies],
        "limit_req_rate": settings.limit_req_rate,
        "limit_req_burst": int(settings.limit_req_burst),
        "s3": settings.s3,
    }
    if bool(settings.tls_cert) != bool(settings.tls_key):
        raise ValueError("TLS needs both a certificate and a key (VIMEO_TLS_CERT and VIMEO_TLS_KEY)")
    if not re.fullmatch(r"[0-9]+r/[sm]", settings.limit_req_rate):
        raise ValueError(f"limit_req_rate is not nginx's rate: {settings.limit_req_rate!r}")
    for name in ("runtime_dir", "log_dir", "pid_file", "storage_dir", "tls_cert", "tls_key"):
        # nginx would read a space or ';' as the end of the path.
        if any(ch in values[name] for ch in " ;'\"{}$#\n"):
            raise ValueError(f"{name} cannot be used in nginx.conf: {values[name]!r}")
    return _template().render(values)


def _address(proxy: str) -> str:
    """A trusted proxy's address or network, checked (nginx would take a word for a
    hostname and resolve it at start-up)."""
    try:
        return str(ipaddress.ip_network(proxy.strip(), strict=False))
    except ValueError:
        raise ValueError(f"a trusted proxy is an IP address or CIDR, not {proxy!r}") from None


VCL_TEMPLATE = ROOT / "deploy" / "varnish.vcl"


def render_vcl(backend: str, purgers: tuple[str, ...] = ("127.0.0.1", "::1")) -> str:
    """deploy/varnish.vcl for an edge cache in front of nginx at ``backend``
    ("host:port"); ``purgers``: the addresses that may BAN and PURGE."""
    host, _, port = backend.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"the backend is host:port, not {backend!r}")
    host = host.strip("[]")
    ipaddress.ip_address(host)  # an address: Varnish would resolve a name once, at start
    environment = jinja2.Environment(undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
                                     keep_trailing_newline=True, autoescape=False)
    return environment.from_string(VCL_TEMPLATE.read_text()).render(
        backend_host=host, backend_port=port,
        purgers=[str(ipaddress.ip_address(address)) for address in purgers],
    )


def varnish_command(vcl: Path, listen: str, workdir: Path, *, storage: str = "malloc,64m") -> list[str]:
    """varnishd in the foreground on a rendered VCL. ``-j none``: no privilege
    separation, for a test or a local stack run as one user (a server runs Debian's
    varnish.service instead)."""
    binary = shutil.which("varnishd") or "/usr/sbin/varnishd"
    if not os.access(binary, os.X_OK):
        raise RuntimeError("varnishd is not installed: run scripts/install-nginx varnish (make test does)")
    return [binary, "-F", "-j", "none", "-a", listen, "-f", str(Path(vcl).resolve()), "-n", str(Path(workdir).resolve()),
            "-s", storage, "-p", "ban_lurker_sleep=0.1"]


def write_nginx_conf(settings: NginxSettings) -> Path:
    """Render into ``<runtime_dir>/nginx.conf`` and create the directories it names.

    The runtime and log directories are the service's alone (0750): nginx writes its
    logs 0644, and they, like its cached grant answers, name files' capability URLs.
    """
    runtime = Path(settings.runtime_dir)
    log_dir = Path(settings.log_dir or runtime)
    for directory in (runtime, log_dir):
        directory.mkdir(mode=0o750, parents=True, exist_ok=True)
        directory.chmod(0o750)
    Path(settings.storage_dir, "blobs").mkdir(mode=0o750, parents=True, exist_ok=True)
    path = runtime / "nginx.conf"
    path.write_text(render_nginx(settings))
    return path


def nginx_binary() -> str:
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None)
    if not found:
        raise RuntimeError("nginx is not installed: run scripts/install-nginx (make stack and make test do)")
    return found


def nginx_command(conf: Path, settings: NginxSettings) -> list[str]:
    """nginx in the foreground on a rendered config; ``-e`` keeps even the messages of
    the start-up (before the config is read) out of the package's /var/log/nginx."""
    log_dir = os.path.abspath(settings.log_dir or settings.runtime_dir)
    return [
        nginx_binary(), "-p", os.path.abspath(settings.runtime_dir), "-c", str(conf),
        "-e", os.path.join(log_dir, "error.log"), "-g", "daemon off;",
    ]


def check_nginx_conf(conf: Path, settings: NginxSettings) -> None:
    cmd = nginx_command(conf, settings)
    result = subprocess.run(cmd[:-2] + ["-t", "-q"], capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"nginx rejects {conf}:\n{result.stderr}")


def gunicorn_command() -> list[str]:
    return [sys.executable, "-m", "gunicorn", "-c", str(ROOT / "gunicorn.conf.py"), "vimeo_api.wsgi:app"]


def spawn(cmd: list[str], env: dict[str, str], log_path: str | Path | None = None) -> subprocess.Popen:
    """Start a process in its own session (so ``stop`` reaches everything it forks),
    its output appended to ``log_path`` (inherited when None)."""
    out = open(log_path, "ab") if log_path else None
    try:
        return subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT if out else None,
            start_new_session=True,
        )
    finally:
        if out:
            out.close()


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_in_use(host: str, port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex((host, port)) == 0


def wait_for_http(url: str, timeout: float = 30.0, procs=()) -> None:
    """Until ``url`` answers anything at all (an HTTP error is an answer)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for proc in procs:
            if proc.poll() is not None:
                raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode} while starting")
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer within {timeout:.0f}s")


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 20.0) -> None:
    """Stop a process started with ``start_new_session`` and everything it forked."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()


# -- make stack -------------------------------------------------------------------------

def stack_environment(base: dict[str, str]) -> dict[str, str]:
    """The environment every process of the local stack gets."""
    env = dict(base)
    stack_dir = Path(env.get("VIMEO_STACK_DIR", ROOT / "var" / "stack")).resolve()
    host = env.get("VIMEO_STACK_HOST", "127.0.0.1")
    port = env.get("VIMEO_STACK_PORT", "8080")
    env.setdefault("VIMEO_STACK_DIR", str(stack_dir))
    env.setdefault("VIMEO_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/vimeo")
    env.setdefault("VIMEO_STORAGE_DIR", str(stack_dir / "storage"))
    scheme = "https" if env.get("VIMEO_TLS_CERT") else "http"
    env.setdefault("VIMEO_PUBLIC_URL", f"{scheme}://{host}:{port}")
    env.setdefault("VIMEO_BROKER_URL", "redis://127.0.0.1:6379/0")
    env.setdefault("VIMEO_CACHE_TYPE", "RedisCache")
    env.setdefault("VIMEO_CACHE_REDIS_URL", "redis://127.0.0.1:6379/1")
    # Rate limits counted in Redis, shared by every gunicorn worker (vimeo_api/limits.py).
    env.setdefault("VIMEO_RATELIMIT_STORAGE_URI", "redis://127.0.0.1:6379/2")
    # nginx is the one proxy whose X-Forwarded-For (it sets $remote_addr) gives the client.
    env.setdefault("VIMEO_TRUSTED_PROXY_COUNT", "1")
    # What makes it the stack: nginx sends the bytes and writes raw upload bodies.
    env["VIMEO_DELIVERY"] = "accel"
    env["VIMEO_UPLOAD_OFFLOAD"] = "1"
    # nginx.conf's log of fast-path downloads, counted by the sweep (vimeo_api/fastcount.py).
    env.setdefault("VIMEO_FAST_PATH_LOG", str(stack_dir / "log" / FAST_DOWNLOADS_LOG))
    # nginx.conf's log of what it sent of each recorded transfer (vimeo_api/transfer_log.py).
    env.setdefault("VIMEO_TRANSFER_LOG", str(stack_dir / "log" / TRANSFERS_LOG))
    env.setdefault("GUNICORN_BIND", f"127.0.0.1:{env.get('VIMEO_STACK_APP_PORT', '8001')}")
    # Longer than nginx's upstream keepalive_timeout (60 s): see nginx.conf.
    env.setdefault("GUNICORN_KEEPALIVE", "75")
    # gunicorn's workers add up their metrics in files there (gunicorn.conf.py).
    env.setdefault("PROMETHEUS_MULTIPROC_DIR", str(stack_dir / "prometheus"))
    return env


def ensure_database(url: str) -> None:
    """CREATE DATABASE when the stack's PostgreSQL database does not exist yet."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    target = make_url(url.replace("postgresql://", "postgresql+psycopg2://", 1))
    if not target.drivername.startswith("postgresql"):
        return
    admin = create_engine(target.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            exists = conn.execute(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": target.database}).first()
            if not exists:
                print(f"stack: creating database {target.database}", flush=True)
                conn.execute(text(f'CREATE DATABASE "{target.database}"'))
    finally:
        admin.dispose()


def stack_nginx_settings(env: dict[str, str]) -> NginxSettings:
    stack_dir = env["VIMEO_STACK_DIR"]
    return NginxSettings(
        listen=f"{env.get('VIMEO_STACK_HOST', '127.0.0.1')}:{env.get('VIMEO_STACK_PORT', '8080')}",
        app_address=env["GUNICORN_BIND"],
        storage_dir=env["VIMEO_STORAGE_DIR"],
        runtime_dir=os.path.join(stack_dir, "nginx"),
        log_dir=os.path.join(stack_dir, "log"),
        max_body_size=int(env.get("VIMEO_MAX_UPLOAD_SIZE", 16 * MiB)),
        max_chunk_size=int(env.get("VIMEO_MAX_RESUMABLE_CHUNK_SIZE", 64 * MiB)),
        multipart_overhead=int(env.get("VIMEO_MULTIPART_OVERHEAD", 64 * 1024)),
        tls_cert=env.get("VIMEO_TLS_CERT") or None,
        tls_key=env.get("VIMEO_TLS_KEY") or None,
        trusted_proxies=trusted_proxies(env.get("VIMEO_TRUSTED_PROXIES", "")),
        # VIMEO_STORAGE_URL=s3://...: the bytes in a bucket, the bucket's locations added.
        s3=s3_nginx_settings(env),
    )


def trusted_proxies(value: str) -> tuple[str, ...]:
    """``VIMEO_TRUSTED_PROXIES``: a JSON list or a comma-separated list of addresses and
    CIDRs ("127.0.0.1", "10.0.0.0/8")."""
    value = value.strip()
    if value.startswith("["):
        items = json.loads(value)
    else:
        items = value.split(",")
    return tuple(item.strip() for item in items if item.strip())


def run_stack() -> int:
    try:
        from dotenv import load_dotenv

        load_dotenv(ROOT / ".env", override=False)
    except ImportError:
        pass
    env = stack_environment(os.environ)
    settings = stack_nginx_settings(env)
    nginx_host, nginx_port = settings.listen.rsplit(":", 1)
    app_host, app_port = env["GUNICORN_BIND"].rsplit(":", 1)
    for host, port in ((nginx_host, nginx_port), (app_host, app_port)):
        if port_in_use(host, int(port)):
            print(f"stack: {host}:{port} is already in use (set VIMEO_STACK_PORT / VIMEO_STACK_APP_PORT)", file=sys.stderr)
            return 1
    conf = write_nginx_conf(settings)
    check_nginx_conf(conf, settings)
    ensure_database(env["VIMEO_DATABASE_URL"])
    subprocess.run([sys.executable, "manage.py", "db", "upgrade"], cwd=ROOT, env=env, check=True)

    procs: list[tuple[str, subprocess.Popen]] = []
    stopping = False

    def shutdown(signum=None, _frame=None):
        nonlocal stopping
        if stopping:
            return
        stopping = True
        print("\nstack: stopping", flush=True)
        for name, proc in reversed(procs):
            # nginx: SIGQUIT finishes the transfers under way; the others stop on SIGTERM.
            stop(proc, signal.SIGQUIT if name == "nginx" else signal.SIGTERM)
            print(f"stack: {name} stopped", flush=True)

    signal.signal(signal.SIGINT, shutdown)
    signal.signal(signal.SIGTERM, shutdown)

    def start(name: str, cmd: list[str]) -> subprocess.Popen:
        # Own sessions: Ctrl-C reaches us only, and we stop them in order.
        proc = spawn(cmd, env)
        procs.append((name, proc))
        return proc

    try:
        web = start("gunicorn", gunicorn_command())
        wait_for_http(f"http://{env['GUNICORN_BIND']}/healthz", procs=[web])
        start("worker", [sys.executable, "-m", "celery", "-A", "celery_worker", "worker", "--loglevel", "INFO"])
        start("beat", [
            sys.executable, "-m", "celery", "-A", "celery_worker", "beat", "--loglevel", "INFO",
            "--schedule", os.path.join(env["VIMEO_STACK_DIR"], "celerybeat-schedule"), "--pidfile=",
        ])
        nginx = start("nginx", nginx_command(conf, settings))
        wait_for_http(f"http://{settings.listen}/healthz", procs=[nginx])
    except Exception as exc:
        print(f"stack: {exc}", file=sys.stderr)
        shutdown()
        return 1
    log_dir = settings.log_dir
    print(
        f"stack: up on http://{settings.listen} (nginx → gunicorn {env['GUNICORN_BIND']}, Celery worker and beat)\n"
        f"stack: storage {env['VIMEO_STORAGE_DIR']}, nginx logs in {log_dir}; Ctrl-C stops everything",
        flush=True,
    )
    while not stopping:
        for name, proc in procs:
            if proc.poll() is not None and not stopping:
                print(f"stack: {name} exited with {proc.returncode}", file=sys.stderr, flush=True)
                shutdown()
                return 1
        time.sleep(0.5)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.stack", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("run", help="run the local stack in the foreground (the default)")
    render = sub.add_parser("render", help="print nginx.conf rendered for a server (see deploy/README.md)")
    render.add_argument("--listen", default="80")
    render.add_argument("--app", default="127.0.0.1:8000", help="gunicorn's address")
    render.add_argument("--storage-dir", default="/var/lib/vimeo_api/storage")
    render.add_argument("--runtime-dir", default="/var/lib/nginx/vimeo", help="nginx's temporary files")
    render.add_argument("--log-dir", default="/var/log/nginx")
    render.add_argument("--pid-file", default="/run/nginx.pid", help="where Debian's nginx.service looks")
    render.add_argument("--max-upload-size", type=int, default=16 * MiB)
    render.add_argument("--multipart-overhead", type=int, default=64 * 1024,
                        help="the app's MULTIPART_OVERHEAD")
    render.add_argument("--user", default="www-data", help="nginx's worker user: the user gunicorn runs as")
    render.add_argument("--tls-cert", help="TLS certificate (chain) file: nginx terminates TLS, with HSTS")
    render.add_argument("--tls-key", help="the certificate's key file")
    render.add_argument("--trusted-proxy", action="append", default=[], metavar="ADDRESS",
                        help="a proxy in front of nginx whose X-Forwarded-For names the client (repeat)")
    vcl = sub.add_parser("render-vcl", help="print deploy/varnish.vcl rendered for an edge cache in front of nginx")
    vcl.add_argument("--backend", default="127.0.0.1:80", help="nginx's address, host:port")
    vcl.add_argument("--purger", action="append", default=[], metavar="ADDRESS",
                     help="an address that may BAN/PURGE (repeat; default 127.0.0.1 and ::1)")
    args = parser.parse_args(argv)
    if args.command == "render-vcl":
        sys.stdout.write(render_vcl(args.backend, tuple(args.purger) or ("127.0.0.1", "::1")))
        return 0
    if args.command == "render":
        sys.stdout.write(render_nginx(NginxSettings(
            listen=args.listen, app_address=args.app, storage_dir=args.storage_dir,
            runtime_dir=args.runtime_dir, log_dir=args.log_dir, pid_file=args.pid_file,
            max_body_size=args.max_upload_size, multipart_overhead=args.multipart_overhead,
            user=args.user, tls_cert=args.tls_cert, tls_key=args.tls_key,
            trusted_proxies=tuple(args.trusted_proxy),
            # With the app's settings loaded (VIMEO_STORAGE_URL...): the bucket's locations.
            s3=s3_nginx_settings(dict(os.environ)),
        )))
        return 0
    return run_stack()


if __name__ == "__main__":
    sys.exit(main())
