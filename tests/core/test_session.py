"""The client's session without I/O: ids across connections, resend, redeliveries."""

from __future__ import annotations

from telex.core.events import Ack, AckStatus, Message, Welcome
from telex.core.protocol import Connection, Role
from telex.core.session import ClientSession


def opened_client() -> tuple[Connection, Connection]:
    client, server = Connection(Role.CLIENT), Connection(Role.SERVER)
    client.initiate(name="alice", session="s")
    server.receive_data(client.data_to_send())
    server.send_welcome(name="alice", stable_ids=True)
    client.receive_data(server.data_to_send())
    return client, server


def test_ids_go_on_across_connections_and_only_the_unanswered_are_resent() -> None:
    session = ClientSession("s")
    assert [session.number(body, None) for body in ("one", "two", "three")] == [1, 2, 3]
    session.answered(Ack(2))
    client, server = opened_client()
    session.welcomed(Welcome(1, stable_ids=True), client)
    assert server.receive_data(client.data_to_send()) == [Message(1, "one"), Message(3, "three")]
    assert session.number("four", "bob") == 4  # new ids follow the resent ones


def test_a_resent_routed_message_keeps_its_recipient() -> None:
    session = ClientSession("s")
    session.number("for bob", "bob")
    client, server = opened_client()
    session.welcomed(Welcome(1), client)
    assert server.receive_data(client.data_to_send()) == [Message(1, "for bob", to="bob")]


def test_a_message_taken_before_is_a_redelivery_only_with_stable_ids() -> None:
    session = ClientSession("s")
    client, _ = opened_client()
    session.welcomed(Welcome(1, stable_ids=True), client)
    session.took(7)
    assert session.is_redelivery(Message(7, "again"))
    assert not session.is_redelivery(Message(3, "older"))  # late, not again: a cluster's
    assert not session.is_redelivery(Message(8, "new"))

    plain = ClientSession("t")
    plain.welcomed(Welcome(1, stable_ids=False), client)
    plain.took(7)  # without stable ids a server's ids say nothing across connections
    assert not plain.is_redelivery(Message(7, "again"))


def test_forget_sends_nothing_again() -> None:
    session = ClientSession("s")
    session.number("lost", None)
    session.forget()
    client, server = opened_client()
    session.welcomed(Welcome(1), client)
    assert server.receive_data(client.data_to_send()) == []


STORED = 0x02  # the ACK's flag: stored for a client that has not answered yet


def test_with_receipts_wanted_a_stored_message_is_sent_again_until_its_receipt_comes() -> None:
    session = ClientSession("s", receipts=True)
    for body in ("a", "b", "c", "d"):
        session.number(body, "bob")
    session.answered(Ack(1, AckStatus.OK, "stored for bob", b"", STORED))
    session.answered(Ack(2, AckStatus.OK, "stored for bob", b"", STORED))
    session.answered(Ack(3, AckStatus.NOT_DELIVERED, "no"))  # refused: nothing to wait for
    assert session.got_receipt(2)
    assert not session.got_receipt(2)  # a second copy is not handed over
    client, server = opened_client()
    session.welcomed(Welcome(1, stable_ids=True), client)
    resent = server.receive_data(client.data_to_send())
    assert resent == [Message(1, "a", to="bob"), Message(4, "d", to="bob")]  # in id order


def test_without_receipts_wanted_a_stored_message_is_not_kept() -> None:
    session = ClientSession("s")
    session.number("a", "bob")
    session.answered(Ack(1, AckStatus.OK, "stored for bob", b"", STORED))
    client, server = opened_client()
    session.welcomed(Welcome(1, stable_ids=True), client)
    assert server.receive_data(client.data_to_send()) == []
