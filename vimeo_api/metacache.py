"""The metadata cache: what the access check, the preconditions and HEAD need to know
about a file, kept in Flask-Caching's cache (Redis in the stack, in-process on the
embedded default), so that 304, HEAD and repeated 404/410 answers run no SQL.

Three rules keep it from ever being wrong in a way that matters:

1. It never decides a download. A GET that sends bytes is decided by
   ``files.consume_download``, whose atomic UPDATE re-checks state, expiry, downloads
   left and the content hash; the download pipeline (``downloads``) reads the database
   afresh when that UPDATE says no.
2. Invalidation cannot lose a race with a fill, thanks to epochs. Each filehash has an
   epoch key holding a random token, and there is a global one (purge all) and one for
   cached 404s (purge by prefix). A fill reads the epochs *before* it reads the
   database and stores them with the data; a read uses an entry only when the epochs it
   carries are the current ones. ``invalidate`` runs after the commit of a change (this
   module listens to the domain's ``events.files_changed``) and writes a new token, so a fill that read the old row carries the old token and is
   never used. Tokens are random rather than counters so that a value can never come
   back (a counter that was evicted or cleared would restart at 1), and a missing epoch
   matches nothing, so eviction or ``manage.py cache clear`` only ever cause misses.
3. A cache that fails is skipped. Every call is guarded: an error is a miss, a circuit
   breaker (``breaker``) leaves the cache alone for ``CACHE_RETRY_AFTER`` seconds (one slow request per
   period, not every request), and a warning is logged once per period. Invalidations
   that could not be written are remembered by the process and written before it reads
   the cache again (and by a retry thread), so entries that went stale during an outage
   are not served once the cache is back.

An in-process cache (SimpleCache) is private to one process, while the embedded
default's gunicorn runs several: there the global epoch lives in a small file beside
the storage directory, shared by every process, and every invalidation renews it instead
of a per-file epoch. That is coarse (any change drops every process's entries) but
right, and costs a small file read per lookup.

Entries: ``meta:v2:<filehash>`` → ``[file_epoch, global_epoch, notfound_epoch, data]``
where data is a dict of ``FileMeta`` fields, or ``None`` for an unknown hash (the cached
404; a gone file's entry answers 410).

Every value is stored as JSON (``JsonSerializer``), never pickled as cachelib does by
default: whoever can write to the cache's Redis can then make the API answer uncached,
but cannot run code in it. An upload does not touch the cache: its filehash
is 128 fresh random bits that no earlier request can have cached a 404 for.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from datetime import datetime

from flask import Flask, current_app, g, has_request_context

from . import events, observability
from .breaker import Breaker
from .extensions import cache
from .models import File, utcnow

log = logging.getLogger(__name__)

META = "meta:v2:"
EPOCH = "epoch:"
GLOBAL_EPOCH = "epoch:*global*"
NOT_FOUND_EPOCH = "epoch:*404*"
PURGE = "purge:"
# Purge records an in-process deployment keeps on disk before the oldest are pruned.
MAX_PURGE_RECORDS = 1000
# Invalidations remembered during an outage, per process; past this many the process
# purges everything instead once the cache is back.
MAX_PENDING = 10_000
# Redis SET accepts many keys in one pipeline; larger batches are split.
BATCH = 500
# The global and 404 epochs expire too (then every entry misses once), so that nothing
# this module writes lives forever in a shared Redis.
SHARED_EPOCH_TTL = 7 * 86400
# The file epoch of every entry of an in-process cache (see the module's docstring).
LOCAL = "local"


@dataclasses.dataclass(frozen=True)
class FileMeta:
    """A file as the download path sees it: ``File``'s attribute names, no session."""

    id: int
    filehash: str
    sha256: str
    size: int
    content_type: str
    filename: str
    modified_at: datetime
    expires_at: datetime | None
    max_downloads: int
    downloads: int
    status: str
    gone_reason: str | None
    password_hash: str | None
    access_version: int

    # One definition of availability for rows and cached copies alike.
    is_available = File.is_available
    unavailable_reason = File.unavailable_reason

    @classmethod
    def of(cls, file) -> FileMeta:
        return cls(**{f.name: getattr(file, f.name) for f in dataclasses.fields(cls)})

    def as_dict(self) -> dict:
        """JSON's types only: the instants as ISO 8601 text."""
        data = dataclasses.asdict(self)
        for name in _INSTANTS:
            if data[name] is not None:
                data[name] = data[name].isoformat()
        return data

    @classmethod
    def from_dict(cls, data: dict) -> FileMeta:
        """The inverse of ``as_dict``; TypeError or ValueError when it is not one."""
        data = dict(data)
        for name in _INSTANTS:
            if data.get(name) is not None:
                data[name] = datetime.fromisoformat(data[name])
        return cls(**data)


_INSTANTS = ("modified_at", "expires_at")


class JsonSerializer:
    """The cache's values as JSON, for cachelib's backends (``dumps``/``loads`` for Redis
    and in-process caches, ``dump``/``load`` for files), instead of their pickle.

    Not cachelib's JSONSerializer as it is: it logs a warning for every miss (Redis
    answers None) and turns a value it cannot encode into a silent None. A value that is
    not JSON (written by someone else, or by an older version) reads as a miss.
    """

    def dumps(self, value, *args, **kwargs) -> bytes:
        return json.dumps(value, separators=(",", ":")).encode()

    def loads(self, data, *args, **kwargs):
        if data is None:
            return None
        try:
            return json.loads(data)
        except (TypeError, ValueError):
            return None

    def dump(self, value, f, *args, **kwargs) -> None:
        f.write(self.dumps(value))

    def load(self, f, *args, **kwargs):
        return self.loads(f.read())


class CacheUnavailable(Exception):
    """The cache failed, or the breaker is open: carry on uncached."""


# -- per-app state ---------------------------------------------------------------------

class _State:
    """One process's view of one app's cache: the breaker and the invalidations owed."""

    def __init__(self, app: Flask):
        self.app = app
        self.lock = threading.Lock()
        self.breaker = Breaker("cache", lambda: float(app.config["CACHE_RETRY_AFTER"]), log)
        self.pending: set[str] = set()
        self.pending_all = False
        self.pending_records: list[tuple[str, dict]] = []
        # Counts what was owed; settle() forgets only what nothing was added to meanwhile.
        self.owed_generation = 0
        self.retrying = False
        self.shared_epoch_file: str | None = None
        # With an in-process cache: where purge records go so every process reads them
        # (made on first use: the factory touches no file).
        self.shared_records_dir: str | None = None
        self.shared_records = None

    @property
    def retry_after(self) -> float:
        return float(self.app.config["CACHE_RETRY_AFTER"])

    def usable(self) -> bool:
        return self.breaker.usable()

    def trip(self, exc: BaseException) -> None:
        self.breaker.trip(exc, "answering uncached")

    def owe(self, filehashes: Iterable[str] = (), everything: bool = False, record=None) -> None:
        """Remember invalidations the cache did not get; a thread retries them."""
        with self.lock:
            if everything:
                self.pending_all = True
            else:
                self.pending.update(filehashes)
                if len(self.pending) > MAX_PENDING:
                    self.pending_all = True
            if self.pending_all:
                self.pending.clear()
            if record is not None:
                self.pending_records.append(record)
            self.owed_generation += 1
            start = not self.retrying
            self.retrying = True
        if start:
            threading.Thread(target=self._retry_loop, name="vimeo-cache-retry", daemon=True).start()

    def owes(self) -> bool:
        return bool(self.pending or self.pending_all or self.pending_records)

    def settle(self) -> None:
        """Write what is owed (raises CacheUnavailable if the cache still fails)."""
        with self.lock:
            pending, everything, records = set(self.pending), self.pending_all, list(self.pending_records)
            generation = self.owed_generation
        if everything:
            _renew_global()
        elif pending:
            _renew_epochs(sorted(pending))
        for key, record in records:
            # Written once the purge it records has been carried out, just above.
            done = {**record, "status": "done", "completed_at": _now_iso()}
            guarded(lambda: _records().set(key, done, timeout=int(self.app.config["PURGE_RECORD_TTL"])))
        with self.lock:
            del self.pending_records[: len(records)]
            # A change owed while this ran may have been committed after its write: keep
            # everything for the next round (writing twice is harmless).
            if generation == self.owed_generation:
                self.pending.clear()
                self.pending_all = False

    def _retry_loop(self) -> None:
        # Other processes may read the cache as soon as it is back: do not wait for this
        # process's next request to write what it owes.
        while True:
            time.sleep(self.retry_after)
            with self.app.app_context():
                try:
                    if self.usable():
                        self.settle()
                except CacheUnavailable:
                    pass
                except Exception:  # never let the thread die with invalidations owed
                    log.exception("could not write the cache invalidations owed")
            with self.lock:
                if not self.owes():
                    self.retrying = False
                    return


def init_app(app: Flask) -> None:
    """Per-app cache state, ``X-Cache`` on answers that went through the cache, and the
    invalidation of changed files (after their writer's commit)."""
    state = _State(app)
    if _process_local(app):
        state.shared_epoch_file = app.config.get("CACHE_SHARED_EPOCH_FILE") or _default_epoch_file(app)
        # GET /purge/<id> may reach another worker than the POST did: records go to
        # cachelib's FileSystemCache beside the epoch file, which every process reads.
        state.shared_records_dir = state.shared_epoch_file + "-purges"
    app.extensions["vimeo_metacache"] = state
    # The backend Flask-Caching made for this app: its values go as JSON (see above).
    app.extensions["cache"][cache].serializer = JsonSerializer()
    events.files_changed.connect(_on_files_changed)

    @app.after_request
    def add_x_cache(response):
        verdict = g.get("vimeo_cache")
        if verdict:
            response.headers["X-Cache"] = verdict
        return response


def _on_files_changed(app: Flask, filehashes: list[str], versions: bool) -> None:
    invalidate_many(filehashes)


def _default_epoch_file(app: Flask) -> str:
    """Beside the storage directory (one per deployment, shared by its processes), not in
    it: that holds stored bytes only."""
    return app.config["STORAGE_DIR"].rstrip(os.sep) + ".cache-epoch"


def _state() -> _State:
    return current_app.extensions["vimeo_metacache"]


def _process_local(app: Flask) -> bool:
    backend = app.extensions["cache"][cache]
    from cachelib import SimpleCache

    return isinstance(backend, SimpleCache)


def guarded(fn: Callable, *args, **kwargs):
    """Call the cache; any failure opens the breaker and becomes CacheUnavailable."""
    state = _state()
    if not state.usable():
        raise CacheUnavailable()
    try:
        return fn(*args, **kwargs)
    except Exception as exc:  # connection refused, timeout, a bad reply: all mean "skip"
        state.trip(exc)
        raise CacheUnavailable() from exc


def _token() -> str:
    return secrets.token_hex(8)


def _now_iso() -> str:
    return utcnow().strftime("%Y-%m-%dT%H:%M:%SZ")


# -- the shared epoch file (in-process caches only) ----------------------------------------

def _read_shared_epoch(path: str) -> str | None:
    try:
        with open(path, "rb") as fh:
            return fh.read(64).decode("ascii", "replace") or None
    except FileNotFoundError:
        return None
    except OSError as exc:
        _state().trip(exc)
        raise CacheUnavailable() from exc


def _write_shared_epoch(path: str) -> str:
    """A fresh token, written atomically (rename) so readers see the old or the new one."""
    token = _token()
    tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
    try:
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as fh:
            fh.write(token.encode())
        os.replace(tmp, path)
    except OSError as exc:
        _state().trip(exc)
        raise CacheUnavailable() from exc
    return token


# -- reading ---------------------------------------------------------------------------

def lookup(filehash: str, load: Callable[[str], object | None], *, fresh: bool = False) -> FileMeta | None:
    """The file behind ``filehash`` (None: no such file), from the cache when it holds a
    current entry, else from ``load`` (the database), which then fills the cache.

    ``fresh`` skips the cached entry (the view re-runs a request whose cached metadata
    the database contradicted). Marks the request ``X-Cache: HIT`` or ``MISS``.
    """
    state = _state()
    cfg = current_app.config
    meta_key, epoch_key = META + filehash, EPOCH + filehash
    epochs = None
    try:
        if state.owes():
            state.settle()
        entry, file_epoch, global_epoch, nf_epoch = guarded(
            cache.get_many, meta_key, epoch_key, GLOBAL_EPOCH, NOT_FOUND_EPOCH
        )
        if state.shared_epoch_file:
            # Every invalidation renews the shared epoch: per-file ones are not kept.
            file_epoch, global_epoch = LOCAL, _read_shared_epoch(state.shared_epoch_file)
        if not fresh:
            found, meta = _use(entry, file_epoch, global_epoch, nf_epoch)
            if found:
                _mark(hit=True)
                return meta
        epochs = _ensure_epochs(state, epoch_key, file_epoch, global_epoch, nf_epoch)
    except CacheUnavailable:
        epochs = None
    _mark(hit=False)
    # The epochs were read above, before this read of the database: see rule 2.
    file = load(filehash)
    meta = FileMeta.of(file) if file is not None else None
    if epochs is not None:
        ttl = cfg["CACHE_META_TTL"] if meta is not None else cfg["CACHE_NOT_FOUND_TTL"]
        value = [*epochs, meta.as_dict() if meta is not None else None]
        try:
            guarded(cache.set, meta_key, value, timeout=int(ttl))
        except CacheUnavailable:
            pass
    return meta


def peek(filehash: str) -> tuple[bool, FileMeta | None]:
    """The cached answer for ``filehash`` without reading the database on a miss:
    ``(True, meta)`` (``meta`` None: a cached 404) or ``(False, None)``. Marks the request
    ``X-Cache: HIT`` or ``MISS``. A plain GET uses it before claiming its download in the
    database, which reads the row itself (``files.claim_download``)."""
    state = _state()
    try:
        if state.owes():
            state.settle()
        entry, file_epoch, global_epoch, nf_epoch = guarded(
            cache.get_many, META + filehash, EPOCH + filehash, GLOBAL_EPOCH, NOT_FOUND_EPOCH
        )
        if state.shared_epoch_file:
            file_epoch, global_epoch = LOCAL, _read_shared_epoch(state.shared_epoch_file)
        found, meta = _use(entry, file_epoch, global_epoch, nf_epoch)
    except CacheUnavailable:
        found, meta = False, None
    _mark(hit=found)
    return found, meta


def _use(entry, file_epoch, global_epoch, nf_epoch) -> tuple[bool, FileMeta | None]:
    """(True, meta) when the entry is current; (False, None) when it must be refilled."""
    if not (isinstance(entry, list) and len(entry) == 4):
        return False, None
    e_file, e_global, e_nf, data = entry
    # A missing epoch (never written, evicted, cleared) matches nothing.
    if None in (file_epoch, global_epoch) or (e_file, e_global) != (file_epoch, global_epoch):
        return False, None
    if data is None:
        if nf_epoch is None or e_nf != nf_epoch:
            return False, None
        return True, None
    try:
        return True, FileMeta.from_dict(data)
    except (TypeError, ValueError, AttributeError):  # written by another version of this module
        return False, None


def _ensure_epochs(state: _State, epoch_key, file_epoch, global_epoch, nf_epoch) -> tuple:
    """The current epochs, creating those that do not exist yet."""
    if file_epoch is None:
        file_epoch = _create(epoch_key, int(current_app.config["CACHE_EPOCH_TTL"]))
    if global_epoch is None:
        if state.shared_epoch_file:
            global_epoch = _write_shared_epoch(state.shared_epoch_file)
        else:
            global_epoch = _create(GLOBAL_EPOCH, SHARED_EPOCH_TTL)
    if nf_epoch is None:
        nf_epoch = _create(NOT_FOUND_EPOCH, SHARED_EPOCH_TTL)
    return file_epoch, global_epoch, nf_epoch


def _create(key: str, ttl: int) -> str:
    """Write a new epoch unless another process just did; return the one in place."""
    token = _token()
    if guarded(cache.add, key, token, timeout=ttl):
        return token
    current = guarded(cache.get, key)
    if current is None:
        raise CacheUnavailable()  # it vanished again: do not cache this time
    return current


def same_content(cached: FileMeta, current: FileMeta) -> bool:
    """Whether a cached entry still describes the row's answer (its counters aside)."""
    return all(getattr(cached, name) == getattr(current, name) for name in _ANSWER_FIELDS)


_ANSWER_FIELDS = ("sha256", "size", "content_type", "filename", "modified_at", "expires_at",
                  "max_downloads", "password_hash")


def mark_miss() -> None:
    """The answer came from the database after all (``X-Cache: MISS``)."""
    if has_request_context():
        g.vimeo_cache = "MISS"


def _mark(hit: bool) -> None:
    if has_request_context():
        g.vimeo_cache = "HIT" if hit else "MISS"
    observability.record_cache(hit)


# -- invalidating ----------------------------------------------------------------------

def invalidate(filehash: str) -> None:
    """Call after committing any change to a file: its cached entry is never used again."""
    invalidate_many([filehash])


def invalidate_many(filehashes: Iterable[str]) -> bool:
    """``invalidate`` for many files, one round trip per batch. Never raises: what the
    cache does not take now is remembered and written when it is back (False)."""
    filehashes = list(dict.fromkeys(filehashes))
    if not filehashes:
        return True
    try:
        _renew_epochs(filehashes)
        return True
    except CacheUnavailable:
        _state().owe(filehashes)
        return False


def invalidate_all() -> bool:
    """Drop every cached entry, 404s included (a purge of everything)."""
    try:
        _renew_global()
        return True
    except CacheUnavailable:
        _state().owe(everything=True)
        return False


def invalidate_not_found() -> bool:
    """Drop every cached 404 (a purge by prefix cannot list the unknown hashes)."""
    try:
        if _state().shared_epoch_file:
            _write_shared_epoch(_state().shared_epoch_file)
        else:
            guarded(cache.set, NOT_FOUND_EPOCH, _token(), timeout=SHARED_EPOCH_TTL)
        return True
    except CacheUnavailable:
        _state().owe(everything=True)
        return False


def _renew_epochs(filehashes: list[str]) -> None:
    state = _state()
    if state.shared_epoch_file:
        # Other processes' in-process caches cannot see per-file epochs; the shared one
        # drops every process's entries, this one's included.
        _write_shared_epoch(state.shared_epoch_file)
        return
    ttl = int(current_app.config["CACHE_EPOCH_TTL"])
    for start in range(0, len(filehashes), BATCH):
        chunk = filehashes[start:start + BATCH]
        # A new epoch makes the entry unusable; overwriting the entry with None (a miss)
        # in the same pipelined call frees it at once, one round trip for the batch.
        mapping = {}
        for filehash in chunk:
            mapping[EPOCH + filehash] = _token()
            mapping[META + filehash] = None
        guarded(cache.set_many, mapping, timeout=ttl)


def _renew_global() -> None:
    state = _state()
    if state.shared_epoch_file:
        _write_shared_epoch(state.shared_epoch_file)
    guarded(cache.set_many, {GLOBAL_EPOCH: _token(), NOT_FOUND_EPOCH: _token()}, timeout=SHARED_EPOCH_TTL)


# -- purge records ---------------------------------------------------------------------

def save_purge(record: dict) -> bool:
    """Keep a purge's record for ``GET /purge/<id>``; False when the cache is down (the
    record is then written once it is back)."""
    key = PURGE + record["purge_id"]
    try:
        guarded(lambda: _records().set(key, record, timeout=int(current_app.config["PURGE_RECORD_TTL"])))
        return True
    except CacheUnavailable:
        _state().owe(record=(key, record))
        return False


def load_purge(purge_id: str) -> dict | None:
    """A purge's record (raises CacheUnavailable when the cache is down)."""
    record = guarded(lambda: _records().get(PURGE + purge_id))
    return record if isinstance(record, dict) else None


def _records():
    """Where purge records live: the cache, or with an in-process one a store on disk
    (cachelib creates its directory: a failure there is the cache failing)."""
    state = _state()
    if state.shared_records_dir is None:
        return cache
    if state.shared_records is None:
        from cachelib import FileSystemCache

        records = FileSystemCache(state.shared_records_dir, threshold=MAX_PURGE_RECORDS)
        records.serializer = JsonSerializer()
        state.shared_records = records
    return state.shared_records
