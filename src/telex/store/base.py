"""The store interface: what the server needs of wherever it keeps messages.

The broker fills a ``Batch``; the server hands it to ``commit`` on its store thread and
acknowledges nothing before ``commit`` returns. A store numbers what it stores (``seq``,
the order it stored them in), finds messages a session sends again, and keeps each
client's outbox. SQLite implements it (``SQLiteStore``), and PostgreSQL
(``PostgresStore``), which several servers share as a cluster (``SharedStore``).

Housekeeping is part of the interface too, in the same engine-neutral terms: ``prune``
deletes delivered messages older than a time, a short transaction at a time;
``export`` gives every stored message with every field (``StoredMessage``), and
``import_messages`` takes them back, so a store moves between machines and engines.
"""

from __future__ import annotations

import heapq
import itertools
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from operator import attrgetter
from pathlib import Path
from typing import TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from ..core.records import Answered, Batch, Committed, Found, Pending, Record, SessionState

__all__ = [
    "Imported",
    "SharedStore",
    "Store",
    "StoreError",
    "StoredMessage",
    "Unreachable",
    "WakeUp",
    "open_store",
    "public_url",
]

PRUNE_BATCH = 1000
"""Messages a ``prune`` step deletes at most, in one transaction."""
READ_PAGE = 1000
"""Rows a ``SharedStore`` read (``pending``, ``owed``) gives at most: a page."""


class StoreError(Exception):
    """The store could not write (a full disk, a read-only file): nothing is acknowledged."""


class Unreachable(StoreError):
    """The store's database could not be reached, for as long as the store waits for it."""


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """One stored message with everything a store keeps of it, whatever the engine:
    what ``export`` gives and ``import_messages`` takes.

    A message for the server (``recipient`` None) counts as delivered when it is
    stored: its ``delivered`` is its ``received`` and its ``status`` 0. A message for a
    client has ``delivered``, ``status`` (the ACK status, 0 when it took it) and
    ``reason`` None until that client answers it.
    """

    seq: int  # the order the store stored it in
    session: str | None  # the sender's session, with ``sender_id`` its key; None: no key
    sender_id: int | None
    sender: str | None  # None: the server
    recipient: str | None  # None: the server
    body: bytes | str
    reply: bytes | str | None
    received: float  # unix times
    delivered: float | None
    status: int | None
    reason: str | None


@dataclass(frozen=True, slots=True)
class Imported:
    """What ``import_messages`` did: how many it stored, and how many it skipped as
    stored already."""

    stored: int
    skipped: int


Row = TypeVar("Row", Record, "StoredMessage")


def in_seq_order(
    messages: Iterable[Row], segments: Iterable[Row], limit: int | None = None
) -> Iterator[Row]:
    """The rows of a store's two tables (each in seq order, newest first when ``limit``
    is given) as one run, oldest first; with ``limit``, only the last ``limit``."""
    merged = heapq.merge(messages, segments, key=attrgetter("seq"), reverse=limit is not None)
    if limit is None:
        return merged
    return reversed(list(itertools.islice(merged, limit)))


class Store(ABC):
    """Where a server keeps messages. Every method may block: the server calls them on
    one thread of their own, one at a time, never on its event loop."""

    @property
    @abstractmethod
    def where(self) -> str:
        """Where the messages are, for people (a path, a URL without its password)."""

    @abstractmethod
    def commit(self, batch: Batch, now: float) -> Committed:
        """Store the batch in one transaction; raise ``StoreError`` if nothing was."""

    @abstractmethod
    def session_state(self, session: str | None, name: str) -> SessionState:
        """The highest id stored from ``session``, and ``name``'s outbox."""

    @abstractmethod
    def find_many(self, session: str, ids: Sequence[int]) -> dict[int, Found]:
        """Which of these ids of ``session`` are stored already, with their replies."""

    @abstractmethod
    def records(
        self,
        *,
        sender: str | None = None,
        recipient: str | None = None,
        since: float | None = None,
        after_seq: int = 0,
        limit: int | None = None,
    ) -> Iterator[Record]:
        """Stored messages, oldest first, filtered; the server is named "server"."""

    @abstractmethod
    def outboxes(self) -> dict[str, tuple[int, float]]:
        """Each client with messages waiting for it: how many, and the oldest's unix time
        (for the ``queued`` figures of ``telex stats`` and the metrics)."""

    # -- housekeeping ---------------------------------------------------------------

    @abstractmethod
    def prune(self, before: float, limit: int = PRUNE_BATCH) -> Iterator[int]:
        """Delete the delivered messages received before ``before``: each step of the
        iterator is one short transaction of at most about ``limit`` messages (a store
        that packs several messages a row deletes whole rows), and gives how many it
        deleted (0 is possible: a step may find only undelivered messages). The steps
        end when none is left. Whoever drives it may do other work between steps: the
        store is in no transaction then.

        Never deleted: a message waiting in an outbox, and the newest stored message (so
        that numbering goes on from it when the store is opened again). A pruned
        message's (session, sender_id) is forgotten with it: sent again, it is new."""

    @abstractmethod
    def prunable(self, before: float) -> int:
        """How many messages ``prune(before)`` would delete now."""

    @abstractmethod
    def export(
        self,
        *,
        sender: str | None = None,
        recipient: str | None = None,
        since: float | None = None,
    ) -> Iterator[StoredMessage]:
        """Every stored message, oldest (lowest seq) first, filtered as ``records``."""

    @abstractmethod
    def import_messages(self, messages: Iterable[StoredMessage]) -> Imported:
        """Store exported messages, in the order given (seq order), in one transaction:
        all of them or, if one cannot be stored (``StoreError``, ``ValueError``), none.

        A message whose (session, sender_id) is stored already is skipped and counted,
        as is one without a session found under the same seq (the same time, sender and
        body): importing a file twice stores it once. Each keeps its seq when that is
        above every seq in the store; otherwise it is numbered on from the highest, in
        order, so that an import into an empty store exports the same again."""

    @abstractmethod
    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class WakeUp:
    """What another server of a cluster tells this one (``SharedStore.listen``).

    ``kind``: ``pending``, messages stored for clients here: ``messages`` themselves
    when they were few and small, else seqs ``low`` to ``high`` to read; ``receipts``,
    receipts owed to senders here: ``answers`` themselves, or none (then read them);
    ``taken``, a client of another server took ``name`` (of the same session).
    """

    kind: str
    low: int = 0
    high: int = 0
    messages: tuple[tuple[str, Pending], ...] = ()
    answers: tuple[Answered, ...] = ()
    name: str = ""


class SharedStore(Store):
    """A store several servers share as a cluster (PostgreSQL): each server ``join``s
    it, and the store keeps who holds which name, wakes the server that holds a
    recipient when another stores a message for it, and keeps the receipts owed to
    senders who are away.

    What it adds to ``Store``: ``session_state`` claims the name for the cluster
    (``taken`` if another server's client holds it) and gives the session's owed
    receipts; ``commit`` wakes the servers of the batch's recipients (``elsewhere``)
    and of the senders whose messages were answered, and takes ``receipted`` off what
    is owed.
    """

    server_id: str | None

    @abstractmethod
    def join(self, lease: float) -> str:
        """Enter the cluster under a lease of ``lease`` seconds; returns this server's
        id. Names held by a server whose lease ran out are free to take."""

    @abstractmethod
    def renew(self, names: Sequence[str], keep: Sequence[str]) -> list[str]:
        """Renew the lease; returns which of ``names`` (held by clients welcomed here)
        another server holds now (after this one could not renew in time). Frees the
        names this server holds in the store but not in ``keep`` (its clients, welcomed
        or not yet): a release that failed while the database was away."""

    @abstractmethod
    def leave(self) -> None:
        """Leave the cluster: every name held here is free at once."""

    @abstractmethod
    def release(self, name: str) -> None:
        """A client here left: its name is free (unless another server took it)."""

    @abstractmethod
    def pending(
        self, names: Sequence[str], low: int = 0, high: int | None = None
    ) -> list[tuple[str, Pending]]:
        """Messages waiting for these clients, seqs ``low`` to ``high`` (to the newest if
        None), oldest first, ``READ_PAGE`` at most: (recipient, message)."""

    @abstractmethod
    def owed(self, sessions: Sequence[str]) -> list[Answered]:
        """Receipts owed to these sessions, oldest first, a page at most."""

    @abstractmethod
    def listen(
        self,
        on_wakeup: Callable[[WakeUp], object],
        on_connected: Callable[[], object],
        stop: threading.Event,
    ) -> None:
        """Until ``stop`` is set, on a thread and a connection of its own: call
        ``on_wakeup`` for each wake-up sent to this server, and ``on_connected()`` each
        time it (re)connects (what came while it was away must be read then).
        Reconnects by itself."""


def public_url(url: str) -> str:
    """A database URL without its password (``USER:PASSWORD@``, ``?password=``), for
    people and logs."""
    parts = urlsplit(url)
    if parts.password is not None:
        host = parts.netloc.rpartition("@")[2]
        parts = parts._replace(netloc=f"{parts.username or ''}@{host}")
    if parts.query:
        query = [
            (key, "..." if key.lower() == "password" else value)
            for key, value in parse_qsl(parts.query, keep_blank_values=True)
        ]
        parts = parts._replace(query=urlencode(query, safe="."))
    return urlunsplit(parts)


def open_store(spec: str | Path | Store, *, sync: str = "normal") -> Store:
    """A store from what a user gives: an opened ``Store``, a ``postgresql://`` (or
    ``postgres://``) URL, or a path to a SQLite file."""
    if isinstance(spec, Store):
        return spec
    if isinstance(spec, str) and spec.startswith(("postgresql://", "postgres://")):
        from .postgres import PostgresStore  # psycopg: the optional extra "postgres"

        return PostgresStore(spec)
    from .sqlite import SQLiteStore

    return SQLiteStore(spec, sync=sync)
