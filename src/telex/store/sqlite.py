"""The SQLite store (the embedded default): what was said, dedup of resent messages, the outbox.

Every message has a ``seq``, the order the server stored it in, and is named by its
sender's ``session`` and ``sender_id``, so a message resent after a reconnect is found
and not stored twice.

Two tables hold them. ``messages`` has one row per message for a client (from another
client or from the server): such a message is *delivered* once its recipient has
acknowledged it, and until then waits in the outbox. ``segments`` holds the messages
for the server itself, which are the bulk: one row per batch that arrived from one
connection in one loop turn, its messages packed in one BLOB (see ``pack``). SQLite
costs about two microseconds a row, more than all the rest of the server's work on a
message; a row per batch makes storing cheap next to receiving.

Bodies keep their kind: text comes back as ``str``, bytes as ``bytes``. This module
knows nothing of the protocol: it takes and gives the records of ``telex.core.records``.

Housekeeping (``prune``, ``export``, ``import_messages``) sees messages, not rows: a
segment's messages were delivered when stored, all at its one ``received`` time, so it
is pruned whole (its ``first_id``/``last_id`` go with it, and dedup stays consistent);
an export lists each message on its own, and an import packs runs of them into
segments again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import os
import sqlite3
import struct
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from ..core.records import Batch, Committed, Found, Item, Pending, Record, SessionState
from .base import PRUNE_BATCH, Imported, Store, StoredMessage, StoreError, in_seq_order

__all__ = [
    "SCHEMA_VERSION",
    "SYNC_LEVELS",
    "SQLiteStore",
    "pack",
    "unpack",
]

SYNC_LEVELS = {"normal": "NORMAL", "full": "FULL"}
"""normal: a commit survives a crash of the process; full: it survives a power loss too."""

MIGRATIONS: list[str] = [
    # version 1
    """
    CREATE TABLE messages (
        seq        INTEGER PRIMARY KEY,  -- the order the server stored them in
        session    TEXT,                 -- the sender's session; NULL for the server's own
        sender_id  INTEGER,              -- the sender's id for it in that session
        sender     TEXT,                 -- the sender's name; NULL: the server
        recipient  TEXT,                 -- the client it is for; NULL: the server
        body       BLOB NOT NULL,        -- TEXT when sent as text
        reply      BLOB,                 -- the reply it was acknowledged with
        received   REAL NOT NULL,        -- unix time the server stored it
        delivered  REAL                  -- unix time its recipient acknowledged it
    );
    CREATE UNIQUE INDEX messages_by_sender ON messages (session, sender_id);
    CREATE INDEX messages_outbox ON messages (recipient, seq) WHERE delivered IS NULL;
    CREATE INDEX messages_by_time ON messages (received);
    """,
    # version 2: messages for the server, packed a batch a row
    """
    DROP INDEX messages_by_time;
    CREATE TABLE segments (
        seq        INTEGER PRIMARY KEY,  -- the seq of its first message; the rest follow on
        count      INTEGER NOT NULL,
        session    TEXT,
        sender     TEXT,
        first_id   INTEGER,              -- the lowest and highest sender_id in it
        last_id    INTEGER,
        received   REAL NOT NULL,
        messages   BLOB NOT NULL         -- see pack()
    );
    CREATE INDEX segments_by_sender ON segments (session, last_id);
    """,
    # version 3: the recipient's answer to a message for a client (status 0 and the
    # reply column when it took it; a rejection's status and reason otherwise)
    """
    ALTER TABLE messages ADD COLUMN status INTEGER;
    ALTER TABLE messages ADD COLUMN reason TEXT;
    """,
    # version 4: what `telex log` filters on (see _filters). An index entry ends with its
    # row's seq, so the entries of one sender or recipient are in seq order: the newest N
    # are read from the end, without a sort.
    """
    CREATE INDEX messages_from ON messages (sender);
    CREATE INDEX messages_to ON messages (recipient);
    CREATE INDEX messages_since ON messages (received);
    CREATE INDEX segments_from ON segments (sender);
    CREATE INDEX segments_since ON segments (received);
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)

_ITEM = struct.Struct(">QIIB")  # sender_id, body length, reply length, flags
_BODY_TEXT, _REPLY_TEXT = 1, 2


def pack(items: Sequence[Item]) -> bytes:
    """Items as one BLOB: for each, ``sender_id:u64 body_len:u32 reply_len:u32 flags:u8``,
    then the body and the reply (UTF-8 when flags say text: bit 0 body, bit 1 reply)."""
    parts: list[bytes] = []
    append = parts.append
    head = _ITEM.pack
    last_reply: Any = None
    reply_bytes = b""
    reply_flag = 0
    for sender_id, body, reply in items:
        flags = reply_flag
        if reply is not last_reply:  # replies repeat: encode each distinct one once
            last_reply = reply
            reply_flag = _REPLY_TEXT if isinstance(reply, str) else 0
            reply_bytes = reply.encode() if reply_flag else bytes(reply)
            flags = reply_flag
        if type(body) is str:
            body = body.encode()
            flags |= _BODY_TEXT
        append(head(sender_id, len(body), len(reply_bytes), flags))
        append(body)
        append(reply_bytes)
    return b"".join(parts)


def segment_message(
    seq: int,
    first: int,
    count: int,
    session: str | None,
    sender: str | None,
    received: float,
    blob: bytes,
) -> StoredMessage:
    """Message ``seq`` of the segment that starts at ``first`` (a message for the server,
    so delivered when it was stored)."""
    sender_id, body, reply = next(itertools.islice(unpack(blob), seq - first, None))
    return StoredMessage(
        seq, session, sender_id, sender, None, body, reply, received, received, 0, None
    )  # fmt: skip


def unpack(blob: bytes) -> Iterator[Item]:
    """The items ``pack`` made, in order, each body and reply of its kind again."""
    pos = 0
    size = _ITEM.size
    while pos < len(blob):
        sender_id, body_len, reply_len, flags = _ITEM.unpack_from(blob, pos)
        pos += size
        body: Any = blob[pos : pos + body_len]
        pos += body_len
        reply: Any = blob[pos : pos + reply_len]
        pos += reply_len
        yield (
            sender_id,
            body.decode() if flags & _BODY_TEXT else body,
            reply.decode() if flags & _REPLY_TEXT else reply,
        )


class SQLiteStore(Store):
    """A SQLite message log in WAL mode, used by one thread at a time (the server runs
    every call on its one store thread)."""

    def __init__(
        self, path: str | Path, *, sync: str = "normal", readonly: bool = False, lock: bool = True
    ) -> None:
        """``readonly`` reads beside a running server (``telex log``); ``lock=False``
        writes beside one (``telex log prune``): it takes no store lock, and its writes
        wait for SQLite's own (the busy timeout)."""
        self.path = Path(path)
        if sync not in SYNC_LEVELS:
            raise ValueError(f"sync is one of {', '.join(SYNC_LEVELS)}, not {sync!r}")
        self.sync = sync
        self._lock: int | None = None
        if readonly:
            uri = f"{self.path.resolve().as_uri()}?mode=ro"
            self.db = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
        else:
            _create_private(self.path)
            self._lock = _hold_lock(self.path) if lock else None
            self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            self.db.execute("PRAGMA busy_timeout = 5000")
            if not readonly:
                self.db.execute("PRAGMA journal_mode = WAL")
                self.db.execute(f"PRAGMA synchronous = {SYNC_LEVELS[sync]}")
                self._migrate()
        except BaseException:
            self.close()  # the lock too
            raise
        self._next_seq = 0  # read when the first commit numbers what it stores

    @property
    def where(self) -> str:
        return str(self.path)

    def _migrate(self) -> None:
        """Bring the schema to SCHEMA_VERSION, one migration at a time, each atomic."""
        version = self.db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{self.path} has schema version {version}; this telex knows {SCHEMA_VERSION}"
            )
        for number in range(version, SCHEMA_VERSION):
            with self._transaction():
                self.db.executescript(f"BEGIN; {MIGRATIONS[number]}")
                self.db.execute(f"PRAGMA user_version = {number + 1}")

    def _transaction(self) -> _Transaction:
        return _Transaction(self.db)

    # -- writing --------------------------------------------------------------------

    def next_seq(self) -> int:
        """The number the next stored message gets: the caller numbers rows itself, so
        that a message can be sent under its number as soon as it is stored."""
        last = self.db.execute(  # rows never overlap: the last segment ends the highest
            "SELECT MAX((SELECT COALESCE(MAX(seq), 0) FROM messages), "
            "COALESCE((SELECT seq + count - 1 FROM segments "
            "WHERE seq = (SELECT MAX(seq) FROM segments)), 0))"
        ).fetchone()[0]
        return int(last) + 1

    def commit(self, batch: Batch, now: float) -> Committed:
        """Store a batch in one transaction, numbered on from the last stored seq.
        Raises ``StoreError`` if it did not commit; then nothing of it is."""
        seq = self._next_seq or self.next_seq()
        inbound: list[int] = []
        envelopes: list[int] = []
        segment_rows = []
        for part in batch.inbound:
            inbound.append(seq)
            segment_rows.append(_segment_row(seq, part.session, part.sender, now, part.items))
            seq += len(part.items)
        rows = []
        for envelope in batch.envelopes:
            envelopes.append(seq)
            rows.append(
                (seq, envelope.session, envelope.sender_id, envelope.sender, envelope.recipient,
                 envelope.body, None, now, None)
            )  # fmt: skip
            seq += 1
        try:
            with self._transaction():
                self.db.execute("BEGIN")
                if rows:
                    self.db.executemany(_INSERT, rows)
                if segment_rows:
                    self.db.executemany(_INSERT_SEGMENT, segment_rows)
                if batch.delivered:
                    answers = batch.answers
                    self.db.executemany(
                        _DELIVERED,
                        [
                            (now, *answers.get(seq, (None, None, None)), seq)
                            for seq in batch.delivered
                        ],
                    )
        except sqlite3.Error as exc:
            raise StoreError(str(exc)) from exc
        self._next_seq = seq
        return Committed(inbound, envelopes)

    def session_state(self, session: str | None, name: str) -> SessionState:
        outbox = tuple(
            Pending(seq, body, sender, from_session, sender_id)
            for seq, from_session, sender_id, sender, body in self.outbox(name)
        )
        return SessionState(0 if session is None else self.last_id(session), outbox)

    def find_many(self, session: str, ids: Sequence[int]) -> dict[int, Found]:
        found: dict[int, Found] = {}
        for msg_id in ids:
            hit = self._find(session, msg_id)
            if hit is not None:
                found[msg_id] = hit
        return found

    # -- reading --------------------------------------------------------------------

    def last_id(self, session: str) -> int:
        """The highest id stored from this session (0 if none): lower ids may be resends."""
        row = self.db.execute(
            "SELECT MAX((SELECT COALESCE(MAX(sender_id), 0) FROM messages WHERE session = ?), "
            "(SELECT COALESCE(MAX(last_id), 0) FROM segments WHERE session = ?))",
            (session, session),
        ).fetchone()
        return int(row[0] or 0)

    def _find(self, session: str, sender_id: int) -> Found | None:
        row = self.db.execute(
            "SELECT recipient, reply, recipient IS NOT NULL AND delivered IS NOT NULL, "
            "status, reason FROM messages WHERE session = ? AND sender_id = ?",
            (session, sender_id),
        ).fetchone()
        if row is not None:
            recipient, reply, delivered, status, reason = row
            return Found(reply, recipient, bool(delivered), status or 0, reason or "")
        for _, blob in self.db.execute(
            "SELECT seq, messages FROM segments "
            "WHERE session = ? AND last_id >= ? AND first_id <= ?",
            (session, sender_id, sender_id),
        ):
            for item_id, _, reply in unpack(blob):
                if item_id == sender_id:
                    return Found(reply)
        return None

    def outboxes(self) -> dict[str, tuple[int, float]]:
        """Each recipient with messages waiting: how many, and when the oldest came."""
        rows = self.db.execute(
            "SELECT recipient, COUNT(*), MIN(received) FROM messages "
            "WHERE delivered IS NULL AND recipient IS NOT NULL GROUP BY recipient"
        )
        return {name: (count, oldest) for name, count, oldest in rows}

    def outbox(self, recipient: str) -> list[tuple[int, str | None, int | None, str | None, Any]]:
        """(seq, session, sender_id, sender, body) of each message waiting for ``recipient``,
        oldest first."""
        return list(
            self.db.execute(
                "SELECT seq, session, sender_id, sender, body FROM messages "
                "WHERE recipient = ? AND delivered IS NULL ORDER BY seq",
                (recipient,),
            )
        )

    def records(
        self,
        *,
        sender: str | None = None,
        recipient: str | None = None,
        since: float | None = None,
        after_seq: int = 0,
        limit: int | None = None,
    ) -> Iterator[Record]:
        """Stored messages, oldest first, filtered. The server is named "server".

        With ``limit``, both tables are read from their newest row back, and only as far
        as the last ``limit`` messages go: ``telex log -n 2`` costs the same on any store."""
        yield from in_seq_order(
            self._message_records(sender, recipient, since, after_seq, limit),
            self._segment_records(sender, recipient, since, after_seq, limit),
            limit,
        )

    def _message_records(
        self,
        sender: str | None,
        recipient: str | None,
        since: float | None,
        after_seq: int,
        limit: int | None,
    ) -> Iterator[Record]:
        """The rows of ``messages`` that match, in seq order (newest first with ``limit``)."""
        filters = self._filters("messages", sender, since, after_seq + 1)
        if filters is None:
            return
        where, args = filters
        if recipient == "server":
            where.append("recipient IS NULL")
        elif recipient is not None:
            where.append("recipient = ?")
            args.append(recipient)
        columns = "seq, sender, recipient, sender_id, body, reply, received, delivered"
        yield from itertools.starmap(
            Record, self.db.execute(*_select("messages", columns, where, args, limit))
        )

    def _segment_records(
        self,
        sender: str | None,
        recipient: str | None,
        since: float | None,
        after_seq: int,
        limit: int | None,
    ) -> Iterator[Record]:
        """The messages of the rows of ``segments`` that match, like ``_message_records``.
        A row holds one or more, so ``limit`` rows are always enough."""
        if recipient not in (None, "server"):
            return  # segments hold the messages for the server only
        first = after_seq + 1
        if after_seq:  # the row holding it starts at or before it
            start = self.db.execute("SELECT MAX(seq) FROM segments WHERE seq <= ?", (first,))
            first = start.fetchone()[0] or first
        filters = self._filters("segments", sender, since, first)
        if filters is None:
            return
        where, args = filters
        where.append("seq + count - 1 > ?")
        args.append(after_seq)
        query = _select("segments", "seq, sender, received, messages", where, args, limit)
        for seq, who, received, blob in self.db.execute(*query):
            records = [
                Record(seq + offset, who, None, sender_id, body, reply, received, received)
                for offset, (sender_id, body, reply) in enumerate(unpack(blob))
                if seq + offset > after_seq
            ]  # ``received`` is the row's, one time for all of them
            yield from reversed(records) if limit is not None else records

    def _filters(
        self, table: str, sender: str | None, since: float | None, first: int
    ) -> tuple[list[str], list[Any]] | None:
        """The WHERE terms both tables share, from seq ``first`` on; None if no row matches.

        The rows since a time are found as a range of seqs, from the lowest seq the index
        on ``received`` gives: the query stays in seq order, so ``ORDER BY seq DESC LIMIT
        n`` reads n rows where a sort by time would read them all. Without that index (a
        store no server has migrated yet, opened read-only) the same queries scan."""
        if since is not None:
            # MIN(+seq): the + keeps SQLite on the index, not its MIN shortcut of walking
            # up from seq 1 to the first row that is recent enough.
            oldest = self.db.execute(
                f"SELECT MIN(+seq) FROM {table} WHERE received >= ?",  # noqa: S608
                (since,),
            ).fetchone()[0]
            if oldest is None:
                return None
            first = max(first, oldest)
        where = ["seq >= ?"]
        args: list[Any] = [first]
        if sender == "server":
            where.append("sender IS NULL")
        elif sender is not None:
            where.append("sender = ?")
            args.append(sender)
        if since is not None:
            where.append("+received >= ?")  # a filter, not an index to walk
            args.append(since)
        return where, args

    # -- housekeeping -----------------------------------------------------------------

    def prune(self, before: float, limit: int = PRUNE_BATCH) -> Iterator[int]:
        """Delete delivered messages received before ``before``, a step of at most about
        ``limit`` messages a transaction (see ``Store.prune``).

        Segments go oldest first, whole rows, found by their index on ``received``. Rows
        of ``messages`` are walked along theirs, ``limit`` index entries a step, from
        where the last step ended: an outbox message there is passed over once a pass,
        not read again by every step."""
        top = self.next_seq() - 1  # the newest message stays: numbering goes on from it
        while True:
            rows = self.db.execute(
                "SELECT seq, count FROM segments WHERE received < ? AND seq + count - 1 < ? "
                "ORDER BY received LIMIT ?",
                (before, top, limit),
            ).fetchall()
            chosen: list[tuple[int]] = []
            total = 0
            for seq, count in rows:
                if chosen and total + count > limit:
                    break
                chosen.append((seq,))
                total += count
            if not chosen:
                break
            self._delete("segments", chosen)
            yield total
            if len(chosen) == len(rows) < limit:
                break
        after: tuple[float, int] = (float("-inf"), 0)  # the (received, seq) walked up to
        while True:
            rows = self.db.execute(
                "SELECT received, seq, delivered IS NOT NULL OR recipient IS NULL "
                "FROM messages WHERE received < ? AND (received, seq) > (?, ?) AND seq < ? "
                "ORDER BY received, seq LIMIT ?",
                (before, *after, top, limit),
            ).fetchall()
            if not rows:
                break
            after = (rows[-1][0], rows[-1][1])
            done = [(seq,) for _, seq, delivered in rows if delivered]
            if done:
                self._delete("messages", done)
            yield len(done)
            if len(rows) < limit:
                break

    def _delete(self, table: str, seqs: list[tuple[int]]) -> None:
        """Delete these rows in one transaction (waiting for a server's commit, if one
        is writing)."""
        try:
            with self._transaction():
                self.db.execute("BEGIN IMMEDIATE")
                self.db.executemany(f"DELETE FROM {table} WHERE seq = ?", seqs)  # noqa: S608
        except sqlite3.Error as exc:
            raise StoreError(str(exc)) from exc

    def prunable(self, before: float) -> int:
        top = self.next_seq() - 1
        packed = self.db.execute(
            "SELECT COALESCE(SUM(count), 0) FROM segments WHERE received < ? "
            "AND seq + count - 1 < ?",
            (before, top),
        ).fetchone()[0]
        single = self.db.execute(  # +seq: walk the index on received, not every row
            "SELECT COUNT(*) FROM messages WHERE received < ? "
            "AND (delivered IS NOT NULL OR recipient IS NULL) AND +seq < ?",
            (before, top),
        ).fetchone()[0]
        return int(packed) + int(single)

    def export(
        self,
        *,
        sender: str | None = None,
        recipient: str | None = None,
        since: float | None = None,
    ) -> Iterator[StoredMessage]:
        """Every message, seq order, both tables merged, in one read transaction: what a
        server stores meanwhile is not in it."""
        self.db.execute("BEGIN")
        try:
            yield from in_seq_order(
                self._message_exports(sender, recipient, since),
                self._segment_exports(sender, recipient, since),
            )
        finally:
            if self.db.in_transaction:
                self.db.execute("COMMIT")

    def _message_exports(
        self, sender: str | None, recipient: str | None, since: float | None
    ) -> Iterator[StoredMessage]:
        filters = self._filters("messages", sender, since, 1)
        if filters is None:
            return
        where, args = filters
        if recipient == "server":
            where.append("recipient IS NULL")
        elif recipient is not None:
            where.append("recipient = ?")
            args.append(recipient)
        columns = (
            "seq, session, sender_id, sender, recipient, body, reply, received, delivered, "
            "status, reason"
        )
        yield from itertools.starmap(
            StoredMessage, self.db.execute(*_select("messages", columns, where, args, None))
        )

    def _segment_exports(
        self, sender: str | None, recipient: str | None, since: float | None
    ) -> Iterator[StoredMessage]:
        if recipient not in (None, "server"):
            return
        filters = self._filters("segments", sender, since, 1)
        if filters is None:
            return
        where, args = filters
        columns = "seq, session, sender, received, messages"
        for seq, session, who, received, blob in self.db.execute(
            *_select("segments", columns, where, args, None)
        ):
            for offset, (sender_id, body, reply) in enumerate(unpack(blob)):
                yield StoredMessage(
                    seq + offset, session, sender_id, who, None, body, reply, received,
                    received, 0, None
                )  # fmt: skip

    def import_messages(self, messages: Iterable[StoredMessage]) -> Imported:
        top = self.next_seq() - 1
        stored = skipped = 0
        run: list[StoredMessage] = []  # messages for the server: the next segment row
        run_ids: set[int] = set()  # their sender_ids
        try:
            with self._transaction():
                self.db.execute("BEGIN IMMEDIATE")
                for message in messages:
                    if self._stored_already(message, run, run_ids):
                        skipped += 1
                        continue
                    seq = message.seq if message.seq > top else top + 1
                    top = seq
                    message = dataclasses.replace(message, seq=seq)
                    if run and (len(run) >= _SEGMENT_MAX or not _same_segment(run[-1], message)):
                        self._insert_run(run)
                        run = []
                        run_ids.clear()
                    if message.recipient is None:
                        if message.sender_id is None:
                            raise ValueError(f"message {seq} for the server has no sender_id")
                        run.append(message)
                        run_ids.add(message.sender_id)
                    else:
                        self.db.execute(_INSERT_ALL, _message_row(message))
                    stored += 1
                self._insert_run(run)
        except sqlite3.Error as exc:
            raise StoreError(str(exc)) from exc
        finally:
            self._next_seq = 0  # read again: the import numbered rows too
        return Imported(stored, skipped)

    def _stored_already(
        self, message: StoredMessage, run: list[StoredMessage], run_ids: set[int]
    ) -> bool:
        """Its (session, sender_id) is stored; or, without a session, the same message
        is stored under its seq."""
        session, sender_id = message.session, message.sender_id
        if session is not None and sender_id is not None:
            if run and run[0].session == session and sender_id in run_ids:
                return True
            return self._find(session, sender_id) is not None
        there = None
        if run and run[0].seq <= message.seq <= run[-1].seq:  # a run's seqs follow on
            there = run[message.seq - run[0].seq]
        else:
            there = self._at(message.seq)
        return (
            there is not None
            and (there.sender, there.recipient, there.body)
            == (message.sender, message.recipient, message.body)
            and abs(there.received - message.received) < 0.001  # the file's times: ms or µs
        )

    def _at(self, seq: int) -> StoredMessage | None:
        """The message stored under ``seq``, if any."""
        row = self.db.execute(
            "SELECT seq, session, sender_id, sender, recipient, body, reply, received, "
            "delivered, status, reason FROM messages WHERE seq = ?",
            (seq,),
        ).fetchone()
        if row is not None:
            return StoredMessage(*row)
        row = self.db.execute(
            "SELECT seq, count, session, sender, received, messages FROM segments "
            "WHERE seq <= ? ORDER BY seq DESC LIMIT 1",
            (seq,),
        ).fetchone()
        if row is None or row[0] + row[1] <= seq:
            return None
        return segment_message(seq, *row)

    def _insert_run(self, run: list[StoredMessage]) -> None:
        """Messages for the server as one segment row (``_same_segment`` made the run)."""
        if run:
            first = run[0]
            items = [(m.sender_id or 0, m.body, m.reply) for m in run]  # never None here
            row = _segment_row(first.seq, first.session, first.sender, first.received, items)
            self.db.execute(_INSERT_SEGMENT, row)

    def close(self) -> None:
        self.db.close()
        if self._lock is not None:
            os.close(self._lock)  # and with it the lock
            self._lock = None


_INSERT = (
    "INSERT INTO messages (seq, session, sender_id, sender, recipient, body, reply, received, "
    "delivered) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_INSERT_ALL = (
    "INSERT INTO messages (seq, session, sender_id, sender, recipient, body, reply, received, "
    "delivered, status, reason) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_DELIVERED = "UPDATE messages SET delivered = ?, status = ?, reason = ?, reply = ? WHERE seq = ?"
_INSERT_SEGMENT = (
    "INSERT INTO segments (seq, count, session, sender, first_id, last_id, received, messages) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)


def _segment_row(
    seq: int, session: str | None, sender: str | None, received: float, items: Sequence[Item]
) -> tuple[Any, ...]:
    ids = [item[0] for item in items]
    return (seq, len(items), session, sender, min(ids), max(ids), received, pack(items))


def _message_row(message: StoredMessage) -> tuple[Any, ...]:
    m = message
    return (m.seq, m.session, m.sender_id, m.sender, m.recipient, m.body, m.reply, m.received,
            m.delivered, m.status, m.reason)  # fmt: skip


_SEGMENT_MAX = 10_000  # messages an imported segment row holds at most


def _same_segment(last: StoredMessage, message: StoredMessage) -> bool:
    """Whether ``message`` goes in the segment row ``last`` ends: both for the server,
    from one session and sender at one time, their seqs one after the other."""
    return (
        last.recipient is None
        and message.recipient is None
        and message.seq == last.seq + 1
        and (message.session, message.sender, message.received)
        == (last.session, last.sender, last.received)
    )


def _select(
    table: str, columns: str, where: list[str], args: list[Any], limit: int | None
) -> tuple[str, list[Any]]:
    """The query and its parameters for ``columns`` of ``table``'s rows that match, in seq
    order, or the last ``limit`` of them newest first. The WHERE terms are fixed strings
    of this module; every value is a parameter."""
    query = f"SELECT {columns} FROM {table} WHERE {' AND '.join(where)} ORDER BY seq"  # noqa: S608
    if limit is None:
        return query, args
    return f"{query} DESC LIMIT ?", [*args, limit]


def _create_private(path: Path) -> None:
    """A new store is its owner's alone: the file 0600 (SQLite gives its -wal and -shm
    files the same mode) in a folder made 0700; an existing one is left as it is."""
    if not path.parent.exists():
        path.parent.mkdir(mode=0o700, parents=True)
    if not path.exists():
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))


def _hold_lock(path: Path) -> int | None:
    """One writer a store: an exclusive lock on ``<store>.lock`` (the system drops it when
    the process ends, crash or not), holding the pid of the server that has it."""
    try:
        import fcntl
    except ImportError:  # not on this system: nothing more than SQLite's own locking
        return None
    lock_path = path.with_name(path.name + ".lock")
    descriptor = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.read(descriptor, 32).decode(errors="replace").strip() or "?"
        os.close(descriptor)
        raise StoreError(f"{path} is in use by another telex server (pid {holder})") from None
    os.ftruncate(descriptor, 0)
    os.write(descriptor, f"{os.getpid()}\n".encode())
    return descriptor


class _Transaction:
    """COMMIT on success, ROLLBACK on failure; the caller says BEGIN."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: object, *rest: object) -> None:
        if not self.db.in_transaction:
            return
        if kind is None:
            try:
                self.db.execute("COMMIT")
            except sqlite3.Error:
                self._rollback()  # the COMMIT's error is the one to tell (a full disk)
                raise
        else:
            self._rollback()

    def _rollback(self) -> None:
        """Roll back what is left; SQLite may have rolled back already (a full disk)."""
        if self.db.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                self.db.execute("ROLLBACK")
