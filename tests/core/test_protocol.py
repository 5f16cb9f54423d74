"""The sans-I/O core: two in-memory peers, every frame type, every kind of bad input."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from telex.core import frames
from telex.core.events import (
    Ack,
    AckStatus,
    ErrorCode,
    Goodbye,
    Hello,
    Message,
    MessageTooLarge,
    PeerError,
    Ping,
    Pong,
    ProtocolViolation,
    Welcome,
)
from telex.core.frames import PREAMBLE, FrameType
from telex.core.protocol import Connection, Role, State, looks_framed


def handshake(max_message_size: int = 1024) -> tuple[Connection, Connection]:
    client = Connection(Role.CLIENT, max_message_size=max_message_size)
    server = Connection(Role.SERVER, max_message_size=max_message_size)
    client.initiate(name="alice", agent="test")
    assert server.receive_data(client.data_to_send()) == [Hello(1, "alice", "test")]
    server.send_welcome(agent="srv", limits={"max_message_size": max_message_size})
    assert client.receive_data(server.data_to_send()) == [
        Welcome(1, "srv", {"max_message_size": max_message_size})
    ]
    return client, server


def opened_server(max_message_size: int = 1024) -> Connection:
    return handshake(max_message_size)[1]


def violation(events: list[object]) -> ProtocolViolation:
    assert events, "expected a violation"
    last = events[-1]
    assert isinstance(last, ProtocolViolation), events
    return last


def error_frame(conn: Connection) -> tuple[int, str]:
    data = conn.data_to_send()
    index = data.rfind(bytes([FrameType.ERROR]), 0)
    length, ftype, code = frames.ERROR_HEAD.unpack_from(data, index - 4)
    assert ftype == FrameType.ERROR
    return code, data[index + 3 : index - 4 + 4 + length].decode()


# -- the exchange -------------------------------------------------------------------------


def test_handshake_opens_both_sides() -> None:
    client, server = handshake()
    assert client.state is State.OPEN
    assert server.state is State.OPEN


def test_messages_and_acks_round_trip() -> None:
    client, server = handshake()
    ids = [client.send_message("héllo"), client.send_message(b"\x00\xff"), client.send_message("")]
    assert ids == [1, 2, 3]
    events = server.receive_data(client.data_to_send())
    assert events == [Message(1, "héllo"), Message(2, b"\x00\xff"), Message(3, "")]
    server.send_ack(1, "received")
    server.send_ack(2, b"\x01")
    server.send_rejection(3, AckStatus.REFUSED, "empty")
    acks = client.receive_data(server.data_to_send())
    assert acks == [
        Ack(1, 0, "", "received"),
        Ack(2, 0, "", b"\x01"),
        Ack(3, AckStatus.REFUSED, "empty", b""),
    ]
    assert acks[0].ok and not acks[2].ok


def test_server_can_send_messages_to_the_client() -> None:
    client, server = handshake()
    server.send_message("from the server")
    assert client.receive_data(server.data_to_send()) == [Message(1, "from the server")]
    client.send_ack(1, "thanks")
    assert server.receive_data(client.data_to_send()) == [Ack(1, 0, "", "thanks")]


def test_ack_reply_cache_follows_the_reply() -> None:
    client, server = handshake()
    for _ in range(3):
        client.send_message("x")
    server.receive_data(client.data_to_send())
    server.send_ack(1, "same")
    server.send_ack(2, "same")
    server.send_ack(3, "other")
    assert [a.reply for a in client.receive_data(server.data_to_send())] == [
        "same",
        "same",
        "other",
    ]  # type: ignore[union-attr]


def test_ping_is_answered_with_pong() -> None:
    client, server = handshake()
    client.send_ping(42)
    payload = struct.pack(">Q", 42)
    assert server.receive_data(client.data_to_send()) == [Ping(payload)]
    assert server.data_to_send() == b""  # the PONG is the caller's, in its turn
    server.send_pong(payload)
    assert client.receive_data(server.data_to_send()) == [Pong(payload)]


def test_goodbye_then_message_is_a_violation() -> None:
    client, server = handshake()
    client.send_goodbye("done")
    client.send_goodbye("twice is once")
    assert server.receive_data(client.data_to_send()) == [Goodbye("done")]
    bad = frames.message(1, b"late", 0)
    assert violation(server.receive_data(bad)).code == ErrorCode.UNEXPECTED_FRAME


def test_acks_still_flow_after_goodbye() -> None:
    client, server = handshake()
    client.send_message("last")
    client.send_goodbye()
    events = server.receive_data(client.data_to_send())
    assert events == [Message(1, "last"), Goodbye("")]
    server.send_ack(1, "ok")
    assert client.receive_data(server.data_to_send()) == [Ack(1, 0, "", "ok")]


def test_error_frame_is_reported_and_closes() -> None:
    client, server = handshake()
    server.send_error(ErrorCode.IDLE_TIMEOUT, "silent for 60 s")
    assert client.receive_data(server.data_to_send()) == [PeerError(9, "silent for 60 s")]
    assert client.state is State.CLOSED
    assert client.receive_data(b"anything") == []


def test_looks_framed() -> None:
    assert looks_framed(b"") is None
    assert looks_framed(PREAMBLE[:1]) is True
    assert looks_framed(b"hello\n") is False


# -- splitting ----------------------------------------------------------------------------


def stream_and_events() -> tuple[bytes, list[object]]:
    client = Connection(Role.CLIENT)
    client.initiate(name="n")
    for i in range(5):
        client.send_message(f"message {i}")
    client.send_message(b"\x00" * 300)
    client.send_ping(7)
    client.send_goodbye("bye")
    expected: list[object] = [Hello(1, "n", "")]
    expected += [Message(i + 1, f"message {i}") for i in range(5)]
    expected += [Message(6, b"\x00" * 300), Ping(struct.pack(">Q", 7)), Goodbye("bye")]
    return client.data_to_send(), expected


def feed(chunks: list[bytes]) -> list[object]:
    server = Connection(Role.SERVER)
    events: list[object] = []
    for chunk in chunks:
        events += server.receive_data(chunk)
    return events


def test_every_single_split_point_gives_the_same_events() -> None:
    data, expected = stream_and_events()
    for cut in range(len(data) + 1):
        assert feed([data[:cut], data[cut:]]) == expected, cut


def test_one_byte_at_a_time() -> None:
    data, expected = stream_and_events()
    assert feed([data[i : i + 1] for i in range(len(data))]) == expected


@given(st.lists(st.integers(min_value=0, max_value=2000), max_size=30))
def test_any_split_gives_the_same_events(cuts: list[int]) -> None:
    data, expected = stream_and_events()
    points = sorted({min(c, len(data)) for c in cuts})
    chunks = [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]
    assert feed(chunks) == expected


# -- bad input ------------------------------------------------------------------------------


def test_bad_preamble() -> None:
    server = Connection(Role.SERVER)
    found = violation(server.receive_data(b"\x89NOPE\r\n\x1a\n"))
    assert found.code == ErrorCode.BAD_PREAMBLE
    assert server.data_to_send() == PREAMBLE  # the ERROR is the caller's to send, last
    server.send_error(ErrorCode(found.code), found.reason)
    assert error_frame(server)[0] == ErrorCode.BAD_PREAMBLE


def test_bad_preamble_detected_early() -> None:
    server = Connection(Role.SERVER)
    assert violation(server.receive_data(b"\x89X")).code == ErrorCode.BAD_PREAMBLE


def test_message_before_handshake() -> None:
    server = Connection(Role.SERVER)
    events = server.receive_data(PREAMBLE + frames.message(1, b"early", 0))
    assert violation(events).code == ErrorCode.UNEXPECTED_FRAME


def test_second_handshake() -> None:
    _, server = handshake()
    hello = frames.json_frame(FrameType.HELLO, {"version": 1})
    found = violation(server.receive_data(hello))
    assert found.code == ErrorCode.UNEXPECTED_FRAME
    assert "second handshake" in found.reason
    server.send_error(ErrorCode(found.code), found.reason)
    assert error_frame(server) == (ErrorCode.UNEXPECTED_FRAME, found.reason)


def test_unknown_frame_type() -> None:
    server = opened_server()
    events = server.receive_data(frames.HEADER.pack(1, 0x7E))
    assert violation(events).code == ErrorCode.UNKNOWN_FRAME_TYPE


def test_invalid_utf8_in_a_text_message() -> None:
    server = opened_server()
    events = server.receive_data(frames.message(1, b"\xff\xfe", frames.FLAG_TEXT))
    assert violation(events).code == ErrorCode.INVALID_UTF8


def test_invalid_utf8_in_a_goodbye() -> None:
    server = opened_server()
    events = server.receive_data(frames.HEADER.pack(3, FrameType.GOODBYE) + b"\xc3\x28")
    assert violation(events).code == ErrorCode.INVALID_UTF8


def test_invalid_json_in_hello() -> None:
    server = Connection(Role.SERVER)
    events = server.receive_data(PREAMBLE + frames.HEADER.pack(4, FrameType.HELLO) + b"{{{")
    assert violation(events).code == ErrorCode.MALFORMED_FRAME


def test_unsupported_version() -> None:
    server = Connection(Role.SERVER)
    hello = frames.json_frame(FrameType.HELLO, {"version": 99})
    assert violation(server.receive_data(PREAMBLE + hello)).code == ErrorCode.UNSUPPORTED_VERSION


def test_message_frame_too_short() -> None:
    server = opened_server()
    events = server.receive_data(frames.HEADER.pack(3, FrameType.MESSAGE) + b"ab")
    assert violation(events).code == ErrorCode.MALFORMED_FRAME


def test_message_id_must_increase() -> None:
    server = opened_server()
    events = server.receive_data(frames.message(5, b"a", 0) + frames.message(5, b"b", 0))
    assert events[0] == Message(5, b"a")
    assert violation(events).code == ErrorCode.ID_NOT_INCREASING


def test_messages_before_a_violation_are_kept() -> None:
    server = opened_server()
    events = server.receive_data(frames.message(1, b"good", 0) + b"\x00\x00\x00\x01\x7f")
    assert events[0] == Message(1, b"good")
    violation(events)


def test_oversized_message_is_rejected_and_skipped() -> None:
    server = opened_server(max_message_size=100)
    big = frames.message(1, b"x" * 1000, 0)
    after = frames.message(2, b"fine", 0)
    events: list[object] = []
    for i in range(0, len(big), 64):  # its body arrives in pieces and is never kept
        events += server.receive_data(big[i : i + 64])
        assert server.buffered <= 14
    events += server.receive_data(after)
    assert events == [MessageTooLarge(1, 1000, 100), Message(2, b"fine")]
    assert events[0].reason == "message of 1000 bytes is over the limit of 100"  # type: ignore[attr-defined]


def test_absurd_length_is_an_error() -> None:
    server = opened_server(max_message_size=100)
    events = server.receive_data(frames.MESSAGE_HEAD.pack(0xFFFFFFFF, FrameType.MESSAGE, 1, 0))
    assert violation(events).code == ErrorCode.FRAME_TOO_LARGE


def test_oversized_control_frame_is_an_error() -> None:
    server = opened_server()
    events = server.receive_data(frames.HEADER.pack(10_000_000, FrameType.GOODBYE))
    assert violation(events).code == ErrorCode.FRAME_TOO_LARGE


def test_truncated_frame_at_eof() -> None:
    server = opened_server()
    assert server.receive_data(frames.message(1, b"cut short", 0)[:-3]) == []
    assert violation(server.receive_eof()).code == ErrorCode.TRUNCATED_FRAME


def test_clean_eof_is_not_a_violation() -> None:
    server = opened_server()
    server.receive_data(frames.message(1, b"whole", 0))
    assert server.receive_eof() == []


@pytest.mark.parametrize(
    "payload",
    [b"", b"\x00", b"\x00" * 9, struct.pack(">QBBH", 1, 0, 0, 50) + b"short"],
)
def test_malformed_ack(payload: bytes) -> None:
    client, _ = handshake()
    events = client.receive_data(frames.HEADER.pack(1 + len(payload), FrameType.ACK) + payload)
    assert violation(events).code == ErrorCode.MALFORMED_FRAME


def test_nothing_is_read_after_a_violation() -> None:
    server = opened_server()
    violation(server.receive_data(frames.HEADER.pack(1, 0x7E)))
    assert server.receive_data(frames.message(1, b"more", 0)) == []


# -- any input at all ---------------------------------------------------------------------


@settings(max_examples=300)
@given(st.lists(st.binary(max_size=300), max_size=20), st.booleans())
def test_random_input_gives_events_or_a_violation(chunks: list[bytes], with_preamble: bool) -> None:
    server = Connection(Role.SERVER, max_message_size=1000)
    if with_preamble:
        chunks = [PREAMBLE + frames.json_frame(FrameType.HELLO, {"version": 1}), *chunks]
    events: list[object] = []
    for chunk in chunks:
        events += server.receive_data(chunk)
        # Memory stays bounded: never more than one frame of the largest allowed size.
        assert server.buffered <= 1000 + frames.CONTROL_FRAME_LIMIT
    events += server.receive_eof()
    for index, event in enumerate(events):
        if isinstance(event, ProtocolViolation):
            assert index == len(events) - 1
            assert server.state is State.CLOSED


@given(st.binary(min_size=1, max_size=64))
def test_random_frames_after_handshake(junk: bytes) -> None:
    server = opened_server(max_message_size=64)
    server.receive_data(junk)
    server.receive_eof()
    server.data_to_send()


# -- names and routed messages --------------------------------------------------------------


def test_routed_messages_carry_the_recipient_then_the_sender() -> None:
    client, server = handshake()
    client.send_message("for bob", name="bob")
    assert server.receive_data(client.data_to_send()) == [Message(1, "for bob", to="bob")]
    server.send_message("from alice", name="alice")
    assert client.receive_data(server.data_to_send()) == [Message(1, "from alice", sender="alice")]


def test_routed_split_anywhere() -> None:
    client = Connection(Role.CLIENT)
    client.initiate()
    client.send_message(b"\x00bin", name="bob")
    client.send_message("text", name="carol")
    data = client.data_to_send()
    expected = [
        Hello(1, None, ""),
        Message(1, b"\x00bin", to="bob"),
        Message(2, "text", to="carol"),
    ]
    for cut in range(len(data) + 1):
        assert feed([data[:cut], data[cut:]]) == expected


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (struct.pack(">QBB", 1, 0, 200) + b"bob", ErrorCode.MALFORMED_FRAME),
        (struct.pack(">QBB", 1, 0, 3) + b"b b", ErrorCode.INVALID_NAME),
        (struct.pack(">QBB", 1, 0, 2) + b"\xff\xfe", ErrorCode.INVALID_UTF8),
        (struct.pack(">QBB", 1, 1, 3) + b"bob\xff", ErrorCode.INVALID_UTF8),
        (struct.pack(">QB", 1, 0), ErrorCode.MALFORMED_FRAME),
    ],
)
def test_bad_routed_frames(payload: bytes, code: ErrorCode) -> None:
    server = opened_server()
    events = server.receive_data(frames.HEADER.pack(1 + len(payload), FrameType.ROUTED) + payload)
    assert violation(events).code == code


def test_oversized_routed_message_is_rejected() -> None:
    server = opened_server(max_message_size=10)
    big = frames.routed(1, b"bob", b"x" * 100, 0)
    events = server.receive_data(big + frames.message(2, b"ok", 0))
    assert [type(e) for e in events] == [MessageTooLarge, Message]


def test_names_are_checked_in_hello() -> None:
    for name, good in [("alice", True), ("a.b-c_d9", True), ("Ünïcode", True), ("", False),
                       ("two words", False), ("@bob", False), ("x" * 33, False)]:  # fmt: skip
        server = Connection(Role.SERVER)
        hello = frames.json_frame(FrameType.HELLO, {"version": 1, "name": name})
        events = server.receive_data(PREAMBLE + hello)
        if good:
            assert events == [Hello(1, name, "")]
        else:
            assert violation(events).code == ErrorCode.INVALID_NAME


def test_welcome_carries_the_name() -> None:
    client = Connection(Role.CLIENT)
    server = Connection(Role.SERVER)
    client.initiate()
    server.receive_data(client.data_to_send())
    server.send_welcome(name="guest-1")
    assert client.receive_data(server.data_to_send()) == [Welcome(1, "", {}, "guest-1")]


def test_ack_with_a_text_reply_that_is_not_utf8() -> None:
    client, _ = handshake()
    bad = frames.ack(1, 0, b"", b"\xff\xfe", frames.FLAG_TEXT)
    assert violation(client.receive_data(bad)).code == ErrorCode.INVALID_UTF8


def test_ack_with_a_reason_takes_the_checked_path() -> None:
    client, _ = handshake()
    data = frames.ack(1, 2, b"nope", b"", 0) + frames.ack(2, 0, b"", b"ok", 0)
    assert client.receive_data(data) == [Ack(1, 2, "nope", b""), Ack(2, 0, "", b"ok")]
