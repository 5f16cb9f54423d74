"""The broker stops reading from a link whose messages pile up, and reads again once
they drain: memory stays bounded whatever a slow store or a silent recipient does."""

from __future__ import annotations

from telex.core import frames
from telex.core.broker import HELD_HIGH, Broker, Link, Pause, Peer
from telex.core.events import Message
from telex.core.frames import PREAMBLE, FrameType
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
