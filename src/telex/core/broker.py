"""The server's promises as a plain object: bytes and events in, actions out.

The broker owns what a telex server promises: names, routing, outboxes, receipts,
dedup of resent messages, and the order of answers. Each connection is a ``Link``
with one ordered queue of answers; an answer that has to wait (for a commit, an async
handler, a recipient's ack) holds a slot in that queue, and the answers behind it wait
for it. So every message gets exactly one answer, in the order it arrived, whatever
fills the slots and in whatever order they are filled; an ERROR or GOODBYE goes last.

Nothing here touches a socket, a thread, a clock or a file. The server calls the
broker (``receive_data``, ``committed``, ``handled`` ...) and then carries out its
``actions`` (close a link, commit a batch to the store, look something up, run an
async handler, report a notice) and writes the bytes of every link in ``dirty``.
"""

from __future__ import annotations

import functools
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

from . import frames
from .events import (
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
    Ping,
    ProtocolViolation,
    StatsFrame,
)
from .handlers import Reject, rejection_for, reply_body
from .protocol import Connection, Role, looks_framed
from .records import (
    Answered,
    Batch,
    Committed,
    Envelope,
    Found,
    Inbound,
    Item,
    Pending,
    SessionState,
)
from .textmode import TextConnection

__all__ = [
    "Broker",
    "Close",
    "Commit",
    "Delivered",
    "Find",
    "Gate",
    "Handler",
    "Link",
    "Load",
    "Notice",
    "Peer",
    "PeerEvent",
    "Released",
    "Reply",
    "RunHandler",
    "Slot",
    "Stats",
]

Reply = Body | None
SyncHandler = Callable[[Message, "Peer"], Reply]
Handler = SyncHandler | Callable[[Message, "Peer"], Awaitable[Reply]]
OnAnswer = Callable[[Ack], None]

MAX_STORED_ID = 2**63 - 1
"""The largest message id a store keeps (SQL integers are signed 64-bit); a larger one,
legal on the wire, is refused by a server with a store, alone, with a reason."""
UNSTORABLE = f"message ids above {MAX_STORED_ID} cannot be stored"

RESERVED_NAMES = frozenset({"server", "you", "everyone"})
"""Names no client may hold, in any case: the consoles use them for the server, for the
user's own messages and for a message to every client."""

HELD_HIGH = 10_000
"""Events or handler jobs waiting on one link before the server stops reading from it."""
HELD_LOW = 1_000


@dataclass(slots=True)
class Peer:
    """Who sent a message: handed to the handler beside it."""

    address: str
    mode: str = "unknown"  # "framed" or "text" once the first bytes have arrived
    name: str | None = None
    connected_at: float = 0.0
    session: str | None = None  # a framed client's session, the same across its reconnects


@dataclass(frozen=True, slots=True)
class PeerEvent:
    """Something that happened to a connection, for a console or a log.

    ``kind``: ``joined``, ``left``, ``violation``, ``peer_error``, ``refused``,
    ``handler_failed`` (``error`` holds the exception), ``too_large``, ``late`` (a
    cluster's message found after a later one: the client is made to reconnect).
    """

    kind: str
    peer: Peer
    detail: str = ""
    error: BaseException | None = None


@dataclass(slots=True)
class Stats:
    """What the server counts, typed: one place for every counter."""

    connections: int = 0
    accepted: int = 0
    rejected: int = 0
    delivered: int = 0
    receipts: int = 0
    resent: int = 0
    auth_failures: int = 0
    violations: int = 0
    refused_connections: int = 0
    commits: int = 0
    commit_failures: int = 0
    handler_errors: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    rejected_by: dict[str, int] = field(default_factory=dict)  # by ACK status name
    refused_by: dict[str, int] = field(default_factory=dict)  # connections, by why

    def reject(self, status: int, count: int = 1) -> None:
        """``count`` messages answered with a rejection of ``status``."""
        self.rejected += count
        name = AckStatus(status).name.lower()
        self.rejected_by[name] = self.rejected_by.get(name, 0) + count

    def refuse(self, why: str) -> None:
        """A connection refused (or closed unfinished) at a limit."""
        self.refused_connections += 1
        self.refused_by[why] = self.refused_by.get(why, 0) + 1


class Gate(Protocol):
    """How the broker checks a login (implemented in ``telex.security``)."""

    required: bool

    def challenge(self, name: str | None) -> tuple[bytes, bytes, bytes]:
        """(key, challenge, salt) for a client naming itself ``name``."""
        ...

    def verify(self, key: bytes, challenge: bytes, answer: bytes) -> bool: ...

    def holds_token(self, key: bytes) -> bool:
        """The key a client proved is the server's shared token (not a user's own)."""
        ...

    def text_login(self, line: str) -> tuple[bool, str | None]:
        """A text peer's first line: (right, the user's name if it gave one)."""
        ...


class Slot:
    """A place in a link's answer queue; ``fill`` writes the answer once it is known."""

    __slots__ = ("fill",)

    def __init__(self, fill: Callable[[Any], None] | None = None) -> None:
        self.fill = fill


class Link:
    """The broker's view of one connection."""

    __slots__ = (
        "admin",
        "answers",
        "challenge",
        "deliveries",
        "dirty",
        "ending",
        "final",
        "guest",
        "held",
        "hello",
        "host",
        "io",
        "jobs",
        "key",
        "known",
        "login",
        "max_stored",
        "open",
        "outgoing",
        "outgoing_answerable",
        "parked",
        "paused",
        "peer",
        "peer_done",
        "proto",
        "staged",
        "text_login",
    )

    def __init__(self, peer: Peer, host: str, io: Any = None) -> None:
        self.peer = peer
        self.host = host
        self.io = io  # the adapter's object for this connection
        self.proto: Connection | TextConnection | None = None
        self.open = False  # welcomed (framed) or first byte seen (text)
        self.answers: deque[Slot] = deque()  # answers waiting for an earlier one
        self.held: list[Event] | None = None  # events waiting for a store lookup
        self.parked: list[Callable[[Any], None]] = []  # receipts waiting for the held
        self.known: dict[int, Found | None] = {}  # resent ids looked up: stored or not
        self.login: Callable[[], bool] | None = None  # a login waiting for its check
        self.admin = False  # logged in with the server's shared token: may see its stats
        self.max_stored = 0  # this session's highest stored id: lower ones may be resends
        self.outgoing: dict[int, OnAnswer] = {}  # sent to this client, not yet answered
        self.outgoing_answerable = True  # False once its input ended: no acks can come
        self.deliveries: list[tuple[Body, str | None, OnAnswer, int | None]] | None = []
        self.jobs = 0  # async handler calls not yet answered
        self.staged = 0  # its messages in batches not yet stored
        self.peer_done = False  # GOODBYE or end of input: no new messages from the peer
        self.ending = ""  # we said (or will say) GOODBYE with this reason
        self.final: tuple[ErrorCode, str] | None = None  # an ERROR to send after the answers
        self.dirty = False
        self.paused = False
        self.text_login = False
        self.guest = False  # it gave no name: the server chose one
        self.hello: Hello | None = None
        self.key = b""
        self.challenge = b""

    @property
    def handshaking(self) -> bool:
        """Not yet welcomed, or a text peer that has not yet logged in."""
        return not self.open or self.text_login

    def describe(self) -> str:
        name = self.peer.name
        return f"{self.peer.address} ({name})" if name else self.peer.address


# -- actions ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Close:
    """Write what is queued, then close the connection."""

    link: Link
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Commit:
    """There is a batch to store: call ``take_batch()`` at the end of the loop turn."""


@dataclass(frozen=True, slots=True)
class Load:
    """Read what the store has for an arriving client; answer with ``loaded()``."""

    link: Link
    session: str | None
    name: str


@dataclass(frozen=True, slots=True)
class Find:
    """Look up resent ids of a session; answer with ``found()``."""

    link: Link
    session: str
    ids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class RunHandler:
    """Run the async handler on a message; answer with ``handled()`` or ``handler_failed()``."""

    link: Link
    slot: Slot
    message: Message


@dataclass(frozen=True, slots=True)
class Pause:
    """Stop reading from the link (``reading`` False) or read again (True)."""

    link: Link
    reading: bool


@dataclass(frozen=True, slots=True)
class CheckLogin:
    """A login waits to be checked: the server calls ``check_login(link)`` when its
    address's turn comes (it paces the logins of an address that keeps failing)."""

    link: Link


@dataclass(frozen=True, slots=True)
class StatsAsked:
    """The client asked for the server's counters: the server answers with a ``STATS``
    frame, with them if ``allowed``."""

    link: Link
    allowed: bool


@dataclass(frozen=True, slots=True)
class Notice:
    event: PeerEvent


@dataclass(frozen=True, slots=True)
class Released:
    """Client ``name`` left (with a store): a store shared by a cluster frees its name."""

    name: str


@dataclass(frozen=True, slots=True)
class Delivered:
    """A message of the server's own, stored while its client was away, was answered by
    that client: ``ack`` is its answer to message ``seq``."""

    seq: int
    name: str
    ack: Ack


Action = (
    Close
    | Commit
    | Load
    | Find
    | RunHandler
    | Pause
    | CheckLogin
    | StatsAsked
    | Notice
    | Delivered
    | Released
)


@dataclass(slots=True)
class _Thens:
    """What to do once the open batch commits: one entry per Inbound and per Envelope."""

    inbound: list[tuple[Link, Slot, list[Item]]] = field(default_factory=list)
    envelopes: list[Callable[[int | None, str], None]] = field(default_factory=list)
    sessions: list[str] = field(default_factory=list)  # whose messages are in the batch
    delivered: list[int] = field(default_factory=list)  # the seqs marked delivered in it
    receipted: list[int] = field(default_factory=list)  # the seqs marked receipted in it


class Broker:
    """Every promise of a telex server, without I/O."""

    def __init__(
        self,
        handler: Handler,
        *,
        handler_is_async: bool = False,
        stored: bool = False,
        shared: bool = False,
        gate: Gate | None = None,
        max_message_size: int = 1024 * 1024,
        advertised: dict[str, Any] | None = None,
        agent: str = "",
        guest_prefix: str = "guest-",
    ) -> None:
        self.handler = handler
        self.handler_is_async = handler_is_async
        self._sync_handler = cast(SyncHandler, handler)
        self.stored = stored
        self.shared = shared  # the store is shared by a cluster: it keeps owed receipts
        self.gate = gate
        self.max_message_size = max_message_size
        self.advertised = advertised or {}
        self.agent = agent
        self.links: set[Link] = set()
        self.clients: dict[str, Link] = {}  # framed clients, by name
        self.sessions: dict[str, Link] = {}  # framed clients, by session
        self.stats = Stats()
        self.actions: list[Action] = []
        self.dirty: list[Link] = []  # links whose core has bytes to write
        self.closing = False
        self._guests = 0
        self.guest_prefix = guest_prefix  # a cluster's servers each have their own
        self._batch = Batch()
        self._thens = _Thens()
        self._committing: _Thens | None = None
        self._commit_wanted = False
        # Sessions with messages not yet committed: [how many batches, the highest id].
        # A resend of one of those waits for the commit before the store is asked.
        self._unsettled: dict[str, list[int]] = {}
        self._awaiting_commit: list[Link] = []
        self._answered: set[int] = set()  # seqs delivered, their mark not yet stored
        self._receipted: set[int] = set()  # seqs whose receipt went, its mark not stored
        self._elsewhere: frozenset[str] = frozenset()  # on another server, last commit

    # -- connections --------------------------------------------------------------

    def connect(self, link: Link) -> None:
        """A connection was accepted (the server checked its limits)."""
        self.links.add(link)
        self.stats.connections += 1

    def receive_data(self, link: Link, data: bytes) -> None:
        """Bytes from a connection: parse them, answer what they complete."""
        proto = link.proto
        if proto is None:
            proto = self._choose_mode(link, data)
            if proto is None:
                return
        events = proto.receive_data(data)
        if events:
            self.handle(link, events)

    def text_pause(self, link: Link) -> None:
        """A text peer paused mid-line: the line so far is a message."""
        if type(link.proto) is TextConnection:
            self.handle(link, link.proto.flush())

    def receive_eof(self, link: Link) -> None:
        """The peer will send nothing more: answer what it sent, then close."""
        if link.proto is not None:
            events = link.proto.receive_eof()
            if events:
                self.handle(link, events)
        link.peer_done = True
        link.outgoing_answerable = False
        if not link.open and link.held is None:  # not even waiting for its welcome
            self._close(link, "closed before its handshake")
        else:
            self._settle(link)

    def connection_lost(self, link: Link) -> None:
        """The connection is gone: forget it; what it was sent and never answered is
        not delivered (a stored message stays in the outbox)."""
        if link not in self.links:
            return
        self.links.discard(link)
        name = link.peer.name
        if name is not None and self.clients.get(name) is link:
            del self.clients[name]
            if self.stored:
                self.actions.append(Released(name))
        session = link.peer.session
        if session is not None and self.sessions.get(session) is link:
            del self.sessions[session]
        self._never_answered(link, f"{name} disconnected before acknowledging")
        link.answers.clear()
        link.held = None
        if link.open:
            self._notice("left", link)

    def fail(self, link: Link, code: ErrorCode, reason: str) -> None:
        """End a connection with an ERROR (a timeout, a refused login), after its answers."""
        if link.final is None:
            link.final = (code, reason)
        link.held = None
        # Nothing more is read from it: what it was sent will not be acknowledged (and
        # answers of its own may wait for that, as when it sent a message to itself).
        self._never_answered(link, f"{link.peer.name} is being closed: {reason}")
        if link.proto is None:  # it never wrote: answer as to a text peer
            link.proto = TextConnection(max_message_size=self.max_message_size)
        self._settle(link)

    def _never_answered(self, link: Link, reason: str) -> None:
        """What was sent to ``link`` and not yet answered is not delivered (with a store,
        it stays in the outbox); nothing more is sent to it."""
        outgoing, link.outgoing = link.outgoing, {}
        for msg_id, on_answer in outgoing.items():
            on_answer(Ack(msg_id, AckStatus.NOT_DELIVERED, reason))
        for _, _, on_answer, _ in link.deliveries or ():
            on_answer(Ack(0, AckStatus.NOT_DELIVERED, reason))
        link.deliveries = None

    def shutdown(self) -> None:
        """The server is stopping: answer what arrived, say goodbye, close."""
        self.closing = True
        for link in list(self.links):
            if not link.open or link.login is not None:  # a login not checked yet too
                self._close(link, "server shutting down")
            else:
                link.ending = link.ending or "server shutting down"
                self._settle(link)

    # -- the events of one read ---------------------------------------------------

    def handle(self, link: Link, events: list[Event]) -> None:
        """Answer every event of one read, in order."""
        if link.final is not None:
            return  # it is being closed with an ERROR: nothing more is read
        if link.held is not None:
            link.held.extend(events)
            self._pause_if_full(link)
            return
        if link.text_login:
            events = self._text_login(link, events)
        proto = link.proto
        assert proto is not None
        if self.handler_is_async:
            self._handle_async(link, events)
        elif self.stored:
            self._handle_stored(link, events)
        else:
            # The hot path: a sync handler, no store. While no earlier answer waits,
            # each message is answered as it is handled.
            handler = self._sync_handler
            peer = link.peer
            answers = link.answers
            waiting = bool(answers)  # an earlier answer waits: the rest queue behind it
            send_ack = proto.send_ack
            outgoing = link.outgoing
            accepted = 0
            answered = False
            for event in events:
                if type(event) is Message:
                    if event.to is None:
                        try:
                            reply = handler(event, peer)
                            if waiting:
                                self._answer(link, _ack_with(event.id, reply_body(reply)))
                            else:  # (a reply of the wrong type raises TypeError here)
                                send_ack(event.id, b"" if reply is None else reply)
                        except Exception as exc:
                            self._handler_failed(link, event, exc)
                            waiting = bool(answers)
                            continue
                        accepted += 1
                        continue
                elif type(event) is Ack:  # a client's answer to what the server sent it
                    answered = True
                    on_answer = outgoing.pop(event.id, None)
                    if on_answer is not None:
                        on_answer(event)
                    continue
                if not self._other(link, event, events):
                    break
                waiting = bool(answers)
            self.stats.accepted += accepted
            if answered and link.ending and not outgoing:
                self._settle(link)
        if link.answers or link.staged:
            self._pause_if_full(link)
        self._touch(link)

    def _handle_stored(self, link: Link, events: list[Event]) -> None:
        """With a store: the messages of one read are stored together (one Inbound) and
        each is acknowledged once they are."""
        handler = self._sync_handler
        peer = link.peer
        items: list[Item] = []
        append = items.append
        for event in events:
            if type(event) is Message:
                if event.id > MAX_STORED_ID:
                    items = self._stage(link, items)
                    append = items.append
                    self._reject(link, event.id, AckStatus.REFUSED, UNSTORABLE)
                    continue
                if event.id <= link.max_stored and link.peer.session is not None:
                    items = self._stage(link, items)
                    append = items.append
                    if not self._fresh(link, event, events):
                        if link.held is not None:
                            return
                        continue
                if event.to is None:
                    try:
                        body = reply_body(handler(event, peer))
                    except Exception as exc:
                        items = self._stage(link, items)
                        append = items.append
                        self._handler_failed(link, event, exc)
                        continue
                    append((event.id, event.body, body))
                    continue
            if type(event) is not Ping:  # what came before is answered before it
                items = self._stage(link, items)
                append = items.append
            if not self._other(link, event, events):
                break
        self._stage(link, items)

    def _handle_async(self, link: Link, events: list[Event]) -> None:
        for event in events:
            if type(event) is Message:
                if self.stored and event.id > MAX_STORED_ID:
                    self._reject(link, event.id, AckStatus.REFUSED, UNSTORABLE)
                    continue
                if (
                    self.stored
                    and event.id <= link.max_stored
                    and link.peer.session is not None
                    and not self._fresh(link, event, events)
                ):
                    if link.held is not None:
                        return
                    continue
                if event.to is None:
                    slot = Slot()
                    link.answers.append(slot)
                    link.jobs += 1
                    self.actions.append(RunHandler(link, slot, event))
                    self._pause_if_full(link)
                    continue
            if not self._other(link, event, events):
                break

    def _other(self, link: Link, event: Event, events: list[Event]) -> bool:
        """Every event but a message for the server's handler; False: stop reading."""
        kind = type(event)
        if kind is Message:
            self._route(link, cast(Message, event))
        elif kind is Ack:
            ack = cast(Ack, event)
            on_answer = link.outgoing.pop(ack.id, None)
            if on_answer is not None:
                on_answer(ack)
            if link.ending and not link.outgoing:
                self._settle(link)
        elif kind is Ping:
            proto = link.proto
            assert isinstance(proto, Connection)
            proto.send_pong(cast(Ping, event).payload)
        elif kind is StatsFrame:
            gate = self.gate
            allowed = gate is None or not gate.required or link.admin
            self.actions.append(StatsAsked(link, allowed))
        elif kind is MessageTooLarge:
            too_large = cast(MessageTooLarge, event)
            self._notice("too_large", link, f"message {too_large.id}: {too_large.reason}")
            self._reject(link, too_large.id, AckStatus.TOO_LARGE, too_large.reason)
        elif kind is Hello:
            return self._hello(link, cast(Hello, event), _after(events, event))
        elif kind is Auth:
            return self._check_answer(link, cast(Auth, event), _after(events, event))
        elif kind is Goodbye:
            link.peer_done = True
            link.ending = link.ending or "goodbye"
            self._settle(link)
        elif kind is ProtocolViolation:
            violation = cast(ProtocolViolation, event)
            self.stats.violations += 1
            self._notice("violation", link, violation.reason)
            self.fail(link, ErrorCode(violation.code), violation.reason)
            return False
        elif kind is PeerError:
            error = cast(PeerError, event)
            self._notice("peer_error", link, f"{error.code}: {error.reason}")
            link.answers.clear()
            self._close(link, error.reason)
            return False
        return True

    # -- answers, in order ----------------------------------------------------------

    def _answer(self, link: Link, fill: Callable[[Any], None]) -> None:
        """An answer known now: written at once, or behind the answers still waiting."""
        if link.answers:
            link.answers.append(Slot(fill))
        elif link.proto is not None:
            fill(link.proto)
            self._touch(link)

    def _fill(self, link: Link, slot: Slot, fill: Callable[[Any], None]) -> None:
        """A waiting answer is known: write it, and every ready one behind it."""
        slot.fill = fill
        answers = link.answers
        if not answers or answers[0] is not slot:
            return
        proto = link.proto
        while answers and answers[0].fill is not None:
            ready = answers.popleft().fill
            if proto is not None and ready is not None:
                ready(proto)
        self._touch(link)
        if link.paused:
            self._resume_if_drained(link)
        if not answers:
            self._settle(link)

    def _reject(self, link: Link, msg_id: int, status: int, reason: str) -> None:
        self.stats.reject(status)
        self._answer(link, _rejection(msg_id, status, reason))

    def _handler_failed(self, link: Link, event: Message, exc: Exception) -> None:
        self._answer(link, self._failure(link, event.id, exc))

    def _failure(self, link: Link, msg_id: int, exc: Exception) -> Callable[[Any], None]:
        """The answer a handler's exception earns; a bug (not a Reject) is reported."""
        if not isinstance(exc, Reject):
            self.stats.handler_errors += 1
            self._notice("handler_failed", link, f"message {msg_id}", exc)
        status, reason = rejection_for(exc)
        self.stats.reject(status)
        return _rejection(msg_id, status, reason)

    def _settle(self, link: Link) -> None:
        """Once every answer is out: the ERROR, or GOODBYE and the close, that waited."""
        if link.answers or link.held is not None or link.proto is None:
            return
        if link.final is not None:
            code, reason = link.final
            link.proto.send_error(code, reason)
            self._close(link, reason)
            return
        if link.jobs:
            return
        if link.ending or link.peer_done:
            text = type(link.proto) is TextConnection
            if link.ending and not (text and not self.closing):
                link.proto.send_goodbye(link.ending)
                link.deliveries = None  # after our GOODBYE, nothing new goes to it
            answerable = link.outgoing and link.outgoing_answerable
            if text or (link.peer_done and not answerable) or not link.open:
                self._close(link, link.ending or "end of input")
            else:
                self._touch(link)

    # -- messages for the server: stored, then acknowledged -------------------------

    def _stage(self, link: Link, items: list[Item], slot: Slot | None = None) -> list[Item]:
        """Hand the messages so far to the next commit, their answer in ``slot`` (a new
        one at the end of the queue if not given); a fresh list for what follows."""
        if items:
            if slot is None:
                slot = Slot()
                link.answers.append(slot)
            self._batch.inbound.append(Inbound(link.peer.session, self._sender(link), items))
            self._thens.inbound.append((link, slot, items))
            link.staged += len(items)
            self._unsettle(link.peer.session, items[-1][0])
            self._want_commit()
            return []
        return items

    def _fresh(self, link: Link, event: Message, events: list[Event]) -> bool:
        """A message at or below the session's highest stored id: True if it is new.

        One already stored is acknowledged again (not stored or handled twice); for one
        not yet looked up, the rest of the read waits for the store's answer.
        """
        session = link.peer.session
        assert session is not None
        if event.id not in link.known:
            link.held = events[events.index(event) :]
            if session in self._unsettled:  # the first copy may be in a batch not yet stored
                self._awaiting_commit.append(link)
            else:
                self._find(link, session)
            return False
        found = link.known.pop(event.id)
        if found is None:
            return True
        self.stats.resent += 1
        reply, msg_id = found.reply, event.id
        to = found.recipient
        if to is None:
            self._answer(link, _ack_with(msg_id, reply))
            return False
        away = not found.delivered and self._away(to)
        self._answer(link, _stored_ack(msg_id, to, away))
        if found.delivered:  # its receipt may have been lost with the old connection
            receipt = _receipt(msg_id, found.status, found.reason, found.reply or b"")
            self._answer(link, receipt)
        return False

    def _find(self, link: Link, session: str) -> None:
        held = link.held or []
        ids = tuple(
            e.id
            for e in held
            if type(e) is Message and e.id <= link.max_stored and e.id not in link.known
        )
        self.actions.append(Find(link, session, ids))

    def _unsettle(self, session: str | None, msg_id: int) -> None:
        if session is not None:
            entry = self._unsettled.setdefault(session, [0, 0])
            entry[0] += 1
            entry[1] = max(entry[1], msg_id)
            self._thens.sessions.append(session)

    def _settle_sessions(self, sessions: list[str]) -> None:
        """A batch is done: its sessions' resends may now be looked up in the store."""
        for session in sessions:
            entry = self._unsettled[session]
            entry[0] -= 1
            if not entry[0]:
                del self._unsettled[session]
        waiting, self._awaiting_commit = self._awaiting_commit, []
        for link in waiting:
            waiting_session = link.peer.session
            if link not in self.links or link.held is None or waiting_session is None:
                continue
            if waiting_session in self._unsettled:
                self._awaiting_commit.append(link)
            else:
                self._find(link, waiting_session)

    def found(self, link: Link, found: dict[int, Found], ids: Iterable[int]) -> None:
        """The store's answer to ``Find``: go on with the events that waited for it."""
        for msg_id in ids:
            link.known[msg_id] = found.get(msg_id)
        self._release(link)

    def _release(self, link: Link) -> None:
        held, link.held = link.held, None
        if link not in self.links or link.final is not None:
            return
        if held:
            self.handle(link, held)
        if link.held is None and link.parked:
            parked, link.parked = link.parked, []
            for fill in parked:
                self._answer(link, fill)
        if link.held is None:
            self._resume_if_drained(link)
            self._settle(link)

    @property
    def deferred(self) -> bool:
        """A batch waits that ``take_batch(marks_now=False)`` left: receipts given."""
        return self._committing is None and bool(self._batch)

    @property
    def storing(self) -> bool:
        """A batch is being committed, or one waits to be: the store is still needed."""
        return self._committing is not None or bool(self._batch)

    def _want_commit(self) -> None:
        if not self._commit_wanted:
            self._commit_wanted = True
            self.actions.append(Commit())

    def take_batch(self, *, marks_now: bool = True) -> Batch | None:
        """The batch to commit now (None while one is being committed, or if empty; or,
        unless ``marks_now``, if it holds only receipts given: nobody waits for those,
        so they may wait for the next batch, then ``deferred`` is true)."""
        self._commit_wanted = False
        batch = self._batch
        if self._committing is not None or not batch:
            return None
        if not marks_now and not (batch.inbound or batch.envelopes or batch.delivered):
            return None
        batch, self._batch = self._batch, Batch()
        self._committing, self._thens = self._thens, _Thens()
        self._committing.delivered = batch.delivered
        self._committing.receipted = batch.receipted
        return batch

    def committed(self, result: Committed) -> None:
        """The batch is stored: acknowledge each message in it, in each link's order."""
        self.stored_parts(result.inbound, result.envelopes, result.elsewhere)

    def commit_failed(self, reason: str) -> None:
        """The batch could not be stored: none of it is acknowledged; each is refused."""
        thens = self._committing
        assert thens is not None
        self.stored_parts([reason] * len(thens.inbound), [reason] * len(thens.envelopes))

    def stored_parts(
        self,
        inbound: Sequence[int | str],
        envelopes: Sequence[int | str],
        elsewhere: frozenset[str] = frozenset(),
    ) -> None:
        """The batch's outcome part by part: for each Inbound and each Envelope, the seq it
        was stored under, or the reason it was not (then it is refused, never acked).
        A server stores a failed batch again part by part, so that one part's fault
        (a bad value, a full disk for a large body) refuses that part alone.
        ``elsewhere``: recipients another server of the cluster will deliver to."""
        thens = self._committing
        assert thens is not None
        self._committing = None
        self._elsewhere = elsewhere
        if all(isinstance(seq, int) for seq in [*inbound, *envelopes]):
            self.stats.commits += 1
        else:
            self.stats.commit_failures += 1
        for (link, slot, items), seq in zip(thens.inbound, inbound, strict=True):
            link.staged -= len(items)
            if isinstance(seq, str):
                self.stats.reject(AckStatus.UNAVAILABLE, len(items))
                self._fill(link, slot, _unavailable(items, _could_not_store(seq)))
                continue
            self.stats.accepted += len(items)
            self._fill(link, slot, _acks(items))
        for then, seq in zip(thens.envelopes, envelopes, strict=True):
            if isinstance(seq, str):
                then(None, _could_not_store(seq))
            else:
                then(seq, "")
        self._settle_sessions(thens.sessions)
        self._answered.difference_update(thens.delivered)  # the store knows them now
        self._receipted.difference_update(thens.receipted)
        for link, _, _ in thens.inbound:
            self._resume_if_drained(link)
        if self._batch:
            self._want_commit()

    # -- async handlers -------------------------------------------------------------

    def handled(self, link: Link, slot: Slot, message: Message, reply: Reply) -> None:
        """The async handler answered ``message``: store it (with a store), then ack."""
        if link not in self.links:
            link.jobs -= 1
            return
        try:
            body = reply_body(reply)
        except TypeError as exc:
            self.handler_failed(link, slot, message, exc)
            return
        link.jobs -= 1
        if self.stored:
            self._stage(link, [(message.id, message.body, body)], slot)
        else:
            self.stats.accepted += 1
            self._fill(link, slot, _ack_with(message.id, body))
        self._resume_if_drained(link)

    def handler_failed(self, link: Link, slot: Slot, message: Message, exc: Exception) -> None:
        link.jobs -= 1
        if link not in self.links:
            return
        self._fill(link, slot, self._failure(link, message.id, exc))
        self._resume_if_drained(link)
        self._settle(link)

    @staticmethod
    def _waiting(link: Link) -> int:
        """Messages of this link the server holds for now: unanswered, being stored,
        with the handler, or held for a lookup."""
        return link.jobs + len(link.held or ()) + len(link.answers) + link.staged

    def _pause_if_full(self, link: Link) -> None:
        """Stop reading from a link whose messages pile up (a slow store, a recipient
        that does not answer): memory stays bounded, and the sender's TCP window fills."""
        if not link.paused and self._waiting(link) > HELD_HIGH:
            link.paused = True
            self.actions.append(Pause(link, False))

    def _resume_if_drained(self, link: Link) -> None:
        if link.paused and self._waiting(link) < HELD_LOW:
            link.paused = False
            self.actions.append(Pause(link, True))

    # -- routing: messages between clients -----------------------------------------

    def _route(self, link: Link, event: Message) -> None:
        """A message for another client. Without a store it is forwarded at once and the
        recipient's own ack answers the sender (flagged delivered). With a store it is
        stored first, the sender hears "stored" (flagged), and the recipient's ack
        reaches the sender later as a RECEIPT."""
        to = event.to
        assert to is not None
        msg_id = event.id
        slot = Slot()
        link.answers.append(slot)
        if to.lower() in RESERVED_NAMES:  # no client holds one: nothing to store it for
            self.stats.reject(AckStatus.NOT_DELIVERED)
            reason = (
                "the server is not a client: send it a MESSAGE, without a name"
                if to.lower() == "server"
                else f"{to!r} is a reserved name: no client holds it"
            )
            self._fill(link, slot, _rejection(msg_id, AckStatus.NOT_DELIVERED, reason))
            return
        if self.stored:
            self._route_stored(link, slot, event, to)
            return
        target = self.clients.get(to)
        if target is None or target.deliveries is None:
            self.stats.reject(AckStatus.NOT_DELIVERED)
            reason = f"no client named {to!r} is connected"
            self._fill(link, slot, _rejection(msg_id, AckStatus.NOT_DELIVERED, reason))
            return

        def answered(ack: Ack) -> None:
            if ack.status == AckStatus.NOT_DELIVERED:
                self.stats.reject(AckStatus.NOT_DELIVERED)
                flags = 0
            else:
                self.stats.delivered += 1
                flags = frames.FLAG_DELIVERED
            self._fill(link, slot, _answer_with(msg_id, ack, flags))

        self.deliver(target, event.body, link.peer.name, answered)

    def _route_stored(self, link: Link, slot: Slot, event: Message, to: str) -> None:
        session, msg_id, sender = link.peer.session, event.id, link.peer.name
        body = event.body

        def stored(seq: int | None, error: str) -> None:
            if seq is None:
                self.stats.reject(AckStatus.UNAVAILABLE)
                self._fill(link, slot, _rejection(msg_id, AckStatus.UNAVAILABLE, error))
                return
            self.stats.accepted += 1
            target = self.clients.get(to)
            self._fill(link, slot, _stored_ack(msg_id, to, self._away(to)))
            if target is not None and not self.shared:  # (a cluster's: by its wake-up)
                on_answer = self._receipt_for(seq, session, msg_id)
                self.deliver(target, body, sender, on_answer, seq)

        self._batch.envelopes.append(Envelope(to, body, sender, session, msg_id))
        self._thens.envelopes.append(stored)
        self._unsettle(session, msg_id)
        self._want_commit()

    def _receipt_for(self, seq: int, session: str | None, sender_id: int) -> OnAnswer:
        """What to do when a stored message's recipient answers: mark it delivered, and
        tell its sender (a RECEIPT under the sender's id), if the sender is here."""

        def answered(ack: Ack) -> None:
            if ack.status == AckStatus.NOT_DELIVERED:  # it left first: the outbox keeps it
                return
            if seq in self._answered:  # delivered again before its mark was stored
                return
            self._answered.add(seq)
            self._batch.delivered.append(seq)
            self._batch.answers[seq] = (ack.status, ack.reason, ack.reply)
            self._want_commit()
            self.stats.delivered += 1  # it reached its client, which answered
            if session is not None and sender_id:
                answer = Answered(seq, session, sender_id, ack.status, ack.reason, ack.reply)
                self._give_receipt(answer)

        return answered

    def _give_receipt(self, answer: Answered) -> None:
        """Tell the sender its message was answered (a RECEIPT under its id), if the
        sender is connected here; a shared store is told it need not keep it."""
        sender = self.sessions.get(answer.session)
        if sender is None or not isinstance(sender.proto, Connection):
            return
        if answer.seq in self._receipted:  # given already; its mark is not stored yet
            return
        self.stats.receipts += 1
        receipt = _receipt(answer.sender_id, answer.status, answer.reason, answer.reply)
        if sender.held is not None:  # behind the ACK the held events may hold
            sender.parked.append(receipt)
        else:
            self._answer(sender, receipt)
        if self.shared:
            self._receipted.add(answer.seq)
            self._batch.receipted.append(answer.seq)
            self._want_commit()

    # -- a cluster: what other servers stored or answered ------------------------------

    def receipts_arrived(self, answers: Iterable[Answered]) -> None:
        """Receipts another server's clients earned for senders here (read from the
        shared store): each goes to its sender if it is connected here."""
        for answer in answers:
            self._give_receipt(answer)

    def pending_arrived(self, pending: Iterable[tuple[str, Pending]]) -> None:
        """Messages another server stored for clients here (read from the shared store,
        oldest first): each is sent unless it is on its way or answered already."""
        for name, message in pending:
            link = self.clients.get(name)
            if link is None or link.deliveries is None:
                continue  # (it stays in the outbox)
            if message.seq in self._answered or message.seq in link.outgoing:
                continue  # (a client still in its handshake gets it after its outbox)
            on_answer = self._outbox_answer(message, name)
            self.deliver(link, message.body, message.sender, on_answer, message.seq)

    def taken_over(self, name: str, reason: str) -> None:
        """Another server gave ``name`` to a new connection (of the same session, or
        after this server lost its lease): the connection here that holds it is closed."""
        holder = self.clients.get(name)
        if holder is not None:
            del self.clients[name]  # the name is the other server's now: not released
            self.connection_lost(holder)
            self._close(holder, reason)

    def names(self) -> list[str]:
        """The names held by welcomed clients (the names a cluster's lease covers)."""
        return [name for name, link in self.clients.items() if link.open]

    def deliver(
        self,
        link: Link,
        body: Body,
        sender: str | None,
        on_answer: OnAnswer,
        msg_id: int | None = None,
    ) -> None:
        """Send a message to a framed client; ``on_answer`` gets its answer. Before the
        client is welcomed it waits; after our GOODBYE it is not delivered."""
        deliveries = link.deliveries
        if deliveries is None:
            on_answer(Ack(msg_id or 0, AckStatus.NOT_DELIVERED, f"{link.peer.name} is leaving"))
            return
        if not link.open:
            deliveries.append((body, sender, on_answer, msg_id))
            return
        proto = link.proto
        assert isinstance(proto, Connection)
        if msg_id is not None and msg_id < proto.next_id:
            if msg_id not in link.outgoing:  # (else sent already: outbox, then as stored)
                self._late(link, msg_id)
            return
        sent_id = proto.send_message(body, name=sender, msg_id=msg_id)
        link.outgoing[sent_id] = on_answer
        self._touch(link)

    def _late(self, link: Link, seq: int) -> None:
        """A stored message below one this connection was sent already: a cluster's
        server found it late (the notice of it was missed). Ids on a connection only
        increase, so it cannot go on this one: the connection is closed, without
        GOODBYE, and the client's next connection gets its outbox in order (what it
        took already, it knows by id)."""
        reason = f"message {seq} came late: reconnect to take it in order"
        self._notice("late", link, reason)
        self.connection_lost(link)
        self._close(link, reason)

    def push(self, link: Link, bodies: Iterable[Body], on_answer: OnAnswer) -> int:
        """Send the server's own messages to an open client without a store: the fast
        way (``Server.send_many``). Returns how many went; none if it cannot take them."""
        proto = link.proto
        if link.deliveries is None or not link.open or not isinstance(proto, Connection):
            return 0
        send_message = proto.send_message
        outgoing = link.outgoing
        count = 0
        for body in bodies:
            outgoing[send_message(body)] = on_answer
            count += 1
        self._touch(link)
        return count

    def send(self, name: str, body: Body, on_answer: OnAnswer) -> None:
        """The server sends ``body`` to client ``name``; ``on_answer`` gets the outcome:
        the client's ack (flagged delivered), or with a store the ack of the store
        (flagged stored) when the client is not connected. In a cluster, always the
        store's: the message goes out with its wake-up (in seq order with the rest),
        and ``Delivered`` reports the client's answer, from the server it reached."""
        if not self.stored:
            target = self.clients.get(name)
            if target is None:
                reason = f"no client named {name!r} is connected"
                on_answer(Ack(0, AckStatus.NOT_DELIVERED, reason))
            else:
                self.deliver(target, body, None, _flagged(on_answer))
            return

        def stored(seq: int | None, error: str) -> None:
            if seq is None:
                on_answer(Ack(0, AckStatus.UNAVAILABLE, error))
                return
            target = self.clients.get(name)
            if target is None or self.shared:  # a cluster delivers it by its wake-up
                away = self._away(name)
                on_answer(
                    Ack(seq, AckStatus.OK, _stored_note(name, away), b"", _stored_flags(away))
                )
                return
            receipt = self._receipt_for(seq, None, 0)

            def answered(ack: Ack) -> None:
                receipt(ack)
                if ack.status == AckStatus.NOT_DELIVERED:  # it stays in the outbox
                    note = f"stored for {name}, who left before acknowledging"
                    on_answer(Ack(seq, AckStatus.OK, note, b"", _stored_flags(True)))
                else:
                    on_answer(ack._replace(flags=frames.FLAG_DELIVERED))

            self.deliver(target, body, None, answered, seq)

        self._batch.envelopes.append(Envelope(name, body))
        self._thens.envelopes.append(stored)
        self._want_commit()

    # -- the handshake ----------------------------------------------------------------

    def _choose_mode(self, link: Link, data: bytes) -> Connection | TextConnection | None:
        proto: Connection | TextConnection
        size = self.max_message_size
        gate = self.gate
        if looks_framed(data):
            proto = Connection(
                Role.SERVER, max_message_size=size, requires_auth=gate is not None and gate.required
            )
            link.peer.mode = "framed"
        else:
            proto = TextConnection(max_message_size=size)
            link.peer.mode = "text"
            link.open = True
            link.deliveries = None  # text peers are not sent to
            link.text_login = gate is not None and gate.required
            self._notice("joined", link)
        link.proto = proto
        return proto

    def refuse_text_login(self, link: Link) -> None:
        """Over plain TCP a token would cross in the clear: a text peer must use TLS."""
        link.proto = TextConnection(max_message_size=self.max_message_size)
        link.peer.mode = "text"
        self.fail(
            link,
            ErrorCode.AUTH_FAILED,
            "this server needs a token: send 'AUTH <token>' as the first line, "
            "over TLS (never in the clear)",
        )

    def _text_login(self, link: Link, events: list[Event]) -> list[Event]:
        """A text peer's first line must be ``AUTH <token>`` (or ``AUTH <name> <token>``);
        the rest of its lines wait for the check."""
        if not events:
            return events
        first = events[0]
        link.held = events[1:]
        if type(first) is Message and type(first.body) is str:
            link.login = functools.partial(self._finish_text_login, link, first)
            self.actions.append(CheckLogin(link))
        else:
            self._refuse(link, "no AUTH line")
        return []

    def _finish_text_login(self, link: Link, line: Message) -> bool:
        assert self.gate is not None and type(line.body) is str
        ok, name = self.gate.text_login(line.body)
        if not ok:
            self._refuse(link, "wrong token")
            return False
        link.text_login = False
        link.peer.name = name
        self._answer(link, lambda proto: proto.send_ack(line.id, "authenticated"))
        self._release(link)  # the lines that came meanwhile, reading again, its end
        return True

    def check_login(self, link: Link) -> bool:
        """The server's turn to check this link's login: admit it or refuse it. Returns
        False for a wrong answer (the server then paces that address's next logins)."""
        login, link.login = link.login, None
        if login is None or link not in self.links or link.final is not None:
            return True  # gone before its turn: nothing was checked
        return login()

    def _refuse(self, link: Link, reason: str) -> None:
        self.stats.auth_failures += 1
        self._notice("refused", link, reason)
        self.fail(link, ErrorCode.AUTH_FAILED, f"login refused: {reason}")

    def _hello(self, link: Link, hello: Hello, rest: list[Event]) -> bool:
        link.peer.session = hello.session
        proto = link.proto
        assert isinstance(proto, Connection)
        gate = self.gate
        if gate is not None and gate.required:
            link.hello = hello
            link.key, link.challenge, salt = gate.challenge(hello.name)
            proto.send_challenge(link.challenge, salt)
            return True
        return self._admit(link, hello, rest)

    def _check_answer(self, link: Link, auth: Auth, rest: list[Event]) -> bool:
        """The answer to the challenge waits for its check (``check_login``), and the rest
        of the read with it."""
        hello, link.hello = link.hello, None
        link.held = list(rest)
        link.login = functools.partial(self._finish_login, link, hello, auth)
        self.actions.append(CheckLogin(link))
        return False

    def _finish_login(self, link: Link, hello: Hello | None, auth: Auth) -> bool:
        assert self.gate is not None
        if hello is None or not self.gate.verify(link.key, link.challenge, auth.answer):
            self._refuse(link, "wrong token")
            return False
        link.admin = self.gate.holds_token(link.key)
        held, link.held = link.held or [], None
        if self._admit(link, hello, held):
            if held:
                self.handle(link, held)
            if link.held is None:  # reading again, and its end if it came meanwhile
                self._resume_if_drained(link)
                self._settle(link)
        return True

    def _admit(self, link: Link, hello: Hello, rest: list[Event]) -> bool:
        """Give the client its name; with a store, read its session and outbox first
        (the rest of the read waits for that)."""
        name = self._claim_name(link, hello.name)
        if name is None:
            used = "reserved" if (hello.name or "").lower() in RESERVED_NAMES else "in use"
            self.fail(link, ErrorCode.NAME_TAKEN, f"the name {hello.name!r} is {used}")
            return False
        link.peer.name = name
        if self.stored:
            link.held = list(rest)
            self.actions.append(Load(link, hello.session, name))
            return False
        self._welcome(link, SessionState())
        return True

    def loaded(self, link: Link, state: SessionState) -> None:
        """The store's answer to ``Load``: welcome the client, deliver its outbox."""
        if link not in self.links or link.final is not None:
            return
        if state.taken:  # a client of another server of the cluster holds the name
            name = link.peer.name
            if name is not None and self.clients.get(name) is link:
                del self.clients[name]
            if link.guest:  # the name was the server's choice: choose another
                link.peer.name = self._claim_name(link, None)
                self.actions.append(Load(link, link.peer.session, link.peer.name or ""))
                return
            self.fail(link, ErrorCode.NAME_TAKEN, f"the name {name!r} is in use")
            return
        session = link.peer.session
        unsettled = self._unsettled.get(session, (0, 0)) if session is not None else (0, 0)
        link.max_stored = max(state.last_id, unsettled[1])  # a batch may be on its way
        self._welcome(link, state)
        self._release(link)

    def _welcome(self, link: Link, state: SessionState) -> None:
        proto = link.proto
        assert isinstance(proto, Connection)
        name = link.peer.name
        proto.send_welcome(
            name=name, agent=self.agent, limits=self.advertised, stable_ids=self.stored
        )
        link.open = True
        session = link.peer.session
        if session is not None:
            self.sessions[session] = link
        self._notice("joined", link)
        waiting, link.deliveries = link.deliveries or [], []
        for pending in state.outbox:
            if pending.seq in self._answered:  # answered; its mark is not stored yet
                continue
            on_answer = self._outbox_answer(pending, name or "")
            self.deliver(link, pending.body, pending.sender, on_answer, pending.seq)
        for body, sender, on_answer, msg_id in waiting:
            self.deliver(link, body, sender, on_answer, msg_id)
        for answer in state.receipts:  # earned while its sender was away
            self._give_receipt(answer)
        self._touch(link)
        if self.closing:
            link.ending = "server shutting down"
            self._settle(link)

    def _outbox_answer(self, pending: Pending, name: str) -> OnAnswer:
        receipt = self._receipt_for(pending.seq, pending.session, pending.sender_id or 0)
        if pending.sender is not None:
            return receipt

        def answered(ack: Ack) -> None:  # the server's own: tell the server
            receipt(ack)
            if ack.status != AckStatus.NOT_DELIVERED:
                self.actions.append(Delivered(pending.seq, name, ack))

        return answered

    def _claim_name(self, link: Link, wanted: str | None) -> str | None:
        """Register a framed client's name (a guest name if it gave none); None if taken.

        The same session asking again is the same client reconnecting before the server
        noticed its old connection had gone: the new connection takes the name over,
        and the old one is closed.
        """
        if wanted is None:
            link.guest = True
            while True:
                self._guests += 1
                wanted = f"{self.guest_prefix}{self._guests}"
                if wanted not in self.clients:
                    break
        elif wanted.lower() in RESERVED_NAMES:
            return None
        elif (holder := self.clients.get(wanted)) is not None:
            session = link.peer.session
            if session is None or holder.peer.session != session:
                return None
            self.connection_lost(holder)
            self._close(holder, "taken over by a new connection of its session")
        self.clients[wanted] = link
        return wanted

    # -- helpers ----------------------------------------------------------------------

    def _away(self, name: str) -> bool:
        """Client ``name`` cannot be sent to now: not connected, or leaving."""
        target = self.clients.get(name)
        if target is None:
            return name not in self._elsewhere
        return target.deliveries is None

    @staticmethod
    def _sender(link: Link) -> str | None:
        return link.peer.name or link.peer.address

    def _touch(self, link: Link) -> None:
        """The link's core has bytes to write: the server writes them after this call."""
        if not link.dirty:
            link.dirty = True
            self.dirty.append(link)

    def take_dirty(self) -> list[Link]:
        """The links with bytes to write, each once (clear ``link.dirty`` as you write)."""
        dirty, self.dirty = self.dirty, []
        return dirty

    def _close(self, link: Link, reason: str) -> None:
        self.actions.append(Close(link, reason))

    def _notice(
        self, kind: str, link: Link, detail: str = "", error: BaseException | None = None
    ) -> None:
        self.actions.append(Notice(PeerEvent(kind, link.peer, detail, error)))

    def take_actions(self) -> list[Action]:
        actions, self.actions = self.actions, []
        return actions

    def who(self) -> list[Peer]:
        """Everyone connected now, oldest first."""
        peers = [link.peer for link in self.links if link.open]
        return sorted(peers, key=lambda peer: peer.connected_at)


def _ack_with(msg_id: int, reply: Reply) -> Callable[[Any], None]:
    body = b"" if reply is None else reply
    return lambda proto: proto.send_ack(msg_id, body)


def _stored_note(name: str, away: bool) -> str:
    return f"stored for {name}, who is not connected" if away else f"stored for {name}"


def _stored_flags(away: bool) -> int:
    return frames.FLAG_STORED | (frames.FLAG_AWAY if away else 0)


def _stored_ack(msg_id: int, name: str, away: bool) -> Callable[[Any], None]:
    """The server's ACK of a message it stored for client ``name``."""
    note, flags = _stored_note(name, away), _stored_flags(away)

    def fill(proto: Any) -> None:
        if isinstance(proto, Connection):
            proto.send_answer(msg_id, AckStatus.OK, note, b"", flags)
        else:
            proto.send_ack(msg_id, b"", note)

    return fill


def _answer_with(msg_id: int, ack: Ack, flags: int) -> Callable[[Any], None]:
    def fill(proto: Any) -> None:
        if isinstance(proto, Connection):
            proto.send_answer(msg_id, ack.status, ack.reason, ack.reply, flags)
        elif ack.ok:
            proto.send_ack(msg_id, ack.reply)
        else:
            proto.send_rejection(msg_id, ack.status, ack.reason)

    return fill


def _receipt(msg_id: int, status: int, reason: str, reply: Body) -> Callable[[Any], None]:
    return lambda proto: proto.send_receipt(msg_id, status, reason, reply)


def _could_not_store(reason: str) -> str:
    return f"the server could not store it ({reason})"


def _rejection(msg_id: int, status: int, reason: str) -> Callable[[Any], None]:
    return lambda proto: proto.send_rejection(msg_id, status, reason)


def _acks(items: list[Item]) -> Callable[[Any], None]:
    def fill(proto: Any) -> None:
        send_ack = proto.send_ack
        for msg_id, _, reply in items:
            send_ack(msg_id, reply)

    return fill


def _unavailable(items: list[Item], reason: str) -> Callable[[Any], None]:
    def fill(proto: Any) -> None:
        for msg_id, _, _ in items:
            proto.send_rejection(msg_id, AckStatus.UNAVAILABLE, reason)

    return fill


def _flagged(on_answer: OnAnswer) -> OnAnswer:
    """The client's own answer to a message from the server: flagged delivered."""

    def answered(ack: Ack) -> None:
        if ack.status != AckStatus.NOT_DELIVERED:
            ack = ack._replace(flags=frames.FLAG_DELIVERED)
        on_answer(ack)

    return answered


def _after(events: list[Event], event: Event) -> list[Event]:
    """The events of a read after ``event`` (a handshake event: rare, so found by search)."""
    return events[events.index(event) + 1 :]
