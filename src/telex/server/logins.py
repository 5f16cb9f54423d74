"""Pacing logins: guessing a token from one address goes no faster than the waits.

The logins of one address are checked one at a time, in arrival order. The first five
failures in a minute cost nothing; after that each failure makes the address's next
check wait 1 s, 2 s, 4 s ... up to 30 s. The wait comes *before* a check, so a right
answer waits as long as a wrong one (silence says nothing), and opening more
connections does not check more answers at once: they queue. Other addresses are
never slowed.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable

from ..core.broker import Link

__all__ = ["LoginPacer"]

FREE_FAILURES = 5
WINDOW = 60.0  # seconds a failure is remembered
LONGEST_WAIT = 30.0


class LoginPacer:
    """Runs ``check(link)`` (True: the login was right) for each submitted login, paced
    per address as the module says; ``then()`` after the checks a timer ran."""

    def __init__(
        self,
        check: Callable[[Link], bool],
        then: Callable[[], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.check = check
        self.then = then
        self.clock = clock
        self.failures: dict[str, deque[float]] = {}  # by address, within WINDOW
        self._waiting: dict[str, deque[Link]] = {}
        self._next_check: dict[str, float] = {}  # no check for that address before then
        self._timers: dict[str, asyncio.TimerHandle] = {}

    def submit(self, link: Link) -> None:
        """Check ``link``'s login now, or when its address's turn comes."""
        host = link.host
        self._waiting.setdefault(host, deque()).append(link)
        if host not in self._timers:
            self._run(host)

    def withdraw(self, link: Link) -> None:
        """``link`` is gone: it waits no more (so the queue never outgrows the
        connections of its address)."""
        queue = self._waiting.get(link.host)
        if queue is not None and link in queue:
            queue.remove(link)

    def waiting(self, host: str) -> int:
        """How many logins from ``host`` wait for their check."""
        return len(self._waiting.get(host, ()))

    def _run(self, host: str) -> None:
        """Check what waits for ``host`` until its next check must wait."""
        self._timers.pop(host, None)
        queue = self._waiting.get(host)
        while queue:
            wait = self._next_check.get(host, 0.0) - self.clock()
            if wait > 0:
                loop = asyncio.get_running_loop()
                self._timers[host] = loop.call_later(wait, self._wake, host)
                return
            if not self.check(queue.popleft()):
                delay = self.penalty(host)
                if delay:
                    self._next_check[host] = self.clock() + delay
        self._waiting.pop(host, None)

    def _wake(self, host: str) -> None:
        self._run(host)
        self.then()

    def penalty(self, host: str) -> float:
        """Count a failed login from ``host``; the seconds its next check must wait."""
        now = self.clock()
        failures = self.failures.setdefault(host, deque())
        while failures and now - failures[0] > WINDOW:
            failures.popleft()
        failures.append(now)
        if len(self.failures) > 10_000:  # many addresses: forget the ones long quiet
            self._forget_quiet(now)
        excess = len(failures) - FREE_FAILURES
        return 0.0 if excess <= 0 else min(2.0 ** (excess - 1), LONGEST_WAIT)

    def _forget_quiet(self, now: float) -> None:
        for host, failures in list(self.failures.items()):
            if failures[-1] < now - WINDOW and host not in self._waiting:
                del self.failures[host]
                self._next_check.pop(host, None)

    def close(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        self._waiting.clear()
