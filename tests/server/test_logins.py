"""The login pacer alone: checks per address one at a time, waits before the check."""

from __future__ import annotations

import asyncio

from telex.core.broker import Link, Peer
from telex.server.logins import LoginPacer


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def link(host: str) -> Link:
    return Link(Peer(f"{host}:1"), host)


def test_penalties_grow_after_five_failures_and_are_forgotten_after_a_minute() -> None:
    clock = Clock()
    pacer = LoginPacer(lambda _: False, lambda: None, clock)
    assert [pacer.penalty("10.0.0.9") for _ in range(10)] == [0, 0, 0, 0, 0, 1, 2, 4, 8, 16]
    assert [pacer.penalty("10.0.0.9") for _ in range(2)] == [30, 30]
    assert pacer.penalty("10.0.0.10") == 0  # another address is not slowed
    clock.now += 61
    assert pacer.penalty("10.0.0.9") == 0


async def test_each_address_waits_for_its_own_failures_only() -> None:
    checked: list[str] = []

    def check(login: Link) -> bool:
        checked.append(login.host)
        return login.host != "1.1.1.1"  # every guess from 1.1.1.1 is wrong

    woken: list[None] = []
    pacer = LoginPacer(check, lambda: woken.append(None))
    for _ in range(7):
        pacer.submit(link("1.1.1.1"))  # the sixth failure makes the next check wait 1 s
    assert len(checked) == 6 and pacer.waiting("1.1.1.1") == 1
    pacer.submit(link("2.2.2.2"))  # another address is checked at once
    assert checked[-1] == "2.2.2.2" and pacer.waiting("2.2.2.2") == 0
    await asyncio.sleep(0.5)
    assert len(checked) == 7 and not woken  # the seventh still waits
    await asyncio.sleep(0.8)  # the wait is the loop's timer: real time passes
    assert checked[-1] == "1.1.1.1" and len(checked) == 8 and woken
    pacer.close()
