# The two commands: `make run` (the API on the embedded default, http://127.0.0.1:8000)
# and `make test` (every test, against real PostgreSQL, Redis, nginx and Celery).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat requirements.txt requirements-dev.txt | sha1sum | cut -c1-12)

.PHONY: run test venv services migrate clean bench

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

test: venv services
	$(BIN)/python -m pytest

bench: venv services
	$(BIN)/python bench/upload_memory.py

clean:
	rm -rf $(VENV) instance .pytest_cache
