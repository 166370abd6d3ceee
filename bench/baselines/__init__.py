"""The minimal apps bench/suite.py measures the product against, behind the same nginx:
``flask_accel`` (the Python-path limit: Flask that only answers X-Accel-Redirect, under
the project's gunicorn configuration, ``gunicorn_conf``) and ``fastapi_file`` (a FastAPI
``FileResponse`` app under uvicorn, in the style of the seeds). bench/harness.py starts
them (``Baselines``)."""
