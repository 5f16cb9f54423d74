"""The frame layout of docs/protocol.md: constants, and bytes for each frame type.

Every frame is ``length:u32 | type:u8 | payload``, big-endian, where ``length`` counts
the type byte and the payload. Encoders here build whole frames; the incremental
parser lives in ``protocol.py`` beside the state it needs.
"""

from __future__ import annotations

import json
from enum import IntEnum
from struct import Struct
from typing import Any

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
