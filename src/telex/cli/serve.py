"""telex serve: the server, its console and its store."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import signal
import socket
import sqlite3
import ssl
import sys
from pathlib import Path
from typing import Any

import click

from .._version import __version__
from ..core.address import format_address
from ..core.limits import Limits
from ..security import (
    AuthError,
    Users,
    load_token,
    server_context,
)
from ..server import DEFAULT_PORT, TEXT_PAUSE, Server, default_handler
from ..server.cluster import DEFAULT_LEASE
from ..server.metrics import serve_metrics
from ..store import SYNC_LEVELS, StoreError
from ..tuning import retain_freed_memory
from .common import (
    EXIT_CONNECT,
    EXIT_USAGE,
    LOG_LEVELS,
    Address,
    Host,
    db_option,
    default_db,
    fail,
    json_option,
    limit_options,
    log_to_stderr,
    one_line_for_tls_errors,
    open_store_spec,
    run,
    stop_on_signals,
    store_name,
)
from .config import config_option
from .console import (
    MessagePrinter,
    Output,
    PeerEventPrinter,
    ServerConsole,
    now_iso,
    show_delivery,
)
from .log import DURATION

log = logging.getLogger("telex.serve")


@click.command()
@config_option
@click.option(
    "--host",
    type=Host(),
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on. One that is not loopback needs --tls and --token-file (or "
    "--users), or --insecure.",
)
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=DEFAULT_PORT,
    show_default=True,
    help="Port to listen on; 0 picks a free one (and prints it).",
)
@json_option
@click.option("--quiet", "-q", is_flag=True, help="Do not print each message.")
@click.option(
    "--text-pause",
    type=click.FloatRange(min=0, min_open=True),
    default=TEXT_PAUSE,
    show_default=True,
    help="Seconds after which a text peer's unfinished line is a message.",
)
@db_option
@click.option(
    "--sync",
    type=click.Choice(sorted(SYNC_LEVELS)),
    default="normal",
    show_default=True,
    help="normal: a stored message survives a crash of the server; full: a power loss too.",
)
@click.option(
    "--no-store",
    is_flag=True,
    help="Pure relaying: store nothing. An ack then means the handler ran, and no more: "
    "nothing survives a restart, resent messages are not recognised, and messages for "
    "clients that are away are refused.",
)
@click.option(
    "--keep",
    type=DURATION,
    help="Delete delivered messages older than DURATION (90s, 15m, 12h, 7d) as it runs, in "
    "small batches; messages waiting for a client stay. Make it longer than any client "
    "retries for: a message resent after it is pruned is stored again (docs/durability.md).",
)
@click.option(
    "--lease",
    type=DURATION,
    default=DEFAULT_LEASE,
    show_default="10s",
    help="With --db postgresql://, servers sharing the database are a cluster: a name is "
    "held once in all of it. A server that dies frees its clients' names after this long "
    "(the same session reconnecting elsewhere takes its name at once). docs/cluster.md.",
)
@click.option(
    "--tls",
    "tls_prefix",
    metavar="PREFIX",
    type=click.Path(dir_okay=False, path_type=Path),
    help="TLS with PREFIX.pem and PREFIX.key (as telex cert --out PREFIX writes them).",
)
@click.option("--cert", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--key", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--token-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Require this shared token (its first line; else TELEX_TOKEN). It never crosses "
    "the wire: clients answer a challenge with it.",
)
@click.option(
    "--users",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Only the names listed here may log in, each with its own token (telex user add, "
    "list, remove; changes hold from the next login). With --token-file too, other names "
    "log in with the shared token. Without either, names are first come, first served.",
)
@click.option(
    "--insecure",
    is_flag=True,
    help="Listen on an address that is not loopback without TLS or without a token: "
    "anyone who can reach it can read, or send and take names. Warns every time.",
)
@click.option(
    "--log-level",
    type=click.Choice(sorted(LOG_LEVELS, key=LOG_LEVELS.__getitem__), case_sensitive=False),
    default="warning",
    show_default=True,
    help="Log this and worse, on stderr (and in --log-file): info adds joins, leaves and "
    "the server starting and stopping.",
)
@click.option(
    "--log-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Log to this file too (appended; ISO times; reopened when logrotate moves it).",
)
@click.option(
    "--metrics",
    type=Address(),
    metavar="HOST:PORT",
    help="Serve Prometheus metrics at http://HOST:PORT/metrics (docs/operations.md).",
)
@limit_options
def serve(
    host: str,
    port: int,
    as_json: bool,
    quiet: bool,
    text_pause: float,
    db: Path | str | None,
    sync: str,
    no_store: bool,
    keep: float | None,
    lease: float,
    tls_prefix: Path | None,
    cert: Path | None,
    key: Path | None,
    token_file: Path | None,
    users: Path | None,
    insecure: bool,
    log_level: str,
    log_file: Path | None,
    metrics: tuple[str, int] | None,
    **limits: Any,
) -> None:
    """Accept connections and acknowledge every message.

    Every message is stored in a SQLite file (or, with --db postgresql://USER@HOST/DB,
    in PostgreSQL) before it is acknowledged, so that no acknowledged message is lost
    if the server crashes; messages for clients that are away wait there until they
    come back. Plain-text peers (netcat, telnet, socat) may
    connect too: each line they send is a message and gets one answer line. Ctrl-C (or
    SIGTERM) stops the server cleanly: it answers what already arrived and says goodbye
    to every client.

    Every option may also be set in a TOML file (--config FILE: port = 7777,
    max-message-size = 1048576, ...) or a TELEX_* variable (TELEX_PORT, ...): a flag wins
    over the file, the file over the variable. 'telex config show' prints what would be
    used and why; docs/operations.md has the details and a systemd unit.

    On an address that is not loopback (0.0.0.0, ::, a public one) the server needs
    --tls and --token-file (or --users), or --insecure to say that you mean it.

    \b
    Exit codes:
      0  stopped (Ctrl-C, SIGTERM or /quit); the last line counts what it did
      2  usage error; a config file, TELEX_* variable, log file, certificate, key,
         token or users file it cannot use; not loopback without TLS and a token
      3  cannot open the store (another server has it: named) or listen on the address
      130, 143  a second Ctrl-C or SIGTERM while stopping: stopped at once
    """
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    try:  # warning by default: joins and leaves are printed as events instead
        log_to_stderr(LOG_LEVELS[log_level.lower()], log_file)
    except OSError as exc:
        fail(f"cannot open the log file {log_file}: {exc.strerror or exc}", EXIT_USAGE)
    refuse_exposure(
        host,
        tls=tls_prefix is not None or cert is not None,
        token=token_file is not None or users is not None or load_token(None) is not None,
        insecure=insecure,
    )
    retain_freed_memory()
    out = Output(as_json)
    store = None
    if not no_store:
        spec = db or default_db()
        try:
            store = open_store_spec(spec, sync=sync)
        except (StoreError, sqlite3.Error, OSError) as exc:
            fail(f"cannot open the store {store_name(spec)}: {exc}", EXIT_CONNECT)
    if tls_prefix is not None:
        cert = cert or tls_prefix.with_name(tls_prefix.name + ".pem")
        key = key or tls_prefix.with_name(tls_prefix.name + ".key")
    if (cert is None) != (key is None):
        raise click.UsageError("--cert and --key go together")
    try:
        context = None if cert is None or key is None else load_certificate(cert, key)
        token = load_token(token_file)
        if users is not None and not users.is_file():
            raise AuthError(
                f"the users file {users} does not exist (telex user add NAME --users {users} "
                "makes it)"
            )
        user_file = None if users is None else Users(users)
    except AuthError as exc:
        fail(str(exc), EXIT_USAGE)
    server = Server(
        default_handler if quiet else MessagePrinter(out),
        host=host,
        port=port,
        limits=Limits(**limits),
        text_pause=text_pause,
        on_event=None if quiet else PeerEventPrinter(out),
        on_delivery=lambda seq, name, ack: show_delivery(out, name, seq, ack),
        store=store,
        ssl=context,
        token=token,
        users=user_file,
        keep=keep,
        lease=lease,
    )
    interactive = sys.stdin.isatty() and sys.stdout.isatty() and not as_json
    try:
        run(_serve(server, out, interactive, metrics))
    except OSError as exc:
        fail(
            f"cannot listen on {format_address((host, port))}: {exc.strerror or exc}", EXIT_CONNECT
        )
    finally:
        if store is not None:
            store.close()


def is_loopback(host: str) -> bool | None:
    """Whether listening on ``host`` reaches this machine only: 127.0.0.0/8, ::1,
    ``localhost``, or a name all of whose addresses are those. None if the name does not
    resolve (then listening fails, and says so)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.partition("%")[0]).is_loopback
    except ValueError:
        pass
    try:
        found = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (OSError, UnicodeError):
        return None
    addresses = {info[4][0] for info in found}
    return all(ipaddress.ip_address(str(a).partition("%")[0]).is_loopback for a in addresses)


def refuse_exposure(host: str, *, tls: bool, token: bool, insecure: bool) -> None:
    """Safe by default (as mosquitto 2): on an address other machines can reach, TLS and a
    token, or --insecure to say that one means it (then a warning, every time)."""
    if (tls and token) or is_loopback(host) is not False:
        return
    missing = [what for what, given in (("TLS", tls), ("a token", token)) if not given]
    flags = [
        flag for flag, given in (("--tls PREFIX", tls), ("--token-file FILE", token)) if not given
    ]
    if insecure:
        click.echo(
            f"telex: WARNING: --insecure: listening on {host}, which is not loopback, without "
            f"{' and without '.join(missing)}: "
            + ("anyone on the way can read and change every message" if not tls else "")
            + ("; " if not tls and not token else "")
            + ("anyone who can reach it can send, and take any name" if not token else ""),
            err=True,
        )
        return
    fail(
        f"refusing to listen on {host}, which is not loopback, without "
        f"{' and without '.join(missing)}: add {' and '.join(flags)}"
        + (" (or --users FILE)" if not token else "")
        + ", or --insecure if you mean it",
        EXIT_USAGE,
    )


def load_certificate(cert: Path, key: Path) -> ssl.SSLContext:
    """The TLS context, or an ``AuthError`` naming the file that cannot be used."""
    for path in (cert, key):
        if not path.is_file():
            raise AuthError(f"cannot load the certificate: no file {path} (telex cert makes one)")
    try:
        return server_context(cert, key)
    except (OSError, ssl.SSLError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or exc
        raise AuthError(
            f"cannot load the certificate {cert} with its key {key}: {reason}"
        ) from None


async def _serve(
    server: Server, out: Output, interactive: bool, metrics: tuple[str, int] | None = None
) -> None:
    stop = stop_on_signals()  # before the port is printed: a signal may follow at once
    asyncio.get_running_loop().set_exception_handler(one_line_for_tls_errors)
    await server.start()
    if metrics is not None:
        serve_metrics(server, *metrics)  # an OSError (port in use) ends the command
    where = None if server.store is None else str(server.store.where)
    secured = []
    if server.ssl is not None:
        secured.append("TLS")
    if server.auth_required:
        secured.append("a token required" if server.users is None else "tokens required")
    out.record("listening", time=now_iso(), version=__version__, host=server.host,
               port=server.port, address=format_address((server.host, server.port)),
               store=where, tls=server.ssl is not None, auth=server.auth_required)  # fmt: skip
    address = format_address((server.host, server.port))
    out.line(f"telex {__version__} listening on {address} (Ctrl-C to stop)")
    log.info("telex %s listening on %s, store %s", __version__, address, where or "none")
    out.line(f"messages stored in {where or 'nowhere (--no-store)'}", dim=True)
    if secured:
        out.line(" and ".join(secured), dim=True)
    if metrics is not None:
        out.line(f"metrics at http://{format_address(metrics)}/metrics", dim=True)
    console = asyncio.create_task(ServerConsole(server, out, stop).run(interactive))
    await stop.wait()
    log.info("stopping (%s)", signal.Signals(stop.signum).name if stop.signum else "/quit")
    console.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await console
    await server.close()
    log.info("stopped")
    stats = server.stats()
    out.record("stopped", time=now_iso(), **stats)
    out.line(
        f"stopped: {stats['accepted']} messages acknowledged, {stats['rejected']} rejected, "
        f"{stats['delivered']} delivered between clients, {stats['connections']} connections"
    )
