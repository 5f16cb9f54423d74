"""The ``telex`` command: serve, send, demo.

Exit codes of ``telex send``: 0 every message acknowledged; 1 some were rejected;
2 usage error; 3 cannot connect; 4 the connection failed after it was up (lost,
timed out, or a protocol error) with messages unacknowledged.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
from collections import deque
from collections.abc import AsyncIterator, Coroutine
from datetime import datetime
from typing import IO, Any, TypeVar

import click

from ._version import __version__
from .client import AsyncClient
from .events import Ack, Body, Message
from .exceptions import ConnectError, ConnectionClosed, TelexError
from .limits import Limits
from .render import body_fields, printable
from .server import DEFAULT_PORT, TEXT_PAUSE, Peer, Server, default_handler
from .textclient import TextClient
from .textmode import text_body

__all__ = ["main"]

EXIT_OK, EXIT_REJECTED, EXIT_USAGE, EXIT_CONNECT, EXIT_LOST = 0, 1, 2, 3, 4

T = TypeVar("T")


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


def styled(text: str, stream: IO[str], **style: Any) -> str:
    """Colour for a terminal, plain text for a pipe or when NO_COLOR is set."""
    if stream.isatty() and "NO_COLOR" not in os.environ:
        return click.style(text, **style)
    return text


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


class MessagePrinter:
    """The server's handler in the terminal: print each message, then acknowledge it."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self.out = sys.stdout

    def __call__(self, message: Message, peer: Peer) -> str:
        now = time.time()
        if self.as_json:
            record = {
                "event": "message",
                "time": datetime.fromtimestamp(now).astimezone().isoformat(timespec="milliseconds"),
                "peer": peer.address,
                "name": peer.name,
                "id": message.id,
                **body_fields(message.body),
            }
            self.out.write(json.dumps(record) + "\n")
        else:
            stamp = styled(time.strftime("%H:%M:%S", time.localtime(now)), self.out, dim=True)
            who = styled(peer.name or peer.address, self.out, fg="cyan")
            self.out.write(f"{stamp} {who} #{message.id} {printable(message.body)}\n")
        return default_handler(message, peer)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=DEFAULT_PORT,
    show_default=True,
    help="Port to listen on; 0 picks a free one (and prints it).",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object a line.")
@click.option("--quiet", "-q", is_flag=True, help="Do not print each message.")
@click.option(
    "--text-pause",
    type=click.FloatRange(min=0, min_open=True),
    default=TEXT_PAUSE,
    show_default=True,
    help="Seconds after which a text peer's unfinished line is a message.",
)
@limit_options
def serve(
    host: str, port: int, as_json: bool, quiet: bool, text_pause: float, **limits: Any
) -> None:
    """Accept connections and acknowledge every message.

    Plain-text peers (netcat, telnet, socat) may connect too: each line they send is a
    message and gets one answer line. Ctrl-C (or SIGTERM) stops the server cleanly: it
    answers what already arrived and says goodbye to every client.
    """
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    logging.basicConfig(
        level=logging.WARNING if quiet else logging.INFO,
        format="%(asctime)s %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    handler = default_handler if quiet else MessagePrinter(as_json)
    server = Server(handler, host=host, port=port, limits=Limits(**limits), text_pause=text_pause)
    try:
        run(_serve(server, as_json))
    except OSError as exc:
        fail(f"cannot listen on {host}:{port}: {exc.strerror or exc}", EXIT_CONNECT)


async def _serve(server: Server, as_json: bool) -> None:
    await server.start()
    if as_json:
        print(json.dumps({"event": "listening", "host": server.host, "port": server.port}))
    else:
        print(f"telex {__version__} listening on {server.host}:{server.port} (Ctrl-C to stop)")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await server.close()
    stats = server.stats()
    if as_json:
        print(json.dumps({"event": "stopped", **stats}))
    else:
        print(
            f"stopped: {stats['accepted']} messages acknowledged, {stats['rejected']} rejected, "
            f"{stats['connections']} connections"
        )


# -- send --------------------------------------------------------------------------------


async def stdin_lines() -> AsyncIterator[Body]:
    """Each line of stdin as it arrives (text when it is UTF-8), read off the event loop."""
    loop = asyncio.get_running_loop()
    stream = sys.stdin.buffer
    rest = b""
    while True:
        chunk = await loop.run_in_executor(None, stream.read1, 65536)  # type: ignore[union-attr]
        if not chunk:
            break
        lines = (rest + chunk).split(b"\n")
        rest = lines.pop()
        for line in lines:
            yield text_body(line.removesuffix(b"\r"))
    if rest:
        yield text_body(rest)


async def _given(messages: tuple[str, ...]) -> AsyncIterator[Body]:
    for message in messages:
        yield message


class AckPrinter:
    """Prints each acknowledgment as it arrives; counts rejections."""

    def __init__(self, as_json: bool, each: bool, progress: Any = None) -> None:
        self.as_json = as_json
        self.each = each
        self.progress = progress
        self.sizes: deque[int] = deque()  # of the messages in flight: acks come in order
        self.acked = 0
        self.rejected = 0
        self.out = sys.stdout

    def __call__(self, ack: Ack) -> None:
        size = self.sizes.popleft() if self.sizes else 0
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
            if ack.ok:
                record.update(body_fields(ack.reply, "reply"), bytes=size)
            else:
                record.update(code=ack.status, reason=ack.reason)
            return json.dumps(record) + "\n"
        if ack.ok:
            return f"ack {ack.id}: {printable(ack.reply)} ({size} bytes)\n"
        return styled(f"rejected {ack.id}: {ack.reason}", self.out, fg="red") + "\n"


@main.command()
@click.argument("address", type=Address())
@click.argument("messages", nargs=-1)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object a line.")
@click.option(
    "--text",
    "text_mode",
    is_flag=True,
    help="Talk to a plain line-based server (nc -l): each answer line is the ack.",
)
@click.option("--name", help="The name this client gives in the handshake.")
@click.option(
    "--window",
    type=click.IntRange(1),
    default=1000,
    show_default=True,
    help="Messages in flight before waiting for acknowledgments.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=30.0,
    show_default=True,
    help="Seconds to wait for an acknowledgment.",
)
@click.option(
    "--connect-timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=10.0,
    show_default=True,
    help="Seconds to wait for the connection and handshake.",
)
def send(
    address: tuple[str, int],
    messages: tuple[str, ...],
    as_json: bool,
    text_mode: bool,
    name: str | None,
    window: int,
    timeout: float,
    connect_timeout: float,
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
            code = run(
                _send(
                    host,
                    port,
                    messages,
                    from_stdin,
                    as_json,
                    name,
                    window,
                    timeout,
                    connect_timeout,
                )
            )
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
    host: str,
    port: int,
    messages: tuple[str, ...],
    from_stdin: bool,
    as_json: bool,
    name: str | None,
    window: int,
    timeout: float,
    connect_timeout: float,
) -> int:
    client = AsyncClient(host, port, name=name, timeout=timeout, connect_timeout=connect_timeout)
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
        printer = AckPrinter(as_json, each, progress)
        source = stdin_lines() if from_stdin else _given(messages)

        async def sized() -> AsyncIterator[Body]:
            async for body in source:
                printer.sizes.append(len(body.encode() if isinstance(body, str) else body))
                yield body

        try:
            await client.send_many(sized(), window=window, on_ack=printer)
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
    source = stdin_lines() if from_stdin else _given(messages)
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


# -- demo --------------------------------------------------------------------------------


@main.command()
def demo() -> None:
    """Run a server and a client on a free loopback port and show their exchange."""
    run(_demo())


async def _demo() -> None:
    out = sys.stdout

    def server_side(message: Message, peer: Peer) -> str:
        tag = styled("server", out, fg="cyan", bold=True)
        print(f"{tag}  got #{message.id} from {peer.name}: {printable(message.body)}")
        return f"received {len(str(message.body))} characters"

    async with Server(server_side, port=0) as server:
        print(f"server listening on 127.0.0.1:{server.port}")
        async with AsyncClient("127.0.0.1", server.port, name="demo-client") as client:
            tag = styled("client", out, fg="green", bold=True)
            for text in ("hello, server", "every message gets an acknowledgment", "goodbye"):
                print(f"{tag}  sends: {text}")
                ack = await client.send(text)
                print(f"{tag}  ack {ack.id}: {printable(ack.reply)}")
    print("done: 3 messages sent, 3 acknowledged")
