"""telex: send messages between machines over TCP; every message is acknowledged.

The asyncio API::

    async with telex.connect("127.0.0.1", 7777) as client:
        ack = await client.send("hello")

The blocking API::

    with telex.Client("127.0.0.1", 7777) as client:
        ack = client.send("hello")

A server::

    async with telex.Server(handler, port=7777) as server:
        await server.serve_forever()
"""

from ._version import __version__
from .client.aio import AsyncClient, connect
from .client.sync import Client
from .core.events import Ack, AckStatus, ErrorCode, Message, Receipt
from .core.handlers import Reject
from .core.limits import Limits
from .exceptions import (
    AuthenticationFailed,
    CertificateRejected,
    ConnectError,
    ConnectionClosed,
    MessageRejected,
    ProtocolError,
    TelexError,
    TelexTimeout,
)
from .server import DEFAULT_PORT, Peer, PeerEvent, Server

__all__ = [
    "DEFAULT_PORT",
    "Ack",
    "AckStatus",
    "AsyncClient",
    "AuthenticationFailed",
    "CertificateRejected",
    "Client",
    "ConnectError",
    "ConnectionClosed",
    "ErrorCode",
    "Limits",
    "Message",
    "MessageRejected",
    "Peer",
    "PeerEvent",
    "ProtocolError",
    "Receipt",
    "Reject",
    "Server",
    "TelexError",
    "TelexTimeout",
    "__version__",
    "connect",
]
