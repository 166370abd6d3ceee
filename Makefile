# The two commands: `make run` (the API on the embedded default, http://127.0.0.1:8000)
# and `make test` (every test, against real PostgreSQL, Redis, nginx and Celery).
# `make stack` runs the production shape locally: nginx on http://127.0.0.1:8080 in
# front of gunicorn, a Celery worker and beat, on the running PostgreSQL and Redis.
# `make cluster` runs several nodes on one S3 bucket: a load balancer on :8080 in front
# of two nodes (nginx on :8081 and :8082, each with its own gunicorn), Celery worker and
# beat, and a local S3 server (rclone) on :9000.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat requirements.txt requirements-dev.txt | sha1sum | cut -c1-12)

.PHONY: run test venv services nginx test-tools stack cluster migrate clean bench bench-quick bench-downloads bench-upload-offload bench-upload-memory bench-workers bench-s3-upload

venv: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	rm -f $(VENV)/.installed-* && touch $@

migrate: venv
	$(BIN)/python manage.py db upgrade

run: venv migrate
	$(BIN)/gunicorn -c gunicorn.conf.py vimeo_api.wsgi:app

services:
	bash scripts/ensure-services

# nginx is a real component of the tests and the stack: installed when missing, never skipped.
nginx:
	bash scripts/install-nginx

stack: venv services nginx
	$(BIN)/python -m deploy.stack

cluster: venv services nginx
	$(BIN)/python -m deploy.cluster


# What the tests drive as a person would, and their other real components: curl and wget
# (cut off and resumed downloads; https with --cacert), Debian's Chromium and its driver
# (the landing page), Varnish (the edge cache in front of the stack), openssl (a CA of the
# TLS tests' own). Installed when missing, never skipped.
test-tools:
	bash scripts/install-nginx curl wget chromium chromium-driver:chromedriver varnish:varnishd openssl

test: venv services nginx test-tools
	$(BIN)/python -m pytest

# Every benchmark scenario in one run, each against the baselines of the same run (raw
# nginx with and without an access log, bench/baselines/' minimal Flask and FastAPI apps);
# writes PERFORMANCE.md (between its bench:suite markers) and bench/suite.png. About 10 minutes.
bench: venv services nginx
	bash scripts/install-nginx wrk
	$(BIN)/python bench/suite.py

# The same, short (2 s per scenario, 64 MiB, a 10,000-file sweep): checks the harness,
# prints its table and writes nothing.
bench-quick: venv services nginx
	bash scripts/install-nginx wrk
	$(BIN)/python bench/suite.py --quick

# gunicorn worker class and count for the requests that reach the app (wrk, 4 configurations).
bench-workers: venv services nginx
	bash scripts/install-nginx wrk
	$(BIN)/python bench/workers.py

# A 1 GiB upload on the embedded default (SQLite, the app writes the bytes), against dd.
bench-upload-memory: venv services
	$(BIN)/python bench/upload_memory.py

# Downloads on loopback with wrk: raw nginx static, the stack's X-Accel, the app itself.
bench-downloads: venv services
	bash scripts/install-nginx wrk
	$(BIN)/python bench/downloads.py

# A 1 GiB raw upload through nginx into an S3 bucket (rclone), against dd, with the
# gunicorn worker's peak RSS (bench/s3.py; the suite's S3 upload row alone).
bench-s3-upload: venv services nginx
	$(BIN)/python -m bench.s3

# A 1 GiB raw upload through nginx with the body offload, against dd.
bench-upload-offload: venv services nginx
	$(BIN)/python bench/upload_offload.py

clean:
	rm -rf $(VENV) instance .pytest_cache
