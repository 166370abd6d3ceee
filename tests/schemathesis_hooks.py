"""Schemathesis hooks for the fuzzing run in test_openapi.py (``SCHEMATHESIS_HOOKS``).

Kept to what the OpenAPI document cannot say; each filter drops generated bodies, never
a check or a failure.
"""

from __future__ import annotations

import schemathesis

# Options the API reads from JSON bodies (PATCH /file/<filehash>, POST .../tokens).
# Text fields of the multipart bodies (PUT /file, PUT /file/<filehash>).
FORM_TEXT = ("password", "max_downloads", "expires_in")
# Bytes RFC 9110 5.5 forbids in a field value (HTAB aside): gunicorn (and nginx in front
# of it) answer such a request with their own 400 before the app sees it.
FORBIDDEN_IN_HEADERS = frozenset(chr(c) for c in (*range(0x00, 0x09), *range(0x0A, 0x20), 0x7F))


@schemathesis.hook
def filter_headers(context, headers) -> bool:
    """Drop header values the HTTP server itself rejects: what it answers is not the
    API's (schemathesis's exclude-header-characters does not reach every generated value)."""
    return not any(
        isinstance(value, str) and not FORBIDDEN_IN_HEADERS.isdisjoint(value) for value in (headers or {}).values()
    )


@schemathesis.hook
def filter_body(context, body) -> bool:
    """Drop the kind of body whose verdict schemathesis cannot judge here.

    - Multipart fields are text on the wire: a "wrong type" value (``true``, ``5``, a list)
      arrives as text that is often a valid value (``"true"`` is a fine password), and
      schemathesis would call the 201 an accepted invalid request.
    """
    if not isinstance(body, dict):
        return True
    if _multipart(context):
        return all(isinstance(body[name], str) for name in FORM_TEXT if name in body)
    return True


def _multipart(context) -> bool:
    operation = getattr(context, "operation", None)
    return operation is not None and operation.get_body_for_media_type("multipart/form-data") is not None
