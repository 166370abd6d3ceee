"""The landing page: what a browser (or a robot) gets for a limited or password-protected
file instead of its bytes. It names the file (name, size, type, downloads left, expiry)
and uses no download; its Download button is a form that POSTs to the same URL, which
makes the counted download (``downloads.serve_form``). A form rather than a link:
crawlers and link scanners follow links, not forms. A password-protected file's page
shows nothing but the password field (the API's HEAD tells nothing without it either).

Same look on every deployment: one Jinja2 template (``templates/landing.html``) with
its stylesheet inline, no external asset, no script (it works without JavaScript), and a
strict Content-Security-Policy that admits that one stylesheet by its hash.
"""

from __future__ import annotations

import base64
import functools
import hashlib
from datetime import datetime
from pathlib import Path

from flask import Response, current_app, render_template, request

from .errors import GONE_MESSAGES
from .models import utcnow
from .representation import CacheClass

TEMPLATES = Path(__file__).resolve().parent / "templates"
# A 401 must name a scheme (RFC 9110 §11.6.1); Basic would make a browser open its own
# password dialog over the page, so the page's form names its own.
FORM_CHALLENGE = 'x-password-form realm="vimeo_api"'

_UNITS = ("bytes", "KiB", "MiB", "GiB", "TiB")


def enabled() -> bool:
    """``LANDING_PAGE``: browsers get the page for limited and password-protected files."""
    return bool(current_app.config["LANDING_PAGE"])


def applies(offer) -> bool:
    """Whether the page stands for the bytes: a download of a limited or
    password-protected file (a public file or a version has nothing to protect)."""
    file = offer.file
    return offer.consume and (file.max_downloads >= 1 or file.password_hash is not None)


def page(offer, *, error: str | None = None, status: int = 200, headers=()) -> Response:
    """The page for an offered file; ``error`` is shown above the form."""
    file = offer.file
    needs_password = file.password_hash is not None and offer.klass is not CacheClass.TOKEN
    left = "unlimited" if not file.max_downloads else f"{max(file.max_downloads - file.downloads, 0)} of {file.max_downloads}"
    if needs_password:
        note = "Enter the password to download the file. Wrong passwords are limited per address."
    elif file.max_downloads:
        note = "Opening this page used no download; the Download button uses one."
    else:
        note = "Downloads of this file are not limited."
    html = render_template(
        "landing.html",
        title="Password-protected file" if needs_password else file.filename,
        style=_style(),
        file=file,
        needs_password=needs_password,
        size_text=human_size(file.size),
        downloads_left=left,
        expires_text=_when(file.expires_at),
        error=error,
        action=request.path,
        note=note,
        gone=None,
    )
    return _response(html, status, headers)


def gone(reason: str) -> Response:
    """``410`` as a page: why the file serves no more."""
    html = render_template(
        "landing.html", title="No longer available", style=_style(), gone=reason, gone_text=GONE_MESSAGES[reason],
    )
    return _response(html, 410, ())


def human_size(size: int) -> str:
    """``15728640`` → ``15.0 MiB (15,728,640 bytes)``."""
    if size < 1024:
        return f"{size:,} bytes"
    value, unit = float(size), 0
    while value >= 1024 and unit < len(_UNITS) - 1:
        value /= 1024
        unit += 1
    return f"{value:.1f} {_UNITS[unit]} ({size:,} bytes)"


def _when(at: datetime | None) -> str:
    if at is None:
        return "no expiry"
    return at.strftime("%Y-%m-%d %H:%M UTC") if at > utcnow() else "expired"


@functools.cache
def _style() -> str:
    return (TEMPLATES / "landing.css").read_text()


@functools.cache
def content_security_policy() -> str:
    """Nothing but the page's own stylesheet (by its hash) and forms to this origin."""
    digest = base64.b64encode(hashlib.sha256(_style().encode()).digest()).decode()
    return (f"default-src 'none'; style-src 'sha256-{digest}'; form-action 'self'; "
            "frame-ancestors 'none'; base-uri 'none'")


def _response(html: str, status: int, headers) -> Response:
    response = Response(html, status=status, mimetype="text/html")
    response.headers["Content-Security-Policy"] = content_security_policy()
    response.headers["Cache-Control"] = "private, no-store"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["X-Robots-Tag"] = "noindex, nofollow, noarchive"
    # The same URL answers the page or the bytes, by these.
    response.headers["Vary"] = "Accept, Range, User-Agent, Sec-Purpose, Purpose, X-Purpose, X-Moz"
    for name, value in headers:
        response.headers[name] = value
    return response
