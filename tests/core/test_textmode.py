"""Plain-text peers without I/O: lines, partial lines after a pause, limits."""

from __future__ import annotations

from telex.core.events import AckStatus, ErrorCode, Message, MessageTooLarge
from telex.core.textmode import TextConnection, answer_line, text_body


def test_each_line_is_a_numbered_message() -> None:
    conn = TextConnection(max_message_size=100)
    assert conn.receive_data(b"one\r\ntwo\nthr") == [Message(1, "one"), Message(2, "two")]
    assert conn.has_partial
    assert conn.receive_data(b"ee\n") == [Message(3, "three")]
    assert not conn.has_partial


def test_a_partial_line_is_a_message_after_a_pause() -> None:
    conn = TextConnection(max_message_size=100)
    assert conn.receive_data(b"hello") == []
    assert conn.flush() == [Message(1, "hello")]
    assert conn.flush() == []
    # the newline that comes late does not make an empty message
    assert conn.receive_data(b"\nnext\n") == [Message(2, "next")]


def test_empty_lines_are_messages() -> None:
    conn = TextConnection(max_message_size=100)
    assert conn.receive_data(b"\n\n") == [Message(1, ""), Message(2, "")]


def test_binary_lines_stay_bytes() -> None:
    conn = TextConnection(max_message_size=100)
    assert conn.receive_data(b"\xff\x00\n") == [Message(1, b"\xff\x00")]
    assert text_body(b"ok") == "ok"


def test_long_line_is_rejected_and_the_next_one_is_fine() -> None:
    conn = TextConnection(max_message_size=10)
    events = conn.receive_data(b"x" * 8)
    events += conn.receive_data(b"y" * 8)
    events += conn.receive_data(b"z" * 8 + b"\nshort\n")
    assert events == [MessageTooLarge(1, 24, 10), Message(2, "short")]
    assert events[0].reason == "message of 24 bytes is over the limit of 10"  # type: ignore[union-attr]


def test_answers_are_single_lines() -> None:
    conn = TextConnection(max_message_size=10)
    conn.send_ack(1, "two\nlines")
    conn.send_rejection(2, AckStatus.REFUSED, "no")
    conn.send_goodbye("server shutting down")
    conn.send_error(ErrorCode.IDLE_TIMEOUT, "silent")
    conn.send_error(ErrorCode.IDLE_TIMEOUT, "only once")
    assert conn.data_to_send() == (
        b"ack 1: two lines\nrejected 2: no\nbye: server shutting down\nerror: silent\n"
    )
    assert answer_line("ack 3: ", b"\xff") == b"ack 3: \\xff\n"


def test_eof_ends_the_last_line() -> None:
    conn = TextConnection(max_message_size=100)
    conn.receive_data(b"no newline")
    assert conn.receive_eof() == [Message(1, "no newline")]
