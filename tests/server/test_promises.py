"""What docs/protocol.md promises, checked over real sockets against the real server.

Each test is one of the edge paths an independent client found broken (issue 9), sent
as raw bytes the way a client written from the spec alone would send them.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import telex
from telex.core import frames
from telex.core.events import (
    Ack,
    Challenge,
    Event,
    Goodbye,
    Message,
    PeerError,
    Pong,
    Receipt,
    Welcome,
)
from telex.core.frames import PREAMBLE, FrameType
from telex.core.protocol import Connection, Role
from telex.core.records import Batch, Committed
from telex.security import Users
from telex.server import Peer, Server
from telex.store import SQLiteStore, StoreError

from ..conftest import TIMEOUT, read_until_closed, wait_until


def hello(name: str = "raw", session: str | None = None) -> bytes:
    fields: dict[str, object] = {"version": 1, "name": name}
    if session is not None:
        fields["session"] = session
    return frames.json_frame(FrameType.HELLO, fields)


def text(msg_id: int, body: str) -> bytes:
    return frames.message(msg_id, body.encode(), frames.FLAG_TEXT)


class Raw:
    """A client that writes exactly the bytes it is given and parses what comes back."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.parser = Connection(Role.CLIENT)
        self.events: list[Event] = []

    @classmethod
    async def open(cls, port: int) -> Raw:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    async def write(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def until(self, count: int) -> list[Event]:
        """Read until at least ``count`` events have come (or the server closed)."""
        async with asyncio.timeout(TIMEOUT):
            while len(self.events) < count:
                data = await self.reader.read(65536)
                if not data:
                    break
                self.events += self.parser.receive_data(data)
        return self.events

    async def rest(self) -> list[Event]:
        """Every event until the server closes; then this side closes too."""
        self.events += self.parser.receive_data(await read_until_closed(self.reader))
        self.close()
        return self.events

    def close(self) -> None:
        self.writer.close()


def kinds(events: list[Event]) -> list[str]:
    """Events as short names: ``ACK 1``, ``ERROR 3``, ``WELCOME``..."""
    names = []
    for event in events:
        if type(event) is Ack:
            names.append(f"ACK {event.id}")
        elif type(event) is Receipt:
            names.append(f"RECEIPT {event.id}")
        elif type(event) is PeerError:
            names.append(f"ERROR {event.code}")
        else:
            names.append(type(event).__name__.upper())
    return names


@pytest.fixture
async def plain() -> AsyncIterator[Server]:
    async with Server(port=0) as running:
        yield running


@pytest.fixture
async def stored(tmp_path: Path) -> AsyncIterator[Server]:
    async with Server(port=0, store=tmp_path / "telex.db") as running:
        yield running


async def test_a_ping_on_a_quiet_connection_gets_its_pong_at_once(plain: Server) -> None:
    raw = await Raw.open(plain.port)
    await raw.write(PREAMBLE + hello())
    await raw.until(1)
    await raw.write(frames.ping(FrameType.PING, 7))
    events = await raw.until(2)
    assert kinds(events) == ["WELCOME", "PONG"]
    assert events[1] == Pong((7).to_bytes(8, "big"))
    raw.close()


async def test_a_ping_pipelined_after_hello_is_answered_after_the_welcome(plain: Server) -> None:
    raw = await Raw.open(plain.port)
    await raw.write(PREAMBLE + hello() + frames.ping(FrameType.PING, 1))
    assert kinds(await raw.until(2)) == ["WELCOME", "PONG"]
    raw.close()


@pytest.mark.parametrize("store", [False, True], ids=["no store", "store"])
@pytest.mark.parametrize(
    ("after_hello", "expected"),
    [
        (frames.HEADER.pack(1, 0x7E), ["WELCOME", "ERROR 3"]),
        (text(1, "one") + text(1, "again"), ["WELCOME", "ACK 1", "ERROR 10"]),
        (
            text(1, "good") + frames.message(2, b"\xff", frames.FLAG_TEXT),
            ["WELCOME", "ACK 1", "ERROR 5"],
        ),
        (frames.goodbye("done") + text(1, "late"), ["WELCOME", "GOODBYE", "ERROR 6"]),
    ],
    ids=["unknown type", "same id twice", "bad utf-8", "message after goodbye"],
)
async def test_an_error_is_the_last_frame_after_the_answers_before_it(
    tmp_path: Path, store: bool, after_hello: bytes, expected: list[str]
) -> None:
    async with Server(port=0, store=tmp_path / "t.db" if store else None) as server:
        raw = await Raw.open(server.port)
        await raw.write(PREAMBLE + hello() + after_hello)
        assert kinds(await raw.rest()) == expected


async def test_a_bad_preamble_gets_the_servers_preamble_then_error_1(plain: Server) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", plain.port)
    writer.write(b"\x89NOPE\r\n\x1a\n")
    data = await read_until_closed(reader)
    assert data.startswith(PREAMBLE)
    assert kinds(Connection(Role.CLIENT).receive_data(data)) == ["ERROR 1"]
    writer.close()


async def test_on_a_token_server_a_message_before_welcome_gets_challenge_then_error_6() -> None:
    async with Server(port=0, token="s3cret") as server:
        raw = await Raw.open(server.port)
        await raw.write(PREAMBLE + hello() + text(1, "too early"))
        events = await raw.rest()
        assert kinds(events) == ["CHALLENGE", "ERROR 6"]


async def test_goodbye_is_answered_and_the_connection_closed_before_a_late_message(
    plain: Server,
) -> None:
    """GOODBYE then MESSAGE over two reads: the server has answered the GOODBYE and closed
    by then (in one read, the core sees both: ERROR 6, as the previous test shows)."""
    raw = await Raw.open(plain.port)
    await raw.write(PREAMBLE + hello())
    await raw.until(1)
    await raw.write(frames.goodbye("done"))
    await raw.until(2)
    with contextlib.suppress(ConnectionError):
        await raw.write(text(1, "late"))
    assert kinds(await raw.rest()) == ["WELCOME", "GOODBYE"]


async def test_messages_then_goodbye_in_one_write_get_every_ack_then_goodbye(
    stored: Server,
) -> None:
    raw = await Raw.open(stored.port)
    await raw.write(PREAMBLE + hello() + text(1, "one") + text(2, "two") + frames.goodbye(""))
    assert kinds(await raw.rest()) == ["WELCOME", "ACK 1", "ACK 2", "GOODBYE"]


async def test_acks_keep_arrival_order_with_a_store_an_async_handler_and_routed(
    tmp_path: Path,
) -> None:
    async def slow(message: Message, peer: Peer) -> str:
        await asyncio.sleep(0.05)  # the routed message's commit would finish first
        return "handled"

    async with Server(slow, port=0, store=tmp_path / "t.db") as server:
        raw = await Raw.open(server.port)
        routed = frames.routed(3, b"bob", b"for bob", frames.FLAG_TEXT)
        await raw.write(PREAMBLE + hello() + text(1, "one") + text(2, "two") + routed)
        events = await raw.until(4)
        assert kinds(events) == ["WELCOME", "ACK 1", "ACK 2", "ACK 3"]
        assert isinstance(events[3], Ack) and events[3].stored and events[3].away
        raw.close()


async def test_routed_without_a_store_carries_the_recipients_answer(plain: Server) -> None:
    def bob_answers(message: Message) -> str:
        return f"bob got {message.body}"

    async with (
        telex.connect("127.0.0.1", plain.port, name="bob", handler=bob_answers),
        telex.connect("127.0.0.1", plain.port, name="alice") as alice,
    ):
        ack = await alice.send("hi", to="bob")
    assert ack.reply == "bob got hi" and ack.delivered and not ack.stored


async def test_with_a_store_stored_then_delivered_are_two_answers(stored: Server) -> None:
    receipts: list[Receipt] = []
    async with telex.connect(
        "127.0.0.1", stored.port, name="alice", on_receipt=receipts.append
    ) as alice:
        ack = await alice.send("for carol", to="carol")
        assert ack.stored and ack.away and not ack.delivered
        async with telex.connect("127.0.0.1", stored.port, name="carol") as carol:
            message = await carol.receive(timeout=TIMEOUT)
            assert message.body == "for carol" and message.sender == "alice"
            await wait_until(lambda: receipts)
    assert receipts[0].id == ack.id and receipts[0].ok


async def test_unknown_users_get_a_salt_like_a_real_one(tmp_path: Path) -> None:
    users = Users(tmp_path / "users")
    users.add("alice", "alice-token")

    async def salt_for(server: Server, name: str) -> bytes:
        raw = await Raw.open(server.port)
        await raw.write(PREAMBLE + hello(name))
        (challenge,) = await raw.until(1)
        raw.close()
        assert isinstance(challenge, Challenge)
        return challenge.salt

    async with Server(port=0, users=users) as server:
        real = await salt_for(server, "alice")
        ghost = await salt_for(server, "ghost")
        assert len(ghost) == len(real) == 16
        assert ghost != b"\0" * 16
        assert await salt_for(server, "ghost") == ghost  # stable: asking twice tells nothing
        assert await salt_for(server, "other") != ghost


async def test_a_right_answer_to_the_challenge_is_welcomed(tmp_path: Path) -> None:
    """The HMAC is over the decoded challenge bytes, keyed with the token (no salt)."""
    async with Server(port=0, token="s3cret") as server:
        raw = await Raw.open(server.port)
        await raw.write(PREAMBLE + hello())
        (challenge,) = await raw.until(1)
        assert isinstance(challenge, Challenge) and challenge.salt == b""
        answer = hmac.new(b"s3cret", b"telex-auth-v1" + challenge.challenge, hashlib.sha256)
        await raw.write(frames.json_frame(FrameType.AUTH, {"answer": answer.hexdigest()}))
        events = await raw.until(2)
        assert isinstance(events[1], Welcome)
        raw.close()


async def test_a_text_peers_last_line_without_newline_is_answered_at_eof(
    stored: Server,
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", stored.port)
    writer.write(b"a\nunterminated")
    writer.write_eof()
    assert await read_until_closed(reader) == b"ack 1: received\nack 2: received\n"
    writer.close()


@pytest.mark.skipif(shutil.which("nc") is None, reason="nc is not installed")
def test_netcat_gets_an_answer_for_its_last_line(tmp_path: Path) -> None:
    async def run() -> str:
        async with Server(port=0, store=tmp_path / "t.db") as server:
            process = await asyncio.create_subprocess_exec(
                "nc", "-N", "127.0.0.1", str(server.port),
                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            )  # fmt: skip
            out, _ = await asyncio.wait_for(process.communicate(b"a\nunterminated"), TIMEOUT)
            return out.decode()

    assert asyncio.run(run()) == "ack 1: received\nack 2: received\n"


async def test_a_second_session_connection_takes_the_name_over(stored: Server) -> None:
    first = await Raw.open(stored.port)
    await first.write(PREAMBLE + hello("alice", session="s-1"))
    await first.until(1)
    second = await Raw.open(stored.port)
    await second.write(PREAMBLE + hello("alice", session="s-1"))
    assert kinds(await second.until(1)) == ["WELCOME"]
    assert kinds(await first.rest()) == ["WELCOME"]  # closed by the server, without a frame
    other = await Raw.open(stored.port)
    await other.write(PREAMBLE + hello("alice", session="s-2"))
    assert kinds(await other.rest()) == ["ERROR 14"]
    second.close()


async def test_the_name_server_is_reserved(plain: Server) -> None:
    raw = await Raw.open(plain.port)
    await raw.write(PREAMBLE + hello("server"))
    assert kinds(await raw.rest()) == ["ERROR 14"]


async def test_welcome_states_what_the_spec_says(stored: Server) -> None:
    raw = await Raw.open(stored.port)
    await raw.write(PREAMBLE + hello("alice", session="s"))
    data = await raw.reader.readexactly(len(PREAMBLE) + 5)
    (length,) = frames.HEADER.unpack_from(data, len(PREAMBLE))[:1]
    payload = json.loads(await raw.reader.readexactly(length - 1))
    assert payload["version"] == 1 and payload["name"] == "alice"
    assert payload["stable_ids"] is True and payload["limits"]["max_message_size"] > 0
    raw.close()


async def test_goodbye_from_the_client_is_answered_with_goodbye(plain: Server) -> None:
    raw = await Raw.open(plain.port)
    await raw.write(PREAMBLE + hello() + text(1, "last") + frames.goodbye("bye"))
    events = await raw.rest()
    assert kinds(events) == ["WELCOME", "ACK 1", "GOODBYE"]
    assert isinstance(events[-1], Goodbye)


async def test_an_id_too_large_to_store_is_refused_alone(stored: Server) -> None:
    """A hostile id (legal on the wire, above SQL's integers) is refused on its own; the
    messages around it, and another client's, are stored and acknowledged."""
    async with telex.connect("127.0.0.1", stored.port, name="bystander") as bystander:
        raw = await Raw.open(stored.port)
        huge = frames.message(2**63, b"huge", 0)
        await raw.write(PREAMBLE + hello() + text(1, "before") + huge)
        assert (await bystander.send("still fine")).ok
        events = await raw.until(3)
        assert kinds(events) == ["WELCOME", "ACK 1", "ACK 9223372036854775808"]
        refused = events[2]
        assert (
            isinstance(refused, Ack)
            and refused.status == 2
            and "cannot be stored" in refused.reason
        )
        raw.close()
    bodies = sorted(r.body for r in stored.store.records())  # type: ignore[union-attr]
    assert bodies == ["before", "still fine"]


class PickyStore(SQLiteStore):
    """A store that cannot keep one particular body, as a driver may refuse one value."""

    def commit(self, batch: Batch, now: float) -> Committed:
        if any(envelope.body == "poison" for envelope in batch.envelopes):
            raise StoreError("this body cannot be stored")
        return super().commit(batch, now)


async def test_a_part_that_cannot_be_stored_is_refused_alone(tmp_path: Path) -> None:
    """One read makes three parts of one commit; the store refuses one: that message gets
    status 4 with the store's reason, the others are stored and acknowledged."""
    store = PickyStore(tmp_path / "t.db")
    async with Server(port=0, store=store) as server:
        raw = await Raw.open(server.port)
        routed = frames.routed(2, b"bob", b"poison", frames.FLAG_TEXT)
        await raw.write(PREAMBLE + hello() + text(1, "one") + routed + text(3, "three"))
        events = await raw.until(4)
        assert kinds(events) == ["WELCOME", "ACK 1", "ACK 2", "ACK 3"]
        assert [e.status for e in events[1:]] == [0, 4, 0]  # type: ignore[union-attr]
        assert "this body cannot be stored" in events[2].reason  # type: ignore[union-attr]
        raw.close()
    assert sorted(r.body for r in store.records()) == ["one", "three"]
    store.close()


@pytest.mark.parametrize("store", [False, True], ids=["no store", "store"])
async def test_a_reply_of_the_wrong_type_fails_that_message_alone(
    tmp_path: Path, store: bool
) -> None:
    def handler(message: Message, peer: Peer) -> str:
        if message.body == "bad":
            return 3  # type: ignore[return-value]
        return "fine"

    async with (
        Server(handler, port=0, store=tmp_path / "t.db" if store else None) as server,
        telex.connect("127.0.0.1", server.port, name="alice") as alice,
        telex.connect("127.0.0.1", server.port, name="bob") as bob,
    ):
        acks = await alice.send_many(["one", "bad", "three"])
        assert [ack.status for ack in acks] == [0, 3, 0]
        assert (await bob.send("unaffected")).reply == "fine"
