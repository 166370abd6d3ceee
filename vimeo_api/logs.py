"""Structured logs: one JSON object per line for the app's loggers (``vimeo_api.*``).

``init_app`` configures them when an app is created (nothing happens at import). Request
lines come from ``observability``; any other record made during a request carries the
request id too. Nothing here logs a password, a token or a query string, and as a last
guard ``password=`` / ``token=`` values that reach a message are masked.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import datetime, timezone

from flask import Flask, g, has_request_context

LOGGER = "vimeo_api"
# Attributes every LogRecord has; anything else was passed through ``extra=`` and is a field.
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}
_SECRET = re.compile(r"(?i)\b(password|token|owner_token)=([^&\s\"']+)")


def _mask(text: str) -> str:
    return _SECRET.sub(lambda m: f"{m.group(1)}=[masked]", text)


class JsonFormatter(logging.Formatter):
    """``{"ts", "level", "logger", "message", ...fields}`` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": datetime.fromtimestamp(record.created, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")[:-4] + "Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": _mask(record.getMessage()),
        }
        if "request_id" not in record.__dict__ and has_request_context():
            entry["request_id"] = getattr(g, "request_id", None)
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = _mask(self.formatException(record.exc_info))
        return json.dumps(entry, default=str, ensure_ascii=False)


class StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record is emitted (gunicorn and test
    runners swap it), instead of the stream that existed when the app was created."""

    def __init__(self):
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value):
        pass


def init_app(app: Flask) -> None:
    """Send the ``vimeo_api`` loggers (``app.logger`` is one of them) to stderr as JSON.

    Creating a second app replaces the handler instead of adding another. Records still
    propagate to the root logger, which belongs to whoever runs us: gunicorn leaves it
    without handlers, pytest captures from it.
    """
    logger = logging.getLogger(LOGGER)
    for handler in list(logger.handlers):
        if getattr(handler, "_vimeo_json", False):
            logger.removeHandler(handler)
    handler = StderrHandler()
    handler._vimeo_json = True
    handler.setFormatter(JsonFormatter())
    logger.addHandler(handler)
    logger.setLevel(str(app.config.get("LOG_LEVEL", "INFO")).upper())
