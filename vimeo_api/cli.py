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


tokens_cli = AppGroup("tokens", help="Operator bearer tokens with scopes.")


@tokens_cli.command("create")
@click.option("--name", required=True, help="Who or what the token is for.")
@click.option(
    "--scope", "scopes", multiple=True, required=True,
    type=click.Choice(["files:read", "files:write", "stats:read", "cache:purge"]),
    help="Repeat for several scopes.",
)
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def create_token_command(name, scopes, as_json):
    """Create a token; its secret is printed once and stored only as a hash."""
    from .operators import create_token

    token, secret = create_token(name, list(scopes))
    if as_json:
        click.echo(json.dumps({"id": token.id, "name": token.name, "scopes": token.scopes.split(), "token": secret}))
    else:
        click.echo(f"token {token.id} ({token.name}; {token.scopes}): {secret}")
        click.echo("Keep it now: it is not shown again.", err=True)


@tokens_cli.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON lines.")
def list_tokens_command(as_json):
    """List tokens (never their secrets)."""
    from sqlalchemy import select

    from .extensions import db
    from .models import ApiToken

    for token in db.session.execute(select(ApiToken).order_by(ApiToken.id)).scalars():
        state = "revoked" if token.revoked_at else "active"
        if as_json:
            click.echo(json.dumps({"id": token.id, "name": token.name, "scopes": token.scopes.split(), "state": state}))
        else:
            click.echo(f"{token.id}\t{token.name}\t{token.scopes}\t{state}")


@tokens_cli.command("revoke")
@click.argument("token_id", type=int)
def revoke_token_command(token_id):
    """Revoke a token by its id; requests with it get 401 from then on."""
    from .extensions import db
    from .models import ApiToken, utcnow

    token = db.session.get(ApiToken, token_id)
    if token is None:
        raise click.ClickException(f"no token with id {token_id}")
    token.revoked_at = token.revoked_at or utcnow()
    db.session.commit()
    click.echo(f"token {token_id} revoked")
