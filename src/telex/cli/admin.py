"""telex cert and telex user: certificates and the users file."""

from __future__ import annotations

import secrets
from pathlib import Path

import click

from ..core.protocol import valid_name
from ..security import (
    AuthError,
    Users,
    default_names,
    fingerprint,
    load_token,
    write_certificate,
)
from .common import (
    EXIT_USAGE,
    fail,
)

# -- cert and user ------------------------------------------------------------------------


@click.command()
@click.option(
    "--out",
    "prefix",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("telex"),
    show_default=True,
    help="Write PREFIX.pem (the certificate) and PREFIX.key (its key, owner-only).",
)
@click.option(
    "--name",
    "names",
    multiple=True,
    help="A host name or IP address it is for (repeat; default: this host's name, "
    "localhost, 127.0.0.1).",
)
@click.option("--days", type=click.IntRange(1), default=825, show_default=True)
@click.option(
    "--show",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Print the fingerprint of an existing certificate instead.",
)
def cert(prefix: Path, names: tuple[str, ...], days: int, show: Path | None) -> None:
    """Make a self-signed certificate for telex serve --tls, and print its fingerprint.

    Clients pin it with --fingerprint, so no certificate authority is needed.
    """
    if show is not None:
        try:
            click.echo(fingerprint(show.read_bytes()))
        except ValueError as exc:
            fail(f"{show} is not a PEM certificate: {exc}", EXIT_USAGE)
        return
    for existing in (
        prefix.with_name(prefix.name + ".pem"),
        prefix.with_name(prefix.name + ".key"),
    ):
        if existing.exists():
            fail(f"{existing} exists; remove it first, or choose another --out", EXIT_USAGE)
    try:
        found = write_certificate(prefix, list(names) or default_names(), days)
    except OSError as exc:
        fail(f"cannot write {prefix}.pem and {prefix}.key: {exc.strerror or exc}", EXIT_USAGE)
    click.echo(f"wrote {prefix}.pem and {prefix}.key", err=True)
    click.echo(found)


@click.group()
def user() -> None:
    """Manage the users file of telex serve --users."""


@user.command("add")
@click.argument("name")
@click.option(
    "--users",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="The users file (made if missing).",
)
@click.option(
    "--token-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Use the token in this file (else a new random token is made and printed once).",
)
@click.option("--force", is_flag=True, help="Give a name that is there already a new token.")
def user_add(name: str, users: Path, token_file: Path | None, force: bool) -> None:
    """Give NAME a token: only a client with it can hold the name."""
    if not valid_name(name):
        fail(f"{name!r} is not a name: 1 to 32 letters, digits, . _ -", EXIT_USAGE)
    try:
        token = load_token(token_file) if token_file is not None else None
        table = Users(users)
    except AuthError as exc:
        fail(str(exc), EXIT_USAGE)
    if table.get(name) is not None and not force:
        fail(f"{name} is in {users} already (--force gives it a new token)", EXIT_USAGE)
    made = token is None
    token = token or secrets.token_urlsafe(24)
    try:  # saved before it is shown: a token shown once must be one that works
        table.add(name, token)
    except OSError as exc:
        fail(f"cannot write {users}: {exc.strerror or exc}", EXIT_USAGE)
    if made:
        click.echo(token)
        click.echo(
            f"telex: {name}'s token, shown once: keep it in a file for --token-file", err=True
        )
    click.echo(f"telex: {name} added to {users}", err=True)
