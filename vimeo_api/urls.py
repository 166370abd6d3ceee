"""The API's URL prefix and the absolute URLs it hands out.

Absolute URLs are built from ``PUBLIC_URL`` only, never from a request's ``Host`` or
``X-Forwarded-*`` headers, which a client controls (README, "Public URL").
"""

from __future__ import annotations

from flask import current_app

API_PREFIX = "/vimeo/api/v1.0"


def absolute(path: str) -> str:
    """``PUBLIC_URL`` + the API prefix + ``path`` (which starts with ``/``)."""
    return f"{current_app.config['PUBLIC_URL']}{API_PREFIX}{path}"


def file_url(filehash: str) -> str:
    return absolute(f"/file/{filehash}")
