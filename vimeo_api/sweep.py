"""The periodic sweep: finishes every recorded intent whose task was lost, and cleans up.

It works in bounded batches, one transaction each, so memory stays flat however much is
due: expired files are marked gone, versions of deleted or expired files are retired,
temporary uploads left by killed processes are removed, unfinished resumable uploads
past their expiry are removed, stored bytes that no row knows are adopted as releasable
blobs, and blobs nothing uses whose grace is over lose their
bytes. The orphan scan walks the whole storage directory, so it runs less often
(``ORPHAN_SWEEP_INTERVAL``) than the rest (``SWEEP_INTERVAL``).

Each step runs on its own: one that fails (nginx's log unreadable, a batch that keeps
failing) is logged with its trace, named in the report's ``failed`` and counted in the
metrics, and the steps after it still run, so expiry and the reclaiming of space never
wait on counting downloads.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from flask import current_app
from sqlalchemy.exc import DBAPIError

from . import blobs, download_tokens, fastcount, files, grants, observability, resumable, storage, transfer_log, versions
from .extensions import db
from .models import utcnow

log = logging.getLogger(__name__)

# PostgreSQL's deadlock_detected and serialization_failure: a batch that lost such a race
# was rolled back whole and can simply run again.
_TRANSIENT = {"40P01", "40001"}


@dataclass
class SweepReport:
    expired: int = 0
    retired: int = 0
    released: int = 0
    fast_downloads: int = 0
    transfers_finished: int = 0
    stale_grants: int = 0
    stale_uploads: int = 0
    orphans: int = 0
    # Unfinished resumable (tus) uploads past Upload-Expires, and completed ones whose
    # answer to HEAD is no longer kept: bytes and rows.
    expired_uploads: int = 0
    expired_links: int = 0
    # The steps that failed (logged with their traces); the others ran.
    failed: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)

    def counts(self) -> dict[str, int]:
        """What each step did (or found to do), without ``failed``."""
        return {k: v for k, v in asdict(self).items() if k != "failed"}


def run(batch_size: int | None = None, orphans: bool = True) -> SweepReport:
    """One sweep (with the orphan scan unless ``orphans`` is false); safe to run
    concurrently with requests, workers and other sweeps."""
    cfg = current_app.config
    batch_size = batch_size or cfg["SWEEP_BATCH_SIZE"]
    report = SweepReport()
    steps: list[tuple[str, Callable[[], int]]] = [
        # On several nodes each node reads its own nginx's logs (start_node_upkeep).
        ("fast_downloads", lambda: 0 if fastcount.counted_by_nodes(cfg) else fastcount.count_served()),
        ("transfers_finished", lambda: 0 if fastcount.counted_by_nodes(cfg) else transfer_log.read()),
        ("expired", lambda: drain(files.expire_due, batch_size)),
        ("stale_grants", lambda: grants.audit(batch_size)),
        ("retired", lambda: drain(versions.retire_due, batch_size)),
        ("stale_uploads", lambda: storage.current().remove_stale_uploads(cfg["STALE_UPLOAD_SECONDS"])),
        ("expired_uploads", lambda: drain(resumable.remove_expired, batch_size)),
        ("expired_links", lambda: drain(download_tokens.delete_expired, batch_size)),
    ]
    if orphans:
        steps.append(("orphans", lambda: remove_orphans(batch_size, cfg["STALE_UPLOAD_SECONDS"])))
        # Resumable uploads' bytes that no row knows are temporary files like stale uploads.
        steps.append(("stale_uploads", lambda: report.stale_uploads
                      + resumable.remove_orphans(cfg["STALE_UPLOAD_SECONDS"])))
    # Last, so that orphans adopted (and files used up by late counts) lose their bytes
    # in this same sweep.
    steps.append(("released", lambda: drain(blobs.release_due, batch_size)))
    for name, step in steps:
        try:
            setattr(report, name, step())
        except Exception:  # each step on its own: the next ones still run
            db.session.rollback()
            log.exception("sweep step %s failed; the other steps ran", name)
            report.failed.append(name)
    if any(report.counts().values()) or report.failed:
        log.info("sweep: %s", report.as_dict())
    observability.record_sweep(report)
    return report


def drain(batch: Callable[[int], int], batch_size: int, attempts: int = 3) -> int:
    """Run ``batch`` until it finds nothing more to do; returns the total it did. A batch
    rolled back by a deadlock with a concurrent request is retried a few times."""
    total = 0
    failures = 0
    while True:
        try:
            n = batch(batch_size)
        except DBAPIError as exc:
            db.session.rollback()
            failures += 1
            if getattr(exc.orig, "pgcode", None) not in _TRANSIENT or failures >= attempts:
                raise
            log.warning("sweep batch rolled back (%s), retrying", exc.orig.pgcode)
            continue
        if n == 0:
            return total
        total += n


def remove_orphans(batch_size: int, min_age: float) -> int:
    """Hand stored bytes that no blob row knows (left by a commit that failed after the
    rename) to the release pass; returns how many.

    Each orphan becomes a blob row with no user, due at once, and the release pass
    removes it under the row's lock. Unlinking it here instead could race with an upload
    of the same content that has just found the bytes in place and not yet committed its
    row; as a row, the upload's upsert either waits for the release or revives the blob.
    Young files are skipped: their upload may still be committing.
    """
    store = storage.current()
    cutoff = time.time() - min_age
    adopted = 0
    batch: list[str] = []

    def flush() -> int:
        known = blobs.known(batch)
        rows = []
        for sha in batch:
            if sha not in known:
                stat = store.stat(sha)
                if stat is not None and stat.mtime < cutoff:
                    rows.append({"sha256": sha, "size": stat.size, "refcount": 0, "created_at": now, "release_after": now})
        batch.clear()
        if rows:
            return blobs.adopt_orphans(rows)
        db.session.rollback()
        return 0

    now = utcnow()
    for sha in store.iter_blobs():
        batch.append(sha)
        if len(batch) >= batch_size:
            adopted += flush()
    if batch:
        adopted += flush()
    return adopted


def start_node_upkeep(app) -> threading.Thread | None:
    """On several nodes (``NODE_UPKEEP_INTERVAL``): what only the node itself can do, from
    a daemon thread of each of its gunicorn workers: count the downloads its nginx
    answered and what it sent of the transfers the app recorded (its own logs; a lock lets
    one worker at a time), and remove the grants other
    nodes' changes outdated (its own disk). The sweep does the rest, anywhere."""
    interval = app.config["NODE_UPKEEP_INTERVAL"]
    if not interval:
        return None

    lock_path = os.path.join(app.config["STORAGE_DIR"], "node-upkeep.lock")

    def loop():
        while True:
            time.sleep(interval)
            try:
                os.makedirs(os.path.dirname(lock_path), exist_ok=True)
                with open(lock_path, "a") as lock:
                    try:
                        # One worker of the node at a time; the others skip this round.
                        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except BlockingIOError:
                        continue
                    with app.app_context():
                        fastcount.count_served()
                        transfer_log.read()
                        grants.audit(app.config["SWEEP_BATCH_SIZE"])
            except Exception:  # the database may be down: the next round reads on
                log.exception("node upkeep failed")

    thread = threading.Thread(target=loop, name="vimeo-node-upkeep", daemon=True)
    thread.start()
    return thread


def start_embedded_sweeper(app) -> threading.Thread | None:
    """On the embedded default (no Celery beat), sweep from a daemon thread of the process
    serving requests, so expiry and deletion still happen without any server."""
    interval = app.config["EMBEDDED_SWEEP_INTERVAL"]
    if not interval or app.config["BROKER_URL"]:
        return None

    def loop():
        last_orphan_scan = float("-inf")
        while True:
            time.sleep(interval)
            scan = time.monotonic() - last_orphan_scan >= app.config["ORPHAN_SWEEP_INTERVAL"]
            try:
                with app.app_context():
                    run(orphans=scan)
                if scan:
                    last_orphan_scan = time.monotonic()
            except Exception:  # keep sweeping; the next round retries
                log.exception("embedded sweep failed")

    thread = threading.Thread(target=loop, name="vimeo-sweeper", daemon=True)
    thread.start()
    return thread
