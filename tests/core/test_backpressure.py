"""The broker stops reading from a link whose messages pile up, and reads again once
they drain: memory stays bounded whatever a slow store or a silent recipient does."""

from __future__ import annotations

from telex.core import frames
from telex.core.broker import HELD_HIGH, Broker, Link, Pause, Peer
from telex.core.events import Message
from telex.core.frames import PREAMBLE, FrameType
from telex.core.protocol import Connection, Role
from telex.core.records import Committed, SessionState


def handler(message: Message, peer: Peer) -> str:
    return "ok"


def hello(name: str) -> bytes:
    return PREAMBLE + frames.json_frame(FrameType.HELLO, {"version": 1, "name": name})


def pauses(broker: Broker, link: Link) -> list[bool]:
    return [a.reading for a in broker.take_actions() if isinstance(a, Pause) and a.link is link]


def test_a_slow_store_pauses_the_sender_until_its_batch_is_stored() -> None:
    broker = Broker(handler, stored=True)
    link = Link(Peer("a"), "a")
    broker.connect(link)
    broker.receive_data(link, hello("alice"))
    broker.loaded(link, SessionState())
    count = HELD_HIGH + 1
    messages = b"".join(frames.message(i, b"x", 0) for i in range(1, count + 1))
    broker.receive_data(link, messages)
    assert pauses(broker, link) == [False]
    batch = broker.take_batch()
    assert batch is not None and len(batch.inbound[0].items) == count
    broker.committed(Committed([1], []))
    assert pauses(broker, link) == [True]


def test_a_recipient_that_never_answers_pauses_its_sender_without_a_store() -> None:
    broker = Broker(handler)
    alice, bob = Link(Peer("a"), "a"), Link(Peer("b"), "b")
    for link, name in ((alice, "alice"), (bob, "bob")):
        broker.connect(link)
        broker.receive_data(link, hello(name))
    routed = b"".join(frames.routed(i, b"bob", b"x", 0) for i in range(1, HELD_HIGH + 2))
    broker.receive_data(alice, routed)
    assert pauses(broker, alice) == [False]
    broker.connection_lost(bob)  # its messages are answered "not delivered": they drain
    assert pauses(broker, alice) == [True]


def test_a_delivery_answered_before_its_mark_is_stored_is_not_sent_again() -> None:
    """bob acknowledges while another commit runs, then reconnects before his delivered
    mark is stored: the store still lists the message in his outbox, but the broker
    knows better, so he does not get it again and alice gets one receipt."""
    from telex.core.events import Receipt
    from telex.core.records import Pending

    broker = Broker(handler, stored=True)
    alice, bob = Link(Peer("a"), "a"), Link(Peer("b"), "b")
    alice_side = Connection(Role.CLIENT)
    for link, name, session in ((alice, "alice", "A"), (bob, "bob", "B")):
        broker.connect(link)
        broker.receive_data(
            link,
            PREAMBLE
            + frames.json_frame(FrameType.HELLO, {"version": 1, "name": name, "session": session}),
        )
        broker.loaded(link, SessionState())
    alice_side.receive_data(alice.proto.data_to_send())  # type: ignore[union-attr]
    broker.receive_data(alice, frames.routed(1, b"bob", b"hi", 0))
    assert broker.take_batch() is not None
    broker.committed(Committed([], [7]))  # stored as seq 7, sent to bob
    broker.receive_data(alice, frames.message(2, b"more", 0))
    assert broker.take_batch() is not None  # this commit is still running...
    broker.receive_data(bob, frames.ack(7, 0, b"", b"got it", 0))  # ...when bob answers
    broker.connection_lost(bob)
    bob2 = Link(Peer("b2"), "b2")
    broker.connect(bob2)
    broker.receive_data(
        bob2,
        PREAMBLE
        + frames.json_frame(FrameType.HELLO, {"version": 1, "name": "bob", "session": "B"}),
    )
    broker.loaded(bob2, SessionState(0, (Pending(7, b"hi", "alice", "A", 1),)))
    bob_side = Connection(Role.CLIENT)
    assert not any(
        isinstance(e, Message)
        for e in bob_side.receive_data(bob2.proto.data_to_send())  # type: ignore[union-attr]
    )
    broker.committed(Committed([8], []))  # message 2 stored: the receipt comes after it
    receipts = [
        e
        for e in alice_side.receive_data(alice.proto.data_to_send())  # type: ignore[union-attr]
        if isinstance(e, Receipt)
    ]
    assert [(r.id, r.reply) for r in receipts] == [(1, b"got it")]
