"""Requests and checks on answers over real HTTP (``requests``), for the tests that
look at what nginx or gunicorn sent on the wire."""

from __future__ import annotations

import requests

from . import API, ERROR_KEYS


def get(stack, path: str, headers=None, base=None, method="GET") -> requests.Response:
    """``method`` on the API ``path`` of ``stack`` (its nginx, or ``base``)."""
    return requests.request(method, (base or stack.base) + API + path, headers=headers, timeout=30)


def once(response: requests.Response, name: str) -> str:
    """The single value of a header that must not be repeated (requests would join
    repeated lines with ", ", hiding a duplicate)."""
    values = response.raw.headers.getlist(name)
    assert len(values) == 1, f"{name}: {values}"
    return values[0]


def assert_json_error(response: requests.Response, status: int, phrase: str) -> dict:
    """SPEC 3.4 on the wire, whoever answered (the app, or nginx by itself)."""
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].split(";")[0] == "application/json"
    body = response.json()
    # A 410 about a file also names why (issue 16).
    assert set(body) == (ERROR_KEYS | {"reason"} if status == 410 else ERROR_KEYS)
    assert body["error"] == phrase
    assert body["message"]
    assert body["request_id"] == once(response, "X-Request-Id")
    assert "<html" not in response.text and "nginx" not in response.text
    return body
