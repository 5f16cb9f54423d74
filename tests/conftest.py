"""Shared test helpers: one timeout unit, scaled by TELEX_TEST_TIMEOUT on a slow machine."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable

import pytest

from telex.core import frames
from telex.core.events import Event
from telex.core.frames import PREAMBLE, FrameType
from telex.core.protocol import Connection, Role
from telex.server import Server

from . import postgres as _postgres
from .postgres import postgres, postgres_url  # noqa: F401 - fixtures for every test

TIMEOUT = float(os.environ.get("TELEX_TEST_TIMEOUT", "10"))


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    async with Server(port=0) as running:
        yield running


HELLO = PREAMBLE + frames.json_frame(FrameType.HELLO, {"version": 1, "name": "raw"})


async def read_until_closed(reader: asyncio.StreamReader) -> bytes:
    """Everything the server sends until it closes the connection."""
    async with asyncio.timeout(TIMEOUT):
        return await reader.read(-1)


def parse_from_server(data: bytes) -> list[Event]:
    """What a client would make of the server's bytes (preamble included)."""
    return Connection(Role.CLIENT).receive_data(data)


async def wait_until(condition: Callable[[], object], what: str = "the condition") -> None:
    """Poll ``condition`` until it holds, for state no event announces; fail after TIMEOUT."""
    async with asyncio.timeout(TIMEOUT):
        while not condition():  # noqa: ASYNC110 - the state polled has no event to wait on
            await asyncio.sleep(0.005)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    _postgres.leave_out(config, items)


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, exitstatus: int, config: pytest.Config
) -> None:
    _postgres.summary(terminalreporter, config)
