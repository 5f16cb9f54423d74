"""The telex connection as a plain object: bytes in, events out; calls in, bytes out.

``Connection.receive_data(data)`` parses every complete frame in ``data`` and returns
their events; ``send_*`` methods queue frames, and ``data_to_send()`` hands over all
queued bytes at once so an I/O layer writes them with one call. Nothing here touches a
socket, a clock or a file: timeouts, reading and writing belong to the caller.

A peer that breaks the protocol does not raise: the core queues an ERROR frame,
returns a final ``ProtocolViolation`` event, and ignores whatever arrives after it.
"""

from __future__ import annotations

from collections.abc import Callable
from struct import Struct
from typing import Any

from . import frames
from .events import (
    Ack,
    AckStatus,
    Body,
    ErrorCode,
    Event,
    Message,
    MessageTooLarge,
    ProtocolViolation,
)
from .frames import (
    ACK_FIXED,
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
from .state import RECEIVES, Role, State, next_state

__all__ = [
    "DEFAULT_MAX_MESSAGE_SIZE",
    "Connection",
    "Role",
    "State",
    "looks_framed",
    "valid_name",
]

DEFAULT_MAX_MESSAGE_SIZE = 1024 * 1024


_unpack_header = frames.HEADER.unpack_from
_unpack_id_flags = Struct(">QB").unpack_from
_unpack_message_head = frames.MESSAGE_HEAD.unpack_from
_unpack_ack_head = frames.ACK_HEAD.unpack_from
_unpack_u64 = Struct(">Q").unpack_from
_pack_ack_head = frames.ACK_HEAD.pack
_MESSAGE = int(FrameType.MESSAGE)
_ROUTED = int(FrameType.ROUTED)
_ACK = int(FrameType.ACK)

_new_tuple = tuple.__new__  # builds a Message without the call through its __new__


def looks_framed(first_bytes: bytes) -> bool | None:
    """Tell a telex client from a plain-text one by its first bytes (None: too few yet)."""
    if not first_bytes:
        return None
    return first_bytes[0] == PREAMBLE[0]


class Connection:
    """One end of a telex connection, with no I/O.

    The client starts it with ``initiate()``; the server answers a ``Hello`` event with
    ``send_welcome()`` (or ``send_error()``).
    """

    def __init__(
        self,
        role: Role,
        *,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        requires_auth: bool = False,
    ) -> None:
        self.role = role
        self.requires_auth = requires_auth  # server: HELLO must be followed by AUTH
        self.state = State.PREAMBLE
        self.max_message_size = max_message_size
        self.said_goodbye = False
        self.error_done = False  # we sent an ERROR: nothing more is sent
        self.peer_error = False  # the peer sent one (or a broken one): never answered with one
        self.last_received_id = 0
        self._next_id = 1  # a client numbers its own, across a session: see send_message(msg_id)
        self._out: list[bytes] = []
        self._pending: list[bytes] = []  # an incomplete frame, in the pieces it came in
        self.buffered = 0  # bytes in _pending
        self._need = len(PREAMBLE)
        self._skip = 0
        self._accepting = False  # may a MESSAGE arrive now?
        self._reply: object = None
        self._pack_ack: Callable[..., bytes] = _pack_ack_head
        self._ack_length = ACK_FIXED
        self._reply_flags = 0
        self._payload = b""
        if role is Role.SERVER:
            self._out.append(PREAMBLE)

    # -- outgoing -------------------------------------------------------------------

    def initiate(
        self, *, name: str | None = None, agent: str = "", session: str | None = None
    ) -> None:
        """Client only: queue the preamble and HELLO."""
        if self.role is not Role.CLIENT:
            raise RuntimeError("only a client initiates")
        hello: dict[str, Any] = {"version": frames.PROTOCOL_VERSION, "agent": agent}
        if name is not None:
            hello["name"] = name
        if session is not None:
            hello["session"] = session
        self._out.append(PREAMBLE + frames.json_frame(FrameType.HELLO, hello))

    def send_welcome(
        self,
        *,
        name: str | None = None,
        agent: str = "",
        limits: dict[str, Any] | None = None,
        stable_ids: bool = False,
    ) -> None:
        """Server only: accept the client's HELLO, under ``name``.

        ``stable_ids``: the ids of the server's messages are the same when it sends one
        again (they come from its store), so a client can tell a redelivery.
        """
        if self.role is not Role.SERVER:
            raise RuntimeError("only a server welcomes")
        if self.error_done:
            return
        welcome: dict[str, Any] = {"version": frames.PROTOCOL_VERSION, "agent": agent}
        welcome["limits"] = limits or {}
        if name is not None:
            welcome["name"] = name
        if stable_ids:
            welcome["stable_ids"] = True
        if self.state is State.AUTH:  # the answer was right: messages may flow
            self.state = State.OPEN
            self._accepting = True
        self._out.append(frames.json_frame(FrameType.WELCOME, welcome))

    def send_challenge(self, challenge: bytes, salt: bytes = b"") -> None:
        """Server only, after HELLO: ask for proof of the token."""
        obj = {"challenge": challenge.hex(), "salt": salt.hex()}
        self._out.append(frames.json_frame(FrameType.CHALLENGE, obj))

    def send_auth(self, answer: bytes) -> None:
        """Client only: the answer to the server's challenge."""
        self._out.append(frames.json_frame(FrameType.AUTH, {"answer": answer.hex()}))

    def send_message(
        self, body: Body, *, name: str | None = None, msg_id: int | None = None
    ) -> int:
        """Queue a message and return its id.

        ``name`` routes it: from a client, the client it is for; from the server, the
        client it comes from. ``msg_id`` sends it under a given id (a resend, or the
        server's stored number), which must be above the ids sent before it.
        """
        payload, flags = frames.encode_body(body)
        if msg_id is None:
            msg_id = self._next_id
        elif msg_id < self._next_id:
            raise ValueError(f"message id {msg_id} is not above {self._next_id - 1}")
        self._next_id = msg_id + 1
        if name is None:
            self._out.append(frames.message(msg_id, payload, flags))
        else:
            self._out.append(frames.routed(msg_id, name.encode(), payload, flags))
        return msg_id

    @property
    def next_id(self) -> int:
        return self._next_id

    def send_ack(self, msg_id: int, reply: Body = b"", reason: str = "") -> None:
        """Queue a successful acknowledgment of ``msg_id`` with an optional reply body.

        ``reason`` is a note for an ok ack (such as "stored for bob"); usually empty.
        """
        if reason:
            payload, flags = frames.encode_body(reply)
            self._out.append(frames.ack(msg_id, 0, reason[:1000].encode(), payload, flags))
            return
        if reply is not self._reply:
            self._prepare_reply(reply)
        self._out.append(
            self._pack_ack(self._ack_length, _ACK, msg_id, 0, self._reply_flags, 0, self._payload)
        )

    def _prepare_reply(self, reply: Body) -> None:
        """Compile a struct that packs an ACK header and this reply in one call.

        Handlers usually answer with the same reply object every time, so this runs once.
        """
        self._payload, self._reply_flags = frames.encode_body(reply)
        self._pack_ack = Struct(f"{frames.ACK_HEAD.format}{len(self._payload)}s").pack
        self._ack_length = ACK_FIXED + len(self._payload)
        self._reply = reply

    def send_answer(
        self, msg_id: int, status: int, reason: str = "", reply: Body = b"", flags: int = 0
    ) -> None:
        """Queue an ACK with every field given: ``flags`` are the outcome bits
        (``frames.FLAG_STORED``, ``FLAG_DELIVERED``, ``FLAG_AWAY``) beside the reply's kind."""
        payload, text = frames.encode_body(reply)
        self._out.append(frames.ack(msg_id, status, reason[:1000].encode(), payload, text | flags))

    def send_rejection(self, msg_id: int, status: int, reason: str) -> None:
        """Queue a rejection of ``msg_id``: a nonzero status and a human-readable reason."""
        if status == AckStatus.OK:
            raise ValueError("a rejection needs a nonzero status")
        self._out.append(frames.ack(msg_id, status, reason[:1000].encode(), b"", 0))

    def send_receipt(self, msg_id: int, status: int, reason: str, reply: Body) -> None:
        """Server only: message ``msg_id`` reached its recipient, which answered so."""
        payload, flags = frames.encode_body(reply)
        reason_bytes = reason[:1000].encode()
        flags |= frames.FLAG_DELIVERED
        receipt = frames.ack(msg_id, status, reason_bytes, payload, flags, FrameType.RECEIPT)
        self._out.append(receipt)

    def send_ping(self, payload: int = 0) -> None:
        self._out.append(frames.ping(FrameType.PING, payload))

    def send_pong(self, payload: bytes) -> None:
        """Answer a ``Ping`` event with its 8 bytes."""
        self._out.append(frames.HEADER.pack(9, FrameType.PONG) + payload)

    def send_goodbye(self, reason: str = "") -> None:
        """Say we send no new messages; acknowledgments may still follow."""
        if not self.said_goodbye:
            self.said_goodbye = True
            self._out.append(frames.goodbye(reason))

    def send_stats(self, values: dict[str, Any]) -> None:
        """A client: ask for the server's counters (``{}``); a server: answer with them."""
        self._out.append(frames.json_frame(FrameType.STATS, values))

    def send_error(self, code: ErrorCode, reason: str) -> None:
        """Queue an ERROR frame, the last frame: the caller closes after writing it.

        After a ``ProtocolViolation`` event the caller sends the ERROR it names, once it
        has queued the answers to what came before the violation.
        """
        if not self.error_done and not self.peer_error:
            self.error_done = True
            self._out.append(frames.error(code, reason))
            self._close()

    def data_to_send(self) -> bytes:
        """Everything queued so far, as one bytes object to write."""
        out = self._out
        if not out:
            return b""
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        return data

    # -- incoming -------------------------------------------------------------------

    def receive_data(self, data: bytes) -> list[Event]:
        """Parse ``data`` with what was left over before; return the events it completes."""
        if self.state is State.CLOSED or not data:
            return []
        if self._skip:
            if len(data) <= self._skip:
                self._skip -= len(data)
                return []
            data = data[self._skip :]
            self._skip = 0
        if self._pending:  # joined once the frame is whole: no copy per piece
            self._pending.append(data)
            self.buffered += len(data)
            if self.buffered < self._need and self.state is not State.PREAMBLE:
                return []  # (a preamble is checked byte by byte, so a wrong one fails at once)
            data = b"".join(self._pending)
            self._pending = []
            self.buffered = 0
        events: list[Event] = []
        if self.state is State.PREAMBLE:
            if len(data) < len(PREAMBLE):
                if not PREAMBLE.startswith(data):
                    return self._violation(events, ErrorCode.BAD_PREAMBLE, "not a telex peer")
                self._pending = [data]
                self.buffered = len(data)
                return events
            if not data.startswith(PREAMBLE):
                return self._violation(events, ErrorCode.BAD_PREAMBLE, "not a telex peer")
            data = data[len(PREAMBLE) :]
            self.state = State.HANDSHAKE
            self._need = frames.HEADER_SIZE
        self._parse(data, events)
        return events

    def receive_eof(self) -> list[Event]:
        """The peer closed its side; a frame cut short is a violation."""
        if self.state is State.CLOSED:
            return []
        events: list[Event] = []
        if self._pending or self._skip:
            return self._violation(events, ErrorCode.TRUNCATED_FRAME, "connection closed mid-frame")
        return events

    def _parse(self, data: bytes, events: list[Event]) -> None:
        """Parse every complete frame of ``data``; keep the incomplete tail for later."""
        n = len(data)
        pos = 0
        max_message_frame = self.max_message_size + MESSAGE_FIXED
        append = events.append
        last_id = self.last_received_id
        accepting = self._accepting
        unpack_message_head = _unpack_message_head
        new, message_class = _new_tuple, Message
        max_ack_frame = self.max_message_size + 2048
        while True:
            # The fast path, taken by nearly every frame: a whole, in-limit MESSAGE with
            # an increasing id on an open connection. Anything else takes the path below.
            if accepting and n - pos >= 14:
                length, ftype, msg_id, flags = unpack_message_head(data, pos)
                end = pos + 4 + length
                if (
                    ftype == _MESSAGE
                    and end <= n
                    and MESSAGE_FIXED <= length <= max_message_frame
                    and msg_id > last_id
                    and not flags & FLAG_TEXT
                ):
                    append(new(message_class, (msg_id, data[pos + 14 : end], None, None)))
                    last_id = msg_id
                    pos = end
                    continue
                # The other frame on the hot path: a whole ACK with no reason.
                if ftype == _ACK and end <= n and ACK_FIXED <= length <= max_ack_frame:
                    _, _, msg_id, status, flags, reason_length = _unpack_ack_head(data, pos)
                    if not reason_length:
                        reply: Body = data[pos + 17 : end]
                        if flags & FLAG_TEXT:
                            try:
                                reply = data[pos + 17 : end].decode()
                            except UnicodeDecodeError:
                                reply = b""  # the checked path below reports it
                                flags = -1
                        if flags != -1:
                            append(new(Ack, (msg_id, status, "", reply, flags & ANSWER_FLAGS)))
                            pos = end
                            continue
            avail = n - pos
            if avail < 5:
                self._need = 5
                break
            length, ftype = _unpack_header(data, pos)
            end = pos + 4 + length
            self.last_received_id = last_id
            if not self._frame_allowed(ftype, events):
                return
            if length < 1:  # no room for its own type byte
                self._violation(events, ErrorCode.MALFORMED_FRAME, "frame of length 0")
                return
            if ftype in (_MESSAGE, _ROUTED):
                if length < MESSAGE_FIXED or (ftype == _ROUTED and length < ROUTED_FIXED + 1):
                    self._violation(events, ErrorCode.MALFORMED_FRAME, "MESSAGE frame too short")
                    return
                size = length - MESSAGE_FIXED  # of the body: judged first, then the name
                least = size if ftype == _MESSAGE else length - ROUTED_FIXED - 255
                if least > self.max_message_size * SKIP_FACTOR:  # from the header alone
                    self._violation(events, ErrorCode.FRAME_TOO_LARGE, f"message of {least} bytes")
                    return
                if ftype == _ROUTED:
                    if avail < 15:  # up to the name's length
                        self._need = 15
                        break
                    size = length - ROUTED_FIXED - data[pos + 14]
                    if 0 <= size <= self.max_message_size and data[pos + 14] > MAX_NAME_BYTES:
                        self._long_name(data, pos, events)
                        return
                if size <= self.max_message_size:
                    if end > n:
                        self._need = 4 + length
                        break
                    message_or_none = self._checked_message(ftype, data, pos, end, events)
                    if message_or_none is None:
                        return
                    append(message_or_none)
                    last_id = self.last_received_id
                    pos = end
                    continue
                head = 14 if ftype == _MESSAGE else 15  # up to the id (and name length)
                if avail < head:  # over the size limit: read its id, then skip its body
                    self._need = head
                    break
                if not self._reject_oversized(data, pos, size, events):
                    return
                last_id = self.last_received_id
                if end > n:
                    self._skip = end - n
                    pos = n
                    self._need = 5
                    break
                pos = end
                continue
            answer = ftype in (FrameType.ACK, FrameType.RECEIPT)
            limit = self.max_message_size + 2048 if answer else CONTROL_FRAME_LIMIT
            if length > limit:
                if ftype == FrameType.ERROR:
                    self.peer_error = True  # an ERROR is never answered with one
                self._violation(
                    events,
                    ErrorCode.FRAME_TOO_LARGE,
                    f"{FrameType(ftype).name} frame of {length} bytes",
                )
                return
            if end > n:
                self._need = 4 + length
                break
            if not self._control(FrameType(ftype), data[pos + 5 : end], events):
                return
            accepting = self._accepting  # a HELLO opens, a GOODBYE closes, mid-read
            pos = end
        self.last_received_id = last_id
        if pos < n and self.state is not State.CLOSED:
            self._pending = [data[pos:]]
            self.buffered = n - pos

    def _checked_message(
        self, ftype: int, data: bytes, pos: int, end: int, events: list[Event]
    ) -> Message | None:
        """A whole MESSAGE or ROUTED frame, within the size limit, that the fast path passed
        over, checked field by field."""
        msg_id, flags = _unpack_id_flags(data, pos + 5)
        if msg_id <= self.last_received_id:
            self._violation(events, ErrorCode.ID_NOT_INCREASING, f"message id {msg_id} repeated")
            return None
        start = pos + 14
        name = None
        try:
            if ftype == _ROUTED:
                name_end = start + 1 + data[start]
                if name_end > end:
                    self._violation(events, ErrorCode.MALFORMED_FRAME, "name longer than its frame")
                    return None
                name = data[start + 1 : name_end].decode()
                start = name_end
                if not valid_name(name):
                    self._violation(events, ErrorCode.INVALID_NAME, f"invalid name {name!r}")
                    return None
            body: Body = data[start:end].decode() if flags & FLAG_TEXT else data[start:end]
        except UnicodeDecodeError:
            self._violation(events, ErrorCode.INVALID_UTF8, "message text not UTF-8")
            return None
        self.last_received_id = msg_id
        if self.role is Role.SERVER:
            return Message(msg_id, body, to=name)
        return Message(msg_id, body, sender=name)

    def _frame_allowed(self, ftype: int, events: list[Event]) -> bool:
        try:
            frame_type = FrameType(ftype)
        except ValueError:
            self._violation(events, ErrorCode.UNKNOWN_FRAME_TYPE, f"unknown frame type {ftype}")
            return False
        if frame_type not in RECEIVES[self.role][self.state]:
            handshake = frame_type in (FrameType.HELLO, FrameType.WELCOME)
            detail = ""
            if handshake and self.state in (State.OPEN, State.DRAINING):
                detail = " (a second handshake)"
            elif self.state is State.DRAINING:
                detail = " after GOODBYE"
            self._violation(
                events,
                ErrorCode.UNEXPECTED_FRAME,
                f"unexpected {frame_type.name} frame in state {self.state.value}{detail}",
            )
            return False
        return True

    def _long_name(self, data: bytes, pos: int, events: list[Event]) -> None:
        """A ROUTED whose name cannot be valid (over 128 bytes): refused before it is read."""
        (msg_id,) = _unpack_u64(data, pos + 5)
        if msg_id <= self.last_received_id:
            self._violation(events, ErrorCode.ID_NOT_INCREASING, f"message id {msg_id} repeated")
        else:
            self._violation(events, ErrorCode.INVALID_NAME, f"a name of {data[pos + 14]} bytes")

    def _reject_oversized(self, data: bytes, pos: int, size: int, events: list[Event]) -> bool:
        """A MESSAGE or ROUTED whose body is over the size limit: rejected and skipped,
        or (far over it) fatal. ``size`` is its body's, without a ROUTED frame's name."""
        if size > self.max_message_size * SKIP_FACTOR:
            self._violation(events, ErrorCode.FRAME_TOO_LARGE, f"message of {size} bytes")
            return False
        (msg_id,) = _unpack_u64(data, pos + 5)
        if msg_id <= self.last_received_id:
            self._violation(
                events, ErrorCode.ID_NOT_INCREASING, f"message id {msg_id} not increasing"
            )
            return False
        self.last_received_id = msg_id
        events.append(MessageTooLarge(msg_id, size, self.max_message_size))
        return True

    def _control(self, ftype: FrameType, payload: bytes, events: list[Event]) -> bool:
        """Decode one complete frame other than an in-limit MESSAGE, and take the state
        step it brings; False if it was bad (or an ERROR: nothing more is read)."""
        try:
            event = _DECODERS[ftype](payload)
        except frames.BadFrame as exc:
            if ftype is FrameType.ERROR:  # the peer is closing anyway: never answer it
                self.peer_error = True
            self._violation(events, exc.code, exc.reason)
            return False
        events.append(event)
        if ftype is FrameType.GOODBYE or ftype is FrameType.HELLO or ftype is FrameType.WELCOME:
            needs_auth = self.requires_auth
            self.state = next_state(self.role, self.state, ftype, needs_auth=needs_auth)
            self._accepting = self.state is State.OPEN  # with a token: nothing but AUTH yet
        elif ftype is FrameType.ERROR:
            # Never answered with an ERROR; what came before it in the same read is
            # still answered (WELCOME included), as if it had come in a read of its own.
            self.peer_error = True
            self._close()
            return False
        return True

    def _violation(self, events: list[Event], code: ErrorCode, reason: str) -> list[Event]:
        """The peer broke the rules: read nothing more, and report it as the last event.
        The ERROR frame is the caller's to send, after the answers to what came before."""
        self._close()
        events.append(ProtocolViolation(code, reason))
        return events

    def _close(self) -> None:
        self.state = State.CLOSED
        self._accepting = False
        self._pending = []
        self.buffered = 0
        self._skip = 0


_DECODERS: dict[FrameType, Callable[[bytes], Event]] = {
    FrameType.ACK: frames.decode_ack,
    FrameType.RECEIPT: frames.decode_receipt,
    FrameType.PING: frames.decode_ping,
    FrameType.PONG: frames.decode_pong,
    FrameType.STATS: frames.decode_stats,
    FrameType.GOODBYE: frames.decode_goodbye,
    FrameType.ERROR: frames.decode_error,
    FrameType.HELLO: frames.decode_hello,
    FrameType.WELCOME: frames.decode_welcome,
    FrameType.CHALLENGE: frames.decode_challenge,
    FrameType.AUTH: frames.decode_auth,
}
"""Each frame type's decoder (in frames.py, beside its encoder)."""
