"""Worker tasks. Each takes ids or hashes (never ORM objects), is idempotent, and is
acknowledged late, so a worker killed mid-task leaves the message to be redelivered."""

from __future__ import annotations

from celery import shared_task
from flask import current_app
from sqlalchemy.exc import OperationalError

from . import blobs, sweep


@shared_task(
    acks_late=True,
    autoretry_for=(OperationalError, OSError),
    retry_backoff=True,
    retry_backoff_max=300,
    max_retries=20,
)
def release_blob_task(sha256: str) -> bool:
    """Remove a blob's bytes once nothing uses it and its grace period is over.

    Retries with backoff while the database or the disk fails; if it never succeeds the
    intent stays in the database and the sweep finishes it.
    """
    return blobs.release(sha256, pause=current_app.config["TEST_RELEASE_DELAY"])


@shared_task(acks_late=True)
def sweep_task(orphans: bool = True) -> dict:
    """The periodic sweep (Celery beat in the stack, a thread on the embedded default);
    ``orphans`` adds the scan of the storage directory."""
    return sweep.run(orphans=orphans).as_dict()
