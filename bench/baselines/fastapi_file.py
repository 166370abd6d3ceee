"""A minimal FastAPI app in the seeds' style: the route looks the file up and answers
Starlette's ``FileResponse``, the bytes going through Python.

``GET /bench/fastapi/{name}`` sends the blob ``name`` of ``BENCH_BLOBS`` (JSON, name →
sha256) from ``BENCH_STORAGE_DIR``'s blobs; any other name is a 404. No database: the
seeds' lookup of a row would only add to its cost. Run by uvicorn (see bench/harness.py's
``Baselines``).
"""

import json
import os

from fastapi import FastAPI, HTTPException
from fastapi.responses import FileResponse

# Each path is built from the harness's list here, never from the request's path.
PATHS = {
    name: os.path.join(os.environ["BENCH_STORAGE_DIR"], "blobs", sha256[:2], sha256[2:4], sha256)
    for name, sha256 in json.loads(os.environ["BENCH_BLOBS"]).items()
}

app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)


@app.get("/bench/fastapi/{name}")
async def download(name: str) -> FileResponse:
    """The blob ``name``, read and sent by Starlette."""
    path = PATHS.get(name)
    if path is None:
        raise HTTPException(status_code=404)
    return FileResponse(path, media_type="application/octet-stream")
