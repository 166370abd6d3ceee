"""Operator commands: ``python manage.py files|uploads|tokens|stats|cache|storage …``.

One click group per domain (Redash's layout). Listing commands take ``--json`` for
scripts (one JSON object per line); failures exit non-zero with a one-line message.
"""

from __future__ import annotations

import json
import sys

import click
from flask.cli import AppGroup, with_appcontext

from . import sweep

files_cli = AppGroup("files", help="Inspect and maintain stored files.")


def _echo_json(value) -> None:
    click.echo(json.dumps(value, sort_keys=False))


def _find_or_fail(filehash: str):
    from . import files

    file = files.find(filehash.strip().lower())
    if file is None:
        raise click.ClickException(f"no file with filehash {filehash}")
    return file


@files_cli.command("list")
@click.option(
    "--status", type=click.Choice(["available", "gone", "all"]), default="all", show_default=True,
    help="Which files to list.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per file.")
def list_files_command(status, as_json):
    """List files, oldest first (never their passwords or owner tokens)."""
    from . import inventory
    from .models import utcnow

    now = utcnow()
    count = 0
    for file in inventory.iter_files(status):
        row = inventory.describe_file(file, now)
        count += 1
        if as_json:
            _echo_json(row)
        else:
            state = row["status"] if row["status"] == "available" else f"gone({row['gone_reason'] or 'expired'})"
            limit = row["max_downloads"] or "∞"
            click.echo(
                f"{row['filehash']}\t{state}\t{row['size']}\t{row['downloads']}/{limit}\t"
                f"{row['expires_at'] or 'never'}\t{row['filename']}"
            )
    if not as_json:
        click.echo(f"{count} file(s)", err=True)


@files_cli.command("show")
@click.argument("filehash")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def show_file_command(filehash, as_json):
    """Show one file: options, counters, state, and whether its bytes are on disk."""
    from . import inventory, storage
    from .models import utcnow

    file = _find_or_fail(filehash)
    row = inventory.describe_file(file, utcnow())
    row["versions"] = inventory.published_versions(file)
    row["bytes_served"] = file.bytes_served
    row["stored"] = storage.current().exists(file.sha256)
    if as_json:
        _echo_json(row)
    else:
        for key, value in row.items():
            click.echo(f"{key}: {value}")


@files_cli.command("delete")
@click.argument("filehash")
def delete_file_command(filehash):
    """Delete a file: its URL answers 410 at once and its bytes go after the grace period."""
    from .models import GoneReason

    _make_gone(filehash, GoneReason.DELETED, "deleted")


@files_cli.command("expire")
@click.argument("filehash")
def expire_file_command(filehash):
    """Expire a file now, as if its expiry had passed."""
    from .models import GoneReason

    _make_gone(filehash, GoneReason.EXPIRED, "expired")


def _make_gone(filehash: str, reason: str, done: str) -> None:
    from . import files

    file = _find_or_fail(filehash)
    if not files.mark_gone(file.id, reason):
        raise click.ClickException(f"file {file.filehash} is already gone ({file.gone_reason or 'expired'})")
    click.echo(f"file {file.filehash} {done}")


@files_cli.command("verify")
@click.option("--repair", is_flag=True, help="Mark every file found missing or corrupt as gone.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object.")
def verify_files_command(repair, as_json):
    """Re-hash the stored bytes of every available file against its recorded SHA-256.

    Reports files whose bytes are missing, corrupt (another hash or size) or unreadable,
    and exits 1 when there are any. With --repair each of them is marked gone (deleted),
    its published versions are retired, and corrupt bytes are removed so that a later
    upload of the true content stores it afresh.
    """
    from . import inventory
    from .storage import current

    storage = current()
    total = inventory.count_available()
    if as_json:
        problems = inventory.verify_available(storage)
    else:
        # The bar goes to stderr: stdout stays the report.
        with click.progressbar(length=total, label="verifying", file=sys.stderr) as bar:
            problems = inventory.verify_available(storage, progress=bar.update)
    repaired = _repair(problems) if repair else []
    if as_json:
        _echo_json({
            "checked": total,
            "problems": [p.as_dict() for p in problems],
            "repaired": repaired,
        })
    else:
        for p in problems:
            click.echo(f"{p.problem}\t{p.filehash}\t{p.detail}")
        for filehash in repaired:
            click.echo(f"repaired\t{filehash}\tmarked gone")
        click.echo(f"{total} file(s) checked, {len(problems)} with missing or corrupt bytes", err=True)
    if problems:
        raise click.ClickException(
            f"{len(problems)} file(s) with missing or corrupt bytes"
            + (f"; {len(repaired)} marked gone" if repair else "; run with --repair to mark them gone")
        )


def _repair(problems) -> list[str]:
    """Mark the files gone and retire their versions; remove corrupt bytes. Returns the
    filehashes that this run made gone."""
    from . import files, storage, versions
    from .models import GoneReason

    repaired = []
    corrupt = set()
    for p in problems:
        file = files.find(p.filehash)
        if file is not None and files.mark_gone(file.id, GoneReason.DELETED):
            repaired.append(p.filehash)
        if file is not None:
            versions.retire_for_files([file.id])
        if p.problem == "corrupt":
            corrupt.add(p.sha256)
    store = storage.current()
    for sha256 in corrupt:
        # Left in place, the bad bytes would be kept by the next upload of the true
        # content (placing skips a hash that is already stored).
        store.delete(sha256)
    return repaired


def _sweep(batch_size, as_json) -> None:
    report = sweep.run(batch_size)
    if as_json:
        _echo_json(report.as_dict())
    else:
        click.echo(" ".join(f"{k}={v}" for k, v in report.counts().items()))
    if report.failed:
        raise click.ClickException(f"sweep step(s) failed: {', '.join(report.failed)} (the others ran; see the log)")


@files_cli.command("sweep")
@click.option("--batch-size", type=int, default=None, help="Rows per batch.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def sweep_command(batch_size, as_json):
    """Expire due files, release unused bytes, remove stale uploads and orphans."""
    _sweep(batch_size, as_json)


@files_cli.command("gc")
@click.option("--batch-size", type=int, default=None, help="Rows per batch.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def gc_command(batch_size, as_json):
    """Collect garbage now: the periodic sweep (expire, release, stale uploads, orphans)."""
    _sweep(batch_size, as_json)


# -- resumable uploads ----------------------------------------------------------------

uploads_cli = AppGroup("uploads", help="Unfinished resumable (tus) uploads.")


@uploads_cli.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per upload.")
def list_uploads_command(as_json):
    """List unfinished uploads, oldest first (never their passwords)."""
    from . import resumable

    uploads = resumable.unfinished()
    for upload in uploads:
        row = {
            "upload_id": upload.upload_id,
            "offset": upload.upload_offset,
            "length": upload.upload_length,
            "filename": upload.filename,
            "created_at": upload.created_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "expires_at": upload.expires_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
        if as_json:
            _echo_json(row)
        else:
            length = "?" if row["length"] is None else row["length"]
            click.echo(f"{row['upload_id']}\t{row['offset']}/{length}\t{row['expires_at']}\t{row['filename']}")
    if not as_json:
        click.echo(f"{len(uploads)} unfinished upload(s)", err=True)


@uploads_cli.command("abort")
@click.argument("upload_id")
def abort_upload_command(upload_id):
    """End an unfinished upload now: its bytes are removed and its URL answers 404."""
    from . import resumable

    try:
        if not resumable.abort(upload_id.strip().lower()):
            raise click.ClickException(f"no unfinished upload {upload_id}")
    except resumable.UploadBusy:
        raise click.ClickException(f"upload {upload_id} is receiving a chunk right now; try again") from None
    click.echo(f"upload {upload_id} aborted")


# -- tokens ---------------------------------------------------------------------------

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
    from .operator_tokens import create_token

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


# -- stats ----------------------------------------------------------------------------

@click.command("stats")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON (the body of GET /stats).")
@with_appcontext
def stats_command(as_json):
    """Files and bytes by status, downloads, bytes served, stored content (as GET /stats)."""
    from .inventory import collect_stats

    stats = collect_stats()
    if as_json:
        _echo_json(stats)
        return
    for label in ("available", "gone"):
        click.echo(f"files {label}: {stats['files'][label]['files']} ({stats['files'][label]['bytes']} bytes)")
    click.echo(f"downloads: {stats['downloads']}")
    click.echo(f"bytes served: {stats['bytes_served']}")
    click.echo(f"stored: {stats['stored']['blobs']} blob(s), {stats['stored']['bytes']} bytes")


# -- cache ----------------------------------------------------------------------------

cache_cli = AppGroup("cache", help="The metadata and error cache (Flask-Caching).")


@cache_cli.command("clear")
def clear_cache_command():
    """Drop everything cached: metadata, cached 4xx answers and the fast path's grants,
    so nginx asks the app again (never changes a file).

    The backend is emptied (with Redis, the keys under CACHE_KEY_PREFIX), then the
    global epoch is renewed: that is what reaches the in-process caches of the embedded
    default's workers, which this process cannot empty.
    """
    from . import purge

    try:
        backend = purge.clear_everything()
    except purge.ClearFailed as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"cache cleared ({backend})")


# -- storage --------------------------------------------------------------------------

storage_cli = AppGroup("storage", help="Where the bytes live.")


@storage_cli.command("migrate")
@click.option(
    "--from-dir", "from_dir", type=click.Path(file_okay=False), default=None,
    help="The local storage directory to copy from (default: STORAGE_DIR).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object.")
def migrate_storage_command(from_dir, as_json):
    """Copy every local blob into the bucket STORAGE_URL names, each verified by its
    SHA-256; blobs already there are skipped, so a stopped run resumes and a second run
    copies only what was uploaded meanwhile. Nothing local is changed. Exits 1 when a
    blob is missing or corrupt locally (README, "From local disk to a bucket")."""
    from flask import current_app

    from . import migration, storage

    store = storage.current()
    # During the switch the app reads through to local disk (STORAGE_LOCAL_FALLBACK):
    # the copy goes to the bucket behind it, never to the fallback.
    target = getattr(store, "primary", store)
    if isinstance(target, storage.LocalStorage):
        raise click.ClickException("STORAGE_URL names no bucket: there is nothing to migrate to")
    source = storage.LocalStorage(from_dir or current_app.config["STORAGE_DIR"])
    blobs, size = migration.totals()
    try:
        if as_json:
            report = migration.migrate(source, target)
        else:
            # The bar goes to stderr: stdout stays the summary.
            with click.progressbar(length=size, label=f"copying {blobs} blob(s)", file=sys.stderr,
                                   show_pos=True) as bar:
                report = migration.migrate(source, target, progress=bar.update)
    except storage.StorageUnavailable as exc:
        raise click.ClickException(f"the bucket stopped answering ({exc}); run again to resume") from None
    if as_json:
        _echo_json(report.as_dict())
    else:
        for sha256 in report.missing:
            click.echo(f"missing\t{sha256}\tnot in {source.root}")
        for sha256 in report.corrupt:
            click.echo(f"corrupt\t{sha256}\tlocal bytes do not hash to their name")
        click.echo(
            f"{report.blobs} blob(s): {report.copied} copied ({report.bytes_copied} bytes), "
            f"{report.already} already in the bucket, {report.problems} with problems", err=True,
        )
    if report.problems:
        raise click.ClickException(f"{report.problems} blob(s) could not be copied (missing or corrupt locally)")
