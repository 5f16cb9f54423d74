"""Fuzz targets: each is a function of one ``bytes`` that returns when telex kept its
documented promises for that input, and raises when it did not.

The first bytes of an input choose the target's parameters (a role, a size limit, the
points where the stream is split into reads, ...) and the rest is the stream itself,
the way atheris's ``FuzzedDataProvider`` reads its input: so every input is valid, and
a mutation of the front changes the parameters. ``*_input()`` functions build an input
from the parameters, for the seed corpus and the Hypothesis strategies.

A broken promise raises ``FuzzFailure``; any other exception escaping a target is a
failure too (the core must never raise on what a peer sends). Checks are written as
``check(...)`` rather than ``assert`` so that ``python -O`` cannot strip them.

``TARGETS`` names them all (docs/fuzzing.md says what each asserts):

- ``framed``: ``Connection`` as server and as client (docs/protocol.md).
- ``text``: ``TextConnection``, the plain-text peers.
- ``decoders``: the frame decoders of ``frames.py``.
- ``broker``: the server's brain (``Broker``) with a well-behaved client beside one or
  two peers that send the fuzz bytes, through ``tests/core/broker_harness.py``.
- ``broker_idle``: the same, ended by an idle timeout on every fuzzed peer instead of
  its end of input: each must then be closed.
"""

from __future__ import annotations

import contextlib
import re
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args

from telex.core import frames
from telex.core.broker import Link, Peer, RunHandler
from telex.core.events import (
    Ack,
    Auth,
    Challenge,
    ErrorCode,
    Event,
    Goodbye,
    Hello,
    Message,
    MessageTooLarge,
    PeerError,
    Ping,
    Pong,
    ProtocolViolation,
    Receipt,
    Welcome,
)
from telex.core.frames import (
    ANSWER_FLAGS,
    CONTROL_FRAME_LIMIT,
    FLAG_TEXT,
    MAX_NAME_BYTES,
    MESSAGE_FIXED,
    PREAMBLE,
    ROUTED_FIXED,
    SKIP_FACTOR,
    FrameType,
    valid_name,
)
from telex.core.handlers import Reject
from telex.core.protocol import Connection, Role, State
from telex.core.textmode import TextConnection
from tests.core.broker_harness import Client, Net, TextClient

__all__ = [
    "TARGETS",
    "FuzzFailure",
    "broker",
    "broker_idle",
    "broker_input",
    "decoders",
    "decoders_input",
    "framed",
    "framed_input",
    "seed_inputs",
    "split",
    "text",
    "text_input",
]

F = FrameType


class FuzzFailure(AssertionError):
    """A documented promise did not hold for this input."""


def check(condition: object, what: str) -> None:
    if not condition:
        raise FuzzFailure(what)


# -- reading parameters off the front of an input ----------------------------------------


class Input:
    """Takes a target's parameters from the front of its bytes; past the end, zeros."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    def byte(self) -> int:
        if self._pos >= len(self._data):
            return 0
        value = self._data[self._pos]
        self._pos += 1
        return value

    def u16(self) -> int:
        return self.byte() << 8 | self.byte()

    def cuts(self) -> list[int]:
        """Up to 15 points where the stream is split into reads."""
        return [self.u16() for _ in range(self.byte() % 16)]

    def rest(self) -> bytes:
        rest = self._data[self._pos :]
        self._pos = len(self._data)
        return rest


def _cuts_bytes(cuts: list[int]) -> bytes:
    cuts = cuts[:15]
    return bytes([len(cuts)]) + b"".join((c % 65536).to_bytes(2, "big") for c in cuts)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    """``data`` in reads, cut at ``cuts`` (each taken modulo its length + 1; the same
    point twice makes an empty read, which a target skips as a socket never gives one)."""
    points = sorted(c % (len(data) + 1) for c in cuts)
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


# -- what the core may keep and report (docs/protocol.md) ----------------------------------

EVENT_TYPES = get_args(Event)

PARSER_CODES = frozenset(
    {
        ErrorCode.BAD_PREAMBLE,
        ErrorCode.MALFORMED_FRAME,
        ErrorCode.UNKNOWN_FRAME_TYPE,
        ErrorCode.FRAME_TOO_LARGE,
        ErrorCode.INVALID_UTF8,
        ErrorCode.UNEXPECTED_FRAME,
        ErrorCode.UNSUPPORTED_VERSION,
        ErrorCode.ID_NOT_INCREASING,
        ErrorCode.INVALID_NAME,
    }
)
"""The ERROR codes a receiver reports from the bytes it read (TRUNCATED_FRAME comes at
the end of input only; the rest are the server's decisions, not the parser's)."""

ONLY_FOR = {
    Hello: Role.SERVER,
    Auth: Role.SERVER,
    Welcome: Role.CLIENT,
    Challenge: Role.CLIENT,
    Receipt: Role.CLIENT,
}
"""Events only one side can report: the frames only the other side sends."""

ACK_SLACK = 2048  # an ACK may be this much longer than max_message_size


def buffer_bound(max_size: int) -> int:
    """The most bytes a Connection may keep between reads: one frame short of its last
    byte, of the longest length the limits let it buffer (docs/protocol.md, Frames)."""
    longest = max(
        max_size + MESSAGE_FIXED,
        max_size + ROUTED_FIXED + MAX_NAME_BYTES,
        max_size + ACK_SLACK,
        CONTROL_FRAME_LIMIT,
    )
    return 4 + longest - 1


# -- (a) the framed Connection, as server and as client ------------------------------------

FRAMED_SIZES = (16, 64, 300, 100_000)
BYTE_BY_BYTE = 600
"""Inputs up to this long are also fed one byte per read."""


def framed_input(
    role: Role,
    max_size: int,
    stream: bytes,
    cuts: list[int] | None = None,
    *,
    requires_auth: bool = False,
) -> bytes:
    """The input of ``framed`` for these parameters (``max_size`` in FRAMED_SIZES)."""
    config = (role is Role.CLIENT) | FRAMED_SIZES.index(max_size) << 1 | requires_auth << 3
    return bytes([config]) + _cuts_bytes(cuts or []) + stream


@dataclass
class _Watch:
    """What one side has reported so far, checked as it comes."""

    role: Role
    max_size: int
    events: list[Event] = field(default_factory=list)
    last_id: int = 0
    stopped: bool = False

    def take(self, conn: Connection, events: list[Event], *, eof: bool = False) -> None:
        if self.stopped:
            check(events == [], f"events after the last one: {events!r}")
        for index, event in enumerate(events):
            self._one(event, last=index == len(events) - 1, eof=eof)
        if self.stopped:
            check(conn.state is State.CLOSED, f"state {conn.state} after {events[-1:]!r}")
            check(conn.buffered == 0, "bytes kept after the connection ended")
        check(
            conn.last_received_id == self.last_id,
            f"last_received_id {conn.last_received_id}, last id reported {self.last_id}",
        )
        self.events += events

    def _one(self, event: Event, *, last: bool, eof: bool) -> None:
        kind = type(event)
        check(kind in EVENT_TYPES, f"not an event: {event!r}")
        role = ONLY_FOR.get(kind)
        check(role is None or role is self.role, f"{self.role.value} got {event!r}")
        if isinstance(event, ProtocolViolation):
            check(last, f"{event!r} is not the last event of its read")
            if eof:
                check(event.code == ErrorCode.TRUNCATED_FRAME, f"at the end of input: {event!r}")
            else:
                check(event.code in PARSER_CODES, f"not a code the parser gives: {event!r}")
            self.stopped = True
        elif isinstance(event, PeerError):
            check(last and not eof, f"{event!r} is not the last event of its read")
            self.stopped = True
        elif isinstance(event, Message):
            self._new_id(event.id)
            raw = event.body.encode() if isinstance(event.body, str) else event.body
            check(type(raw) is bytes, f"body of type {type(event.body).__name__}")
            check(len(raw) <= self.max_size, f"a body of {len(raw)} bytes got through")
            name = event.to if self.role is Role.SERVER else event.sender
            other = event.sender if self.role is Role.SERVER else event.to
            check(other is None, f"{self.role.value} got {event!r}")
            check(name is None or valid_name(name), f"invalid name in {event!r}")
        elif isinstance(event, MessageTooLarge):
            self._new_id(event.id)
            check(event.limit == self.max_size, f"{event!r}: limit is {self.max_size}")
            top = SKIP_FACTOR * self.max_size
            check(self.max_size < event.size <= top, f"{event!r} is not rejected but skipped")
        elif isinstance(event, Ack | Receipt):
            check(event.flags & ~ANSWER_FLAGS == 0, f"flags beyond the outcome bits: {event!r}")
            check(type(event.reply) in (bytes, str), f"reply of {event!r}")
        elif isinstance(event, Ping | Pong):
            check(len(event.payload) == 8, f"{event!r} without 8 bytes")

    def _new_id(self, msg_id: int) -> None:
        check(msg_id > self.last_id, f"message id {msg_id} after {self.last_id}")
        self.last_id = msg_id


def _respond(conn: Connection, events: list[Event]) -> None:
    """Answer as a well-behaved peer would, so that the sending side is exercised too."""
    for event in events:
        if isinstance(event, Hello):
            if conn.requires_auth:
                conn.send_challenge(b"\x01" * 32, b"\x02" * 16)
            else:
                conn.send_welcome(name=event.name or "guest-1", limits={"max_message_size": 1})
        elif isinstance(event, Auth):
            conn.send_welcome(name="fuzz", stable_ids=True)
        elif isinstance(event, Message):
            if event.id % 3 == 0:
                conn.send_rejection(event.id, 2, f"refused \u00e9 {event.id}")
            else:
                conn.send_ack(event.id, event.body)  # the body back as the reply
        elif isinstance(event, MessageTooLarge):
            conn.send_rejection(event.id, 1, event.reason)
        elif isinstance(event, Ping):
            conn.send_pong(event.payload)
        elif isinstance(event, Goodbye):
            conn.send_goodbye("goodbye")
        elif isinstance(event, ProtocolViolation):
            conn.send_error(ErrorCode(event.code), event.reason)


@dataclass(frozen=True)
class _Run:
    events: list[Event]
    state: State
    last_received_id: int
    output: bytes = field(compare=False)


def _framed_run(role: Role, max_size: int, auth: bool, chunks: list[bytes]) -> _Run:
    conn = Connection(role, max_message_size=max_size, requires_auth=auth)
    if role is Role.CLIENT:
        conn.initiate(name="fuzz", agent="telex-fuzz", session="f" * 32)
    watch = _Watch(role, max_size)
    bound = buffer_bound(max_size)
    output = []
    for chunk in chunks:
        if not chunk:
            continue
        events = conn.receive_data(chunk)
        watch.take(conn, events)
        check(conn.buffered <= bound, f"{conn.buffered} bytes kept, over {bound}")
        _respond(conn, events)
        output.append(conn.data_to_send())
    state = conn.state
    events = conn.receive_eof()
    check(len(events) <= 1, f"at the end of input: {events!r}")
    watch.take(conn, events, eof=True)
    _respond(conn, events)
    output.append(conn.data_to_send())
    if watch.stopped:
        check(conn.receive_data(frames.ping(F.PING, 1)) == [], "read after the end")
    return _Run(watch.events, state, conn.last_received_id, b"".join(output))


def _check_output(role: Role, max_size: int, output: bytes) -> None:
    """What a side wrote while answering must be good telex for the other side."""
    peer_role = Role.SERVER if role is Role.CLIENT else Role.CLIENT
    peer = Connection(peer_role, max_message_size=max_size)
    events = peer.receive_data(output) + peer.receive_eof()
    bad = [e for e in events if isinstance(e, ProtocolViolation)]
    check(not bad, f"the {role.value}'s own bytes broke the protocol: {bad!r}")
    errors = [i for i, e in enumerate(events) if isinstance(e, PeerError)]
    check(errors in ([], [len(events) - 1]), "an ERROR that is not the last frame")


def framed(data: bytes) -> None:
    """``Connection`` on any bytes, split at any points: only events come out (a violation,
    with a documented code, last of all), ids increase, bodies keep to the limit, the
    bytes kept stay under the longest frame's, a split changes nothing, and the bytes the
    side writes in answer are valid telex for its peer."""
    source = Input(data)
    config = source.byte()
    role = Role.CLIENT if config & 1 else Role.SERVER
    max_size = FRAMED_SIZES[config >> 1 & 3]
    auth = bool(config & 8) and role is Role.SERVER
    cuts = source.cuts()
    stream = source.rest()
    whole = _framed_run(role, max_size, auth, [stream])
    runs = {f"split at {cuts}": _framed_run(role, max_size, auth, split(stream, cuts))}
    if len(stream) <= BYTE_BY_BYTE:
        one_by_one = [stream[i : i + 1] for i in range(len(stream))]
        runs["byte by byte"] = _framed_run(role, max_size, auth, one_by_one)
    for how, run in runs.items():
        check(run == whole, f"{how}: {run.events!r}, whole: {whole.events!r}")
    for how, run in runs.items():
        check(run.output == whole.output, f"{how}, the answers differ: {run.output!r}")
    _check_output(role, max_size, whole.output)


# -- (b) plain-text peers ----------------------------------------------------------------------

TEXT_SIZES = (1, 2, 3, 5, 8, 16, 300, 1024 * 1024)


def text_input(
    max_size: int, stream: bytes, cuts: list[int] | None = None, pauses: int = 0
) -> bytes:
    """The input of ``text``: ``pauses`` is a bit mask, read i gets a pause after it
    (``flush()``) when bit ``i % 8`` is set."""
    return bytes([TEXT_SIZES.index(max_size), pauses & 0xFF]) + _cuts_bytes(cuts or []) + stream


def text_oracle(data: bytes, max_size: int) -> list[Event]:
    """docs/protocol.md, Plain-text peers: each line (its \\r\\n or \\n dropped) is a
    message, numbered from 1; one over max_message_size is rejected; a last line without
    its newline is a message at the end of input."""
    *lines, last = data.split(b"\n")
    if last:
        lines.append(last)
    events: list[Event] = []
    for msg_id, raw in enumerate(lines, 1):
        line = raw.removesuffix(b"\r")
        if len(line) > max_size:
            events.append(MessageTooLarge(msg_id, len(line), max_size))
        else:
            try:
                events.append(Message(msg_id, line.decode()))
            except UnicodeDecodeError:
                events.append(Message(msg_id, line))
    return events


def _text_run(max_size: int, chunks: list[bytes], pauses: int) -> list[Event]:
    conn = TextConnection(max_message_size=max_size)
    seen: list[Message | MessageTooLarge] = []

    def take(events: list[Event]) -> None:
        for event in events:
            if isinstance(event, Message):
                raw = event.body.encode() if isinstance(event.body, str) else event.body
                check(len(raw) <= max_size, f"a line of {len(raw)} bytes got through")
                conn.send_ack(event.id, event.body)
            elif isinstance(event, MessageTooLarge):
                check(event.size > max_size, f"{event!r} is within the limit")
                conn.send_rejection(event.id, 1, event.reason)
            else:
                raise FuzzFailure(f"a text peer gave {event!r}")
            check(event.id == len(seen) + 1, f"{event!r} after {len(seen)} lines")
            seen.append(event)
        check(len(conn._partial) <= max_size + 1, "a text peer's line kept past the limit")

    for index, chunk in enumerate(chunks):
        if not chunk:
            continue
        take(conn.receive_data(chunk))
        if pauses >> index % 8 & 1:
            take(conn.flush())
    take(conn.receive_eof())
    output = conn.data_to_send()
    lines = output.split(b"\n")
    check(lines[-1] == b"", "an answer that does not end its line")
    check(len(lines) - 1 == len(seen), f"{len(seen)} lines got {len(lines) - 1} answer lines")
    for line, event in zip(lines, seen, strict=False):
        word = b"ack" if isinstance(event, Message) else b"rejected"
        check(line.startswith(b"%s %d: " % (word, event.id)), f"{line!r} answers {event!r}")
    return list(seen)


def text(data: bytes) -> None:
    """``TextConnection``: only messages and rejections, numbered 1, 2, 3 ...; a line kept
    is never longer than the limit; one answer line each; without pauses, the events of
    docs/protocol.md, however the bytes are split."""
    source = Input(data)
    max_size = TEXT_SIZES[source.byte() & 7]
    pauses = source.byte()
    cuts = source.cuts()
    stream = source.rest()
    chunks = split(stream, cuts)
    events = _text_run(max_size, chunks, pauses)
    if not any(pauses >> i % 8 & 1 for i in range(len(chunks))):
        expected = text_oracle(stream, max_size)
        check(events == expected, f"{events!r}, docs/protocol.md says {expected!r}")


# -- (d) the decoders ---------------------------------------------------------------------------


def _hello_frame(e: Hello) -> bytes:
    obj: dict[str, Any] = {"version": e.version, "agent": e.agent}
    if e.name is not None:
        obj["name"] = e.name
    if e.session is not None:
        obj["session"] = e.session
    return frames.json_frame(F.HELLO, obj)


def _welcome_frame(e: Welcome) -> bytes:
    obj: dict[str, Any] = {"version": e.version, "agent": e.agent, "limits": e.limits}
    if e.name is not None:
        obj["name"] = e.name
    if e.stable_ids:
        obj["stable_ids"] = True
    return frames.json_frame(F.WELCOME, obj)


def _answer_frame(e: Ack | Receipt, frame_type: FrameType) -> bytes:
    reply, text_flag = frames.encode_body(e.reply)
    return frames.ack(e.id, e.status, e.reason.encode(), reply, e.flags | text_flag, frame_type)


Decoder = tuple[FrameType, Callable[[bytes], Event], Callable[[Any], bytes]]
DECODERS: list[Decoder] = [
    (F.HELLO, frames.decode_hello, _hello_frame),
    (F.WELCOME, frames.decode_welcome, _welcome_frame),
    (
        F.CHALLENGE,
        frames.decode_challenge,
        lambda e: frames.json_frame(
            F.CHALLENGE, {"challenge": e.challenge.hex(), "salt": e.salt.hex()}
        ),
    ),
    (F.AUTH, frames.decode_auth, lambda e: frames.json_frame(F.AUTH, {"answer": e.answer.hex()})),
    (F.ACK, frames.decode_ack, lambda e: _answer_frame(e, F.ACK)),
    (F.RECEIPT, frames.decode_receipt, lambda e: _answer_frame(e, F.RECEIPT)),
    (F.PING, frames.decode_ping, lambda e: frames.ping(F.PING, int.from_bytes(e.payload))),
    (F.PONG, frames.decode_pong, lambda e: frames.ping(F.PONG, int.from_bytes(e.payload))),
    (F.ERROR, frames.decode_error, lambda e: frames.error(e.code, e.reason)),
    (F.GOODBYE, frames.decode_goodbye, lambda e: frames.goodbye(e.reason)),
]
DECODED = {
    F.HELLO: Hello,
    F.WELCOME: Welcome,
    F.CHALLENGE: Challenge,
    F.AUTH: Auth,
    F.ACK: Ack,
    F.RECEIPT: Receipt,
    F.PING: Ping,
    F.PONG: Pong,
    F.ERROR: PeerError,
    F.GOODBYE: Goodbye,
}
DECODER_CODES = frozenset(
    {
        ErrorCode.MALFORMED_FRAME,
        ErrorCode.INVALID_UTF8,
        ErrorCode.UNSUPPORTED_VERSION,
        ErrorCode.INVALID_NAME,
    }
)
REASON_CUT = 1000  # characters: telex cuts every reason it sends to this


def decoders_input(frame_type: FrameType, payload: bytes) -> bytes:
    index = next(i for i, (t, _, _) in enumerate(DECODERS) if t is frame_type)
    return bytes([index]) + payload


def decoders(data: bytes) -> None:
    """Each decoder on any payload: its event, or ``BadFrame`` with one of the codes
    docs/protocol.md gives for a payload; and the event encoded again decodes to itself
    (an ERROR or GOODBYE reason cut to 1,000 characters, as documented)."""
    if not data:
        return
    frame_type, decode, encode = DECODERS[data[0] % len(DECODERS)]
    try:
        event = decode(data[1:])
    except frames.BadFrame as exc:
        check(exc.code in DECODER_CODES, f"{frame_type.name}: code {exc.code!r}")
        check(isinstance(exc.reason, str) and exc.reason, f"{frame_type.name}: no reason")
        return
    check(type(event) is DECODED[frame_type], f"{frame_type.name} decoded to {event!r}")
    try:
        again_frame = encode(event)
    except RecursionError:  # JSON nested to the depth json.loads just managed: not ours
        return
    length, again_type = frames.HEADER.unpack_from(again_frame)
    check(again_type == frame_type and length == len(again_frame) - 4, "a bad frame header")
    again = decode(again_frame[5:])
    expected = event
    if isinstance(event, PeerError | Goodbye) and len(event.reason) > REASON_CUT:
        expected = type(event)(**{**_fields(event), "reason": event.reason[:REASON_CUT]})
    check(repr(again) == repr(expected), f"{frame_type.name}: {event!r} came back {again!r}")


def _fields(event: PeerError | Goodbye) -> dict[str, Any]:
    return {name: getattr(event, name) for name in event.__slots__}


# -- (c) the broker: a fuzzed peer beside a well-behaved client --------------------------------

BROKER_SIZES = (16, 300, 4096, 1024 * 1024)
GOOD_NAME = "good"
LINE = rb"(?P<kind>ack|rejected) (?P<id>\d+): .*|error: .*|bye: .*"  # every line a text peer gets


def broker_input(
    stream: bytes,
    cuts: list[int] | None = None,
    *,
    stored: bool = False,
    is_async: bool = False,
    max_size: int = 300,
    two: bool = False,
    order: int = 0,
) -> bytes:
    """The input of ``broker``: ``two`` sends the reads to two fuzzed peers (read i to the
    second when bit ``i % 8`` of ``order`` is set); ``order`` also decides in which order
    async handler calls finish."""
    config = stored | is_async << 1 | BROKER_SIZES.index(max_size) << 2 | two << 4
    return bytes([config, order & 0xFF]) + _cuts_bytes(cuts or []) + stream


def _handler(message: Message, peer: Peer) -> bytes | str:
    """The body back as the reply; a body starting with ``!`` is refused, ``?`` fails."""
    head = message.body[:1]
    if head in ("!", b"!"):
        raise Reject("refused by the fuzz handler")
    if head in ("?", b"?"):
        raise RuntimeError("the fuzz handler failed")
    return message.body


class _Net(Net):
    """The harness, with async handler calls for text peers kept too (the harness keeps
    only framed clients'): the target finishes them itself."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.calls: list[RunHandler] = []

    def _carry_out(self, action: Any, lost: list[Link]) -> None:
        if isinstance(action, RunHandler):
            self.calls.append(action)
        else:
            super()._carry_out(action, lost)

    def finish_calls(self, order: int) -> None:
        """Answer every async handler call, in an order the input chose."""
        turn = 0
        while self.calls:
            turn += 1
            call = self.calls.pop(-1 if order >> turn % 8 & 1 else 0)
            try:
                reply = _handler(call.message, call.link.peer)
            except Exception as exc:
                self.broker.handler_failed(call.link, call.slot, call.message, exc)
            else:
                self.broker.handled(call.link, call.slot, call.message, reply)
            self.run()


class _Good:
    """The well-behaved client: sends messages to the server, answers what it is sent."""

    def __init__(self, net: _Net) -> None:
        self.client = net.client().connect(GOOD_NAME)
        self.sent: list[tuple[int, bytes]] = []
        self.answers: list[Ack] = []

    def send(self) -> None:
        body = b"good %d" % (len(self.sent) + 1)
        self.sent.append((self.client.message(body), body))
        self.client.send()
        self.serve()

    def serve(self) -> None:
        """Take what the server wrote: keep the answers, acknowledge messages, answer pings."""
        while True:
            wrote = False
            for event in self.client.take():
                if isinstance(event, Ack):
                    self.answers.append(event)
                elif isinstance(event, Message):
                    self.client.ack(event.id, b"thanks")
                    wrote = True
                elif isinstance(event, Ping):
                    self.client.conn.send_pong(event.payload)
                    wrote = True
                else:
                    raise FuzzFailure(f"the good client got {event!r}")
            if not wrote:
                return
            self.client.send()

    def check(self) -> None:
        check(not self.client.closed, f"the good client was closed: {self.client.close_reasons}")
        got = [(a.id, a.status, a.reply, a.flags) for a in self.answers]
        want = [(msg_id, 0, body, 0) for msg_id, body in self.sent]
        check(got == want, f"the good client sent {want}, was answered {got}")


@dataclass
class _Fuzzed:
    """A peer that writes the fuzz bytes: framed or text by its first byte, as the server
    tells them."""

    net: _Net
    endpoint: Client | TextClient | None = None
    reads: list[bytes] = field(default_factory=list)

    def write(self, chunk: bytes) -> None:
        if self.endpoint is None:
            framed_peer = chunk[:1] == PREAMBLE[:1]
            self.endpoint = self.net.client() if framed_peer else self.net.text_client()
        if not self.endpoint.closed:
            self.reads.append(chunk)
            self.endpoint.write(chunk)

    def check(self, max_size: int) -> None:
        """Whatever it sent: the server's bytes are valid telex, and its answers are
        one for each message in order, as far as they go (all of them once the server
        closed the connection at the end of its input)."""
        endpoint = self.endpoint
        if isinstance(endpoint, Client):
            shadow = Connection(Role.SERVER, max_message_size=max_size)
            parsed: list[Event] = []
            for chunk in self.reads:
                parsed += shadow.receive_data(chunk)
            ids = [e.id for e in parsed if isinstance(e, Message | MessageTooLarge)]
            events = endpoint.events + endpoint.conn.receive_eof()
            bad = [e for e in events if isinstance(e, ProtocolViolation)]
            check(not bad, f"the server's bytes broke the protocol: {bad!r}")
            acks = [e.id for e in events if type(e) is Ack]
            check(acks == ids[: len(acks)], f"answers {acks} to messages {ids}")
        elif isinstance(endpoint, TextClient):
            numbered = []
            for line in endpoint.output.split(b"\n")[:-1]:
                match = re.fullmatch(LINE, line, re.DOTALL)
                if match is None:
                    raise FuzzFailure(f"a text peer got the line {line!r}")
                if match["id"] is not None:
                    numbered.append(int(match["id"]))
            lines = len(text_oracle(b"".join(self.reads), max_size))
            check(numbered == list(range(1, len(numbered) + 1)), f"answers to lines {numbered}")
            if endpoint.close_reasons == ["end of input"]:
                check(len(numbered) == lines, f"{lines} lines, {len(numbered)} answers")


@contextlib.contextmanager
def _store_path(stored: bool) -> Iterator[Path | None]:
    if not stored:
        yield None
        return
    with tempfile.TemporaryDirectory(prefix="telex-fuzz-") as folder:
        yield Path(folder) / "fuzz.db"


def _broker_run(data: bytes, *, idle: bool) -> None:
    source = Input(data)
    config = source.byte()
    order = source.byte()
    stored, is_async = bool(config & 1), bool(config & 2)
    max_size = BROKER_SIZES[config >> 2 & 3]
    two = bool(config & 16)
    cuts = source.cuts()
    chunks = split(source.rest(), cuts)
    with _store_path(stored) as path:
        net = _Net(
            path=path, handler=_handler, handler_is_async=is_async, max_message_size=max_size
        )
        try:
            good = _Good(net)
            fuzzed = [_Fuzzed(net), _Fuzzed(net)]

            def settle() -> None:
                net.finish_calls(order)
                good.serve()

            for index, chunk in enumerate(chunks):
                if index % 2 == 0:
                    good.send()
                if chunk:
                    fuzzed[int(two) & order >> index % 8].write(chunk)
                settle()
            good.send()
            settle()
            for peer in fuzzed:
                endpoint = peer.endpoint
                if endpoint is None or endpoint.closed:
                    continue
                if idle:
                    net.broker.fail(endpoint.link, ErrorCode.IDLE_TIMEOUT, "silent for 60 s")
                    net.run()
                else:
                    endpoint.eof()
                settle()
            good.send()
            settle()
            good.check()
            for peer in fuzzed:
                peer.check(max_size)
                endpoint = peer.endpoint
                if idle and endpoint is not None and not endpoint.closed:
                    link = endpoint.link
                    raise FuzzFailure(f"still open after its idle timeout: {link.final}")
        finally:
            net.close()


def broker(data: bytes) -> None:
    """The broker, with one or two peers writing the fuzz bytes beside a good client
    sending messages between their reads: the good client gets exactly one ok answer per
    message, in order, with its reply; a fuzzed peer gets valid telex (or answer lines),
    one answer per message in order, all of them if the server closed it at the end of
    its input. With or without a store, a sync or an async handler (whose calls finish
    in any order)."""
    _broker_run(data, idle=False)


def broker_idle(data: bytes) -> None:
    """As ``broker``, but each fuzzed peer still open at the end times out (the server's
    ``fail(IDLE_TIMEOUT)``) instead of ending its input: it must then be closed, after
    its answers (docs/limits.md: "after all of it, ERROR 9 ... and close")."""
    _broker_run(data, idle=True)


TARGETS: dict[str, Callable[[bytes], None]] = {
    "framed": framed,
    "text": text,
    "decoders": decoders,
    "broker": broker,
    "broker_idle": broker_idle,
}


# -- the seed corpus: valid streams, built with the encoders of frames.py ----------------------


def _client_stream(name: str = "alice", session: str | None = "s" * 32) -> bytes:
    """What a well-behaved client sends: HELLO, messages of every kind, answers, GOODBYE."""
    hello: dict[str, Any] = {"version": 1, "agent": "telex/seed", "name": name}
    if session:
        hello["session"] = session
    return b"".join(
        [
            PREAMBLE,
            frames.json_frame(F.HELLO, hello),
            frames.message(1, b"hello", 0),
            frames.message(2, "h\u00e9llo".encode(), FLAG_TEXT),
            frames.routed(3, name.encode(), b"to myself", 0),
            frames.routed(4, b"good", b"to good", FLAG_TEXT),
            frames.message(5, b"!refuse me", 0),
            frames.message(6, b"?fail", 0),
            frames.message(7, b"x" * 400, 0),
            frames.ack(1, 0, b"", b"reply", 0),
            frames.ping(F.PING, 7),
            frames.ping(F.PONG, 0),
            frames.goodbye("bye"),
            frames.ack(2, 2, b"no", b"", 0),
        ]
    )


def _server_stream() -> bytes:
    """What a server sends a client: WELCOME (or CHALLENGE first), messages, answers."""
    welcome = {"version": 1, "agent": "telex/seed", "limits": {"max_message_size": 300}}
    return b"".join(
        [
            PREAMBLE,
            frames.json_frame(F.CHALLENGE, {"challenge": "ab" * 32, "salt": "cd" * 16}),
            frames.json_frame(F.WELCOME, {**welcome, "name": "alice", "stable_ids": True}),
            frames.message(1, b"from the server", 0),
            frames.routed(2, b"bob", b"from bob", FLAG_TEXT),
            frames.ack(1, 0, b"stored for bob", b"", frames.FLAG_STORED),
            frames.ack(2, 0, b"", b"reply", FLAG_TEXT | frames.FLAG_DELIVERED),
            frames.ack(2, 0, b"", b"", 0, F.RECEIPT),
            frames.ping(F.PING, 0),
            frames.goodbye("server shutting down"),
            frames.error(ErrorCode.IDLE_TIMEOUT, "silent for 60 s"),
        ]
    )


TEXT_SEED = b"hello\nh\xc3\xa9llo\r\n!refuse\n?fail\n\xff\xfe\n" + b"y" * 400 + b"\nlast"


def seed_inputs(name: str) -> list[bytes]:
    """Valid inputs for a target, to start a fuzzer from (atheris's seed corpus)."""
    client, server = _client_stream(), _server_stream()
    if name == "framed":
        return [
            framed_input(role, size, stream, cuts, requires_auth=auth)
            for role, stream in ((Role.SERVER, client), (Role.CLIENT, server))
            for size in FRAMED_SIZES
            for cuts in ([], [5, 13, 40], list(range(3, 300, 20)))
            for auth in (False, True)
        ]
    if name == "text":
        return [
            text_input(size, TEXT_SEED, cuts, pauses)
            for size in TEXT_SIZES
            for cuts in ([], [3, 9, 20])
            for pauses in (0, 0b10)
        ]
    if name == "decoders":
        return [
            decoders_input(frame_type, frame[5:])
            for frame in [*_frames(client), *_frames(server)]
            for frame_type in [F(frame[4])]
            if frame_type in DECODED
        ]
    if name in ("broker", "broker_idle"):
        return [
            broker_input(stream, cuts, stored=stored, is_async=is_async, max_size=300, two=two)
            for stream in (client, _client_stream("good"), TEXT_SEED)
            for cuts in ([], [30, 60, 90, 120])
            for stored in (False, True)
            for is_async in (False, True)
            for two in (False, True)
        ]
    raise KeyError(name)


def _frames(stream: bytes) -> list[bytes]:
    """The frames of a stream that starts with the preamble."""
    pos, found = len(PREAMBLE), []
    while pos < len(stream):
        (length,) = frames.HEADER.unpack_from(stream, pos)[:1]
        found.append(stream[pos : pos + 4 + length])
        pos += 4 + length
    return found
