"""telex log: what was said, from the store; and its housekeeping: prune, export, import.

The export format (one JSON object a line, every field of every message) is written
and read here, in docs/durability.md's words, and owes nothing to SQLite: a store of
any engine exports and imports the same lines.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import sqlite3
import sys
import time
from collections.abc import Iterable, Iterator
from datetime import datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import click

from ..store import Record, SQLiteStore, StoreError
from ..store.base import StoredMessage
from .common import (
    EXIT_CONNECT,
    EXIT_USAGE,
    db_option,
    default_db,
    fail,
    json_option,
    open_store_spec,
    store_name,
)
from .console import (
    Output,
    iso,
)
from .render import body_fields, printable

if TYPE_CHECKING:
    from ..store.postgres import PostgresStore

# -- log ---------------------------------------------------------------------------------


UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(value: str) -> float | None:
    """``90s``, ``15m``, ``12h``, ``7d`` (a number and a unit) in seconds; None if the
    value is not one."""
    if value and value[-1] in UNITS and value[:-1].replace(".", "", 1).isdigit():
        return float(value[:-1]) * UNITS[value[-1]]
    return None


class Duration(click.ParamType):  # type: ignore[type-arg]
    """A positive duration, ``90s``, ``15m``, ``12h`` or ``7d`` (a bare number is
    seconds), as seconds."""

    name = "DURATION"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, int | float) and not isinstance(value, bool):
            seconds: float | None = float(value)  # from a config file, in seconds
        else:
            text = str(value)
            seconds = parse_duration(text + "s" if text.replace(".", "", 1).isdigit() else text)
        if seconds is None or seconds <= 0:
            self.fail(f"{value!r} is not a duration such as 90s, 15m, 12h or 7d", param, ctx)
        return seconds


DURATION = Duration()


def parse_since(value: str) -> float:
    """``90s``, ``15m``, ``1h``, ``2d`` ago, or an ISO 8601 time; as a unix time."""
    seconds = parse_duration(value)
    if seconds is not None:
        return time.time() - seconds
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not 30s, 15m, 1h, 2d or an ISO time") from None
    if moment.tzinfo is None:
        moment = moment.astimezone()
    return moment.timestamp()


@click.group(invoke_without_command=True, subcommand_metavar="[prune|export|import] ...")
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
@click.pass_context
def log(
    ctx: click.Context,
    db: Path | str | None,
    sender: str | None,
    recipient: str | None,
    since: str | None,
    limit: int | None,
    as_json: bool,
    follow: bool,
) -> None:
    """Show what was said, from the store (also while a server is running).

    With --follow, only what is stored from now on, unless -n asks for the last N
    messages first. 'telex log prune', 'export' and 'import' keep the store: see
    'telex log COMMAND --help'.

    Exit codes: 0 done (or stopped with Ctrl-C while following); 2 usage error,
    or no store at that path.
    """
    if ctx.invoked_subcommand is not None:
        given = [name for name, value in ctx.params.items() if value and name != "db"]
        if given:
            raise click.UsageError(
                f"'telex log {ctx.invoked_subcommand}' takes its own options, after its "
                "name (--db may come before it)"
            )
        return
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    path = existing_store(db)
    start = None if since is None else parse_since(since)
    try:
        store = reader(path, readonly=True)
    except (StoreError, sqlite3.Error) as exc:
        fail(f"cannot read the store {store_name(path)}: {exc}", EXIT_USAGE)
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
    except (StoreError, sqlite3.Error) as exc:
        fail(f"cannot read the store {store_name(path)}: {exc}", EXIT_USAGE)
    finally:
        store.close()


def reader(spec: Path | str, **sqlite: Any) -> SQLiteStore | PostgresStore:
    """The store ``telex log`` reads or keeps: a URL's, or the SQLite file's."""
    store = open_store_spec(spec, **sqlite)
    assert hasattr(store, "next_seq")
    return store  # type: ignore[return-value]


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


def existing_store(db: Path | str | None) -> Path | str:
    """The store's path (--db, or the default), or exit 2 if there is none; a URL as is."""
    path = db or default_db()
    if isinstance(path, Path) and not path.exists():
        fail(f"no store at {path} (start 'telex serve' first, or give --db)", EXIT_USAGE)
    return path


def store_path(db: Path | str | None) -> Path | str | None:
    """A subcommand's --db, else the one given to ``telex log`` before its name."""
    parent = click.get_current_context().parent
    inherited = None if parent is None else parent.params.get("db")
    return db or inherited


# -- prune -------------------------------------------------------------------------------


@log.command()
@db_option
@click.option(
    "--before",
    required=True,
    metavar="WHEN",
    help="Delete delivered messages stored before WHEN: 30s, 15m, 12h, 7d (ago) or an ISO time.",
)
@click.option("--dry-run", is_flag=True, help="Only count what would be deleted.")
def prune(db: Path | str | None, before: str, dry_run: bool) -> None:
    """Delete delivered messages stored before WHEN, and print how many.

    Messages waiting for a client that has not taken them are kept, whatever their age,
    and so is the newest message (the store numbers on from it). A running server
    (give it --keep to do this itself) keeps going meanwhile: the deletions are short
    transactions, each waiting for the server's commits. The file does not shrink:
    SQLite reuses the space for new messages.

    Exit codes: 0 done; 2 usage error, or no store at that path; 3 the store cannot
    be written (locked longer than 5 s, read-only, full).
    """
    path = existing_store(store_path(db))
    moment = parse_since(before)
    when = datetime.fromtimestamp(moment).strftime("%Y-%m-%d %H:%M:%S")
    try:
        store = reader(path, readonly=dry_run, lock=False)
    except (StoreError, sqlite3.Error) as exc:
        fail(f"cannot open the store {store_name(path)}: {exc}", EXIT_USAGE)
    try:
        if dry_run:
            count = store.prunable(moment)
            click.echo(f"{count} delivered messages stored before {when} would be deleted")
        else:
            count = sum(store.prune(moment))
            click.echo(f"deleted {count} delivered messages stored before {when}")
    except (StoreError, sqlite3.Error) as exc:
        fail(f"cannot prune the store {store_name(path)}: {exc}", EXIT_CONNECT)
    finally:
        store.close()


# -- export ------------------------------------------------------------------------------


@log.command()
@db_option
@click.option("--from", "sender", metavar="NAME", help="Only messages from NAME ('server').")
@click.option("--to", "recipient", metavar="NAME", help="Only messages to NAME ('server').")
@click.option("--since", metavar="WHEN", help="Only since WHEN: 30s, 15m, 1h, 2d or ISO time.")
def export(
    db: Path | str | None, sender: str | None, recipient: str | None, since: str | None
) -> None:
    """Print every stored message, every field, as JSON lines (docs/durability.md).

    'telex log import' reads them back into a store, of this machine or another. Works
    while a server is running: the export is what was stored when it began.

    Exit codes: 0 done; 2 usage error, or no store at that path.
    """
    path = existing_store(store_path(db))
    start = None if since is None else parse_since(since)
    try:
        store = reader(path, readonly=True)
    except (StoreError, sqlite3.Error) as exc:
        fail(f"cannot read the store {store_name(path)}: {exc}", EXIT_USAGE)
    out = sys.stdout
    try:
        for message in store.export(sender=sender, recipient=recipient, since=start):
            out.write(export_line(message) + "\n")
        out.flush()
    except BrokenPipeError:  # the reader went (| head): not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except sqlite3.Error as exc:
        fail(f"cannot read the store {store_name(path)}: {exc}", EXIT_USAGE)
    finally:
        store.close()


def export_line(message: StoredMessage) -> str:
    """A message as one line of the export format: fields in this order, bodies as
    docs/json.md says (``text`` or ``text_base64``; ``reply`` or ``reply_base64``, or
    ``reply`` null), times ISO 8601 with the local offset, to the microsecond."""
    record: dict[str, Any] = {
        "seq": message.seq,
        "session": message.session,
        "sender_id": message.sender_id,
        "sender": message.sender,
        "recipient": message.recipient,
        **_body("text", message.body),
        **({"reply": None} if message.reply is None else _body("reply", message.reply)),
        "received": _time(message.received),
        "delivered": None if message.delivered is None else _time(message.delivered),
        "status": message.status,
        "reason": message.reason,
    }
    return json.dumps(record)


def _body(key: str, body: bytes | str) -> dict[str, str]:
    if isinstance(body, str):
        return {key: body}
    return {f"{key}_base64": base64.b64encode(body).decode()}


def _time(moment: float) -> str:
    return datetime.fromtimestamp(moment).astimezone().isoformat(timespec="microseconds")


# -- import ------------------------------------------------------------------------------


@log.command("import")
@click.argument("file", type=click.File("rb"))
@db_option
def import_(file: IO[bytes], db: Path | str | None) -> None:
    """Store the messages of FILE ('-': stdin), lines 'telex log export' printed.

    The store (made if there is none) must not be in use by a server: stop it first.
    Messages already in it (the same session and id, or the same message under the
    same number) are skipped and counted. Each message keeps its number (seq) when it
    is above every number in the store, and is numbered on from the highest otherwise:
    an export imported into an empty store exports the same again. All or nothing: a
    bad line stops the import, naming it, and nothing is stored.

    Exit codes: 0 done; 2 usage error, a bad line, or a store that is in use or
    cannot be written.
    """
    path = store_path(db) or default_db()
    name = "stdin" if file.name == "<stdin>" else file.name
    made = isinstance(path, Path) and not path.exists()
    try:
        store = reader(path)
    except (StoreError, sqlite3.Error, OSError) as exc:
        fail(f"cannot import into {store_name(path)}: {exc}", EXIT_USAGE)
    lines = ExportReader(file)
    error = ""
    try:
        done = store.import_messages(lines)
    except ValueError as exc:  # a line that is not a message, or that the store refused
        error = f"{name}, line {lines.number}: {exc}; nothing imported"
    except (StoreError, sqlite3.Error) as exc:
        error = f"cannot import into {store_name(path)}: {exc}; nothing imported"
    finally:
        store.close()
    if error:
        if made and isinstance(path, Path):  # no empty store left behind
            for leftover in ("", "-wal", "-shm", ".lock"):
                path.with_name(path.name + leftover).unlink(missing_ok=True)
        fail(error, EXIT_USAGE)
    skipped = f" ({done.skipped} already there, skipped)" if done.skipped else ""
    click.echo(f"imported {done.stored} messages into {store_name(path)}{skipped}")


_FIELDS = {
    "seq", "session", "sender_id", "sender", "recipient", "text", "text_base64", "reply",
    "reply_base64", "received", "delivered", "status", "reason",
}  # fmt: skip


class ExportReader:
    """The messages of an export's lines, in order (blank lines passed over); a
    ``ValueError`` for one that is not. ``number`` is the line read last: the one to
    name when it, or storing it, fails."""

    def __init__(self, lines: Iterable[bytes]) -> None:
        self.lines = lines
        self.number = 0

    def __iter__(self) -> Iterator[StoredMessage]:
        for number, line in enumerate(self.lines, 1):
            self.number = number
            if line.strip():
                yield parse_export_line(line)


def parse_export_line(line: bytes | str) -> StoredMessage:
    """One line of the export format as a message; ``ValueError`` saying what is wrong."""
    try:
        record = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ValueError("not a JSON object") from None
    if not isinstance(record, dict):
        raise ValueError("not a JSON object")
    unknown = sorted(set(record) - _FIELDS)
    if unknown:
        raise ValueError(f"unknown field {unknown[0]!r}")
    seq = _field(record, "seq", int)
    if seq is None or seq < 1:
        raise ValueError("seq must be a number from 1")
    received = _when(record, "received")
    if received is None:
        raise ValueError("received is missing")
    body = _body_of(record, "text")
    if body is None:
        raise ValueError("text or text_base64 is missing")
    if record.get("recipient") is None and record.get("sender_id") is None:
        raise ValueError("sender_id is missing (a message for the server has one)")
    return StoredMessage(
        seq=seq,
        session=_field(record, "session", str),
        sender_id=_field(record, "sender_id", int),
        sender=_field(record, "sender", str),
        recipient=_field(record, "recipient", str),
        body=body,
        reply=_body_of(record, "reply"),
        received=received,
        delivered=_when(record, "delivered"),
        status=_field(record, "status", int),
        reason=_field(record, "reason", str),
    )


def _field(record: dict[str, Any], key: str, kind: type) -> Any:
    value = record.get(key)
    if value is not None and (type(value) is not kind):  # not a bool for an int
        raise ValueError(f"{key} must be {'a number' if kind is int else 'a string'} or null")
    return value


def _when(record: dict[str, Any], key: str) -> float | None:
    value = _field(record, key, str)
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{key} is not an ISO 8601 time: {value!r}") from None
    if moment.tzinfo is None:
        moment = moment.astimezone()
    return moment.timestamp()


def _body_of(record: dict[str, Any], key: str) -> bytes | str | None:
    text: str | None = _field(record, key, str)
    coded: str | None = _field(record, f"{key}_base64", str)
    if text is not None and coded is not None:
        raise ValueError(f"{key} and {key}_base64 are both given")
    if coded is None:
        return text
    try:
        return base64.b64decode(coded, validate=True)
    except binascii.Error:
        raise ValueError(f"{key}_base64 is not base64") from None
