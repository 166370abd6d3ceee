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
    API's (schemathesis's exclude-header-characters does not reach every generated value);
    and tus headers whose rules a schema cannot state (see ``_tus_headers_judgeable``)."""
    if any(isinstance(value, str) and not FORBIDDEN_IN_HEADERS.isdisjoint(value) for value in (headers or {}).values()):
        return False
    # A header the API does not know is ignored, as HTTP wants: never an invalid request.
    if any(name.lower().endswith("unknown-property") for name in (headers or {})):
        return False
    return _tus_headers_judgeable(context, headers or {})


# The tus creation's options, whose rules are the multipart fields' (tested there).
TUS_OPTION_KEYS = ("password", "max_downloads", "expires_in")


def _tus_headers_judgeable(context, headers: dict) -> bool:
    """Upload-Metadata's keys are unique, with base64 values that, for the keys the API
    reads, decode to valid options: rules inside one header that OpenAPI cannot express. A generated request breaking them would be called an accepted invalid one,
    or a refused valid one, for the wrong reason."""
    names = {name.lower(): value for name, value in headers.items()}
    metadata = names.get("upload-metadata")
    if metadata is None:
        return True
    from vimeo_api.tus import parse_metadata

    try:
        pairs = parse_metadata(metadata)
    except Exception:
        return False
    for key, value, _pair in pairs:
        if key in TUS_OPTION_KEYS:
            return False
        if key in ("filename", "filetype", "name", "type"):
            try:
                value.decode("utf-8")
            except UnicodeDecodeError:
                return False
    return True


@schemathesis.serializer("application/offset+octet-stream")
def serialize_tus_chunk(ctx, value):
    """A tus chunk is raw bytes, as an application/octet-stream body is."""
    from schemathesis.transport.serialization import serialize_binary

    return {"data": serialize_binary(value)}


@schemathesis.hook
def filter_body(context, body) -> bool:
    """Drop the kind of body whose verdict schemathesis cannot judge here.

    - Multipart fields are text on the wire: a "wrong type" value (``true``, ``5``, a list)
      arrives as text that is often a valid value (``"true"`` is a fine password), and
      schemathesis would call the 201 an accepted invalid request.
    - The same goes for a tus chunk, which is any bytes.
    """
    if _operation_id(context) in ("tusCreate", "tusAppend"):
        # A tus chunk is bytes on the wire: a "wrong type" value (5, a list) arrives as
        # bytes, which are a fine chunk.
        return isinstance(body, (bytes, str))
    if not isinstance(body, dict):
        return True
    if _multipart(context):
        return all(isinstance(body[name], str) for name in FORM_TEXT if name in body)
    return True


def _multipart(context) -> bool:
    operation = getattr(context, "operation", None)
    return operation is not None and operation.get_body_for_media_type("multipart/form-data") is not None


def _operation_id(context) -> str | None:
    operation = getattr(context, "operation", None)
    definition = getattr(operation, "definition", None)
    raw = getattr(definition, "raw", None)
    if isinstance(raw, dict) and "operationId" in raw:
        return raw["operationId"]
    label = getattr(operation, "label", "") or ""
    return {"POST /vimeo/api/v1.0/tus/": "tusCreate",
            "PATCH /vimeo/api/v1.0/tus/{upload_id}": "tusAppend"}.get(label)
