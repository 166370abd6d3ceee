#!/usr/bin/env python
"""Operator entry point: ``python manage.py db upgrade``, ``python manage.py files sweep``…"""

from flask.cli import FlaskGroup

from vimeo_api import create_app

cli = FlaskGroup(create_app=create_app, help="vimeo_api management commands.")

if __name__ == "__main__":
    cli()
