"""The asyncio server and the clients over real sockets on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
from pathlib import Path

import pytest

import telex
from telex.core import frames
from telex.core.events import AckStatus, ErrorCode, Message, PeerError
from telex.core.frames import FrameType
from telex.server import Peer, Reject, Server

from ..conftest import HELLO, TIMEOUT, parse_from_server, read_until_closed


async def test_send_returns_the_servers_ack(server: Server) -> None:
    async with telex.connect("127.0.0.1", server.port, name="alice") as client:
        ack = await client.send("hello")
        assert ack.ok and ack.id == 1 and ack.reply == "received"
        ack = await client.send(b"\x00bytes")
        assert ack.id == 2
        assert client.server_limits["max_message_size"] == 1024 * 1024
    assert server.stats()["accepted"] == 2


async def test_the_handler_sees_body_and_peer() -> None:
    seen: list[tuple[Message, str | None, str]] = []

    def handler(message: Message, peer: Peer) -> str:
        seen.append((message, peer.name, peer.mode))
        return f"got {message.body!r}"

    async with (
        Server(handler, port=0) as server,
        telex.connect("127.0.0.1", server.port, name="bob") as client,
    ):
        ack = await client.send("hi")
    assert ack.reply == "got 'hi'"
    assert seen == [(Message(1, "hi"), "bob", "framed")]


async def test_send_many_pipelines_and_keeps_order(server: Server) -> None:
    async with telex.connect("127.0.0.1", server.port) as client:
        acks = await client.send_many((f"m{i}" for i in range(5000)), window=300)
    assert [ack.id for ack in acks] == list(range(1, 5001))
    assert all(ack.ok for ack in acks)


async def test_rejections() -> None:
    def handler(message: Message, peer: Peer) -> str:
        if message.body == "no":
            raise Reject("not that one")
        if message.body == "boom":
            raise ValueError("handler bug")
        return "fine"

    async with (
        Server(handler, port=0) as server,
        telex.connect("127.0.0.1", server.port) as client,
    ):
        with pytest.raises(telex.MessageRejected) as caught:
            await client.send("no")
        assert caught.value.ack.status == AckStatus.REFUSED
        assert caught.value.ack.reason == "not that one"
        acks = await client.send_many(["a", "boom", "b"])
        assert [a.status for a in acks] == [0, AckStatus.HANDLER_FAILED, 0]
        assert "ValueError" not in acks[1].reason  # details stay on the server
        assert (await client.send("still up")).ok
    assert server.stats()["rejected"] == 2


async def test_async_handler_keeps_order() -> None:
    async def handler(message: Message, peer: Peer) -> str:
        await asyncio.sleep(random.random() / 1000)
        return f"done {message.id}"

    async with (
        Server(handler, port=0) as server,
        telex.connect("127.0.0.1", server.port) as client,
    ):
        acks = await client.send_many([str(i) for i in range(200)])
    assert [a.reply for a in acks] == [f"done {i}" for i in range(1, 201)]


async def test_oversized_message_is_rejected_and_the_connection_kept() -> None:
    async with (
        Server(port=0, limits=telex.Limits(max_message_size=1000)) as server,
        telex.connect("127.0.0.1", server.port) as client,
    ):
        with pytest.raises(telex.MessageRejected) as caught:
            await client.send(b"x" * 5000)
        assert caught.value.ack.status == AckStatus.TOO_LARGE
        assert (await client.send(b"x" * 1000)).ok


async def test_200_clients_50_messages_each(server: Server) -> None:
    async def one(n: int) -> int:
        async with telex.connect("127.0.0.1", server.port, name=f"c{n}") as client:
            acks = await client.send_many(f"{n}:{i}" for i in range(50))
            return sum(ack.ok for ack in acks)

    async with asyncio.timeout(TIMEOUT * 3):
        results = await asyncio.gather(*(one(n) for n in range(200)))
    assert results == [50] * 200
    assert server.stats()["accepted"] == 200 * 50


async def test_blocking_client(server: Server) -> None:
    def use() -> list[telex.Ack]:
        with telex.Client("127.0.0.1", server.port, name="sync") as client:
            first = client.send("one")
            return [first, *client.send_many(["two", b"three"])]

    acks = await asyncio.to_thread(use)
    assert [a.id for a in acks] == [1, 2, 3]


async def test_blocking_client_cannot_connect() -> None:
    with pytest.raises(telex.ConnectError, match="refused"):
        await asyncio.to_thread(telex.Client, "127.0.0.1", await free_port())


async def free_port() -> int:
    async with Server(port=0) as spare:
        return spare.port


async def test_connect_errors() -> None:
    with pytest.raises(telex.ConnectError, match="refused"):
        await telex.connect("127.0.0.1", await free_port())
    with pytest.raises(telex.ConnectError, match="resolve"):
        await telex.connect("no-such-host.invalid", 7777)


async def plain_server(greeting: bytes) -> tuple[asyncio.Server, asyncio.Event]:
    """A non-telex server that sends ``greeting`` and waits for the client to leave."""
    gone = asyncio.Event()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(greeting)
            await reader.read()
        finally:
            writer.close()
            await writer.wait_closed()
            gone.set()

    return await asyncio.start_server(serve, "127.0.0.1", 0), gone


async def test_connect_to_a_server_that_is_not_telex() -> None:
    plain, gone = await plain_server(b"220 smtp ready\r\n")
    async with plain:
        port = plain.sockets[0].getsockname()[1]
        with pytest.raises(telex.ConnectError, match=r"not a telex server.*220 smtp"):
            await telex.connect("127.0.0.1", port)
        async with asyncio.timeout(TIMEOUT):
            await gone.wait()


async def test_connect_to_a_silent_server_times_out() -> None:
    plain, gone = await plain_server(b"")
    async with plain:
        port = plain.sockets[0].getsockname()[1]
        with pytest.raises(telex.ConnectError, match="did not answer the telex handshake"):
            await telex.connect("127.0.0.1", port, connect_timeout=0.3)
        async with asyncio.timeout(TIMEOUT):
            await gone.wait()


async def test_connection_limit_per_address() -> None:
    limits = telex.Limits(max_connections_per_address=2)
    async with (
        Server(port=0, limits=limits) as server,
        telex.connect("127.0.0.1", server.port),
        telex.connect("127.0.0.1", server.port),
    ):
        with pytest.raises(telex.ConnectError, match="closed the connection"):
            await telex.connect("127.0.0.1", server.port)
        assert server.stats()["refused_connections"] == 1


async def test_silent_connections_never_lock_out_a_real_client() -> None:
    """300 connections that never finish a handshake, from the client's own address:
    the oldest of them make room, and a client that completes its handshake gets in."""
    async with Server(port=0) as server:
        silent = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(300)]
        await asyncio.sleep(0.1)  # the server has taken them all
        async with telex.connect("127.0.0.1", server.port) as client:
            assert (await client.send("in, despite the silent ones")).ok
        oldest_reader, _ = silent[0]
        async with asyncio.timeout(TIMEOUT):
            told = await oldest_reader.read()
        assert told.startswith(b"error: closed unfinished: more than 256 handshakes")
        newest_reader, _ = silent[-1]
        with pytest.raises(TimeoutError):  # the newest still has its slot
            async with asyncio.timeout(0.2):
                await newest_reader.read(1)
        assert len(server.connections) == 255  # 256 slots, one given up for the client
        for _, writer in silent:
            writer.close()


async def test_a_full_server_closes_the_oldest_unfinished_handshake() -> None:
    limits = telex.Limits(max_connections=3)
    async with Server(port=0, limits=limits) as server, telex.connect("127.0.0.1", server.port):
        first = await asyncio.open_connection("127.0.0.1", server.port)
        second = await asyncio.open_connection("127.0.0.1", server.port)
        async with telex.connect("127.0.0.1", server.port) as late:  # takes first's slot
            assert (await late.send("room was made")).ok
            async with asyncio.timeout(TIMEOUT):
                assert b"the server is full" in await first[0].read()
            # Now every connection has finished its handshake but one: that one goes too.
            async with telex.connect("127.0.0.1", server.port):
                async with asyncio.timeout(TIMEOUT):
                    assert b"the server is full" in await second[0].read()
                with pytest.raises(telex.ConnectError, match="closed the connection"):
                    await telex.connect("127.0.0.1", server.port)  # no one left to close
        for _, writer in (first, second):
            writer.close()


async def test_quiet_client_is_pinged_and_stays() -> None:
    limits = telex.Limits(idle_timeout=0.6)
    async with (
        Server(port=0, limits=limits) as server,
        telex.connect("127.0.0.1", server.port) as client,
    ):
        await asyncio.sleep(1.5)  # the time passing is the condition under test
        assert (await client.send("still here")).ok


async def test_graceful_shutdown_answers_everything_then_says_goodbye() -> None:
    started = asyncio.Event()

    async def slow(message: Message, peer: Peer) -> str:
        started.set()
        await asyncio.sleep(0.001)
        return "ok"

    server = Server(slow, port=0)
    await server.start()
    client = await telex.connect("127.0.0.1", server.port, reconnect=False)
    futures = [client.send_nowait(str(i)) for i in range(300)]
    async with asyncio.timeout(TIMEOUT):
        await started.wait()
        await asyncio.sleep(0.05)  # let all 300 reach the server before it stops
        await server.close()
        acks = await asyncio.gather(*futures)
    assert all(ack.ok for ack in acks)
    with pytest.raises(telex.ConnectionClosed):
        await client.send("too late")
    await client.close()


# -- bad input over real sockets -----------------------------------------------------------


async def raw(server: Server, data: bytes, *, close: bool = False) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(data)
    if close:
        writer.write_eof()
    try:
        return await read_until_closed(reader)
    finally:
        writer.close()


def error_code(data: bytes) -> int:
    errors = [e for e in parse_from_server(data) if isinstance(e, PeerError)]
    assert errors, data
    return errors[-1].code


BAD_INPUT = {
    "random bytes after the preamble": (HELLO + os.urandom(64) + b"\x00\x00\x00\x01\x7f", None),
    "bad preamble": (b"\x89TLY\r\n\x1a\nxxxxx", ErrorCode.BAD_PREAMBLE),
    "absurd length": (HELLO + frames.MESSAGE_HEAD.pack(2**32 - 1, 0x10, 1, 0), 4),
    "unknown frame type": (HELLO + frames.HEADER.pack(1, 0x55), ErrorCode.UNKNOWN_FRAME_TYPE),
    "invalid UTF-8": (HELLO + frames.message(1, b"\xff", 1), ErrorCode.INVALID_UTF8),
    "second handshake": (HELLO + HELLO[8:], ErrorCode.UNEXPECTED_FRAME),
    "message id repeated": (
        HELLO + frames.message(3, b"a", 0) + frames.message(3, b"b", 0),
        ErrorCode.ID_NOT_INCREASING,
    ),
}


@pytest.mark.parametrize("name", BAD_INPUT)
async def test_bad_input_gets_an_error_frame_and_close(server: Server, name: str) -> None:
    data, expected = BAD_INPUT[name]
    async with telex.connect("127.0.0.1", server.port) as bystander:
        answer = await raw(server, data)
        code = error_code(answer)
        if expected is not None:
            assert code == expected
        assert (await bystander.send("undisturbed")).ok
    assert server.stats()["violations"] >= 1


async def test_truncated_frame_then_close(server: Server) -> None:
    answer = await raw(server, HELLO + frames.message(1, b"cut short", 0)[:-4], close=True)
    assert error_code(answer) == ErrorCode.TRUNCATED_FRAME
    async with telex.connect("127.0.0.1", server.port) as client:
        assert (await client.send("fine")).ok


async def test_silent_peer_is_dropped_after_the_handshake_timeout() -> None:
    limits = telex.Limits(handshake_timeout=0.3)
    async with Server(port=0, limits=limits) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        answer = await read_until_closed(reader)
        writer.close()
        assert answer == b"error: no handshake within 0.3 s\n"


async def test_half_handshake_is_dropped_with_an_error_frame() -> None:
    limits = telex.Limits(handshake_timeout=0.3)
    async with Server(port=0, limits=limits) as server:
        answer = await raw(server, HELLO[:10])
        assert error_code(answer) == ErrorCode.HANDSHAKE_TIMEOUT


async def test_peer_that_never_reads_is_bounded_and_dropped() -> None:
    limit = 64 * 1024
    limits = telex.Limits(write_buffer_limit=limit, idle_timeout=1.0)
    async with Server(port=0, limits=limits) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        transport = writer.transport
        transport.pause_reading()  # never read an ack
        writer.write(HELLO)
        largest = 0
        next_id = 1
        async with telex.connect("127.0.0.1", server.port) as bystander:
            async with asyncio.timeout(TIMEOUT):
                for _ in range(500):  # until the server has stopped reading from it
                    ids = range(next_id, next_id + 1000)
                    next_id += 1000
                    writer.write(b"".join(frames.message(i, b"x" * 100, 0) for i in ids))
                    if transport.get_write_buffer_size() > 4 * 1024 * 1024:
                        break
                    await asyncio.sleep(0)
                for peer in server.connections:
                    if peer.transport is not None:
                        largest = max(largest, peer.transport.get_write_buffer_size())
                assert (await bystander.send("undisturbed")).ok
        transport.resume_reading()  # the server drops it once idle_timeout passes
        with contextlib.suppress(ConnectionResetError):
            await read_until_closed(reader)
        writer.close()
        assert len(server.connections) == 0
        # bounded: the limit, plus at most one read's worth of acks
        assert limit <= largest <= limit + 65536


async def test_server_survives_random_garbage_from_many_peers(server: Server) -> None:
    rng = random.Random(1234)
    for _ in range(30):
        prefix = HELLO if rng.random() < 0.5 else b""
        await raw(server, prefix + rng.randbytes(rng.randrange(1, 400)), close=True)
    async with telex.connect("127.0.0.1", server.port) as client:
        assert (await client.send("alive")).ok


def test_frame_types_are_documented() -> None:
    doc = (Path(__file__).parents[2] / "docs" / "protocol.md").read_text()
    for frame_type in FrameType:
        assert f"`{frame_type.name}`" in doc
        assert f"0x{frame_type.value:02x}" in doc
    for code in ErrorCode:
        assert f"| {code.value} |" in doc


async def test_text_peer_answers_keep_order_around_a_long_line() -> None:
    async with Server(port=0, limits=telex.Limits(max_message_size=10)) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"short\n" + b"y" * 50 + b"\nafter\n")
        writer.write_eof()
        answer = await read_until_closed(reader)
        writer.close()
    assert answer == (
        b"ack 1: received\n"
        b"rejected 2: message of 50 bytes is over the limit of 10\n"
        b"ack 3: received\n"
    )


async def test_text_peer_hears_goodbye_on_shutdown() -> None:
    server = Server(port=0)
    await server.start()
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"hello\n")
    async with asyncio.timeout(TIMEOUT):
        assert await reader.readline() == b"ack 1: received\n"
        await server.close()
    assert await read_until_closed(reader) == b"bye: server shutting down\n"
    writer.close()
