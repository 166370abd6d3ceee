"""The stack with its bytes in an S3 bucket, for bench/suite.py's S3 rows (issue 14).

``start_s3_stack`` starts, on free loopback ports, a local S3 server (``rclone serve s3``,
deploy/s3server.py, its objects on the project's disk) and the stack on it: gunicorn
(``VIMEO_DELIVERY=accel``, the upload offload, ``STORAGE_URL`` on the bucket) behind nginx
rendered from nginx.conf with the bucket's locations. ``upload_to_s3_through_nginx``
times a large ``curl -T`` through it with the app's peak RSS, as bench/upload_offload.py
does for local disk.
"""

from __future__ import annotations

import json
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from bench.harness import API, app_env, start_gunicorn, start_nginx
from bench.measure import PeakRSS
from deploy.s3server import S3Server, start_rclone
from deploy.stack import BODY_DIR, free_port, s3_nginx_settings


@dataclass
class S3Stack:
    nginx: str  # base URL of its nginx
    gunicorn_proc: subprocess.Popen
    nginx_proc: subprocess.Popen
    server: S3Server
    prefix: str
    scratch: Path  # the node's STORAGE_DIR: nginx's body files, grants

    def presigned(self, sha256: str, expires_in: int = 3600) -> str:
        """The S3 server's own GET of a blob (what nginx fetches), valid ``expires_in``."""
        from vimeo_api.storage_s3 import S3Storage, parse_storage_url

        settings = self.server.settings(self.prefix)
        bucket, prefix = parse_storage_url(settings["STORAGE_URL"])
        store = S3Storage(bucket, prefix, endpoint_url=settings["S3_ENDPOINT_URL"], region=settings["S3_REGION"],
                          access_key_id=settings["S3_ACCESS_KEY_ID"], secret_access_key=settings["S3_SECRET_ACCESS_KEY"])
        return store.presigned_get(sha256, expires_in)

    def object_size(self, sha256: str) -> int:
        key = f"{self.prefix}/blobs/{sha256[:2]}/{sha256[2:4]}/{sha256}"
        return int(self.server.client().head_object(Bucket=self.server.bucket, Key=key)["ContentLength"])


def start_s3_stack(work: Path, db_url: str, procs: list, env_extra: dict, max_body_size: int) -> S3Stack:
    """rclone, gunicorn and nginx as described above; every process goes into ``procs``
    (the caller stops them; rclone is stopped through its ``S3Server`` too)."""
    server = start_rclone(work / "s3-data", log_path=work / "rclone.log")
    procs.append(server.proc)
    prefix = "bench"
    scratch = work / "s3-scratch"
    nginx_port, app_port = free_port(), free_port()
    env = app_env(db_url, scratch, f"http://127.0.0.1:{nginx_port}", f"127.0.0.1:{app_port}",
                  VIMEO_DELIVERY="accel", VIMEO_UPLOAD_OFFLOAD="1", VIMEO_MAX_UPLOAD_SIZE=str(max_body_size),
                  **server.env(prefix), **env_extra)
    gunicorn = start_gunicorn(env, work / f"gunicorn-s3-{app_port}.log", procs)
    nginx = start_nginx(work, "s3", nginx_port, env["GUNICORN_BIND"], scratch, env, procs,
                        max_body_size=max_body_size, s3=s3_nginx_settings(env))
    return S3Stack(f"http://127.0.0.1:{nginx_port}", gunicorn, nginx, server, prefix, scratch)


def upload_to_s3_through_nginx(stack: S3Stack, source: Path, sha256: str, headers: dict | None = None) -> dict:
    """``curl -T source`` to the S3 stack's ``/upload/``: the client's wall time to the
    201 and the peak RSS of gunicorn's and nginx's workers meanwhile. Checks the 201 (size,
    SHA-256), the object's size in the bucket, and that nginx left no body file."""
    size = source.stat().st_size
    app_rss, nginx_rss = PeakRSS(stack.gunicorn_proc.pid), PeakRSS(stack.nginx_proc.pid)
    app_rss.start()
    nginx_rss.start()
    argv = ["curl", "-sS", "--fail-with-body", "-T", str(source), "-H", "Expect:"]
    for name, value in (headers or {}).items():
        argv += ["-H", f"{name}: {value}"]
    start = time.monotonic()
    try:
        out = subprocess.run([*argv, f"{stack.nginx}{API}/upload/big.bin"], check=True, capture_output=True,
                             text=True).stdout
        seconds = time.monotonic() - start
    finally:
        app_peak, nginx_peak = app_rss.stop(), nginx_rss.stop()
    body = json.loads(out)
    assert body["size"] == size and body["sha256"] == sha256, body
    assert stack.object_size(sha256) == size
    assert not any((stack.scratch / BODY_DIR).iterdir()), "nginx left a body file"
    return {"seconds": seconds, "mbps": size / seconds / 1e6, "app_peak": app_peak, "nginx_peak": nginx_peak,
            "body": body}
