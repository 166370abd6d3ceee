"""The fast path's grant store: nginx answers hot downloads of shareable files with no
Python at all, through grants this module keeps (its subrequest view is ``fastpath``).

For a public file (unlimited downloads, no password) and for a published version, every
client gets the same answer. nginx asks the app about such a URL once, with an
``auth_request`` subrequest to ``/_vimeo/grant/...``, keeps the app's answer in its
``proxy_cache`` and from then on sends the bytes itself (nginx.conf, "fast path").

Correct by construction: nginx uses a cached answer only while the *grant* it names
exists. A grant is a symlink ``<storage>/grants/<f|v>/<ab>/<id>/<digest>`` to the blob,
and ``digest`` hashes everything the answer says (content hash, size, type, filename,
Last-Modified, expiry, cache class). nginx serves the bytes through that path
(``try_files``), and sends the request to the app whenever the grant directory or the
grant is missing. Hence:

* a change that keeps the file shareable but changes its answer (new content, new
  expiry) gives it a new digest: a cached answer names a grant that no longer exists;
* a change that ends sharing (DELETE, expiry, a password or a download limit added by
  PATCH, a retired version, a purge) removes the file's grant directory: nginx sends the
  next request to the app, which answers from the database;
* every writer announces its change after its commit (``events``), and this module,
  listening, removes the grants before the writer's request answers (blinker calls
  receivers synchronously), so the bound is zero: once a DELETE, PUT, PATCH or purge has
  answered, no cached answer is used;
* expiry needs no writer: nginx keeps an answer at most until the second before the
  file's ``expires_at`` (``X-Accel-Expires``), and a file expiring within
  ``MIN_LIFETIME`` seconds gets no grant;
* nginx keeps an answer ``MAX_AGE`` seconds, so after a change it asks again within
  about two seconds and the fast path resumes with the new grant.

Grants are only created here, create-then-verify: make the symlink, then re-read the row
from the database and remove the symlink again unless the row still has the digest's
state. A writer commits, then removes. Whichever way the two interleave, a grant never
outlives the state it names: either the verification reads the writer's commit, or the
writer's removal comes after the symlink was made.

The database also has the last word when the removal itself is lost (a worker killed
between its commit and its removal): nginx's grant subrequest verifies an existing grant
against the row every time it asks (once a second per hot file, ``MAX_AGE``), whatever
the metadata cache says, so such a grant ends within that second rather than at the
sweep's audit. The digest includes the file's ``access_version``: a file that had a
password added and removed again never matches a grant made before.

**With the bytes in a bucket, on several nodes** (``Storage.nginx_file`` is None), there
is no blob to link to: a grant is an empty marker file at the same path, which nginx
checks the same way before it proxies the presigned GET the answer names
(``Storage.nginx_fetch``). A writer removes its own node's markers as above (bound zero
there), but not another node's. So each node's answer is checked against the database
(the state every node shares) every time nginx asks, even where a marker exists, and
nginx may keep it only through the second in which the row was read
(``Grant.cache_until``): a change on any node ends every other node's fast path less
than one second after its commit (tests/cluster checks it with two nodes). Markers other
nodes outdated are removed by each node's own upkeep (``sweep.start_node_upkeep``).
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from dataclasses import dataclass, field, replace
from datetime import datetime

from flask import Flask, current_app
from sqlalchemy import select

from . import events, storage, versions
from .extensions import db
from .models import File, Version, VersionStatus, utcnow
from .representation import CacheClass, content_headers, file_cache_class

GRANTS = "grants"
# A file expiring sooner than this gets no grant (nginx's clock ticks in whole seconds).
MIN_LIFETIME = 2
# Seconds nginx keeps a grant answer. Its grant guards it, so this bounds no staleness:
# only how long a changed file (whose cached answer names a grant that is gone) goes
# through the app before nginx asks again. One subrequest per second per hot file.
MAX_AGE = 1
ID = re.compile(r"^[0-9a-f]{32}$")


def init_app(app: Flask) -> None:
    """Listen to the domain's changes: a changed file or a retired version loses its grants."""
    events.files_changed.connect(_on_files_changed)
    events.versions_retired.connect(_on_versions_retired)


def _on_files_changed(app: Flask, filehashes: list[str], versions: bool) -> None:
    revoke_files(filehashes, with_versions=versions)


def _on_versions_retired(app: Flask, version_ids: list[str]) -> None:
    revoke_versions(version_ids)


@dataclass(frozen=True)
class Grant:
    """What nginx may answer for one shareable file or version, and where its bytes are."""

    kind: str  # "f" (a file) or "v" (a published version)
    ident: str  # filehash or version_id
    resource: object  # the File / FileMeta / Version the headers come from
    klass: CacheClass  # PUBLIC or IMMUTABLE
    expires_at: datetime | None
    # How nginx fetches the bytes when it cannot read them as a file (the bucket), and
    # when the row this grant was checked against was read (time.time()).
    fetch: dict[str, str] | None = field(default=None, compare=False)
    read_at: float | None = field(default=None, compare=False)

    @property
    def digest(self) -> str:
        r = self.resource
        expires = "" if self.expires_at is None else f"{self.expires_at.timestamp():.6f}"
        # A version has no password: its access never changes.
        access = str(getattr(r, "access_version", ""))
        state = "\0".join(
            [self.kind, self.ident, r.sha256, str(r.size), r.content_type, r.filename,
             f"{r.modified_at.timestamp():.6f}", expires, self.klass, access]
        )
        return hashlib.sha256(state.encode()).hexdigest()[:32]

    @property
    def relpath(self) -> str:
        return f"{self.kind}/{self.ident[:2]}/{self.ident}/{self.digest}"

    def cache_until(self, now: float) -> int:
        """The last second (Unix time) through which nginx may use this answer.

        A grant on disk guards its answer, so the answer may live MAX_AGE seconds. One
        with no file behind it (the bucket) is only as good as the row it was read
        from: through the end of the second of that read, less than one second. Never
        through the second of the file's expiry: nginx uses an entry through the whole
        second it names, so it stops a second early.
        """
        until = int(now) + MAX_AGE if self.fetch is None else int(self.read_at)
        if self.expires_at is not None:
            until = min(until, int(self.expires_at.timestamp()) - 1)
        return until

    def headers(self) -> dict[str, str]:
        """The answer's headers, under the private names nginx's fast path re-adds."""
        h = content_headers(self.resource, self.klass)
        return {
            **(self.fetch or {}),
            "X-Vimeo-Grant": self.relpath,
            "X-File-Content-Type": h["Content-Type"],
            "X-File-Content-Disposition": h["Content-Disposition"],
            "X-File-ETag": h["ETag"],
            "X-File-Last-Modified": h["Last-Modified"],
            "X-File-Cache-Control": h["Cache-Control"],
            "X-File-Content-Security-Policy": h["Content-Security-Policy"],
            "X-File-Surrogate-Key": h["Surrogate-Key"],
        }


def enabled() -> bool:
    return bool(current_app.config["FAST_PATH"])


def _lives_long_enough(expires_at: datetime | None, now: datetime) -> bool:
    return expires_at is None or (expires_at - now).total_seconds() > MIN_LIFETIME


def file_grant(file, klass: CacheClass | None = None) -> Grant | None:
    """The grant a file may have now: available, unlimited, no password, not expiring,
    not empty (every Range nginx answers on the fast path is satisfiable then).
    ``klass``: the file's cache class, when the caller knows it already."""
    now = utcnow()
    if file is None or not file.is_available(now) or not _lives_long_enough(file.expires_at, now):
        return None
    if file.size == 0:
        return None
    if (klass or file_cache_class(file)) is not CacheClass.PUBLIC:
        return None
    return Grant("f", file.filehash, file, CacheClass.PUBLIC, file.expires_at)


def version_grant(found: tuple[Version, File] | None) -> Grant | None:
    """The grant a published version may have now (it lives until its file's expiry)."""
    if found is None:
        return None
    version, file = found
    now = utcnow()
    if not versions.is_available(version, file, now) or not _lives_long_enough(file.expires_at, now):
        return None
    if version.size == 0:
        return None
    return Grant("v", version.version_id, version, CacheClass.IMMUTABLE, file.expires_at)


def ensure_file(file, klass: CacheClass | None = None, *, verify: bool = False) -> Grant | None:
    """Make sure a shareable file has its grant (called on downloads the app answered).
    ``verify``: check a grant that exists already against the database too (nginx's
    subrequest, which trusts the answer)."""
    return _ensure(file_grant(file, klass), lambda: file_grant(_fresh_file(file.filehash)), verify)


def ensure_version(found: tuple[Version, File] | None, *, verify: bool = False) -> Grant | None:
    return _ensure(version_grant(found), lambda: version_grant(_fresh_version(found[0].version_id)), verify)


def _ensure(grant: Grant | None, reload, verify: bool = False) -> Grant | None:
    if grant is None or not enabled():
        return None
    store = storage.current()
    blob = store.nginx_file(grant.resource.sha256)
    fetch = store.nginx_fetch(grant.resource.sha256) if blob is None else None
    if blob is None and fetch is None:
        return None  # nginx can reach this storage's blobs neither way
    path = os.path.join(_root(), grant.relpath)
    if os.path.lexists(path):
        # On local disk every writer removes the grants it outdates before it answers
        # (``verify``: nginx's subrequest checks anyway). With a bucket, a writer on
        # another node cannot: the database says, each time.
        if fetch is None and not verify:
            return grant
        return _verified(grant, path, reload, fetch)
    storage.make_dirs(os.path.dirname(path))
    try:
        if blob is not None:
            os.symlink(os.path.relpath(blob, os.path.dirname(path)), path)
        else:
            # What nginx checks before it proxies the bucket (try_files): a marker.
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC, 0o640))
    except FileExistsError:
        pass
    except FileNotFoundError:
        return None  # a writer removed the directory meanwhile: no grant this time
    return _verified(grant, path, reload, fetch)


def _verified(grant: Grant, path: str, reload, fetch=None) -> Grant | None:
    """The grant if the database's row still has its state; else it is removed."""
    # In a new transaction: a snapshot taken before a writer's commit would not see it.
    read_at = time.time()
    db.session.rollback()
    current = reload()
    if current is None or current.digest != grant.digest:
        _unlink(path)
        return None
    return grant if fetch is None else replace(grant, fetch=fetch, read_at=read_at)


def _fresh_file(filehash: str) -> File | None:
    return db.session.execute(
        select(File).where(File.filehash == filehash).execution_options(populate_existing=True)
    ).scalar_one_or_none()


def _fresh_version(version_id: str) -> tuple[Version, File] | None:
    row = db.session.execute(
        select(Version, File)
        .join(File, File.id == Version.file_id)
        .where(Version.version_id == version_id)
        .execution_options(populate_existing=True)
    ).first()
    return None if row is None else (row[0], row[1])


# -- removal (after a writer's commit: see init_app) -----------------------------------

def revoke_files(filehashes, *, with_versions: bool = True) -> None:
    """End the fast path of these files (and of their published versions)."""
    if not enabled():
        return
    filehashes = [fh for fh in filehashes if ID.match(fh)]
    for filehash in filehashes:
        _revoke("f", filehash)
    if with_versions and filehashes:
        version_ids = db.session.execute(
            select(Version.version_id)
            .join(File, File.id == Version.file_id)
            .where(File.filehash.in_(filehashes), Version.status == VersionStatus.PUBLISHED)
        ).scalars().all()
        db.session.rollback()
        revoke_versions(version_ids)


def revoke_versions(version_ids) -> None:
    if not enabled():
        return
    for version_id in version_ids:
        if ID.match(version_id):
            _revoke("v", version_id)


def revoke_all() -> int:
    """Every grant (a purge of everything); returns how many directories went."""
    if not enabled():
        return 0
    count = 0
    for kind in ("f", "v"):
        top = os.path.join(_root(), kind)
        for shard in _listdir(top):
            for ident in _listdir(os.path.join(top, shard)):
                if ID.match(ident):
                    _revoke(kind, ident)
                    count += 1
    return count


def audit(batch_size: int = 500) -> int:
    """Remove every grant whose file or version no longer has the state it names (each
    sweep runs this): what a writer that died between its commit and its removal of the
    grants left behind. Returns how many grants went. Removing is always safe: the app
    answers those requests and grants again what is still shareable."""
    if not enabled():
        return 0
    removed = 0
    for kind, current_grants in (("f", _current_file_grants), ("v", _current_version_grants)):
        top = os.path.join(_root(), kind)
        idents = [ident for shard in _listdir(top) for ident in _listdir(os.path.join(top, shard)) if ID.match(ident)]
        for start in range(0, len(idents), batch_size):
            batch = idents[start:start + batch_size]
            current = current_grants(batch)
            db.session.rollback()
            for ident in batch:
                grant = current.get(ident)
                directory = os.path.join(top, ident[:2], ident)
                for name in _listdir(directory):
                    if grant is None or name != grant.digest:
                        _unlink(os.path.join(directory, name))
                        removed += 1
                if grant is None:
                    try:
                        os.rmdir(directory)
                    except OSError:
                        pass
    return removed


def _current_file_grants(filehashes: list[str]) -> dict[str, Grant | None]:
    rows = db.session.execute(select(File).where(File.filehash.in_(filehashes))).scalars().all()
    return {row.filehash: file_grant(row) for row in rows}


def _current_version_grants(version_ids: list[str]) -> dict[str, Grant | None]:
    rows = db.session.execute(
        select(Version, File).join(File, File.id == Version.file_id).where(Version.version_id.in_(version_ids))
    ).all()
    return {row[0].version_id: version_grant((row[0], row[1])) for row in rows}


def _revoke(kind: str, ident: str) -> None:
    directory = os.path.join(_root(), kind, ident[:2], ident)
    for name in _listdir(directory):
        _unlink(os.path.join(directory, name))
    try:
        os.rmdir(directory)
    except OSError:
        pass  # gone already, or a grant was just made in it (verified, or removed, by its maker)


def _root() -> str:
    return os.path.join(current_app.config["STORAGE_DIR"], GRANTS)


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except (FileNotFoundError, NotADirectoryError):
        return []


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
