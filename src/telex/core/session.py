"""The client's promises as a plain object: ids, what waits for an ack, resend, and
telling a message the server sends again from a new one.

A client numbers its messages across all its connections in one session. When a
connection drops, every message not yet acknowledged is sent again, in order, under
its first id, on the next connection; the server acknowledges again what it already
had. When the server numbers its own messages from its store (``stable_ids``), a
message at or below the highest one taken is a redelivery: acknowledged, not handed
over twice. The asyncio client keeps the futures; this keeps the rest.
"""

from __future__ import annotations

from .events import Body, Message, Welcome
from .protocol import Connection

__all__ = ["ClientSession"]


class ClientSession:
    """One client session, without I/O."""

    def __init__(self, session_id: str) -> None:
        self.id = session_id
        self.next_id = 1
        self.unacked: dict[int, tuple[Body, str | None]] = {}  # in id order: to resend
        self.stable_ids = False
        self.last_taken = 0  # the highest id of a server message this client took

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

    def answered(self, msg_id: int) -> None:
        """Message ``msg_id`` got its ACK: it is not sent again."""
        self.unacked.pop(msg_id, None)

    def welcomed(self, welcome: Welcome, conn: Connection) -> None:
        """A connection is up: resend, in order and under their ids, what waits."""
        self.stable_ids = welcome.stable_ids
        for msg_id, (body, to) in self.unacked.items():
            conn.send_message(body, name=to, msg_id=msg_id)

    def is_redelivery(self, message: Message) -> bool:
        """A message from the server that this client took already (its ack was lost)."""
        return self.stable_ids and message.id <= self.last_taken

    def took(self, msg_id: int) -> None:
        """This client acknowledged the server's message ``msg_id``."""
        if self.stable_ids and msg_id > self.last_taken:
            self.last_taken = msg_id

    def forget(self) -> None:
        """The client is done for good: nothing will be sent again."""
        self.unacked.clear()
