"""Plain-text peers (netcat, telnet, socat, a bare socket script), without I/O.

Each line is a message and gets one answer line. A partial line that is followed by
a pause is a message too: the classic first socket script sends without a newline and
waits for its answer. The I/O layer owns the clock and calls ``flush()`` after the pause.

``TextConnection`` has the same method names as ``protocol.Connection`` and yields the
same events (``Message``, ``MessageTooLarge``), so the server treats both alike.
"""

from __future__ import annotations

from .events import Body, ErrorCode, Event, Message, MessageTooLarge

__all__ = ["TextConnection", "answer_line", "text_body"]


def text_body(raw: bytes) -> Body:
    """Text when the bytes are UTF-8, else the bytes themselves."""
    try:
        return raw.decode()
    except UnicodeDecodeError:
        return raw


def answer_line(prefix: str, body: Body) -> bytes:
    """One answer line, with any line breaks inside the body folded to spaces."""
    text = body if isinstance(body, str) else body.decode("utf-8", "backslashreplace")
    text = text.replace("\r\n", " ").replace("\n", " ").replace("\r", " ")
    return f"{prefix}{text}\n".encode()


class TextConnection:
    """Splits a text peer's bytes into line messages, numbered from 1, within a size limit."""

    def __init__(self, *, max_message_size: int) -> None:
        self.max_message_size = max_message_size
        self._partial = bytearray()
        self._discarding = 0  # bytes of an oversized line dropped so far (0: not dropping)
        self._flushed = False  # a pause ended the last line; its late newline is not a line
        self._cr = False  # the line so far ends with \r (not counted if \n follows)
        self._next_id = 1
        self._out: list[bytes] = []
        self.closed = False

    @property
    def has_partial(self) -> bool:
        """A line has begun and not ended; the I/O layer starts the pause timer."""
        return bool(self._partial)

    def receive_data(self, data: bytes) -> list[Event]:
        events: list[Event] = []
        if self.closed:
            return events
        start = 0
        if self._flushed and data:
            self._flushed = False
            if data.startswith(b"\r\n"):
                start = 2
            elif data.startswith(b"\n"):
                start = 1
        while True:
            newline = data.find(b"\n", start)
            chunk = data[start:] if newline < 0 else data[start:newline]
            if chunk:
                self._cr = chunk.endswith(b"\r")  # maybe the first half of the line's end
            total = len(self._partial) + len(chunk)
            if self._discarding:
                self._discarding += len(chunk)
            elif total > self.max_message_size + self._cr:
                self._discarding = total
                self._partial.clear()
            else:
                self._partial += chunk
            if newline < 0:
                return events
            events.append(self._end_line())
            start = newline + 1

    def flush(self) -> list[Event]:
        """After a pause: the partial line so far is a message."""
        if not self._partial or self.closed:
            return []
        self._flushed = True
        return [self._end_line()]

    def receive_eof(self) -> list[Event]:
        if self._discarding:
            return [self._end_line()]
        return self.flush()

    def _end_line(self) -> Event:
        msg_id = self._next_id
        self._next_id += 1
        if self._discarding:
            size, self._discarding = self._discarding - self._cr, 0
            self._cr = False
            return MessageTooLarge(msg_id, size, self.max_message_size)
        self._cr = False
        raw = bytes(self._partial)
        self._partial.clear()
        if raw.endswith(b"\r"):
            raw = raw[:-1]
        if len(raw) > self.max_message_size:
            return MessageTooLarge(msg_id, len(raw), self.max_message_size)
        return Message(msg_id, text_body(raw))

    # -- the answers, named as in protocol.Connection ------------------------------------

    def send_ack(self, msg_id: int, reply: Body = b"", reason: str = "") -> None:
        self._out.append(answer_line(f"ack {msg_id}: ", reply or reason))

    def send_rejection(self, msg_id: int, status: int, reason: str) -> None:
        self._out.append(answer_line(f"rejected {msg_id}: ", reason))

    def send_goodbye(self, reason: str = "") -> None:
        self._out.append(answer_line("bye: ", reason))

    def send_error(self, code: ErrorCode, reason: str) -> None:
        if not self.closed:
            self._out.append(answer_line("error: ", reason))
            self.closed = True

    def data_to_send(self) -> bytes:
        data = b"".join(self._out)
        self._out.clear()
        return data
