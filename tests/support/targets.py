"""One client interface over every deployment the conformance suite runs on.

A ``Target`` speaks HTTP (``request``) and lets a test look behind the answers (``sql``,
``stored``): ``FlaskTarget`` is the app in-process through Flask's test client (the
embedded delivery), ``HttpTarget`` a deployment over real HTTP (gunicorn, or nginx in
front of it; support.stacks' ``StackTarget`` also looks into its bucket). Uploads go
through ``support.uploads.upload``.
"""

from __future__ import annotations

import hashlib
import io
import json as jsonlib
import secrets
from pathlib import Path

import requests
from sqlalchemy import create_engine, text

from . import API


class Answer:
    """What a conformance test looks at: status, headers, bytes."""

    def __init__(self, status: int, headers, body: bytes):
        self.status = status
        self.headers = headers  # case-insensitive mapping
        self.body = body

    def json(self):
        return jsonlib.loads(self.body)

    def __repr__(self):
        return f"<Answer {self.status} {self.body[:120]!r}>"


class Target:
    """A deployment under test. ``request`` speaks HTTP to it; ``sql`` and ``storage_dir``
    let a test check rows and files on disk behind the answers."""

    prefix = API

    def __init__(self, name: str, db_url: str, storage_dir: str):
        self.name = name
        self.db_url = db_url
        self.storage_dir = storage_dir
        self._engine = None

    def request(self, method, path, *, headers=None, data=None, files=None, json=None) -> Answer:
        raise NotImplementedError

    def stored(self, area: str = "") -> list[str]:
        """What the storage holds below ``area`` ("blobs", "tmp"; "" for everything), as
        sorted paths relative to it: here the files below ``storage_dir``."""
        directory = Path(self.storage_dir, area)
        if not directory.exists():
            return []
        return sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file())

    def url(self, path: str) -> str:
        """Absolute URLs (as the API hands out) and prefixed paths pass unchanged."""
        return path if path.startswith(("http://", "https://", self.prefix)) else self.prefix + path

    def operator_token(self, *scopes: str) -> str:
        """An operator bearer token, stored the way ``manage.py tokens create`` stores it."""
        secret = "vmo_" + secrets.token_urlsafe(16)
        self.sql(
            "insert into api_tokens (name, token_hash, scopes, created_at) values (:n, :h, :s, CURRENT_TIMESTAMP)",
            n="test", h=hashlib.sha256(secret.encode()).hexdigest(), s=" ".join(scopes),
        )
        return secret

    def sql(self, statement: str, **params):
        if self._engine is None:
            self._engine = create_engine(self.db_url)
        with self._engine.begin() as conn:
            result = conn.execute(text(statement), params)
            return result.fetchall() if result.returns_rows else result.rowcount

    def close(self):
        if self._engine is not None:
            self._engine.dispose()


class FlaskTarget(Target):
    """The app in-process through Flask's test client (the embedded delivery)."""

    def __init__(self, name, app):
        super().__init__(name, app.config["DATABASE_URL"], app.config["STORAGE_DIR"])
        self.app = app
        self.client = app.test_client()

    def request(self, method, path, *, headers=None, data=None, files=None, json=None) -> Answer:
        kwargs = {"headers": headers or {}}
        if json is not None:
            kwargs["json"] = json
        elif files:
            form = dict(data or {})
            for field, part in files.items():
                form[field] = (io.BytesIO(part[1]), part[0], *part[2:])
            kwargs["data"] = form
            kwargs["content_type"] = "multipart/form-data"
        elif data is not None:
            kwargs["data"] = data
        response = self.client.open(self.url(path), method=method, **kwargs)
        body = response.get_data()
        # As a server does once the body is sent (a recorded transfer reports on close).
        response.close()
        return Answer(response.status_code, response.headers, body)


class HttpTarget(Target):
    """A deployment reached over real HTTP (gunicorn, or nginx in front of it)."""

    def __init__(self, name, base: str, db_url: str, storage_dir: str):
        super().__init__(name, db_url, storage_dir)
        self.base = base
        self.session = requests.Session()

    def request(self, method, path, *, headers=None, data=None, files=None, json=None) -> Answer:
        url = self.url(path)
        url = url if url.startswith("http") else self.base + url
        response = self.session.request(
            method, url, headers=headers, data=data, files=files, json=json, allow_redirects=False, timeout=60
        )
        return Answer(response.status_code, response.headers, response.content)

    def close(self):
        self.session.close()
        super().close()


class PublicURLAdapter(requests.adapters.HTTPAdapter):
    """Sends requests for the API's public URL (http://files.test) to a deployment's
    real address."""

    def __init__(self, public: str, base: str):
        super().__init__()
        self.public, self.base = public, base

    def send(self, request, **kwargs):
        if request.url.startswith(self.public):
            request.url = self.base + request.url[len(self.public):]
        return super().send(request, **kwargs)
