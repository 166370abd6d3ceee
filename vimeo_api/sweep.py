"""The periodic sweep: finishes every recorded intent whose task was lost, and cleans up.

It works in bounded batches, so memory stays flat however much is due:
expired files are marked gone, released blobs whose grace is over lose their bytes,
temporary uploads left by killed processes are removed, and stored bytes that no row
knows are deleted.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import asdict, dataclass

from flask import current_app
from sqlalchemy import select

from . import files
from .extensions import db
from .models import Blob

log = logging.getLogger(__name__)


@dataclass
class SweepReport:
    expired: int = 0
    released: int = 0
    stale_uploads: int = 0
    orphans: int = 0

    def as_dict(self) -> dict:
        return asdict(self)


def run(batch_size: int | None = None, orphans: bool = True) -> SweepReport:
    cfg = current_app.config
    batch_size = batch_size or cfg["SWEEP_BATCH_SIZE"]
    report = SweepReport()
    while (n := files.expire_due(batch_size)) > 0:
        report.expired += n
    while shas := files.releasable_blobs(batch_size):
        done = sum(files.release_blob(sha) for sha in shas)
        report.released += done
        if done == 0:
            break
    storage = files.storage()
    report.stale_uploads = storage.remove_stale_uploads(cfg["STALE_UPLOAD_SECONDS"])
    if orphans:
        report.orphans = remove_orphans(batch_size, cfg["STALE_UPLOAD_SECONDS"])
    if any(asdict(report).values()):
        log.info("sweep: %s", report.as_dict())
    return report


def remove_orphans(batch_size: int, min_age: float) -> int:
    """Delete stored bytes with no blob row (left by a commit that failed after the
    rename). Young files are skipped: their upload may still be committing."""
    storage = files.storage()
    cutoff = time.time() - min_age
    removed = 0
    batch: list[str] = []

    def flush() -> int:
        known = set(db.session.execute(select(Blob.sha256).where(Blob.sha256.in_(batch))).scalars())
        db.session.rollback()
        n = 0
        for sha in batch:
            if sha not in known:
                path = storage.blob_path(sha)
                try:
                    if os.stat(path).st_mtime < cutoff:
                        os.unlink(path)
                        n += 1
                except FileNotFoundError:
                    pass
        batch.clear()
        return n

    for sha in storage.iter_blobs():
        batch.append(sha)
        if len(batch) >= batch_size:
            removed += flush()
    if batch:
        removed += flush()
    return removed


def start_embedded_sweeper(app) -> threading.Thread | None:
    """On the embedded default (no Celery beat), sweep from a daemon thread of the process
    serving requests, so expiry and deletion still happen without any server."""
    interval = app.config["EMBEDDED_SWEEP_INTERVAL"]
    if not interval or app.config["BROKER_URL"]:
        return None

    def loop():
        while True:
            time.sleep(interval)
            try:
                with app.app_context():
                    run()
            except Exception:  # keep sweeping; the next round retries
                log.exception("embedded sweep failed")

    thread = threading.Thread(target=loop, name="vimeo-sweeper", daemon=True)
    thread.start()
    return thread
