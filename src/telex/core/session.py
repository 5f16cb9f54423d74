"""The client's promises as a plain object: ids, what waits for an ack, resend, and
telling a message the server sends again from a new one.

A client numbers its messages across all its connections in one session. When a
connection drops, every message not yet acknowledged is sent again, in order, under
its first id, on the next connection; the server acknowledges again what it already
had. When the server numbers its own messages from its store (``stable_ids``), a
message whose id this client took already is a redelivery: acknowledged, not handed
over twice. The ids taken are remembered one by one (the last ``TAKEN_KEPT``), not as
the highest: in a cluster a message may come after one with a higher id (the notice
to its server was missed, and a later read found it), and it is new. The asyncio
client keeps the futures; this keeps the rest.

A client that wants receipts (``receipts``) keeps each message the server stored for
another client until its RECEIPT comes, and sends it again after a reconnect too: the
server knows it, acknowledges it again, and sends its RECEIPT if the recipient answered
it (or when it does). So a receipt lost with a connection (or with the server that was
to send it) comes on the next one. A receipt that comes twice is handed over once.
"""

from __future__ import annotations

from operator import itemgetter

from .events import Ack, Body, Message, Welcome
from .protocol import Connection

__all__ = ["TAKEN_KEPT", "ClientSession"]

TAKEN_KEPT = 100_000
"""How many of the ids it took a client remembers: a server sends again only what it
sent just before a connection dropped, so the recent ones are enough (about 6 MB)."""


class ClientSession:
    """One client session, without I/O."""

    def __init__(self, session_id: str, *, receipts: bool = False) -> None:
        self.id = session_id
        self.next_id = 1
        self.unacked: dict[int, tuple[Body, str | None]] = {}  # in id order: to resend
        self.receipts = receipts  # wanted: stored messages wait for their receipts
        self.awaiting: dict[int, tuple[Body, str | None]] = {}  # stored, no receipt yet
        self.receipted: set[int] = set()  # ids whose receipt was handed over
        self.stable_ids = False
        self.taken: dict[int, None] = {}  # ids of the server's messages taken, oldest first

    def number(self, body: Body, to: str | None) -> int:
        """The id of a new message, remembered until it is acknowledged."""
        msg_id = self.next_id
        self.next_id = msg_id + 1
        self.unacked[msg_id] = (body, to)
        return msg_id

    def skip(self) -> int:
        """An id for a message refused before it was sent (ids may have gaps)."""
        msg_id = self.next_id
        self.next_id = msg_id + 1
        return msg_id

    def answered(self, ack: Ack) -> None:
        """A message got its ACK: it is not sent again, unless its receipt is wanted and
        it was stored for a client that has not answered it yet."""
        sent = self.unacked.pop(ack.id, None)
        if sent is None or not (self.receipts and ack.ok and ack.stored):
            return
        if ack.id not in self.receipted:
            self.awaiting[ack.id] = sent

    def got_receipt(self, msg_id: int) -> bool:
        """A RECEIPT came for ``msg_id``: True the first time (hand it over)."""
        if msg_id in self.receipted:
            return False
        self.receipted.add(msg_id)
        self.awaiting.pop(msg_id, None)
        return True

    def welcomed(self, welcome: Welcome, conn: Connection) -> None:
        """A connection is up: resend, in order and under their ids, what waits for an
        ack, and what waits for its receipt."""
        self.stable_ids = welcome.stable_ids
        waiting = [*self.unacked.items(), *self.awaiting.items()]
        if self.awaiting:
            waiting.sort(key=itemgetter(0))
        for msg_id, (body, to) in waiting:
            conn.send_message(body, name=to, msg_id=msg_id)

    def is_redelivery(self, message: Message) -> bool:
        """A message from the server that this client took already (its ack was lost)."""
        return self.stable_ids and message.id in self.taken

    def took(self, msg_id: int) -> None:
        """This client acknowledged the server's message ``msg_id``."""
        if self.stable_ids:
            taken = self.taken
            taken[msg_id] = None
            if len(taken) > TAKEN_KEPT:
                del taken[next(iter(taken))]

    def forget(self) -> None:
        """The client is done for good: nothing will be sent again."""
        self.unacked.clear()
        self.awaiting.clear()
