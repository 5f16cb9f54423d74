"""Writes queued during one turn of the event loop leave as one write at its end."""

from __future__ import annotations

import asyncio

__all__ = ["FlushOnce"]


class FlushOnce:
    """For an asyncio protocol over a telex core: ``schedule_flush()`` after queueing."""

    loop: asyncio.AbstractEventLoop
    transport: asyncio.Transport | None
    flush_scheduled: bool = False

    def queued_bytes(self) -> bytes:
        """Everything the core has queued to send."""
        raise NotImplementedError

    def schedule_flush(self) -> None:
        """Write at the end of this loop turn: answers made together leave together."""
        if not self.flush_scheduled:
            self.flush_scheduled = True
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        self.flush_scheduled = False
        data = self.queued_bytes()
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)
