"""PostgreSQL going away under a server: nothing is acknowledged that was not committed,
each batch is stored exactly once (a COMMIT whose answer was lost is looked up by its
transaction id), servers reconnect by themselves, and clients finish once it is back.

The database here is real and really goes away: a proxy that cuts the connection right
at a COMMIT (before or after PostgreSQL has it), and PostgreSQL itself stopped in
immediate mode (a crash, for its clients) and started again.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator

import psycopg
import pytest

from telex import AsyncClient, Server
from telex.cli.common import EXIT_CONNECT
from telex.core.events import AckStatus
from telex.core.records import Batch, Inbound
from telex.store.base import Unreachable
from telex.store.postgres import PostgresStore
from tests.cli.test_cli import serve, telex
from tests.postgres import Cluster, start_cluster

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def own_postgres() -> Iterator[Cluster]:
    """A cluster of this module's own: these tests stop and start it."""
    yield from start_cluster()


class CommitCutter:
    """A TCP proxy to PostgreSQL that, when armed, cuts the connection at the next COMMIT:
    before PostgreSQL reads it (``after=False``) or once it has answered it (True)."""

    def __init__(self, port: int, *, after: bool) -> None:
        import socket

        self.port = port
        self.after = after
        self.armed = False
        self.cuts = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listen_port = self.listener.getsockname()[1]
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import socket

        while not self._stop:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.port))
            cut = threading.Event()  # this connection's COMMIT was cut
            threading.Thread(target=self._up, args=(client, server, cut), daemon=True).start()
            threading.Thread(target=self._down, args=(server, client, cut), daemon=True).start()

    def _up(self, client: object, server: object, cut: threading.Event) -> None:
        import socket

        assert isinstance(client, socket.socket) and isinstance(server, socket.socket)
        with contextlib.suppress(OSError):
            while data := client.recv(65536):
                if self.armed and b"COMMIT\x00" in data:
                    self.armed = False
                    self.cuts += 1
                    cut.set()
                    if self.after:
                        server.sendall(data)
                        time.sleep(0.3)  # PostgreSQL commits and answers; the answer is lost
                    for end in (client, server):
                        with contextlib.suppress(OSError):
                            end.shutdown(socket.SHUT_RDWR)
                        end.close()
                    return
                server.sendall(data)

    def _down(self, server: object, client: object, cut: threading.Event) -> None:
        import socket

        assert isinstance(client, socket.socket) and isinstance(server, socket.socket)
        with contextlib.suppress(OSError):
            while data := server.recv(65536):
                if cut.is_set():  # the answer to the COMMIT never arrives
                    return
                client.sendall(data)

    def url(self, cluster_url: str) -> str:
        return cluster_url.replace(f":{self.port}/", f":{self.listen_port}/")

    def close(self) -> None:
        self._stop = True
        self.listener.close()


def count_stored(url: str) -> int:
    with psycopg.connect(url) as db:
        row = db.execute("SELECT coalesce(sum(count), 0) FROM telex_segments").fetchone()
    return int(row[0]) if row else 0


@pytest.mark.parametrize("after", [False, True], ids=["before-postgres-has-it", "after"])
def test_a_commit_cut_at_its_commit_is_stored_exactly_once(
    own_postgres: Cluster, after: bool
) -> None:
    url = own_postgres.create_database()
    cutter = CommitCutter(own_postgres.port, after=after)
    store = PostgresStore(cutter.url(url))
    try:
        batch = Batch(inbound=[Inbound("s", "alice", [(i, f"m{i}", b"ok") for i in range(1, 6)])])
        cutter.armed = True
        committed = store.commit(batch, time.time())
        assert cutter.cuts == 1
        assert len(committed.inbound) == 1
        assert count_stored(url) == 5  # not 0 (lost), not 10 (stored twice)
        assert sorted(store.find_many("s", [1, 2, 3, 4, 5])) == [1, 2, 3, 4, 5]
    finally:
        store.close()
        cutter.close()


def test_a_database_away_longer_than_the_wait_fails_the_call_in_one_line(
    own_postgres: Cluster,
) -> None:
    url = own_postgres.create_database()
    store = PostgresStore(url, retry_for=0.5)
    try:
        own_postgres.stop("immediate")
        started = time.monotonic()
        with pytest.raises(Unreachable) as refused:
            store.commit(Batch(inbound=[Inbound("s", "a", [(1, "x", b"")])]), time.time())
        assert 0.4 < time.monotonic() - started < 10
        assert "\n" not in str(refused.value)
    finally:
        own_postgres.start()
        store.close()
    store = PostgresStore(url)  # back: it works again
    try:
        store.commit(Batch(inbound=[Inbound("s", "a", [(1, "x", b"")])]), time.time())
    finally:
        store.close()
    assert count_stored(url) == 1


async def test_postgres_restarting_mid_send_loses_nothing_and_stores_nothing_twice(
    own_postgres: Cluster,
) -> None:
    url = own_postgres.create_database()
    count = 20_000

    async def restart() -> None:
        while count_stored(url) < count // 4:  # noqa: ASYNC110 - polls the database
            await asyncio.sleep(0.05)
        await asyncio.to_thread(own_postgres.stop, "immediate")
        await asyncio.sleep(0.5)
        await asyncio.to_thread(own_postgres.start)

    async with (
        Server(port=0, store=url) as server,
        AsyncClient(*server.address, name="alice", timeout=60) as alice,
    ):
        restarting = asyncio.create_task(restart())
        acks = await alice.send_many((f"line {i}" for i in range(count)), window=500)
        await restarting
    assert [ack.status for ack in acks] == [AckStatus.OK] * count
    assert count_stored(url) == count


async def test_a_database_away_too_long_gets_unavailable_never_an_ack(
    own_postgres: Cluster,
) -> None:
    """A client already connected: while the database stays away longer than the server
    waits for it, each message is refused with status unavailable and a reason, never
    acknowledged; the server reconnects by itself, and the next message is stored."""
    url = own_postgres.create_database()
    store = PostgresStore(url, retry_for=1.0)
    try:
        async with (
            Server(port=0, store=store) as server,
            AsyncClient(*server.address, name="alice", timeout=30) as alice,
        ):
            assert (await alice.send("before")).ok
            await asyncio.to_thread(own_postgres.stop, "immediate")
            try:
                down = await alice.send_many(["while down", "and this"])
            finally:
                await asyncio.to_thread(own_postgres.start)
            after = await alice.send("after")
    finally:
        store.close()
    assert [ack.status for ack in down] == [AckStatus.UNAVAILABLE] * 2
    assert all("database" in ack.reason and "\n" not in ack.reason for ack in down)
    assert after.ok
    assert count_stored(url) == 2  # "before" and "after"; the others were never stored


def test_telex_send_to_a_server_whose_database_is_down_fails_in_one_line_then_works(
    own_postgres: Cluster,
) -> None:
    """Through the command line: the handshake needs the database (the client's name and
    session), so a new sender is refused in one line, exit 3; once the database is back,
    the same server takes it without a restart."""
    url = own_postgres.create_database()
    with serve("--db", url, "-q") as server:
        assert telex("send", server.address, "before").returncode == 0
        own_postgres.stop("immediate")
        try:
            down = telex("send", server.address, "while down")
        finally:
            own_postgres.start()
        after = telex("send", server.address, "after")
        server.stop()
    assert down.returncode == EXIT_CONNECT, down.stderr
    assert down.stderr.count("\n") == 1 and "cannot read its store" in down.stderr
    assert after.returncode == 0, after.stderr
    assert count_stored(url) == 2
