"""The project's gunicorn.conf.py for the Flask baseline: every setting (bind, workers,
threads, worker class, keep-alive, access log and its format) read the same way from the
same ``GUNICORN_*`` environment, so the baseline runs under the app's gunicorn
configuration.

Only ``post_worker_init`` is left out: it starts vimeo_api's embedded sweeper on the
worker's app, which the baseline is not. on_starting and child_exit act only with
``PROMETHEUS_MULTIPROC_DIR``, which the baseline does not get.
"""

import runpy
from pathlib import Path

_project = runpy.run_path(str(Path(__file__).resolve().parents[2] / "gunicorn.conf.py"))
globals().update({name: value for name, value in _project.items() if not name.startswith("__")})
globals().pop("post_worker_init", None)
