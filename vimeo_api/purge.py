"""Purging (SPEC 3.7, ``POST /purge``; and ``manage.py cache clear``): drop what the
caches hold about some files or about everything, never changing a file.

A use case above the caches it empties: the metadata cache with its cached 404/410
answers (``metacache``), nginx's fast path (``grants``) and the edge caches in front
(``edge``: a BAN of the files' surrogate keys), and the store of purge records that
``GET /purge/<purge_id>`` reads (``edges_targeted``, ``edges_done``: how many edges were
asked and how many took the ban).
"""

from __future__ import annotations

import secrets
from urllib.parse import urlsplit

from sqlalchemy import select

from . import edge, grants, metacache
from .extensions import cache, db
from .models import File, Version, utcnow
from .representation import file_surrogate_key, version_surrogate_key
from .urls import API_PREFIX as API_PATH

BATCH = 500


def _now_iso() -> str:
    return utcnow().strftime("%Y-%m-%dT%H:%M:%SZ")


class ClearFailed(Exception):
    """What ``clear_everything`` could not do, in one line for an operator."""


def clear_everything() -> str:
    """``manage.py cache clear``: every grant, then the cache backend (with Redis, only
    the keys under ``CACHE_KEY_PREFIX``), then the global epoch is renewed: that is what
    reaches the in-process caches of the embedded default's workers, which this process
    cannot empty. Returns the backend's name; raises ClearFailed."""
    grants.revoke_all()
    # The edges too (an edge that is down is logged; it is not what this command clears).
    edge.ban_all()
    try:
        cleared = cache.clear()
    except Exception as exc:  # Redis down or refusing: say so in one line
        raise ClearFailed(f"could not clear the cache: {exc.__class__.__name__}: {exc}") from None
    if cleared is False:
        raise ClearFailed("the cache backend did not clear")
    if not metacache.invalidate_all():
        raise ClearFailed("the cache was cleared but its epochs could not be renewed; run it again")
    return type(cache.cache).__name__


PURGE_TYPES = ("url", "prefix", "all")
MAX_PURGE_ITEMS = 1000
_HEX = frozenset("0123456789abcdef")


def purge(kind: str, items: list[str]) -> dict:
    """Drop cached metadata and cached 404/410 answers: for file URLs (``url``), for
    filehashes starting with a prefix (``prefix``), or for everything (``all``).

    Returns the purge's record (also kept for ``GET /purge/<purge_id>``): status
    ``done``, or ``pending`` when the cache is down and the purge will be carried out as
    soon as it is back (nothing is served from a cache that is down). Raises ValueError
    with a message fit for the client when an item cannot be read.
    """
    if kind not in PURGE_TYPES:
        raise ValueError(f"type must be one of {', '.join(PURGE_TYPES)}.")
    if not isinstance(items, list) or not all(isinstance(item, str) for item in items):
        raise ValueError("items must be a list of strings.")
    if len(items) > MAX_PURGE_ITEMS:
        raise ValueError(f"at most {MAX_PURGE_ITEMS} items per purge.")
    if kind != "all" and not items:
        raise ValueError(f"a purge of type {kind} needs items.")
    record = {
        "purge_id": secrets.token_hex(16),
        "type": kind,
        "items": items,
        "status": "pending",
        "files": 0,
        "created_at": _now_iso(),
        "completed_at": None,
        "edges_targeted": 0,
        "edges_done": 0,
    }
    # nginx's cached answers of the fast path go too (their grants). Unlike the entries
    # below they are files on the storage, so a cache outage leaves them be.
    if kind == "all":
        grants.revoke_all()
        done = metacache.invalidate_all()
        edges = edge.ban_all()
    elif kind == "url":
        filehashes = [_filehash_of_url(item) for item in items]
        record["files"] = len(set(filehashes))
        grants.revoke_files(filehashes)
        done = metacache.invalidate_many(filehashes)
        edges = edge.ban(_surrogate_key_of_url(item) for item in items)
    else:
        prefixes = [_prefix_of(item) for item in items]
        # Unknown hashes that match are not in the database: drop every cached 404 (cheap
        # to answer again), and the entries of the files that match.
        done = metacache.invalidate_not_found()
        edges = edge.ban([])
        for prefix in dict.fromkeys(prefixes):
            for batch in _filehashes_with_prefix(prefix):
                record["files"] += len(batch)
                grants.revoke_files(batch)
                done = metacache.invalidate_many(batch) and done
                edges = edges & edge.ban_files(batch)
    record.update(edges_targeted=edges.targeted, edges_done=edges.done)
    if done:
        record.update(status="done", completed_at=_now_iso())
    metacache.save_purge(record)
    return record


def _path_of(item: str) -> str:
    """The API-relative path of a URL or path (``/file/<filehash>``), query cut off."""
    text = item.strip()
    path = urlsplit(text).path if "://" in text else text.split("?", 1)[0]
    return path[len(API_PATH):] if path.startswith(API_PATH + "/") else path


def _filehash_of_url(item: str) -> str:
    """The filehash a file URL, a version URL, their paths, or a bare filehash names."""
    kind, _, ident = _path_of(item).strip("/").rpartition("/")
    if kind in ("", "file") and _is_filehash(ident):
        return ident
    if kind == "v" and _is_filehash(ident):
        filehash = db.session.execute(
            select(File.filehash).join(Version, Version.file_id == File.id).where(Version.version_id == ident)
        ).scalar_one_or_none()
        db.session.rollback()
        if filehash is not None:
            return filehash
        raise ValueError(f"no published version at {item!r}.")
    raise ValueError(f"not a file or version URL of this API: {item!r}.")


def _surrogate_key_of_url(item: str) -> str:
    """The edge's key for a URL ``_filehash_of_url`` accepted: a version's own, or the file's."""
    kind, _, ident = _path_of(item).strip("/").rpartition("/")
    return version_surrogate_key(ident) if kind == "v" else file_surrogate_key(ident)


def _prefix_of(item: str) -> str:
    """``/vimeo/api/v1.0/file/ab*``, a URL of it, ``ab*`` or ``ab`` → ``ab``."""
    path = _path_of(item)
    if path.startswith("/file/"):
        path = path[len("/file/"):]
    prefix = path.rstrip("*").lower()
    if len(prefix) > 32 or not set(prefix) <= _HEX or path.count("*") > 1 or "*" in path.rstrip("*"):
        raise ValueError(f"not a filehash prefix such as {API_PATH}/file/ab*: {item!r}.")
    return prefix


def _filehashes_with_prefix(prefix: str):
    """Batches of the filehashes starting with ``prefix`` (all of them for ``""``),
    keyset-paginated so memory stays flat however many match."""
    last = ""
    while True:
        rows = db.session.execute(
            select(File.filehash)
            .where(File.filehash.startswith(prefix, autoescape=True), File.filehash > last)
            .order_by(File.filehash)
            .limit(BATCH)
        ).scalars().all()
        db.session.rollback()
        if not rows:
            return
        yield list(rows)
        last = rows[-1]


def _is_filehash(value: str) -> bool:
    return len(value) == 32 and set(value) <= _HEX
