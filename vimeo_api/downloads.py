"""The one download pipeline, for ``/file``, ``/v`` and ``/t`` alike, top to bottom:

0. who asks (``previews``): a robot or a prefetch, and a browser when ``LANDING_PAGE``
   is on, get the landing page (``landing``) for a limited or password-protected file,
   which uses no download; everyone else goes on;
1. ``access`` says what the request may have (404 → 410 → 401), as an ``Offer`` with
   its cache class (computed once, here and nowhere else);
2. ``http_semantics.decide`` says, in one pure step, whether the answer is a 304, a 412,
   a 416, or the content (200, 206);
3. a GET that sends content uses a download in the domain (``files.consume_download``,
   one atomic UPDATE that re-checks everything, the access version the password was
   checked under included), after the sender found the bytes; or
   it resumes, within ``RESUME_WINDOW``, a counted transfer of the same content by the
   same client, and uses none (``transfers``);
4. the sender chosen at start-up (``delivery``) sends them, or has nginx send them, and
   reports what went out for the transfers it records.

The checks in 1 may come from the metadata cache; 3 never does. When the UPDATE refuses
what possibly stale metadata allowed, the request runs once more on the database's
current row: that answers 410 if the file is gone, 401 if its password changed, or
serves the content as it is now (its preconditions evaluated again) if it changed
meanwhile. A request that may resume
reads the database before it is decided.

The landing page's Download button POSTs to the same URL (``serve_form``): the counted
download, the whole file as an attachment.

Resuming: "the same client" is the same address (``limits.client_address``: the peer,
or nginx's X-Forwarded-For in the stack), recognised by a keyed hash of it. A resumption
is a single Range starting past byte 0 of the content the counted transfer sent (an
If-Range that is sent must match its ETag), within ``RESUME_WINDOW`` seconds of that
transfer. Anything else from anyone, on a used-up file, is the 410 it always was.

A shareable answer (a public file, a published version) finally makes sure nginx's fast
path may answer the next requests for it itself (``grants``).
"""

from __future__ import annotations

from collections.abc import Callable

from flask import Response, current_app, request
from werkzeug.exceptions import (
    BadRequest,
    HTTPException,
    PreconditionFailed,
    RequestedRangeNotSatisfiable,
    TooManyRequests,
    Unauthorized,
    UnsupportedMediaType,
)

from . import delivery, files, grants, landing, limits, previews, security, signing, transfers
from .access import Offer
from .errors import FileGone
from .http_semantics import Decision, decide, is_plain_get
from .models import GoneReason, utcnow
from .representation import CacheClass, content_disposition, content_headers, representation_of, validator_headers

FORM_TYPE = "application/x-www-form-urlencoded"


def serve(resolve: Callable[..., Offer], claim: Callable[[], Offer | None] | None = None) -> Response:
    """Answer a GET or HEAD of a download URL. ``resolve(fresh=..., password=...,
    used_up=...)`` is the access check that names what the request may have
    (``access.file_offer`` and its kin); ``claim()`` (``access.claim_offer``), where
    given, does the check and uses the download in one statement for a plain GET (no
    precondition, no Range: nothing to resume), or says None: then ``resolve`` on the
    database."""
    if previews.is_robot(request.headers) or (landing.enabled() and previews.prefers_html(request.headers)):
        page = _landing(resolve)
        if page is not None:
            return page
    claiming = claim is not None and is_plain_get(request.method, request.headers)
    offer = claim() if claiming else None
    if offer is None:
        may_resume = _may_resume()
        # A claim that came back empty has just read the cache: the database says why.
        offer = resolve(fresh=claiming, used_up=may_resume)
        if may_resume and offer.file.max_downloads >= 1 and not offer.fresh:
            offer = resolve(fresh=True, used_up=True)
    if offer.claimed is not None:
        response = _send_claimed(offer)
    else:
        response = _answer(offer)
        if response is None and not offer.fresh:
            offer = resolve(fresh=True)
            response = _answer(offer)
        if response is None:
            resolve(fresh=True)  # answers why the download was refused
            raise FileGone(GoneReason.DOWNLOADED)
    if offer.klass is CacheClass.PUBLIC:
        grants.ensure_file(offer.resource, offer.klass)
    elif offer.klass is CacheClass.IMMUTABLE:
        grants.ensure_version((offer.resource, offer.file))
    return response


def _send_claimed(offer: Offer) -> Response:
    """The whole file, for a download already used in an open transaction: its transfer
    recorded in the same transaction when it is one the owner sees (not a public file's),
    committed once the sender found the bytes (missing bytes cost no download)."""
    resource, decision, sender = offer.resource, Decision(200), delivery.current()
    try:
        blob = sender.prepare(resource.sha256, decision)
        transfer = None
        if offer.klass is not CacheClass.PUBLIC:
            transfer = offer.claimed.record(_start(offer, decision, resource.size))
    except BaseException:
        offer.claimed.abandon()
        raise
    offer.claimed.commit()
    return sender.send(resource, blob, decision, content_headers(resource, offer.klass), transfer)


def serve_form(resolve: Callable[..., Offer]) -> Response:
    """The landing page's Download button (a POST with the form's ``password``): the
    whole file as an attachment, one download used. A browser that gets an error gets
    the page again with it (wrong password, too many attempts, gone)."""
    if request.content_length and request.mimetype != FORM_TYPE:
        raise UnsupportedMediaType("Send the landing page's form (application/x-www-form-urlencoded), or no body.")
    unknown = set(request.form) - {"password"}
    if unknown:
        raise BadRequest(f"Unknown form field(s): {', '.join(sorted(unknown))}; the form has only password.")
    try:
        offer = resolve(fresh=False)
        response = _answer(offer, form=True)
        if response is None:
            offer = resolve(fresh=True)
            response = _answer(offer, form=True)
        if response is None:
            resolve(fresh=True)
            raise FileGone(GoneReason.DOWNLOADED)
        return response
    except HTTPException as exc:
        if not (landing.enabled() and previews.prefers_html(request.headers)):
            raise
        return _error_page(resolve, exc)


def _landing(resolve) -> Response | None:
    """The page, when it stands for this request's answer; None: answer as usual."""
    try:
        offer = resolve(fresh=False, password=False)
    except FileGone as gone:
        return landing.gone(gone.reason)
    return landing.page(offer) if landing.applies(offer) else None


def _error_page(resolve, exc: HTTPException) -> Response:
    if isinstance(exc, FileGone):
        return landing.gone(exc.reason)
    if isinstance(exc, Unauthorized | TooManyRequests):
        try:
            offer = resolve(fresh=False, password=False)
        except HTTPException:
            raise exc from None
        if isinstance(exc, TooManyRequests):
            headers = [(k, v) for k, v in exc.get_headers() if k.lower() != "content-type"]
            return landing.page(offer, error=exc.description, status=429, headers=headers)
        given = bool(request.form.get("password"))
        error = "That password is not right." if given else "Enter the password."
        return landing.page(offer, error=error, status=401, headers=[("WWW-Authenticate", landing.FORM_CHALLENGE)])
    raise exc


def _answer(offer: Offer, *, form: bool = False) -> Response | None:
    """The answer to one offer; None when its download could not be used."""
    resource = offer.resource
    # The form's POST asks for the whole file, whatever else the browser sent.
    decision = decide("GET", {}, representation_of(resource)) if form else decide(
        request.method, request.headers, representation_of(resource))
    if offer.used_up and not _resumes(decision):
        raise FileGone(GoneReason.DOWNLOADED)
    if decision.status == 304:
        return Response(status=304, headers=validator_headers(resource, offer.klass))
    if decision.status == 412:
        raise PreconditionFailed("The file does not match the request's preconditions.")
    if decision.status == 416:
        raise RequestedRangeNotSatisfiable(length=resource.size)
    sender = delivery.current()
    blob = None
    transfer = None
    if form or request.method == "GET":
        tracked = offer.consume and offer.klass is not CacheClass.PUBLIC
        counted = _resumable(offer, decision) if tracked and not form else None
        if offer.used_up and counted is None:
            raise FileGone(GoneReason.DOWNLOADED)
        try:
            blob = sender.prepare(resource.sha256, decision)
        except FileNotFoundError:
            if counted is None:
                raise
            raise FileGone(GoneReason.DOWNLOADED) from None  # held bytes went early
        nbytes = decision.body_length(resource.size)
        start = _start(offer, decision, nbytes) if tracked else None
        if counted is not None:
            transfer = transfers.resume(counted, start)
        elif offer.consume:
            if not files.consume_download(offer.file.id, nbytes, resource.sha256, offer.access_version, start):
                sender.discard(blob)
                return None
            transfer = start.id if start else None
    headers = content_headers(resource, offer.klass)
    if form:
        headers["Content-Disposition"] = content_disposition(resource.filename, resource.content_type,
                                                             force_attachment=True)
    return sender.send(resource, blob, decision, headers, transfer)


# -- resuming ---------------------------------------------------------------------------

def _may_resume() -> bool:
    """Whether this request could be a resumption (then it is decided on fresh rows)."""
    return request.method == "GET" and "Range" in request.headers and current_app.config["RESUME_WINDOW"] > 0


def _resumes(decision: Decision) -> bool:
    """The answer is one range that does not start at the first byte: the rest of it."""
    return decision.status == 206 and len(decision.ranges) == 1 and decision.ranges[0][0] > 0


def _resumable(offer: Offer, decision: Decision):
    """The counted transfer this request may continue without a download, or None."""
    window = current_app.config["RESUME_WINDOW"]
    if not (window > 0 and offer.fresh and offer.file.max_downloads >= 1 and _resumes(decision)):
        return None
    since = transfers.window_start(utcnow(), window)
    return transfers.resumable(offer.file.id, offer.resource.sha256, _client_key(), since)


def _client_key() -> str:
    return security.keyed_digest(signing.derived_secret("transfer-client"), limits.client_address())


def _start(offer: Offer, decision: Decision, nbytes: int) -> transfers.Start:
    keep_address = current_app.config["DOWNLOADS_CLIENT_ADDRESS"]
    return transfers.Start(
        file_id=offer.file.id,
        sha256=offer.resource.sha256,
        at=utcnow(),
        range_start=decision.ranges[0][0] if decision.status == 206 else 0,
        bytes_expected=nbytes,
        client_key=_client_key(),
        client_address=limits.client_address() if keep_address else None,
    )
