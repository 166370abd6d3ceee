"""The task queue's side of the domain's events: when content loses its last user
(``events.blobs_released``), ask a Celery worker to remove its bytes after the grace
period.

The intent is already committed (refcount 0, ``release_after``), so a broker outage loses
nothing: the periodic sweep finishes it. In a request, the message is published once the
answer has been sent (the download does not wait for the broker); the attempt is bounded
(``BROKER_TIMEOUT``), and after a failure this process leaves the broker alone for
``BROKER_RETRY_AFTER`` seconds (``breaker``). Without a broker (the embedded default) the
sweep removes the bytes once the grace period is over.

Tasks are found by name in the app's Celery registry, so this module does not import the
task definitions (an interface of their own, ``tasks.py``).
"""

from __future__ import annotations

import logging
from functools import partial

from flask import Flask, after_this_request, current_app, has_request_context

from . import events
from .breaker import Breaker

log = logging.getLogger(__name__)

RELEASE_TASK = "vimeo_api.tasks.release_blob_task"


def init_app(app: Flask) -> None:
    app.extensions["vimeo_broker_breaker"] = Breaker(
        "broker", lambda: float(app.config["BROKER_RETRY_AFTER"]), log
    )
    events.blobs_released.connect(_on_blobs_released)


def _on_blobs_released(app: Flask, sha256s: list[str]) -> None:
    if current_app.extensions["celery"].conf.task_always_eager:
        # No broker (the embedded default): the task would run here and now, while the
        # grace period has only begun, and find nothing to do. The sweep of each process
        # removes the bytes once it is over; without a grace period, release at once.
        if current_app.config["DELETE_GRACE_SECONDS"] <= 0:
            for sha256 in sha256s:
                queue_release(sha256)
        return
    if has_request_context():
        # The intent is committed; publishing can wait until the answer is sent.
        after_this_request(partial(_publish_after_response, app, list(sha256s)))
        return
    for sha256 in sha256s:
        queue_release(sha256)


def _publish_after_response(app: Flask, sha256s: list[str], response):
    def publish():
        with app.app_context():
            for sha256 in sha256s:
                queue_release(sha256)

    if response.direct_passthrough:
        # werkzeug hands such a body (a file the server may sendfile) to the server as it
        # is, without the wrapper that calls call_on_close's functions: publish now.
        publish()
    else:
        response.call_on_close(publish)
    return response


def queue_release(sha256: str) -> None:
    """Ask a worker to remove the bytes after the grace period (never raises)."""
    celery_app = current_app.extensions["celery"]
    breaker: Breaker = current_app.extensions["vimeo_broker_breaker"]
    if not breaker.usable():
        log.warning("broker unavailable: the release of a blob is left to the sweep")
        return
    try:
        celery_app.tasks[RELEASE_TASK].apply_async(
            args=[sha256], countdown=current_app.config["DELETE_GRACE_SECONDS"]
        )
    except Exception as exc:  # the broker is down or hung: the sweep will do it
        if not celery_app.conf.task_always_eager:
            breaker.trip(exc, "leaving releases to the sweep")
        log.warning("could not queue the release of a blob, the sweep will: %s: %s", exc.__class__.__name__, exc)
