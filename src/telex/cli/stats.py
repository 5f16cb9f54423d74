"""telex stats: a running server's live counters, once or refreshed like top."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import click

from ..client.aio import AsyncClient
from ..exceptions import ConnectError, TelexError
from .common import (
    EXIT_CONNECT,
    EXIT_LOST,
    Addresses,
    Security,
    client_errors,
    connect_timeout_option,
    fail,
    json_option,
    run,
    security_options,
)
from .console import Output, now_iso

__all__ = ["describe", "stats"]


@click.command()
@click.argument("address", type=Addresses())
@json_option
@click.option(
    "--watch",
    "-w",
    type=click.FloatRange(min=0.1),
    is_flag=False,
    flag_value=2.0,
    default=None,
    metavar="[SECONDS]",
    help="Refresh every SECONDS (2 if not given) until Ctrl-C, as top does.",
)
@connect_timeout_option
@security_options
def stats(
    address: list[tuple[str, int]],
    as_json: bool,
    watch: float | None,
    connect_timeout: float,
    security: Security,
) -> None:
    """Show a running server's live counters: messages, connections, store, queues.

    A server with a shared token shows them only to a client that logs in with it
    (--token-file); docs/operations.md says what each figure means.

    Exit codes: 0 shown (or --watch stopped with Ctrl-C); 2 usage error; 3 cannot
    connect; 4 the server refused (not its token) or the connection was lost; 5 the
    certificate was refused; 6 the token was refused.
    """
    out = Output(as_json)
    client = AsyncClient(
        address,
        connect_timeout=connect_timeout,
        reconnect=False,
        **security.client_options(address, interactive=False),
    )
    try:
        with client_errors():
            run(_stats(client, out, watch))
    except KeyboardInterrupt:
        pass  # --watch ends with Ctrl-C
    except ConnectError as exc:
        fail(f"cannot connect: {exc}", EXIT_CONNECT)
    except TelexError as exc:
        fail(str(exc), EXIT_LOST)


async def _stats(client: AsyncClient, out: Output, watch: float | None) -> None:
    await client.connect()
    where = client.address
    try:
        while True:
            values = await client.stats()
            if out.as_json:
                out.record("stats", time=now_iso(), server=where, values=values)
            else:
                if watch is not None and sys.stdout.isatty():
                    click.clear()
                for line in describe(values, where):
                    out.line(line)
            if watch is None:
                return
            await asyncio.sleep(watch)
    finally:
        await client.close()


def describe(values: dict[str, Any], where: str) -> list[str]:
    """The figures as a few lines for people (``telex stats``, the console's /stats)."""
    modes = values.get("connections_by_mode", {})
    rejected = _parts(values.get("rejected_by", {}))
    refused = _parts(values.get("refused_by", {}))
    lines = [
        f"telex on {where} · up {_duration(values.get('uptime_seconds', 0))} · "
        f"{values.get('clients', 0)} clients · {values.get('connections_open', 0)} connections "
        f"({modes.get('framed', 0)} framed, {modes.get('text', 0)} text, "
        f"{modes.get('handshaking', 0)} in handshake; {values.get('connections_tls', 0)} TLS)",
        f"messages     {values.get('accepted', 0)} acknowledged, "
        f"{values.get('rejected', 0)} rejected{rejected}, "
        f"{values.get('delivered', 0)} delivered to clients, {values.get('receipts', 0)} receipts, "
        f"{values.get('resent', 0)} resent and recognised, "
        f"{values.get('handler_errors', 0)} handler errors",
        f"connections  {values.get('connections', 0)} accepted, "
        f"{values.get('refused_connections', 0)} refused{refused}, "
        f"{values.get('auth_failures', 0)} failed logins, "
        f"{values.get('violations', 0)} protocol violations",
        f"bytes        {_size(values.get('bytes_in', 0))} in, "
        f"{_size(values.get('bytes_out', 0))} out",
    ]
    sizes, seconds = values.get("commit_batch_size", {}), values.get("commit_seconds", {})
    if values.get("commits") or values.get("commit_failures"):
        lines.append(
            f"store        {values.get('commits', 0)} commits "
            f"({values.get('commit_failures', 0)} failed), batch p50 "
            f"≤{_quantile(sizes, 0.5)}, commit p50 ≤{_ms(_quantile(seconds, 0.5))} "
            f"p99 ≤{_ms(_quantile(seconds, 0.99))}"
        )
    queued = values.get("queued", {})
    if queued:
        waiting = ", ".join(
            f"{name} {q['count']} (oldest {_duration(q['oldest_seconds'])})"
            for name, q in sorted(queued.items())
        )
        lines.append(f"queued       {waiting}")
    return lines


def _parts(counts: dict[str, int]) -> str:
    shown = ", ".join(f"{key} {count}" for key, count in sorted(counts.items()) if count)
    return f" ({shown})" if shown else ""


def _quantile(histogram: dict[str, Any], q: float) -> str:
    """The upper bound of the bucket holding quantile ``q``."""
    count = histogram.get("count", 0)
    if not count:
        return "-"
    for bound, below in histogram.get("buckets", {}).items():
        if below >= q * count:
            return str(bound)
    return "+Inf"


def _ms(bound: str) -> str:
    try:
        return f"{float(bound) * 1000:g} ms"
    except ValueError:
        return bound


def _duration(seconds: float) -> str:
    whole = int(seconds)
    if whole < 60:
        return f"{seconds:.0f} s"
    if whole < 3600:
        return f"{whole // 60} min {whole % 60} s"
    return f"{whole // 3600} h {whole % 3600 // 60} min"


def _size(count: int) -> str:
    amount = float(count)
    for unit in ("B", "kB", "MB", "GB"):
        if amount < 1000:
            return f"{count} B" if unit == "B" else f"{amount:.1f} {unit}"
        amount /= 1000
    return f"{amount:.1f} TB"
