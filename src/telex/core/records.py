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

    def __bool__(self) -> bool:
        return bool(self.inbound or self.envelopes or self.delivered)


@dataclass(frozen=True, slots=True)
class Committed:
    """The numbers a commit gave: the first seq of each ``Inbound`` (its items follow on)
    and the seq of each ``Envelope``, in the batch's order."""

    inbound: list[int]
    envelopes: list[int]


@dataclass(frozen=True, slots=True)
class Pending:
    """A message waiting in a client's outbox."""

    seq: int
    body: Body
    sender: str | None
    session: str | None
    sender_id: int | None


@dataclass(frozen=True, slots=True)
class SessionState:
    """What a store knows when a client arrives: the highest id it stored from the
    client's session (lower ids may be resends), and its outbox, oldest first."""

    last_id: int = 0
    outbox: tuple[Pending, ...] = ()


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
