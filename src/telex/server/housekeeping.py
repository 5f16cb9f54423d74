"""The running server's housekeeping: delivered messages older than ``--keep`` go.

It prunes on the server's store thread, the one that commits, so the store is used by
one thread; a step of ``Store.prune`` (one short transaction) at a time, and the
commits queued meanwhile run between two steps. Each step is followed by a pause as
long as the step took, so pruning has at most half of the store thread while acks wait
on the rest: a big prune slows acks by about one step (milliseconds), never stalls
them (docs/durability.md, Retention).

A pass runs the steps until nothing old is left; the next starts ``BUSY_EVERY``
seconds later when this one deleted something (more will be old soon), ``IDLE_EVERY``
seconds later otherwise; never later than ``keep`` itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator
from concurrent.futures import Executor

from ..store.base import PRUNE_BATCH, Store

__all__ = ["BUSY_EVERY", "IDLE_EVERY", "Housekeeper"]

BUSY_EVERY = 5.0
IDLE_EVERY = 60.0

log = logging.getLogger("telex.server")


class Housekeeper:
    """Prunes ``store`` every so often on ``executor`` (a single thread), keeping the
    last ``keep`` seconds of delivered messages. ``start()``, then ``await close()``."""

    def __init__(
        self,
        store: Store,
        executor: Executor,
        keep: float,
        *,
        batch: int = PRUNE_BATCH,
    ) -> None:
        if keep <= 0:
            raise ValueError(f"keep is a positive number of seconds, not {keep!r}")
        self.store = store
        self.executor = executor
        self.keep = keep
        self.batch = batch
        self.pruned = 0  # messages deleted so far
        self.passes = 0
        self._task: asyncio.Task[None] | None = None
        self._last_error = ""

    def start(self) -> Housekeeper:
        self._task = asyncio.create_task(self._run(), name="telex-housekeeping")
        return self

    async def close(self) -> None:
        """Stop after the step running now (the store thread finishes it)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            try:
                deleted = await self.prune_once()
            except Exception as exc:  # StoreError, or anything a driver raises: try later
                reason = str(exc) or type(exc).__name__
                if reason != self._last_error:
                    log.error("store: cannot prune: %s", reason)
                self._last_error = reason
                deleted = 0
            else:
                self._last_error = ""
            await asyncio.sleep(min(self.keep, BUSY_EVERY if deleted else IDLE_EVERY))

    async def prune_once(self) -> int:
        """One pass: delete what is older than ``keep`` now, a step at a time; how many."""
        loop = asyncio.get_running_loop()
        before = time.time() - self.keep
        steps: Iterator[int] = self.store.prune(before, self.batch)
        deleted = 0
        while True:
            started = loop.time()
            step = await loop.run_in_executor(self.executor, next, steps, None)
            if step is None:
                break
            deleted += step
            self.pruned += step
            await asyncio.sleep(loop.time() - started)  # the store thread is the commits' now
        self.passes += 1
        if deleted:
            log.info("store: pruned %d messages stored before %s", deleted, time.ctime(before))
        return deleted
