"""Worker tasks. Each takes ids or hashes (never ORM objects), is idempotent, and is
acknowledged late, so a worker killed mid-task leaves the message to be redelivered."""

from __future__ import annotations

from celery import shared_task
from sqlalchemy.exc import OperationalError

from . import files, sweep


@shared_task(
    acks_late=True,
    autoretry_for=(OperationalError, OSError),
    retry_backoff=True,
    retry_backoff_max=300,
    max_retries=20,
)
def release_blob_task(sha256: str) -> bool:
    """Remove a blob's bytes once nothing uses it and its grace period is over."""
    return files.release_blob(sha256)


@shared_task(acks_late=True)
def sweep_task() -> dict:
    """The periodic sweep (Celery beat in the stack, a thread on the embedded default)."""
    return sweep.run().as_dict()
