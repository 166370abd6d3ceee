"""Edge caches in front of the service (a CDN's role; Varnish with deploy/varnish.vcl in
the tests): what they hold of a file or a version goes when it changes.

Public files are ``public, max-age=60, s-maxage=3600`` and published versions immutable,
so a shared cache in front keeps them: without this, a DELETE left a file served by the
edge for up to an hour. Every download names what it is of in ``Surrogate-Key``
(``representation.surrogate_keys``: ``vimeo`` and a hash of the filehash or version id).
This module listens to the domain's changes (``events.files_changed``: DELETE, a
replacement, a PATCH, expiry, a last download; ``events.versions_retired``) and sends
each edge of ``EDGE_PURGE_URLS`` a ``BAN`` whose ``Surrogate-Key`` header lists the keys
to drop; ``purge`` sends them for ``POST /purge`` and ``manage.py cache clear``.

Like the metadata cache and the grants, the listener runs before the writer's request
answers (blinker calls it synchronously), so once a DELETE has answered, the edges have
dropped the file. Each edge gets ``EDGE_TIMEOUT`` seconds (edges in parallel, one
connection each); an edge that is down or refuses costs at most that, fails nothing, and
is logged and counted (``vimeo_edge_bans``). Its copy then lives until its own expiry
(``s-maxage``): keep edges reachable.
"""

from __future__ import annotations

import http.client
import logging
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from urllib.parse import urlsplit

from flask import Flask, current_app

from . import events, observability
from .representation import ALL_KEY, file_surrogate_key, version_surrogate_key

log = logging.getLogger(__name__)

# Keys per BAN: a header of about 4 KiB, under Varnish's default 8 KiB for one header.
KEYS_PER_BAN = 100


@dataclass(frozen=True)
class EdgeOutcome:
    """How many edges were asked, and how many took every ban asked of them."""

    targeted: int
    done: int

    def __and__(self, other: "EdgeOutcome") -> "EdgeOutcome":
        return EdgeOutcome(self.targeted, min(self.done, other.done))


def init_app(app: Flask) -> None:
    """Listen to the domain's changes: a changed file or a retired version is banned."""
    events.files_changed.connect(_on_files_changed)
    events.versions_retired.connect(_on_versions_retired)


def _on_files_changed(app: Flask, filehashes: list[str], versions: bool) -> None:
    # A version's answers carry their own key; versions_retired bans those.
    ban_files(filehashes)


def _on_versions_retired(app: Flask, version_ids: list[str]) -> None:
    ban_versions(version_ids)


def edge_urls() -> list[str]:
    """``EDGE_PURGE_URLS``: a list, or one URL, or URLs separated by commas."""
    urls = current_app.config.get("EDGE_PURGE_URLS") or []
    if isinstance(urls, str):
        urls = urls.split(",")
    return [url.strip() for url in urls if url and url.strip()]


def ban_files(filehashes: Iterable[str]) -> EdgeOutcome:
    return ban(file_surrogate_key(filehash) for filehash in filehashes)


def ban_versions(version_ids: Iterable[str]) -> EdgeOutcome:
    return ban(version_surrogate_key(version_id) for version_id in version_ids)


def ban_all() -> EdgeOutcome:
    """Every answer of this service the edges hold (they all carry ``vimeo``)."""
    return ban([ALL_KEY])


def ban(keys: Iterable[str]) -> EdgeOutcome:
    """Send every edge a BAN of ``keys``; never raises."""
    urls = edge_urls()
    keys = list(dict.fromkeys(keys))
    if not urls or not keys:
        return EdgeOutcome(len(urls), len(urls))
    batches = [keys[i:i + KEYS_PER_BAN] for i in range(0, len(keys), KEYS_PER_BAN)]
    timeout = float(current_app.config["EDGE_TIMEOUT"])
    if len(urls) == 1:
        results = [_ban_one(urls[0], batches, timeout)]
    else:
        with ThreadPoolExecutor(max_workers=min(len(urls), 16)) as pool:
            results = list(pool.map(lambda url: _ban_one(url, batches, timeout), urls))
    for url, error in zip(urls, results):
        observability.record_edge_ban(error is None)
        if error is not None:
            log.warning("edge cache %s did not take a ban of %d key(s): %s", _safe(url), len(keys), error)
    return EdgeOutcome(len(urls), sum(error is None for error in results))


def _ban_one(url: str, batches: list[list[str]], timeout: float) -> str | None:
    """None when the edge answered 2xx to every batch, else what went wrong."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "not an http(s) URL"
    connection_class = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    conn = connection_class(parts.hostname, parts.port, timeout=timeout)
    try:
        for batch in batches:
            conn.request("BAN", parts.path or "/", headers={"Surrogate-Key": " ".join(batch)})
            response = conn.getresponse()
            response.read()
            if not 200 <= response.status < 300:
                return f"answered {response.status}"
        return None
    except (OSError, http.client.HTTPException) as exc:
        return f"{type(exc).__name__}: {exc}"
    finally:
        conn.close()


def _safe(url: str) -> str:
    """An edge's URL for the log, without credentials it may carry."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}{f':{parts.port}' if parts.port else ''}{parts.path}"
