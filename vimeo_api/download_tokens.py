"""Short-lived signed links (SPEC 3.6): what a token stands for, kept in the database.

A token names a random link id and its expiry, signed (``signing``); it never carries
the file's hash, so a link that has expired cannot be turned back into the file's
permanent URL. The id is stored hashed beside the file it opens and the file's
``access_version`` when it was issued: a later password change (which moves that
version) revokes it, and so does its owner (``revoke_for_file``). Expired rows go in
the sweep: an expired token is refused from its signed expiry alone.
"""

from __future__ import annotations

import secrets
from datetime import datetime

from sqlalchemy import delete, select, update

from . import security
from .extensions import db
from .models import DownloadToken, File, utcnow


def create(file: File, expires_at: datetime) -> str:
    """A new link to ``file`` until ``expires_at``, under the access version ``file`` was
    read with; returns its id (128 random bits), which only the signed token carries."""
    link_id = secrets.token_urlsafe(16)
    db.session.add(DownloadToken(
        token_hash=security.hash_token(link_id),
        file_id=file.id,
        access_version=file.access_version,
        created_at=utcnow(),
        expires_at=expires_at,
    ))
    db.session.commit()
    return link_id


def find(link_id: str) -> tuple[DownloadToken, File] | None:
    """The link and its file, read from the database (links are never cached)."""
    row = db.session.execute(
        select(DownloadToken, File)
        .join(File, File.id == DownloadToken.file_id)
        .where(DownloadToken.token_hash == security.hash_token(link_id))
        .execution_options(populate_existing=True)
    ).first()
    return None if row is None else (row[0], row[1])


def is_revoked(link: DownloadToken, file: File) -> bool:
    """Revoked by its owner, or issued before the file's password last changed."""
    return link.revoked_at is not None or link.access_version != file.access_version


def revoke_for_file(file_id: int) -> int:
    """Revoke every live link of a file; returns how many."""
    now = utcnow()
    count = db.session.execute(
        update(DownloadToken)
        .where(DownloadToken.file_id == file_id, DownloadToken.revoked_at.is_(None), DownloadToken.expires_at > now)
        .values(revoked_at=now)
    ).rowcount
    db.session.commit()
    return count


def delete_expired(batch_size: int) -> int:
    """Delete one batch of expired links (for the sweep); returns how many."""
    now = utcnow()
    ids = select(DownloadToken.id).where(DownloadToken.expires_at <= now).limit(batch_size).scalar_subquery()
    count = db.session.execute(delete(DownloadToken).where(DownloadToken.id.in_(ids))).rowcount
    db.session.commit()
    return count
