"""WSGI entry point for gunicorn: ``gunicorn -c gunicorn.conf.py vimeo_api.wsgi:app``."""

from . import create_app, signing

app = create_app(migrations=False)
# What must stop the server at start rather than fail its requests later: the signing
# keys (a missing installation key is made here, in STATE_DIR).
signing.init_keys(app)
