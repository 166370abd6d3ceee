"""The one upload helper: a multipart ``PUT /file`` (SPEC 3.1, the original contract)
through whatever the test holds.

``via`` is a ``Target`` (the conformance suite), a Flask test client (the app
in-process), or a deployment reached over HTTP: a base URL, or anything with ``.base``
(an nginx stack, a worker stack, a live gunicorn), whose ``.http`` session is used when
it has one.
"""

from __future__ import annotations

import io

import requests
from flask.testing import FlaskClient

from . import API
from .targets import Target

DEFAULT_CONTENT = b"hello world\n"
DEFAULT_FILENAME = "hello.txt"


def upload(via, content: bytes = DEFAULT_CONTENT, filename: str = DEFAULT_FILENAME, *,
           content_type: str | None = None, expect: int | None = 201, environ: dict | None = None, **fields):
    """Upload ``content`` as ``filename`` with the form ``fields`` (``max_downloads=0``,
    ``password=...``, ``expires_in=...``: sent as text).

    With ``expect`` (201 by default) the answer must have that status, and its JSON body
    is returned. With ``expect=None`` nothing is checked and the answer is returned as
    ``via`` gives it (an ``Answer``, a Flask response or a ``requests`` response), for a
    test that looks at a refusal. ``environ`` is the WSGI environ of a Flask client's
    request (a client address, ``REMOTE_ADDR``).
    """
    form = {name: str(value) for name, value in fields.items()}
    if isinstance(via, Target):
        part = (filename, content, content_type) if content_type else (filename, content)
        answer = via.request("PUT", "/file", data=form, files={"file": part})
        status, body = answer.status, answer.json
    elif isinstance(via, FlaskClient):
        part = (io.BytesIO(content), filename, content_type) if content_type else (io.BytesIO(content), filename)
        answer = via.put(API + "/file", data={**form, "file": part}, content_type="multipart/form-data",
                         environ_base=environ or {})
        status, body = answer.status_code, answer.get_json
    else:
        base = via if isinstance(via, str) else via.base
        part = (filename, content, content_type) if content_type else (filename, content)
        session = getattr(via, "http", None) or requests
        answer = session.put(base + API + "/file", files={"file": part}, data=form, timeout=60)
        status, body = answer.status_code, answer.json
    if expect is None:
        return answer
    # requests' and Flask's responses show their text, an Answer its status and body.
    assert status == expect, getattr(answer, "text", answer)
    return body()
