"""The PostgreSQL store: the same ``Store`` as SQLite's, in a database a server reaches
by URL (``telex serve --db postgresql://USER@HOST/DB``).

Why psycopg 3, and its synchronous API: the server calls its store on one thread of
its own, one call at a time, and acknowledges nothing before ``commit`` returns (see
``telex.store.base``). A blocking driver on that thread fits the server as it is: no
second event loop, no change to the server, the same calls as ``SQLiteStore``. An
asyncio driver (asyncpg) would need either the server's loop (whose turns must never
wait for a disk) or a loop of its own on the store thread, for no gain: one thread
sends one transaction at a time either way. psycopg 3 also gives COPY
(``cursor.copy``, binary too), pipelined ``executemany`` and PostgreSQL's own error
classes.

Two tables hold the messages, as in SQLite and for the same reason. ``telex_messages``
has a row per message for a client (from another client or from the server), which
waits in its recipient's outbox until answered. ``telex_segments`` holds the messages
for the server itself, the bulk: a row per ``Inbound`` (one connection's messages of
one loop turn), its messages packed in one ``bytea`` by ``telex.store.sqlite.pack``.
Measured (bench/postgres.py): a row per message, even written with COPY, costs
PostgreSQL about 6 µs of index upkeep and psycopg about 5 µs of Python per message,
and held one server near 90,000 msg/s; a row per batch, written with binary COPY,
makes storing cheap next to receiving again.

``seq`` comes from the sequence ``telex_seq``: a commit takes one block of numbers for
everything it stores (``setval(nextval() + n - 1)``), so the items of one ``Inbound``
follow on, as ``Committed`` says; a commit that fails leaves a gap (numbers are in
store order; gaps are allowed). The commit holds a transaction-scoped advisory lock
from numbering to COMMIT, so that commits are numbered in the order they commit, even
from several servers on one database.

Dedup: ``telex_messages`` has a UNIQUE constraint on (session, sender_id), so a message
for a client resent with a key already stored fails the commit (``StoreError``; the
server then stores the batch again part by part). A segment keeps the lowest and
highest sender_id it holds, indexed with its session: ``find_many`` looks there, as
the broker does before it stores a resent message (the same as SQLite; no constraint
spans a segment's packed messages). Bodies and replies are ``bytea``; ``kinds`` says
which were text (bit 0 the body, bit 1 the reply), so each comes back as it was sent,
NUL characters included. A message for the server counts as delivered when stored.

Durability is the database's: a commit returns once PostgreSQL has it under its own
``synchronous_commit`` setting (on by default: flushed to its WAL). A database set to
``synchronous_commit = off`` trades the last moments before a PostgreSQL crash for
throughput; telex leaves that choice to whoever runs the database.

The tables are created and migrated by telex: ``telex_schema`` holds the version;
opening a store upgrades an older schema and refuses a newer one.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TypeVar

import psycopg

from ..core.records import (
    Answered,
    Batch,
    Committed,
    Envelope,
    Found,
    Item,
    Pending,
    Record,
    SessionState,
)
from .base import (
    PRUNE_BATCH,
    READ_PAGE,
    Imported,
    SharedStore,
    StoredMessage,
    StoreError,
    Unreachable,
    WakeUp,
    in_seq_order,
    public_url,
)
from .sqlite import pack, segment_message, unpack

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "PostgresStore"]

MIGRATIONS: list[str] = [
    # version 1
    """
    CREATE SEQUENCE telex_seq;
    CREATE TABLE telex_messages (
        seq        bigint PRIMARY KEY,     -- the order the store stored them in
        session    text,                   -- the sender's session; NULL: no key
        sender_id  bigint,                 -- the sender's id for it in that session
        sender     text,                   -- NULL: the server
        recipient  text,                   -- NULL: the server
        body       bytea NOT NULL,
        reply      bytea,                  -- what it was acknowledged with
        kinds      smallint NOT NULL,      -- bit 0: body is text; bit 1: reply is text
        received   double precision NOT NULL,  -- unix times
        delivered  double precision,       -- NULL: waiting in its recipient's outbox
        status     integer,                -- the recipient's answer
        reason     text,
        UNIQUE (session, sender_id)
    );
    CREATE INDEX telex_messages_outbox ON telex_messages (recipient, seq)
        WHERE delivered IS NULL;
    CREATE INDEX telex_messages_from ON telex_messages (sender, seq);
    CREATE INDEX telex_messages_to ON telex_messages (recipient, seq);
    CREATE INDEX telex_messages_since ON telex_messages (received, seq);
    CREATE TABLE telex_segments (
        seq        bigint PRIMARY KEY,     -- the seq of its first message; the rest follow on
        count      integer NOT NULL,
        session    text,
        sender     text,
        first_id   bigint NOT NULL,        -- the lowest and highest sender_id in it
        last_id    bigint NOT NULL,
        received   double precision NOT NULL,  -- and delivered: stored is delivered
        messages   bytea NOT NULL          -- telex.store.sqlite.pack's format
    );
    CREATE INDEX telex_segments_by_sender ON telex_segments (session, last_id);
    CREATE INDEX telex_segments_from ON telex_segments (sender, seq);
    CREATE INDEX telex_segments_since ON telex_segments (received, seq);
    """,
    # version 2: a cluster of servers on one database
    """
    ALTER TABLE telex_messages ADD COLUMN owed boolean NOT NULL DEFAULT false;
    CREATE INDEX telex_messages_owed ON telex_messages (session, seq) WHERE owed;
    CREATE TABLE telex_servers (
        id          text PRIMARY KEY,
        channel     text NOT NULL,         -- what it LISTENs on
        lease_until timestamptz NOT NULL,  -- the database's clock; past it, it is gone
        joined      timestamptz NOT NULL DEFAULT now()
    );
    CREATE TABLE telex_names (
        name    text PRIMARY KEY,          -- held by one connection in the cluster
        server  text NOT NULL,             -- of the server it is connected to
        session text
    );
    CREATE INDEX telex_names_server ON telex_names (server);
    CREATE INDEX telex_names_session ON telex_names (session);
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)

_LOCK = 0x74656C6578  # "telex": the advisory lock commits and migrations hold
_BODY_TEXT, _REPLY_TEXT = 1, 2
_PAGE = READ_PAGE  # rows a read fetches at a time
_COLUMNS = (
    "seq, session, sender_id, sender, recipient, body, reply, kinds, received, delivered, "
    "status, reason"
)
_COPY = f"COPY telex_messages ({_COLUMNS}) FROM STDIN"
_NUMBER = (
    b"BEGIN; WITH locked AS (SELECT pg_advisory_xact_lock(%d)) "
    b"SELECT setval('telex_seq', nextval('telex_seq') + %d - 1), pg_current_xact_id()::text "
    b"FROM locked"
)
"""The transaction, its lock (the CTE's row is needed before ``setval`` runs), and the
last of a block of seqs, in one round trip: the simple query protocol takes several
statements, without parameters, so the two numbers are written in (integers only)."""
_RECEIPTS_ONLY = b"SET LOCAL synchronous_commit TO off"
"""A transaction of receipts given only: its COMMIT does not wait for the disk. A crash
of PostgreSQL may lose the last of them, and then a receipt is given again (its
sender's client hands it over once). Recipients' answers (``delivered``) do wait: one
lost would send a message again, and a recipient that came back as a new session
would take it twice."""
_SEGMENT_COLUMNS = "seq, count, session, sender, first_id, last_id, received, messages"
_COPY_SEGMENTS = f"COPY telex_segments ({_SEGMENT_COLUMNS}) FROM STDIN (FORMAT BINARY)"
_SEGMENT_TYPES = ["int8", "int4", "text", "text", "int8", "int8", "float8", "bytea"]
_WAKE = (
    "SELECT array_agg(DISTINCT n.name) "
    "FILTER (WHERE s.lease_until > now() AND n.server <> %(me)s), "
    "pg_notify(s.channel, 'd ' || min(e.seq) || ' ' || max(e.seq)) "
    "FROM unnest(%(recipients)s::text[], %(seqs)s::bigint[]) AS e (recipient, seq) "
    "JOIN telex_names n ON n.name = e.recipient JOIN telex_servers s ON s.id = n.server "
    "GROUP BY s.channel"
)
"""Wake each server holding a recipient, this one too: 'd LOW HIGH', the seqs to read.
Gives the recipients other servers hold. Every server delivers what is stored for its
clients when its wake-up comes, its own commits' included: the wake-ups come in the
order the commits were numbered, so a client gets its messages in seq order (ids on a
connection only increase), whichever server stored them. A server whose lease ran
out is woken too: it may be back, and nobody else holds those names."""
_CARRIED = 16  # envelopes a wake-up may carry (when their bodies are small)
_BY_RECIPIENT = (
    "SELECT n.name, n.server, s.channel, s.lease_until, "
    "json_agg(json_build_array(e.seq, e.recipient, e.session, e.sender_id, e.sender, "
    "encode(e.body, 'base64'), e.kinds) ORDER BY e.seq)::text AS carried, "
    "min(e.seq) AS low, max(e.seq) AS high "
    "FROM {messages} JOIN telex_names n ON n.name = e.recipient "
    "JOIN telex_servers s ON s.id = n.server GROUP BY n.name, n.server, s.channel, s.lease_until"
)
"""Messages ``e`` (from ``{messages}``) by recipient and its server: as a JSON list, and
their lowest and highest seq."""
_HELD_ELSEWHERE = "array_agg(name) FILTER (WHERE lease_until > now() AND server <> %(me)s)"
"""From ``w`` (``_BY_RECIPIENT``): the recipients another live server holds."""
_NOTIFY_CARRIED = (
    "pg_notify(channel, CASE WHEN sum(octet_length(carried)) < 7000 "
    "THEN 'D [' || string_agg(substr(carried, 2, length(carried) - 2), ',') || ']' "
    "ELSE 'd ' || min(low) || ' ' || max(high) END) FROM w GROUP BY channel"
)
"""From ``w``: one NOTIFY a server, carrying its messages while they fit in the payload
(8000 bytes), else naming their range."""
_WAKE_WITH_MESSAGES = (
    "WITH w AS ("
    + _BY_RECIPIENT.format(
        messages="unnest(%(recipients)s::text[], %(seqs)s::bigint[], %(sessions)s::text[], "
        "%(ids)s::bigint[], %(senders)s::text[], %(bodies)s::bytea[], %(kinds)s::int[]) "
        "AS e (recipient, seq, session, sender_id, sender, body, kinds)"
    )
    + f") SELECT {_HELD_ELSEWHERE}, {_NOTIFY_CARRIED}"
)
"""As ``_WAKE``, with the messages themselves in the NOTIFY ('D' and a JSON list of
[seq, recipient, session, sender_id, sender, base64 body, kinds]) while they fit in
its payload: the woken server need not read them."""
_STORE_ROUTED = (  # built from the constants above only: no value is written in
    "WITH locked AS (SELECT pg_advisory_xact_lock(%(lock)s)), "  # noqa: S608
    "block AS (SELECT setval('telex_seq', nextval('telex_seq') + %(n)s - 1) - %(n)s AS base "
    "FROM locked), "
    "e AS (SELECT block.base + u.ord AS seq, u.recipient, u.session, u.sender_id, u.sender, "
    "u.body, u.kinds FROM block, unnest(%(recipients)s::text[], %(sessions)s::text[], "
    "%(ids)s::bigint[], %(senders)s::text[], %(bodies)s::bytea[], %(kinds)s::int[]) "
    "WITH ORDINALITY AS u (recipient, session, sender_id, sender, body, kinds, ord)), "
    "stored AS (INSERT INTO telex_messages (seq, session, sender_id, sender, recipient, body, "
    "kinds, received) SELECT seq, session, sender_id, sender, recipient, body, kinds, "
    "%(now)s FROM e), "
    "w AS (" + _BY_RECIPIENT.format(messages="e") + "), "  # noqa: S608
    f"woken AS (SELECT {_HELD_ELSEWHERE} AS names, {_NOTIFY_CARRIED}) "
    "SELECT (SELECT base FROM block), pg_current_xact_id()::text, "
    "(SELECT array_agg(name) FROM woken, unnest(woken.names) AS name)"
)
"""A few messages for clients in one statement: the lock, a block of seqs, the rows,
and the wake-ups carrying them (as ``_WAKE_WITH_MESSAGES``); it gives the block's base
(the seqs are base + 1 ...), the transaction's id, and the recipients held elsewhere."""
_WAKE_SENDERS = (
    "WITH r AS (SELECT s.channel, json_build_array(m.seq, m.session, m.sender_id, "
    "m.status, m.reason, encode(m.reply, 'base64'), m.kinds)::text AS receipt "
    "FROM telex_messages m JOIN telex_names n ON n.session = m.session "
    "JOIN telex_servers s ON s.id = n.server "
    "WHERE m.seq = ANY(%s) AND m.owed AND n.server <> %s) "
    "SELECT pg_notify(channel, CASE WHEN sum(octet_length(receipt)) < 7000 "
    "THEN 'R [' || string_agg(receipt, ',') || ']' ELSE 'r' END) FROM r GROUP BY channel"
)
"""Wake the server of each sender whose receipt is owed: 'R' and the receipts (a JSON
list of [seq, session, sender_id, status, reason, base64 reply, kinds]) while they fit,
else 'r' (read them)."""
_CONNECTION: dict[str, Any] = {
    "connect_timeout": 5,
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 2,
    "keepalives_count": 3,
    "tcp_user_timeout": 10_000,
}
"""libpq's settings for every connection: a database that goes silent (a host gone, a
network cut) is noticed within seconds, as one that refuses, not after minutes."""
_SESSION = (
    "-c tcp_keepalives_idle=5 -c tcp_keepalives_interval=2 -c tcp_keepalives_count=3 "
    "-c tcp_user_timeout=10000 -c idle_in_transaction_session_timeout=15s "
    "-c lock_timeout=15s"
)
"""PostgreSQL's side of it: a server cut off mid-transaction holds the commit lock (the
advisory lock every commit that stores messages takes) only until PostgreSQL notices
(keepalives, an idle transaction ended after 15 s), and a commit or a handshake that
waits for a lock longer than 15 s fails (its messages refused, never acknowledged)
instead of waiting for ever."""
MINIMUM_VERSION = 130000  # PostgreSQL 13: pg_current_xact_id, pg_xact_status
RETRY_FOR = 10.0
"""Seconds a call waits for an unreachable database (restarting, say) before it fails."""
HANDSHAKE_WAIT = 4.0
"""At most this long for a client's handshake (its name and session), well inside the
client's connect timeout: a refusal it can retry beats a handshake that times out."""
_T = TypeVar("_T")


class PostgresStore(SharedStore):
    """Messages in a PostgreSQL database, through one connection used by one thread at a
    time (the server's store thread). A lost connection is opened again: a call that
    finds the database unreachable tries again for up to ``retry_for`` seconds before
    it raises ``StoreError``. Several servers share one database as a cluster (``join``).
    """

    def __init__(self, url: str, *, retry_for: float = RETRY_FOR) -> None:
        self.url = url
        self.retry_for = retry_for
        self._until: float | None = None  # a deadline for every call (a handshake's)
        self.server_id: str | None = None  # once it joined a cluster
        self.channel = ""
        self.lease = 0.0
        self._db: psycopg.Connection[tuple[Any, ...]] | None = None
        self._connect()
        try:
            self._migrate()
        except BaseException:
            self.close()
            raise

    @property
    def where(self) -> str:
        return public_url(self.url)

    # -- the connection -----------------------------------------------------------------

    def _connect(self) -> psycopg.Connection[tuple[Any, ...]]:
        try:
            self._db = psycopg.connect(self.url, autocommit=True, **self._settings())
        except psycopg.Error as exc:  # libpq: "connection failed: ... failed: WHY\n\tHINT"
            first = str(exc).strip().split("\n")[0]
            reason = first.rpartition("failed: ")[2].strip() or type(exc).__name__
            raise Unreachable(f"cannot reach the database {self.where}: {reason}") from None
        return self._db

    def _settings(self) -> dict[str, Any]:
        """``_CONNECTION``, and ``_SESSION`` after the URL's own ``options``, if any."""
        given = psycopg.conninfo.conninfo_to_dict(self.url).get("options")
        return {**_CONNECTION, "options": f"{given} {_SESSION}" if given else _SESSION}

    def _again(self, call: Callable[[], _T]) -> _T:
        """``call()``; while the database cannot be reached (a refused connection, one
        lost mid-call) try again, for up to ``retry_for`` seconds. Any other error, or
        the time up, is a ``StoreError``."""
        deadline = self._until or time.monotonic() + self.retry_for
        pause = 0.05
        while True:
            try:
                return call()
            except Unreachable:
                if time.monotonic() >= deadline:
                    raise
            except _TryAgain as exc:
                if time.monotonic() >= deadline:
                    raise Unreachable(str(exc)) from exc
            except psycopg.Error as exc:
                db = self._db
                lost = db is None or db.closed or db.broken
                if not lost:
                    raise StoreError(_reason(exc)) from exc
                if time.monotonic() >= deadline:
                    raise Unreachable(f"the database is unreachable: {_reason(exc)}") from exc
            time.sleep(pause)
            pause = min(pause * 2, 1.0)

    @property
    def db(self) -> psycopg.Connection[tuple[Any, ...]]:
        """The connection, opened again if it was lost."""
        if self._db is None or self._db.closed or self._db.broken:
            if self._db is not None:
                self._db.close()
            return self._connect()
        return self._db

    def _migrate(self) -> None:
        """Bring the schema to SCHEMA_VERSION in one transaction, under the lock (two
        servers starting together migrate once)."""
        try:
            with self.db.transaction():
                self.db.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK,))
                self.db.execute("CREATE TABLE IF NOT EXISTS telex_schema (version integer)")
                server = self.db.info.server_version
                if server < MINIMUM_VERSION:
                    raise StoreError(
                        f"{self.where} runs PostgreSQL {server // 10000}; telex needs 13 or newer"
                    )
                row = self.db.execute("SELECT max(version) FROM telex_schema").fetchone()
                version = int(row[0]) if row and row[0] is not None else 0
                if version > SCHEMA_VERSION:
                    raise StoreError(
                        f"{self.where} has telex schema version {version}; "
                        f"this telex knows {SCHEMA_VERSION}"
                    )
                for number in range(version, SCHEMA_VERSION):
                    self.db.execute(MIGRATIONS[number].encode())
                if version < SCHEMA_VERSION:
                    self.db.execute("DELETE FROM telex_schema")
                    self.db.execute(
                        "INSERT INTO telex_schema (version) VALUES (%s)", (SCHEMA_VERSION,)
                    )
        except psycopg.Error as exc:
            raise StoreError(_reason(exc)) from exc

    # -- writing ------------------------------------------------------------------------

    def commit(self, batch: Batch, now: float) -> Committed:
        """Store a batch in one transaction: its messages with one COPY, numbered from a
        block of ``telex_seq`` taken under the advisory lock. Raises ``StoreError`` if
        it did not commit; then nothing of it is.

        While the database cannot be reached it tries again, for up to ``retry_for``
        seconds. A connection lost while COMMIT was on its way leaves the outcome in
        doubt: once the database answers again, the batch's first row says whether it
        committed (``_landed``), so that the batch is stored exactly once."""

        def once() -> Committed:
            try:
                return self._commit(batch, now)
            except _InDoubt as doubt:
                xid, result = doubt.xid, doubt.result
                if self._again(lambda: self._landed(batch, result, now, xid)):
                    return result
                raise _TryAgain(f"the commit was lost ({doubt}): not stored") from doubt

        return self._again(once)

    def _landed(self, batch: Batch, result: Committed, now: float, xid: str) -> bool:
        """Whether a batch whose COMMIT answer was lost is stored: its first row, by its
        seq and its time (``now``, to the microsecond). Not the transaction id alone:
        after a crash PostgreSQL hands out again the ids (and seqs) it had not logged,
        so another transaction may have committed under ours. While ours may still be
        committing (its id in progress), it waits."""
        if result.inbound:
            part = batch.inbound[0]
            row = self.db.execute(
                "SELECT 1 FROM telex_segments WHERE seq = %s AND received = %s AND count = %s",
                (result.inbound[0], now, len(part.items)),
            ).fetchone()
        else:
            row = self.db.execute(
                "SELECT 1 FROM telex_messages WHERE seq = %s AND received = %s AND recipient = %s",
                (result.envelopes[0], now, batch.envelopes[0].recipient),
            ).fetchone()
        if row is not None:
            return True
        self._xact_status(xid)  # raises _TryAgain while it is in progress
        return False

    def _xact_status(self, xid: str) -> str | None:
        """'committed' or 'aborted' (None: too old to know), once it is either."""
        try:
            row = self.db.execute("SELECT pg_xact_status(%s::xid8)", (xid,)).fetchone()
        except psycopg.errors.InvalidParameterValue:  # "in the future": after a crash,
            return "aborted"  # the database never logged it, so it never committed
        status = None if row is None else row[0]
        if status == "in progress":  # its backend has not yet seen the connection go
            raise _TryAgain("the lost commit is still in progress")
        return status

    def _commit(self, batch: Batch, now: float) -> Committed:
        count = sum(len(part.items) for part in batch.inbound) + len(batch.envelopes)
        inbound: list[int] = []
        envelopes: list[int] = []
        elsewhere: frozenset[str] = frozenset()
        if not count:
            return self._commit_marks(batch, now)
        if not batch.inbound and self._carried(batch):
            return self._commit_routed(batch, now)
        db = self.db
        with _Transaction(db) as transaction, db.cursor() as cursor:
            # BEGIN, the lock, the numbers and the transaction's id: one round trip
            cursor.execute(_NUMBER % (_LOCK, count))
            cursor.nextset()
            row = cursor.fetchone()
            assert row is not None
            transaction.xid = row[1]
            seq = int(row[0]) - count + 1
            if batch.inbound:
                with cursor.copy(_COPY_SEGMENTS) as copy:
                    copy.set_types(_SEGMENT_TYPES)
                    for part in batch.inbound:
                        inbound.append(seq)
                        copy.write_row(_segment_row(seq, part.session, part.sender, now,
                                                    part.items))  # fmt: skip
                        seq += len(part.items)
            if batch.envelopes:
                with cursor.copy(_COPY) as copy:
                    write = copy.write_row
                    for envelope in batch.envelopes:
                        envelopes.append(seq)
                        body, _, kinds = _encode(envelope.body, None)
                        write(
                            (seq, envelope.session, envelope.sender_id, envelope.sender,
                             envelope.recipient, body, None, kinds, now, None, None, None)
                        )  # fmt: skip
                        seq += 1
                if self.server_id is not None:
                    elsewhere = self._wake_recipients(cursor, batch, envelopes)
            self._mark(cursor, batch, now)
            transaction.result = Committed(inbound, envelopes, elsewhere)
        return transaction.result

    def _carried(self, batch: Batch) -> bool:
        """Few envelopes with small bodies: their wake-ups carry them."""
        envelopes = batch.envelopes
        return len(envelopes) <= _CARRIED and sum(_size(e.body) for e in envelopes) <= 2048

    def _commit_routed(self, batch: Batch, now: float) -> Committed:
        """A few small messages for clients (the round trip of one message to another
        client): numbered, stored and their servers woken by one statement
        (``_STORE_ROUTED``), sent in one round trip with the marks, then COMMIT."""
        envelopes = batch.envelopes
        db = self.db
        with _Transaction(db) as transaction, db.cursor() as cursor, db.cursor() as other:
            with db.pipeline() as pipeline:
                other.execute(b"BEGIN")
                cursor.execute(
                    _STORE_ROUTED,
                    {"lock": _LOCK, "n": len(envelopes), "now": now, "me": self.server_id,
                     **_envelope_columns(envelopes)},
                )  # fmt: skip
                self._mark(other, batch, now)
                pipeline.sync()
            row = cursor.fetchone()
            assert row is not None
            base, transaction.xid, woken = row
            seqs = list(range(base + 1, base + 1 + len(envelopes)))
            transaction.result = Committed([], seqs, frozenset(woken or ()))
        return transaction.result

    def _commit_marks(self, batch: Batch, now: float) -> Committed:
        """A batch of marks only (delivered, receipted): one round trip (a pipeline); its
        COMMIT waits for the disk unless it holds receipts only (``_RECEIPTS_ONLY``).
        Storing marks twice is storing them once, so whatever goes wrong (a connection
        lost mid-pipeline, a database shutting down) they are simply tried again, on a
        new connection, for as long as a commit waits: an answer is not dropped."""
        db = self.db
        try:
            with db.pipeline(), db.cursor() as cursor:
                cursor.execute(b"BEGIN")
                if not batch.delivered:
                    cursor.execute(_RECEIPTS_ONLY)
                self._mark(cursor, batch, now)
                cursor.execute(b"COMMIT")
        except psycopg.Error as exc:
            db.close()  # whatever state it is in: the next try opens a new one
            raise _TryAgain(f"the marks were not stored: {_reason(exc)}") from exc
        return Committed([], [])

    def _mark(self, cursor: psycopg.Cursor[tuple[Any, ...]], batch: Batch, now: float) -> None:
        """The batch's marks: the recipients' answers, and the receipts given."""
        if batch.delivered:
            self._mark_delivered(cursor, batch, now)
        given = set(batch.receipted).difference(batch.delivered)  # those: with the answers
        if given:
            cursor.execute(
                "UPDATE telex_messages SET owed = false WHERE seq = ANY(%s) AND owed",
                (list(given),),
            )

    def _wake_recipients(
        self, cursor: psycopg.Cursor[tuple[Any, ...]], batch: Batch, seqs: list[int]
    ) -> frozenset[str]:
        """One NOTIFY per server holding a recipient of the batch, this one included
        (sent when the transaction commits): the messages themselves when they are few
        and small (it need not read them), else the seqs it should read; the recipients
        other servers hold."""
        given = {"seqs": seqs, "me": self.server_id}
        if self._carried(batch):
            cursor.execute(_WAKE_WITH_MESSAGES, {**given, **_envelope_columns(batch.envelopes)})
        else:
            recipients = [envelope.recipient for envelope in batch.envelopes]
            cursor.execute(_WAKE, {**given, "recipients": recipients})
        return frozenset(name for names, _ in cursor.fetchall() for name in names or ())

    def _mark_delivered(
        self, cursor: psycopg.Cursor[tuple[Any, ...]], batch: Batch, now: float
    ) -> None:
        """The recipients' answers; a receipt not given with it is owed to its sender's
        session, and the server that holds that session is woken to give it."""
        answers = batch.answers
        given = set(batch.receipted)
        rows = []
        for seq in batch.delivered:
            status, reason, reply = answers.get(seq, (None, None, None))
            _, reply, kinds = _encode(b"", reply)
            rows.append((now, status, reason, reply, kinds, seq not in given, seq))
        cursor.executemany(
            "UPDATE telex_messages SET delivered = %s, status = %s, reason = %s, "
            "reply = %s, kinds = (kinds & 1) | %s, owed = session IS NOT NULL AND %s "
            "WHERE seq = %s",
            rows,
        )
        owed = [seq for seq in batch.delivered if seq not in given]
        if owed and self.server_id is not None:
            cursor.execute(_WAKE_SENDERS, (owed, self.server_id))

    # -- reading ------------------------------------------------------------------------

    def _query(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self._again(lambda: self.db.execute(sql.encode(), args).fetchall())

    def session_state(self, session: str | None, name: str) -> SessionState:
        """In a cluster, the name is claimed first: ``taken`` if another server's client
        holds it. The receipts owed to the session come with its outbox. A client waits
        for this in its handshake: the database is waited for ``HANDSHAKE_WAIT`` at most."""
        self._until = time.monotonic() + min(self.retry_for, HANDSHAKE_WAIT)
        try:
            return self._session_state(session, name)
        finally:
            self._until = None

    def _session_state(self, session: str | None, name: str) -> SessionState:
        if self.server_id is not None:
            if not self._again(lambda: self._claim(name, session)):
                return SessionState(taken=True)
            self._again(self._barrier)
        outbox = tuple(
            Pending(seq, body, sender, from_session, sender_id)
            for seq, from_session, sender_id, sender, body in self.outbox(name)
        )
        if session is None:
            return SessionState(0, outbox)
        return SessionState(self.last_id(session), outbox, receipts=tuple(self.owed([session])))

    def last_id(self, session: str) -> int:
        """The highest id stored from this session (0 if none): lower ids may be resends."""
        rows = self._query(
            "SELECT greatest((SELECT max(sender_id) FROM telex_messages WHERE session = %s), "
            "(SELECT max(last_id) FROM telex_segments WHERE session = %s))",
            (session, session),
        )
        return int(rows[0][0] or 0)

    def outbox(self, recipient: str) -> list[tuple[int, str | None, int | None, str | None, Any]]:
        """(seq, session, sender_id, sender, body) of each message waiting for ``recipient``,
        oldest first."""
        return [
            (seq, session, sender_id, sender, _decode(body, kinds & _BODY_TEXT))
            for seq, session, sender_id, sender, body, kinds in self._query(
                "SELECT seq, session, sender_id, sender, body, kinds FROM telex_messages "
                "WHERE recipient = %s AND delivered IS NULL ORDER BY seq",
                (recipient,),
            )
        ]

    def find_many(self, session: str, ids: Sequence[int]) -> dict[int, Found]:
        if not ids:
            return {}
        found: dict[int, Found] = {}
        for sender_id, recipient, reply, kinds, delivered, status, reason in self._query(
            "SELECT sender_id, recipient, reply, kinds, delivered, status, reason "
            "FROM telex_messages WHERE session = %s AND sender_id = ANY(%s)",
            (session, list(ids)),
        ):
            found[sender_id] = Found(
                _decode(reply, kinds & _REPLY_TEXT),
                recipient,
                recipient is not None and delivered is not None,
                status or 0,
                reason or "",
            )
        wanted = set(ids) - set(found)
        if wanted:
            for (blob,) in self._query(
                "SELECT messages FROM telex_segments "
                "WHERE session = %s AND last_id >= %s AND first_id <= %s",
                (session, min(wanted), max(wanted)),
            ):
                for sender_id, _, reply in unpack(blob):
                    if sender_id in wanted:
                        found[sender_id] = Found(reply)
        return found

    def outboxes(self) -> dict[str, tuple[int, float]]:
        return {
            name: (count, oldest)
            for name, count, oldest in self._query(
                "SELECT recipient, count(*), min(received) FROM telex_messages "
                "WHERE delivered IS NULL AND recipient IS NOT NULL GROUP BY recipient"
            )
        }

    def _rows(
        self,
        sender: str | None,
        recipient: str | None,
        since: float | None,
        after_seq: int,
        limit: int | None,
    ) -> Iterator[StoredMessage]:
        """Every column (``_COLUMNS``) of the matching messages of both tables, in seq
        order: a page at a time (each its own query, holding no transaction between
        pages), or the last ``limit``."""
        yield from in_seq_order(
            self._message_rows(sender, recipient, since, after_seq, limit),
            self._segment_rows(sender, recipient, since, after_seq, limit),
            limit,
        )

    @staticmethod
    def _filters(
        sender: str | None, since: float | None, first: int
    ) -> tuple[list[str], list[Any]]:
        where = ["seq >= %s"]
        args: list[Any] = [first]
        if sender == "server":
            where.append("sender IS NULL")
        elif sender is not None:
            where.append("sender = %s")
            args.append(sender)
        if since is not None:
            where.append("received >= %s")
            args.append(since)
        return where, args

    def _pages(
        self, table: str, columns: str, where: list[str], args: list[Any], limit: int | None
    ) -> Iterator[tuple[Any, ...]]:
        """Rows in seq order a page at a time (``args[0]`` is the first seq), or the last
        ``limit`` newest first."""
        query = f"SELECT {columns} FROM {table} WHERE {' AND '.join(where)}"  # noqa: S608
        if limit is not None:
            yield from self._query(f"{query} ORDER BY seq DESC LIMIT %s", [*args, limit])
            return
        while True:
            rows = self._query(f"{query} ORDER BY seq LIMIT {_PAGE}", args)
            yield from rows
            if len(rows) < _PAGE:
                return
            args[0] = rows[-1][0] + 1

    def _message_rows(
        self,
        sender: str | None,
        recipient: str | None,
        since: float | None,
        after_seq: int,
        limit: int | None,
    ) -> Iterator[StoredMessage]:
        where, args = self._filters(sender, since, after_seq + 1)
        if recipient == "server":
            where.append("recipient IS NULL")
        elif recipient is not None:
            where.append("recipient = %s")
            args.append(recipient)
        yield from map(_stored, self._pages("telex_messages", _COLUMNS, where, args, limit))

    def _segment_rows(
        self,
        sender: str | None,
        recipient: str | None,
        since: float | None,
        after_seq: int,
        limit: int | None,
    ) -> Iterator[StoredMessage]:
        """The messages of the matching segments (a row holds one or more, so ``limit``
        rows are always enough), as ``_COLUMNS``."""
        if recipient not in (None, "server"):
            return  # segments hold the messages for the server only
        first = after_seq + 1
        if after_seq:  # the row holding it starts at or before it
            start = self._query("SELECT max(seq) FROM telex_segments WHERE seq <= %s", (first,))
            first = start[0][0] or first
        where, args = self._filters(sender, since, first)
        columns = "seq, session, sender, received, messages"
        for seq, session, who, received, blob in self._pages(
            "telex_segments", columns, where, args, limit
        ):
            rows = [
                StoredMessage(seq + offset, session, sender_id, who, None, body, reply, received,
                              received, 0, None)
                for offset, (sender_id, body, reply) in enumerate(unpack(blob))
                if seq + offset > after_seq
            ]  # fmt: skip
            yield from reversed(rows) if limit is not None else rows

    def records(
        self,
        *,
        sender: str | None = None,
        recipient: str | None = None,
        since: float | None = None,
        after_seq: int = 0,
        limit: int | None = None,
    ) -> Iterator[Record]:
        for m in self._rows(sender, recipient, since, after_seq, limit):
            yield Record(
                m.seq, m.sender, m.recipient, m.sender_id, m.body, m.reply, m.received,
                m.delivered
            )  # fmt: skip

    # -- housekeeping ---------------------------------------------------------------------

    def _top(self) -> int:
        """The highest stored seq (0 if none): the last segment ends the highest of them."""
        return int(
            self._query(
                "SELECT greatest((SELECT coalesce(max(seq), 0) FROM telex_messages), "
                "(SELECT coalesce(max(seq + count - 1), 0) FROM telex_segments "
                "WHERE seq = (SELECT max(seq) FROM telex_segments)))"
            )[0][0]
        )

    def next_seq(self) -> int:
        """One above the highest stored seq (``telex log --follow`` starts there); the
        next commit may number from higher (``telex_seq`` leaves gaps)."""
        return self._top() + 1

    def prune(self, before: float, limit: int = PRUNE_BATCH) -> Iterator[int]:
        """Delete delivered messages received before ``before``: ``limit`` entries of the
        index on (received, seq) a step, from where the last step ended, the delivered
        ones among them deleted in one short transaction."""
        top = self._top()
        while True:  # segments: whole rows, oldest first, about ``limit`` messages a step
            rows = self._query(
                "SELECT seq, count FROM telex_segments WHERE received < %s "
                "AND seq + count - 1 < %s ORDER BY received LIMIT %s",
                (before, top, limit),
            )
            chosen: list[int] = []
            total = 0
            for seq, count in rows:
                if chosen and total + count > limit:
                    break
                chosen.append(seq)
                total += count
            if not chosen:
                break
            self._query_nothing("DELETE FROM telex_segments WHERE seq = ANY(%s)", (chosen,))
            yield total
            if len(chosen) == len(rows) < limit:
                break
        after: tuple[float, int] = (float("-inf"), 0)
        while True:
            rows = self._query(
                "SELECT received, seq, delivered IS NOT NULL OR recipient IS NULL "
                "FROM telex_messages WHERE received < %s AND (received, seq) > (%s, %s) "
                "AND seq < %s ORDER BY received, seq LIMIT %s",
                (before, *after, top, limit),
            )
            if not rows:
                break
            after = (rows[-1][0], rows[-1][1])
            done = [seq for _, seq, delivered in rows if delivered]
            if done:
                self._query_nothing("DELETE FROM telex_messages WHERE seq = ANY(%s)", (done,))
            yield len(done)
            if len(rows) < limit:
                break

    def _query_nothing(self, sql: str, args: Sequence[Any]) -> None:
        self._again(lambda: self.db.execute(sql.encode(), args))

    def prunable(self, before: float) -> int:
        top = self._top()
        return int(
            self._query(
                "SELECT (SELECT count(*) FROM telex_messages WHERE received < %s "
                "AND (delivered IS NOT NULL OR recipient IS NULL) AND seq < %s) + "
                "(SELECT coalesce(sum(count), 0) FROM telex_segments WHERE received < %s "
                "AND seq + count - 1 < %s)",
                (before, top, before, top),
            )[0][0]
        )

    def export(
        self,
        *,
        sender: str | None = None,
        recipient: str | None = None,
        since: float | None = None,
    ) -> Iterator[StoredMessage]:
        """Every message, seq order, a page at a time: what a server stores meanwhile
        with higher seqs may be in it."""
        yield from self._rows(sender, recipient, since, 0, None)

    def import_messages(self, messages: Iterable[StoredMessage]) -> Imported:
        stored = skipped = 0
        try:
            db = self.db
            with db.transaction(), db.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK,))
                cursor.execute(
                    "SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM telex_seq"
                )
                row = cursor.fetchone()
                top = max(self._top(), int(row[0]) if row else 0)
                for message in messages:
                    if self._stored_already(message):
                        skipped += 1
                        continue
                    if message.recipient is None and message.sender_id is None:
                        raise ValueError(f"message {message.seq} for the server has no sender_id")
                    seq = message.seq if message.seq > top else top + 1
                    top = seq
                    m = dataclasses.replace(message, seq=seq)
                    stored += 1
                    if m.recipient is None:  # a segment of one
                        item = (m.sender_id or 0, m.body, m.reply)  # never None here
                        cursor.execute(
                            f"INSERT INTO telex_segments ({_SEGMENT_COLUMNS}) "  # noqa: S608
                            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                            _segment_row(seq, m.session, m.sender, m.received, [item]),
                        )
                        continue
                    body, reply, kinds = _encode(m.body, m.reply)
                    cursor.execute(
                        f"INSERT INTO telex_messages ({_COLUMNS}) "  # noqa: S608
                        "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                        (m.seq, m.session, m.sender_id, m.sender, m.recipient, body, reply,
                         kinds, m.received, m.delivered, m.status, m.reason),
                    )  # fmt: skip
                if top:
                    cursor.execute("SELECT setval('telex_seq', %s)", (top,))
        except psycopg.Error as exc:
            raise StoreError(_reason(exc)) from exc
        return Imported(stored, skipped)

    def _stored_already(self, m: StoredMessage) -> bool:
        """Its (session, sender_id) is stored; or, without a session, the same message
        is stored under its seq."""
        if m.session is not None and m.sender_id is not None:
            return bool(self.find_many(m.session, [m.sender_id]))
        there = self._at(m.seq)
        return (
            there is not None
            and (there.sender, there.recipient, there.body) == (m.sender, m.recipient, m.body)
            and abs(there.received - m.received) < 0.001  # the file's times: ms or µs
        )

    def _at(self, seq: int) -> StoredMessage | None:
        """The message stored under ``seq``, if any."""
        rows = self._query(f"SELECT {_COLUMNS} FROM telex_messages WHERE seq = %s", (seq,))  # noqa: S608
        if rows:
            return _stored(rows[0])
        rows = self._query(
            "SELECT seq, count, session, sender, received, messages FROM telex_segments "
            "WHERE seq <= %s ORDER BY seq DESC LIMIT 1",
            (seq,),
        )
        if not rows or rows[0][0] + rows[0][1] <= seq:
            return None
        return segment_message(seq, *rows[0])

    # -- a cluster of servers -------------------------------------------------------------

    def join(self, lease: float) -> str:
        self.server_id = secrets.token_hex(6)
        self.channel = f"telex_{self.server_id}"
        self.lease = lease
        self.renew([], [])
        return self.server_id

    def renew(self, names: Sequence[str], keep: Sequence[str] = ()) -> list[str]:
        assert self.server_id is not None
        self._query_nothing(
            "INSERT INTO telex_servers (id, channel, lease_until) "
            "VALUES (%s, %s, now() + make_interval(secs => %s)) "
            "ON CONFLICT (id) DO UPDATE SET lease_until = excluded.lease_until",
            (self.server_id, self.channel, self.lease),
        )
        self._query_nothing(
            "DELETE FROM telex_names WHERE server = %s AND NOT name = ANY(%s)",
            (self.server_id, [*keep, *names]),
        )
        if not names:
            return []
        held = {
            name
            for (name,) in self._query(
                "SELECT name FROM telex_names WHERE server = %s AND name = ANY(%s)",
                (self.server_id, list(names)),
            )
        }
        return [name for name in names if name not in held]

    def leave(self) -> None:
        if self.server_id is None:
            return
        self._query_nothing("DELETE FROM telex_names WHERE server = %s", (self.server_id,))
        self._query_nothing("DELETE FROM telex_servers WHERE id = %s", (self.server_id,))
        self.server_id = None

    def _claim(self, name: str, session: str | None) -> bool:
        """Take ``name`` for a client here, in one transaction: free, ours already, held
        under a lease that ran out, or held elsewhere by the same session (that server
        is told to let it go). False: a live client of another server holds it."""
        db = self.db
        with db.transaction():
            row = db.execute(
                "SELECT server, session FROM telex_names WHERE name = %s FOR UPDATE", (name,)
            ).fetchone()  # locked first; then the holder's lease, read after the lock
            if row is None:
                inserted = db.execute(
                    "INSERT INTO telex_names (name, server, session) VALUES (%s, %s, %s) "
                    "ON CONFLICT (name) DO NOTHING RETURNING 1",
                    (name, self.server_id, session),
                ).fetchone()
                return inserted is not None
            server, holder = row
            lease = db.execute(
                "SELECT lease_until > now(), channel FROM telex_servers WHERE id = %s", (server,)
            ).fetchone()
            alive, channel = lease if lease is not None else (False, None)
            elsewhere = alive and server != self.server_id
            if elsewhere and (session is None or holder != session):
                return False
            db.execute(
                "UPDATE telex_names SET server = %s, session = %s WHERE name = %s",
                (self.server_id, session, name),
            )
            if elsewhere:
                db.execute("SELECT pg_notify(%s, %s)", (channel, f"x {name}"))
            return True

    def _barrier(self) -> None:
        """Wait for the commits under way (each holds the advisory lock until its COMMIT)
        to end: one that looked for a client's server before its claim committed did
        not wake this server, so the outbox read after this must see what it stored."""
        with self.db.transaction():
            self.db.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK,))

    def release(self, name: str) -> None:
        if self.server_id is not None:
            self._query_nothing(
                "DELETE FROM telex_names WHERE name = %s AND server = %s",
                (name, self.server_id),
            )

    def pending(
        self, names: Sequence[str], low: int = 0, high: int | None = None
    ) -> list[tuple[str, Pending]]:
        if not names:
            return []
        where = "recipient = ANY(%s) AND delivered IS NULL AND seq >= %s"
        args: list[Any] = [list(names), low]
        if high is not None:
            where += " AND seq <= %s"
            args.append(high)
        rows = self._query(
            "SELECT seq, recipient, session, sender_id, sender, body, kinds "  # noqa: S608
            f"FROM telex_messages WHERE {where} ORDER BY seq LIMIT {_PAGE}",
            args,
        )
        return [
            (recipient, Pending(seq, _decode(body, kinds & _BODY_TEXT), sender, session, sender_id))
            for seq, recipient, session, sender_id, sender, body, kinds in rows
        ]

    def owed(self, sessions: Sequence[str]) -> list[Answered]:
        if not sessions:
            return []
        rows = self._query(
            "SELECT seq, session, sender_id, status, reason, reply, kinds FROM telex_messages "
            "WHERE owed AND session = ANY(%s) AND sender_id IS NOT NULL ORDER BY seq LIMIT %s",
            (list(sessions), _PAGE),
        )
        return [
            Answered(seq, session, sender_id, status or 0, reason or "",
                     _decode(reply, kinds & _REPLY_TEXT) or b"")
            for seq, session, sender_id, status, reason, reply, kinds in rows
        ]  # fmt: skip

    def listen(
        self,
        on_wakeup: Callable[[WakeUp], object],
        on_connected: Callable[[], object],
        stop: threading.Event,
    ) -> None:
        pause = 0.1
        while not stop.is_set():
            try:
                with psycopg.connect(self.url, autocommit=True, **self._settings()) as db:
                    db.execute(f'LISTEN "{self.channel}"'.encode())
                    pause = 0.1
                    on_connected()
                    while not stop.is_set():
                        for note in db.notifies(timeout=0.5):
                            try:
                                told = wakeup(note.payload)
                            except (ValueError, TypeError, KeyError):  # not ours to read:
                                on_connected()  # read everything instead
                                continue
                            on_wakeup(told)
            except psycopg.Error:
                stop.wait(pause)
                pause = min(pause * 2, 2.0)

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None


class _InDoubt(Exception):
    """The connection was lost while COMMIT was on its way: the transaction ``xid`` may
    or may not have committed (``result`` is what it stored if it did)."""

    def __init__(self, xid: str, result: Committed, cause: psycopg.Error) -> None:
        super().__init__(_reason(cause))
        self.xid = xid
        self.result = result


class _TryAgain(Exception):
    """Not stored, and the database may be back soon: the call is tried again."""


class _Transaction:
    """COMMIT on success, ROLLBACK on failure; the caller says BEGIN (with what it sends
    first: one round trip less than psycopg's ``transaction()``) and sets ``xid`` (the
    transaction's id, by which an in-doubt COMMIT is looked up) and ``result``."""

    def __init__(self, db: psycopg.Connection[tuple[Any, ...]]) -> None:
        self.db = db
        self.xid = ""
        self.result = Committed([], [])

    def __enter__(self) -> _Transaction:
        return self

    def __exit__(self, kind: object, *rest: object) -> None:
        idle = psycopg.pq.TransactionStatus.IDLE
        if kind is None:
            try:
                self.db.execute(b"COMMIT")
            except psycopg.Error as exc:
                if not self.db.broken:
                    raise
                raise _InDoubt(self.xid, self.result, exc) from exc
        elif not self.db.broken and self.db.info.transaction_status != idle:
            with contextlib.suppress(psycopg.Error):
                self.db.execute(b"ROLLBACK")


def _segment_row(
    seq: int, session: str | None, sender: str | None, received: float, items: Sequence[Item]
) -> tuple[Any, ...]:
    """A ``telex_segments`` row (``_SEGMENT_COLUMNS``) for these messages to the server."""
    ids = [item[0] for item in items]
    return (seq, len(items), session, sender, min(ids), max(ids), received, pack(items))


def _encode(body: Any, reply: Any) -> tuple[bytes, bytes | None, int]:
    """Body and reply as bytes, and the kinds bits that say which were text."""
    kinds = 0
    if isinstance(body, str):
        body = body.encode()
        kinds |= _BODY_TEXT
    if isinstance(reply, str):
        reply = reply.encode()
        kinds |= _REPLY_TEXT
    elif reply is not None:
        reply = bytes(reply)
    return bytes(body), reply, kinds


def _envelope_columns(envelopes: Sequence[Envelope]) -> dict[str, list[Any]]:
    """The envelopes' fields as arrays, for ``unnest`` (``_WAKE_WITH_MESSAGES``,
    ``_STORE_ROUTED``): their bodies as bytes, with the kinds bits that say which were text."""
    rows = [_encode(envelope.body, None) for envelope in envelopes]
    return {
        "recipients": [envelope.recipient for envelope in envelopes],
        "sessions": [envelope.session for envelope in envelopes],
        "ids": [envelope.sender_id for envelope in envelopes],
        "senders": [envelope.sender for envelope in envelopes],
        "bodies": [body for body, _, _ in rows],
        "kinds": [kinds for _, _, kinds in rows],
    }


def _size(body: Any) -> int:
    return len(body.encode()) if isinstance(body, str) else len(body)


def wakeup(payload: str) -> WakeUp:
    """A NOTIFY payload as a ``WakeUp`` (see ``_WAKE``, ``_WAKE_WITH_MESSAGES``,
    ``_WAKE_SENDERS`` and ``_claim``)."""
    kind, _, rest = payload.partition(" ")
    if kind == "d":
        low, high = (int(part) for part in rest.split())
        return WakeUp("pending", low=low, high=high)
    if kind == "D":
        messages = tuple(
            (recipient, Pending(seq, _decode(base64.b64decode(body), kinds & _BODY_TEXT),
                                sender, session, sender_id))
            for seq, recipient, session, sender_id, sender, body, kinds in json.loads(rest)
        )  # fmt: skip
        return WakeUp("pending", messages=messages)
    if kind == "R":
        answers = tuple(
            Answered(seq, session, sender_id, status or 0, reason or "",
                     _decode(base64.b64decode(reply or ""), kinds & _REPLY_TEXT))
            for seq, session, sender_id, status, reason, reply, kinds in json.loads(rest)
        )  # fmt: skip
        return WakeUp("receipts", answers=answers)
    if kind == "x":
        return WakeUp("taken", name=rest)
    return WakeUp("receipts")  # 'r', or anything newer: read what is owed


def _decode(value: bytes | None, text: int) -> Any:
    if value is None:
        return None
    return value.decode() if text else bytes(value)


def _stored(row: tuple[Any, ...]) -> StoredMessage:
    seq, session, sender_id, sender, recipient, body, reply, kinds, received, delivered, *rest = row
    status, reason = rest
    return StoredMessage(
        seq, session, sender_id, sender, recipient, _decode(body, kinds & _BODY_TEXT),
        _decode(reply, kinds & _REPLY_TEXT), received, delivered, status, reason
    )  # fmt: skip


def _reason(exc: psycopg.Error) -> str:
    """One line for a database error (PostgreSQL's primary message)."""
    diag = getattr(exc, "diag", None)
    primary = diag.message_primary if diag is not None else None
    if primary:
        return str(primary)
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
