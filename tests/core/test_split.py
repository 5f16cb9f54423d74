"""Property tests of the sans-I/O parsers: streams built from a grammar of good and bad
frames, fed whole and split at any points.

- A: any split of a stream gives the same events and the same state as feeding it whole
  (server and client role, text peers too).
- B: any bytes end in events or a ProtocolViolation, never an exception; nothing is read
  after a violation; the bytes kept for an incomplete frame stay bounded.
- C: an oracle built with the stream: the events of its valid frames, then one violation
  with the code of its first bad frame, then nothing.
- Text peers: any split gives the same events (no flush(): that is the I/O layer's, after
  a pause); lines over the limit, without their \r\n or \n, are MessageTooLarge.

Edge cases found on the way have a property of their own, with the failing input as an
@example: a bad preamble split before its 8th byte, a frame of length 0, the size of an
oversized ROUTED, a ROUTED name past its frame, a \r\n line at the limit.
"""

from __future__ import annotations

import json
import struct
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from telex.core import frames
from telex.core.events import (
    Ack,
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
    HEADER,
    MESSAGE_FIXED,
    MESSAGE_HEAD,
    PREAMBLE,
    ROUTED_FIXED,
    ROUTED_HEAD,
    SKIP_FACTOR,
    FrameType,
)
from telex.core.protocol import Connection, Role, State, valid_name
from telex.core.state import RECEIVES
from telex.core.textmode import TextConnection, text_body

F = FrameType
MAX_ID = 2**64 - 1
MAX_NAME_BYTES = 4 * 32
"""The longest name a ROUTED frame read whole may carry: 32 characters of up to 4 bytes."""
MAX_U32 = 2**32 - 1
ACK_SLACK = 2048
"""An ACK may be this much longer than max_message_size (protocol.py, docs/protocol.md)."""

SIZES = st.sampled_from([16, 64, 300])
"""max_message_size for the grammar. At 16 and up, 16 x the limit is past the longest
ROUTED frame read whole (limit + 139), so an oversized ROUTED is never read whole."""

UNKNOWN_TYPES = sorted(set(range(256)) - {int(t) for t in FrameType})
BAD_UTF8 = [
    b"\xff",
    b"\xfe",
    b"\x80",  # a continuation byte with no lead
    b"\xc0\xaf",  # overlong
    b"\xc3",  # a lead byte cut short (followed by ASCII, a lead byte or nothing)
    b"\xe2\x82",
    b"\xed\xa0\x80",  # a surrogate
    b"\xf4\x90\x80\x80",  # past U+10FFFF
]
DEPTHS = [max(5_000, 2 * sys.getrecursionlimit()), 12_000, 32_000]
"""Nesting deeper than the recursion limit, up to the deepest that fits 64 KiB. Not just
past the limit: while a test runs, Hypothesis raises the limit to the stack depth + 2000,
and json parses 1,050 levels then (protocol.py accepts whatever depth json.loads does)."""

CUTS = st.lists(st.integers(0, 2**20), max_size=20)
CHECKED = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def buffer_bound(max_size: int) -> int:
    """The most bytes the core may keep between calls: an incomplete frame, whose length
    was checked against its limit (protocol.py ``_parse``) before it was kept."""
    longest = max(
        max_size + MESSAGE_FIXED,  # MESSAGE
        max_size + ROUTED_FIXED + MAX_NAME_BYTES,  # ROUTED, read whole
        max_size + ACK_SLACK,  # ACK, RECEIPT
        CONTROL_FRAME_LIMIT,  # everything else
    )
    return 4 + longest - 1  # the length field, and one byte short of complete


# -- strategies for the pieces of frames ------------------------------------------------------


def short_text(max_bytes: int) -> st.SearchStrategy[str]:
    """Text whose UTF-8 is at most ``max_bytes`` long."""
    return st.text(max_size=max_bytes).map(lambda t: t.encode()[:max_bytes].decode(errors="ignore"))


NAMES = st.one_of(
    st.from_regex(r"[A-Za-z0-9._-]{1,32}", fullmatch=True),
    st.text(
        st.characters(categories=("L", "Nd")) | st.sampled_from("._-"), min_size=1, max_size=32
    ),
).filter(valid_name)
BAD_NAMES = st.text(max_size=40).filter(
    lambda n: not valid_name(n) and len(n.encode()) <= MAX_NAME_BYTES
)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=6,
)
LIMITS = st.dictionaries(
    st.text(max_size=12),
    st.integers(-(2**53), 2**53) | st.floats(allow_nan=False) | st.booleans(),
    max_size=3,
)


def bad_utf8(draw: st.DrawFn, max_bytes: int = 40) -> bytes:
    """Text with one invalid sequence somewhere in it, at most ``max_bytes`` long."""
    bad = draw(st.sampled_from(BAD_UTF8))
    room = max(0, max_bytes - len(bad))
    before = draw(short_text(room // 2)).encode()
    after = draw(short_text(room - room // 2)).encode()
    raw = before + bad + after
    assert not is_utf8(raw)
    return raw


def is_utf8(raw: bytes) -> bool:
    try:
        raw.decode()
    except UnicodeDecodeError:
        return False
    return True


def body(draw: st.DrawFn, limit: int, text: bool) -> tuple[bytes, bytes | str]:
    """A body of at most ``limit`` bytes (often exactly that), as sent and as received."""
    if text:
        value = draw(short_text(limit))
        return value.encode(), value
    raw = draw(st.binary(max_size=limit) | st.binary(min_size=limit, max_size=limit))
    return raw, raw


def flags_for(draw: st.DrawFn, text: bool) -> int:
    """Flags with the text bit as given; the other bits are noise the receiver ignores."""
    flags = draw(st.integers(0, 255))
    return flags | FLAG_TEXT if text else flags & ~FLAG_TEXT


def fresh_id(draw: st.DrawFn, last: int) -> int:
    return draw(st.integers(last + 1, min(last + 3, MAX_ID)) | st.integers(last + 1, MAX_ID))


def frame(ftype: int, payload: bytes) -> bytes:
    return HEADER.pack(1 + len(payload), ftype) + payload


def well_formed(ftype: FrameType, msg_id: int = 1) -> bytes:
    """A frame of each type that is fine in a state that allows it."""
    return {
        F.HELLO: frames.json_frame(F.HELLO, {"version": 1}),
        F.WELCOME: frames.json_frame(F.WELCOME, {"version": 1}),
        F.CHALLENGE: frames.json_frame(F.CHALLENGE, {"challenge": "00" * 32, "salt": ""}),
        F.AUTH: frames.json_frame(F.AUTH, {"answer": "00" * 32}),
        F.MESSAGE: frames.message(msg_id, b"x", 0),
        F.ACK: frames.ack(1, 0, b"", b"", 0),
        F.ROUTED: frames.routed(msg_id, b"bob", b"x", 0),
        F.RECEIPT: frames.ack(1, 0, b"", b"", 0, F.RECEIPT),
        F.PING: frames.ping(F.PING, 0),
        F.PONG: frames.ping(F.PONG, 0),
        F.STATS: frames.json_frame(F.STATS, {}),
        F.ERROR: frames.error(ErrorCode.IDLE_TIMEOUT, "x"),
        F.GOODBYE: frames.goodbye(""),
    }[ftype]


# -- the grammar --------------------------------------------------------------------------


@dataclass(frozen=True)
class Item:
    """One valid piece of a stream: its bytes, what it makes the receiver report, and
    where it moves the receiver."""

    label: str
    data: bytes
    event: Event | None = None
    phase: State | None = None
    last_id: int | None = None


@dataclass
class Stream:
    """Bytes from one peer, with what the receiving side must make of them."""

    role: Role  # the side that receives the stream
    max_size: int
    pieces: list[bytes] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    expected: list[Event] = field(default_factory=list)
    code: ErrorCode | None = None  # the violation the first bad frame causes
    phase: State = State.PREAMBLE  # the receiver's state after the valid frames
    last_id: int = 0
    exact: bool = True  # False: junk in it, so ``expected`` is no exact oracle

    @property
    def data(self) -> bytes:
        return b"".join(self.pieces)

    @property
    def ended(self) -> bool:
        return self.code is not None or self.phase is State.CLOSED

    def add(self, item: Item) -> None:
        self.pieces.append(item.data)
        self.labels.append(item.label)
        if self.ended:
            return
        if item.event is not None:
            self.expected.append(item.event)
        if item.phase is not None:
            self.phase = item.phase
        if item.last_id is not None:
            self.last_id = item.last_id

    def bad(self, label: str, data: bytes, code: ErrorCode | None) -> None:
        self.pieces.append(data)
        self.labels.append(label)
        if code is None:
            self.exact = False
        elif not self.ended:
            self.code = code

    def state_before_eof(self) -> State:
        if self.code is None or self.code is ErrorCode.TRUNCATED_FRAME:
            return self.phase
        return State.CLOSED

    def state_after_eof(self) -> State:
        return State.CLOSED if self.code is not None else self.phase


# Valid items. Each builder draws one frame the receiver must accept in the current state.


def v_preamble(draw: st.DrawFn, s: Stream) -> Item:
    return Item("preamble", PREAMBLE, phase=State.HANDSHAKE)


def v_hello(draw: st.DrawFn, s: Stream) -> Item:
    obj: dict[str, Any] = {"version": 1}
    name = draw(st.none() | NAMES)
    agent = draw(st.none() | st.text(max_size=20))
    session = draw(st.none() | st.text(min_size=1, max_size=64))
    for key, value in (("name", name), ("agent", agent), ("session", session)):
        if value is not None:
            obj[key] = value
    if draw(st.booleans()):
        obj["future"] = draw(JSON_VALUES)  # unknown keys are ignored
    event = Hello(1, name, agent or "", session)
    return Item("hello", frames.json_frame(F.HELLO, obj), event, State.OPEN)


def v_welcome(draw: st.DrawFn, s: Stream) -> Item:
    obj: dict[str, Any] = {"version": 1}
    agent = draw(st.none() | st.text(max_size=20))
    limits = draw(st.none() | LIMITS)
    name = draw(st.none() | st.text(max_size=20))
    stable = draw(st.sampled_from([None, True, False, 1, "true"]))
    for key, value in (("agent", agent), ("limits", limits), ("name", name)):
        if value is not None:
            obj[key] = value
    if stable is not None:
        obj["stable_ids"] = stable
    event = Welcome(1, agent or "", limits or {}, name, stable is True)
    return Item("welcome", frames.json_frame(F.WELCOME, obj), event, State.OPEN)


def v_challenge(draw: st.DrawFn, s: Stream) -> Item:
    challenge = draw(st.binary(min_size=16, max_size=64))
    salt = draw(st.binary(max_size=64))
    obj = {"challenge": challenge.hex().upper() if draw(st.booleans()) else challenge.hex()}
    if salt or draw(st.booleans()):
        obj["salt"] = salt.hex()
    return Item("challenge", frames.json_frame(F.CHALLENGE, obj), Challenge(challenge, salt))


def v_error(draw: st.DrawFn, s: Stream) -> Item:
    code = draw(st.integers(0, 2**16 - 1))
    reason = draw(st.text(max_size=30))
    return Item("error", frames.error(code, reason), PeerError(code, reason), State.CLOSED)


def v_message(draw: st.DrawFn, s: Stream, text: bool) -> Item:
    msg_id = fresh_id(draw, s.last_id)
    raw, value = body(draw, s.max_size, text)
    data = frames.message(msg_id, raw, flags_for(draw, text))
    return Item("text" if text else "message", data, Message(msg_id, value), last_id=msg_id)


def routed_event(s: Stream, msg_id: int, value: bytes | str, name: str) -> Message:
    if s.role is Role.SERVER:
        return Message(msg_id, value, to=name)
    return Message(msg_id, value, sender=name)


def v_routed(draw: st.DrawFn, s: Stream) -> Item:
    msg_id = fresh_id(draw, s.last_id)
    name = draw(NAMES)
    text = draw(st.booleans())
    raw, value = body(draw, s.max_size, text)
    data = frames.routed(msg_id, name.encode(), raw, flags_for(draw, text))
    return Item("routed", data, routed_event(s, msg_id, value, name), last_id=msg_id)


def v_too_large(draw: st.DrawFn, s: Stream) -> Item:
    """A MESSAGE over the limit but within 16 x: rejected, skipped, not fatal."""
    msg_id = fresh_id(draw, s.last_id)
    size = draw(st.integers(s.max_size + 1, SKIP_FACTOR * s.max_size))
    data = frames.message(
        msg_id, bytes([draw(st.integers(0, 255))]) * size, draw(st.integers(0, 255))
    )
    return Item("too_large", data, MessageTooLarge(msg_id, size, s.max_size), last_id=msg_id)


def v_routed_too_large(draw: st.DrawFn, s: Stream) -> Item:
    """A ROUTED over the limit but within 16 x. Up to limit + 139 bytes the frame is read
    whole; past that its body is skipped. Either way the size is the body's."""
    msg_id = fresh_id(draw, s.last_id)
    name = draw(NAMES).encode()
    read_whole = s.max_size + MAX_NAME_BYTES - len(name)
    size = draw(
        st.integers(s.max_size + 1, SKIP_FACTOR * s.max_size)
        | st.integers(s.max_size + 1, max(s.max_size + 1, read_whole))
    )
    data = frames.routed(msg_id, name, b"r" * size, draw(st.integers(0, 255)))
    return Item("routed_too_large", data, MessageTooLarge(msg_id, size, s.max_size), last_id=msg_id)


def v_ack(draw: st.DrawFn, s: Stream, receipt: bool) -> Item:
    msg_id = draw(st.integers(0, MAX_ID))
    status = draw(st.integers(0, 255))
    reason = draw(st.text(max_size=20))
    text = draw(st.booleans())
    raw, reply = body(draw, s.max_size, text)
    flags = flags_for(draw, text)
    ftype = F.RECEIPT if receipt else F.ACK
    data = frames.ack(msg_id, status, reason.encode(), raw, flags, ftype)
    kind = Receipt if receipt else Ack
    return Item(ftype.name.lower(), data, kind(msg_id, status, reason, reply, flags & ANSWER_FLAGS))


def v_ping(draw: st.DrawFn, s: Stream, pong: bool) -> Item:
    payload = draw(st.binary(min_size=8, max_size=8))
    ftype = F.PONG if pong else F.PING
    event = Pong(payload) if pong else Ping(payload)
    return Item(ftype.name.lower(), frame(ftype, payload), event)


def v_goodbye(draw: st.DrawFn, s: Stream) -> Item:
    reason = draw(st.text(max_size=30))
    return Item("goodbye", frames.goodbye(reason), Goodbye(reason), State.DRAINING)


Builder = Callable[[st.DrawFn, Stream], Item]
ANSWERS: dict[str, Builder] = {
    "ack": lambda d, s: v_ack(d, s, receipt=False),
    "ping": lambda d, s: v_ping(d, s, pong=False),
    "pong": lambda d, s: v_ping(d, s, pong=True),
}
MESSAGES: dict[str, Builder] = {
    "message": lambda d, s: v_message(d, s, text=False),
    "text": lambda d, s: v_message(d, s, text=True),
    "routed": v_routed,
    "too_large": v_too_large,
    "routed_too_large": v_routed_too_large,
}
RECEIPT: dict[str, Builder] = {"receipt": lambda d, s: v_ack(d, s, receipt=True)}
STAY: dict[Role, dict[State, dict[str, Builder]]] = {
    Role.SERVER: {
        State.PREAMBLE: {},
        State.HANDSHAKE: {},
        State.OPEN: {**MESSAGES, **ANSWERS},
        State.DRAINING: ANSWERS,
    },
    Role.CLIENT: {
        State.PREAMBLE: {},
        State.HANDSHAKE: {"challenge": v_challenge},
        State.OPEN: {**MESSAGES, **ANSWERS, **RECEIPT},
        State.DRAINING: {**ANSWERS, **RECEIPT},
    },
}
"""The valid frames that keep the receiver in each state."""

MOVE: dict[Role, dict[State, Builder]] = {
    Role.SERVER: {State.PREAMBLE: v_preamble, State.HANDSHAKE: v_hello, State.OPEN: v_goodbye},
    Role.CLIENT: {State.PREAMBLE: v_preamble, State.HANDSHAKE: v_welcome, State.OPEN: v_goodbye},
}
"""The valid frame that moves the receiver on to the next state of PATH."""

PATH = [State.PREAMBLE, State.HANDSHAKE, State.OPEN, State.DRAINING]
NO_CUT = {"too_large", "routed_too_large"}  # their header is acted on before the frame is whole


def stay_item(draw: st.DrawFn, s: Stream, *, cuttable: bool = False) -> Item:
    """A valid frame for the current state (with ``cuttable``: one whose end matters,
    including the one that moves to the next state)."""
    choices = dict(STAY[s.role][s.phase])
    if cuttable and s.phase in MOVE[s.role]:
        choices["move"] = MOVE[s.role][s.phase]
    names = [n for n in choices if s.last_id < MAX_ID or n not in MESSAGES]
    if cuttable:
        names = [n for n in names if n not in NO_CUT]
    return choices[draw(st.sampled_from(names))](draw, s)


# Invalid items. Each builder draws one bad frame for the current state and its code.

Bad = tuple[bytes, ErrorCode]
JSON_TYPE = {Role.SERVER: F.HELLO, Role.CLIENT: F.WELCOME}
ANSWER_TYPES = {Role.SERVER: [F.ACK], Role.CLIENT: [F.ACK, F.RECEIPT]}


def b_bad_preamble(draw: st.DrawFn, s: Stream) -> Bad:
    data = draw(
        st.binary(min_size=1, max_size=16).filter(
            lambda b: not (PREAMBLE.startswith(b) or b.startswith(PREAMBLE))
        )
    )
    return data, ErrorCode.BAD_PREAMBLE


def b_unknown_type(draw: st.DrawFn, s: Stream) -> Bad:
    ftype = draw(st.sampled_from(UNKNOWN_TYPES))
    if draw(st.booleans()):
        return frame(ftype, draw(st.binary(max_size=20))), ErrorCode.UNKNOWN_FRAME_TYPE
    return HEADER.pack(draw(st.integers(0, MAX_U32)), ftype), ErrorCode.UNKNOWN_FRAME_TYPE


def b_oversized(draw: st.DrawFn, s: Stream) -> Bad:
    """A length over the limit of an allowed frame type: fatal before the payload is read."""
    ftype = draw(st.sampled_from(sorted(RECEIVES[s.role][s.phase])))
    if ftype is F.MESSAGE:  # its id is read first: 14 bytes
        least = SKIP_FACTOR * s.max_size + MESSAGE_FIXED + 1
        head = MESSAGE_HEAD.pack(
            draw(st.integers(least, MAX_U32)), ftype, draw(st.integers(0, MAX_ID)), 0
        )
    elif ftype is F.ROUTED:  # and the length of its name: 15 bytes
        name_length = draw(st.integers(0, 255))
        least = max(
            SKIP_FACTOR * s.max_size + ROUTED_FIXED + name_length,  # the body is too long
            s.max_size + ROUTED_FIXED + MAX_NAME_BYTES,  # the frame is not read whole
        )
        length = draw(st.integers(least + 1, MAX_U32))
        head = ROUTED_HEAD.pack(length, ftype, draw(st.integers(0, MAX_ID)), 0, name_length)
    elif ftype in (F.ACK, F.RECEIPT):
        head = HEADER.pack(draw(st.integers(s.max_size + ACK_SLACK + 1, MAX_U32)), ftype)
    else:
        head = HEADER.pack(draw(st.integers(CONTROL_FRAME_LIMIT + 1, MAX_U32)), ftype)
    return head + draw(st.binary(max_size=20)), ErrorCode.FRAME_TOO_LARGE


def b_unexpected(draw: st.DrawFn, s: Stream) -> Bad:
    """A well-formed frame the state table does not allow here: a second HELLO, a
    MESSAGE before HELLO or after GOODBYE, a server-only frame to a server..."""
    ftype = draw(st.sampled_from(sorted(set(FrameType) - RECEIVES[s.role][s.phase])))
    return well_formed(ftype), ErrorCode.UNEXPECTED_FRAME


def b_error_bad_utf8(draw: st.DrawFn, s: Stream) -> Bad:
    payload = struct.pack(">H", draw(st.integers(0, 2**16 - 1))) + bad_utf8(draw)
    return frame(F.ERROR, payload), ErrorCode.INVALID_UTF8


def b_error_short(draw: st.DrawFn, s: Stream) -> Bad:
    return frame(F.ERROR, draw(st.binary(max_size=1))), ErrorCode.MALFORMED_FRAME


def json_payload(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj).encode()


def b_json_bad_utf8(draw: st.DrawFn, s: Stream) -> Bad:
    """Bad UTF-8 in a HELLO/WELCOME (docs/protocol.md: "UTF-8 JSON objects"; "text that
    is not UTF-8 is ERROR 5")."""
    payload = b'{"version":1,"agent":"' + bad_utf8(draw) + b'"}'
    return frame(JSON_TYPE[s.role], payload), ErrorCode.INVALID_UTF8


def b_json_deep(draw: st.DrawFn, s: Stream) -> Bad:
    open_, close = draw(st.sampled_from([("[", "]"), ('{"a":', "}")]))
    fits = (CONTROL_FRAME_LIMIT - 40) // len(open_ + close)
    depth = min(draw(st.sampled_from(DEPTHS)), fits)
    inner = open_ * depth + "1" + close * depth
    payload = ('{"version":1,"x":' + inner + "}").encode()
    assert len(payload) < CONTROL_FRAME_LIMIT
    return frame(JSON_TYPE[s.role], payload), ErrorCode.MALFORMED_FRAME


def b_json_not_object(draw: st.DrawFn, s: Stream) -> Bad:
    payload = draw(
        st.sampled_from([b"", b"[]", b"1", b'"x"', b"null", b"{", b'{"version":1', b"\x00"])
        | st.builds(
            lambda v: json.dumps(v).encode(), JSON_VALUES.filter(lambda v: type(v) is not dict)
        )
    )
    return frame(JSON_TYPE[s.role], payload), ErrorCode.MALFORMED_FRAME


VERSIONS = [True, False, 1.0, 2, 0, -1, "1", None, [1], {"v": 1}, 2**64]
MISSING = object()


def b_json_bad_version(draw: st.DrawFn, s: Stream) -> Bad:
    version = draw(st.sampled_from([MISSING, *VERSIONS]))
    obj: dict[str, Any] = {"agent": "x"}
    if version is not MISSING:
        obj["version"] = version
    return frame(JSON_TYPE[s.role], json_payload(obj)), ErrorCode.UNSUPPORTED_VERSION


def b_json_bad_fields(draw: st.DrawFn, s: Stream) -> Bad:
    """Fields of the wrong type (or a bad session): MALFORMED_FRAME."""
    key: str
    value: object
    if s.role is Role.SERVER:
        key, value = draw(
            st.sampled_from(
                [("agent", 5), ("agent", None), ("agent", []), ("name", 5), ("name", ["a"]),
                 ("name", {}), ("session", ""), ("session", "s" * 65), ("session", 5)]
            )
        )  # fmt: skip
    else:
        key, value = draw(
            st.sampled_from(
                [("agent", 5), ("agent", None), ("limits", []), ("limits", 5),
                 ("limits", None), ("limits", "x"), ("name", 5), ("name", [])]
            )
        )  # fmt: skip
    payload = json_payload({"version": 1, key: value})
    return frame(JSON_TYPE[s.role], payload), ErrorCode.MALFORMED_FRAME


def b_hello_bad_name(draw: st.DrawFn, s: Stream) -> Bad:
    payload = json_payload({"version": 1, "name": draw(BAD_NAMES)})
    return frame(F.HELLO, payload), ErrorCode.INVALID_NAME


def b_challenge_bad(draw: st.DrawFn, s: Stream) -> Bad:
    good = "00" * 32
    obj: dict[str, Any] = draw(
        st.sampled_from(
            [{}, {"challenge": "zz" * 16}, {"challenge": "00" * 15}, {"challenge": "00" * 65},
             {"challenge": "abc"}, {"challenge": 5}, {"challenge": None},
             {"challenge": good, "salt": "00" * 65}, {"challenge": good, "salt": "xy"},
             {"challenge": good, "salt": 1}]
        )
    )  # fmt: skip
    return frames.json_frame(F.CHALLENGE, obj), ErrorCode.MALFORMED_FRAME


def b_answer_bad_utf8(draw: st.DrawFn, s: Stream) -> Bad:
    ftype = draw(st.sampled_from(ANSWER_TYPES[s.role]))
    if draw(st.booleans()):
        data = frames.ack(1, 2, bad_utf8(draw), b"", 0, ftype)
    else:
        data = frames.ack(1, 0, b"", bad_utf8(draw, s.max_size), FLAG_TEXT, ftype)
    return data, ErrorCode.INVALID_UTF8


def b_answer_short(draw: st.DrawFn, s: Stream) -> Bad:
    ftype = draw(st.sampled_from(ANSWER_TYPES[s.role]))
    return frame(ftype, draw(st.binary(max_size=11))), ErrorCode.MALFORMED_FRAME


def b_answer_overrun(draw: st.DrawFn, s: Stream) -> Bad:
    """An ACK whose reason is longer than the frame."""
    ftype = draw(st.sampled_from(ANSWER_TYPES[s.role]))
    reason_length = draw(st.integers(1, 2**16 - 1))
    rest = draw(st.binary(max_size=min(reason_length - 1, 100)))
    payload = struct.pack(">QBBH", 1, 0, 0, reason_length) + rest
    return frame(ftype, payload), ErrorCode.MALFORMED_FRAME


def b_ping_size(draw: st.DrawFn, s: Stream) -> Bad:
    ftype = draw(st.sampled_from([F.PING, F.PONG]))
    payload = draw(st.binary(max_size=30).filter(lambda p: len(p) != 8))
    return frame(ftype, payload), ErrorCode.MALFORMED_FRAME


def b_goodbye_bad_utf8(draw: st.DrawFn, s: Stream) -> Bad:
    return frame(F.GOODBYE, bad_utf8(draw)), ErrorCode.INVALID_UTF8


def b_text_bad_utf8(draw: st.DrawFn, s: Stream) -> Bad:
    raw = bad_utf8(draw, s.max_size)
    return frames.message(
        fresh_id(draw, s.last_id), raw, flags_for(draw, True)
    ), ErrorCode.INVALID_UTF8


def b_routed_name_bad_utf8(draw: st.DrawFn, s: Stream) -> Bad:
    raw, _ = body(draw, s.max_size, False)
    data = frames.routed(fresh_id(draw, s.last_id), bad_utf8(draw), raw, 0)
    return data, ErrorCode.INVALID_UTF8


def b_routed_body_bad_utf8(draw: st.DrawFn, s: Stream) -> Bad:
    name = draw(NAMES).encode()
    data = frames.routed(fresh_id(draw, s.last_id), name, bad_utf8(draw, s.max_size), FLAG_TEXT)
    return data, ErrorCode.INVALID_UTF8


def b_id_not_increasing(draw: st.DrawFn, s: Stream) -> Bad:
    """A MESSAGE or ROUTED (in the limit or over it) whose id is not above the last."""
    msg_id = draw(st.integers(0, s.last_id))
    kind = draw(st.sampled_from(["message", "text", "routed", "too_large", "routed_too_large"]))
    if kind == "message":
        data = frames.message(msg_id, draw(st.binary(max_size=s.max_size)), 0)
    elif kind == "text":
        data = frames.message(msg_id, draw(short_text(s.max_size)).encode(), FLAG_TEXT)
    elif kind == "routed":
        data = frames.routed(msg_id, draw(NAMES).encode(), b"x", 0)
    elif kind == "too_large":
        size = draw(st.integers(s.max_size + 1, SKIP_FACTOR * s.max_size))
        data = frames.message(msg_id, b"x" * size, 0)
    else:
        size = draw(st.sampled_from([s.max_size + 1, SKIP_FACTOR * s.max_size]))
        data = frames.routed(msg_id, b"bob", b"x" * size, 0)
    return data, ErrorCode.ID_NOT_INCREASING


def b_message_short(draw: st.DrawFn, s: Stream) -> Bad:
    """A MESSAGE shorter than id and flags, or a ROUTED shorter than id, flags and name
    length: fatal as soon as the header is read."""
    if draw(st.booleans()):
        return frame(
            F.MESSAGE, draw(st.binary(max_size=MESSAGE_FIXED - 2))
        ), ErrorCode.MALFORMED_FRAME
    return frame(F.ROUTED, draw(st.binary(max_size=ROUTED_FIXED - 1))), ErrorCode.MALFORMED_FRAME


def b_routed_overrun(draw: st.DrawFn, s: Stream) -> Bad:
    """A ROUTED (short enough to be read whole) whose name is longer than the frame."""
    name_length = draw(st.integers(2, 255))
    rest = draw(st.binary(min_size=1, max_size=min(name_length - 1, s.max_size + MAX_NAME_BYTES)))
    payload = struct.pack(">QBB", fresh_id(draw, s.last_id), 0, name_length) + rest
    return frame(F.ROUTED, payload), ErrorCode.MALFORMED_FRAME


def b_routed_bad_name(draw: st.DrawFn, s: Stream) -> Bad:
    raw, _ = body(draw, s.max_size, False)
    name = draw(BAD_NAMES).encode()
    data = frames.routed(fresh_id(draw, s.last_id), name, raw, 0)
    if not name + raw:  # 11 bytes: too short for the 1-byte name a ROUTED needs at least
        return data, ErrorCode.MALFORMED_FRAME
    return data, ErrorCode.INVALID_NAME


def b_junk(draw: st.DrawFn, s: Stream) -> tuple[bytes, None]:
    """Anything at all (for the split property only: no oracle)."""
    return draw(st.binary(min_size=1, max_size=40)), None


BadBuilder = Callable[[st.DrawFn, Stream], tuple[bytes, ErrorCode | None]]
COMMON: dict[str, BadBuilder] = {
    "unknown_type": b_unknown_type,
    "oversized": b_oversized,
    "unexpected": b_unexpected,
    "error_bad_utf8": b_error_bad_utf8,
    "error_short": b_error_short,
}
IN_HANDSHAKE: dict[str, BadBuilder] = {
    "json_bad_utf8": b_json_bad_utf8,
    "json_deep": b_json_deep,
    "json_not_object": b_json_not_object,
    "json_bad_version": b_json_bad_version,
    "json_bad_fields": b_json_bad_fields,
}
ANSWERS_BAD: dict[str, BadBuilder] = {
    "answer_bad_utf8": b_answer_bad_utf8,
    "answer_short": b_answer_short,
    "answer_overrun": b_answer_overrun,
    "ping_size": b_ping_size,
}
OPEN_BAD: dict[str, BadBuilder] = {
    "goodbye_bad_utf8": b_goodbye_bad_utf8,
    "id_not_increasing": b_id_not_increasing,
    "message_short": b_message_short,
}
NEEDS_FRESH_ID: dict[str, BadBuilder] = {
    "text_bad_utf8": b_text_bad_utf8,
    "routed_name_bad_utf8": b_routed_name_bad_utf8,
    "routed_body_bad_utf8": b_routed_body_bad_utf8,
    "routed_overrun": b_routed_overrun,
    "routed_bad_name": b_routed_bad_name,
}


def invalid_choices(role: Role, phase: State, wide: bool) -> dict[str, BadBuilder]:
    """The bad frames drawn for a receiver in ``phase`` (past the preamble)."""
    choices: dict[str, BadBuilder] = {**COMMON}
    if phase is State.HANDSHAKE:
        choices |= IN_HANDSHAKE
        if role is Role.SERVER:
            choices["hello_bad_name"] = b_hello_bad_name
        else:
            choices["challenge_bad"] = b_challenge_bad
    elif phase is State.DRAINING:
        choices |= ANSWERS_BAD
    else:
        choices |= ANSWERS_BAD | OPEN_BAD | NEEDS_FRESH_ID
    if wide:
        choices["junk"] = b_junk
    return choices


def endings(role: Role, phase: State, wide: bool) -> list[str]:
    """How a stream may end in ``phase``: cleanly, cut short, with the peer's ERROR, or
    with a bad frame."""
    if phase is State.PREAMBLE:
        return ["clean", "cut", "bad_preamble"]
    return ["clean", "cut", "peer_error", *invalid_choices(role, phase, wide)]


ENDINGS = {
    (role, wide): sorted({e for phase in PATH for e in endings(role, phase, wide)})
    for role in Role
    for wide in (False, True)
}


@st.composite
def streams(draw: st.DrawFn, role: Role, *, wide: bool = False) -> Stream:
    """A stream for the ``role`` side: valid frames up to some state, then its ending
    (nothing, a frame cut short, the peer's ERROR, or one bad frame), then frames and bytes
    nobody may read. The ending is drawn first, so each kind of bad frame is as likely as
    any other; then a state where it fits.

    ``wide``: for the split property, which needs no oracle: junk too.
    """
    s = Stream(role, draw(SIZES))
    ending = draw(st.sampled_from(ENDINGS[role, wide]))
    target = draw(st.sampled_from([p for p in PATH if ending in endings(role, p, wide)]))
    for phase in PATH:
        for _ in range(draw(st.integers(0, 2 if phase is State.HANDSHAKE else 6))):
            if not STAY[role][phase] or s.last_id == MAX_ID:
                break
            s.add(stay_item(draw, s))
        if phase is target:
            break
        s.add(MOVE[role][phase](draw, s))
    assert s.phase is target
    if ending in NEEDS_FRESH_ID and s.last_id == MAX_ID:
        ending = "id_not_increasing"
    if ending == "peer_error":
        s.add(v_error(draw, s))
    elif ending == "cut":  # the stream ends in the middle of a frame
        item = stay_item(draw, s, cuttable=True)
        cut = draw(st.integers(1, len(item.data) - 1))
        s.bad("cut " + item.label, item.data[:cut], ErrorCode.TRUNCATED_FRAME)
        return s
    elif ending == "bad_preamble":
        s.bad(ending, *b_bad_preamble(draw, s))
    elif ending != "clean":
        s.bad(ending, *invalid_choices(role, target, wide)[ending](draw, s))
    if s.ended:  # what follows must be ignored
        for ftype in draw(st.lists(st.sampled_from(list(FrameType)), max_size=3)):
            s.pieces.append(well_formed(ftype, msg_id=MAX_ID))
        s.pieces.append(draw(st.binary(max_size=20)))
    return s


# -- feeding ----------------------------------------------------------------------------------


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    """``data`` in pieces, cut at ``cuts`` (taken modulo its length + 1, so any list of
    numbers cuts anywhere; the same point twice makes an empty piece)."""
    points = sorted(c % (len(data) + 1) for c in cuts)
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


@dataclass(frozen=True)
class Outcome:
    events: list[Event]  # all of them, the ones receive_eof returned included
    state: State  # before receive_eof
    buffered: int  # before receive_eof
    last_received_id: int
    final_state: State  # after receive_eof


def feed(role: Role, max_size: int, chunks: list[bytes]) -> Outcome:
    conn = Connection(role, max_message_size=max_size)
    events: list[Event] = []
    for chunk in chunks:
        events += conn.receive_data(chunk)
    state, buffered, last_id = conn.state, conn.buffered, conn.last_received_id
    events += conn.receive_eof()
    return Outcome(events, state, buffered, last_id, conn.state)


def split_property(s: Stream, cuts: list[int]) -> None:
    data = s.data
    whole = feed(s.role, s.max_size, [data])
    assert feed(s.role, s.max_size, split(data, cuts)) == whole
    one_by_one = [data[i : i + 1] for i in range(len(data))]
    assert feed(s.role, s.max_size, one_by_one) == whole


# -- A: any split gives the same events and state ---------------------------------------------


@CHECKED
@given(s=streams(Role.SERVER, wide=True), cuts=CUTS)
def test_a_server_any_split_same_events(s: Stream, cuts: list[int]) -> None:
    split_property(s, cuts)


@CHECKED
@given(s=streams(Role.CLIENT, wide=True), cuts=CUTS)
def test_a_client_any_split_same_events(s: Stream, cuts: list[int]) -> None:
    split_property(s, cuts)


@CHECKED
@example(role=Role.SERVER, data=b"\x89TQ", cuts=[2])  # was TRUNCATED_FRAME at eof, not at once
@given(
    role=st.sampled_from(Role),
    data=st.builds(lambda k, rest: PREAMBLE[:k] + rest, st.integers(0, 8), st.binary(max_size=10)),
    cuts=CUTS,
)
def test_a_bad_preamble_is_found_whatever_the_split(
    role: Role, data: bytes, cuts: list[int]
) -> None:
    """A wrong byte is reported as soon as it comes, in any piece, even before 8 bytes."""
    whole = feed(role, 64, [data])
    assert feed(role, 64, split(data, cuts)) == whole
    assert feed(role, 64, [data[i : i + 1] for i in range(len(data))]) == whole


# -- C: the oracle: events of the valid frames, then the first bad frame's code -----------


def check_oracle(s: Stream) -> None:
    assert s.exact
    conn = Connection(s.role, max_message_size=s.max_size)
    events = conn.receive_data(s.data)
    assert conn.state is s.state_before_eof()
    events += conn.receive_eof()
    assert conn.state is s.state_after_eof()
    for event in events[:-1]:
        assert not isinstance(event, ProtocolViolation), events
    if s.code is None:
        assert events == s.expected
        return
    *before, last = events
    assert before == s.expected
    assert isinstance(last, ProtocolViolation), events
    assert last.code == s.code, (last, s.labels)
    assert conn.receive_data(well_formed(F.PING)) == []


@CHECKED
@given(streams(Role.SERVER))
def test_c_server_stops_at_the_first_bad_frame_with_its_code(s: Stream) -> None:
    check_oracle(s)


@CHECKED
@given(streams(Role.CLIENT))
def test_c_client_stops_at_the_first_bad_frame_with_its_code(s: Stream) -> None:
    check_oracle(s)


@st.composite
def routed_too_large(draw: st.DrawFn) -> tuple[int, bytes, int]:
    max_size = draw(SIZES)
    name = draw(NAMES).encode()
    return max_size, name, draw(st.integers(max_size + 1, SKIP_FACTOR * max_size + 40))


def opened(role: Role, max_size: int = 64) -> Connection:
    conn = Connection(role, max_message_size=max_size)
    start = F.HELLO if role is Role.SERVER else F.WELCOME
    assert conn.receive_data(PREAMBLE + frames.json_frame(start, {"version": 1}))
    return conn


@CHECKED
@example(case=(64, b"bob", 300))  # was MessageTooLarge(1, 304, 64): the name counted
@example(case=(64, b"bob", 1024))  # was FRAME_TOO_LARGE: the name counted in the 16 x too
@given(case=routed_too_large())
def test_routed_too_large_reports_the_body_size(case: tuple[int, bytes, int]) -> None:
    """Read whole or skipped, a ROUTED over the limit is measured by its body alone."""
    max_size, name, size = case
    conn = opened(Role.SERVER, max_size)
    events = conn.receive_data(frames.routed(1, name, b"x" * size, 0) + frames.message(2, b"", 0))
    if size > SKIP_FACTOR * max_size:
        assert len(events) == 1
        assert isinstance(events[0], ProtocolViolation)
        assert events[0].code == ErrorCode.FRAME_TOO_LARGE
    else:
        assert events == [MessageTooLarge(1, size, max_size), Message(2, b"")]


@st.composite
def routed_overruns(draw: st.DrawFn) -> tuple[int, int, int]:
    """A ROUTED frame whose name length points past its end: the limit, the name length,
    and the bytes after the name length (from 1, for the shortest ROUTED, up)."""
    max_size = draw(SIZES)
    name_length = draw(st.integers(2, 255) | st.integers(200, 255))
    return max_size, name_length, draw(st.integers(1, name_length - 1))


@CHECKED
@example(case=(16, 255, 145))  # length 156, past 16 + 139: was MessageTooLarge(1, -110, 16)
@given(case=routed_overruns())
def test_a_routed_name_past_the_frame_is_malformed(case: tuple[int, int, int]) -> None:
    max_size, name_length, rest = case
    conn = opened(Role.SERVER, max_size)
    data = ROUTED_HEAD.pack(ROUTED_FIXED + rest, F.ROUTED, 1, 0, name_length) + b"n" * rest
    events = conn.receive_data(data)
    assert len(events) == 1, events
    assert isinstance(events[0], ProtocolViolation), events
    assert events[0].code == ErrorCode.MALFORMED_FRAME


@dataclass(frozen=True)
class Routed:
    """A ROUTED frame from a client, field by field."""

    max_size: int
    name: bytes
    body: bytes
    text: bool
    name_length: int  # as sent: len(name), or past the frame's end

    @property
    def data(self) -> bytes:
        head = ROUTED_HEAD.pack(
            ROUTED_FIXED + len(self.name) + len(self.body),
            F.ROUTED,
            1,
            FLAG_TEXT if self.text else 0,
            self.name_length,
        )
        return head + self.name + self.body

    def expected(self) -> Event | ErrorCode:
        """docs/protocol.md: the header checks (the body's size among them), then the
        payload, field by field: the name, then the body."""
        if ROUTED_FIXED + len(self.name) + len(self.body) < ROUTED_FIXED + 1:
            return ErrorCode.MALFORMED_FRAME  # shorter than 12
        if self.name_length > len(self.name) + len(self.body):
            return ErrorCode.MALFORMED_FRAME  # the name runs past the end
        if len(self.body) > SKIP_FACTOR * self.max_size:
            return ErrorCode.FRAME_TOO_LARGE
        if len(self.body) > self.max_size:
            return MessageTooLarge(1, len(self.body), self.max_size)
        if not is_utf8(self.name):
            return ErrorCode.INVALID_UTF8
        if not valid_name(name := self.name.decode()):
            return ErrorCode.INVALID_NAME
        if self.text and not is_utf8(self.body):
            return ErrorCode.INVALID_UTF8
        return Message(1, self.body.decode() if self.text else self.body, to=name)


@st.composite
def routed_frames(draw: st.DrawFn) -> Routed:
    max_size = draw(SIZES)
    name = draw(
        NAMES.map(str.encode)
        | BAD_NAMES.map(str.encode)
        | st.builds(bad_utf8, st.just(draw))
        | st.binary(max_size=255)
    )
    size = draw(st.integers(0, 17 * max_size) | st.integers(0, max_size))
    body = bytes([draw(st.sampled_from(b"x\xff"))]) + b"x" * (size - 1) if size else b""
    overrun = len(name) + size < 255 and draw(st.booleans())
    name_length = draw(st.integers(len(name) + size + 1, 255)) if overrun else len(name)
    return Routed(max_size, name, body, draw(st.booleans()), name_length)


@CHECKED
@example(Routed(16, b"n" * 180, b"x" * 9, False, 180))  # MessageTooLarge(1, 9, 16)
@example(Routed(16, b"\xff", b"x" * 17, False, 1))  # INVALID_UTF8; with 200 x: MessageTooLarge
@given(routed_frames())
def test_a_routed_frame_is_judged_by_its_body_then_its_name(routed: Routed) -> None:
    conn = opened(Role.SERVER, routed.max_size)
    events = conn.receive_data(routed.data)
    expected = routed.expected()
    if isinstance(expected, ErrorCode):
        assert len(events) == 1, (events, expected)
        assert isinstance(events[0], ProtocolViolation), (events, expected)
        assert events[0].code == expected, (events, expected)
    else:
        assert events == [expected]


@CHECKED
@example(role=Role.SERVER, ftype=F.GOODBYE, after=b"")  # was Goodbye(''), then misread
@given(
    role=st.sampled_from(Role),
    ftype=st.sampled_from(sorted(RECEIVES[Role.CLIENT][State.OPEN])),
    after=st.binary(max_size=20),
)
def test_a_frame_of_length_zero_is_malformed(role: Role, ftype: FrameType, after: bytes) -> None:
    """Length 0 leaves no room for the type byte: MALFORMED_FRAME, whatever the type."""
    conn = opened(role)
    if ftype is F.RECEIPT and role is Role.SERVER:
        ftype = F.ACK
    events = conn.receive_data(HEADER.pack(0, ftype) + after)
    assert len(events) == 1
    assert isinstance(events[0], ProtocolViolation)
    assert events[0].code == ErrorCode.MALFORMED_FRAME


# -- B: any bytes: events or a violation, never an exception; bounded memory --------------


@st.composite
def near_limit_frame(draw: st.DrawFn, max_size: int) -> bytes:
    """A frame whose length is at (or one past) what may be buffered, mostly not complete."""
    ftype = draw(st.sampled_from(list(FrameType)))
    limit = {
        F.MESSAGE: max_size + MESSAGE_FIXED,
        F.ROUTED: max_size + ROUTED_FIXED + MAX_NAME_BYTES,
        F.ACK: max_size + ACK_SLACK,
        F.RECEIPT: max_size + ACK_SLACK,
    }.get(ftype, CONTROL_FRAME_LIMIT)
    length = limit + draw(st.sampled_from([-1, 0, 0, 1]))
    fill = bytes([draw(st.integers(0, 255))])
    return HEADER.pack(length, ftype) + fill * draw(st.integers(0, length - 1))


@st.composite
def any_frame(draw: st.DrawFn) -> bytes:
    """A header of any (mostly known) type over any payload, the length right or not."""
    ftype = draw(st.sampled_from([int(t) for t in FrameType]) | st.integers(0, 255))
    payload = draw(st.binary(max_size=40))
    length = max(0, 1 + len(payload) + draw(st.sampled_from([0, 0, 0, -1, 1, 5, 100])))
    return HEADER.pack(length, ftype) + payload


@st.composite
def random_input(draw: st.DrawFn) -> tuple[Role, int, bytes]:
    role = draw(st.sampled_from(Role))
    max_size = draw(st.sampled_from([16, 300, 100_000]))
    start = {
        Role.SERVER: frames.json_frame(F.HELLO, {"version": 1}),
        Role.CLIENT: frames.json_frame(F.WELCOME, {"version": 1}),
    }[role]
    prefix = draw(st.sampled_from([b"", PREAMBLE, PREAMBLE + start]))
    piece = st.one_of(
        st.binary(max_size=200),
        any_frame(),
        near_limit_frame(max_size),
        st.sampled_from([PREAMBLE]),
    )
    return role, max_size, prefix + b"".join(draw(st.lists(piece, max_size=8)))


def check_no_more(conn: Connection) -> None:
    assert conn.state is State.CLOSED
    assert conn.buffered == 0
    assert conn.receive_data(well_formed(F.PING)) == []


@CHECKED
@given(case=random_input(), cuts=CUTS)
def test_b_any_bytes_end_in_events_or_a_violation(
    case: tuple[Role, int, bytes], cuts: list[int]
) -> None:
    role, max_size, data = case
    conn = Connection(role, max_message_size=max_size)
    bound = buffer_bound(max_size)
    stopped = False
    for chunk in split(data, cuts):
        events = conn.receive_data(chunk)
        if stopped:
            assert events == []
        for event in events[:-1]:
            assert not isinstance(event, ProtocolViolation | PeerError), events
        if events and isinstance(events[-1], ProtocolViolation | PeerError):
            stopped = True
            assert conn.state is State.CLOSED
        assert conn.buffered <= bound, (conn.buffered, bound)
    eof = conn.receive_eof()
    if stopped:
        assert eof == []
    else:
        assert eof == [] or (
            len(eof) == 1
            and isinstance(eof[0], ProtocolViolation)
            and eof[0].code == ErrorCode.TRUNCATED_FRAME
        )
        stopped = bool(eof)
    if stopped:
        check_no_more(conn)


def largest_length(ftype: FrameType, max_size: int) -> int:
    """The largest length a frame of this type may have and still be buffered whole."""
    return {
        F.MESSAGE: max_size + MESSAGE_FIXED,
        F.ROUTED: max_size + ROUTED_FIXED + MAX_NAME_BYTES,
        F.ACK: max_size + ACK_SLACK,
        F.RECEIPT: max_size + ACK_SLACK,
    }.get(ftype, CONTROL_FRAME_LIMIT)


@CHECKED
@given(
    role=st.sampled_from(Role),
    max_size=st.sampled_from([16, 300, 100_000]),
    ftype=st.sampled_from(sorted(RECEIVES[Role.CLIENT][State.OPEN])),
    over=st.booleans(),
    cuts=CUTS,
)
def test_b_the_buffer_bound_is_the_largest_frame(
    role: Role, max_size: int, ftype: FrameType, over: bool, cuts: list[int]
) -> None:
    """The largest frame of each type is buffered until its last byte (the bound is
    reached, not just respected); one byte longer is fatal, or (MESSAGE, ROUTED) skipped
    without being buffered."""
    if ftype is F.RECEIPT and role is Role.SERVER:
        ftype = F.ACK
    conn = opened(role, max_size)
    length = largest_length(ftype, max_size) + over
    # The largest ROUTED that is buffered has the longest name a name may have and a
    # body at the limit; its body decides (one byte more of body is skipped).
    name_length = MAX_NAME_BYTES if ftype is F.ROUTED else 3
    fixed = struct.pack(">QBB", 1, 0, name_length) if ftype in (F.MESSAGE, F.ROUTED) else b""
    data = HEADER.pack(length, ftype) + fixed + b"\x00" * (length - 1 - len(fixed) - 1)
    events: list[Event] = []
    for chunk in split(data, cuts):
        events += conn.receive_data(chunk)
        assert conn.buffered <= buffer_bound(max_size)
    if not over:
        assert events == []
        assert conn.buffered == len(data) == 4 + length - 1
    elif ftype in (F.MESSAGE, F.ROUTED):
        size = length - (MESSAGE_FIXED if ftype is F.MESSAGE else ROUTED_FIXED + name_length)
        assert events == [MessageTooLarge(1, size, max_size)]
        assert conn.buffered == 0
    else:
        assert [type(e) for e in events] == [ProtocolViolation]
        assert events[0].code == ErrorCode.FRAME_TOO_LARGE  # type: ignore[union-attr]


# -- plain-text peers -----------------------------------------------------------------------

TEXT_PIECES = st.sampled_from(
    [b"\n", b"\r", b"\r\n", b"a", b"xyz", b"\xff", b"\xc3\xa9", b"\xc3", b"\x00", b"\n\n"]
)
TEXT_BYTES = st.lists(TEXT_PIECES | st.binary(max_size=8), max_size=40).map(b"".join)
LINE = (
    st.lists(TEXT_PIECES.filter(lambda p: b"\n" not in p) | st.binary(max_size=6), max_size=10)
    .map(lambda parts: b"".join(parts).replace(b"\n", b""))
    .map(lambda line: line + b"." if line.endswith(b"\r") else line)
)


def feed_text(max_size: int, chunks: list[bytes]) -> tuple[list[Event], bool]:
    """What a text peer's bytes make, with no pause between pieces (so no flush())."""
    conn = TextConnection(max_message_size=max_size)
    events: list[Event] = []
    for chunk in chunks:
        events += conn.receive_data(chunk)
    partial = conn.has_partial
    return events + conn.receive_eof(), partial


def text_oracle(data: bytes, max_size: int) -> list[Event]:
    """docs/protocol.md: each line (its \\r\\n or \\n ending dropped) is a message; a line
    longer than max_message_size is rejected; a last line without its newline is a
    message at the end."""
    *lines, last = data.split(b"\n")
    if last:
        lines.append(last)
    events: list[Event] = []
    for msg_id, raw in enumerate(lines, 1):
        line = raw.removesuffix(b"\r")
        if len(line) > max_size:
            events.append(MessageTooLarge(msg_id, len(line), max_size))
        else:
            events.append(Message(msg_id, text_body(line)))
    return events


@settings(max_examples=300, deadline=None)
@given(data=TEXT_BYTES, max_size=st.integers(1, 12), cuts=CUTS)
def test_text_any_split_same_events(data: bytes, max_size: int, cuts: list[int]) -> None:
    whole = feed_text(max_size, [data])
    assert feed_text(max_size, split(data, cuts)) == whole
    assert feed_text(max_size, [data[i : i + 1] for i in range(len(data))]) == whole


@settings(max_examples=300, deadline=None)
@given(
    lines=st.lists(LINE, max_size=8),
    newline_at_end=st.booleans(),
    max_size=st.integers(1, 12),
    cuts=CUTS,
)
def test_text_lines_over_the_limit_are_too_large(
    lines: list[bytes], newline_at_end: bool, max_size: int, cuts: list[int]
) -> None:
    data = b"\n".join(lines) + (b"\n" if newline_at_end and lines else b"")
    events, _ = feed_text(max_size, split(data, cuts))
    assert events == text_oracle(data, max_size)


@settings(max_examples=300, deadline=None)
@example(lines=[b"abc"], max_size=3)  # was MessageTooLarge(1, 4, 3): the \r counted
@given(lines=st.lists(LINE, min_size=1, max_size=8), max_size=st.integers(1, 12))
def test_text_crlf_lines_over_the_limit_are_too_large(lines: list[bytes], max_size: int) -> None:
    data = b"".join(line + b"\r\n" for line in lines)
    events, _ = feed_text(max_size, [data])
    assert events == text_oracle(data, max_size)
