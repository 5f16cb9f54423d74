"""What server and client share about handlers: how one refuses, how a failure answers."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from .events import AckStatus, Body

__all__ = ["Reject", "is_async", "rejection_for", "reply_body"]


class Reject(Exception):
    """Raise in a handler to reject a message; the sender gets ``reason``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def is_async(handler: Callable[..., Any]) -> bool:
    """An ``async def`` function, or an object whose ``__call__`` is one."""
    call = getattr(handler, "__call__", None)  # noqa: B004 - objects with an async __call__
    return inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(call)


def rejection_for(exc: Exception) -> tuple[AckStatus, str]:
    """The ack a handler's exception earns: its own reason for ``Reject``, else no details."""
    if isinstance(exc, Reject):
        return AckStatus.REFUSED, exc.reason
    return AckStatus.HANDLER_FAILED, "the receiver's handler failed"


def reply_body(reply: object) -> Body:
    """What a handler returned, as a reply body; anything but str, bytes or None is the
    handler's fault (TypeError), found before the message is stored or answered."""
    if reply is None:
        return b""
    if type(reply) is str or type(reply) is bytes:
        return reply
    if isinstance(reply, bytearray | memoryview):
        return bytes(reply)
    raise TypeError(f"a handler returns str, bytes or None, not {type(reply).__name__}")
