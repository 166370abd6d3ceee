"""End-to-end tests through real nginx in front of real gunicorn (support/stacks.py starts them)."""
