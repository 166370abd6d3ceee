"""The Python-path limit: a Flask app that only answers ``X-Accel-Redirect``.

``GET /bench/flask/<name>`` names one of the blobs in ``BENCH_BLOBS`` (JSON, name →
sha256, set by the harness) and answers an empty 200 whose X-Accel-Redirect points nginx
at it through the stack's internal ``/_vimeo_blobs/`` location; any other name is a 404.
No database, no cache, no hooks: what any Flask app deciding a download must at least
spend. It runs under the project's gunicorn.conf.py (``bench/baselines/gunicorn_conf.py``).
"""

import json
import os

from flask import Flask, Response, abort

# Each target is built from the harness's list here, never from the request's path.
TARGETS = {
    name: f"/_vimeo_blobs/{sha256[:2]}/{sha256[2:4]}/{sha256}"
    for name, sha256 in json.loads(os.environ["BENCH_BLOBS"]).items()
}

app = Flask(__name__)


@app.get("/bench/flask/<name>")
def download(name: str) -> Response:
    """The blob ``name``, sent by nginx."""
    target = TARGETS.get(name)
    if target is None:
        abort(404)
    return Response(headers={"X-Accel-Redirect": target}, content_type="application/octet-stream")
