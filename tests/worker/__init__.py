"""Tests with real Celery workers, Redis and PostgreSQL processes."""
