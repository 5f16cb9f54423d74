"""telex demo: a server and a client on a free port, both ways."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import click

from ..client.aio import AsyncClient
from ..core.events import Message
from ..exceptions import TelexError
from ..server import Peer, Server
from ..store import SQLiteStore
from .common import (
    EXIT_INTERRUPTED,
    fail,
    run,
)
from .console import (
    Output,
)
from .render import printable

# -- demo --------------------------------------------------------------------------------


@click.command()
def demo() -> None:
    """Run a server and a client on a free loopback port and show their exchange.

    The client sends to the server, and the server sends to the client: each message
    is acknowledged by the side that received it.

    Exit codes: 0 the exchange ran; 1 it could not (the reason in one line);
    2 usage error; 130 Ctrl-C.
    """
    try:
        run(_demo(Output(as_json=False)))
    except (TelexError, OSError) as exc:
        fail(f"the demo could not run: {exc}", 1)
    except KeyboardInterrupt:
        fail("interrupted", EXIT_INTERRUPTED)


async def _demo(out: Output) -> None:
    server_tag = out.style("server", fg="cyan", bold=True)
    client_tag = out.style("client", fg="green", bold=True)

    def server_side(message: Message, peer: Peer) -> str:
        out.line(f"{server_tag}  got #{message.id} from {peer.name}: {printable(message.body)}")
        return f"received {len(str(message.body))} characters"

    def client_side(message: Message) -> str:
        out.line(f"{client_tag}  got #{message.id} from the server: {printable(message.body)}")
        return "thanks, got it"

    with tempfile.TemporaryDirectory(prefix="telex-demo-") as folder:
        store = SQLiteStore(Path(folder) / "demo.db")
        try:
            await _demo_exchange(out, server_tag, client_tag, server_side, client_side, store)
        finally:
            store.close()
    out.line("done: 3 messages sent, each acknowledged by the side that received it")


async def _demo_exchange(
    out: Output,
    server_tag: str,
    client_tag: str,
    server_side: Callable[[Message, Peer], str],
    client_side: Callable[[Message], str],
    store: SQLiteStore,
) -> None:
    async with Server(server_side, port=0, store=store) as server:
        out.line(f"server listening on 127.0.0.1:{server.port}, storing in {store.where}")
        async with AsyncClient(
            "127.0.0.1", server.port, name="demo-client", handler=client_side
        ) as client:
            for text in ("hello, server", "every message gets an acknowledgment"):
                out.line(f"{client_tag}  sends: {text}")
                ack = await client.send(text)
                out.line(f"{client_tag}  ack {ack.id}: {printable(ack.reply)}")
            text = "and the server can send too"
            out.line(f"{server_tag}  sends to demo-client: {text}")
            ack = await server.send("demo-client", text)
            out.line(f"{server_tag}  ack {ack.id} from demo-client: {printable(ack.reply)}")
