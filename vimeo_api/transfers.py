"""The transfers downloads made (``models.Transfer``): recorded as they start, finished
when the sender says what it sent, resumed within the window, listed for the owner.

A counted download's transfer is added in the same transaction as the UPDATE that uses
the download (``files.consume_download``), so one never exists without the other. A
resumption uses no download: its transfer names the counted one it continues
(``resumed_from``, the first of the chain), and marks the transfer it follows as cut
off, since the client evidently lacked its last bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Boolean, bindparam, case, insert, or_, select, update

from .extensions import db
from .models import Transfer


@dataclass
class Start:
    """A transfer about to begin; ``id`` is filled in once it is recorded."""

    file_id: int
    sha256: str
    at: datetime
    range_start: int
    bytes_expected: int
    client_key: str
    client_address: str | None = None
    resumed_from: int | None = None
    id: int | None = None


_INSERT = (
    insert(Transfer.__table__)
    .values({name: bindparam(name) for name in (
        "file_id", "sha256", "at", "range_start", "bytes_expected", "client_key", "client_address",
        "resumed_from", "cut_off")})
    .returning(Transfer.__table__.c.id)
)


def add(start: Start, connection=None) -> int:
    """Record a transfer in the current transaction of ``connection`` (a Core connection:
    the download's own; default: the session's); the caller commits. Its id."""
    params = {
        "file_id": start.file_id, "sha256": start.sha256, "at": start.at, "range_start": start.range_start,
        "bytes_expected": start.bytes_expected, "client_key": start.client_key,
        "client_address": start.client_address, "resumed_from": start.resumed_from, "cut_off": False,
    }
    start.id = (connection or db.session).execute(_INSERT, params).scalar_one()
    return start.id


def resumable(file_id: int, sha256: str, client_key: str, since: datetime) -> Transfer | None:
    """The counted transfer of this content by this client since ``since`` (the resume
    window's start) that a Range request may continue, the latest if several."""
    return db.session.execute(
        select(Transfer)
        .where(
            Transfer.file_id == file_id,
            Transfer.at >= since,
            Transfer.client_key == client_key,
            Transfer.sha256 == sha256,
            Transfer.resumed_from.is_(None),
        )
        .order_by(Transfer.at.desc(), Transfer.id.desc())
        .limit(1)
    ).scalar_one_or_none()


def resume(counted: Transfer, start: Start) -> int:
    """Record a resumption of ``counted`` and mark the latest transfer of its chain cut
    off; commits. Returns the new transfer's id."""
    latest = db.session.execute(
        select(Transfer.id)
        .where(or_(Transfer.id == counted.id, Transfer.resumed_from == counted.id))
        .order_by(Transfer.id.desc())
        .limit(1)
    ).scalar_one()
    db.session.execute(update(Transfer).where(Transfer.id == latest).values(cut_off=True))
    start.resumed_from = counted.id
    transfer_id = add(start)
    db.session.commit()
    return transfer_id


def finish(reports: list[tuple[int, int, bool]]) -> None:
    """What senders report once answers ended, as (transfer id, bytes sent, whether the
    answer ended normally); complete when it did and carried every byte it was to. A
    transfer is finished once: a repeated report is ignored. Commits."""
    if not reports:
        return
    table = Transfer.__table__
    db.session.execute(
        update(table)
        .where(table.c.id == bindparam("tid"), table.c.sender_completed.is_(None))
        .values(
            bytes_sent=bindparam("sent"),
            sender_completed=case((table.c.bytes_expected <= bindparam("sent"), bindparam("done", type_=Boolean)),
                                  else_=False),
        ),
        [{"tid": tid, "sent": sent, "done": done} for tid, sent, done in reports],
    )
    db.session.commit()


def of_file(file_id: int, limit: int) -> list[Transfer]:
    """A file's latest ``limit`` transfers, oldest first."""
    rows = db.session.execute(
        select(Transfer).where(Transfer.file_id == file_id).order_by(Transfer.at.desc(), Transfer.id.desc()).limit(limit)
    ).scalars().all()
    return list(reversed(rows))


def window_start(now: datetime, seconds: float) -> datetime:
    """The earliest start of a counted transfer that may still be resumed."""
    return now - timedelta(seconds=seconds)
