"""What the subcommands share: running, failing, addresses, options, exit codes."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import functools
import json
import logging
import logging.handlers
import os
import signal
import ssl
import sys
from collections.abc import Callable, Coroutine, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar, cast

import click
import platformdirs

from ..core.address import format_address
from ..core.broker import RESERVED_NAMES
from ..core.limits import Limits
from ..core.protocol import valid_name
from ..exceptions import (
    AuthenticationFailed,
    CertificateRejected,
    ConnectError,
)
from ..security import (
    AuthError,
    KnownHosts,
    client_context,
    load_token,
    normal_fingerprint,
)
from ..server import DEFAULT_PORT
from ..store.base import Store, StoreError, public_url
from .console import (
    StderrHandler,
)

EXIT_OK, EXIT_REJECTED, EXIT_USAGE, EXIT_CONNECT, EXIT_LOST = 0, 1, 2, 3, 4
EXIT_CERTIFICATE, EXIT_AUTH = 5, 6
EXIT_INTERRUPTED = 130  # Ctrl-C, as shells report a SIGINT

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


class _Errors:
    as_json = False  # --json was given: errors are JSON lines on stdout too


ERRORS = _Errors()


def fail(message: str, code: int) -> None:
    """One line on stderr and the exit code; with --json, an ``error`` line on stdout too
    (docs/json.md), so a script reading stdout sees why the stream ended."""
    if ERRORS.as_json:
        print(json.dumps({"event": "error", "message": message, "exit": code}), flush=True)
    click.echo(f"telex: {message}", err=True)
    sys.exit(code)


def _json_errors(ctx: click.Context, param: click.Parameter, value: bool) -> bool:
    ERRORS.as_json = value
    return value


def parse_address(value: str) -> tuple[str, int]:
    """``HOST:PORT``, ``[IPv6]:PORT``, a bare ``HOST`` or IPv6 address (on port 7777),
    or a bare ``PORT`` (on 127.0.0.1). Anything else is a usage error, before any
    connection is tried."""
    text = value.strip()
    if not text:
        raise click.BadParameter("an empty address: give HOST:PORT (e.g. 127.0.0.1:7777)")
    if "://" in text:
        raise click.BadParameter(f"{value!r} is a URL: give HOST:PORT (e.g. 127.0.0.1:7777)")
    if text.isdigit():
        host, port = "127.0.0.1", text
    elif text.startswith("["):  # [v6] or [v6]:port
        inside, bracket, rest = text[1:].partition("]")
        if not bracket or not inside or (rest and not rest.startswith(":")):
            raise click.BadParameter(f"{value!r} is not HOST:PORT or [IPv6]:PORT")
        host, port = inside, rest[1:] or str(DEFAULT_PORT)
    elif text.count(":") > 1:  # a bare IPv6 address
        host, port = text, str(DEFAULT_PORT)
    else:
        host, _, port = text.partition(":")
        host = host or "127.0.0.1"  # ":7777"
        port = port or str(DEFAULT_PORT)
    if not host or any(c.isspace() or c in "/@?#" for c in host) or not is_host(host):
        raise click.BadParameter(f"{value!r} is not HOST:PORT")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise click.BadParameter(f"{value!r} is not HOST:PORT (a port is 1 to 65535)")
    return host, int(port)


def parse_addresses(value: str) -> list[tuple[str, int]]:
    """One address, or several separated by commas (``a:7777,b:7777``, each part as
    ``parse_address`` takes it): the servers a client fails over between, in order. An
    empty part is a usage error."""
    parts = value.split(",")
    if len(parts) > 1 and any(not part.strip() for part in parts):
        raise click.BadParameter(
            f"{value!r} has an empty address: give HOST:PORT,HOST:PORT (e.g. a:7777,b:7777)"
        )
    return [parse_address(part) for part in parts]


def is_host(host: str) -> bool:
    """A name the resolver can take (IDNA, so café.example is one) or an IP address;
    not, say, bytes that were not UTF-8 in the argument."""
    try:
        host.encode("idna")
    except UnicodeError:
        return ":" in host and host.isascii()  # an IPv6 address is not IDNA
    return True


def host_option(value: str) -> str:
    """``serve --host``: a usage error, not a traceback, for what cannot be a host."""
    if not value or not is_host(value):
        raise click.BadParameter(f"{value!r} is not a host name or address")
    return value


class _Parsed(click.ParamType):  # type: ignore[type-arg]
    """A type read by a parse function; its ``BadParameter`` is click's usage error. A
    value parsed already (a default, a config file's) is taken as it is."""

    parse: Callable[[str], Any]

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, tuple | list):
            return value
        try:
            return self.parse(str(value))
        except click.BadParameter as exc:
            self.fail(exc.message, param, ctx)


class Host(_Parsed):
    """``serve --host`` as a type, so a config file's ``host`` is checked the same way."""

    name = "HOST"
    parse = staticmethod(host_option)


class Address(_Parsed):
    name = "HOST:PORT"
    parse = staticmethod(parse_address)


class Addresses(_Parsed):
    """A client command's ADDRESS: one, or several separated by commas to fail over."""

    name = "HOST:PORT[,HOST:PORT...]"
    parse = staticmethod(parse_addresses)


class ClientName(click.ParamType):  # type: ignore[type-arg]
    """A name a client may ask for: checked here, so a bad one is a usage error before
    any connection (the server would refuse it with ERROR 15 or 14)."""

    name = "NAME"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        text = str(value)
        if not valid_name(text):
            self.fail(f"{text!r} is not a name: 1 to 32 letters, digits, . _ -", param, ctx)
        if text.lower() in RESERVED_NAMES:
            self.fail(f"{text!r} is reserved (server, you and everyone are)", param, ctx)
        return text


def name_option(help: str) -> Callable[[F], F]:
    return click.option("--name", type=ClientName(), help=help)


def default_db() -> Path:
    """telex.db in the user's data directory, so telex log finds it from anywhere."""
    return Path(platformdirs.user_data_dir("telex")) / "telex.db"


json_option = click.option(
    "--json",
    "as_json",
    is_flag=True,
    callback=_json_errors,
    help="Print one JSON object a line (docs/json.md), errors included.",
)
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


class StoreSpec(click.Path):
    """--db: a SQLite file (a ``Path``; relative to a config file that names it) or a
    ``postgresql://`` URL (kept as ``str``)."""

    name = "path|url"

    def __init__(self) -> None:
        super().__init__(dir_okay=False, path_type=Path)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if is_url(value):
            return value
        return super().convert(value, param, ctx)


def is_url(value: object) -> bool:
    """Whether a --db names a PostgreSQL database rather than a SQLite file."""
    return isinstance(value, str) and value.startswith(("postgresql://", "postgres://"))


db_option = click.option(
    "--db",
    type=StoreSpec(),
    default=None,
    help=f"The message store: a SQLite file (default: {default_db()}) or a "
    "postgresql://USER@HOST/DB URL.",
)


def open_store_spec(spec: Path | str, **sqlite: Any) -> Store:
    """The store --db names: a ``PostgresStore`` for a URL, else a ``SQLiteStore`` opened
    with ``sqlite``'s arguments. Raises ``StoreError`` (or ``sqlite3.Error``, ``OSError``)."""
    if isinstance(spec, str):
        try:
            from ..store.postgres import PostgresStore
        except ImportError:
            raise StoreError("PostgreSQL needs psycopg: pip install 'telex[postgres]'") from None
        return PostgresStore(spec)
    from ..store.sqlite import SQLiteStore

    return SQLiteStore(spec, **sqlite)


def store_name(spec: Path | str) -> str:
    """--db for people: a URL loses its password."""
    return public_url(spec) if isinstance(spec, str) else str(spec)


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

    def client_options(
        self, addresses: Sequence[tuple[str, int]], *, interactive: bool
    ) -> dict[str, Any]:
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
            try:
                options.update(ssl=client_context(cafile=self.cafile))
            except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
                fail(f"cannot use --cafile {self.cafile}: {exc}", EXIT_USAGE)
        else:
            known = KnownHosts(Path(platformdirs.user_config_dir("telex")) / "known_hosts")
            if interactive or any(known.get(format_address(a)) is not None for a in addresses):
                options.update(
                    ssl=client_context(verify=False),
                    known_hosts=known,
                    trust=ask_trust(" or ".join(map(format_address, addresses)))
                    if interactive
                    else None,
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
        help="Reconnect attempts when a connection that was up drops (0: none); with "
        "several addresses, rounds over all of them.",
    )


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
            help="Connections at once from one address that have finished their handshake.",
        ),
        click.option(
            "--max-handshakes-per-address",
            type=click.IntRange(1),
            default=defaults.max_handshakes_per_address,
            show_default=True,
            help="Connections from one address still in their handshake; the oldest goes.",
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


class Stop(asyncio.Event):
    """Set by SIGINT or SIGTERM; ``signum`` says which (Ctrl-C exits 130, SIGTERM 0)."""

    signum = 0


def stop_on_signals() -> Stop:
    """An event set by SIGINT or SIGTERM, so either ends the command cleanly; a second
    signal ends the process at once."""
    stop = Stop()
    loop = asyncio.get_running_loop()

    def stop_or_exit(signum: int) -> None:
        if stop.is_set():  # a second signal: the user means now
            os._exit(128 + signum)
        stop.signum = signum
        stop.set()

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop_or_exit, signum)
    return stop


LOG_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


class IsoTimes(logging.Formatter):
    """Times as ISO 8601 with milliseconds and the zone: 2025-01-31T14:02:11.123+01:00."""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        moment = datetime.datetime.fromtimestamp(record.created).astimezone()
        return moment.isoformat(timespec="milliseconds")


def log_to_stderr(level: int, file: Path | None = None) -> None:
    """Log records of ``level`` and above to stderr, with the time of day; with ``file``,
    to that file too (appended), each line with its ISO 8601 time, level and logger.

    The file is reopened if it is moved or removed (logrotate without copytruncate).
    Raises ``OSError`` if it cannot be opened.
    """
    handler = StderrHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", datefmt="%H:%M:%S"))
    handlers: list[logging.Handler] = [handler]
    if file is not None:
        to_file = logging.handlers.WatchedFileHandler(file, encoding="utf-8")
        to_file.setFormatter(IsoTimes("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        handlers.append(to_file)
    logging.basicConfig(level=level, handlers=handlers)
