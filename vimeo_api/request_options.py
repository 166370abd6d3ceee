"""A file's options as clients send them: multipart form fields, ``X-*`` headers of a
raw upload, a PATCH's JSON, or (resumable uploads) tus ``Upload-Metadata``. Parsed here,
in the HTTP layer, into the domain's ``files.Options``; anything invalid is a ``400``
that says what is accepted.

The ``X-*`` headers count on every upload route, not only the raw one: a client that
sends ``-H 'X-Password: ...'`` with a form or a tus upload means it, and a file stored
without the password it asked for would be worse than any error. A header and a field
that give one option two values are a ``400``: neither is guessed."""

from __future__ import annotations

import hmac
from datetime import datetime, timedelta

from flask import current_app
from werkzeug.exceptions import BadRequest

from .files import Options, whole_second
from .models import utcnow

MAX_PASSWORD = 1024
# Upload options as headers (every upload route; the only way for a raw one).
HEADER_FIELDS = {"X-Password": "password", "X-Max-Downloads": "max_downloads", "X-Expires-In": "expires_in"}


def parse(source, *, patch: bool = False) -> Options:
    """Validated options from a mapping of field names to values (400 on bad input).

    ``patch``: a PATCH, where ``password: null`` removes the password."""
    options = Options()
    try:
        if source.get("max_downloads") not in (None, ""):
            options.max_downloads = parse_max_downloads(source["max_downloads"])
        if source.get("expires_in") not in (None, ""):
            options.expires_in = parse_expires_in_seconds(source["expires_in"])
            options.expires_at = (None if options.expires_in is None
                                  else whole_second(utcnow()) + timedelta(seconds=options.expires_in))
    except ValueError as exc:
        raise BadRequest(str(exc)) from None
    if "password" in source:
        password = source["password"]
        if patch and password is None:
            options.password = None
        elif password:
            if len(password) > MAX_PASSWORD:
                raise BadRequest(f"password is longer than {MAX_PASSWORD} characters.")
            options.password = password
    return options


def upload_fields(headers, fields=None, source: str = "") -> dict:
    """The option fields of an upload: its ``X-*`` headers, and for a form or a tus
    creation also ``fields`` (named by ``source``: "form field", "Upload-Metadata"). An
    empty value counts as not given; the same option with two values is a 400."""
    fields = fields or {}
    combined = {key: fields[key] for key in HEADER_FIELDS.values() if fields.get(key) not in (None, "")}
    for name, key in HEADER_FIELDS.items():
        value = headers.get(name)
        if value in (None, ""):
            continue
        # The two values come from one client; constant time all the same (a password).
        if key in combined and not hmac.compare_digest(combined[key].encode(), value.encode()):
            raise BadRequest(f"{key} is given both as a {source} and as the {name} header, with different "
                             f"values: send it once.")
        combined[key] = value
    return combined


def parse_expires_in(value, now: datetime) -> datetime | None:
    """``3600``, ``90s``, ``15m``, ``12h``, ``7d`` or ``never`` → the expiry instant (None: never).
    Raises ValueError with a message fit for the client."""
    seconds = parse_expires_in_seconds(value)
    # Whole seconds, as the API reports it: the expiry a client is shown is the one enforced.
    return None if seconds is None else whole_second(now) + timedelta(seconds=seconds)


def parse_expires_in_seconds(value) -> int | None:
    """``3600``, ``90s``, ``15m``, ``12h``, ``7d`` or ``never`` → seconds (None: never).
    Raises ValueError with a message fit for the client."""
    cfg = current_app.config
    text = _number_text(value).lower()
    maximum = cfg["MAX_EXPIRES_IN"]
    if text == "never":
        if maximum:
            raise ValueError(f"expires_in cannot be 'never' here; the maximum is {maximum} seconds")
        return None
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    multiplier = 1
    if text and text[-1] in units:
        multiplier, text = units[text[-1]], text[:-1]
    if not (text.isascii() and text.isdigit()) or len(text) > 12:
        raise ValueError("expires_in must be seconds, a number with s/m/h/d, or 'never'")
    seconds = int(text) * multiplier
    if seconds < 1:
        raise ValueError("expires_in must be at least 1 second")
    if maximum and seconds > maximum:
        raise ValueError(f"expires_in is more than the maximum of {maximum} seconds")
    if seconds > 100 * 365 * 86400:
        raise ValueError("expires_in is too large; use 'never'")
    return seconds


def parse_max_downloads(value) -> int:
    text = _number_text(value)
    if not (text.isascii() and text.isdigit()) or len(text) > 9:
        raise ValueError("max_downloads must be an integer >= 0 (0 means unlimited)")
    return int(text)


def _number_text(value) -> str:
    """Form fields and headers are text; JSON numbers come typed. JSON counts ``60.0`` as
    an integer, so an integral float reads as one; ``true`` never does."""
    if isinstance(value, bool):
        return "not a number"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip()
