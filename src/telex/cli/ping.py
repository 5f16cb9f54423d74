"""telex ping: round trips to a server, a line each and a summary, like ping(8)."""

from __future__ import annotations

import asyncio
import itertools
import signal
import statistics
import sys
from typing import Any

import click

from ..client.aio import AsyncClient
from ..exceptions import ConnectionClosed, TelexError, TelexTimeout
from .common import (
    EXIT_INTERRUPTED,
    EXIT_LOST,
    EXIT_OK,
    EXIT_REJECTED,
    Addresses,
    Security,
    Stop,
    client_errors,
    connect_timeout_option,
    fail,
    json_option,
    run,
    security_options,
    stop_on_signals,
)
from .console import Output

__all__ = ["milliseconds", "ping"]


def milliseconds(seconds: float) -> str:
    """A duration in ms with three significant digits or so: 0.213, 4.56, 12.3, 123."""
    ms = seconds * 1000
    if ms < 1:
        return f"{ms:.3f}"
    if ms < 10:
        return f"{ms:.2f}"
    if ms < 100:
        return f"{ms:.1f}"
    return f"{ms:.0f}"


def microseconds(seconds: float) -> int:
    return round(seconds * 1_000_000)


class Rounds:
    """The round trips so far, and their summary."""

    def __init__(self, address: str, out: Output) -> None:
        self.address = address
        self.out = out
        self.sent = 0
        self.times: list[float] = []  # seconds, one per PONG

    def answered(self, seq: int, rtt: float) -> None:
        self.times.append(rtt)
        self.out.record("pong", seq=seq, us=microseconds(rtt))
        self.out.line(f"reply from {self.address}: seq={seq} time={milliseconds(rtt)} ms")

    def lost(self, seq: int, reason: str) -> None:
        self.out.record("pong", seq=seq, us=None, reason=reason)
        self.out.line(f"no reply from {self.address}: seq={seq} ({reason})", fg="yellow")

    def summary(self) -> None:
        sent, answered = self.sent, len(self.times)
        times = self.times
        figures: dict[str, Any] = dict.fromkeys(("min_us", "avg_us", "max_us", "mdev_us"))
        if times:
            low, mean, high = min(times), statistics.fmean(times), max(times)
            mdev = statistics.pstdev(times, mean)
            figures = {
                "min_us": microseconds(low),
                "avg_us": microseconds(mean),
                "max_us": microseconds(high),
                "mdev_us": microseconds(mdev),
            }
        out = self.out
        out.record(
            "summary",
            address=self.address,
            sent=sent,
            answered=answered,
            lost=sent - answered,
            **figures,
        )
        lost = 0 if not sent else round(100 * (sent - answered) / sent)
        line = f"{sent} sent, {answered} answered, {lost}% lost"
        if times:
            rtt = "/".join(f"{value * 1000:.3f}" for value in (low, mean, high, mdev))
            line += f"; rtt min/avg/max/mdev = {rtt} ms"
        out.line(f"--- {self.address} ping ---")
        out.line(line)

    @property
    def code(self) -> int:
        return EXIT_OK if len(self.times) == self.sent else EXIT_REJECTED


@click.command()
@click.argument("address", type=Addresses())
@click.option(
    "-c",
    "--count",
    type=click.IntRange(1),
    default=None,
    help="Stop after COUNT round trips (default: run until Ctrl-C).",
)
@click.option(
    "-i",
    "--interval",
    type=click.FloatRange(min=0),
    default=1.0,
    show_default=True,
    help="Seconds between the starts of two round trips (0: one right after the other).",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=5.0,
    show_default=True,
    help="Seconds to wait for each PONG before counting it lost.",
)
@json_option
@connect_timeout_option
@security_options
def ping(
    address: list[tuple[str, int]],
    count: int | None,
    interval: float,
    timeout: float,
    as_json: bool,
    connect_timeout: float,
    security: Security,
) -> None:
    """Measure round trips to a telex server: a line for each, then a summary.

    Each round trip is a PING frame and the server's PONG (docs/protocol.md): the
    network and the server's event loop, not its handler or store; 'telex bench
    --window 1' times messages from send to ack, handler and store included.

    \b
    Exit codes:
      0  every PING answered
      1  some PINGs lost (no PONG within --timeout)
      2  usage error
      3  cannot connect
      4  the connection was lost (the summary is printed first)
      5  the server's TLS certificate was refused
      6  the server refused the token
      130 Ctrl-C (the summary is printed first)
    """
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    client = AsyncClient(
        address,
        timeout=timeout,
        connect_timeout=connect_timeout,
        reconnect=False,
        retries=0,
        **security.client_options(address, interactive=False),
    )
    rounds = Rounds(client.address, Output(as_json))
    try:
        with client_errors():
            code = run(_ping(client, rounds, count, interval, timeout))
    except ConnectionClosed as exc:
        fail(exc.reason, EXIT_LOST)
    except TelexError as exc:
        fail(str(exc), EXIT_LOST)
    except KeyboardInterrupt:  # before the first round trip: nothing to sum up
        fail("interrupted", EXIT_INTERRUPTED)
    sys.exit(code)


async def _ping(
    client: AsyncClient, rounds: Rounds, count: int | None, interval: float, timeout: float
) -> int:
    await client.connect()
    rounds.address = client.address  # of several, the one that answered
    stop = stop_on_signals()
    agent = f" ({client.server_agent})" if client.server_agent else ""
    rounds.out.line(f"ping {client.address}{agent}")
    loop = asyncio.get_running_loop()
    started = loop.time()  # the last round trip's start: the next starts --interval after
    failed = False
    try:
        for seq in itertools.count(1) if count is None else range(1, count + 1):
            if seq > 1 and await _stopped(stop, started + interval - loop.time()):
                break
            started = loop.time()  # late after a lost PONG: now, and no burst to catch up
            trip = asyncio.ensure_future(client.ping(timeout=timeout))
            if await _stopped(stop, None, trip):  # a PING on its way is not counted
                trip.cancel()
                break
            rounds.sent += 1
            try:
                rounds.answered(seq, trip.result())
            except TelexTimeout:
                rounds.lost(seq, f"no PONG within {timeout:g} s")
    except TelexError:  # the connection dropped: what was measured, then why
        failed = True
        raise
    finally:
        rounds.summary()
        if not failed:
            await client.close()
    if stop.signum == signal.SIGINT:
        return EXIT_INTERRUPTED
    return rounds.code


async def _stopped(
    stop: Stop, delay: float | None, task: asyncio.Future[float] | None = None
) -> bool:
    """Wait ``delay`` seconds (or for ``task``), or less if a signal comes: True then."""
    waiter = asyncio.ensure_future(stop.wait())
    waiting: list[asyncio.Future[Any]] = [waiter] if task is None else [waiter, task]
    try:
        done, _ = await asyncio.wait(
            waiting,
            timeout=None if delay is None else max(delay, 0),
            return_when=asyncio.FIRST_COMPLETED,
        )
    finally:
        waiter.cancel()
    return stop.is_set() and (task is None or task not in done)
