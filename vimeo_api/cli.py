"""Operator commands under ``python manage.py files …``."""

from __future__ import annotations

import json

import click
from flask.cli import AppGroup

from . import sweep

files_cli = AppGroup("files", help="Inspect and maintain stored files.")


@files_cli.command("sweep")
@click.option("--batch-size", type=int, default=None, help="Rows per batch.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def sweep_command(batch_size, as_json):
    """Expire due files, release unused bytes, remove stale uploads and orphans."""
    report = sweep.run(batch_size).as_dict()
    if as_json:
        click.echo(json.dumps(report))
    else:
        click.echo(" ".join(f"{k}={v}" for k, v in report.items()))
