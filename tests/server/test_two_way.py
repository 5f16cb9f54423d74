"""Both directions: the server sends to clients, and clients send to each other through it."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

import telex
from telex.core.events import AckStatus, Message
from telex.server import PeerEvent, Server
from telex.store import SQLiteStore

from ..conftest import TIMEOUT


async def test_the_server_sends_and_the_client_acknowledges(server: Server) -> None:
    async with telex.connect("127.0.0.1", server.port, name="alice") as alice:
        ack = await server.send("alice", "the build is green")
        assert ack.ok and ack.reply == b""
        async with asyncio.timeout(TIMEOUT):
            message = await alice.receive()
        assert message == Message(1, "the build is green")
        assert message.sender is None  # from the server itself


async def test_async_for_receives_until_the_server_goes(server: Server) -> None:
    async with telex.connect("127.0.0.1", server.port, name="bob", stay_after_goodbye=False) as bob:
        for text in ("one", "two", "three"):
            await server.send("bob", text)
        await server.close()
        async with asyncio.timeout(TIMEOUT):
            got = [message.body async for message in bob]
    assert got == ["one", "two", "three"]


async def test_the_clients_handler_reply_comes_back(server: Server) -> None:
    def handler(message: Message) -> str:
        if message.body == "no":
            raise telex.Reject("not today")
        return f"got {message.body}"

    async with telex.connect("127.0.0.1", server.port, name="bot", handler=handler):
        assert (await server.send("bot", "hi")).reply == "got hi"
        with pytest.raises(telex.MessageRejected) as caught:
            await server.send("bot", "no")
        assert caught.value.ack.status == AckStatus.REFUSED
        assert caught.value.ack.reason == "not today"


async def test_an_async_client_handler_keeps_order(server: Server) -> None:
    seen: list[str] = []

    async def handler(message: Message) -> str:
        await asyncio.sleep(0)
        seen.append(str(message.body))
        return "ok"

    async with telex.connect("127.0.0.1", server.port, name="slow", handler=handler):
        acks = await asyncio.gather(*(server.send("slow", str(i)) for i in range(50)))
    assert all(a.ok for a in acks)
    assert seen == [str(i) for i in range(50)]


async def test_sending_to_a_client_that_is_not_connected(server: Server) -> None:
    with pytest.raises(telex.MessageRejected) as caught:
        await server.send("nobody", "hello?")
    assert caught.value.ack.status == AckStatus.NOT_DELIVERED
    assert "nobody" in caught.value.ack.reason


async def test_a_name_is_held_by_one_connection_at_a_time(server: Server) -> None:
    async with telex.connect("127.0.0.1", server.port, name="alice"):
        with pytest.raises(telex.ConnectError, match="refused: the name 'alice' is in use"):
            await telex.connect("127.0.0.1", server.port, name="alice")
    async with telex.connect("127.0.0.1", server.port, name="alice") as again:  # free again
        assert again.name == "alice"


async def test_a_client_without_a_name_gets_one(server: Server) -> None:
    async with (
        telex.connect("127.0.0.1", server.port) as first,
        telex.connect("127.0.0.1", server.port) as second,
    ):
        assert first.name and second.name and first.name != second.name
        assert first.name.startswith("guest-")
        assert (await server.send(first.name, "you too")).ok


async def test_an_invalid_name_is_refused(server: Server) -> None:
    with pytest.raises(telex.ConnectError, match="invalid name"):
        await telex.connect("127.0.0.1", server.port, name="two words")


async def test_client_to_client_with_the_recipients_ack(server: Server) -> None:
    async with (
        telex.connect("127.0.0.1", server.port, name="alice") as alice,
        telex.connect("127.0.0.1", server.port, name="bob", handler=lambda m: f"hi {m.sender}"),
    ):
        ack = await alice.send("are you there?", to="bob")
        assert ack.ok and ack.reply == "hi alice"
        with pytest.raises(telex.MessageRejected) as caught:
            await alice.send("hello?", to="carol")
        assert caught.value.ack.status == AckStatus.NOT_DELIVERED
        assert caught.value.ack.reason == "no client named 'carol' is connected"
    assert server.stats()["delivered"] == 1


async def test_order_per_sender_is_kept_through_the_server(server: Server) -> None:
    received: list[Message] = []
    async with (
        telex.connect("127.0.0.1", server.port, name="alice") as alice,
        telex.connect("127.0.0.1", server.port, name="bob", handler=received.append),
    ):
        acks = await alice.send_many((f"m{i}" for i in range(2000)), to="bob", window=100)
    assert all(a.ok for a in acks)
    assert [m.body for m in received] == [f"m{i}" for i in range(2000)]
    assert {m.sender for m in received} == {"alice"}


async def test_recipient_leaving_before_its_ack_is_not_delivered(server: Server) -> None:
    arrived = asyncio.Event()
    never = asyncio.Event()

    async def stuck(message: Message) -> None:
        arrived.set()
        await never.wait()

    async with telex.connect("127.0.0.1", server.port, name="alice") as alice:
        bob = await telex.connect("127.0.0.1", server.port, name="bob", handler=stuck)
        pending = alice.send_nowait("for bob", to="bob")
        async with asyncio.timeout(TIMEOUT):
            await arrived.wait()
            bob._protocol.transport.abort()  # type: ignore[union-attr]  # bob's process dies
            ack = await pending
        assert ack.status == AckStatus.NOT_DELIVERED
        assert "bob disconnected" in ack.reason


async def test_broadcast_reaches_everyone(server: Server) -> None:
    async with (
        telex.connect("127.0.0.1", server.port, name="a"),
        telex.connect("127.0.0.1", server.port, name="b", handler=lambda m: "b here"),
    ):
        acks = await server.broadcast("lunch")
    assert sorted(acks) == ["a", "b"]
    assert acks["b"].reply == "b here"


async def test_who_and_events() -> None:
    events: list[PeerEvent] = []
    left = asyncio.Event()

    def record(event: PeerEvent) -> None:
        events.append(event)
        if event.kind == "left":
            left.set()

    async with Server(port=0, on_event=record) as server:
        async with telex.connect("127.0.0.1", server.port, name="alice"):
            assert [p.name for p in server.who()] == ["alice"]
        async with asyncio.timeout(TIMEOUT):
            await left.wait()  # the server sees the close a moment after the client
    assert [(e.kind, e.peer.name) for e in events] == [("joined", "alice"), ("left", "alice")]


async def test_blocking_client_receives(server: Server) -> None:
    connected = threading.Event()

    def use() -> Message:
        with telex.Client("127.0.0.1", server.port, name="sync") as client:
            connected.set()
            return client.receive(timeout=TIMEOUT)

    receiving = asyncio.create_task(asyncio.to_thread(use))
    assert await asyncio.to_thread(connected.wait, TIMEOUT)
    async with asyncio.timeout(TIMEOUT):
        assert (await server.send("sync", "to the blocking client")).ok
        message = await receiving
    assert message.body == "to the blocking client"


async def test_server_send_many_pipelines_in_order(server: Server) -> None:
    got: list[str] = []
    async with telex.connect(
        "127.0.0.1", server.port, name="sink", handler=lambda m: got.append(str(m.body))
    ):
        acks = await server.send_many("sink", (str(i) for i in range(3000)), window=100)
    assert len(acks) == 3000 and all(a.ok for a in acks)
    assert got == [str(i) for i in range(3000)]
    nobody = await server.send_many("nobody", ["a", "b"])
    assert [a.status for a in nobody] == [AckStatus.NOT_DELIVERED] * 2


async def test_server_send_many_with_a_store(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "t.db")
    async with Server(port=0, store=store) as server:
        got: list[str] = []
        async with telex.connect(
            "127.0.0.1", server.port, name="sink", handler=lambda m: got.append(str(m.body))
        ):
            acks = await server.send_many("sink", (str(i) for i in range(500)), window=50)
        assert all(a.ok for a in acks)
        assert got == [str(i) for i in range(500)]
    store.close()
