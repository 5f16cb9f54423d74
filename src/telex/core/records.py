"""What the broker asks a store to keep, and what a store answers: plain records.

The broker fills a ``Batch`` during a loop turn; the server hands it to the store,
which writes it in one transaction and numbers what it stored (``Committed``). Every
store (SQLite now, PostgreSQL next) takes and gives these, and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .events import Body

__all__ = [
    "Answered",
    "Batch",
    "Committed",
    "Envelope",
    "Found",
    "Inbound",
    "Item",
    "Pending",
    "Record",
    "SessionState",
]

Item = tuple[int, Any, Any]
"""A message for the server: (sender_id, body, reply), body and reply ``str`` or ``bytes``."""


@dataclass(slots=True)
class Inbound:
    """Messages for the server itself, from one connection, stored together."""

    session: str | None
    sender: str | None
    items: list[Item]


@dataclass(slots=True)
class Envelope:
    """A message for a client (from another client, or from the server: ``sender`` None)."""

    recipient: str
    body: Body
    sender: str | None = None
    session: str | None = None  # the sender's session and its id for the message
    sender_id: int | None = None


@dataclass(slots=True)
class Batch:
    """Everything one commit writes, in one transaction."""

    inbound: list[Inbound] = field(default_factory=list)
    envelopes: list[Envelope] = field(default_factory=list)
    delivered: list[int] = field(default_factory=list)  # seqs their recipients answered
    answers: dict[int, tuple[int, str, Any]] = field(default_factory=dict)
    """The recipient's (status, reason, reply) for a seq in ``delivered``, kept so that a
    resent message can be told its first answer again."""
    receipted: list[int] = field(default_factory=list)
    """Seqs whose RECEIPT went to their sender: a store that keeps receipts for senders
    who are away (PostgreSQL) owes them no more."""

    def __bool__(self) -> bool:
        return bool(self.inbound or self.envelopes or self.delivered or self.receipted)


@dataclass(frozen=True, slots=True)
class Committed:
    """The numbers a commit gave: the first seq of each ``Inbound`` (its items follow on)
    and the seq of each ``Envelope``, in the batch's order."""

    inbound: list[int]
    envelopes: list[int]
    elsewhere: frozenset[str] = frozenset()
    """Recipients of the batch's envelopes connected to another server of a cluster
    (which was told to deliver them): not away."""


@dataclass(frozen=True, slots=True)
class Pending:
    """A message waiting in a client's outbox."""

    seq: int
    body: Body
    sender: str | None
    session: str | None
    sender_id: int | None


@dataclass(frozen=True, slots=True)
class Answered:
    """A stored message its recipient answered: the RECEIPT owed to its sender."""

    seq: int
    session: str
    sender_id: int
    status: int
    reason: str
    reply: Any


@dataclass(frozen=True, slots=True)
class SessionState:
    """What a store knows when a client arrives: the highest id it stored from the
    client's session (lower ids may be resends), and its outbox, oldest first.

    A store shared by a cluster also says whether another server's client holds the
    name (``taken``), and gives the receipts owed to the session (``receipts``)."""

    last_id: int = 0
    outbox: tuple[Pending, ...] = ()
    taken: bool = False
    receipts: tuple[Answered, ...] = ()


@dataclass(frozen=True, slots=True)
class Found:
    """A message already stored: the reply it was acknowledged with; ``recipient`` set
    when it was for another client, and ``delivered`` once that client answered it (then
    ``status``, ``reason`` and ``reply`` are its answer)."""

    reply: Any
    recipient: str | None = None
    delivered: bool = False
    status: int = 0  # with ``delivered``: the recipient's answer (and ``reply``)
    reason: str = ""


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
