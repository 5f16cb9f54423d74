"""An in-memory network around the sans-I/O broker: no sockets, no asyncio, no threads.

``Net`` owns a ``Broker`` and carries out its actions the way ``telex.server`` does,
but at moments the test chooses:

- dirty links (``broker.take_dirty()``): the link's bytes go to its client (a framed
  client parses them with its own ``Connection(Role.CLIENT)``; a text client collects
  the lines).
- ``Close``: the link's last bytes go out, the client is marked closed, and the broker
  hears ``connection_lost`` once the actions of that round are done (as asyncio calls
  it a loop turn after ``transport.close()``).
- ``Commit``: noted. ``net.commit()`` stores the batch in the store (a real
  ``SQLiteStore``), ``net.begin_commit()``/``net.end_commit()`` split that in two,
  ``net.fail_commit()`` makes it fail. With ``auto_commit`` on, every round ends with a
  commit, as the server's loop turn does.
- ``Load``/``Find``: answered from the store at once, or (``hold_lookups``) kept in
  ``net.lookups`` until ``net.answer_lookups()``.
- ``RunHandler``: kept in ``net.jobs``; ``net.reply(client, id, reply)`` or
  ``net.raise_in(client, id, exc)`` answers it.
- ``CheckLogin``: checked at once (``broker.check_login``), as the server does for an
  address that has not been failing; ``Notice``, ``Pause`` and ``Delivered`` are recorded.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from telex.core.broker import (
    Broker,
    CheckLogin,
    Close,
    Commit,
    Delivered,
    Find,
    Gate,
    Link,
    Load,
    Notice,
    Pause,
    Peer,
    Released,
    RunHandler,
)
from telex.core.events import Body, Event, Message
from telex.core.protocol import Connection, Role
from telex.core.records import Batch
from telex.store import SQLiteStore

__all__ = ["Client", "Net", "Recorder", "TextClient"]

NOW = 1_700_000_000.0


class Recorder:
    """A sync handler: records each call; answers with ``answer(message)``, which may raise."""

    def __init__(self, answer: Callable[[Message], Body | None] | Body | None = "ok") -> None:
        self.calls: list[Message] = []
        self.peers: list[Peer] = []
        self._answer = answer

    def __call__(self, message: Message, peer: Peer) -> Body | None:
        self.calls.append(message)
        self.peers.append(peer)
        answer = self._answer
        if callable(answer):
            return answer(message)
        return answer

    @property
    def bodies(self) -> list[Body]:
        return [message.body for message in self.calls]


class _Endpoint:
    """What both kinds of client share: a link, and what the server did to it."""

    def __init__(self, net: Net, address: str) -> None:
        self.net = net
        self.link = Link(Peer(address), address.rsplit(":", 1)[0])
        self.closed = False
        self.close_reasons: list[str] = []
        self.late = b""  # bytes the broker queued after the close: never written
        net.broker.connect(self.link)

    def write(self, data: bytes) -> None:
        """One read on the server's side."""
        self.net.broker.receive_data(self.link, data)
        self.net.run()

    def eof(self) -> None:
        """The client shut its sending side."""
        self.net.broker.receive_eof(self.link)
        self.net.run()

    def drop(self) -> None:
        """The connection is gone (the client vanished)."""
        self.closed = True
        self.net.broker.connection_lost(self.link)
        self.net.run()

    def _received(self, data: bytes) -> None:
        raise NotImplementedError


class Client(_Endpoint):
    """A framed client: builds its bytes with a client-side ``Connection``, and parses
    the server's with it too. ``events`` is everything it has seen, in order."""

    def __init__(self, net: Net, address: str) -> None:
        super().__init__(net, address)
        self.conn = Connection(Role.CLIENT)
        self.events: list[Event] = []
        self._queued = b""  # what ``raw`` added, behind what the Connection had queued

    # -- building a read -----------------------------------------------------------------

    def hello(self, name: str | None = None, session: str | None = None) -> Client:
        self.conn.initiate(name=name, session=session)
        return self

    def message(self, body: Body, msg_id: int | None = None) -> int:
        return self.conn.send_message(body, msg_id=msg_id)

    def routed(self, to: str, body: Body, msg_id: int | None = None) -> int:
        return self.conn.send_message(body, name=to, msg_id=msg_id)

    def ack(self, msg_id: int, reply: Body = b"", *, status: int = 0, reason: str = "") -> None:
        self.conn.send_answer(msg_id, status, reason, reply)

    def goodbye(self, reason: str = "") -> None:
        self.conn.send_goodbye(reason)

    def ping(self, payload: int = 7) -> None:
        self.conn.send_ping(payload)

    def raw(self, data: bytes) -> None:
        """Bytes of our own making, queued behind what the Connection queued."""
        self._queued += self.conn.data_to_send() + data

    def send(self) -> None:
        """Write everything queued as one read."""
        data, self._queued = self._queued + self.conn.data_to_send(), b""
        self.write(data)

    # -- reading -------------------------------------------------------------------------

    def _received(self, data: bytes) -> None:
        self.events.extend(self.conn.receive_data(data))

    def take(self) -> list[Event]:
        """The events seen since the last ``take``."""
        events, self.events = self.events, []
        return events

    def connect(self, name: str | None = None, session: str | None = None) -> Client:
        """HELLO, and the WELCOME taken off ``events``."""
        self.hello(name, session)
        self.send()
        events = self.take()
        assert len(events) == 1 and type(events[0]).__name__ == "Welcome", events
        return self


class TextClient(_Endpoint):
    """A plain-text peer: ``output`` is every byte the server wrote to it."""

    def __init__(self, net: Net, address: str) -> None:
        super().__init__(net, address)
        self.output = b""

    def _received(self, data: bytes) -> None:
        self.output += data

    def lines(self) -> list[str]:
        return self.output.decode().splitlines()


@dataclass
class Job:
    client: Client
    action: RunHandler

    @property
    def id(self) -> int:
        return self.action.message.id


@dataclass
class Net:
    """The broker, its store, its clients, and the actions not yet carried out."""

    handler: Callable[[Message, Peer], Body | None] = field(default_factory=Recorder)
    path: Path | None = None  # the SQLite file; None: no store
    handler_is_async: bool = False
    gate: Gate | None = None
    max_message_size: int = 1024 * 1024
    auto_commit: bool = True
    hold_lookups: bool = False
    shared: bool = False  # the broker of a cluster's server (its store keeps receipts)

    def __post_init__(self) -> None:
        self.store = None if self.path is None else SQLiteStore(self.path)
        self.broker = Broker(
            self.handler,
            handler_is_async=self.handler_is_async,
            stored=self.store is not None,
            shared=self.shared,
            gate=self.gate,
            max_message_size=self.max_message_size,
        )
        self.endpoints: dict[Link, _Endpoint] = {}
        self.commit_asked = False
        self.committing: Batch | None = None
        self.jobs: list[Job] = []
        self.lookups: list[Load | Find] = []
        self.notices: list[Notice] = []
        self.pauses: list[Pause] = []
        self.delivered: list[Delivered] = []
        self.released: list[str] = []  # names freed (a cluster's store would be told)
        self.receipted: list[int] = []  # seqs whose receipt the broker marked as given
        self.logins: list[tuple[Link, bool]] = []  # each login checked, and if right
        self._count = 0

    def close(self) -> None:
        if self.store is not None:
            self.store.close()

    # -- peers -----------------------------------------------------------------------

    def _address(self) -> str:
        self._count += 1
        return f"10.0.0.{self._count}:{40000 + self._count}"

    def client(self) -> Client:
        client = Client(self, self._address())
        self.endpoints[client.link] = client
        return client

    def text_client(self) -> TextClient:
        client = TextClient(self, self._address())
        self.endpoints[client.link] = client
        return client

    # -- the broker's actions ----------------------------------------------------------

    def run(self) -> None:
        """Carry out the broker's actions until it asks for nothing more (committing at
        the end of each round when ``auto_commit`` is on)."""
        broker = self.broker
        while True:
            for link in broker.take_dirty():
                self._flush(link)
            actions = broker.take_actions()
            if not actions:
                wanted = self.auto_commit and self.commit_asked and self.committing is None
                if wanted and self._commit_now():
                    continue
                return
            lost: list[Link] = []
            for action in actions:
                self._carry_out(action, lost)
            for link in lost:
                broker.connection_lost(link)

    def _carry_out(self, action: Any, lost: list[Link]) -> None:
        broker = self.broker
        match action:
            case Close(link, reason):
                self._flush(link)
                endpoint = self.endpoints[link]
                endpoint.close_reasons.append(reason)
                if not endpoint.closed:
                    endpoint.closed = True
                    lost.append(link)
            case Commit():
                self.commit_asked = True
            case Load() | Find():
                if self.hold_lookups:
                    self.lookups.append(action)
                else:
                    self._look_up(action)
            case RunHandler(link):
                client = self.endpoints[link]
                assert isinstance(client, Client)
                self.jobs.append(Job(client, action))
            case Pause():
                self.pauses.append(action)
            case CheckLogin(link):
                self.logins.append((link, broker.check_login(link)))
            case Notice():
                self.notices.append(action)
            case Delivered():
                self.delivered.append(action)
            case Released(name):
                self.released.append(name)
            case _:
                raise AssertionError(f"unknown action {action!r}")

    def _flush(self, link: Link) -> None:
        link.dirty = False
        proto = link.proto
        if proto is None:
            return
        data = proto.data_to_send()
        endpoint = self.endpoints[link]
        if endpoint.closed:
            endpoint.late += data
        elif data:
            endpoint._received(data)

    def _look_up(self, action: Load | Find) -> None:
        store = self.store
        assert store is not None
        if isinstance(action, Load):
            self.broker.loaded(action.link, store.session_state(action.session, action.name))
        else:
            found = store.find_many(action.session, action.ids)
            self.broker.found(action.link, found, action.ids)

    def answer_lookups(self) -> None:
        lookups, self.lookups = self.lookups, []
        for action in lookups:
            self._look_up(action)
        self.run()

    # -- commits ---------------------------------------------------------------------

    def begin_commit(self) -> Batch | None:
        """Take the batch, as the server does at the end of a loop turn."""
        self.commit_asked = False
        batch = self.broker.take_batch()
        if batch is not None:
            self.committing = batch
            self.receipted += batch.receipted
        return batch

    def end_commit(self) -> None:
        """The store writes the batch taken, and the broker hears it did."""
        batch = self.committing
        assert batch is not None and self.store is not None
        self.committing = None
        self.broker.committed(self.store.commit(batch, NOW))
        self.run()

    def fail_commit(self, reason: str = "disk I/O error") -> None:
        """The batch taken could not be written: nothing of it is stored."""
        assert self.committing is not None
        self.committing = None
        self.broker.commit_failed(reason)
        self.run()

    def _commit_now(self) -> bool:
        if self.begin_commit() is None:
            return False
        batch = self.committing
        assert batch is not None and self.store is not None
        self.committing = None
        self.broker.committed(self.store.commit(batch, NOW))
        return True

    def commit(self) -> None:
        """Take the batch and store it now."""
        assert self.begin_commit() is not None, "nothing to commit"
        self.end_commit()

    # -- async handler jobs ------------------------------------------------------------

    def job(self, client: Client, msg_id: int) -> Job:
        for job in self.jobs:
            if job.client is client and job.id == msg_id:
                return job
        raise AssertionError(f"no handler job for message {msg_id}: {self.jobs}")

    def reply(self, client: Client, msg_id: int, reply: Body | None) -> None:
        job = self.job(client, msg_id)
        self.jobs.remove(job)
        self.broker.handled(job.action.link, job.action.slot, job.action.message, reply)
        self.run()

    def raise_in(self, client: Client, msg_id: int, exc: Exception) -> None:
        job = self.job(client, msg_id)
        self.jobs.remove(job)
        self.broker.handler_failed(job.action.link, job.action.slot, job.action.message, exc)
        self.run()

    # -- what the store holds ------------------------------------------------------------

    def stored(self) -> list[tuple[str | None, str | None, int | None, Body]]:
        """(sender, recipient, sender_id, body) of every stored message, in seq order."""
        assert self.store is not None
        return [
            (record.sender, record.recipient, record.sender_id, record.body)
            for record in self.store.records()
        ]
