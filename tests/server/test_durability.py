"""An ack is a promise: stored before it leaves, resent after a cut, stored once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import telex
from telex.core.events import AckStatus, Message, Receipt
from telex.server import Server
from telex.store import Record, SQLiteStore

from ..conftest import TIMEOUT, wait_until
from ..proxy import CuttingProxy, random_cuts


@pytest.fixture
async def stored(tmp_path: Path) -> AsyncIterator[Server]:
    store = SQLiteStore(tmp_path / "telex.db")
    async with Server(port=0, store=store) as running:
        yield running
    store.close()


def records(path: Path) -> list[Record]:
    """What another process reading the file sees (as telex log does)."""
    reader = SQLiteStore(path, readonly=True)
    try:
        return list(reader.records())
    finally:
        reader.close()


async def test_a_message_is_in_the_file_when_its_ack_arrives(stored: Server) -> None:
    assert stored.store is not None
    async with telex.connect("127.0.0.1", stored.port, name="alice") as alice:
        ack = await alice.send("keep this")
        assert ack.ok and ack.reply == "received"
        [record] = records(stored.store.path)
        assert (record.sender, record.body, record.reply) == ("alice", "keep this", "received")
        acks = await alice.send_many([b"\x00binary", "text"])
        assert all(a.ok for a in acks)
    bodies = [r.body for r in records(stored.store.path)]
    assert bodies == ["keep this", b"\x00binary", "text"]


async def test_one_commit_for_messages_that_arrive_together(stored: Server) -> None:
    async with telex.connect("127.0.0.1", stored.port) as client:
        before = stored.broker.stats.commits
        acks = await client.send_many(str(i) for i in range(5000))
        assert len(acks) == 5000
        assert stored.broker.stats.commits - before < 500  # batches, not one per message


async def test_100_cuts_lose_nothing_and_double_nothing(stored: Server) -> None:
    assert stored.store is not None
    count = 3000
    async with CuttingProxy(stored.port, random_cuts(seed=7, low=1, high=6000)) as proxy:
        client = telex.AsyncClient(
            "127.0.0.1", proxy.port, name="cut", retries=1000, reconnect_delay=0.001
        )
        await client.connect()
        acks: list[telex.Ack] = []
        async with asyncio.timeout(TIMEOUT * 6):
            while proxy.cuts < 100:  # keep sending until the connection was cut 100 times
                first = len(acks)
                acks += await client.send_many(f"m{i}" for i in range(first, first + count))
        await client.close()
    assert all(ack.ok for ack in acks)
    assert [ack.id for ack in acks] == list(range(1, len(acks) + 1))
    stored_rows = [(r.sender_id, r.body) for r in records(stored.store.path)]
    assert stored_rows == [(i + 1, f"m{i}") for i in range(len(acks))]  # each once, in order
    assert proxy.cuts >= 100
    assert stored.stats()["resent"] > 0  # acks were lost in cuts, and their messages resent


async def test_offline_outbox_in_order_then_receipts(stored: Server) -> None:
    receipts: list[Receipt] = []
    async with telex.connect(
        "127.0.0.1", stored.port, name="alice", on_receipt=receipts.append
    ) as alice:
        for text in ("one", "two", "three"):
            ack = await alice.send(text, to="bob")
            assert ack.ok and ack.reason == "stored for bob, who is not connected"
        got: list[Message] = []
        async with telex.connect("127.0.0.1", stored.port, name="bob", handler=got.append):
            await wait_until(lambda: len(receipts) == 3)
        assert [m.body for m in got] == ["one", "two", "three"]
        assert {m.sender for m in got} == {"alice"}
        assert [r.id for r in receipts] == [1, 2, 3] and all(r.ok for r in receipts)
    assert stored.store is not None
    assert [r.body for r in records(stored.store.path) if r.delivered is None] == []


async def test_a_redelivered_message_is_recognised(stored: Server) -> None:
    """bob takes a message, but his ack is lost with his connection: the server sends it
    again when he is back, and his client answers without handing it over twice."""
    calls: list[Message] = []
    client: telex.AsyncClient | None = None

    async def take(message: Message) -> str:
        calls.append(message)
        if len(calls) == 1 and client is not None and client._protocol is not None:
            assert client._protocol.transport is not None
            client._protocol.transport.abort()  # the ack below is lost with it
        return "taken"

    client = telex.AsyncClient(
        "127.0.0.1", stored.port, name="bob", handler=take, reconnect_delay=0.01
    )
    await client.connect()
    ack = await stored.send("bob", "exactly once, please")
    assert ack.reason == "stored for bob, who left before acknowledging"
    await wait_until(lambda: stored.stats()["delivered"] == 1)  # sent again, and answered
    await client.close()
    assert [m.body for m in calls] == ["exactly once, please"]


async def test_a_store_that_cannot_write_acknowledges_nothing(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "telex.db")
    async with (
        Server(port=0, store=store) as server,
        telex.connect("127.0.0.1", server.port, reconnect=False) as client,
    ):
        assert (await client.send("before")).ok
        store.db.execute("PRAGMA query_only = ON")  # as a file system gone read-only
        with pytest.raises(telex.MessageRejected) as caught:
            await client.send("while read-only")
        assert caught.value.ack.status == AckStatus.UNAVAILABLE
        assert "readonly" in caught.value.ack.reason
        store.db.execute("PRAGMA query_only = OFF")
        pages = store.db.execute("PRAGMA page_count").fetchone()[0]
        store.db.execute(f"PRAGMA max_page_count = {pages}")  # as a full disk
        acks = await client.send_many([b"x" * 4000 for _ in range(20)])
        assert {a.status for a in acks} == {AckStatus.UNAVAILABLE}
        assert "full" in acks[0].reason
        store.db.execute("PRAGMA max_page_count = 1073741823")
        assert (await client.send("after")).ok
    bodies = [r.body for r in records(tmp_path / "telex.db")]
    assert bodies == ["before", "after"]  # nothing acknowledged was lost, nothing else stored
    store.close()


async def test_sync_full_is_set(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "telex.db", sync="full")
    assert store.db.execute("PRAGMA synchronous").fetchone()[0] == 2
    store.close()


async def test_text_peers_are_stored_too(stored: Server) -> None:
    assert stored.store is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", stored.port)
    writer.write(b"from netcat\n")
    async with asyncio.timeout(TIMEOUT):
        assert await reader.readline() == b"ack 1: received\n"
    writer.close()
    [record] = records(stored.store.path)
    assert record.sender is not None and record.sender.startswith("127.0.0.1:")
    assert record.body == "from netcat"


async def test_server_messages_wait_for_a_client_that_is_away(stored: Server) -> None:
    ack = await stored.send("carol", "while you were out")
    assert ack.reason == "stored for carol, who is not connected"
    async with telex.connect("127.0.0.1", stored.port, name="carol") as carol:
        message = await carol.receive(timeout=TIMEOUT)
    assert message.body == "while you were out" and message.sender is None
