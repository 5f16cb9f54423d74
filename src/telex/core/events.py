"""What the protocol core reports after reading bytes: small immutable records.

Each class is one thing the peer said (or, for ``ProtocolViolation``, one way it broke
the rules). ``Event`` names the whole set, so a ``match`` over it can be checked.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, NamedTuple

__all__ = [
    "Ack",
    "AckStatus",
    "Auth",
    "Challenge",
    "ErrorCode",
    "Event",
    "Goodbye",
    "Hello",
    "Message",
    "MessageTooLarge",
    "PeerError",
    "Ping",
    "Pong",
    "ProtocolViolation",
    "Receipt",
    "StatsFrame",
    "Welcome",
]

Body = bytes | str


class AckStatus(IntEnum):
    """The status byte of an ACK: 0 is success, anything else is a rejection."""

    OK = 0
    TOO_LARGE = 1
    REFUSED = 2
    HANDLER_FAILED = 3
    UNAVAILABLE = 4
    NOT_DELIVERED = 5


class ErrorCode(IntEnum):
    """The code of an ERROR frame, sent just before a connection is closed."""

    BAD_PREAMBLE = 1
    MALFORMED_FRAME = 2
    UNKNOWN_FRAME_TYPE = 3
    FRAME_TOO_LARGE = 4
    INVALID_UTF8 = 5
    UNEXPECTED_FRAME = 6
    UNSUPPORTED_VERSION = 7
    HANDSHAKE_TIMEOUT = 8
    IDLE_TIMEOUT = 9
    ID_NOT_INCREASING = 10
    TRUNCATED_FRAME = 11
    TOO_MANY_CONNECTIONS = 12
    INTERNAL_ERROR = 13
    NAME_TAKEN = 14
    INVALID_NAME = 15
    AUTH_FAILED = 16


@dataclass(frozen=True, slots=True)
class Hello:
    """The client's half of the handshake."""

    version: int
    name: str | None = None
    agent: str = ""
    session: str | None = None


@dataclass(frozen=True, slots=True)
class Challenge:
    """The server wants proof of a token: an HMAC of ``challenge``, keyed with the token
    (stretched with ``salt`` when the server keeps a users file)."""

    challenge: bytes
    salt: bytes = b""


@dataclass(frozen=True, slots=True)
class Auth:
    """The client's answer to the challenge."""

    answer: bytes


@dataclass(frozen=True, slots=True)
class Welcome:
    """The server's half of the handshake: the client's name, and the limits it enforces."""

    version: int
    agent: str = ""
    limits: dict[str, Any] = field(default_factory=dict)
    name: str | None = None
    stable_ids: bool = False


class Message(NamedTuple):
    """A message; ``body`` is ``str`` when it was sent as text, else ``bytes``.

    ``to`` is set on a message a client addressed to another client (as the server sees
    it); ``sender`` on a message the server forwarded from another client (as the
    recipient sees it). Both are None between a client and the server itself.

    A NamedTuple, unlike the other events: it is built once per message on the hot
    path, and a tuple is built in a third of the time a frozen dataclass takes.
    """

    id: int
    body: Body
    to: str | None = None
    sender: str | None = None


class Ack(NamedTuple):
    """The answer to message ``id``: ``status`` 0 with a ``reply``, or a rejection.

    ``flags`` say who answered, for a message to another client: ``stored`` (the server
    keeps it for that client, whose own answer comes later as a ``Receipt``), or
    ``delivered`` (this is that client's own answer). Neither: the receiver itself
    answered. A NamedTuple for the same reason as ``Message``: one is built per message.
    """

    id: int
    status: int = AckStatus.OK
    reason: str = ""
    reply: Body = b""
    flags: int = 0

    @property
    def ok(self) -> bool:
        return self.status == AckStatus.OK

    @property
    def stored(self) -> bool:
        """The server stored it for another client, which has not acknowledged it yet."""
        return bool(self.flags & 0x02)

    @property
    def delivered(self) -> bool:
        """The client the message was for answered it (this is its answer)."""
        return bool(self.flags & 0x04)

    @property
    def away(self) -> bool:
        """With ``stored``: that client is not connected now."""
        return bool(self.flags & 0x08)


@dataclass(frozen=True, slots=True)
class Receipt:
    """Message ``id`` reached the client it was for, which answered with this status and reply.

    The second answer to a message for another client, after the server's ack said it
    was stored.
    """

    id: int
    status: int = AckStatus.OK
    reason: str = ""
    reply: Body = b""
    flags: int = 0x04

    @property
    def ok(self) -> bool:
        return self.status == AckStatus.OK


@dataclass(frozen=True, slots=True)
class MessageTooLarge:
    """A message over the size limit arrived (and was skipped); answer it with a rejection."""

    id: int
    size: int
    limit: int

    @property
    def reason(self) -> str:
        return f"message of {self.size} bytes is over the limit of {self.limit}"


@dataclass(frozen=True, slots=True)
class Ping:
    """The peer asks whether we are there: answer with ``send_pong(payload)``."""

    payload: bytes


@dataclass(frozen=True, slots=True)
class Pong:
    """The answer to one of our pings."""

    payload: bytes


@dataclass(frozen=True, slots=True)
class StatsFrame:
    """A client asks for the server's counters (``values`` empty), or the server's answer
    (its counters, or ``{"refused": reason}``)."""

    values: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Goodbye:
    """The peer will send no new messages; it still acknowledges what it received."""

    reason: str = ""


@dataclass(frozen=True, slots=True)
class PeerError:
    """The peer reported that we broke the protocol, and is closing."""

    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class ProtocolViolation:
    """The peer broke the protocol; an ERROR frame is queued and the connection is over."""

    code: int
    reason: str


Event = (
    Hello
    | Challenge
    | Auth
    | Welcome
    | Message
    | Ack
    | Receipt
    | MessageTooLarge
    | Ping
    | Pong
    | StatsFrame
    | Goodbye
    | PeerError
    | ProtocolViolation
)
