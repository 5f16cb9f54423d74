"""The ``telex`` command: serve, send, chat, listen, log, demo.

Exit codes of ``telex send``: 0 every message acknowledged; 1 some were rejected;
2 usage error; 3 cannot connect; 4 the connection failed after it was up (lost,
timed out, or a protocol error) with messages unacknowledged.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import secrets
import signal
import sqlite3
import ssl
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar, cast

import click
import platformdirs

from ._version import __version__
from .client import AsyncClient
from .console import (
    ChatSession,
    MessagePrinter,
    Output,
    PeerEventPrinter,
    ServerConsole,
    StderrHandler,
    read_lines,
    show_message,
)
from .events import Ack, Body, Message
from .exceptions import (
    AuthenticationFailed,
    CertificateRejected,
    ConnectError,
    ConnectionClosed,
    TelexError,
)
from .limits import Limits
from .protocol import valid_name
from .render import body_fields, printable
from .security import (
    AuthError,
    KnownHosts,
    Users,
    client_context,
    default_names,
    fingerprint,
    load_token,
    normal_fingerprint,
    server_context,
    write_certificate,
)
from .server import DEFAULT_PORT, TEXT_PAUSE, Peer, Server, default_handler, format_address
from .store import SYNC_LEVELS, Record, Store, StoreError
from .textclient import TextClient
from .tuning import retain_freed_memory

__all__ = ["main"]

EXIT_OK, EXIT_REJECTED, EXIT_USAGE, EXIT_CONNECT, EXIT_LOST = 0, 1, 2, 3, 4
EXIT_CERTIFICATE, EXIT_AUTH = 5, 6

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run on uvloop when it is installed, else on asyncio's own loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coroutine)


def fail(message: str, code: int) -> None:
    click.echo(f"telex: {message}", err=True)
    sys.exit(code)


def parse_address(value: str) -> tuple[str, int]:
    """``HOST:PORT``, ``[IPv6]:PORT`` or a bare ``PORT`` (on 127.0.0.1)."""
    host, sep, port = value.rpartition(":")
    if not sep:
        host, port = "127.0.0.1", value
    host = host.removeprefix("[").removesuffix("]") or "127.0.0.1"
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise click.BadParameter(f"{value!r} is not HOST:PORT (a port is 1 to 65535)")
    return host, int(port)


class Address(click.ParamType):  # type: ignore[type-arg]
    name = "HOST:PORT"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, tuple):
            return value
        try:
            return parse_address(str(value))
        except click.BadParameter as exc:
            self.fail(exc.message, param, ctx)


def default_db() -> Path:
    """telex.db in the user's data directory, so telex log finds it from anywhere."""
    return Path(platformdirs.user_data_dir("telex")) / "telex.db"


json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON object a line.")
timeout_option = click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=30.0,
    show_default=True,
    help="Seconds to wait for an acknowledgment.",
)
connect_timeout_option = click.option(
    "--connect-timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=10.0,
    show_default=True,
    help="Seconds to wait for the connection and handshake.",
)
db_option = click.option(
    "--db",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help=f"The message store (default: {default_db()}).",
)


def security_options(function: F) -> F:
    """--tls, --fingerprint, --cafile, --insecure, --token-file, gathered into ``security``."""

    @functools.wraps(function)
    def wrapper(
        *args: Any,
        tls: bool,
        fingerprint: str | None,
        cafile: Path | None,
        insecure: bool,
        token_file: Path | None,
        **kwargs: Any,
    ) -> Any:
        kwargs["security"] = Security(tls, fingerprint, cafile, insecure, token_file)
        return function(*args, **kwargs)

    options = [
        click.option("--tls", is_flag=True, help="Connect over TLS (1.2 or newer)."),
        click.option(
            "--fingerprint",
            metavar="SHA256:…",
            help="Trust only the server certificate with this fingerprint (telex cert prints "
            "it); implies --tls.",
        ),
        click.option(
            "--cafile",
            type=click.Path(exists=True, dir_okay=False, path_type=Path),
            help="Verify the server against this CA (or self-signed) certificate; implies --tls.",
        ),
        click.option(
            "--insecure",
            is_flag=True,
            help="TLS without verifying the server at all: anyone between can read and change "
            "everything. Implies --tls; warns every time.",
        ),
        click.option(
            "--token-file",
            type=click.Path(dir_okay=False, path_type=Path),
            help="The token, if the server needs one (else TELEX_TOKEN; never an argument).",
        ),
    ]
    for option in reversed(options):
        wrapper = option(wrapper)
    return cast(F, wrapper)


class Security:
    """What a client command was told about TLS and the token."""

    def __init__(
        self,
        tls: bool,
        fingerprint: str | None,
        cafile: Path | None,
        insecure: bool,
        token_file: Path | None,
    ) -> None:
        self.tls = tls or bool(fingerprint or cafile or insecure)
        self.fingerprint = fingerprint
        self.cafile = cafile
        self.insecure = insecure
        self.token_file = token_file

    def client_options(self, host: str, port: int, *, interactive: bool) -> dict[str, Any]:
        """AsyncClient's keyword arguments for this: TLS, pin, known hosts, token."""
        try:
            options: dict[str, Any] = {"token": load_token(self.token_file)}
        except AuthError as exc:
            fail(str(exc), EXIT_USAGE)
        if not self.tls:
            return options
        if self.fingerprint is not None:
            try:
                normal_fingerprint(self.fingerprint)
            except ValueError as exc:
                fail(str(exc), EXIT_USAGE)
            options.update(ssl=client_context(verify=False), fingerprint=self.fingerprint)
        elif self.insecure:
            click.echo(
                "telex: WARNING: --insecure: the server is not verified; anyone on the way "
                "can read and change this connection",
                err=True,
            )
            options.update(ssl=client_context(verify=False))
        elif self.cafile is not None:
            options.update(ssl=client_context(cafile=self.cafile))
        else:
            known = KnownHosts(Path(platformdirs.user_config_dir("telex")) / "known_hosts")
            if interactive or known.get(f"{host}:{port}") is not None:
                options.update(
                    ssl=client_context(verify=False),
                    known_hosts=known,
                    trust=ask_trust(f"{host}:{port}") if interactive else None,
                )
            else:
                options.update(ssl=client_context())  # the system's trust store
        return options


def ask_trust(address: str) -> Callable[[str], bool]:
    def ask(found: str) -> bool:
        click.echo(f"The server {address} presents a certificate with the fingerprint\n  {found}")
        return click.confirm("Do you trust it (and remember it)?", default=False, err=True)

    return ask


@contextlib.contextmanager
def client_errors() -> Iterator[None]:
    """The ways a client command cannot start, each as one line and its exit code."""
    try:
        yield
    except CertificateRejected as exc:
        fail(f"certificate refused: {exc}", EXIT_CERTIFICATE)
    except AuthenticationFailed as exc:
        fail(f"authentication failed: {exc}", EXIT_AUTH)
    except ConnectError as exc:
        fail(f"cannot connect: {exc}", EXIT_CONNECT)


def retries_option(default: int) -> Callable[[F], F]:
    return click.option(
        "--retries",
        type=click.IntRange(0),
        default=default,
        show_default=True,
        help="Reconnect attempts when a connection that was up drops (0: none).",
    )


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="telex")
def main() -> None:
    """Send messages between machines over TCP; every message is acknowledged.

    Start a server with 'telex serve', send to it with 'telex send', or watch both
    sides at once with 'telex demo'.
    """


# -- serve -------------------------------------------------------------------------------


def limit_options(function: Any) -> Any:
    defaults = Limits()
    options = [
        click.option(
            "--max-message-size",
            type=click.IntRange(1),
            show_default=True,
            default=defaults.max_message_size,
            help="Largest message in bytes.",
        ),
        click.option(
            "--handshake-timeout",
            type=click.FloatRange(min=0, min_open=True),
            default=defaults.handshake_timeout,
            show_default=True,
            help="Seconds a new connection has to finish its handshake.",
        ),
        click.option(
            "--idle-timeout",
            type=click.FloatRange(min=0, min_open=True),
            default=defaults.idle_timeout,
            show_default=True,
            help="Seconds of silence before a connection is closed (pings in between).",
        ),
        click.option(
            "--max-connections",
            type=click.IntRange(1),
            show_default=True,
            default=defaults.max_connections,
            help="Connections at once.",
        ),
        click.option(
            "--max-connections-per-address",
            type=click.IntRange(1),
            default=defaults.max_connections_per_address,
            show_default=True,
            help="Connections at once from one address.",
        ),
        click.option(
            "--write-buffer-limit",
            type=click.IntRange(1),
            show_default=True,
            default=defaults.write_buffer_limit,
            help="Bytes queued for a slow reader before its sender is no longer read.",
        ),
    ]
    for option in reversed(options):
        function = option(function)
    return function


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
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
    help="Names that belong to someone: a client holds a listed name only with that name's "
    "token (telex user add). Without it, names are first come, first served.",
)
@limit_options
def serve(
    host: str,
    port: int,
    as_json: bool,
    quiet: bool,
    text_pause: float,
    db: Path | None,
    sync: str,
    no_store: bool,
    tls_prefix: Path | None,
    cert: Path | None,
    key: Path | None,
    token_file: Path | None,
    users: Path | None,
    **limits: Any,
) -> None:
    """Accept connections and acknowledge every message.

    Every message is stored in a SQLite file before it is acknowledged, so that no
    acknowledged message is lost if the server crashes; messages for clients that are
    away wait there until they come back. Plain-text peers (netcat, telnet, socat) may
    connect too: each line they send is a message and gets one answer line. Ctrl-C (or
    SIGTERM) stops the server cleanly: it answers what already arrived and says goodbye
    to every client.
    """
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    log_to_stderr(logging.WARNING)  # joins and leaves are printed as events instead
    retain_freed_memory()
    out = Output(as_json)
    store = None
    if not no_store:
        path = db or default_db()
        try:
            store = Store(path, sync=sync)
        except (StoreError, sqlite3.Error, OSError) as exc:
            fail(f"cannot open the store {path}: {exc}", EXIT_CONNECT)
    if tls_prefix is not None:
        cert = cert or tls_prefix.with_name(tls_prefix.name + ".pem")
        key = key or tls_prefix.with_name(tls_prefix.name + ".key")
    if (cert is None) != (key is None):
        raise click.UsageError("--cert and --key go together")
    try:
        context = None if cert is None or key is None else server_context(cert, key)
        token = load_token(token_file)
        user_file = None if users is None else Users(users)
    except (OSError, ssl.SSLError) as exc:
        fail(f"cannot load the certificate: {exc}", EXIT_USAGE)
    except AuthError as exc:
        fail(str(exc), EXIT_USAGE)
    server = Server(
        default_handler if quiet else MessagePrinter(out),
        host=host,
        port=port,
        limits=Limits(**limits),
        text_pause=text_pause,
        on_event=None if quiet else PeerEventPrinter(out),
        store=store,
        ssl=context,
        token=token,
        users=user_file,
    )
    interactive = sys.stdin.isatty() and sys.stdout.isatty() and not as_json
    try:
        run(_serve(server, out, interactive))
    except OSError as exc:
        fail(f"cannot listen on {host}:{port}: {exc.strerror or exc}", EXIT_CONNECT)
    finally:
        if store is not None:
            store.close()


def one_line_for_tls_errors(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """A peer that fails the TLS handshake (plain TCP to a TLS port, a silent one) is one
    log line, not a traceback."""
    error = context.get("exception")
    if isinstance(error, ssl.SSLError | ConnectionResetError | TimeoutError):
        peer = context.get("transport")
        where = peer.get_extra_info("peername") if peer is not None else None
        logging.getLogger("telex.server").warning(
            "%s: TLS handshake failed: %s",
            format_address(where),
            getattr(error, "reason", None) or error,
        )
        return
    loop.default_exception_handler(context)


def stop_on_signals() -> asyncio.Event:
    """An event set by SIGINT or SIGTERM, so either ends the command cleanly."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    return stop


def log_to_stderr(level: int) -> None:
    handler = StderrHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", datefmt="%H:%M:%S"))
    logging.basicConfig(level=level, handlers=[handler])


async def _serve(server: Server, out: Output, interactive: bool) -> None:
    stop = stop_on_signals()  # before the port is printed: a signal may follow at once
    asyncio.get_running_loop().set_exception_handler(one_line_for_tls_errors)
    await server.start()
    where = "nowhere (--no-store)" if server.store is None else str(server.store.path)
    secured = []
    if server.ssl is not None:
        secured.append("TLS")
    if server.auth_required:
        secured.append("a token required" if server.users is None else "tokens required")
    out.record("listening", host=server.host, port=server.port, store=where)
    out.line(f"telex {__version__} listening on {server.host}:{server.port} (Ctrl-C to stop)")
    out.line(f"messages stored in {where}", dim=True)
    if secured:
        out.line(" and ".join(secured), dim=True)
    console = asyncio.create_task(ServerConsole(server, out, stop).run(interactive))
    await stop.wait()
    console.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await console
    await server.close()
    stats = server.stats()
    out.record("stopped", **stats)
    out.line(
        f"stopped: {stats['accepted']} messages acknowledged, {stats['rejected']} rejected, "
        f"{stats['delivered']} delivered between clients, {stats['connections']} connections"
    )


# -- send --------------------------------------------------------------------------------


async def _given(messages: tuple[str, ...]) -> AsyncIterator[Body]:
    for message in messages:
        yield message


class AckPrinter:
    """Prints each acknowledgment as it arrives; counts rejections."""

    def __init__(self, out: Output, each: bool, to: str | None, progress: Any = None) -> None:
        self.as_json = out.as_json
        self.style = out.style
        self.each = each
        self.to = to
        self.progress = progress
        self.sizes: dict[int, int] = {}  # bytes of each message in flight, by id
        self.acked = 0
        self.rejected = 0
        self.out = sys.stdout

    def __call__(self, ack: Ack) -> None:
        size = self.sizes.pop(ack.id, 0)
        self.acked += 1
        if self.progress is not None:
            self.progress.advance(0)
        if not ack.ok:
            self.rejected += 1
        elif not self.each:
            return
        try:
            self.out.write(self.line(ack, size))
        except BrokenPipeError:  # the reader went away (| head): keep sending, stop printing
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            self.each = False

    def line(self, ack: Ack, size: int) -> str:
        if self.as_json:
            record: dict[str, Any] = {"id": ack.id, "status": "ok" if ack.ok else "rejected"}
            if self.to is not None:
                record["to"] = self.to
            if ack.ok:
                record.update(body_fields(ack.reply, "reply"), bytes=size)
                if ack.reason:
                    record["note"] = ack.reason
            else:
                record.update(code=ack.status, reason=ack.reason)
            return json.dumps(record) + "\n"
        if not ack.ok:
            return self.style(f"rejected {ack.id}: {ack.reason}", fg="red") + "\n"
        if self.to is None:
            return f"ack {ack.id}: {printable(ack.reply)} ({size} bytes)\n"
        reply = f": {printable(ack.reply)}" if ack.reply else ""
        what = ack.reason or f"delivered to {self.to}"  # a server with a store says "stored"
        return f"ack {ack.id}: {what}{reply} ({size} bytes)\n"


@main.command()
@click.argument("address", type=Address())
@click.argument("messages", nargs=-1)
@json_option
@click.option(
    "--text",
    "text_mode",
    is_flag=True,
    help="Talk to a plain line-based server (nc -l): each answer line is the ack.",
)
@click.option("--name", help="The name this client gives in the handshake.")
@click.option(
    "--to",
    metavar="NAME",
    help="Send to the client NAME through the server; its own ack is the answer.",
)
@click.option(
    "--window",
    type=click.IntRange(1),
    default=1000,
    show_default=True,
    help="Messages in flight before waiting for acknowledgments.",
)
@timeout_option
@connect_timeout_option
@retries_option(10)
@security_options
def send(
    address: tuple[str, int],
    messages: tuple[str, ...],
    as_json: bool,
    text_mode: bool,
    name: str | None,
    to: str | None,
    window: int,
    timeout: float,
    connect_timeout: float,
    retries: int,
    security: Security,
) -> None:
    """Send each MESSAGE and print its acknowledgment.

    With '-' as the message, or no message and a pipe on stdin, every line of stdin is
    a message: they are sent pipelined, and telex exits once all are acknowledged.

    \b
    Exit codes:
      0  every message acknowledged
      1  some messages rejected
      2  usage error
      3  cannot connect
      4  connection lost, timed out or broken, with messages unacknowledged
      5  the server's TLS certificate was refused
      6  the server refused the token
    """
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]  # acks as they come
    from_stdin = messages == ("-",) or (not messages and not sys.stdin.isatty())
    if not messages and not from_stdin:
        raise click.UsageError("give a MESSAGE, or '-' to send each line of stdin")
    host, port = address
    try:
        if text_mode:
            code = run(
                _send_text(host, port, messages, from_stdin, as_json, timeout, connect_timeout)
            )
        else:
            client = AsyncClient(
                host,
                port,
                name=name,
                timeout=timeout,
                connect_timeout=connect_timeout,
                reconnect=retries > 0,
                retries=retries,
                **security.client_options(host, port, interactive=False),
            )
            with client_errors():
                code = run(_send(client, messages, from_stdin, Output(as_json), to, window))
    except ConnectError as exc:
        fail(f"cannot connect: {exc}", EXIT_CONNECT)
    except ConnectionClosed as exc:
        fail(f"{exc.reason}: {exc.unacknowledged} messages unacknowledged", EXIT_LOST)
    except TelexError as exc:
        fail(str(exc), EXIT_LOST)
    except KeyboardInterrupt:
        fail("interrupted", EXIT_LOST)
    sys.exit(code)


async def _send(
    client: AsyncClient,
    messages: tuple[str, ...],
    from_stdin: bool,
    out: Output,
    to: str | None,
    window: int,
) -> int:
    await client.connect()
    show_progress = from_stdin and sys.stderr.isatty()
    each = not (show_progress and sys.stdout.isatty())  # a bar on a terminal replaces the lines
    with contextlib.ExitStack() as stack:
        progress = None
        if show_progress:
            from rich.console import Console
            from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

            progress = Progress(
                SpinnerColumn(),
                TextColumn("{task.completed} acknowledged"),
                TimeElapsedColumn(),
                console=Console(stderr=True),
                transient=True,
            )
            stack.enter_context(progress)
            progress.add_task("send", total=None)
        printer = AckPrinter(out, each, to, progress)
        source = read_lines() if from_stdin else _given(messages)

        async def sized() -> AsyncIterator[Body]:
            async for body in source:
                size = len(body.encode() if isinstance(body, str) else body)
                printer.sizes[client.next_id] = size
                yield body

        try:
            await client.send_many(sized(), window=window, on_ack=printer, to=to)
        except ConnectionClosed as exc:  # count what was read but never acknowledged
            raise ConnectionClosed(exc.reason, len(printer.sizes)) from exc
        finally:
            sys.stdout.flush()
            await client.close()
    if not each:
        click.echo(f"{printer.acked} messages acknowledged, {printer.rejected} rejected", err=True)
    return EXIT_REJECTED if printer.rejected else EXIT_OK


async def _send_text(
    host: str,
    port: int,
    messages: tuple[str, ...],
    from_stdin: bool,
    as_json: bool,
    timeout: float,
    connect_timeout: float,
) -> int:
    source = read_lines() if from_stdin else _given(messages)
    async with TextClient(host, port, timeout=timeout, connect_timeout=connect_timeout) as client:
        number = 0
        async for body in source:
            number += 1
            answer = await client.send(body)
            if as_json:
                print(json.dumps({"id": number, **body_fields(answer, "answer")}), flush=True)
            else:
                print(f"answer {number}: {printable(answer)}", flush=True)
    return EXIT_OK


# -- chat and listen ---------------------------------------------------------------------


@main.command()
@click.argument("address", type=Address())
@click.option("--name", help="Your name on the server (default: one it makes up).")
@json_option
@timeout_option
@connect_timeout_option
@retries_option(30)
@security_options
def chat(
    address: tuple[str, int],
    name: str | None,
    as_json: bool,
    timeout: float,
    connect_timeout: float,
    retries: int,
    security: Security,
) -> None:
    """Talk with the server and, through it, other clients.

    Type a line to send it to the server, '@NAME text' to send it to another client.
    Each message is marked once it is acknowledged; what arrives shows above the
    prompt. When the connection drops, the status line says so and telex reconnects.
    Ctrl-D or /quit leaves. Without a terminal, each stdin line is sent.

    With --tls and neither --fingerprint nor --cafile, the first contact shows the
    server's fingerprint and asks; the answer is remembered (as ssh's known_hosts), and a
    remembered fingerprint that changes is refused.

    Exit codes: 0 left normally; 3 cannot connect; 4 gave up reconnecting; 5 the
    certificate was refused; 6 the token was refused.
    """
    log_to_stderr(logging.WARNING)
    host, port = address
    out = Output(as_json)
    interactive = sys.stdin.isatty() and sys.stdout.isatty() and not as_json
    session = ChatSession(
        host,
        port,
        out,
        name=name,
        timeout=timeout,
        connect_timeout=connect_timeout,
        retries=retries,
        **security.client_options(host, port, interactive=interactive),
    )
    try:
        with client_errors():
            code = run(session.run(interactive))
    except KeyboardInterrupt:
        code = EXIT_OK
    sys.exit(code)


@main.command()
@click.argument("address", type=Address())
@click.option("--name", help="Your name on the server (default: one it makes up).")
@json_option
@connect_timeout_option
@retries_option(10)
@security_options
def listen(
    address: tuple[str, int],
    name: str | None,
    as_json: bool,
    connect_timeout: float,
    retries: int,
    security: Security,
) -> None:
    """Print every message that arrives, and acknowledge each once it is printed.

    Runs until the server says goodbye or Ctrl-C (or SIGTERM). A connection that drops
    is reconnected (--retries times at most).

    Exit codes: 0 the server said goodbye, or stopped by a signal; 3 cannot connect;
    4 the connection was lost and could not be made again; 5 the certificate was refused;
    6 the token was refused.
    """
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    log_to_stderr(logging.WARNING)
    host, port = address
    options = security.client_options(host, port, interactive=False)
    with client_errors():
        code = run(_listen(host, port, name, Output(as_json), connect_timeout, retries, options))
    sys.exit(code)


async def _listen(
    host: str,
    port: int,
    name: str | None,
    out: Output,
    connect_timeout: float,
    retries: int,
    options: dict[str, Any],
) -> int:
    client = AsyncClient(
        host,
        port,
        name=name,
        connect_timeout=connect_timeout,
        handler=lambda message: show_message(out, message),
        reconnect=retries > 0,
        retries=retries,
        stay_after_goodbye=False,
        on_state=lambda state: click.echo(f"telex: {state}", err=True),
        **options,
    )
    stop = stop_on_signals()
    await client.connect()
    click.echo(f"telex: listening as {client.name} on {host}:{port}", err=True)
    stopped = asyncio.create_task(stop.wait())
    closed = asyncio.create_task(client.wait_closed())
    await asyncio.wait([stopped, closed], return_when=asyncio.FIRST_COMPLETED)
    stopped.cancel()
    if stop.is_set():
        await client.close()
        return EXIT_OK
    if client.server_said_goodbye:
        return EXIT_OK
    click.echo(f"telex: {client.failure_reason}", err=True)
    return EXIT_LOST


# -- log ---------------------------------------------------------------------------------


def parse_since(value: str) -> float:
    """``90s``, ``15m``, ``1h``, ``2d`` ago, or an ISO 8601 time; as a unix time."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if value and value[-1] in units and value[:-1].replace(".", "", 1).isdigit():
        return time.time() - float(value[:-1]) * units[value[-1]]
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not 30s, 15m, 1h, 2d or an ISO time") from None
    if moment.tzinfo is None:
        moment = moment.astimezone()
    return moment.timestamp()


@main.command()
@db_option
@click.option("--from", "sender", metavar="NAME", help="Only messages from NAME ('server').")
@click.option("--to", "recipient", metavar="NAME", help="Only messages to NAME ('server').")
@click.option("--since", metavar="WHEN", help="Only since WHEN: 30s, 15m, 1h, 2d or ISO time.")
@click.option("--limit", "-n", type=click.IntRange(1), help="Only the last N messages.")
@json_option
@click.option("--follow", "-f", is_flag=True, help="Keep printing messages as they are stored.")
def log(
    db: Path | None,
    sender: str | None,
    recipient: str | None,
    since: str | None,
    limit: int | None,
    as_json: bool,
    follow: bool,
) -> None:
    """Show what was said, from the store (also while a server is running).

    Exit codes: 0 done (or stopped with Ctrl-C while following); 2 usage error,
    or no store at that path.
    """
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    path = db or default_db()
    if not path.exists():
        fail(f"no store at {path} (start 'telex serve' first, or give --db)", EXIT_USAGE)
    start = None if since is None else parse_since(since)
    try:
        store = Store(path, readonly=True)
    except (StoreError, sqlite3.Error) as exc:
        fail(f"cannot read the store {path}: {exc}", EXIT_USAGE)
    out = Output(as_json)
    last = 0
    try:
        for record in store.records(sender=sender, recipient=recipient, since=start, limit=limit):
            show_record(out, record)
            last = record.seq
        while follow:
            time.sleep(0.25)  # a poll of the file: the server may be another process
            for record in store.records(
                sender=sender, recipient=recipient, since=start, after_seq=last
            ):
                show_record(out, record)
                last = record.seq
    except KeyboardInterrupt:
        pass
    except sqlite3.Error as exc:
        fail(f"cannot read the store {path}: {exc}", EXIT_USAGE)
    finally:
        store.close()


def show_record(out: Output, record: Record) -> None:
    sender = record.sender or "server"
    recipient = record.recipient or "server"
    if out.as_json:
        out.record(
            "message",
            seq=record.seq,
            time=datetime.fromtimestamp(record.received).astimezone().isoformat(),
            sender=record.sender,
            recipient=record.recipient,
            id=record.sender_id,
            delivered=record.delivered,
            **body_fields(record.body),
        )
        return
    stamp = datetime.fromtimestamp(record.received).strftime("%Y-%m-%d %H:%M:%S")
    pending = "" if record.delivered is not None else out.style("  (not yet delivered)", dim=True)
    who = out.style(f"{sender} → {recipient}", fg="cyan")
    out.line(f"{out.style(stamp, dim=True)} {who}: {printable(record.body)}{pending}")


# -- cert and user ------------------------------------------------------------------------


@main.command()
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
    found = write_certificate(prefix, list(names) or default_names(), days)
    click.echo(f"wrote {prefix}.pem and {prefix}.key", err=True)
    click.echo(found)


@main.group()
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
def user_add(name: str, users: Path, token_file: Path | None) -> None:
    """Give NAME a token: only a client with it can hold the name."""
    if not valid_name(name):
        fail(f"{name!r} is not a name: 1 to 32 letters, digits, . _ -", EXIT_USAGE)
    try:
        token = load_token(token_file) if token_file is not None else None
        table = Users(users)
    except AuthError as exc:
        fail(str(exc), EXIT_USAGE)
    if token is None:
        token = secrets.token_urlsafe(24)
        click.echo(token)
        click.echo(
            f"telex: {name}'s token, shown once: keep it in a file for --token-file", err=True
        )
    table.add(name, token)
    click.echo(f"telex: {name} added to {users}", err=True)


# -- demo --------------------------------------------------------------------------------


@main.command()
def demo() -> None:
    """Run a server and a client on a free loopback port and show their exchange.

    The client sends to the server, and the server sends to the client: each message
    is acknowledged by the side that received it.
    """
    run(_demo(Output(as_json=False)))


async def _demo(out: Output) -> None:
    server_tag = out.style("server", fg="cyan", bold=True)
    client_tag = out.style("client", fg="green", bold=True)

    def server_side(message: Message, peer: Peer) -> str:
        out.line(f"{server_tag}  got #{message.id} from {peer.name}: {printable(message.body)}")
        return f"received {len(str(message.body))} characters"

    def client_side(message: Message) -> str:
        out.line(f"{client_tag}  got #{message.id} from the server: {printable(message.body)}")
        return "thanks, got it"

    with tempfile.TemporaryDirectory(prefix="telex-demo-") as folder:
        store = Store(Path(folder) / "demo.db")
        try:
            await _demo_exchange(out, server_tag, client_tag, server_side, client_side, store)
        finally:
            store.close()
    out.line("done: 3 messages sent, each acknowledged by the side that received it")


async def _demo_exchange(
    out: Output,
    server_tag: str,
    client_tag: str,
    server_side: Callable[[Message, Peer], str],
    client_side: Callable[[Message], str],
    store: Store,
) -> None:
    async with Server(server_side, port=0, store=store) as server:
        out.line(f"server listening on 127.0.0.1:{server.port}, storing in {store.path}")
        async with AsyncClient(
            "127.0.0.1", server.port, name="demo-client", handler=client_side
        ) as client:
            for text in ("hello, server", "every message gets an acknowledgment"):
                out.line(f"{client_tag}  sends: {text}")
                ack = await client.send(text)
                out.line(f"{client_tag}  ack {ack.id}: {printable(ack.reply)}")
            text = "and the server can send too"
            out.line(f"{server_tag}  sends to demo-client: {text}")
            ack = await server.send("demo-client", text)
            out.line(f"{server_tag}  ack {ack.id} from demo-client: {printable(ack.reply)}")
