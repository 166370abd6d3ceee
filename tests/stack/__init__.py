"""End-to-end tests through real nginx in front of real gunicorn (see harness.py)."""
