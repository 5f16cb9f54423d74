"""Several addresses: the first that answers, then the next one when a connection drops."""

from __future__ import annotations

import asyncio
import collections
from pathlib import Path

import pytest

import telex
from telex import Server
from telex.store import SQLiteStore

from ..cli.test_cli import closed_port
from ..conftest import TIMEOUT

TOKEN = "a-token-of-some-length-0123456789"


def test_an_address_list_is_checked() -> None:
    with pytest.raises(ValueError, match="empty"):
        telex.AsyncClient([])
    with pytest.raises(TypeError, match="pair"):
        telex.AsyncClient([("127.0.0.1", "7777")])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="not both"):
        telex.AsyncClient([("127.0.0.1", 7777)], 7777)
    with pytest.raises(TypeError, match="port"):
        telex.AsyncClient("127.0.0.1")
    client = telex.AsyncClient([("a", 1), ("::1", 2)])
    assert client.addresses == [("a", 1), ("::1", 2)]
    assert client.address == "a:1"


async def test_the_first_address_that_answers_wins() -> None:
    down = closed_port()
    async with Server(port=0) as server:
        addresses = [("127.0.0.1", down), ("127.0.0.1", server.port)]
        async with telex.connect(addresses) as client:
            assert client.address == f"127.0.0.1:{server.port}"
            assert (await client.send("hi")).ok


async def test_when_none_answers_the_error_names_each_address() -> None:
    first, second = closed_port(), closed_port()
    with pytest.raises(telex.ConnectError) as caught:
        await telex.connect([("127.0.0.1", first), ("127.0.0.1", second)])
    text = str(caught.value)
    assert "\n" not in text
    assert f"127.0.0.1:{first}" in text and f"127.0.0.1:{second}" in text
    assert text.count("connection refused") == 2


async def test_a_refused_token_does_not_fall_through_to_the_next_address() -> None:
    async with Server(port=0, token=TOKEN) as locked, Server(port=0) as open_one:
        addresses = [("127.0.0.1", locked.port), ("127.0.0.1", open_one.port)]
        with pytest.raises(telex.AuthenticationFailed):
            await telex.connect(addresses, token="wrong-token-of-some-length-0123")
        assert open_one.stats()["connections"] == 0


async def test_a_refused_certificate_does_not_fall_through(tmp_path: Path) -> None:
    from telex.security import server_context, write_certificate

    prefix = tmp_path / "server"
    write_certificate(prefix, ["127.0.0.1"])
    context = server_context(prefix.with_name("server.pem"), prefix.with_name("server.key"))
    wrong = "SHA256:" + "00" * 32
    async with Server(port=0, ssl=context) as tls, Server(port=0) as plain:
        addresses = [("127.0.0.1", tls.port), ("127.0.0.1", plain.port)]
        with pytest.raises(telex.CertificateRejected):
            await telex.connect(
                addresses, ssl=telex.security.client_context(verify=False), fingerprint=wrong
            )


async def test_a_lost_connection_resumes_the_session_on_the_next_address(
    tmp_path: Path,
) -> None:
    """One store, a server on port A, then (A gone) one on port B: the client follows,
    resends what was not acknowledged, and the store has each message once."""
    db = tmp_path / "telex.db"
    port_a, port_b = closed_port(), closed_port()
    states: list[str] = []
    first = Server(port=port_a, store=db)
    await first.start()
    client = telex.AsyncClient(
        [("127.0.0.1", port_a), ("127.0.0.1", port_b)],
        on_state=states.append,
        reconnect_delay=0.05,
        retries=50,
    )
    await client.connect()
    try:
        assert [ack.ok for ack in await client.send_many(["a1", "a2"])] == [True, True]
        await first.close()
        waiting = [client.send_nowait(f"b{i}") for i in range(100)]  # while it is down
        async with Server(port=port_b, store=db):
            async with asyncio.timeout(TIMEOUT):
                acks = await asyncio.gather(*waiting)
            assert all(ack.ok for ack in acks)
            assert client.address == f"127.0.0.1:{port_b}"
            assert f"connected to 127.0.0.1:{port_b}" in states
            assert any(f"reconnecting to 127.0.0.1:{port_b}" in state for state in states)
            await client.close()
    finally:
        await client.close()
    store = SQLiteStore(db, readonly=True)
    try:
        counts = collections.Counter(record.body for record in store.records())
    finally:
        store.close()
    assert set(counts) == {"a1", "a2", *(f"b{i}" for i in range(100))}
    assert set(counts.values()) == {1}


def test_the_blocking_client_takes_a_list_too() -> None:
    async def serve(ready: asyncio.Future[int], stop: asyncio.Event) -> None:
        async with Server(port=0) as server:
            ready.set_result(server.port)
            await stop.wait()

    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    ready: asyncio.Future[int] = loop.create_future()
    task = loop.create_task(serve(ready, stop))
    port = loop.run_until_complete(ready)
    import threading

    thread = threading.Thread(target=loop.run_until_complete, args=(task,), daemon=True)
    thread.start()
    try:
        with telex.Client([("127.0.0.1", closed_port()), ("127.0.0.1", port)]) as client:
            assert client.address == f"127.0.0.1:{port}"
            assert len(client.addresses) == 2
            assert client.send("hello").ok
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(TIMEOUT)
        loop.close()
