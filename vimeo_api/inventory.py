"""What is stored, as operators see it: listings, totals and integrity checks; and what
happened to one file, as its owner sees it (``downloads_of``).

Shared by the operator API (``GET /files``, ``GET /stats``) and ``manage.py`` (``files
list|show|verify``, ``stats``), so both answer from the same queries.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from flask import current_app
from sqlalchemy import func, select

from . import transfer_log, transfers
from .extensions import db
from .models import Blob, File, FileStatus, Version, VersionStatus, utcnow
from .storage import CHUNK, Storage


def available_clause(now):
    """SQL for "this file's URL may still serve" (the row-level twin of ``File.is_available``)."""
    return (
        (File.status == FileStatus.AVAILABLE)
        & (File.expires_at.is_(None) | (File.expires_at > now))
        & ((File.max_downloads == 0) | (File.downloads < File.max_downloads))
    )


def status_clause(status: str, now):
    """The WHERE clause for a listing's ``status`` filter; ValueError for an unknown one."""
    if status == "available":
        return available_clause(now)
    if status == "gone":
        return ~available_clause(now)
    if status == "all":
        return None
    raise ValueError("status must be available, gone or all")


def describe_file(file: File, now) -> dict:
    """A file as operators see it: never its password hash or owner token."""
    return {
        "filehash": file.filehash,
        "filename": file.filename,
        "size": file.size,
        "content_type": file.content_type,
        "sha256": file.sha256,
        "status": "available" if file.is_available(now) else "gone",
        "gone_reason": file.gone_reason,
        "downloads": file.downloads,
        "max_downloads": file.max_downloads,
        "password_protected": file.password_hash is not None,
        "created_at": iso(file.created_at),
        "expires_at": iso(file.expires_at),
    }


def downloads_of(file: File) -> list[dict]:
    """The file's latest transfers (``DOWNLOADS_LIST_LIMIT``), oldest first: when each
    began, the bytes sent (None until the sender said: nginx's log is read first), whether
    it completed, whether it resumed an earlier one; the client address only when
    ``DOWNLOADS_CLIENT_ADDRESS`` keeps it."""
    transfer_log.read()
    show_client = current_app.config["DOWNLOADS_CLIENT_ADDRESS"]
    events = []
    for row in transfers.of_file(file.id, current_app.config["DOWNLOADS_LIST_LIMIT"]):
        event = {
            "at": iso(row.at),
            "bytes_sent": row.bytes_sent,
            "completed": row.completed,
            "resumed": row.resumed_from is not None,
        }
        if show_client:
            event["client"] = row.client_address
        events.append(event)
    return events


def iter_files(status: str = "all", batch_size: int = 500) -> Iterator[File]:
    """Every file matching ``status``, oldest first, read in keyset batches (memory stays
    flat however many rows there are)."""
    now = utcnow()
    clause = status_clause(status, now)
    after = 0
    while True:
        query = select(File).where(File.id > after).order_by(File.id).limit(batch_size)
        if clause is not None:
            query = query.where(clause)
        rows = db.session.execute(query).scalars().all()
        yield from rows
        if len(rows) < batch_size:
            return
        after = rows[-1].id


def published_versions(file: File) -> int:
    """How many published (not retired) versions a file has."""
    return db.session.execute(
        select(func.count(Version.id)).where(Version.file_id == file.id, Version.status == VersionStatus.PUBLISHED)
    ).scalar_one()


def collect_stats() -> dict:
    """Files and bytes by status, downloads, bytes served, stored blobs (``GET /stats``)."""
    now = utcnow()
    by_status = {}
    for label, clause in (("available", available_clause(now)), ("gone", ~available_clause(now))):
        count, size = db.session.execute(
            select(func.count(File.id), func.coalesce(func.sum(File.size), 0)).where(clause)
        ).one()
        by_status[label] = {"files": count, "bytes": int(size)}
    downloads, served = db.session.execute(
        select(func.coalesce(func.sum(File.downloads), 0), func.coalesce(func.sum(File.bytes_served), 0))
    ).one()
    blobs, stored = db.session.execute(
        select(func.count(Blob.sha256), func.coalesce(func.sum(Blob.size), 0))
    ).one()
    return {
        "files": by_status,
        "downloads": int(downloads),
        "bytes_served": int(served),
        "stored": {"blobs": blobs, "bytes": int(stored)},
    }


# -- integrity ------------------------------------------------------------------------

@dataclass
class Problem:
    """A file whose stored bytes are not what its row records."""

    filehash: str
    sha256: str
    problem: str  # "missing", "corrupt" or "unreadable"
    detail: str

    def as_dict(self) -> dict:
        return {"filehash": self.filehash, "sha256": self.sha256, "problem": self.problem, "detail": self.detail}


def count_available() -> int:
    """How many files may still serve (what ``verify_available`` checks)."""
    return db.session.execute(select(func.count(File.id)).where(available_clause(utcnow()))).scalar_one()


def verify_available(storage: Storage, progress: Callable[[int], None] = lambda n: None) -> list[Problem]:
    """Re-hash the bytes behind every available file against its recorded SHA-256 and
    size; returns the files whose bytes are missing, corrupt or unreadable.

    Files are read in hash order so content shared by several files is hashed once;
    ``progress(n)`` is told after each group of ``n`` files. Rows are read in keyset
    batches and each blob in chunks, so memory stays flat.
    """
    problems: list[Problem] = []
    now = utcnow()
    after = ("", 0)
    while True:
        rows = db.session.execute(
            select(File.id, File.filehash, File.sha256, File.size)
            .where(available_clause(now))
            .where((File.sha256 > after[0]) | ((File.sha256 == after[0]) & (File.id > after[1])))
            .order_by(File.sha256, File.id)
            .limit(500)
        ).all()
        # Nothing is written here; ending the read transaction keeps it from holding a
        # snapshot (PostgreSQL) or a read lock (SQLite) while files are hashed.
        db.session.rollback()
        if not rows:
            return problems
        group: list = []
        for row in rows:
            if group and row.sha256 != group[0].sha256:
                problems += _check_group(storage, group)
                progress(len(group))
                group = []
            group.append(row)
        problems += _check_group(storage, group)
        progress(len(group))
        after = (rows[-1].sha256, rows[-1].id)


def _check_group(storage: Storage, rows: list) -> list[Problem]:
    """Hash one blob once and judge each file using it (their recorded sizes may differ
    only if the database itself is inconsistent)."""
    sha256 = rows[0].sha256
    found = hash_blob(storage, sha256)
    problems = []
    for row in rows:
        if isinstance(found, Problem):
            problem, detail = found.problem, found.detail
        elif found != (sha256, row.size):
            problem = "corrupt"
            detail = f"stored bytes hash to {found[0]} ({found[1]} bytes); the row records {sha256} ({row.size} bytes)"
        else:
            continue
        problems.append(Problem(row.filehash, sha256, problem, detail))
    return problems


def hash_blob(storage: Storage, sha256: str) -> tuple[str, int] | Problem:
    """(sha256, size) of a blob's bytes, read in chunks; a Problem when they cannot be read."""
    digest = hashlib.sha256()
    size = 0
    try:
        with storage.open(sha256) as blob:
            while chunk := blob.read(CHUNK):
                digest.update(chunk)
                size += len(chunk)
    except ValueError:
        return Problem("", sha256, "corrupt", "the recorded sha256 is not a hex digest")
    except FileNotFoundError:
        return Problem("", sha256, "missing", "no stored bytes for this content")
    except OSError as exc:
        return Problem("", sha256, "unreadable", f"{exc.__class__.__name__}: {os.strerror(exc.errno or 0)}")
    return digest.hexdigest(), size


def iso(dt) -> str | None:
    """ISO 8601 UTC with a Z, whole seconds; None stays None."""
    return None if dt is None else dt.strftime("%Y-%m-%dT%H:%M:%SZ")
