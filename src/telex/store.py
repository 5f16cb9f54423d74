"""The server's message log in SQLite: what was said, dedup of resent messages, the outbox.

One row per message, in both directions. ``session`` and ``sender_id`` name a message
the way its sender numbered it, so a message resent after a reconnect is found and not
stored twice. A message for a client is *delivered* once that client acknowledged it;
until then it waits in the outbox. Bodies are stored as sent: TEXT for text, BLOB for
bytes. This module knows nothing of the protocol.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["SCHEMA_VERSION", "SYNC_LEVELS", "Record", "Row", "Store", "StoreError"]

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
]
SCHEMA_VERSION = len(MIGRATIONS)

Row = tuple[int, str | None, int | None, str | None, str | None, Any, Any, float, float | None]
"""(seq, session, sender_id, sender, recipient, body, reply, received, delivered)"""


class StoreError(Exception):
    """The store could not write (a full disk, a read-only file): nothing is acknowledged."""


@dataclass(frozen=True, slots=True)
class Record:
    """One stored message, as ``telex log`` shows it."""

    seq: int
    sender: str | None
    recipient: str | None
    sender_id: int | None
    body: bytes | str
    reply: bytes | str | None
    received: float
    delivered: float | None


class Store:
    """A SQLite message log in WAL mode. Use it from one thread (the server's loop)."""

    def __init__(self, path: str | Path, *, sync: str = "normal", readonly: bool = False) -> None:
        self.path = Path(path)
        if sync not in SYNC_LEVELS:
            raise ValueError(f"sync is one of {', '.join(SYNC_LEVELS)}, not {sync!r}")
        self.sync = sync
        if readonly:
            uri = f"{self.path.resolve().as_uri()}?mode=ro"
            self.db = sqlite3.connect(uri, uri=True, isolation_level=None)
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(self.path, isolation_level=None)
        self.db.execute("PRAGMA busy_timeout = 5000")
        if not readonly:
            self.db.execute("PRAGMA journal_mode = WAL")
            self.db.execute(f"PRAGMA synchronous = {SYNC_LEVELS[sync]}")
            self._migrate()

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
        return int(self.db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM messages").fetchone()[0])

    def write(self, rows: Sequence[Row], delivered: Sequence[tuple[float, int]] = ()) -> None:
        """Store ``rows`` and mark ``(time, seq)`` pairs delivered, in one transaction.

        Raises ``StoreError`` if it did not commit; then nothing of it is stored.
        """
        try:
            with self._transaction():
                self.db.execute("BEGIN")
                self.db.executemany(_INSERT, rows)
                if delivered:
                    self.db.executemany(_DELIVERED, delivered)
        except sqlite3.Error as exc:
            raise StoreError(str(exc)) from exc

    # -- reading --------------------------------------------------------------------

    def last_id(self, session: str) -> int:
        """The highest id stored from this session (0 if none): lower ids may be resends."""
        row = self.db.execute(
            "SELECT MAX(sender_id) FROM messages WHERE session = ?", (session,)
        ).fetchone()
        return int(row[0] or 0)

    def find(self, session: str, sender_id: int) -> tuple[int, Any] | None:
        """(seq, reply) of a message already stored, or None."""
        row = self.db.execute(
            "SELECT seq, reply FROM messages WHERE session = ? AND sender_id = ?",
            (session, sender_id),
        ).fetchone()
        return None if row is None else (int(row[0]), row[1])

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
        """Stored messages, oldest first, filtered. The server is named "server"."""
        where = ["seq > ?"]
        args: list[Any] = [after_seq]
        for column, value in (("sender", sender), ("recipient", recipient)):
            if value == "server":
                where.append(f"{column} IS NULL")
            elif value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        if since is not None:
            where.append("received >= ?")
            args.append(since)
        query = (
            "SELECT seq, sender, recipient, sender_id, body, reply, received, delivered "
            f"FROM messages WHERE {' AND '.join(where)} ORDER BY seq"
        )
        if limit is not None:
            query = f"SELECT * FROM ({query.replace('ORDER BY seq', 'ORDER BY seq DESC')} "
            query += "LIMIT ?) ORDER BY seq"
            args.append(limit)
        for row in self.db.execute(query, args):
            yield Record(*row)

    def close(self) -> None:
        self.db.close()


_INSERT = (
    "INSERT INTO messages (seq, session, sender_id, sender, recipient, body, reply, received, "
    "delivered) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_DELIVERED = "UPDATE messages SET delivered = ? WHERE seq = ?"


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
                self.db.execute("ROLLBACK")
                raise
        else:
            self.db.execute("ROLLBACK")
