"""Every error telex raises, under one root.

The tree::

    TelexError
    ├── ProtocolError        the peer broke the wire protocol (carries an error code)
    ├── ConnectError         no connection could be made (refused, unknown host, no answer)
    │   ├── CertificateRejected  the server's TLS certificate is not the one to trust
    │   └── AuthenticationFailed the server refused the token
    ├── ConnectionClosed     a connection that was up ended with messages unacknowledged
    ├── TelexTimeout         an operation ran past its timeout (also a TimeoutError)
    └── MessageRejected      the receiver answered a message with a rejection (carries the ack)

Catch ``TelexError`` to handle them all. Misusing the API (a body that is neither
``str`` nor ``bytes``, sending on a closed client) raises the usual ``TypeError`` or
``RuntimeError``, since that is a bug in the caller, not a network condition.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .core.events import Ack

__all__ = [
    "AuthenticationFailed",
    "CertificateRejected",
    "ConnectError",
    "ConnectionClosed",
    "MessageRejected",
    "ProtocolError",
    "TelexError",
    "TelexTimeout",
]


class TelexError(Exception):
    """The root of every telex error."""


class ProtocolError(TelexError):
    """The peer sent bytes that break the protocol; ``code`` is an ``ErrorCode`` value."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class ConnectError(TelexError):
    """No connection could be made: refused, unknown host, unreachable, or no handshake."""


class CertificateRejected(ConnectError):
    """The server's certificate failed verification, its pin, or the remembered one."""


class AuthenticationFailed(ConnectError):
    """The server needs a token and refused ours (or we have none)."""


class ConnectionClosed(TelexError):
    """The connection ended while messages were still waiting for their acknowledgment."""

    def __init__(self, reason: str, unacknowledged: int = 0) -> None:
        super().__init__(reason)
        self.reason = reason
        self.unacknowledged = unacknowledged


class TelexTimeout(TelexError, TimeoutError):
    """An operation took longer than its timeout."""


class MessageRejected(TelexError):
    """The receiver rejected a message; ``ack`` says why."""

    def __init__(self, ack: Ack) -> None:
        super().__init__(f"message {ack.id} rejected: {ack.reason}")
        self.ack = ack
