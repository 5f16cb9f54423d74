"""telex chat and telex listen: the clients that also receive."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from typing import Any

import click

from ..client.aio import AsyncClient
from ..core.events import Message
from .common import (
    EXIT_INTERRUPTED,
    EXIT_LOST,
    EXIT_OK,
    Addresses,
    Security,
    client_errors,
    connect_timeout_option,
    fail,
    json_option,
    log_to_stderr,
    name_option,
    retries_option,
    run,
    security_options,
    stop_on_signals,
    timeout_option,
)
from .console import (
    ChatSession,
    Output,
    show_message,
)

# -- chat and listen ---------------------------------------------------------------------


@click.command()
@click.argument("address", type=Addresses())
@name_option("Your name on the server (default: one it makes up).")
@json_option
@timeout_option
@connect_timeout_option
@retries_option(30)
@security_options
def chat(
    address: list[tuple[str, int]],
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

    ADDRESS may list several servers separated by commas (a:7777,b:7777): the first
    that answers is used; a lost connection resumes the session on the next one.

    With --tls and neither --fingerprint nor --cafile, the first contact shows the
    server's fingerprint and asks; the answer is remembered (as ssh's known_hosts), and a
    remembered fingerprint that changes is refused.

    Exit codes: 0 left normally, everything acknowledged; 2 usage error; 3 cannot
    connect; 4 gave up
    reconnecting, or left with messages unacknowledged (it waits --timeout for them
    first); 5 the certificate was refused; 6 the token was refused; 130 Ctrl-C (it
    waits for the acks on their way; a second Ctrl-C does not). The last line says how
    many messages were acknowledged and how many not.
    """
    log_to_stderr(logging.WARNING)
    out = Output(as_json)
    interactive = sys.stdin.isatty() and sys.stdout.isatty() and not as_json
    session = ChatSession(
        address,
        out,
        name=name,
        timeout=timeout,
        connect_timeout=connect_timeout,
        retries=retries,
        **security.client_options(address, interactive=interactive),
    )
    try:
        with client_errors():
            code = run(session.run(interactive))
    except KeyboardInterrupt:
        code = EXIT_INTERRUPTED
    if code == EXIT_INTERRUPTED:
        fail(f"interrupted: {session.summary()}", EXIT_INTERRUPTED)
    if session.unanswered:
        fail(session.summary(), EXIT_LOST)
    sys.exit(code)


@click.command()
@click.argument("address", type=Addresses())
@name_option("Your name on the server (default: one it makes up).")
@click.option(
    "-c",
    "--count",
    type=click.IntRange(1),
    default=None,
    help="Exit after COUNT messages, each printed and acknowledged; later ones are left "
    "unanswered, for the server to deliver again.",
)
@json_option
@connect_timeout_option
@retries_option(10)
@security_options
def listen(
    address: list[tuple[str, int]],
    name: str | None,
    count: int | None,
    as_json: bool,
    connect_timeout: float,
    retries: int,
    security: Security,
) -> None:
    """Print every message that arrives, and acknowledge each once it is printed.

    Runs until the server says goodbye or Ctrl-C (or SIGTERM), or until --count
    messages have arrived. A connection that drops is reconnected (--retries times at
    most).

    ADDRESS may list several servers separated by commas (a:7777,b:7777): the first
    that answers is used; a lost connection resumes the session on the next one, and so
    does a server saying goodbye (it is stopping: another of the cluster goes on).

    Exit codes: 0 the server said goodbye (one ADDRESS), or stopped by SIGTERM, or
    --count messages arrived; 2 usage error; 3 cannot connect;
    4 the connection was lost and could not be made again (or, with --count and one
    ADDRESS, the server said goodbye before COUNT messages); 5 the certificate was refused;
    6 the token was refused; 130 Ctrl-C (SIGINT), with how many messages arrived.
    """
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    log_to_stderr(logging.WARNING)
    options = security.client_options(address, interactive=False)
    with client_errors():
        code = run(
            _listen(address, name, count, Output(as_json), connect_timeout, retries, options)
        )
    sys.exit(code)


async def _listen(
    addresses: list[tuple[str, int]],
    name: str | None,
    count: int | None,
    out: Output,
    connect_timeout: float,
    retries: int,
    options: dict[str, Any],
) -> int:
    received = 0
    enough = asyncio.Event()  # --count messages printed and acknowledged

    def show(message: Message) -> None:  # the ack goes once it is printed
        nonlocal received
        show_message(out, message)
        received += 1

    async def show_up_to_count(message: Message) -> None:
        assert count is not None
        if received >= count:  # never answered: the server keeps it to deliver again
            await asyncio.Event().wait()
        show(message)
        if received == count:
            enough.set()

    client = AsyncClient(
        addresses,
        name=name,
        connect_timeout=connect_timeout,
        handler=show if count is None else show_up_to_count,
        reconnect=retries > 0,
        retries=retries,
        stay_after_goodbye=len(addresses) > 1,  # several: a stopping server's peers go on
        on_state=lambda state: click.echo(f"telex: {state}", err=True),
        **options,
    )
    stop = stop_on_signals()
    await client.connect()
    click.echo(f"telex: listening as {client.name} on {client.address}", err=True)
    stopped = asyncio.create_task(stop.wait())
    closed = asyncio.create_task(client.wait_closed())
    counted = asyncio.create_task(enough.wait())
    await asyncio.wait([stopped, closed, counted], return_when=asyncio.FIRST_COMPLETED)
    stopped.cancel()
    counted.cancel()
    if enough.is_set():  # the last ack is queued: close() sends it before the goodbye
        await client.close()
        return EXIT_OK
    if stop.is_set():
        await client.close()
        if stop.signum == signal.SIGINT:
            click.echo(f"telex: interrupted: {received} messages received", err=True)
            return EXIT_INTERRUPTED
        return EXIT_OK
    if client.server_said_goodbye and count is None:
        return EXIT_OK
    if client.server_said_goodbye:
        click.echo(f"telex: the server said goodbye after {received} of {count} messages", err=True)
        return EXIT_LOST
    click.echo(f"telex: {client.failure_reason}", err=True)
    return EXIT_LOST
