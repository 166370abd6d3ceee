"""The one download pipeline, for ``/file``, ``/v`` and ``/t`` alike, top to bottom:

1. ``access`` says what the request may have (404 → 410 → 401), as an ``Offer`` with
   its cache class (computed once, here and nowhere else);
2. ``http_semantics.decide`` says, in one pure step, whether the answer is a 304, a 412,
   a 416, or the content (200, 206);
3. a GET that sends content uses a download in the domain (``files.consume_download``,
   one atomic UPDATE that re-checks everything, the access version the password was
   checked under included), after the sender found the bytes;
4. the sender chosen at start-up (``delivery``) sends them, or has nginx send them.

The checks in 1 may come from the metadata cache; 3 never does. When the UPDATE refuses
what possibly stale metadata allowed, the request runs once more on the database's
current row: that answers 410 if the file is gone, 401 if its password changed, or
serves the content as it is now (its preconditions evaluated again) if it changed
meanwhile.

A shareable answer (a public file, a published version) finally makes sure nginx's fast
path may answer the next requests for it itself (``grants``).
"""

from __future__ import annotations

from collections.abc import Callable

from flask import Response, request
from werkzeug.exceptions import Gone, PreconditionFailed, RequestedRangeNotSatisfiable

from . import delivery, files, grants
from .access import Offer
from .http_semantics import decide
from .representation import CacheClass, content_headers, representation_of, validator_headers


def serve(resolve: Callable[..., Offer]) -> Response:
    """Answer a GET or HEAD of a download URL. ``resolve(fresh=...)`` is the access check
    that names what the request may have (``access.file_offer`` and its kin)."""
    offer = resolve(fresh=False)
    response = _answer(offer)
    if response is None and not offer.fresh:
        offer = resolve(fresh=True)
        response = _answer(offer)
    if response is None:
        raise Gone()
    if offer.klass is CacheClass.PUBLIC:
        grants.ensure_file(offer.resource, offer.klass)
    elif offer.klass is CacheClass.IMMUTABLE:
        grants.ensure_version((offer.resource, offer.file))
    return response


def _answer(offer: Offer) -> Response | None:
    """The answer to one offer; None when its download could not be used."""
    resource = offer.resource
    decision = decide(request.method, request.headers, representation_of(resource))
    if decision.status == 304:
        return Response(status=304, headers=validator_headers(resource, offer.klass))
    if decision.status == 412:
        raise PreconditionFailed("The file does not match the request's preconditions.")
    if decision.status == 416:
        raise RequestedRangeNotSatisfiable(length=resource.size)
    sender = delivery.current()
    blob = None
    if request.method == "GET":
        blob = sender.prepare(resource.sha256, decision)
        nbytes = decision.body_length(resource.size)
        if offer.consume and not files.consume_download(offer.file.id, nbytes, resource.sha256, offer.access_version):
            sender.discard(blob)
            return None
    return sender.send(resource, blob, decision, content_headers(resource, offer.klass))
