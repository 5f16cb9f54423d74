"""telex log: what was said, from the store."""

from __future__ import annotations

import sqlite3
import sys
import time
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path

import click

from ..store import Record, SQLiteStore, StoreError
from .common import (
    EXIT_USAGE,
    db_option,
    default_db,
    fail,
    json_option,
)
from .console import (
    Output,
    iso,
)
from .render import body_fields, printable

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


@click.command()
@db_option
@click.option("--from", "sender", metavar="NAME", help="Only messages from NAME ('server').")
@click.option("--to", "recipient", metavar="NAME", help="Only messages to NAME ('server').")
@click.option("--since", metavar="WHEN", help="Only since WHEN: 30s, 15m, 1h, 2d or ISO time.")
@click.option("--limit", "-n", type=click.IntRange(1), help="Only the last N messages.")
@json_option
@click.option(
    "--follow",
    "-f",
    is_flag=True,
    help="Print messages as they are stored, from now on (after the last N with -n).",
)
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

    With --follow, only what is stored from now on, unless -n asks for the last N
    messages first.

    Exit codes: 0 done (or stopped with Ctrl-C while following); 2 usage error,
    or no store at that path.
    """
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    path = db or default_db()
    if not path.exists():
        fail(f"no store at {path} (start 'telex serve' first, or give --db)", EXIT_USAGE)
    start = None if since is None else parse_since(since)
    try:
        store = SQLiteStore(path, readonly=True)
    except (StoreError, sqlite3.Error) as exc:
        fail(f"cannot read the store {path}: {exc}", EXIT_USAGE)
    out = Output(as_json)
    try:
        last = store.next_seq() - 1  # the end, read first: what comes later is new
        if follow and limit is None:
            old: Iterable[Record] = ()  # following shows what is new, not the whole store
        else:
            old = store.records(sender=sender, recipient=recipient, since=start, limit=limit)
        for record in old:
            show_record(out, record)
            last = max(last, record.seq)
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
            time=iso(record.received),
            sender=record.sender,
            recipient=record.recipient,
            id=record.sender_id,
            delivered=iso(record.delivered),
            **body_fields(record.body),
        )
        return
    stamp = datetime.fromtimestamp(record.received).strftime("%Y-%m-%d %H:%M:%S")
    pending = "" if record.delivered is not None else out.style("  (not yet delivered)", dim=True)
    who = out.style(f"{sender} → {recipient}", fg="cyan")
    out.line(f"{out.style(stamp, dim=True)} {who}: {printable(record.body)}{pending}")
