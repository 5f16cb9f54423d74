"""telex send: messages from arguments or stdin, each acknowledgment printed."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import click

from ..client.aio import AsyncClient
from ..client.text import TextClient
from ..core.events import Ack, Body, Receipt
from ..core.textmode import text_body
from ..exceptions import (
    ConnectError,
    ConnectionClosed,
    TelexError,
)
from .common import (
    EXIT_CONNECT,
    EXIT_INTERRUPTED,
    EXIT_LOST,
    EXIT_OK,
    EXIT_REJECTED,
    EXIT_USAGE,
    Addresses,
    ClientName,
    Security,
    client_errors,
    connect_timeout_option,
    fail,
    json_option,
    name_option,
    retries_option,
    run,
    security_options,
    timeout_option,
)
from .console import (
    Output,
    ack_fields,
    read_lines,
    receipt_fields,
)
from .render import body_fields, printable
from .resume import Progress, SendSession, SessionFileError

# -- send --------------------------------------------------------------------------------


async def _given(messages: tuple[str, ...]) -> AsyncIterator[Body]:
    for message in messages:
        yield argument_body(message)


async def _each_body(bodies: list[Body]) -> AsyncIterator[Body]:
    for body in bodies:
        yield body


def file_bodies(paths: tuple[Path, ...]) -> list[Body]:
    """Each file whole as one body (text when it is UTF-8, else its bytes); '-' is all of
    stdin. Read before connecting: a file that cannot be read is a usage error before
    anything is sent."""
    bodies: list[Body] = []
    for path in paths:
        try:
            raw = sys.stdin.buffer.read() if str(path) == "-" else path.read_bytes()
        except OSError as exc:
            fail(f"cannot read {path}: {exc.strerror or exc}", EXIT_USAGE)
        bodies.append(text_body(raw))
    return bodies


def argument_body(argument: str) -> Body:
    """A command-line argument as a body: text when its bytes are UTF-8, else those bytes
    (the system hands undecodable bytes over as surrogates)."""
    return text_body(argument.encode("utf-8", "surrogateescape"))


class AckPrinter:
    """Prints each acknowledgment as it arrives; counts rejections."""

    def __init__(self, out: Output, each: bool, to: str | None) -> None:
        self.output = out
        self.as_json = out.as_json
        self.style = out.style
        self.each = each
        self.to = to
        self.progress: Any = None  # a bar on a terminal, in place of the lines
        self.resume: Progress | None = None  # --session: the progress to save
        self.sizes: dict[int, int] = {}  # bytes of each message in flight, by id
        self.acked = 0
        self.rejected = 0
        self.out = sys.stdout

    def __call__(self, ack: Ack) -> None:
        size = self.sizes.pop(ack.id, 0)
        self.acked += 1
        if self.resume is not None:
            self.resume.answered()
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
            return json.dumps({"event": "ack", **ack_fields(ack, self.to), "bytes": size}) + "\n"
        if not ack.ok:
            return self.style(f"rejected {ack.id}: {ack.reason}", fg="red") + "\n"
        if self.to is None:
            return f"ack {ack.id}: {printable(ack.reply)} ({size} bytes)\n"
        reply = f": {printable(ack.reply)}" if ack.reply else ""
        if ack.stored:
            away = ", not connected" if ack.away else ""
            return f"stored {ack.id} for {self.to} ({size} bytes{away})\n"
        if ack.delivered:
            return f"delivered {ack.id} to {self.to}{reply} ({size} bytes)\n"
        return f"ack {ack.id}: {printable(ack.reply)} ({size} bytes)\n"


@click.command()
@click.argument("address", type=Addresses())
@click.argument("messages", nargs=-1)
@json_option
@click.option(
    "--text",
    "text_mode",
    is_flag=True,
    help="Talk to a plain line-based server (nc -l): each answer line is the ack.",
)
@name_option("The name this client gives in the handshake.")
@click.option(
    "--to",
    type=ClientName(),
    help="Send to the client NAME through the server; its own ack is the answer.",
)
@click.option(
    "--wait-delivery",
    is_flag=True,
    help="With --to and a server that stores: after its acks, wait (up to --timeout) for "
    "NAME's own acks, the delivery receipts, and print them.",
)
@click.option(
    "--window",
    type=click.IntRange(1),
    default=1000,
    show_default=True,
    help="Messages in flight before waiting for acknowledgments.",
)
@click.option(
    "--file",
    "files",
    type=click.Path(path_type=Path, allow_dash=True),
    multiple=True,
    metavar="PATH",
    help="Send the whole file as one message (text when it is UTF-8, else bytes); '-' is "
    "all of stdin. Repeat it for several, one message each, in order.",
)
@click.option(
    "--session",
    "session_file",
    type=click.Path(dir_okay=False, path_type=Path),
    metavar="FILE",
    help="Keep the session and progress in FILE: run again after a kill, the sender skips "
    "what was acknowledged and the server recognises what it stored; nothing is sent twice.",
)
@timeout_option
@connect_timeout_option
@retries_option(10)
@security_options
def send(
    address: list[tuple[str, int]],
    messages: tuple[str, ...],
    as_json: bool,
    text_mode: bool,
    name: str | None,
    to: str | None,
    wait_delivery: bool,
    window: int,
    files: tuple[Path, ...],
    session_file: Path | None,
    timeout: float,
    connect_timeout: float,
    retries: int,
    security: Security,
) -> None:
    """Send each MESSAGE and print its acknowledgment.

    With '-' as the message, or no message and a pipe on stdin, every line of stdin is
    a message: they are sent pipelined, and telex exits once all are acknowledged.
    With --file PATH, the whole file is one message.

    Each run is a new session unless --session FILE is given: a sender killed and run
    again without it sends (and a server stores) everything again.

    ADDRESS may list several servers separated by commas (a:7777,b:7777): the first
    that answers is used; a lost connection resumes the session on the next one.

    \b
    Exit codes:
      0  every message acknowledged
      1  some messages rejected
      2  usage error
      3  cannot connect
      4  connection lost, timed out or broken, with messages unacknowledged
      5  the server's TLS certificate was refused
      6  the server refused the token
      130 interrupted (Ctrl-C): how many were acknowledged and how many not is printed
    With --wait-delivery, 1 also when the recipient refused a message, and 4 when a
    delivery was not confirmed in time.
    """
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]  # acks as they come
    if files and messages:
        raise click.UsageError("give MESSAGE arguments, '-' or --file, not more than one of them")
    if files and text_mode:
        raise click.UsageError("--file goes with telex's own protocol, not --text")
    if sum(str(path) == "-" for path in files) > 1:
        raise click.UsageError("'--file -' reads all of stdin: give it once")
    from_stdin = messages == ("-",) or (not messages and not files and not sys.stdin.isatty())
    if not messages and not from_stdin and not files:
        raise click.UsageError("give a MESSAGE, or '-' to send each line of stdin")
    if wait_delivery and to is None:
        raise click.UsageError("--wait-delivery goes with --to")
    if text_mode and session_file is not None:
        raise click.UsageError("--session goes with telex's own protocol, not --text")
    given = file_bodies(files) if files else None
    receipts: dict[int, Receipt] = {}
    arrived = asyncio.Event()
    if text_mode and len(address) > 1:
        raise click.UsageError("--text takes one ADDRESS, not a list to fail over between")
    host, port = address[0]
    out = Output(as_json)
    progress_bar = from_stdin and sys.stderr.isatty()
    # A bar on a terminal replaces the lines.
    printer = AckPrinter(out, not (progress_bar and sys.stdout.isatty()), to)
    resume = None
    state = SendSession(uuid.uuid4().hex)
    try:
        if session_file is not None:
            state, resuming = SendSession.open(session_file)
            resume = Progress(state, session_file)
            state.save(session_file)  # a file that cannot be written fails before sending
            if resuming:
                click.echo(
                    f"telex: resuming session {state.session}: skipping the first "
                    f"{state.answered} messages, answered in an earlier run",
                    err=True,
                )
        if text_mode:
            code = run(
                _send_text(host, port, messages, from_stdin, as_json, timeout, connect_timeout)
            )
        else:
            client = AsyncClient(
                address,
                name=name,
                timeout=timeout,
                connect_timeout=connect_timeout,
                reconnect=retries > 0,
                retries=retries,
                session=state.session,
                first_id=state.next_id,
                on_receipt=functools.partial(_keep_receipt, receipts, arrived)
                if wait_delivery
                else None,
                **security.client_options(address, interactive=False),
            )
            waiting = (receipts, arrived) if wait_delivery else None
            with client_errors():
                skip = state.answered if resume is not None else 0
                code = run(
                    _send(
                        client, messages, given, from_stdin, printer, window, waiting, resume, skip
                    )
                )
    except SessionFileError as exc:
        fail(str(exc), EXIT_USAGE)
    except ConnectError as exc:
        fail(f"cannot connect: {exc}", EXIT_CONNECT)
    except ConnectionClosed as exc:
        fail(f"{exc.reason}: {exc.unacknowledged} messages unacknowledged", EXIT_LOST)
    except TelexError as exc:
        fail(str(exc), EXIT_LOST)
    except KeyboardInterrupt:
        sys.stdout.flush()
        fail(
            f"interrupted: {printer.acked} messages answered ({printer.rejected} of them "
            f"rejected), {len(printer.sizes)} sent and not acknowledged"
            + (f"; run again with --session {session_file} to resume" if resume else ""),
            EXIT_INTERRUPTED,
        )
    sys.exit(code)


async def _send(
    client: AsyncClient,
    messages: tuple[str, ...],
    given: list[Body] | None,
    from_stdin: bool,
    printer: AckPrinter,
    window: int,
    waiting: tuple[dict[int, Receipt], asyncio.Event] | None,
    resume: Progress | None,
    skip: int,
) -> int:
    await client.connect()
    out, to = printer.output, printer.to
    summary = not printer.each  # a bar in place of the lines: a count at the end instead
    with contextlib.ExitStack() as stack:
        progress = None
        if from_stdin and sys.stderr.isatty():
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
        printer.progress = progress
        printer.resume = resume
        if given is not None:
            source = _each_body(given)
        else:
            source = read_lines() if from_stdin else _given(messages)

        async def sized() -> AsyncIterator[Body]:
            skipped = 0
            async for body in source:
                if skipped < skip:  # answered in the run this one resumes
                    skipped += 1
                    continue
                size = len(body.encode() if isinstance(body, str) else body)
                printer.sizes[client.next_id] = size
                yield body

        unconfirmed = refused = 0
        finished = False
        try:
            acks = await client.send_many(sized(), window=window, on_ack=printer, to=to)
            finished = True
            if waiting is not None:
                unconfirmed, refused = await _wait_for_receipts(
                    acks, *waiting, client.timeout, out, to
                )
        except ConnectionClosed as exc:  # count what was read but never acknowledged
            raise ConnectionClosed(exc.reason, len(printer.sizes)) from exc
        except asyncio.CancelledError:  # Ctrl-C: take the acks on their way, then stop
            client.timeout = min(client.timeout, 0.5)
            raise
        finally:
            sys.stdout.flush()
            if resume is not None:
                resume.finish(finished)
            await client.close()
    if summary:
        click.echo(f"{printer.acked} messages acknowledged, {printer.rejected} rejected", err=True)
    if unconfirmed:
        click.echo(f"telex: {unconfirmed} deliveries not confirmed in time", err=True)
        return EXIT_LOST
    return EXIT_REJECTED if printer.rejected or refused else EXIT_OK


def _keep_receipt(receipts: dict[int, Receipt], arrived: asyncio.Event, receipt: Receipt) -> None:
    receipts[receipt.id] = receipt
    arrived.set()


async def _wait_for_receipts(
    acks: list[Ack],
    receipts: dict[int, Receipt],
    arrived: asyncio.Event,
    timeout: float,
    out: Output,
    to: str | None,
) -> tuple[int, int]:
    """Wait for the receipt of every message the server stored for later; print each.
    Returns how many did not come in time, and how many the recipient refused."""
    expected = [ack.id for ack in acks if ack.ok and ack.stored]
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            while not all(msg_id in receipts for msg_id in expected):
                arrived.clear()
                await arrived.wait()
    for msg_id in expected:
        receipt = receipts.get(msg_id)
        if receipt is None:
            continue
        assert to is not None  # receipts come for messages to a client
        out.record("receipt", **receipt_fields(msg_id, to, receipt))
        if out.as_json:
            continue
        if receipt.ok:
            reply = f": {printable(receipt.reply)}" if receipt.reply else ""
            out.line(f"delivered {msg_id} to {to}{reply}")
        else:
            out.line(f"not delivered {msg_id}: {receipt.reason}", fg="red")
    missing = sum(msg_id not in receipts for msg_id in expected)
    return missing, sum(not receipt.ok for receipt in receipts.values())


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
                line = {"event": "answer", "id": number, **body_fields(answer, "answer")}
                print(json.dumps(line), flush=True)
            else:
                print(f"answer {number}: {printable(answer)}", flush=True)
    return EXIT_OK
