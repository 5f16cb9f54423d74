"""One accepted connection: its protocol core, handler calls, answers, timers and limits.

``PeerProtocol`` feeds a connection's bytes to its core (``protocol.Connection`` for
telex clients, ``textmode.TextConnection`` for text peers, told apart by the first
byte), runs the handler on every message a read completed and writes their
acknowledgments with one call. The ``Server`` it belongs to holds what connections
share: the handler, the limits, the names, the journal.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import logging
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

from .._version import __version__
from ..core.events import (
    Ack,
    AckStatus,
    Auth,
    Body,
    ErrorCode,
    Event,
    Goodbye,
    Hello,
    Message,
    MessageTooLarge,
    PeerError,
    ProtocolViolation,
)
from ..core.handlers import Reject, rejection_for
from ..core.protocol import Connection, Role, looks_framed
from ..core.textmode import TextConnection
from ..flushing import FlushOnce
from ..security import new_challenge, stretch, verify_answer
from ..store import Item

if TYPE_CHECKING:
    from .server import Server

__all__ = [
    "Handler",
    "Peer",
    "PeerEvent",
    "PeerProtocol",
    "Reply",
    "format_address",
    "settle_with",
]

log = logging.getLogger("telex.server")

Reply = Body | None
Handler = Callable[[Message, "Peer"], Reply] | Callable[[Message, "Peer"], Awaitable[Reply]]


@dataclass(slots=True)
class Peer:
    """Who sent a message: handed to the handler beside it."""

    address: str
    mode: str = "unknown"  # "framed" or "text" once the first bytes have arrived
    name: str | None = None
    connected_at: float = field(default_factory=time.time)
    session: str | None = None  # a framed client's session, the same across its reconnects


@dataclass(frozen=True, slots=True)
class PeerEvent:
    """Something that happened to a connection, for a console: ``joined`` or ``left``."""

    kind: str
    peer: Peer
    detail: str = ""


def format_address(address: Any) -> str:
    if isinstance(address, tuple) and len(address) >= 2:
        host, port = address[0], address[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(address)


def settle_with(future: asyncio.Future[Ack]) -> Callable[[Ack], None]:
    def settle(ack: Ack) -> None:
        if not future.done():
            future.set_result(ack)

    return settle


class PeerProtocol(FlushOnce, asyncio.Protocol):
    """One accepted connection."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.proto: Connection | TextConnection | None = None
        self.transport: asyncio.Transport | None = None
        self.peer = Peer("?")
        self.host = "?"
        self.loop = asyncio.get_running_loop()
        self.connected = self.last_heard = self.loop.time()
        self.open = False  # handshake done (framed) or first byte seen (text)
        self.pinged = False
        self.peer_done = False  # the peer said goodbye
        self.queue: deque[Message | MessageTooLarge] = deque()  # waiting for an async handler
        self.worker: asyncio.Task[None] | None = None
        self.pause_timer: asyncio.TimerHandle | None = None
        self.paused_for: set[str] = set()
        self.outgoing: dict[int, Callable[[Ack], None]] = {}  # sent to this client, unacked
        self.flush_scheduled = False
        self.max_stored = 0  # this session's highest stored id: lower ones may be resends
        self.hello: Hello | None = None  # waiting for the answer to our challenge
        self.text_login = False  # a text peer that must send AUTH <token> first
        self.tls_task: asyncio.Task[None] | None = None
        self.tls_pending = False
        self.early: list[bytes] = []
        self.key = b""
        self.challenge = b""

    # -- asyncio callbacks ------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        address = transport.get_extra_info("peername")
        self.host = str(address[0]) if isinstance(address, tuple) else str(address)
        self.peer = Peer(format_address(address))
        if not self.server.admit(self):
            log.warning("%s: refused: connection limit reached", self.peer.address)
            self.transport.abort()
            return
        if self.server.ssl is not None:
            self.transport.pause_reading()  # not a byte before TLS: start_tls reads on
            self.tls_pending = True
            self.tls_task = asyncio.create_task(self._start_tls(self.transport))
            return
        limit = self.server.limits.write_buffer_limit
        self.transport.set_write_buffer_limits(high=limit, low=limit // 4)

    def _drop(self, transport: asyncio.Transport) -> None:
        """End a connection whose TLS handshake failed (our protocol never saw it open)."""
        transport.abort()
        self.server.forget(self)

    async def _start_tls(self, transport: asyncio.Transport) -> None:
        """The TLS handshake, within the handshake time limit; a failure is one log line."""
        context = self.server.ssl
        assert context is not None
        try:
            tls = await self.loop.start_tls(
                transport,
                self,
                context,
                server_side=True,
                ssl_handshake_timeout=self.server.limits.handshake_timeout,
            )
        except (OSError, TimeoutError, ConnectionError) as exc:
            reason = getattr(exc, "reason", None) or str(exc) or type(exc).__name__
            log.warning("%s: TLS handshake failed: %s", self.peer.address, reason)
            self._drop(transport)
            return
        if tls is None:  # the peer went away during the handshake
            self._drop(transport)
            return
        self.transport = tls
        self.tls_pending = False
        limit = self.server.limits.write_buffer_limit
        tls.set_write_buffer_limits(high=limit, low=limit // 4)
        early, self.early = self.early, []
        for data in early:  # what came with the end of the handshake, now with a TLS transport
            self.data_received(data)

    def data_received(self, data: bytes) -> None:
        if self.tls_pending:
            self.early.append(data)  # start_tls has not handed us the TLS transport yet
            return
        self.last_heard = self.loop.time()
        self.pinged = False
        proto = self.proto
        if proto is None:
            proto = self._choose_mode(data)
        events = proto.receive_data(data)
        if events:
            self.handle(events)
        if self.pause_timer is not None:
            self.pause_timer.cancel()
            self.pause_timer = None
        if type(proto) is TextConnection and proto.has_partial:
            self.pause_timer = self.loop.call_later(self.server.text_pause, self._text_pause)

    def eof_received(self) -> bool | None:
        if self.proto is not None:
            self.handle(self.proto.receive_eof())
        self.peer_done = True
        if not self.queue:
            self.close()
        # Keep our side open until the answers are written (TLS cannot half-close).
        return None if self.transport and self.transport.get_extra_info("ssl_object") else True

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.forget(self)
        if self.pause_timer is not None:
            self.pause_timer.cancel()
        if self.worker is not None:
            self.worker.cancel()
        outgoing, self.outgoing = self.outgoing, {}
        reason = f"{self.peer.name} disconnected before acknowledging"
        for msg_id, on_ack in outgoing.items():
            on_ack(Ack(msg_id, AckStatus.NOT_DELIVERED, reason))
        if self.open:
            log.info("%s: left", self.describe())
            self.server.emit("left", self.peer)

    def pause_writing(self) -> None:
        self._pause("writing")

    def resume_writing(self) -> None:
        self._resume("writing")

    # -- modes ------------------------------------------------------------------------

    def _choose_mode(self, data: bytes) -> Connection | TextConnection:
        size = self.server.limits.max_message_size
        proto: Connection | TextConnection
        if looks_framed(data):
            proto = Connection(
                Role.SERVER, max_message_size=size, requires_auth=self.server.auth_required
            )
            self.peer.mode = "framed"
        else:
            proto = TextConnection(max_message_size=size)
            self.peer.mode = "text"
            self.open = True
            self.text_login = self.server.auth_required
            transport = self.transport
            if self.text_login and transport and transport.get_extra_info("ssl_object") is None:
                self.proto = proto
                self.fail(
                    ErrorCode.AUTH_FAILED,
                    "this server needs a token: send 'AUTH <token>' as the first line, "
                    "over TLS (never in the clear)",
                )
                return proto
            log.info("%s: joined (text)", self.describe())
        self.proto = proto
        return proto

    def _text_pause(self) -> None:
        self.pause_timer = None
        if self.proto is not None and type(self.proto) is TextConnection:
            self.handle(self.proto.flush())

    # -- events -----------------------------------------------------------------------

    def handle(self, events: list[Event]) -> None:
        """Run the handler on every message, answer each, and write once."""
        proto = self.proto
        assert proto is not None
        if self.text_login:
            events = self._text_login(events)
        server = self.server
        if server.handler_is_async:
            self._handle_async(events)
        elif server.journal is not None:
            self._handle_stored(events)
        else:
            handler = cast(Callable[[Message, Peer], Reply], server.handler)
            peer = self.peer
            ack = proto.send_ack
            accepted = 0
            for event in events:
                if type(event) is Message:
                    if event.to is not None:
                        self._route(event)
                        continue
                    try:
                        reply = handler(event, peer)
                    except Exception as exc:
                        self._handler_failed(event, exc)
                        continue
                    ack(event.id, b"" if reply is None else reply)
                    accepted += 1
                else:
                    self._control(event)
            server.counts["accepted"] += accepted
        self.flush()

    def _handle_stored(self, events: list[Event]) -> None:
        """As ``handle``, with a store: the messages of this read are stored together
        (one segment), and each is acknowledged once they are."""
        handler = cast(Callable[[Message, Peer], Reply], self.server.handler)
        proto = self.proto
        assert proto is not None
        peer = self.peer
        items: list[Item] = []
        append = items.append
        for event in events:
            if type(event) is Message:
                if event.id <= self.max_stored and self._resent(event):
                    continue
                if event.to is not None:
                    items = self._stage(items)  # what came before it is answered before it
                    append = items.append
                    self._route(event)
                    continue
                try:
                    reply = handler(event, peer)
                except Exception as exc:
                    items = self._stage(items)
                    append = items.append
                    self._handler_failed(event, exc)
                    continue
                append((event.id, event.body, b"" if reply is None else reply))
            else:
                if type(event) is MessageTooLarge:
                    items = self._stage(items)
                    append = items.append
                self._control(event)
        self._stage(items)
        self.flush()  # pongs and the like; the acks leave after the commit

    def _stage(self, items: list[Item]) -> list[Item]:
        """Hand the messages so far to the journal; return a fresh list for the next."""
        if items:
            journal = self.server.journal
            assert journal is not None
            peer = self.peer
            journal.accept(self, peer.session, peer.name or peer.address, time.time(), items)
            return []
        return items

    def _resent(self, event: Message) -> bool:
        """A message this session sent before and the store has: acknowledge it again."""
        session = self.peer.session
        if event.id > self.max_stored or session is None or self.server.store is None:
            return False
        found = self.server.store.find(session, event.id)
        if found is None:
            return False
        assert self.proto is not None
        _, reply = found
        self.proto.send_ack(event.id, b"" if reply is None else reply)
        self.server.counts["resent"] += 1
        return True

    def store_and_ack(self, event: Message, reply: Reply) -> None:
        """Acknowledge ``event`` with ``reply``: at once, or once it is stored."""
        journal = self.server.journal
        body = b"" if reply is None else reply
        if journal is None:
            assert self.proto is not None
            self.proto.send_ack(event.id, body)
            self.server.counts["accepted"] += 1
            return
        self._stage([(event.id, event.body, body)])

    def ack_all(self, items: Sequence[Item]) -> None:
        """The journal stored these messages: acknowledge each."""
        if self.proto is not None:
            send_ack = self.proto.send_ack
            for msg_id, _, reply in items:
                send_ack(msg_id, reply)
            self.server.counts["accepted"] += len(items)

    def reject(self, msg_id: int, status: int, reason: str, *, now: bool = False) -> None:
        """Reject ``msg_id``; with a store, after the messages before it are answered."""
        journal = self.server.journal
        if journal is not None and not now:
            journal.reject(self, msg_id, status, reason)
            return
        if self.proto is not None:
            self.proto.send_rejection(msg_id, status, reason)
            self.server.counts["rejected"] += 1

    def reject_unstored(self, items: Sequence[Item], reason: str) -> None:
        """The journal could not store these messages: say so, never acknowledge them."""
        if self.proto is not None:
            for msg_id, _, _ in items:
                self.proto.send_rejection(msg_id, AckStatus.UNAVAILABLE, reason)
            self.server.counts["rejected"] += len(items)

    def _handle_async(self, events: list[Event]) -> None:
        for event in events:
            if type(event) is Message and self._resent(event):
                continue
            if type(event) is Message and event.to is not None:
                self._route(event)
            elif type(event) is Message or type(event) is MessageTooLarge:
                self.queue.append(event)
            else:
                self._control(event)
        if self.queue and self.worker is None:
            self.worker = asyncio.create_task(self._work())
        if len(self.queue) > 10_000:
            self._pause("handler")

    async def _work(self) -> None:
        """Run an async handler on queued messages, one at a time, in order."""
        handler = cast(Callable[[Message, Peer], Awaitable[Reply]], self.server.handler)
        proto = self.proto
        assert proto is not None
        try:
            while self.queue:
                event = self.queue.popleft()
                if type(event) is MessageTooLarge:
                    self._too_large(event)
                    continue
                assert type(event) is Message
                try:
                    reply = await handler(event, self.peer)
                except Exception as exc:
                    self._handler_failed(event, exc)
                else:
                    self.store_and_ack(event, reply)
                if not self.queue or len(self.queue) % 64 == 0:
                    self.flush()
                if len(self.queue) < 1000:
                    self._resume("handler")
        finally:
            self.worker = None
        if self.peer_done or (self.server.closing and self.open):
            self.finish()

    def _handler_failed(self, event: Message, exc: Exception) -> None:
        if not isinstance(exc, Reject):
            log.error("%s: handler failed on message %d", self.describe(), event.id, exc_info=exc)
        self.reject(event.id, *rejection_for(exc))

    def _too_large(self, event: MessageTooLarge) -> None:
        log.warning("%s: message %d rejected: %s", self.describe(), event.id, event.reason)
        self.reject(event.id, AckStatus.TOO_LARGE, event.reason)

    def _route(self, event: Message) -> None:
        """A message for another client: forward it; its ack answers the sender.

        With a store, it is stored first and the server's ack says so; the recipient's
        own ack comes back to the sender later as a receipt (or when it reconnects).
        """
        proto = self.proto
        assert proto is not None and event.to is not None
        if self.server.journal is not None:
            self._route_stored(event)
            return
        target = self.server.clients.get(event.to)
        if target is None:
            self.server.counts["rejected"] += 1
            reason = f"no client named {event.to!r} is connected"
            proto.send_rejection(event.id, AckStatus.NOT_DELIVERED, reason)
            return
        msg_id = event.id

        def answer(ack: Ack) -> None:
            if ack.ok:
                self.server.counts["delivered"] += 1
                proto.send_ack(msg_id, ack.reply)
            else:
                proto.send_rejection(msg_id, ack.status, ack.reason)
            self.schedule_flush()

        target.deliver(event.body, self.peer.name, answer)

    def _route_stored(self, event: Message) -> None:
        server = self.server
        journal = server.journal
        proto = self.proto
        assert journal is not None and proto is not None and event.to is not None
        to, msg_id, session = event.to, event.id, self.peer.session
        seq = journal.number()

        def stored() -> None:
            target = server.clients.get(to)
            note = f"stored for {to}" if target else f"stored for {to}, who is not connected"
            proto.send_ack(msg_id, b"", reason=note)
            server.counts["accepted"] += 1
            self.schedule_flush()
            if target is not None:
                answered = functools.partial(server.delivery_answered, seq, session, msg_id)
                target.deliver(event.body, self.peer.name, answered, msg_id=seq)

        def failed(reason: str) -> None:
            self.reject(msg_id, AckStatus.UNAVAILABLE, reason, now=True)
            self.schedule_flush()

        row = (seq, session, msg_id, self.peer.name, to, event.body, None, time.time(), None)
        journal.then(row, stored, failed)

    def deliver_outbox(self) -> None:
        """Everything stored for this client while it was away, in order, first."""
        server = self.server
        assert server.store is not None and self.peer.name is not None
        for seq, session, sender_id, sender, body in server.store.outbox(self.peer.name):
            answered = functools.partial(server.delivery_answered, seq, session, sender_id or 0)
            self.deliver(body, sender, answered, msg_id=seq)

    def deliver(
        self,
        body: Body,
        sender: str | None,
        on_ack: Callable[[Ack], None],
        msg_id: int | None = None,
    ) -> None:
        """Send a message to this client; ``on_ack`` gets its answer."""
        proto = self.proto
        assert isinstance(proto, Connection)
        msg_id = proto.send_message(body, name=sender, msg_id=msg_id)
        self.outgoing[msg_id] = on_ack
        self.schedule_flush()

    def _control(self, event: Event) -> None:
        if type(event) is Ack:
            on_ack = self.outgoing.pop(event.id, None)
            if on_ack is not None:
                on_ack(event)
        elif type(event) is Hello:
            self.peer.session = event.session
            if self.server.auth_required:
                self._challenge(event)
            else:
                self._welcome(event)
        elif type(event) is Auth:
            self._check_answer(event)
        elif type(event) is MessageTooLarge:
            self._too_large(event)
        elif type(event) is Goodbye:
            self.peer_done = True
            if not self.queue:
                self.finish()
        elif type(event) is ProtocolViolation:
            self.server.counts["violations"] += 1
            log.warning("%s: protocol violation: %s", self.describe(), event.reason)
            self.close()
        elif type(event) is PeerError:
            log.warning("%s: peer reported error %d: %s", self.describe(), event.code, event.reason)
            self.close()

    def _text_login(self, events: list[Event]) -> list[Event]:
        """A text peer's first line must be ``AUTH <token>`` (or ``AUTH <name> <token>``
        with a users file); the lines after it are messages."""
        if not events:
            return events
        first = events[0]
        if type(first) is not Message or type(first.body) is not str:
            self.refuse_login("the first line must be AUTH <token>")
            return []
        command, _, rest = first.body.strip().partition(" ")
        if command != "AUTH" or not rest.strip():
            self.refuse_login("the first line must be AUTH <token>")
            return []
        # AUTH <name> <token> for a name in the users file; else the rest is the token.
        name, _, token = rest.strip().partition(" ")
        users = self.server.users
        if users is None or users.get(name) is None or not token:
            name, token = "", rest.strip()
        found = self.server.auth_key(name or None)
        key = None if found is None else found[0]
        given = stretch(token, b"" if found is None else found[1])
        if key is None or not hmac.compare_digest(given, key):
            self.refuse_login("wrong token")
            return []
        self.text_login = False
        self.peer.name = name or None
        assert self.proto is not None
        self.proto.send_ack(first.id, "authenticated")
        return events[1:]

    def _challenge(self, hello: Hello) -> None:
        """Ask for proof of the token; an unknown name gets a challenge it cannot answer
        (so that no one can tell which names exist)."""
        assert isinstance(self.proto, Connection)
        self.hello = hello
        found = self.server.auth_key(hello.name)
        self.key, salt = found if found is not None else (secrets.token_bytes(32), b"\0" * 16)
        self.challenge = new_challenge()
        self.proto.send_challenge(self.challenge, salt)

    def _check_answer(self, auth: Auth) -> None:
        if self.hello is None or not verify_answer(self.key, self.challenge, auth.answer):
            self.refuse_login("wrong token")
            return
        hello = self.hello
        self.hello = None
        self._welcome(hello)

    def refuse_login(self, reason: str) -> None:
        """A failed login: say so (after the address's penalty, if any) and close."""
        self.server.counts["auth_failures"] += 1
        delay = self.server.penalty(self.host)
        log.warning("%s: login refused: %s", self.describe(), reason)
        if self.transport is not None:
            self.transport.pause_reading()
        if delay:
            self.loop.call_later(
                delay, self.fail, ErrorCode.AUTH_FAILED, f"login refused: {reason}"
            )
        else:
            self.fail(ErrorCode.AUTH_FAILED, f"login refused: {reason}")

    def _welcome(self, event: Hello) -> None:
        proto = self.proto
        assert isinstance(proto, Connection)
        server = self.server
        name = server.claim_name(self, event.name)
        if name is None:
            self.fail(ErrorCode.NAME_TAKEN, f"the name {event.name!r} is in use")
            return
        self.peer.name = name
        self.open = True
        proto.send_welcome(
            name=name,
            agent=f"telex/{__version__}",
            limits=server.limits.advertised(),
            stable_ids=server.store is not None,
        )
        if server.store is not None:
            if event.session is not None:
                self.max_stored = server.store.last_id(event.session)
            self.deliver_outbox()
        log.info("%s: joined", self.describe())
        self.server.emit("joined", self.peer)
        if self.server.closing:
            self.begin_goodbye()

    # -- writing and closing ----------------------------------------------------------

    def queued_bytes(self) -> bytes:
        return b"" if self.proto is None else self.proto.data_to_send()

    def describe(self) -> str:
        name = self.peer.name
        return f"{self.peer.address} ({name})" if name else self.peer.address

    def begin_goodbye(self) -> None:
        """Server shutdown: answer what arrived, then say goodbye."""
        if self.tls_pending and self.tls_task is not None and self.transport is not None:
            self.tls_task.cancel()
            self._drop(self.transport)
            return
        if not self.open:
            self.close()
        elif not self.queue:
            self.finish()

    def finish(self) -> None:
        """Everything has been answered: say goodbye; text peers are closed at once."""
        if self.proto is None:
            self.close()
            return
        reason = "server shutting down" if self.server.closing else "goodbye"
        self.proto.send_goodbye(reason)
        self.flush()
        if self.peer_done or isinstance(self.proto, TextConnection):
            self.close()

    def fail(self, code: ErrorCode, reason: str) -> None:
        """Tell the peer why (in its mode), then close."""
        if self.proto is None:
            if self.transport is not None and not self.transport.is_closing():
                self.transport.write(f"error: {reason}\n".encode())
        else:
            self.proto.send_error(code, reason)
            self.flush()
        log.info("%s: closed: %s", self.describe(), reason)
        self.close()

    def close(self) -> None:
        """Write what is queued (an ERROR frame, the last answers), then close."""
        self.flush()
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def check_deadlines(self, now: float) -> None:
        limits = self.server.limits
        quiet = now - self.last_heard
        if not self.open:
            if now - self.connected > limits.handshake_timeout:
                self.fail(
                    ErrorCode.HANDSHAKE_TIMEOUT,
                    f"no handshake within {limits.handshake_timeout:g} s",
                )
        elif quiet > limits.idle_timeout:
            if "writing" in self.paused_for:  # it stopped reading: nothing more can be sent
                log.info("%s: closed: not reading its acknowledgments", self.describe())
                self.abort()
            else:
                self.fail(ErrorCode.IDLE_TIMEOUT, f"silent for {limits.idle_timeout:g} s")
        elif quiet > limits.idle_timeout / 2 and not self.pinged and type(self.proto) is Connection:
            self.pinged = True
            self.proto.send_ping()
            self.flush()

    def _pause(self, why: str) -> None:
        if not self.paused_for and self.transport is not None:
            self.transport.pause_reading()
        self.paused_for.add(why)

    def _resume(self, why: str) -> None:
        if why in self.paused_for:
            self.paused_for.discard(why)
            if not self.paused_for and self.transport is not None:
                self.transport.resume_reading()
