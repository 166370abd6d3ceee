"""Whether a request may have a file: existence, availability, password, ownership.

Checks run in the contract's order: unknown → 404, gone → 410 (``FileGone``, naming
why), password → 401. For the three download URLs (``/file``, ``/v``, ``/t``) the answer
is an ``Offer``: what the request may have, under which cache class, and whether sending
it uses a download; the download pipeline (``downloads``) takes it from there. The
pipeline may ask for an offer without the password check (the landing page, which
shows nothing the password protects) or for a file whose downloads are used up (a
resumption, which it then decides).
"""

from __future__ import annotations

from dataclasses import dataclass

from flask import Request, current_app
from werkzeug.datastructures import WWWAuthenticate
from werkzeug.exceptions import Forbidden, NotFound, Unauthorized

from . import download_tokens, files, limits, metacache, operator_tokens, password_cache, security, signing, versions
from .errors import FileGone
from .models import File, GoneReason, utcnow
from .representation import CacheClass, cache_class, file_cache_class

REALM = "vimeo_api"


@dataclass(frozen=True)
class Offer:
    """What a download request may have.

    ``resource`` has the content's descriptive attributes (a file's metadata, or a
    published version); ``file`` is the file it belongs to; ``consume``: a GET that sends
    bytes uses one of the file's downloads; ``fresh``: the checks read the database itself,
    not possibly stale cached metadata; ``used_up``: the file's downloads are used up and
    only a resumption may send anything.
    ``access_version``: the file's access version the password (or the link standing
    for it) was checked under, which the download's UPDATE requires to be still current.
    """

    resource: object
    file: object
    klass: CacheClass
    consume: bool
    fresh: bool
    # A download already used, in a transaction left open (claim_offer).
    claimed: files.Consumed | None = None
    used_up: bool = False
    access_version: int | None = None


def file_offer(filehash: str, request: Request, *, fresh: bool = False, password: bool = True,
               used_up: bool = False) -> Offer:
    """``/file/<filehash>``: 404 → 410 → 401, then the file under its own class.
    ``password=False`` skips the password check; ``used_up=True`` offers a file whose
    downloads are used up instead of answering 410."""
    file = downloadable(filehash, request, fresh=fresh, password=password, used_up=used_up)
    gone = used_up and file.unavailable_reason(utcnow()) == GoneReason.DOWNLOADED
    return Offer(file, file, file_cache_class(file), consume=True, fresh=fresh, used_up=gone,
                 access_version=file.access_version)


def claim_offer(filehash: str, request: Request) -> Offer | None:
    """``/file/<filehash>`` for a plain GET (no password sent is needed, no precondition,
    no Range): the cache may say 404 or 410 at once; otherwise, unless it knows of a
    password, the download is claimed in one statement that reads the row too
    (``files.claim_download``); a password the cache knows of is checked as usual. None:
    take the long way (``file_offer``), on the database."""
    if not _looks_like_filehash(filehash):
        raise NotFound()
    found, cached = metacache.peek(filehash)
    if found:
        if cached is None:
            raise NotFound()
        if not cached.is_available(utcnow()):
            raise FileGone(cached.unavailable_reason(utcnow()))
        if cached.password_hash is not None:
            _check_password(cached, request)
            return Offer(cached, cached, file_cache_class(cached), consume=True, fresh=False,
                         access_version=cached.access_version)
    claimed = files.claim_download(filehash)
    if claimed is None:
        return None
    file = metacache.FileMeta.of(claimed.row)
    if cached is not None and not metacache.same_content(cached, file):
        # The cache missed a change (a lost invalidation): the database answered; drop it.
        metacache.invalidate(filehash)
        metacache.mark_miss()
    return Offer(file, file, file_cache_class(file), consume=False, fresh=True, claimed=claimed)


def version_offer(version_id: str, **_) -> Offer:
    """``/v/<version_id>``: a published version, immutable, no password, no download."""
    found = versions.find(version_id) if _looks_like_filehash(version_id) else None
    if found is None:
        raise NotFound()
    version, file = found
    if not versions.is_available(version, file, utcnow()):
        # Retired with its file (deleted or expired), or by `files verify --repair`.
        reason = file.unavailable_reason(utcnow())
        raise FileGone(reason if reason == GoneReason.EXPIRED else GoneReason.DELETED)
    return Offer(version, file, CacheClass.IMMUTABLE, consume=False, fresh=True)


def token_offer(token: str, *, fresh: bool = False, used_up: bool = False, **_) -> Offer:
    """``/t/<token>``: tampered (or unknown) → 401, expired → 403, revoked (by its owner,
    or by a password change since it was issued) → 403, file gone → 410. The token
    stands for the password; sending uses a download like any other.

    The link is always read from the database, with its file: ``fresh`` only tells the
    pipeline whether this is its second look."""
    try:
        link_id = signing.verify(token)
    except signing.TokenInvalid:
        raise _invalid_token() from None
    except signing.TokenExpired:
        raise Forbidden("This token has expired.") from None
    found = download_tokens.find(link_id)
    if found is None:
        raise _invalid_token()
    link, file = found
    if download_tokens.is_revoked(link, file):
        raise Forbidden("This link was revoked (by its owner, or a change of the file's password).")
    file = metacache.FileMeta.of(file)
    reason = file.unavailable_reason(utcnow())
    if reason is not None and not (used_up and reason == GoneReason.DOWNLOADED):
        raise FileGone(reason)
    klass = cache_class(max_downloads=file.max_downloads, has_password=False, token=True)
    return Offer(file, file, klass, consume=True, fresh=fresh, used_up=reason is not None,
                 access_version=link.access_version)


def _invalid_token() -> Unauthorized:
    return Unauthorized("This token is not valid.", www_authenticate=WWWAuthenticate("token", {"realm": REALM}))


def supplied_password(request: Request) -> str | None:
    """The password a client sent: ``X-Password``, ``?password=``, HTTP Basic, or the
    landing page's form field (a POST)."""
    password = request.headers.get("X-Password")
    if password is None:
        password = request.args.get("password")
    if password is None and request.method == "POST":
        password = request.form.get("password")
    if password is None and request.authorization and request.authorization.type == "basic":
        password = request.authorization.password
    return password


def downloadable(filehash: str, request: Request, *, fresh: bool = False, password: bool = True,
                 used_up: bool = False) -> metacache.FileMeta:
    """The file behind a download URL, or the HTTP error that ends the request.

    Answered from the metadata cache when it holds a current entry (404 and 410
    included); ``fresh`` reads the database. Wrong passwords are counted per file and
    client address, and checked before the (slow) password hash is computed.
    ``password=False``: no password check; ``used_up``: a used-up file is no 410.
    """
    file = metacache.lookup(filehash, files.find, fresh=fresh) if _looks_like_filehash(filehash) else None
    if file is None:
        raise NotFound()
    reason = file.unavailable_reason(utcnow())
    if reason is not None and not (used_up and reason == GoneReason.DOWNLOADED):
        raise FileGone(reason)
    if password:
        _check_password(file, request)
    return file


def _check_password(file, request: Request) -> None:
    """401 unless the request carries the file's password (429 past the guessing budget)."""
    if file.password_hash is not None:
        limits.check_password_attempts(file.filehash)
        if not _password_ok(file, supplied_password(request)):
            limits.record_failed_password(file.filehash)
            raise Unauthorized(
                "A valid password is required for this file.",
                # RFC 9110 §11.5: realm is always sent quoted; werkzeug would leave a token bare.
                www_authenticate=WWWAuthenticate("basic", token=f'realm="{REALM}"'),
            )


def _password_ok(file, password: str | None) -> bool:
    """The slow salted hash, once per file, password and PASSWORD_CACHE_TTL: a right
    password is remembered (under an HMAC, never the password) so that repeated downloads
    with it skip the hash; a wrong one is computed (and counted) every time."""
    if password is None:
        return False
    ttl = current_app.config["PASSWORD_CACHE_TTL"]
    if not ttl:
        return security.password_matches(password, file.password_hash)
    key = security.verification_key(signing.derived_secret("password-cache"), file.filehash, file.password_hash, password)
    if password_cache.verified(key):
        return True
    if not security.password_matches(password, file.password_hash):
        return False
    password_cache.remember(key, ttl)
    return True


def find_or_404(filehash: str) -> File:
    file = files.find(filehash) if _looks_like_filehash(filehash) else None
    if file is None:
        raise NotFound()
    return file


def owned(filehash: str, request: Request) -> File:
    """The file an owner manages: 404, then 401/403 on the owner token, then 410."""
    file = owner_of(filehash, request)
    reason = file.unavailable_reason(utcnow())
    if reason is not None:
        raise FileGone(reason)
    return file


def owner_of(filehash: str, request: Request, *, deleted: bool = True) -> File:
    """The file its owner acts on or reads about: 404, then 401/403 on the owner token,
    whether or not it is gone; ``deleted=False``: a deleted one is 410."""
    file = find_or_404(filehash)
    token = request.headers.get("X-Owner-Token")
    if not token:
        raise Unauthorized(
            "Send the owner token given at upload in X-Owner-Token.",
            # RFC 9110 §11.6.1: a 401 names a scheme; the owner token is this API's own.
            www_authenticate=WWWAuthenticate("x-owner-token", {"realm": REALM}),
        )
    if not security.token_matches(token, file.owner_token_hash):
        raise Forbidden("This owner token does not match the file.")
    if not deleted and file.unavailable_reason(utcnow()) == GoneReason.DELETED:
        raise FileGone(GoneReason.DELETED)
    return file


def _looks_like_filehash(value: str) -> bool:
    return len(value) == 32 and all(c in "0123456789abcdef" for c in value)


def owner_or_password(filehash: str, request: Request) -> File:
    """A file that its owner, or anyone with its password, may act on (token issuing).
    An owner token that is sent must be right; otherwise the password decides."""
    file = find_or_404(filehash)
    token = request.headers.get("X-Owner-Token")
    if token is not None:
        if not security.token_matches(token, file.owner_token_hash):
            raise Forbidden("This owner token does not match the file.")
    elif file.password_hash is None:
        raise Unauthorized(
            "Send the owner token in X-Owner-Token, or the file's password.",
            www_authenticate=WWWAuthenticate("basic", {"realm": REALM}),
        )
    else:
        # The same guessing budget as downloads: this route also tells a right password.
        limits.check_password_attempts(file.filehash)
        if not security.password_matches(supplied_password(request), file.password_hash):
            limits.record_failed_password(file.filehash)
            raise Unauthorized(
                "Send the owner token in X-Owner-Token, or the file's password.",
                www_authenticate=WWWAuthenticate("basic", {"realm": REALM}),
            )
    reason = file.unavailable_reason(utcnow())
    if reason is not None:
        raise FileGone(reason)
    return file


def deletable(filehash: str, request: Request) -> File:
    """DELETE: an operator bearer token with ``files:write`` may remove any file;
    anyone else needs the file's owner token (``owned``)."""
    if request.headers.get("Authorization", "").lower().startswith("bearer "):
        token = operator_tokens.from_request(request)
        if token is None:
            raise Unauthorized(
                "This operator token is not valid.", www_authenticate=WWWAuthenticate("bearer", {"realm": REALM})
            )
        if "files:write" not in token.scope_set:
            raise Forbidden("This token lacks the files:write scope.")
        file = find_or_404(filehash)
        reason = file.unavailable_reason(utcnow())
        if reason is not None:
            raise FileGone(reason)
        return file
    return owned(filehash, request)
