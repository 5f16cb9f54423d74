"""Several servers on one PostgreSQL, in one process: names held cluster-wide, messages
routed between servers, receipts back to the sender's server, owed receipts kept for a
sender who is away, and a server's names freed when its lease runs out.

Every server and client here is real (sockets on 127.0.0.1, a real PostgreSQL started by
``tests/postgres.py``); the multi-process fault test is ``test_faults.py``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager

import psycopg
import pytest

from telex import AsyncClient, Server
from telex.core.events import Message, Receipt
from telex.core.records import Batch, Envelope, Pending
from telex.exceptions import ConnectionClosed, TelexError
from telex.store.base import WakeUp
from telex.store.postgres import MIGRATIONS, SCHEMA_VERSION, PostgresStore, wakeup

pytestmark = pytest.mark.timeout(60)


@asynccontextmanager
async def cluster(url: str, count: int, lease: float = 10.0) -> AsyncIterator[list[Server]]:
    async with AsyncExitStack() as stack:
        servers = [
            await stack.enter_async_context(Server(port=0, store=url, lease=lease))
            for _ in range(count)
        ]
        yield servers


def client(
    server: Server,
    name: str | None,
    *,
    session: str | None = None,
    handler: Callable[[Message], object] | None = None,
    receipts: list[Receipt] | None = None,
) -> AsyncClient:
    return AsyncClient(
        *server.address,
        name=name,
        session=session,
        handler=handler,  # type: ignore[arg-type]
        reconnect=False,
        timeout=10,
        on_receipt=None if receipts is None else receipts.append,
    )


async def until(check: Callable[[], object], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "not within the time"
        await asyncio.sleep(0.01)


async def test_a_message_to_a_client_of_another_server_is_delivered_with_its_receipt(
    postgres_url: str,
) -> None:
    async with cluster(postgres_url, 2, lease=600) as (a, b):  # no timer: the NOTIFY
        got: list[str] = []
        receipts: list[Receipt] = []
        async with (
            client(b, "bob", handler=lambda m: got.append(str(m.body)) or f"ok {m.body}"),
            client(a, "alice", receipts=receipts) as alice,
        ):
            acks = [await alice.send(f"hello {i}", to="bob") for i in range(20)]
            assert all(ack.ok and ack.stored and not ack.away for ack in acks)
            await until(lambda: len(receipts) == 20)
        assert got == [f"hello {i}" for i in range(20)]  # in order
        assert sorted(r.id for r in receipts) == [ack.id for ack in acks]
        assert sorted(r.reply for r in receipts) == sorted(f"ok hello {i}" for i in range(20))
    store = PostgresStore(postgres_url)  # the servers stopped: every mark is stored
    try:
        owed = store.db.execute("SELECT count(*) FROM telex_messages WHERE owed").fetchone()
        undelivered = store.db.execute(
            "SELECT count(*) FROM telex_messages WHERE delivered IS NULL"
        ).fetchone()
    finally:
        store.close()
    assert owed == (0,) and undelivered == (0,)


async def test_a_name_is_held_once_in_the_whole_cluster(postgres_url: str) -> None:
    async with cluster(postgres_url, 2) as (a, b):
        async with client(a, "bob"):
            with pytest.raises(TelexError, match="in use"):
                async with client(b, "bob"):
                    pass
        # bob left a: the name is free on b as soon as a has seen it go
        deadline = time.monotonic() + 5
        while True:
            try:
                async with client(b, "bob") as bob:
                    assert bob.name == "bob"
                    break
            except TelexError:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.01)


async def test_the_same_session_takes_its_name_over_on_another_server(postgres_url: str) -> None:
    async with cluster(postgres_url, 2) as (a, b):
        old = client(a, "bob", session="s-bob")
        await old.connect()
        new = client(b, "bob", session="s-bob")
        await new.connect()  # at once, while a still holds it
        await until(lambda: not old.connected)
        assert "bob" not in a.clients and "bob" in b.clients
        # a message for bob from a's side now goes to b
        async with client(a, "carol") as carol:
            ack = await carol.send("for bob", to="bob")
            assert ack.ok and not ack.away
            message = await new.receive(timeout=10)
            assert message.body == "for bob"
        await new.close()
        await old.close()


async def test_guests_of_two_servers_get_different_names(postgres_url: str) -> None:
    async with cluster(postgres_url, 2) as (a, b):
        async with client(a, None), client(b, None):
            names = {*a.clients, *b.clients}
        assert len(names) == 2
        assert all(name.startswith("guest-") for name in names)


async def test_a_receipt_earned_while_its_sender_was_away_comes_when_it_returns(
    postgres_url: str,
) -> None:
    async with cluster(postgres_url, 2) as (a, b):
        async with client(a, "alice", session="s-alice") as alice:
            ack = await alice.send("while you were out", to="bob")
            assert ack.ok and ack.away  # stored: bob is nowhere
        async with client(b, "bob") as bob:  # alice has gone: bob answers
            message = await bob.receive(timeout=10)
            assert message.body == "while you were out"
        receipts: list[Receipt] = []
        async with client(b, "alice", session="s-alice", receipts=receipts):
            await until(lambda: len(receipts) == 1)
        assert receipts[0].id == ack.id and receipts[0].ok


async def test_a_dead_servers_names_are_free_after_its_lease(postgres_url: str) -> None:
    async with cluster(postgres_url, 1, lease=1.0) as (b,):
        store = PostgresStore(postgres_url)  # a server that joined, took a name and died
        try:
            store.join(1.0)
            assert store.session_state("s-old", "bob").taken is False
            started = time.monotonic()
            with pytest.raises(TelexError, match="in use"):
                async with client(b, "bob"):
                    pass
            while True:  # its lease runs out within a second
                try:
                    async with client(b, "bob"):
                        break
                except TelexError:
                    assert time.monotonic() - started < 5
                    await asyncio.sleep(0.1)
        finally:
            store.close()


async def test_a_client_whose_name_went_elsewhere_is_closed_when_the_lease_is_renewed(
    postgres_url: str,
) -> None:
    async with cluster(postgres_url, 1, lease=0.6) as (a,):
        bob = client(a, "bob")
        await bob.connect()
        with psycopg.connect(postgres_url, autocommit=True) as db:  # as if a lost its lease
            db.execute("UPDATE telex_names SET server = 'other', session = 'x'")
        await until(lambda: not bob.connected, timeout=5)
        assert "bob" not in a.clients
        with pytest.raises((ConnectionClosed, TelexError)):
            await bob.send("after")
        await bob.close()


def test_a_version_1_database_is_upgraded_in_place(postgres_url: str) -> None:
    with psycopg.connect(postgres_url, autocommit=True) as db:
        db.execute(MIGRATIONS[0].encode())
        db.execute("CREATE TABLE telex_schema (version integer)")
        db.execute("INSERT INTO telex_schema VALUES (1)")
        db.execute(
            "INSERT INTO telex_messages (seq, session, sender_id, sender, recipient, body, "
            "kinds, received, delivered) VALUES (1, 's', 1, 'a', 'b', 'x', 1, 1, 2)"
        )
    store = PostgresStore(postgres_url)
    try:
        assert store.db.execute("SELECT version FROM telex_schema").fetchall() == [
            (SCHEMA_VERSION,)
        ]
        assert store.owed(["s"]) == []  # delivered before: no receipt is owed
        assert [r.seq for r in store.records()] == [1]
    finally:
        store.close()


@pytest.mark.parametrize(
    ("size", "pipelined"),
    [(10, False), (3_000, False), (10, True), (9_000, True)],
    ids=["small-carried", "large-read", "many-small", "many-large"],
)
async def test_every_way_a_wake_up_goes_delivers_each_message_and_receipt_once(
    postgres_url: str, size: int, pipelined: bool
) -> None:
    """Small messages and receipts ride in the NOTIFY; large ones, or many, are read by
    the woken server. With no timer (a long lease), each way must deliver by itself."""
    count = 200 if pipelined else 10
    bodies = [f"{i:04d}" + "x" * size for i in range(count)]
    async with cluster(postgres_url, 2, lease=600) as (a, b):
        got: list[str] = []
        receipts: list[Receipt] = []

        def answer(message: Message) -> str:
            got.append(str(message.body))
            return "r" * size  # a large reply cannot ride in the NOTIFY either

        async with client(b, "bob", handler=answer), client(a, "alice", receipts=receipts) as alice:
            if pipelined:
                acks = await alice.send_many(bodies, to="bob")
            else:
                acks = [await alice.send(body, to="bob") for body in bodies]
            assert all(ack.ok and ack.stored for ack in acks)
            await until(lambda: len(receipts) == count)
        assert got == bodies
        assert sorted(r.id for r in receipts) == [ack.id for ack in acks]
        assert {r.reply for r in receipts} == {"r" * size}


def test_wake_ups_carry_small_messages_and_receipts_and_name_the_range_of_large_ones(
    postgres_url: str,
) -> None:
    """What one server's commits tell another, read off PostgreSQL itself: the small
    messages and receipts ride in the NOTIFY, a large one is named by its seqs."""
    here, there = PostgresStore(postgres_url), PostgresStore(postgres_url)
    try:
        here.join(60)
        there.join(60)
        assert not there.session_state("s-bob", "bob").taken
        assert not here.session_state("s-alice", "alice").taken
        with psycopg.connect(postgres_url, autocommit=True) as listener:
            listener.execute(f'LISTEN "{there.channel}"'.encode())
            listener.execute(f'LISTEN "{here.channel}"'.encode())
            small = here.commit(
                Batch(envelopes=[Envelope("bob", "hi", "alice", "s-alice", 1)]), 1.0
            )
            large = here.commit(
                Batch(envelopes=[Envelope("bob", b"\0" * 5000, "alice", "s-alice", 2)]), 2.0
            )
            answers = {seq: (0, "", "thanks") for seq in small.envelopes + large.envelopes}
            there.commit(Batch(delivered=small.envelopes + large.envelopes, answers=answers), 3.0)
            notes = [wakeup(note.payload) for note in listener.notifies(timeout=1, stop_after=3)]
    finally:
        here.close()
        there.close()
    assert small.elsewhere == large.elsewhere == frozenset({"bob"})
    (seq,) = small.envelopes
    assert notes[0] == WakeUp(
        "pending", messages=(("bob", Pending(seq, "hi", "alice", "s-alice", 1)),)
    )
    (big,) = large.envelopes
    assert notes[1] == WakeUp("pending", low=big, high=big)
    assert notes[2].kind == "receipts"
    assert [(a.seq, a.sender_id, a.reply) for a in notes[2].answers] == [
        (seq, 1, "thanks"),
        (big, 2, "thanks"),
    ]


async def test_senders_on_two_servers_to_one_client_arrive_in_order_without_a_reconnect(
    postgres_url: str,
) -> None:
    """Messages from a client of the same server and from one of another server, at the
    same time, to one client: each arrives once, and none comes after a later one (ids
    on a connection only increase), so the connection is never closed to reorder."""
    count = 500
    async with cluster(postgres_url, 2) as (a, b):
        got: list[str] = []
        states: list[str] = []
        bob = AsyncClient(
            *a.address, name="bob", handler=lambda m: got.append(str(m.body)), timeout=30,
            on_state=states.append,
        )  # fmt: skip
        async with bob, client(a, "alice") as alice, client(b, "carol") as carol:
            await asyncio.gather(
                alice.send_many((f"alice {i}" for i in range(count)), to="bob", window=50),
                carol.send_many((f"carol {i}" for i in range(count)), to="bob", window=50),
            )
            await until(lambda: len(got) == 2 * count, timeout=30)
        assert states == []  # never reconnected
        assert sorted(got) == sorted([f"alice {i}" for i in range(count)] +
                                     [f"carol {i}" for i in range(count)])  # fmt: skip
        for who in ("alice", "carol"):  # each sender's in its order
            assert [m for m in got if m.startswith(who)] == [f"{who} {i}" for i in range(count)]


async def test_a_client_reconnecting_while_messages_stream_in_misses_none_and_is_never_late(
    postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Messages stored by another server while bob's handshake runs (after its outbox
    was read, before its welcome) are sent after the outbox, not left for a later read
    that would find them below what was sent. No timer (a long lease): by wake-ups."""
    count = 3000
    async with cluster(postgres_url, 2, lease=600) as (a, b):
        got: list[str] = []
        async with client(a, "alice") as alice:
            sending = asyncio.ensure_future(
                alice.send_many((f"m {i}" for i in range(count)), to="bob", window=20)
            )
            while not sending.done():
                bob = client(b, "bob", session="s-bob", handler=lambda m: got.append(str(m.body)))
                await bob.connect()
                await asyncio.sleep(0.05)
                await bob.close()
            await sending
            async with client(b, "bob", session="s-bob", handler=lambda m: got.append(str(m.body))):
                await until(lambda: len(set(got)) == count, timeout=30)
    assert set(got) == {f"m {i}" for i in range(count)}
    assert "came late" not in caplog.text


def test_a_claim_that_waited_for_the_row_sees_the_new_holders_lease(postgres_url: str) -> None:
    """Two claims of one name at once: the second waits for the first's row lock, then
    must see the new holder alive (its lease read after the lock), not take the name."""
    import threading

    first, second = PostgresStore(postgres_url), PostgresStore(postgres_url)
    try:
        first.join(60)
        second.join(60)
        assert not first.session_state("s1", "bob").taken
        with psycopg.connect(postgres_url) as other:  # a third server taking it over
            other.execute(
                "INSERT INTO telex_servers (id, channel, lease_until) "
                "VALUES ('third', 'telex_third', now() + interval '1 minute')"
            )
            other.execute("UPDATE telex_names SET server = 'third' WHERE name = 'bob'")
            result: list[bool] = []
            claiming = threading.Thread(
                target=lambda: result.append(second.session_state("s2", "bob").taken)
            )
            claiming.start()
            time.sleep(0.5)  # the claim waits for the row
            other.commit()
        claiming.join(10)
        assert result == [True]  # taken: the third server holds it, alive
    finally:
        first.close()
        second.close()
