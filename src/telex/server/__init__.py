"""The asyncio server: ``telex.Server`` over the sans-I/O broker."""

from .server import (
    DEFAULT_PORT,
    TEXT_PAUSE,
    Handler,
    Peer,
    PeerEvent,
    Reject,
    Server,
    default_handler,
)

__all__ = [
    "DEFAULT_PORT",
    "TEXT_PAUSE",
    "Handler",
    "Peer",
    "PeerEvent",
    "Reject",
    "Server",
    "default_handler",
]
