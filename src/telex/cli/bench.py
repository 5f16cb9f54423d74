"""telex bench: pipelined messages to a server, timed; msgs/s, MB/s and ack latency."""

from __future__ import annotations

import itertools
import math
import signal
import sys
import time
from collections.abc import Iterator

import click

from ..client.aio import DEFAULT_WINDOW, AsyncClient
from ..core.events import Ack
from ..exceptions import ConnectionClosed, TelexError
from .common import (
    EXIT_INTERRUPTED,
    EXIT_LOST,
    EXIT_OK,
    EXIT_REJECTED,
    Addresses,
    Security,
    client_errors,
    connect_timeout_option,
    fail,
    json_option,
    run,
    security_options,
    stop_on_signals,
    timeout_option,
)
from .console import Output
from .ping import microseconds, milliseconds

__all__ = ["bench"]

DEFAULT_SECONDS = 5.0
PERCENTILES = (("p50", 0.50), ("p90", 0.90), ("p99", 0.99), ("max", 1.0))


class TooLarge(Exception):
    """--size is over the server's limit: every message would be refused."""


class Run:
    """One measured run: when each message was handed to the client and acknowledged."""

    def __init__(self) -> None:
        self.sent_at: dict[int, float] = {}  # by id, until its ack comes
        self.latencies: list[float] = []  # seconds from send to ack, in ack order
        self.first_sent = 0.0
        self.last_acked = 0.0
        self.rejected = 0
        self.reason = ""  # the first rejection's

    def bodies(
        self, client: AsyncClient, body: bytes, messages: int | None, deadline: float | None
    ) -> Iterator[bytes]:
        """``body`` until ``messages`` were sent or the clock passes ``deadline``; the
        stamp is taken as send_many takes the body, so a full window is not counted."""
        sent_at = self.sent_at
        now = self.first_sent = time.perf_counter()
        for sent in itertools.count():
            if sent == messages or (deadline is not None and sent and now >= deadline):
                return
            sent_at[client.next_id] = now
            yield body
            now = time.perf_counter()

    def on_ack(self, ack: Ack) -> None:
        now = self.last_acked = time.perf_counter()
        self.latencies.append(now - self.sent_at.pop(ack.id))
        if not ack.ok:
            self.rejected += 1
            self.reason = self.reason or ack.reason

    def percentiles(self) -> dict[str, float]:
        """Nearest-rank percentiles of the latencies, in seconds."""
        ordered = sorted(self.latencies)
        count = len(ordered)
        return {name: ordered[max(math.ceil(q * count) - 1, 0)] for name, q in PERCENTILES}


@click.command()
@click.argument("address", type=Addresses())
@click.option(
    "--seconds",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help=f"Send for this many seconds (the default, {DEFAULT_SECONDS:g}, if neither this "
    "nor --messages is given).",
)
@click.option("--messages", type=click.IntRange(1), default=None, help="Send this many messages.")
@click.option(
    "--size",
    type=click.IntRange(0),
    default=128,
    show_default=True,
    help="Bytes in each message.",
)
@click.option(
    "--window",
    type=click.IntRange(1),
    default=DEFAULT_WINDOW,
    show_default=True,
    help="Messages in flight at once (1: one round trip after the other).",
)
@click.option(
    "--warmup",
    type=click.IntRange(0),
    default=1000,
    show_default=True,
    help="Messages sent and acknowledged first, and not counted.",
)
@json_option
@timeout_option
@connect_timeout_option
@security_options
def bench(
    address: list[tuple[str, int]],
    seconds: float | None,
    messages: int | None,
    size: int,
    window: int,
    warmup: int,
    as_json: bool,
    timeout: float,
    connect_timeout: float,
    security: Security,
) -> None:
    """Measure a server: pipelined messages, then msgs/s, MB/s and ack latency.

    After the warm-up, messages of --size bytes go with up to --window in flight, for
    --seconds or --messages. The time runs from the first send to the last ack; MB/s
    counts message bodies (10^6 bytes). Each message's latency runs from its send to
    its ack, so with a full window it includes the wait behind the others: --window 1
    gives round trips. The server handles and stores (unless --no-store) each message
    as it would any other.

    \b
    Exit codes:
      0  every message acknowledged
      1  some messages rejected (--size over the server's limit: none sent)
      2  usage error
      3  cannot connect
      4  connection lost or timed out, with messages unacknowledged
      5  the server's TLS certificate was refused
      6  the server refused the token
      130 Ctrl-C: the sending stops, and what was measured is printed
    """
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    if seconds is not None and messages is not None:
        raise click.UsageError("give --seconds or --messages, not both")
    if seconds is None and messages is None:
        seconds = DEFAULT_SECONDS
    client = AsyncClient(
        address,
        timeout=timeout,
        connect_timeout=connect_timeout,
        reconnect=False,
        retries=0,
        **security.client_options(address, interactive=False),
    )
    out = Output(as_json)
    try:
        with client_errors():
            code = run(_bench(client, out, seconds, messages, size, window, warmup))
    except TooLarge as exc:
        fail(str(exc), EXIT_REJECTED)
    except ConnectionClosed as exc:
        fail(f"{exc.reason}: {exc.unacknowledged} messages unacknowledged", EXIT_LOST)
    except TelexError as exc:
        fail(str(exc), EXIT_LOST)
    except KeyboardInterrupt:  # before the run began
        fail("interrupted", EXIT_INTERRUPTED)
    sys.exit(code)


async def _bench(
    client: AsyncClient,
    out: Output,
    seconds: float | None,
    messages: int | None,
    size: int,
    window: int,
    warmup: int,
) -> int:
    await client.connect()
    limit = client.server_limits.get("max_message_size")
    if type(limit) is int and size > limit:
        await client.close()
        raise TooLarge(f"--size {size} is over the server's limit of {limit} bytes")
    body = bytes(i % 251 for i in range(size))
    how_long = f"for {seconds:g} s" if seconds is not None else f"{messages} messages"
    out.line(
        f"bench {client.address}: {how_long}, {size} bytes each, window {window}, "
        f"after {warmup} to warm up"
    )
    stop = stop_on_signals()
    if warmup:
        await client.send_many(itertools.repeat(body, warmup), window=window)
    measured = Run()

    def bodies() -> Iterator[bytes]:
        deadline = None if seconds is None else time.perf_counter() + seconds
        for each in measured.bodies(client, body, messages, deadline):
            if stop.is_set():
                return
            yield each

    if not stop.is_set():
        await client.send_many(bodies(), window=window, on_ack=measured.on_ack)
    await client.close()
    if measured.latencies:
        _report(out, client.address, measured, size, window, warmup)
    if stop.signum == signal.SIGINT:
        return EXIT_INTERRUPTED
    return EXIT_REJECTED if measured.rejected else EXIT_OK


def _report(out: Output, address: str, measured: Run, size: int, window: int, warmup: int) -> None:
    count = len(measured.latencies)
    elapsed = max(measured.last_acked - measured.first_sent, 1e-9)
    rate = count / elapsed
    throughput = count * size / elapsed
    percentiles = measured.percentiles()
    out.record(
        "bench",
        address=address,
        messages=count,
        size=size,
        window=window,
        warmup=warmup,
        rejected=measured.rejected,
        elapsed_us=microseconds(elapsed),
        msgs_per_s=round(rate),
        bytes_per_s=round(throughput),
        **{f"{name}_us": microseconds(value) for name, value in percentiles.items()},
    )
    out.line(
        f"{count} messages acknowledged in {elapsed:.2f} s: "
        f"{rate:,.0f} msgs/s, {throughput / 1e6:,.2f} MB/s"
    )
    latency = ", ".join(f"{name} {milliseconds(value)} ms" for name, value in percentiles.items())
    out.line(f"ack latency (send to ack): {latency}")
    if measured.rejected:
        out.line(f"{measured.rejected} of them rejected: {measured.reason}", fg="red")
