"""The short fuzz run: every target of fuzz/targets.py under Hypothesis, and a few
seconds of fuzzing a live ``telex serve`` (fuzz/live.py). docs/fuzzing.md says what
each target asserts and how to run them longer:

    TELEX_FUZZ_EXAMPLES=200000 pytest tests/fuzz -p no:cacheprovider --hypothesis-show-statistics
    TELEX_FUZZ_SECONDS=600 pytest tests/fuzz -k live

Inputs are any bytes, and inputs built from the frame grammar of tests/core/test_split.py
(valid and invalid streams, split at any points, some of them mutated).
"""

from __future__ import annotations

import os
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fuzz import live
from fuzz.targets import (
    BROKER_SIZES,
    DECODED,
    TARGETS,
    TEXT_SIZES,
    FuzzFailure,
    broker,
    broker_idle,
    broker_input,
    decoders,
    decoders_input,
    framed,
    framed_input,
    seed_inputs,
    text,
    text_input,
)
from telex.core import frames
from telex.core.events import ErrorCode, Event, Message
from telex.core.frames import PREAMBLE, FrameType
from telex.core.protocol import Role
from telex.core.textmode import TextConnection
from tests.core.test_split import CUTS, JSON_VALUES, TEXT_BYTES, any_frame, random_input, streams

LONG_RUN = int(os.environ.get("TELEX_FUZZ_EXAMPLES", "0"))
"""Examples per property for the long run (0: the short run's own small numbers)."""
LIVE_SECONDS = float(os.environ.get("TELEX_FUZZ_SECONDS", "3"))

if LONG_RUN:
    pytestmark = pytest.mark.timeout(0)  # the long run is bounded by its example count


def fuzzing(examples: int) -> settings:
    return settings(
        max_examples=LONG_RUN or examples,
        deadline=None,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.filter_too_much,
            HealthCheck.large_base_example,
        ],
    )


# -- inputs ---------------------------------------------------------------------------------

ANY_BYTES = st.binary(max_size=3000)


@st.composite
def mutated(draw: st.DrawFn, data: bytes) -> bytes:
    """``data`` with a few bytes changed, inserted or deleted, or cut short."""
    buf = bytearray(data)
    for _ in range(draw(st.integers(0, 4))):
        if not buf:
            break
        at = draw(st.integers(0, len(buf) - 1))
        op = draw(st.sampled_from(["set", "flip", "insert", "delete", "cut"]))
        if op == "set":
            buf[at] = draw(st.integers(0, 255))
        elif op == "flip":
            buf[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "insert":
            buf[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del buf[at : at + draw(st.integers(1, 8))]
        else:
            del buf[at:]
    return bytes(buf)


def grammar(role: Role) -> st.SearchStrategy[tuple[int, bytes]]:
    """(max_size, stream) from the grammar of valid and invalid frames, sometimes mutated."""
    return streams(role, wide=True).flatmap(
        lambda s: st.tuples(st.just(s.max_size), st.just(s.data) | mutated(s.data))
    )


@st.composite
def framed_inputs(draw: st.DrawFn) -> bytes:
    role = draw(st.sampled_from(Role))
    max_size, stream = draw(grammar(role))
    auth = role is Role.SERVER and draw(st.booleans())
    return framed_input(role, max_size, stream, draw(CUTS)[:15], requires_auth=auth)


@st.composite
def framed_random_inputs(draw: st.DrawFn) -> bytes:
    """tests/core/test_split.py's random input: headers near the limits, any payloads."""
    role, max_size, stream = draw(random_input())
    return framed_input(role, max_size, stream, draw(CUTS)[:15])


@st.composite
def text_inputs(draw: st.DrawFn) -> bytes:
    return text_input(
        draw(st.sampled_from(TEXT_SIZES)),
        draw(TEXT_BYTES | TEXT_BYTES.flatmap(mutated)),
        draw(CUTS)[:15],
        draw(st.sampled_from([0, 0, 0b1, 0b101, 0xFF])),
    )


JSON_KEYS = ["version", "agent", "name", "session", "limits", "stable_ids"]
JSON_KEYS += ["challenge", "salt", "answer", "future"]


@st.composite
def decoder_inputs(draw: st.DrawFn) -> bytes:
    """A JSON object of the frames' keys (with version 1 often), or any frame's payload."""
    frame_type = draw(st.sampled_from(sorted(DECODED)))
    if draw(st.booleans()):
        obj = draw(st.dictionaries(st.sampled_from(JSON_KEYS), JSON_VALUES, max_size=6))
        if draw(st.booleans()):
            obj["version"] = 1
        for key in ("challenge", "salt", "answer"):
            if key in obj and draw(st.booleans()):
                obj[key] = draw(st.binary(max_size=70)).hex()
        payload = frames.json_frame(frame_type, obj)[5:]
    else:
        payload = draw(any_frame())[5:]
    return decoders_input(frame_type, payload)


@st.composite
def broker_inputs(draw: st.DrawFn) -> bytes:
    if draw(st.integers(0, 3)):
        _, stream = draw(grammar(Role.SERVER))
    else:
        stream = draw(TEXT_BYTES)
    return broker_input(
        stream,
        draw(CUTS)[:15],
        stored=draw(st.booleans()),
        is_async=draw(st.booleans()),
        max_size=draw(st.sampled_from(BROKER_SIZES)),
        two=draw(st.booleans()),
        order=draw(st.integers(0, 255)),
    )


# -- the targets under Hypothesis -----------------------------------------------------------


@fuzzing(200)
@given(data=ANY_BYTES)
def test_framed_any_bytes(data: bytes) -> None:
    framed(data)


@fuzzing(150)
@given(data=framed_inputs())
def test_framed_streams(data: bytes) -> None:
    framed(data)


@fuzzing(60)
@given(data=framed_random_inputs())
def test_framed_near_the_limits(data: bytes) -> None:
    framed(data)


@fuzzing(200)
@given(data=ANY_BYTES)
def test_text_any_bytes(data: bytes) -> None:
    text(data)


@fuzzing(200)
@given(data=text_inputs())
def test_text_lines(data: bytes) -> None:
    text(data)


@fuzzing(300)
@given(data=ANY_BYTES)
def test_decoders_any_bytes(data: bytes) -> None:
    decoders(data)


@fuzzing(300)
@given(data=decoder_inputs())
def test_decoders_frames(data: bytes) -> None:
    decoders(data)


@fuzzing(150)
@given(data=ANY_BYTES)
def test_broker_any_bytes(data: bytes) -> None:
    broker(data)


@fuzzing(120)
@given(data=broker_inputs())
def test_broker_streams(data: bytes) -> None:
    broker(data)


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_every_seed_passes(name: str) -> None:
    """The seed corpus of fuzz/atheris_main.py: valid streams, which every target takes."""
    for data in seed_inputs(name):
        TARGETS[name](data)


# -- the live server -----------------------------------------------------------------------


@pytest.mark.timeout(max(60.0, LIVE_SECONDS + 90.0))
def test_live_server() -> None:
    """A real ``telex serve`` keeps answering a good client in order while other
    connections send it fuzz, and stops without a traceback."""
    report = live.run(LIVE_SECONDS)
    print(report.summary())
    assert report.total > 0
    assert report.good_messages > 0


# -- the harness bites: a core that breaks a promise fails its target -------------------------


def test_framed_catches_a_parser_that_forgets_the_split(monkeypatch: pytest.MonkeyPatch) -> None:
    from telex.core import protocol

    real = protocol.Connection.receive_data

    def forgetful(self: protocol.Connection, data: bytes) -> list[Event]:
        return real(self, data[:-1] if len(data) > 1 else data)  # drops a byte of each read

    monkeypatch.setattr(protocol.Connection, "receive_data", forgetful)
    stream = PREAMBLE + frames.json_frame(FrameType.HELLO, {"version": 1})
    with pytest.raises(FuzzFailure):
        framed(framed_input(Role.SERVER, 300, stream + frames.message(1, b"hi", 0), [10, 20]))


def test_text_catches_a_line_it_changes(monkeypatch: pytest.MonkeyPatch) -> None:
    real = TextConnection._end_line

    def sloppy(self: TextConnection) -> Event:
        event = real(self)
        return event._replace(body="?") if isinstance(event, Message) else event

    monkeypatch.setattr(TextConnection, "_end_line", sloppy)
    with pytest.raises(FuzzFailure):
        text(text_input(300, b"hello\n"))


def test_broker_catches_a_lost_ack(monkeypatch: pytest.MonkeyPatch) -> None:
    from telex.core import protocol

    real = protocol.Connection.send_ack

    def lossy(self: protocol.Connection, msg_id: int, *args: Any, **kwargs: Any) -> None:
        if msg_id != 2:
            real(self, msg_id, *args, **kwargs)

    monkeypatch.setattr(protocol.Connection, "send_ack", lossy)
    with pytest.raises(FuzzFailure):
        broker(broker_input(b"a text peer\n"))


# -- bugs the fuzzers found (docs/fuzzing.md): reproducers, to pass once fixed ---------------

HELLO = PREAMBLE + frames.json_frame(FrameType.HELLO, {"version": 1, "name": "alice"})


def test_idle_timeout_closes_a_client_waiting_for_its_own_ack() -> None:
    """alice routes a message to herself, then goes silent; without a store, her ACK
    waits for her own ack of the forwarded copy. docs/limits.md: after idle_timeout,
    ERROR 9 and close (it was never closed: its answer waited for an ack that could not
    come; the same with two silent clients routing to each other)."""
    broker_idle(broker_input(HELLO + frames.routed(1, b"alice", b"to myself", 0)))


def test_no_frames_before_welcome_when_the_peer_sends_error() -> None:
    """HELLO, MESSAGE and ERROR in one read: WELCOME comes first, then the ACK, as when
    the ERROR comes in a read of its own (it was an ACK alone, without its WELCOME)."""
    error = frames.error(ErrorCode.INTERNAL_ERROR, "bye")
    broker(broker_input(HELLO + frames.message(1, b"hi", 0) + error))
