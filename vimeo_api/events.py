"""What the domain announces after it commits a change (blinker signals).

Writers (``files``, ``versions``, ``blobs``) commit, then send one of these; the
metadata cache, the fast path's grant store and the task queue subscribe (each in its
own ``init_app``). The domain so never calls up into those adapters and does not know
who reacts.

blinker calls receivers synchronously, in the sender's thread, before ``send`` returns:
a change's cache entries and grants are gone before the request that made it answers.
That is what keeps the fast path's staleness bound at zero (grants.py) and what makes a
download that follows a DELETE answer 410.

Every signal is sent with the current Flask app as sender and keyword arguments only.
"""

from __future__ import annotations

from collections.abc import Iterable

from blinker import Namespace
from flask import current_app

_signals = Namespace()

#: Files whose state or content changed (``filehashes``). ``versions`` is true when what
#: their published versions' answers say changed too (a new expiry, an expiry reached).
files_changed = _signals.signal("files-changed")

#: Published versions retired (``version_ids``): they serve no more.
versions_retired = _signals.signal("versions-retired")

#: Blobs that no file or version uses any more (``sha256s``): their bytes may go once
#: their grace period is over. The intent is committed already; a listener only hurries it.
blobs_released = _signals.signal("blobs-released")


def announce_files_changed(filehashes: Iterable[str], *, versions: bool) -> None:
    filehashes = list(dict.fromkeys(filehashes))
    if filehashes:
        files_changed.send(current_app._get_current_object(), filehashes=filehashes, versions=versions)


def announce_versions_retired(version_ids: Iterable[str]) -> None:
    version_ids = list(version_ids)
    if version_ids:
        versions_retired.send(current_app._get_current_object(), version_ids=version_ids)


def announce_blobs_released(sha256s: Iterable[str]) -> None:
    sha256s = list(sha256s)
    if sha256s:
        blobs_released.send(current_app._get_current_object(), sha256s=sha256s)
