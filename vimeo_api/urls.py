"""The API's URL prefix and the absolute URLs it hands out.

Absolute URLs are built from ``PUBLIC_URL`` only, never from a request's ``Host`` or
``X-Forwarded-*`` headers, which a client controls (README, "Public URL").
"""

from __future__ import annotations

from urllib.parse import urlsplit

from flask import Flask, Response, current_app

API_PREFIX = "/vimeo/api/v1.0"


def absolute(path: str) -> str:
    """``PUBLIC_URL`` + the API prefix + ``path`` (which starts with ``/``)."""
    return f"{current_app.config['PUBLIC_URL']}{API_PREFIX}{path}"


def file_url(filehash: str) -> str:
    return absolute(f"/file/{filehash}")


def public_location(location: str) -> str:
    """A redirect's target on ``PUBLIC_URL``: the path and query of ``location``, whatever
    host it named (werkzeug builds its own redirects from the request's ``Host``)."""
    parts = urlsplit(location)
    query = f"?{parts.query}" if parts.query else ""
    return f"{current_app.config['PUBLIC_URL']}{parts.path or '/'}{query}"


def init_app(app: Flask) -> None:
    """Every redirect the app answers points at ``PUBLIC_URL``.

    werkzeug's routing answers 308 on its own (``//`` merged to ``/``, a missing
    trailing slash) with a Location built from the request's ``Host``, so a forged Host
    would send a client elsewhere; Flask returns those without calling error handlers,
    so they are rewritten here, with no body (werkzeug's is an HTML page)."""

    @app.after_request
    def redirect_publicly(response: Response) -> Response:
        if 300 <= response.status_code < 400 and "Location" in response.headers:
            response.headers["Location"] = public_location(response.headers["Location"])
            if response.mimetype == "text/html":
                response.set_data(b"")
                response.headers.pop("Content-Type", None)
        return response
