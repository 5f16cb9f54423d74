"""telex cert and telex user: certificates and the users file."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from ..core.broker import RESERVED_NAMES
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
    is_host,
)

F = TypeVar("F", bound=Callable[..., Any])

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

    Exit codes: 0 written (or shown); 2 usage error, a name a certificate cannot hold,
    a file that exists already or cannot be written, or --show of a file that is not a
    certificate.
    """
    if show is not None:
        from cryptography import x509  # here: every telex command would pay for it

        data = show.read_bytes()
        try:  # parsed, not just hashed: any bytes have a digest
            if b"-----BEGIN" in data:
                x509.load_pem_x509_certificate(data)
            else:
                x509.load_der_x509_certificate(data)
        except ValueError:
            fail(f"{show} is not a certificate (PEM or DER)", EXIT_USAGE)
        click.echo(fingerprint(data))
        return
    for name in names:
        if not name or len(name) > 253 or not is_host(name):
            fail(f"--name {name!r} is not a host name or IP address", EXIT_USAGE)
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
    except (ValueError, UnicodeError) as exc:  # a name the certificate cannot hold
        fail(f"cannot make a certificate for {', '.join(names)}: {exc}", EXIT_USAGE)
    click.echo(f"wrote {prefix}.pem and {prefix}.key", err=True)
    click.echo(found)


@click.group()
def user() -> None:
    """Manage the users file of telex serve --users.

    Exit codes: 0 done; 2 usage error, a users file that cannot be read or written, a
    name that is there already (add, without --force) or not there (remove).
    """


def users_option(help: str) -> Callable[[F], F]:
    return click.option(
        "--users",
        type=click.Path(dir_okay=False, path_type=Path),
        required=True,
        help=help,
    )


def open_users(path: Path, *, must_exist: bool) -> Users:
    if must_exist and not path.is_file():
        fail(f"no users file at {path} (telex user add NAME --users {path} makes one)", EXIT_USAGE)
    try:
        return Users(path)
    except (AuthError, OSError, UnicodeDecodeError) as exc:
        fail(f"cannot read the users file {path}: {exc}", EXIT_USAGE)
    raise AssertionError  # fail() exits


@user.command("add")
@click.argument("name")
@users_option("The users file (made if missing).")
@click.option(
    "--token-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Use the token in this file (else a new random token is made and printed once).",
)
@click.option("--force", is_flag=True, help="Give a name that is there already a new token.")
def user_add(name: str, users: Path, token_file: Path | None, force: bool) -> None:
    """Give NAME a token: only a client with it can hold the name.

    Exit codes: 0 added; 2 usage error, NAME there already (without --force), or a
    users or token file that cannot be read or written.
    """
    if not valid_name(name):
        fail(f"{name!r} is not a name: 1 to 32 letters, digits, . _ -", EXIT_USAGE)
    if name.lower() in RESERVED_NAMES:
        fail(f"{name!r} is reserved (server, you and everyone are)", EXIT_USAGE)
    try:
        token = load_token(token_file) if token_file is not None else None
    except AuthError as exc:
        fail(str(exc), EXIT_USAGE)
    table = open_users(users, must_exist=False)
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


@user.command("list")
@users_option("The users file.")
def user_list(users: Path) -> None:
    """Print the names in the users file, one a line.

    Exit codes: 0 listed; 2 usage error, or no users file or one that cannot be read.
    """
    for name in open_users(users, must_exist=True).names():
        click.echo(name)


@user.command("remove")
@click.argument("name")
@users_option("The users file.")
def user_remove(name: str, users: Path) -> None:
    """Take NAME out of the users file: a running server refuses its token from the next
    login on (connections already open stay).

    Exit codes: 0 removed; 2 usage error, NAME not in the file, or a users file that
    cannot be read or written.
    """
    table = open_users(users, must_exist=True)
    try:
        removed = table.remove(name)
    except OSError as exc:
        fail(f"cannot write {users}: {exc.strerror or exc}", EXIT_USAGE)
    if not removed:
        fail(f"{name} is not in {users}", EXIT_USAGE)
    click.echo(f"telex: {name} removed from {users}", err=True)
