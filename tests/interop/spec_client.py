"""A framed telex client written from docs/protocol.md alone.

Standard library only. Every frame type is built and parsed byte by byte, as the
document lays it out: a 4-byte big-endian length (counting the type byte and the
payload), a 1-byte type, then the payload.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import socket
import ssl
import struct
from dataclasses import dataclass, field

PREAMBLE = b"\x89TLX\r\n\x1a\n"

# Frame types (the frame table).
HELLO = 0x01
WELCOME = 0x02
CHALLENGE = 0x03
AUTH = 0x04
MESSAGE = 0x10
ACK = 0x11
ROUTED = 0x12
RECEIPT = 0x13
PING = 0x20
PONG = 0x21
STATS = 0x22
ERROR = 0x30
GOODBYE = 0x31

FRAME_NAMES = {
    HELLO: "HELLO",
    WELCOME: "WELCOME",
    CHALLENGE: "CHALLENGE",
    AUTH: "AUTH",
    MESSAGE: "MESSAGE",
    ACK: "ACK",
    ROUTED: "ROUTED",
    RECEIPT: "RECEIPT",
    PING: "PING",
    PONG: "PONG",
    STATS: "STATS",
    ERROR: "ERROR",
    GOODBYE: "GOODBYE",
}

# Flags.
TEXT = 0x01
STORED = 0x02
DELIVERED = 0x04
AWAY = 0x08

# ACK statuses.
OK = 0
TOO_LARGE = 1
REFUSED = 2
HANDLER_FAILED = 3
UNAVAILABLE = 4
NOT_DELIVERED = 5

# ERROR codes.
BAD_PREAMBLE = 1
MALFORMED_FRAME = 2
UNKNOWN_FRAME_TYPE = 3
FRAME_TOO_LARGE = 4
INVALID_UTF8 = 5
UNEXPECTED_FRAME = 6
UNSUPPORTED_VERSION = 7
HANDSHAKE_TIMEOUT = 8
IDLE_TIMEOUT = 9
ID_NOT_INCREASING = 10
TRUNCATED_FRAME = 11
TOO_MANY_CONNECTIONS = 12
INTERNAL_ERROR = 13
NAME_TAKEN = 14
INVALID_NAME = 15
AUTH_FAILED = 16

AUTH_LABEL = b"telex-auth-v1"
PBKDF2_ITERATIONS = 200_000
U64_MAX = 2**64 - 1


class ProtocolViolation(Exception):
    """The peer sent something the document does not allow."""


class Truncated(ProtocolViolation):
    """The connection ended in the middle of the preamble or a frame."""


# --------------------------------------------------------------------------- frames


@dataclass
class Frame:
    type: int
    payload: bytes

    @property
    def name(self) -> str:
        return FRAME_NAMES.get(self.type, f"0x{self.type:02x}")


@dataclass
class Json(Frame):
    obj: dict = field(default_factory=dict)


@dataclass
class Message(Frame):
    id: int = 0
    flags: int = 0
    body: bytes = b""

    @property
    def text(self) -> str:
        return self.body.decode("utf-8")


@dataclass
class Routed(Frame):
    id: int = 0
    flags: int = 0
    peer: str = ""  # the recipient (client to server) or the sender (server to client)
    body: bytes = b""

    @property
    def text(self) -> str:
        return self.body.decode("utf-8")


@dataclass
class Ack(Frame):
    """ACK and RECEIPT share this layout."""

    id: int = 0
    status: int = 0
    flags: int = 0
    reason: str = ""
    reply: bytes = b""

    @property
    def reply_text(self) -> str:
        return self.reply.decode("utf-8")


@dataclass
class Ping(Frame):
    data: bytes = b""


@dataclass
class Error(Frame):
    code: int = 0
    reason: str = ""


@dataclass
class Goodbye(Frame):
    reason: str = ""


def frame(ftype: int, payload: bytes = b"") -> bytes:
    """length:u32 (type byte + payload), type:u8, payload."""
    return struct.pack(">IB", 1 + len(payload), ftype) + payload


def json_payload(obj: dict) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def hello(
    name: str | None = None,
    session: str | None = None,
    *,
    version: object = 1,
    agent: str | None = "telex/0.1.0",
    extra: dict | None = None,
) -> bytes:
    obj: dict = {"version": version}
    if agent is not None:
        obj["agent"] = agent
    if name is not None:
        obj["name"] = name
    if session is not None:
        obj["session"] = session
    if extra:
        obj.update(extra)
    return frame(HELLO, json_payload(obj))


def stats() -> bytes:
    """Ask the server for its counters (the STATS section)."""
    return frame(STATS, json_payload({}))


def auth(answer_hex: str) -> bytes:
    return frame(AUTH, json_payload({"answer": answer_hex}))


def _body(body: str | bytes, flags: int | None) -> tuple[bytes, int]:
    if isinstance(body, str):
        return body.encode("utf-8"), TEXT if flags is None else flags
    return bytes(body), 0 if flags is None else flags


def message(mid: int, body: str | bytes, flags: int | None = None) -> bytes:
    data, fl = _body(body, flags)
    return frame(MESSAGE, struct.pack(">QB", mid, fl) + data)


def routed(mid: int, name: str, body: str | bytes, flags: int | None = None) -> bytes:
    data, fl = _body(body, flags)
    n = name.encode("utf-8")
    return frame(ROUTED, struct.pack(">QBB", mid, fl, len(n)) + n + data)


def ack(
    mid: int,
    status: int = OK,
    reply: str | bytes = b"",
    reason: str = "",
    flags: int | None = None,
    ftype: int = ACK,
) -> bytes:
    data, fl = _body(reply, flags)
    r = reason.encode("utf-8")
    return frame(ftype, struct.pack(">QBBH", mid, status, fl, len(r)) + r + data)


def ping(data: bytes = b"\0" * 8) -> bytes:
    assert len(data) == 8
    return frame(PING, data)


def pong(data: bytes) -> bytes:
    return frame(PONG, data)


def error(code: int, reason: str = "") -> bytes:
    return frame(ERROR, struct.pack(">H", code) + reason.encode("utf-8"))


def goodbye(reason: str = "client closing") -> bytes:
    return frame(GOODBYE, reason.encode("utf-8"))


def _utf8(b: bytes, what: str) -> str:
    try:
        return b.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ProtocolViolation(f"ERROR 5: {what} is not UTF-8") from e


def parse(ftype: int, payload: bytes) -> Frame:
    """Parse one frame's payload, field by field, as the document lays it out."""
    n = len(payload)
    if ftype in (HELLO, WELCOME, CHALLENGE, AUTH, STATS):
        text = _utf8(payload, "JSON")
        try:
            obj = json.loads(text)
        except ValueError as e:
            raise ProtocolViolation("ERROR 2: not JSON") from e
        if not isinstance(obj, dict):
            raise ProtocolViolation("ERROR 2: not a JSON object")
        return Json(ftype, payload, obj)
    if ftype == MESSAGE:
        if n < 9:
            raise ProtocolViolation("ERROR 2: MESSAGE shorter than its fixed fields")
        mid = int.from_bytes(payload[0:8], "big")
        flags = payload[8]
        body = payload[9:]
        if flags & TEXT:
            _utf8(body, "MESSAGE body")
        return Message(ftype, payload, mid, flags, body)
    if ftype == ROUTED:
        if n < 11:  # length under 12
            raise ProtocolViolation("ERROR 2: ROUTED shorter than 12 bytes of length")
        mid = int.from_bytes(payload[0:8], "big")
        flags = payload[8]
        name_len = payload[9]
        if name_len < 1 or 10 + name_len > n:
            raise ProtocolViolation("ERROR 2: ROUTED name_len past the frame")
        peer = _utf8(payload[10 : 10 + name_len], "ROUTED name")
        body = payload[10 + name_len :]
        if flags & TEXT:
            _utf8(body, "ROUTED body")
        return Routed(ftype, payload, mid, flags, peer, body)
    if ftype in (ACK, RECEIPT):
        if n < 12:
            raise ProtocolViolation("ERROR 2: ACK shorter than its fixed fields")
        mid = int.from_bytes(payload[0:8], "big")
        status = payload[8]
        flags = payload[9]
        reason_len = int.from_bytes(payload[10:12], "big")
        if 12 + reason_len > n:
            raise ProtocolViolation("ERROR 2: reason_len past the frame")
        reason = _utf8(payload[12 : 12 + reason_len], "reason")
        reply = payload[12 + reason_len :]
        if flags & TEXT:
            _utf8(reply, "reply")
        return Ack(ftype, payload, mid, status, flags, reason, reply)
    if ftype in (PING, PONG):
        if n != 8:
            raise ProtocolViolation("ERROR 2: PING/PONG payload is not 8 bytes")
        return Ping(ftype, payload, payload)
    if ftype == ERROR:
        if n < 2:
            raise ProtocolViolation("malformed ERROR (closing, not answering)")
        code = int.from_bytes(payload[0:2], "big")
        return Error(ftype, payload, code, _utf8(payload[2:], "ERROR reason"))
    if ftype == GOODBYE:
        return Goodbye(ftype, payload, _utf8(payload, "GOODBYE reason"))
    raise ProtocolViolation(f"ERROR 3: unknown frame type {ftype}")


def parse_bytes(data: bytes) -> list[Frame]:
    """Parse a run of whole frames (no preamble)."""
    out = []
    i = 0
    while i < len(data):
        if len(data) - i < 5:
            raise Truncated("partial header")
        length, ftype = struct.unpack(">IB", data[i : i + 5])
        if length == 0:
            raise ProtocolViolation("ERROR 2: length 0")
        end = i + 4 + length
        if end > len(data):
            raise Truncated("partial payload")
        out.append(parse(ftype, data[i + 5 : end]))
        i = end
    return out


# --------------------------------------------------------------------------- auth


def auth_key(token: str, salt: bytes) -> bytes:
    t = token.encode("utf-8")
    if not salt:
        return t
    return hashlib.pbkdf2_hmac("sha256", t, salt, PBKDF2_ITERATIONS, 32)


def auth_answer(token: str, challenge_hex: str, salt_hex: str = "") -> str:
    challenge = bytes.fromhex(challenge_hex)
    salt = bytes.fromhex(salt_hex or "")
    key = auth_key(token, salt)
    return hmac.new(key, AUTH_LABEL + challenge, hashlib.sha256).hexdigest()


def read_token_file(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.readline().strip()


# --------------------------------------------------------------------------- TLS


def fingerprint(der: bytes) -> str:
    """SHA256: and 32 uppercase hex pairs separated by colons."""
    digest = hashlib.sha256(der).hexdigest().upper()
    return "SHA256:" + ":".join(digest[i : i + 2] for i in range(0, 64, 2))


def pinned_context() -> ssl.SSLContext:
    """TLS 1.2+, no CA check: the caller compares the fingerprint itself."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


# --------------------------------------------------------------------------- connection


class Conn:
    """One framed connection. Every wait has a timeout."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        timeout: float = 5.0,
        tls: ssl.SSLContext | None = None,
        fingerprint_pin: str | None = None,
        server_hostname: str | None = None,
    ):
        raw = socket.create_connection((host, port), timeout=timeout)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock: socket.socket = raw
        self.peer_fingerprint: str | None = None
        if tls is not None:
            try:
                self.sock = tls.wrap_socket(raw, server_hostname=server_hostname or host)
            except BaseException:
                raw.close()
                raise
            der = self.sock.getpeercert(binary_form=True)
            self.peer_fingerprint = fingerprint(der)
            if fingerprint_pin is not None and fingerprint_pin.upper() != self.peer_fingerprint:
                self.sock.close()
                raise ssl.SSLError(f"fingerprint mismatch: {self.peer_fingerprint}")
        self.sock.settimeout(timeout)
        self.buf = b""
        self.got_preamble = False
        self.welcome: dict | None = None
        self.next_id = 1

    # raw I/O
    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self, n: int) -> bool:
        """Read until the buffer holds n bytes; False on a clean EOF."""
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                return False
            self.buf += chunk
        return True

    def _take(self, n: int) -> bytes:
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def read_preamble(self) -> None:
        if not self._fill(8):
            raise Truncated(f"closed in the preamble after {self.buf!r}")
        got = self._take(8)
        if got != PREAMBLE:
            raise ProtocolViolation(f"ERROR 1: bad preamble {got!r}")
        self.got_preamble = True

    def read_raw(self) -> tuple[int, bytes] | None:
        """One frame as (type, payload); None on a clean close between frames."""
        if not self.got_preamble:
            self.read_preamble()
        if not self._fill(5):
            if self.buf:
                raise Truncated("closed in a frame header")
            return None
        length, ftype = struct.unpack(">IB", self.buf[:5])
        if length == 0:
            raise ProtocolViolation("ERROR 2: length 0")
        if not self._fill(4 + length):
            raise Truncated("closed in a frame payload")
        self._take(5)
        return ftype, self._take(length - 1)

    def read(self) -> Frame | None:
        raw = self.read_raw()
        if raw is None:
            return None
        return parse(*raw)

    def read_all(self, limit: int = 10_000) -> list[Frame]:
        """Every frame until the peer closes."""
        out = []
        for _ in range(limit):
            f = self.read()
            if f is None:
                return out
            out.append(f)
        raise AssertionError("too many frames")

    def read_until_closed(self) -> list[Frame]:
        return self.read_all()

    def is_closed(self, timeout: float = 3.0) -> bool:
        """True if the peer closes (EOF or reset) within timeout, with no more frames."""
        old = self.sock.gettimeout()
        self.sock.settimeout(timeout)
        try:
            return not self.buf and self.sock.recv(1) == b""
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False
        finally:
            self.sock.settimeout(old)

    # the handshake
    def start(self, name: str | None = None, session: str | None = None, **kw) -> None:
        self.send(PREAMBLE + hello(name, session, **kw))

    def handshake(
        self,
        name: str | None = None,
        session: str | None = None,
        token: str | None = None,
        **kw,
    ) -> Frame:
        """Preamble, HELLO, (CHALLENGE, AUTH), WELCOME. Returns WELCOME or the ERROR."""
        self.start(name, session, **kw)
        f = self.read()
        if isinstance(f, Json) and f.type == CHALLENGE:
            self.challenge = f.obj
            if token is None:
                raise ProtocolViolation("CHALLENGE, but no token")
            answer = auth_answer(token, f.obj["challenge"], f.obj.get("salt", ""))
            self.send(auth(answer))
            f = self.read()
        if isinstance(f, Json) and f.type == WELCOME:
            if f.obj.get("version") != 1 or type(f.obj.get("version")) is not int:
                raise ProtocolViolation("ERROR 7: WELCOME version")
            self.welcome = f.obj
        return f

    # conveniences
    def take_id(self) -> int:
        mid = self.next_id
        self.next_id += 1
        return mid

    def send_message(self, body: str | bytes, mid: int | None = None) -> int:
        mid = self.take_id() if mid is None else mid
        self.send(message(mid, body))
        return mid

    def send_routed(self, to: str, body: str | bytes, mid: int | None = None) -> int:
        mid = self.take_id() if mid is None else mid
        self.send(routed(mid, to, body))
        return mid

    def expect(self, ftype: int) -> Frame:
        f = self.read()
        if f is None or f.type != ftype:
            raise AssertionError(f"expected {FRAME_NAMES[ftype]}, got {f!r}")
        return f

    def say_goodbye(self, reason: str = "client closing") -> None:
        self.send(goodbye(reason))

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    def __enter__(self) -> Conn:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
