"""The frame layout of docs/protocol.md: constants, and each frame type's encoder beside
its decoder.

Every frame is ``length:u32 | type:u8 | payload``, big-endian, where ``length`` counts
the type byte and the payload. Encoders build whole frames; decoders take a payload and
return its event, or raise ``BadFrame`` with the error code the peer earns. The
incremental parser (which frame comes when, and the fast path for MESSAGE and ACK)
lives in ``protocol.py`` beside the state it needs.
"""

from __future__ import annotations

import json
from enum import IntEnum
from struct import Struct
from typing import Any

from .events import (
    Ack,
    Auth,
    Body,
    Challenge,
    ErrorCode,
    Goodbye,
    Hello,
    PeerError,
    Ping,
    Pong,
    Receipt,
    StatsFrame,
    Welcome,
)

PREAMBLE = b"\x89TLX\r\n\x1a\n"
"""Sent first by each side. 0x89 cannot start UTF-8 text, so no typed line looks like it."""

PROTOCOL_VERSION = 1

HEADER = Struct(">IB")  # length, type
MESSAGE_HEAD = Struct(">IBQB")  # length, type, id, flags
ACK_HEAD = Struct(">IBQBBH")  # length, type, id, status, flags, reason length
ERROR_HEAD = Struct(">IBH")  # length, type, code
PING_HEAD = Struct(">IBQ")  # length, type, payload

HEADER_SIZE = HEADER.size  # 5
MESSAGE_FIXED = MESSAGE_HEAD.size - 4  # type + id + flags = 10
ACK_FIXED = ACK_HEAD.size - 4  # type + id + status + flags + reason length = 13

FLAG_TEXT = 0x01
"""Flags bit 0: the body (or reply) is UTF-8 text."""

FLAG_STORED = 0x02
"""ACK flags bit 1: the server stored the message for the client it names; that client has
not acknowledged it yet, and a RECEIPT under the same id follows when it does."""

FLAG_DELIVERED = 0x04
"""ACK and RECEIPT flags bit 2: status, reason and reply are those of the client the
message was for: it has the message."""

FLAG_AWAY = 0x08
"""ACK flags bit 3, beside FLAG_STORED: that client is not connected now."""

ANSWER_FLAGS = FLAG_STORED | FLAG_DELIVERED | FLAG_AWAY
"""The outcome bits of an ACK's flags, as ``Ack.flags`` carries them."""

CONTROL_FRAME_LIMIT = 64 * 1024
"""Largest frame other than MESSAGE and ACK (handshake, error, goodbye, ping)."""

SKIP_FACTOR = 16
"""A MESSAGE up to this many times the size limit is skipped and rejected; past it, an error."""


class FrameType(IntEnum):
    HELLO = 0x01
    WELCOME = 0x02
    CHALLENGE = 0x03
    AUTH = 0x04
    MESSAGE = 0x10
    ACK = 0x11
    ROUTED = 0x12
    RECEIPT = 0x13
    PING = 0x20
    PONG = 0x21
    STATS = 0x22
    ERROR = 0x30
    GOODBYE = 0x31


def encode_body(body: bytes | str) -> tuple[bytes, int]:
    """Return the wire bytes of a body and its flags."""
    if type(body) is bytes:
        return body, 0
    if isinstance(body, str):
        return body.encode(), FLAG_TEXT
    if isinstance(body, bytes | bytearray | memoryview):
        return bytes(body), 0
    raise TypeError(f"a message body is str or bytes, not {type(body).__name__}")


def message(msg_id: int, body: bytes, flags: int) -> bytes:
    return MESSAGE_HEAD.pack(MESSAGE_FIXED + len(body), FrameType.MESSAGE, msg_id, flags) + body


ROUTED_HEAD = Struct(">IBQBB")  # length, type, id, flags, name length
ROUTED_FIXED = ROUTED_HEAD.size - 4  # type + id + flags + name length = 11


def routed(msg_id: int, name: bytes, body: bytes, flags: int) -> bytes:
    length = ROUTED_FIXED + len(name) + len(body)
    return ROUTED_HEAD.pack(length, FrameType.ROUTED, msg_id, flags, len(name)) + name + body


def ack(
    msg_id: int,
    status: int,
    reason: bytes,
    reply: bytes,
    flags: int,
    frame_type: FrameType = FrameType.ACK,
) -> bytes:
    """An ACK, or (with ``frame_type=RECEIPT``) a delivery receipt, which has its layout."""
    length = ACK_FIXED + len(reason) + len(reply)
    head = ACK_HEAD.pack(length, frame_type, msg_id, status, flags, len(reason))
    return head + reason + reply


def json_frame(frame_type: FrameType, obj: dict[str, Any]) -> bytes:
    payload = json.dumps(obj, separators=(",", ":")).encode()
    return HEADER.pack(1 + len(payload), frame_type) + payload


def ping(frame_type: FrameType, payload: int) -> bytes:
    return PING_HEAD.pack(9, frame_type, payload)


def error(code: int, reason: str) -> bytes:
    text = reason[:1000].encode()
    return ERROR_HEAD.pack(3 + len(text), FrameType.ERROR, code) + text


def goodbye(reason: str) -> bytes:
    text = reason[:1000].encode()
    return HEADER.pack(1 + len(text), FrameType.GOODBYE) + text


# -- decoders ---------------------------------------------------------------------------

MAX_NAME_LENGTH = 32
MAX_NAME_BYTES = 4 * MAX_NAME_LENGTH
_NAME_PUNCTUATION = frozenset("._-")
_ACK_BODY = Struct(">QBBH")  # id, status, flags, reason length
_U16 = Struct(">H")


class BadFrame(Exception):
    """A frame the peer should not have sent; ``code`` is the ERROR it earns."""

    def __init__(self, code: ErrorCode, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def valid_name(name: str) -> bool:
    """A client name: 1 to 32 letters, digits, dots, dashes or underscores."""
    return 0 < len(name) <= MAX_NAME_LENGTH and all(
        c.isalnum() or c in _NAME_PUNCTUATION for c in name
    )


def _text(raw: bytes, what: str) -> str:
    try:
        return raw.decode()
    except UnicodeDecodeError:
        raise BadFrame(ErrorCode.INVALID_UTF8, f"{what} text not UTF-8") from None


def _malformed(reason: str) -> BadFrame:
    return BadFrame(ErrorCode.MALFORMED_FRAME, reason)


def decode_ack(payload: bytes) -> Ack:
    """ACK (and RECEIPT): ``id status flags reason_len reason reply``."""
    if len(payload) < ACK_FIXED - 1:
        raise _malformed("ACK frame too short")
    msg_id, status, flags, reason_len = _ACK_BODY.unpack_from(payload, 0)
    start = ACK_FIXED - 1
    if start + reason_len > len(payload):
        raise _malformed("ACK reason longer than its frame")
    reason = _text(payload[start : start + reason_len], "ACK")
    raw_reply = payload[start + reason_len :]
    reply: Body = _text(raw_reply, "ACK") if flags & FLAG_TEXT else raw_reply
    return Ack(msg_id, status, reason, reply, flags & ANSWER_FLAGS)


def decode_receipt(payload: bytes) -> Receipt:
    return Receipt(*decode_ack(payload))


def decode_ping(payload: bytes) -> Ping:
    return Ping(_eight(payload))


def decode_pong(payload: bytes) -> Pong:
    return Pong(_eight(payload))


def _eight(payload: bytes) -> bytes:
    if len(payload) != 8:
        raise _malformed(f"expected 8 bytes of payload, got {len(payload)}")
    return payload


def decode_goodbye(payload: bytes) -> Goodbye:
    return Goodbye(_text(payload, "GOODBYE"))


def decode_error(payload: bytes) -> PeerError:
    if len(payload) < 2:
        raise _malformed("ERROR frame too short")
    (code,) = _U16.unpack_from(payload, 0)
    return PeerError(code, _text(payload[2:], "ERROR"))


def _json(payload: bytes, what: str, *, versioned: bool = True) -> dict[str, Any]:
    try:
        obj = json.loads(_text(payload, what))
    except (ValueError, RecursionError) as exc:  # bad JSON, or nested too deep
        raise _malformed(f"{what} is not a JSON object") from exc
    if not isinstance(obj, dict):
        raise _malformed(f"{what} is not a JSON object")
    if versioned:
        version = obj.get("version")
        if type(version) is not int or version != PROTOCOL_VERSION:
            raise BadFrame(
                ErrorCode.UNSUPPORTED_VERSION,
                f"protocol version {version!r} not supported (this side speaks {PROTOCOL_VERSION})",
            )
    return obj


def _hex(obj: dict[str, Any], key: str, least: int, most: int) -> bytes:
    """A hex field of a JSON frame, of ``least`` to ``most`` bytes."""
    value = obj.get(key, "")
    try:
        raw = bytes.fromhex(value) if isinstance(value, str) else None
    except ValueError:
        raw = None
    if raw is None or not least <= len(raw) <= most:
        raise _malformed(f"{key} must be {least} to {most} bytes in hex")
    return raw


def decode_hello(payload: bytes) -> Hello:
    obj = _json(payload, "HELLO")
    name = obj.get("name")
    agent = obj.get("agent", "")
    if not (name is None or isinstance(name, str)) or not isinstance(agent, str):
        raise _malformed("HELLO fields have the wrong types")
    session = obj.get("session")
    if not (session is None or (isinstance(session, str) and 0 < len(session) <= 64)):
        raise _malformed("HELLO session must be a string of 1 to 64 characters")
    if name is not None and not valid_name(name):
        raise BadFrame(
            ErrorCode.INVALID_NAME,
            f"invalid name {name[:40]!r}: use 1 to {MAX_NAME_LENGTH} letters, digits, . _ -",
        )
    return Hello(PROTOCOL_VERSION, name, agent, session)


def decode_welcome(payload: bytes) -> Welcome:
    obj = _json(payload, "WELCOME")
    agent = obj.get("agent", "")
    limits = obj.get("limits", {})
    name = obj.get("name")
    if (
        not isinstance(agent, str)
        or not isinstance(limits, dict)
        or not (name is None or isinstance(name, str))
    ):
        raise _malformed("WELCOME fields have the wrong types")
    return Welcome(PROTOCOL_VERSION, agent, limits, name, obj.get("stable_ids") is True)


def decode_stats(payload: bytes) -> StatsFrame:
    """A request for the server's counters (``{}``), or the server's answer to one."""
    return StatsFrame(_json(payload, "STATS", versioned=False))


def decode_challenge(payload: bytes) -> Challenge:
    obj = _json(payload, "CHALLENGE", versioned=False)
    return Challenge(_hex(obj, "challenge", 16, 64), _hex(obj, "salt", 0, 64))


def decode_auth(payload: bytes) -> Auth:
    return Auth(_hex(_json(payload, "AUTH", versioned=False), "answer", 32, 32))
