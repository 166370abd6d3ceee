"""The OpenAPI 3.1 document of the whole HTTP surface, served at
``/vimeo/api/v1.0/openapi.json`` (SPEC 3.8).

The document is a static file in the package (``openapi.json``), read once per process.
``tests/test_openapi.py`` holds it to the app both ways: every documented operation is a
route and every route is documented, and schemathesis finds the app answering as written.
"""

from __future__ import annotations

import functools
import json
from importlib import resources

from flask import Blueprint, Response

from .urls import API_PREFIX

bp = Blueprint("openapi", __name__, url_prefix=API_PREFIX)


@functools.cache
def document_bytes() -> bytes:
    """The document as served (validated as JSON once, on first use)."""
    raw = resources.files(__package__).joinpath("openapi.json").read_bytes()
    json.loads(raw)
    return raw


def document() -> dict:
    """The document, parsed (a fresh copy each call: callers may change it)."""
    return json.loads(document_bytes())


@bp.get("/openapi.json")
def openapi_document():
    """The OpenAPI 3.1 document describing every route."""
    response = Response(document_bytes(), content_type="application/json")
    response.headers["Cache-Control"] = "public, max-age=300"
    return response
