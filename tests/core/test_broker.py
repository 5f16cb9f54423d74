"""The server's promises, checked on the sans-I/O broker over an in-memory network.

Every test drives ``telex.core.broker.Broker`` through ``broker_harness.Net``: clients
write bytes made by a client-side ``Connection``, the harness carries out the broker's
actions (commits into a real SQLite file, store lookups, async handler calls) at the
moments each test chooses, and each test checks the exact events its clients see.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from telex.core import frames
from telex.core.events import (
    Ack,
    AckStatus,
    Challenge,
    ErrorCode,
    Event,
    Goodbye,
    Message,
    PeerError,
    Pong,
    Receipt,
    Welcome,
)
from telex.core.handlers import Reject
from telex.core.records import Answered, Pending
from telex.security import TokenGate, answer_challenge, stretch

from .broker_harness import Net, Recorder

STORED = frames.FLAG_STORED
AWAY = frames.FLAG_AWAY
DELIVERED = frames.FLAG_DELIVERED

MakeNet = Callable[..., Net]


@pytest.fixture
def make_net(tmp_path: Path) -> Iterator[MakeNet]:
    """``make_net(stored=True, ...)``: a Net, with a SQLite store in tmp_path if asked."""
    nets: list[Net] = []

    def make(*, stored: bool = False, **options: Any) -> Net:
        path = tmp_path / f"telex-{len(nets)}.db" if stored else None
        net = Net(path=path, **options)
        nets.append(net)
        return net

    yield make
    for net in nets:
        net.close()


def welcome(name: str, *, stored: bool = False) -> Welcome:
    return Welcome(1, "", {}, name, stored)


def ok(msg_id: int, reply: Any = "ok") -> Ack:
    return Ack(msg_id, AckStatus.OK, "", reply, 0)


def stored_for(msg_id: int, name: str, *, away: bool) -> Ack:
    note = f"stored for {name}, who is not connected" if away else f"stored for {name}"
    return Ack(msg_id, AckStatus.OK, note, b"", STORED | (AWAY if away else 0))


def not_delivered(msg_id: int, reason: str) -> Ack:
    return Ack(msg_id, AckStatus.NOT_DELIVERED, reason, b"", 0)


def unavailable(msg_id: int, reason: str = "disk I/O error") -> Ack:
    return Ack(msg_id, AckStatus.UNAVAILABLE, f"the server could not store it ({reason})", b"", 0)


def error(code: ErrorCode, reason: str) -> PeerError:
    return PeerError(int(code), reason)


def echo(message: Message) -> str:
    body = message.body
    return "re:" + (body if isinstance(body, str) else body.decode())


def acked_ids(events: list[Event]) -> list[int]:
    return [event.id for event in events if type(event) is Ack]


# -- routing without a store -------------------------------------------------------------


def test_routed_without_store_ack_is_the_recipients_own_answer_flagged_delivered(
    make_net: MakeNet,
) -> None:
    net = make_net()
    alice = net.client().connect("alice")
    bob = net.client().connect("bob")

    alice.routed("bob", "hi")
    alice.routed("bob", "again")
    alice.send()
    assert alice.take() == []  # the ack waits for bob's
    assert bob.take() == [Message(1, "hi", sender="alice"), Message(2, "again", sender="alice")]

    bob.ack(1, "thanks", reason="a note")
    bob.ack(2, "later", status=AckStatus.REFUSED, reason="busy")
    bob.send()
    answers = alice.take()
    assert answers == [
        Ack(1, AckStatus.OK, "a note", "thanks", DELIVERED),
        Ack(2, AckStatus.REFUSED, "busy", "later", DELIVERED),
    ]
    assert all(ack.delivered and not ack.stored for ack in answers if type(ack) is Ack)


def test_routed_without_store_to_a_client_not_connected_is_not_delivered(
    make_net: MakeNet,
) -> None:
    net = make_net()
    alice = net.client().connect("alice")

    alice.routed("bob", "hi")
    alice.message("for the server")
    alice.send()

    assert alice.take() == [not_delivered(1, "no client named 'bob' is connected"), ok(2)]
    assert net.broker.stats.rejected == 1


@pytest.mark.parametrize("how", ["connection lost", "end of input"])
def test_routed_without_store_to_a_client_leaving_before_its_ack_is_not_delivered(
    make_net: MakeNet, how: str
) -> None:
    net = make_net()
    alice = net.client().connect("alice")
    bob = net.client().connect("bob")

    alice.routed("bob", "hi")
    alice.message("behind it")
    alice.send()
    assert bob.take() == [Message(1, "hi", sender="alice")]
    assert alice.take() == []

    if how == "connection lost":
        bob.drop()
    else:
        bob.eof()
        assert bob.closed
    assert alice.take() == [not_delivered(1, "bob disconnected before acknowledging"), ok(2)]


# -- routing with a store ------------------------------------------------------------------


def test_routed_with_store_ack_is_flagged_stored_and_away_when_recipient_not_connected(
    make_net: MakeNet,
) -> None:
    net = make_net(stored=True, auto_commit=False)
    alice = net.client().connect("alice", "alice-session")

    alice.routed("bob", "hi")
    alice.send()
    assert alice.take() == []  # nothing before it is stored
    net.commit()

    answers = alice.take()
    assert answers == [stored_for(1, "bob", away=True)]
    ack = answers[0]
    assert type(ack) is Ack and ack.ok and ack.stored and ack.away and not ack.delivered
    assert net.stored() == [("alice", "bob", 1, "hi")]


def test_routed_with_store_ack_is_flagged_stored_not_away_when_recipient_connected(
    make_net: MakeNet,
) -> None:
    net = make_net(stored=True)
    alice = net.client().connect("alice", "alice-session")
    bob = net.client().connect("bob", "bob-session")

    alice.routed("bob", "hi")
    alice.send()

    answers = alice.take()
    assert answers == [stored_for(1, "bob", away=False)]
    ack = answers[0]
    assert type(ack) is Ack and ack.stored and not ack.away and not ack.delivered
    assert bob.take() == [Message(1, "hi", sender="alice")]  # under its store number


def test_outbox_waits_and_is_delivered_in_order_when_recipient_connects_with_its_session(
    make_net: MakeNet,
) -> None:
    net = make_net(stored=True)
    alice = net.client().connect("alice", "alice-session")
    carol = net.client().connect("carol", "carol-session")

    alice.routed("bob", "one")
    alice.send()
    carol.routed("bob", "two")
    carol.send()
    alice.routed("bob", "three")
    alice.send()
    assert alice.take() == [stored_for(1, "bob", away=True), stored_for(2, "bob", away=True)]
    assert carol.take() == [stored_for(1, "bob", away=True)]

    bob = net.client()
    bob.hello("bob", "bob-session")
    bob.send()
    assert bob.take() == [
        welcome("bob", stored=True),
        Message(1, "one", sender="alice"),
        Message(2, "two", sender="carol"),
        Message(3, "three", sender="alice"),
    ]

    bob.ack(1)
    bob.ack(2)
    bob.ack(3)
    bob.send()
    bob.drop()
    again = net.client()
    again.hello("bob", "bob-session")
    again.send()
    assert again.take() == [welcome("bob", stored=True)]  # acknowledged: no longer waiting


def test_outbox_message_not_acked_before_recipient_leaves_waits_for_its_next_connection(
    make_net: MakeNet,
) -> None:
    net = make_net(stored=True)
    alice = net.client().connect("alice", "alice-session")
    bob = net.client().connect("bob", "bob-session")

    alice.routed("bob", "hi")
    alice.send()
    assert alice.take() == [stored_for(1, "bob", away=False)]
    assert bob.take() == [Message(1, "hi", sender="alice")]
    bob.drop()
    assert alice.take() == []  # no receipt: bob never answered

    bob = net.client()
    bob.hello("bob", "bob-session")
    bob.send()
    assert bob.take() == [welcome("bob", stored=True), Message(1, "hi", sender="alice")]
    bob.ack(1, "got it")
    bob.send()
    assert alice.take() == [Receipt(1, AckStatus.OK, "", "got it", DELIVERED)]


@pytest.mark.parametrize(
    ("status", "reason", "reply"),
    [(AckStatus.OK, "a note", "thanks"), (AckStatus.REFUSED, "not today", "ask again")],
)
def test_receipt_carries_recipients_status_reason_and_reply_under_senders_id(
    make_net: MakeNet, status: int, reason: str, reply: str
) -> None:
    net = make_net(stored=True)
    alice = net.client().connect("alice", "alice-session")
    alice.message("first, for the server")
    alice.send()
    assert alice.take() == [ok(1)]

    alice.routed("bob", "hi")  # alice's id 2
    alice.send()
    assert alice.take() == [stored_for(2, "bob", away=True)]

    bob = net.client()
    bob.hello("bob", "bob-session")
    bob.send()
    assert bob.take() == [welcome("bob", stored=True), Message(2, "hi", sender="alice")]
    bob.ack(2, reply, status=status, reason=reason)
    bob.send()

    assert alice.take() == [Receipt(2, status, reason, reply, DELIVERED)]


def test_receipt_never_overtakes_the_ack_waiting_behind_an_earlier_answer(
    make_net: MakeNet,
) -> None:
    net = make_net(stored=True, handler_is_async=True)
    alice = net.client().connect("alice", "alice-session")
    bob = net.client().connect("bob", "bob-session")

    alice.message("slow, for the server")
    alice.routed("bob", "hi")
    alice.send()
    # The routed message is stored and forwarded while the handler still works on 1.
    assert bob.take() == [Message(1, "hi", sender="alice")]
    bob.ack(1, "got it")
    bob.send()
    assert alice.take() == []  # the ack of 2 waits for 1's, and its receipt waits for it

    net.reply(alice, 1, "done")
    assert alice.take() == [
        ok(1, "done"),
        stored_for(2, "bob", away=False),
        Receipt(2, AckStatus.OK, "", "got it", DELIVERED),
    ]


def test_receipt_never_overtakes_the_ack_of_a_resent_message(make_net: MakeNet) -> None:
    net = make_net(stored=True, auto_commit=False)
    bob = net.client().connect("bob", "bob-session")
    alice = net.client().connect("alice", "alice-session")

    alice.routed("bob", "hi")
    alice.send()
    net.begin_commit()
    alice.drop()  # alice never sees the ack of 1: it resends it
    net.end_commit()
    assert bob.take() == [Message(1, "hi", sender="alice")]

    net.hold_lookups = True
    alice = net.client()
    alice.hello("alice", "alice-session")
    alice.send()
    net.answer_lookups()
    assert alice.take() == [welcome("alice", stored=True)]
    alice.routed("bob", "hi", msg_id=1)  # the resend waits for the store to look up id 1
    alice.send()

    bob.ack(1, "got it")  # bob answers meanwhile
    bob.send()
    net.answer_lookups()
    assert alice.take() == [
        Ack(1, AckStatus.OK, "stored for bob", b"", STORED),
        Receipt(1, AckStatus.OK, "", "got it", DELIVERED),
    ]


# -- dedup ---------------------------------------------------------------------------------


def test_resent_ids_are_acked_again_with_same_reply_not_handled_or_stored_twice(
    make_net: MakeNet,
) -> None:
    handler = Recorder(echo)
    net = make_net(stored=True, handler=handler)
    bob = net.client().connect("bob", "bob-session")
    alice = net.client().connect("alice", "alice-session")
    alice.message("one")
    alice.message("two")
    alice.routed("bob", "three")
    alice.send()
    assert alice.take() == [ok(1, "re:one"), ok(2, "re:two"), stored_for(3, "bob", away=False)]
    assert bob.take() == [Message(3, "three", sender="alice")]
    bob.ack(3)
    bob.send()
    assert alice.take() == [Receipt(3, AckStatus.OK, "", b"", DELIVERED)]
    alice.drop()

    alice = net.client()
    alice.hello("alice", "alice-session")
    alice.message("one", msg_id=1)
    alice.message("two", msg_id=2)
    alice.routed("bob", "three", msg_id=3)
    alice.message("four")
    alice.send()

    assert alice.take() == [
        welcome("alice", stored=True),
        ok(1, "re:one"),
        ok(2, "re:two"),
        Ack(3, AckStatus.OK, "stored for bob", b"", STORED),
        Receipt(3, AckStatus.OK, "", b"", DELIVERED),  # bob had it already: his answer again
        ok(4, "re:four"),
    ]
    assert handler.bodies == ["one", "two", "four"]
    assert bob.take() == []  # not forwarded again
    assert net.stored() == [
        ("alice", None, 1, "one"),
        ("alice", None, 2, "two"),
        ("alice", "bob", 3, "three"),
        ("alice", None, 4, "four"),
    ]
    assert net.broker.stats.resent == 3


def test_resent_ids_with_an_async_handler_are_acked_again_without_a_handler_call(
    make_net: MakeNet,
) -> None:
    net = make_net(stored=True, handler_is_async=True)
    alice = net.client().connect("alice", "alice-session")
    alice.message("one")
    alice.send()
    net.reply(alice, 1, "handled once")
    assert alice.take() == [ok(1, "handled once")]
    alice.drop()

    alice = net.client()
    alice.hello("alice", "alice-session")
    alice.message("one", msg_id=1)
    alice.message("two")
    alice.send()
    assert [job.id for job in net.jobs] == [2]  # the handler sees only the new one
    net.reply(alice, 2, "handled")

    assert alice.take() == [
        welcome("alice", stored=True),
        ok(1, "handled once"),
        ok(2, "handled"),
    ]
    assert net.stored() == [("alice", None, 1, "one"), ("alice", None, 2, "two")]


def test_resend_while_the_first_copy_is_being_committed_is_not_stored_twice(
    make_net: MakeNet,
) -> None:
    handler = Recorder(echo)
    net = make_net(stored=True, handler=handler, auto_commit=False)
    alice = net.client().connect("alice", "alice-session")
    alice.message("one")
    alice.send()
    net.begin_commit()  # the store is writing message 1 ...
    alice.drop()  # ... when alice's connection dies, before it sees the ack

    alice = net.client()
    alice.hello("alice", "alice-session")  # the store answers the session lookup first
    alice.message("one", msg_id=1)
    alice.send()
    net.end_commit()
    if net.commit_asked:
        net.commit()

    assert alice.take() == [welcome("alice", stored=True), ok(1, "re:one")]
    assert handler.bodies == ["one"]
    assert net.stored() == [("alice", None, 1, "one")]


# -- answer order ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "steps",
    [
        ["h1", "h2", "commit"],
        ["h2", "h1", "commit"],
        ["commit", "h2", "commit", "h1", "commit"],
        ["h2", "commit", "h1", "commit"],
        ["begin", "h2", "h1", "end", "commit"],
        ["begin", "h2", "end", "commit", "h1", "commit"],
        ["h1", "begin", "h2", "end", "commit"],
        ["h2", "begin", "h1", "end", "commit"],
    ],
    ids="-".join,
)
def test_answers_keep_arrival_order_with_store_and_async_handler(
    make_net: MakeNet, steps: list[str]
) -> None:
    net = make_net(stored=True, handler_is_async=True, auto_commit=False)
    alice = net.client().connect("alice", "alice-session")
    alice.message("one")
    alice.message("two")
    alice.routed("bob", "three")
    alice.send()

    seen: list[Event] = []
    for step in steps:
        if step == "h1":
            net.reply(alice, 1, "r1")
        elif step == "h2":
            net.reply(alice, 2, "r2")
        elif step == "begin":
            assert net.begin_commit() is not None
        elif step == "end":
            net.end_commit()
        else:
            net.commit()
        seen += alice.take()
        assert acked_ids(seen) == [1, 2, 3][: len(seen)], (step, seen)

    assert seen == [ok(1, "r1"), ok(2, "r2"), stored_for(3, "bob", away=True)]
    assert not net.commit_asked and net.committing is None


@pytest.mark.parametrize("handler_answers", ["1 then 2", "2 then 1"])
def test_answers_keep_arrival_order_with_async_handler_and_routed_without_store(
    make_net: MakeNet, handler_answers: str
) -> None:
    net = make_net(handler_is_async=True)
    alice = net.client().connect("alice")
    bob = net.client().connect("bob")
    alice.message("one")
    alice.routed("bob", "two")
    alice.message("three")
    alice.send()
    assert bob.take() == [Message(1, "two", sender="alice")]
    bob.ack(1, "from bob")
    bob.send()
    assert alice.take() == []

    order = [1, 3] if handler_answers == "1 then 2" else [3, 1]
    for msg_id in order:
        net.reply(alice, msg_id, f"r{msg_id}")
    assert alice.take() == [
        ok(1, "r1"),
        Ack(2, AckStatus.OK, "", "from bob", DELIVERED),
        ok(3, "r3"),
    ]


# -- GOODBYE ---------------------------------------------------------------------------------


@pytest.mark.parametrize("handler_is_async", [False, True], ids=["sync", "async"])
def test_goodbye_after_messages_in_one_write_acks_both_then_goodbye_then_close(
    make_net: MakeNet, handler_is_async: bool
) -> None:
    net = make_net(stored=True, handler_is_async=handler_is_async, auto_commit=False)
    alice = net.client().connect("alice", "alice-session")
    alice.message("one")
    alice.message("two")
    alice.goodbye("done")
    alice.send()
    if handler_is_async:
        net.reply(alice, 2, "ok")
        net.reply(alice, 1, "ok")
    assert alice.take() == []
    assert not alice.closed

    net.commit()
    assert alice.take() == [ok(1), ok(2), Goodbye("goodbye")]
    assert alice.closed
    assert alice.late == b""


@pytest.mark.parametrize("reads", ["one read", "two reads"])
def test_message_after_goodbye_is_unexpected_frame(make_net: MakeNet, reads: str) -> None:
    net = make_net(stored=True, auto_commit=False)
    alice = net.client().connect("alice", "alice-session")
    alice.message("one")
    alice.goodbye()
    if reads == "two reads":
        alice.send()
    alice.message("two")
    alice.send()
    assert alice.take() == []

    net.commit()
    assert alice.take() == [
        ok(1),
        error(
            ErrorCode.UNEXPECTED_FRAME, "unexpected MESSAGE frame in state draining after GOODBYE"
        ),
    ]
    assert alice.closed
    assert net.stored() == [("alice", None, 1, "one")]


def test_message_after_goodbye_without_store_is_unexpected_frame(make_net: MakeNet) -> None:
    net = make_net()
    bob = net.client().connect("bob")
    alice = net.client().connect("alice")
    bob.routed("alice", "keeps alice's connection open")
    bob.send()
    assert alice.take() == [Message(1, "keeps alice's connection open", sender="bob")]

    alice.goodbye()
    alice.send()
    assert alice.take() == [Goodbye("goodbye")]  # open still: alice owes an ack
    assert not alice.closed
    alice.message("one")
    alice.send()

    assert alice.take() == [
        error(
            ErrorCode.UNEXPECTED_FRAME, "unexpected MESSAGE frame in state draining after GOODBYE"
        )
    ]
    assert alice.closed
    why = "alice is being closed: unexpected MESSAGE frame in state draining after GOODBYE"
    assert bob.take() == [not_delivered(1, why)]


def test_goodbye_and_message_in_one_read_without_store_end_with_unexpected_frame(
    make_net: MakeNet,
) -> None:
    net = make_net()
    alice = net.client().connect("alice")
    alice.goodbye()
    alice.message("one")
    alice.send()

    assert alice.take() == [
        Goodbye("goodbye"),
        error(
            ErrorCode.UNEXPECTED_FRAME, "unexpected MESSAGE frame in state draining after GOODBYE"
        ),
    ]
    assert alice.closed


# -- ERROR is the last frame ----------------------------------------------------------------


@pytest.mark.parametrize("stored", [False, True], ids=["no store", "store"])
def test_unknown_frame_after_hello_gets_welcome_then_error_3(
    make_net: MakeNet, stored: bool
) -> None:
    net = make_net(stored=stored)
    alice = net.client()
    alice.hello("alice", "alice-session")
    alice.raw(frames.HEADER.pack(1, 0x7F))
    alice.send()

    assert alice.take() == [
        welcome("alice", stored=stored),
        error(ErrorCode.UNKNOWN_FRAME_TYPE, "unknown frame type 127"),
    ]
    assert alice.closed
    assert alice.late == b""


@pytest.mark.parametrize("mode", ["no store", "store", "async", "store+async"])
def test_bad_utf8_message_gets_the_ack_of_the_good_one_then_error_5(
    make_net: MakeNet, mode: str
) -> None:
    net = make_net(stored="store" in mode, handler_is_async="async" in mode, auto_commit=False)
    alice = net.client().connect("alice", "alice-session")
    alice.message("good")
    alice.raw(frames.message(2, b"\xff\xfe", frames.FLAG_TEXT))
    alice.send()
    if "async" in mode:
        assert alice.take() == []
        net.reply(alice, 1, "ok")
    if "store" in mode:
        assert alice.take() == []
        net.commit()

    assert alice.take() == [ok(1), error(ErrorCode.INVALID_UTF8, "message text not UTF-8")]
    assert alice.closed


@pytest.mark.parametrize("stored", [False, True], ids=["no store", "store"])
def test_same_id_twice_gets_the_first_ones_ack_then_error_10(
    make_net: MakeNet, stored: bool
) -> None:
    handler = Recorder()
    net = make_net(stored=stored, handler=handler)
    alice = net.client().connect("alice", "alice-session")
    alice.message("one")
    alice.raw(frames.message(1, b"again", 0))
    alice.send()

    assert alice.take() == [ok(1), error(ErrorCode.ID_NOT_INCREASING, "message id 1 repeated")]
    assert alice.closed
    assert handler.bodies == ["one"]


@pytest.mark.parametrize("stored", [False, True], ids=["no store", "store"])
def test_ping_with_hello_in_one_write_gets_welcome_before_pong(
    make_net: MakeNet, stored: bool
) -> None:
    net = make_net(stored=stored, hold_lookups=True)
    alice = net.client()
    alice.hello("alice", "alice-session")
    alice.ping(42)
    alice.send()
    net.answer_lookups()

    assert alice.take() == [welcome("alice", stored=stored), Pong((42).to_bytes(8, "big"))]
    assert not alice.closed


def test_token_server_sends_nothing_after_challenge_but_error_6(make_net: MakeNet) -> None:
    handler = Recorder()
    net = make_net(gate=TokenGate("s3cret"), handler=handler)
    alice = net.client()
    alice.hello("alice")
    alice.message("too early")
    alice.send()

    events = alice.take()
    assert len(events) == 2
    assert type(events[0]) is Challenge
    assert events[1] == error(ErrorCode.UNEXPECTED_FRAME, "unexpected MESSAGE frame in state auth")
    assert alice.closed
    assert alice.late == b""
    assert handler.calls == []


def test_token_server_welcomes_the_right_answer_and_refuses_a_wrong_one(
    make_net: MakeNet,
) -> None:
    net = make_net(gate=TokenGate("s3cret"))
    alice = net.client()
    alice.hello("alice")
    alice.send()
    [challenge] = alice.take()
    assert type(challenge) is Challenge
    alice.conn.send_auth(answer_challenge(stretch("s3cret", challenge.salt), challenge.challenge))
    alice.send()
    assert alice.take() == [welcome("alice")]
    alice.message("hi")  # nothing but AUTH before the WELCOME
    alice.send()
    assert alice.take() == [ok(1)]

    mallory = net.client()
    mallory.hello("mallory")
    mallory.send()
    [challenge] = mallory.take()
    assert type(challenge) is Challenge
    mallory.conn.send_auth(answer_challenge(b"guess", challenge.challenge))
    mallory.send()
    assert mallory.take() == [error(ErrorCode.AUTH_FAILED, "login refused: wrong token")]
    assert mallory.closed
    assert net.broker.stats.auth_failures == 1


def test_end_of_input_right_after_hello_and_message_still_gets_welcome_and_ack(
    make_net: MakeNet,
) -> None:
    net = make_net(stored=True, hold_lookups=True)
    alice = net.client()
    alice.hello("alice", "alice-session")
    alice.message("one")
    alice.send()
    alice.eof()  # as `nc -N` does after writing its input
    net.answer_lookups()

    assert alice.take() == [welcome("alice", stored=True), ok(1)]
    assert alice.closed
    assert net.stored() == [("alice", None, 1, "one")]


# -- text peers ------------------------------------------------------------------------------


@pytest.mark.parametrize("stored", [False, True], ids=["no store", "store"])
def test_text_peer_unterminated_last_line_at_eof_gets_two_answer_lines_then_close(
    make_net: MakeNet, stored: bool
) -> None:
    handler = Recorder(echo)
    net = make_net(stored=stored, handler=handler, auto_commit=False)
    peer = net.text_client()
    peer.write(b"a\nunterminated")
    peer.eof()
    if stored:
        assert peer.output == b""  # nothing before the commit
        assert not peer.closed
        net.commit()

    assert peer.output == b"ack 1: re:a\nack 2: re:unterminated\n"
    assert peer.closed
    assert handler.bodies == ["a", "unterminated"]
    if stored:
        assert net.stored() == [
            ("10.0.0.1:40001", None, 1, "a"),
            ("10.0.0.1:40001", None, 2, "unterminated"),
        ]


# -- every rejection path ----------------------------------------------------------------------


@pytest.mark.parametrize("stored", [False, True], ids=["no store", "store"])
def test_too_large_message_is_rejected_with_status_1_and_the_connection_kept(
    make_net: MakeNet, stored: bool
) -> None:
    handler = Recorder()
    net = make_net(stored=stored, handler=handler, max_message_size=16)
    alice = net.client().connect("alice", "alice-session")
    alice.message("small")
    alice.message(b"x" * 40)
    alice.message("after")
    alice.send()

    assert alice.take() == [
        ok(1),
        Ack(2, AckStatus.TOO_LARGE, "message of 40 bytes is over the limit of 16", b"", 0),
        ok(3),
    ]
    assert not alice.closed
    assert handler.bodies == ["small", "after"]


def refuse_two(message: Message) -> str:
    if message.body == "two":
        raise Reject("two is not welcome")
    return "ok"


def fail_on_two(message: Message) -> str:
    if message.body == "two":
        raise RuntimeError("the handler broke")
    return "ok"


@pytest.mark.parametrize("mode", ["no store", "store", "async"])
def test_handler_raising_reject_gives_status_2_with_its_reason(
    make_net: MakeNet, mode: str
) -> None:
    net = make_net(
        stored=mode == "store", handler=Recorder(refuse_two), handler_is_async=mode == "async"
    )
    alice = net.client().connect("alice", "alice-session")
    for body in ("one", "two", "three"):
        alice.message(body)
    alice.send()
    if mode == "async":
        net.reply(alice, 1, "ok")
        net.raise_in(alice, 2, Reject("two is not welcome"))
        net.reply(alice, 3, "ok")

    assert alice.take() == [
        ok(1),
        Ack(2, AckStatus.REFUSED, "two is not welcome", b"", 0),
        ok(3),
    ]
    assert [n.event.kind for n in net.notices if n.event.kind == "handler_failed"] == []


@pytest.mark.parametrize("mode", ["no store", "store", "async"])
def test_handler_raising_another_exception_gives_status_3_without_details(
    make_net: MakeNet, mode: str
) -> None:
    net = make_net(
        stored=mode == "store", handler=Recorder(fail_on_two), handler_is_async=mode == "async"
    )
    alice = net.client().connect("alice", "alice-session")
    for body in ("one", "two", "three"):
        alice.message(body)
    alice.send()
    if mode == "async":
        net.reply(alice, 1, "ok")
        net.raise_in(alice, 2, RuntimeError("the handler broke"))
        net.reply(alice, 3, "ok")

    assert alice.take() == [
        ok(1),
        Ack(2, AckStatus.HANDLER_FAILED, "the receiver's handler failed", b"", 0),
        ok(3),
    ]
    failures = [n.event for n in net.notices if n.event.kind == "handler_failed"]
    assert [(f.detail, str(f.error)) for f in failures] == [("message 2", "the handler broke")]
    if mode == "store":
        assert net.stored() == [("alice", None, 1, "one"), ("alice", None, 3, "three")]


def test_store_commit_failure_gives_status_4_with_the_reason_and_acknowledges_nothing(
    make_net: MakeNet,
) -> None:
    net = make_net(stored=True, auto_commit=False)
    alice = net.client().connect("alice", "alice-session")
    alice.message("one")
    alice.routed("bob", "two")
    alice.send()
    assert net.begin_commit() is not None
    net.fail_commit("database or disk is full")

    assert alice.take() == [
        unavailable(1, "database or disk is full"),
        unavailable(2, "database or disk is full"),
    ]
    assert net.stored() == []
    assert net.broker.stats.accepted == 0


def test_routed_to_a_client_not_connected_without_store_gives_status_5(
    make_net: MakeNet,
) -> None:
    net = make_net()
    alice = net.client().connect("alice")
    alice.routed("nobody", "hi")
    alice.send()
    assert alice.take() == [not_delivered(1, "no client named 'nobody' is connected")]


@pytest.mark.parametrize("session", [None, "another-session"])
def test_a_name_already_taken_gets_error_14_and_the_holder_keeps_it(
    make_net: MakeNet, session: str | None
) -> None:
    net = make_net()
    alice = net.client().connect("alice", "alice-session")
    impostor = net.client()
    impostor.hello("alice", session)
    impostor.send()

    assert impostor.take() == [error(ErrorCode.NAME_TAKEN, "the name 'alice' is in use")]
    assert impostor.closed
    assert net.broker.clients["alice"] is alice.link
    alice.message("still here")
    alice.send()
    assert alice.take() == [ok(1)]


def test_an_invalid_name_gets_error_15(make_net: MakeNet) -> None:
    net = make_net()
    alice = net.client()
    alice.hello("not a name!")
    alice.send()
    assert alice.take() == [
        error(
            ErrorCode.INVALID_NAME,
            "invalid name 'not a name!': use 1 to 32 letters, digits, . _ -",
        )
    ]
    assert alice.closed


@pytest.mark.parametrize("name", ["server", "Server", "you", "EVERYONE"])
def test_the_consoles_own_names_are_refused(make_net: MakeNet, name: str) -> None:
    net = make_net()
    client = net.client()
    client.hello(name)
    client.send()
    assert client.take() == [error(ErrorCode.NAME_TAKEN, f"the name {name!r} is reserved")]
    assert client.closed
    assert name not in net.broker.clients


# -- commit failures ---------------------------------------------------------------------------


def test_commit_failure_rejects_the_whole_batch_other_links_included_and_next_commits(
    make_net: MakeNet,
) -> None:
    handler = Recorder(echo)
    net = make_net(stored=True, handler=handler, auto_commit=False)
    alice = net.client().connect("alice", "alice-session")
    carol = net.client().connect("carol", "carol-session")
    bob = net.client().connect("bob", "bob-session")
    text = net.text_client()

    alice.message("a1")
    alice.routed("bob", "a2")
    alice.send()
    carol.message("c1")
    carol.send()
    text.write(b"t1\n")
    assert net.begin_commit() is not None
    alice.message("a3")  # arrives during the commit: the next batch
    alice.send()
    net.fail_commit()

    why = "the server could not store it (disk I/O error)"
    assert alice.take() == [unavailable(1), unavailable(2)]
    assert carol.take() == [unavailable(1)]
    assert text.output == f"rejected 1: {why}\n".encode()
    assert bob.take() == []  # nothing forwarded that was not stored
    assert net.stored() == []

    assert net.commit_asked
    net.commit()
    assert alice.take() == [ok(3, "re:a3")]
    carol.message("c2")
    carol.send()
    net.commit()
    assert carol.take() == [ok(2, "re:c2")]
    assert net.stored() == [("alice", None, 3, "a3"), ("carol", None, 2, "c2")]
    assert net.broker.stats.commit_failures == 1
    assert net.broker.stats.rejected == 4


# -- stats -------------------------------------------------------------------------------------


def test_stats_count_accepted_rejected_delivered_receipts_and_resent(make_net: MakeNet) -> None:
    net = make_net(stored=True, handler=Recorder(refuse_two), max_message_size=64)
    alice = net.client().connect("alice", "alice-session")
    alice.message("one")  # accepted
    alice.message("two")  # rejected by the handler
    alice.message(b"x" * 100)  # rejected: too large
    alice.routed("bob", "four")  # accepted (stored for bob)
    alice.routed("bob", "five")  # accepted (stored for bob)
    alice.send()
    assert acked_ids(alice.take()) == [1, 2, 3, 4, 5]

    bob = net.client()
    bob.hello("bob", "bob-session")
    bob.send()
    welcomed, four, five = bob.take()
    assert type(welcomed) is Welcome
    assert type(four) is Message and type(five) is Message
    assert (four.body, five.body) == ("four", "five")
    bob.ack(four.id, "yes")  # delivered, receipt
    bob.ack(five.id, status=AckStatus.REFUSED, reason="no")  # answered (receipt), refused
    bob.send()
    assert alice.take() == [
        Receipt(4, AckStatus.OK, "", "yes", DELIVERED),
        Receipt(5, AckStatus.REFUSED, "no", b"", DELIVERED),
    ]

    alice.drop()
    alice = net.client()
    alice.hello("alice", "alice-session")
    alice.message("one", msg_id=1)  # resent
    alice.message("six", msg_id=6)  # accepted
    alice.send()
    assert acked_ids(alice.take()) == [1, 6]

    stats = net.broker.stats
    # delivered: both reached bob, who answered (one with a refusal), as without a store
    assert (stats.accepted, stats.rejected, stats.delivered, stats.receipts, stats.resent) == (
        4,
        2,
        2,
        2,
        1,
    )


def test_stats_without_store_count_delivered_and_not_delivered(make_net: MakeNet) -> None:
    net = make_net()
    alice = net.client().connect("alice")
    bob = net.client().connect("bob")
    alice.message("one")  # accepted
    alice.routed("bob", "two")  # delivered
    alice.routed("carol", "three")  # rejected: not delivered
    alice.routed("bob", "four")  # rejected: bob leaves first
    alice.send()
    bob.ack(1)
    bob.send()
    bob.drop()
    assert acked_ids(alice.take()) == [1, 2, 3, 4]

    stats = net.broker.stats
    assert (stats.accepted, stats.rejected, stats.delivered, stats.receipts, stats.resent) == (
        1,
        2,
        1,
        0,
        0,
    )


def test_a_resent_message_refused_earlier_is_told_the_refusal_again(make_net: MakeNet) -> None:
    net = make_net(stored=True)
    alice = net.client().connect("alice", "alice-session")
    bob = net.client().connect("bob", "bob-session")
    alice.routed("bob", "pay 100")
    alice.send()
    (message,) = [e for e in bob.take() if type(e) is Message]
    bob.ack(message.id, status=AckStatus.REFUSED, reason="no such account")
    bob.send()
    alice.drop()
    alice = net.client()
    alice.hello("alice", "alice-session")
    alice.routed("bob", "pay 100", msg_id=1)  # its first ACK was lost: sent again
    alice.send()
    receipts = [e for e in alice.take() if type(e) is Receipt]
    assert receipts == [Receipt(1, AckStatus.REFUSED, "no such account", b"", DELIVERED)]


# -- a cluster: what another server stored ---------------------------------------------


def test_a_message_found_late_closes_the_connection_for_a_reconnect_not_a_broken_order(
    make_net: MakeNet,
) -> None:
    """Ids on a connection only increase. A message another server stored, found after
    one with a higher seq was sent (its notice was missed), cannot go on this connection:
    the server closes it without GOODBYE, so the client reconnects and gets its outbox
    in order; nothing is lost or answered for it."""
    net = make_net(stored=True)
    bob = net.client().connect("bob", "bob-session")
    bob.take()
    net.broker.pending_arrived([("bob", Pending(7, "seven", "alice", "a", 1))])
    net.run()
    assert bob.take() == [Message(7, "seven", sender="alice")]
    net.broker.pending_arrived([("bob", Pending(5, "five", "carol", "c", 1))])
    net.run()
    assert bob.closed and "came late" in bob.close_reasons[0]
    assert bob.take() == []  # no GOODBYE: the client reconnects
    assert "bob" not in net.broker.clients and net.released == ["bob"]


def test_messages_and_receipts_from_other_servers_go_once_each(make_net: MakeNet) -> None:
    net = make_net(stored=True, shared=True)
    bob = net.client().connect("bob", "bob-session")
    alice = net.client().connect("alice", "alice-session")
    bob.take()
    alice.take()
    waiting = [
        ("bob", Pending(3, "three", "carol", "c", 9)),
        ("nobody", Pending(4, "x", None, None, None)),  # not here (any more): left alone
    ]
    net.broker.pending_arrived(waiting)
    net.broker.pending_arrived(waiting)  # read twice (a wake-up and a timer): sent once
    net.run()
    assert bob.take() == [Message(3, "three", sender="carol")]
    answer = Answered(8, "alice-session", 2, 0, "", "thanks")
    net.broker.receipts_arrived([answer, answer])
    net.run()
    assert alice.take() == [Receipt(2, 0, "", "thanks")]
    assert net.receipted == [8]
