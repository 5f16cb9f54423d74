"""Interop: a client written from docs/protocol.md alone, against real telex servers.

Every test states what the document promises. Where the server does something else,
or the document is silent or ambiguous, the test is kept and marked
``xfail(strict=True, reason="SPEC MISMATCH: ..." / "SPEC GAP: ...")``.
"""

from __future__ import annotations

import itertools
import json
import re
import socket
import ssl
import struct
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from . import spec_client as tx
from .spec_client import Conn

pytestmark = pytest.mark.timeout(20)

HOST = "127.0.0.1"
MIB = 1_048_576
SMALL = 64  # max_message_size of the "small" server
DOC = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"

_names = itertools.count(1)
OPEN: list[socket.socket] = []  # closed after each test, pass or fail


@pytest.fixture(autouse=True)
def _close_sockets():
    yield
    while OPEN:
        OPEN.pop().close()


def uniq(prefix: str) -> str:
    return f"{prefix}{next(_names)}{uuid.uuid4().hex[:6]}"


def session() -> str:
    return uuid.uuid4().hex


# --------------------------------------------------------------------------- servers


class Server:
    def __init__(self, tmp: Path, label: str, *args: str):
        self.dir = tmp / f"srv-{label}"
        self.dir.mkdir()
        self.db = self.dir / "t.db"
        cmd = [sys.executable, "-m", "telex", "serve", "--port", "0", "--json"]
        cmd += ["--db", str(self.db)]
        cmd += list(args)
        self.out_path = self.dir / "out.jsonl"
        self._out = open(self.out_path, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(cmd, stdout=self._out, stderr=subprocess.STDOUT)
        self.port = 0

    def wait_ready(self, timeout: float = 10.0) -> Server:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.out_path.read_text(errors="replace").splitlines():
                if line.startswith("{"):
                    ev = json.loads(line)
                    if ev.get("event") == "listening":
                        self.port = ev["port"]
                        return self
            if self.proc.poll() is not None:
                raise RuntimeError(self.out_path.read_text())
            time.sleep(0.02)
        raise RuntimeError("server did not start: " + self.out_path.read_text())

    def conn(self, **kw) -> Conn:
        c = Conn(HOST, self.port, **kw)
        OPEN.append(c.sock)
        return c

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self._out.close()

    def log(self) -> list[dict]:
        r = subprocess.run(
            [sys.executable, "-m", "telex", "log", "--db", str(self.db), "--json"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        return [json.loads(x) for x in r.stdout.splitlines() if x.strip()]


TOKEN = "correct horse battery staple"
ALICE_TOKEN = "alice's own token"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("interop")
    (tmp / "token").write_text("  " + TOKEN + "  \nsecond line ignored\n")
    (tmp / "alice.token").write_text(ALICE_TOKEN + "\n")
    users = tmp / "users"
    cert = subprocess.Popen(
        [sys.executable, "-m", "telex", "cert", "--out", str(tmp / "cert"), "--name", HOST],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    add = subprocess.run(
        [
            *(sys.executable, "-m", "telex", "user", "add", "--users", str(users)),
            *("--token-file", str(tmp / "alice.token"), "ualice"),
        ],
        capture_output=True,
        text=True,
        timeout=15,
    )
    assert add.returncode == 0, add.stderr
    out, err = cert.communicate(timeout=15)
    assert cert.returncode == 0, err
    specs = {
        "store": (),
        "nostore": ("--no-store",),
        "small": ("--max-message-size", str(SMALL)),
        "token": ("--token-file", str(tmp / "token")),
        "users": ("--users", str(users)),
        "both": ("--users", str(users), "--token-file", str(tmp / "token")),
        "tls": ("--tls", str(tmp / "cert")),
        "timers": ("--handshake-timeout", "0.5", "--idle-timeout", "1"),
    }
    servers: dict[str, Server] = {}
    try:
        for label, args in specs.items():
            servers[label] = Server(tmp, label, *args)
        for srv in servers.values():
            srv.wait_ready()
        yield {
            "tmp": tmp,
            "users_file": users,
            "cert_pem": tmp / "cert.pem",
            "cert_stdout": out,
            **servers,
        }
    finally:
        for srv in servers.values():
            srv.stop()


def hs(server: Server, name: str | None = None, sess: str | None = None, **kw) -> Conn:
    """A connected client that got WELCOME."""
    c = server.conn()
    f = c.handshake(name, sess, **kw)
    assert f is not None and f.type == tx.WELCOME, f
    return c


def read_kind(c: Conn, n: int) -> list[tx.Frame]:
    return [c.read() for _ in range(n)]


def quiet(c: Conn, secs: float = 0.3) -> bool:
    """True if nothing arrives within secs."""
    c.sock.settimeout(secs)
    try:
        if c.buf:
            return False
        data = c.sock.recv(1, socket.MSG_PEEK)
        return not data
    except TimeoutError:
        return True
    finally:
        c.sock.settimeout(5.0)


def assert_error_last(c: Conn, code: int) -> tx.Error:
    frames = c.read_all()
    assert frames, "no ERROR"
    last = frames[-1]
    assert isinstance(last, tx.Error) and last.code == code, frames
    return last


# --------------------------------------------------------------------------- examples


HEX_LINE = re.compile(r"^((?:[0-9a-f]{2} )*[0-9a-f]{2})(?: {2,}.*)?$")


def doc_blocks() -> list[list[tuple[str, bytes]]]:
    """The ```hex blocks of the document: each a list of (label, bytes) sections."""
    text = DOC.read_text(encoding="utf-8")
    blocks = []
    for body in re.findall(r"```hex\n(.*?)```", text, re.S):
        sections: list[tuple[str, bytes]] = []
        label, data = None, b""
        for line in body.splitlines():
            if not line.strip():
                continue
            m = HEX_LINE.match(line)
            if m:
                data += bytes.fromhex(m.group(1))
            else:
                if label is not None:
                    sections.append((label, data))
                label, data = line.strip(), b""
        sections.append((label, data))
        blocks.append(sections)
    return blocks


def doc_example(title: str) -> bytes:
    for b in doc_blocks():
        if b[0][0] == title:
            return b[0][1]
    raise KeyError(title)


def test_examples_are_self_consistent():
    """Every example block parses: lengths match, fields fit, preamble first if any."""
    blocks = doc_blocks()
    assert len(blocks) >= 18
    for block in blocks:
        for label, data in block:
            rest = data[8:] if data.startswith(tx.PREAMBLE) else data
            frames = tx.parse_bytes(rest)  # raises on any inconsistent length
            assert frames or data == tx.PREAMBLE, label
    # every "length N" comment matches the u32 on its line
    headers = re.findall(r"^((?:[0-9a-f]{2} ){4}[0-9a-f]{2}) +length (\d+),", DOC.read_text(), re.M)
    assert len(headers) >= 20
    for hexed, n in headers:
        assert int.from_bytes(bytes.fromhex(hexed)[:4], "big") == int(n), hexed


def test_example_frames_match_our_encoder():
    hello = doc_example("HELLO from alice, with a session")
    assert hello == tx.hello("alice", "4f1c0b7e9a2d4e6f8b3c5a7d9e1f2a3b")
    answer = "fef9d8f70c5dddd07138b7707b6457e5b6f7b68519c78461decaf59df8057948"
    assert doc_example("AUTH with that answer") == tx.auth(answer)
    assert doc_example("MESSAGE 1, the text hello") == tx.message(1, "hello")
    assert doc_example("ACK of message 1: ok, with the reply received") == tx.ack(
        1, reply="received"
    )
    assert doc_example("ACK of message 2: refused, with the reason no spam") == tx.ack(
        2, tx.REFUSED, reason="no spam", flags=0
    )
    assert doc_example("ROUTED 3, from alice to bob") == tx.routed(3, "bob", "hi bob")
    ack3 = tx.parse_bytes(doc_example("ACK of message 3: stored for bob, who is away"))[0]
    assert (ack3.id, ack3.status, ack3.flags) == (3, 0, tx.STORED | tx.AWAY)
    assert ack3.reason == "stored for bob, who is not connected"
    fwd = tx.parse_bytes(doc_example("ROUTED forwarded to bob from alice, under its seq 17"))
    assert (fwd[0].id, fwd[0].peer, fwd[0].text) == (17, "alice", "hi bob")
    rc = tx.parse_bytes(doc_example("RECEIPT of message 3: bob's answer"))[0]
    assert rc.type == tx.RECEIPT and rc.flags == tx.TEXT | tx.DELIVERED
    assert (rc.id, rc.reply) == (3, b"thanks")
    assert doc_example("PING from the server") == tx.ping()
    assert doc_example("PONG") == tx.pong(b"\0" * 8)
    assert doc_example("ERROR 3") == tx.error(3, "unknown frame type 126")
    assert doc_example("GOODBYE from our client") == tx.goodbye("client closing")
    ch = tx.parse_bytes(doc_example("CHALLENGE for alice, a user with a salt"))[0]
    assert ch.type == tx.CHALLENGE
    welcome = tx.parse_bytes(doc_example("WELCOME to alice, from a server with a store"))[0]
    assert welcome.obj["stable_ids"] is True and welcome.obj["name"] == "alice"


def test_example_auth_answers():
    challenge = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
    salt = "6e1d4f0a2c3b5e7d9f8a1b2c3d4e5f60"
    key = tx.auth_key(TOKEN, bytes.fromhex(salt))
    assert key.hex() == "5541a822664a6c66e7ab63f5a1a3caf15f6ea5e8f872cc6881bb1f60a8ca2678"
    assert (
        tx.auth_answer(TOKEN, challenge, salt)
        == "fef9d8f70c5dddd07138b7707b6457e5b6f7b68519c78461decaf59df8057948"
    )
    assert (
        tx.auth_answer(TOKEN, challenge, "")
        == "f728c46541c6baf8008d0b049f0b4d9699fceab55f316a2d36441a541bf56ba5"
    )
    # "their hex strings may be in either case"
    assert tx.auth_answer(TOKEN, challenge.upper(), salt.upper()) == tx.auth_answer(
        TOKEN, challenge, salt
    )


def test_whole_exchange_byte_for_byte(env):
    """The document's 'A whole exchange', against a server with a store."""
    block = next(b for b in doc_blocks() if b[0][0] == "client → server")
    labels = [label for label, _ in block]
    assert labels == ["client → server", "server → client"] * 3
    c = env["store"].conn()
    received = b""
    for (_, to_server), (_, expected) in zip(block[0::2], block[1::2], strict=True):
        c.send(to_server)
        assert c._fill(len(expected))
        received = c._take(len(expected))
        assert received == expected
    assert c.is_closed()
    c.close()


def test_bad_preamble_example(env):
    """The first wrong byte is ERROR 1: server preamble, then the example's ERROR."""
    c = env["store"].conn()
    c.send(b"\x89TLY")  # 4th byte wrong; no more bytes sent
    expected = doc_example("server → a bad preamble")
    assert c._fill(len(expected))
    assert c._take(len(expected)) == expected
    assert c.is_closed()
    c.close()


# --------------------------------------------------------------------------- handshake


def test_welcome_states_limits(env):
    c = hs(env["store"], uniq("w"), session())
    w = c.welcome
    assert w["version"] == 1 and isinstance(w["agent"], str)
    assert w["limits"]["max_message_size"] == MIB
    assert w["limits"]["handshake_timeout"] == 10.0
    assert w["limits"]["idle_timeout"] == 60.0
    assert w["stable_ids"] is True
    c.close()
    n = hs(env["nostore"], uniq("w"), session())
    assert n.welcome.get("stable_ids") is not True
    n.close()
    s = hs(env["small"], uniq("w"))
    assert s.welcome["limits"]["max_message_size"] == SMALL
    s.close()


def test_guest_names(env):
    c = hs(env["nostore"])
    assert re.fullmatch(r"guest-\d+", c.welcome["name"])
    c.close()


@pytest.mark.parametrize("version", [None, True, 1.0, "1", 2])
def test_hello_bad_version_is_error_7(env, version):
    c = env["store"].conn()
    if version is None:
        c.send(tx.PREAMBLE + tx.frame(tx.HELLO, b'{"agent":"x"}'))
    else:
        c.send(tx.PREAMBLE + tx.hello(uniq("v"), version=version))
    assert_error_last(c, tx.UNSUPPORTED_VERSION)
    c.close()


@pytest.mark.parametrize("name", ["", "a" * 33, "bob smith", "bob/1", "bob@x"])
def test_invalid_name_is_error_15(env, name):
    c = env["store"].conn()
    c.send(tx.PREAMBLE + tx.hello(name))
    assert_error_last(c, tx.INVALID_NAME)
    c.close()


def test_unicode_names_allowed(env):
    name = "é٣" + uniq("x")[-6:]
    c = hs(env["nostore"], name)
    assert c.welcome["name"] == name
    c.close()


def test_hello_not_an_object_is_error_2(env):
    c = env["store"].conn()
    c.send(tx.PREAMBLE + tx.frame(tx.HELLO, b"[1]"))
    assert_error_last(c, tx.MALFORMED_FRAME)
    c.close()


def test_hello_not_utf8_is_error_5(env):
    c = env["store"].conn()
    c.send(tx.PREAMBLE + tx.frame(tx.HELLO, b'{"version":1,"agent":"\xff"}'))
    assert_error_last(c, tx.INVALID_UTF8)
    c.close()


@pytest.mark.parametrize("sess", ["", "a" * 65, 5])
def test_bad_session_is_error_2(env, sess):
    c = env["store"].conn()
    c.send(tx.PREAMBLE + tx.hello(uniq("s"), extra={"session": sess}))
    assert_error_last(c, tx.MALFORMED_FRAME)
    c.close()


def test_session_of_64_and_null_name(env):
    c = hs(env["nostore"], None, "a" * 63 + uniq("")[-1])
    assert c.welcome["name"].startswith("guest-")
    c.close()


@pytest.mark.parametrize("extra", [{"name": 5}, {"agent": 5}])
def test_listed_key_of_wrong_type_is_error_2(env, extra):
    c = env["store"].conn()
    c.send(tx.PREAMBLE + tx.hello(None, agent=None, extra=extra))
    assert_error_last(c, tx.MALFORMED_FRAME)
    c.close()


def test_unknown_hello_keys_ignored_and_deep_json_is_error_2(env):
    c = hs(env["nostore"], uniq("k"), extra={"future": {"x": [1, 2]}})
    c.close()
    c = env["store"].conn()
    deep = b'{"version":1,"x":' + b"[" * 20000 + b"]" * 20000 + b"}"
    c.send(tx.PREAMBLE + tx.frame(tx.HELLO, deep))
    assert_error_last(c, tx.MALFORMED_FRAME)
    c.close()


def test_second_hello_is_error_6(env):
    c = hs(env["store"], uniq("h"))
    c.send(tx.hello(uniq("h")))
    assert_error_last(c, tx.UNEXPECTED_FRAME)
    c.close()


# --------------------------------------------------------------------------- messages


def test_message_text_and_bytes_replies(env):
    for key in ("store", "nostore"):
        c = hs(env[key], uniq("m"), session())
        c.send(tx.message(1, "hello") + tx.message(2, b"\x00\xff\xfe"))
        a1, a2 = c.read(), c.read()
        for a, mid in ((a1, 1), (a2, 2)):
            assert isinstance(a, tx.Ack) and a.type == tx.ACK
            assert (a.id, a.status) == (mid, tx.OK)
            assert a.flags & ~tx.TEXT == 0  # the receiver itself answered
            if a.flags & tx.TEXT:
                a.reply.decode("utf-8")
        assert a1.flags == tx.TEXT and a1.reply == b"received"
        c.close()


def test_acks_in_arrival_order(env):
    c = hs(env["store"], uniq("o"), session())
    ids = [*range(1, 120), 200, 1000, 1001, 2**40, 2**62, 2**63 - 1]
    data = b"".join(
        tx.message(i, f"m{i}" if n % 2 else f"b{i}".encode()) for n, i in enumerate(ids)
    )
    c.send(data)
    got = [c.read() for _ in ids]
    assert [a.id for a in got] == ids
    assert all(a.type == tx.ACK and a.status == tx.OK for a in got)
    c.close()


def test_server_ignores_flag_bits_a_client_should_not_set(env):
    """SPEC GAP (silent): 'a client sets bit 0 alone'; the server ignores the others."""
    c = hs(env["store"], uniq("f"))
    c.send(tx.message(1, "x", flags=0xFF) + tx.message(2, b"\xff", flags=0xFE))
    a1, a2 = c.read(), c.read()
    assert (a1.id, a1.status, a2.id, a2.status) == (1, tx.OK, 2, tx.OK)
    c.close()


def test_max_u64_id(env):
    c = hs(env["nostore"], uniq("u"))
    c.send(tx.message(tx.U64_MAX, "last"))
    a = c.read()
    assert (a.id, a.status) == (tx.U64_MAX, tx.OK)
    c.close()


def test_store_refuses_ids_above_2_63_minus_1(env):
    """Documented: a server with a store refuses (status 2) an id it cannot store."""
    c = hs(env["store"], uniq("u"), session())
    c.send(tx.message(2**63, "big id"))
    a = c.read()
    assert (a.id, a.status) == (2**63, 2)
    assert "cannot be stored" in a.reason
    c.close()


def test_too_large_is_status_1_and_connection_stays_usable(env):
    c = hs(env["store"], uniq("big"), session())
    c.send(tx.message(1, b"x" * MIB))  # exactly the limit: fine
    c.send(tx.message(2, b"x" * (MIB + 1)))  # one over
    c.send(tx.message(3, "after"))
    a1, a2, a3 = c.read(), c.read(), c.read()
    assert (a1.id, a1.status) == (1, tx.OK)
    assert (a2.id, a2.status) == (2, tx.TOO_LARGE)
    assert a2.reply == b""
    assert (a3.id, a3.status, a3.reply) == (3, tx.OK, b"received")
    c.close()


def test_too_large_id_still_counts(env):
    """'Its id must still be greater than the one before.'"""
    c = hs(env["small"], uniq("big"))
    c.send(tx.message(5, b"y" * (SMALL + 1)) + tx.message(5, "again"))
    a = c.read()
    assert (a.id, a.status) == (5, tx.TOO_LARGE)
    assert_error_last(c, tx.ID_NOT_INCREASING)
    c.close()


def test_too_large_routed_is_status_1(env):
    c = hs(env["small"], uniq("big"))
    c.send(tx.routed(1, "nobody", b"z" * (SMALL + 1)) + tx.message(2, "ok"))
    a1, a2 = c.read(), c.read()
    assert (a1.id, a1.status) == (1, tx.TOO_LARGE)
    assert (a2.id, a2.status) == (2, tx.OK)
    c.close()


def test_sixteen_times_the_limit_is_discarded_and_more_is_error_4(env):
    c = hs(env["small"], uniq("big"))
    c.send(tx.message(1, b"q" * (16 * SMALL)))
    a = c.read()
    assert (a.id, a.status) == (1, tx.TOO_LARGE)
    # Only the header and id of the over-limit frame: judged before the payload.
    c.send(struct.pack(">IBQB", 10 + 16 * SMALL + 1, tx.MESSAGE, 2, 0))
    assert_error_last(c, tx.FRAME_TOO_LARGE)
    c.close()


def test_frame_over_16_mib_is_error_4_after_fixed_fields(env):
    c = hs(env["store"], uniq("big"))
    c.send(struct.pack(">IBQB", 10 + 16 * MIB + 1, tx.MESSAGE, 1, 0))
    err = assert_error_last(c, tx.FRAME_TOO_LARGE)
    assert err.reason == f"message of {16 * MIB + 1} bytes"
    c.close()


def test_frame_over_16_mib_header_only_is_error_4(env):
    c = hs(env["store"], uniq("big"))
    c.sock.settimeout(1.5)
    c.send(struct.pack(">IB", 10 + 16 * MIB + 1, tx.MESSAGE))
    assert_error_last(c, tx.FRAME_TOO_LARGE)
    c.close()


def test_routed_header_alone_over_any_limit_is_error_4(env):
    c = hs(env["store"], uniq("big"))
    c.sock.settimeout(1.5)
    c.send(struct.pack(">IB", 11 + 128 + 16 * MIB + 1000, tx.ROUTED))
    assert_error_last(c, tx.FRAME_TOO_LARGE)
    c.close()


def test_routed_over_16x_is_error_4_after_fixed_fields(env):
    c = hs(env["store"], uniq("big"))
    c.send(struct.pack(">IBQBB", 11 + 3 + 16 * MIB + 1, tx.ROUTED, 1, 1, 3))
    assert_error_last(c, tx.FRAME_TOO_LARGE)
    c.close()


def test_other_frame_over_64k_is_error_4(env):
    c = hs(env["store"], uniq("big"))
    c.send(struct.pack(">IB", 65_537, tx.GOODBYE))
    assert_error_last(c, tx.FRAME_TOO_LARGE)
    c.close()


def test_length_zero_is_error_2(env):
    c = hs(env["store"], uniq("z"))
    c.send(struct.pack(">IB", 0, tx.MESSAGE))
    assert_error_last(c, tx.MALFORMED_FRAME)
    c.close()


def test_message_shorter_than_fixed_fields_is_error_2(env):
    c = hs(env["store"], uniq("z"))
    c.send(tx.frame(tx.MESSAGE, b"\0\0\0\0\0\0\0\x01"))  # no flags byte
    assert_error_last(c, tx.MALFORMED_FRAME)
    c.close()


def test_text_not_utf8_is_error_5_after_earlier_acks(env):
    c = hs(env["store"], uniq("z"), session())
    c.send(tx.message(1, "fine") + tx.message(2, b"\xc3\x28", flags=tx.TEXT))
    a = c.read()
    assert (a.id, a.status) == (1, tx.OK)
    assert_error_last(c, tx.INVALID_UTF8)
    c.close()


def test_ids_not_increasing_error_10_last_after_acks(env):
    c = hs(env["store"], uniq("id"), session())
    c.send(tx.message(1, "a") + tx.message(2, "b") + tx.message(2, "c"))
    frames = c.read_all()
    assert [f.type for f in frames] == [tx.ACK, tx.ACK, tx.ERROR]
    assert [f.id for f in frames[:2]] == [1, 2]
    assert frames[2].code == tx.ID_NOT_INCREASING
    c.close()


def test_id_zero_is_error_10(env):
    c = hs(env["nostore"], uniq("id"))
    c.send(tx.message(0, "zero"))
    assert_error_last(c, tx.ID_NOT_INCREASING)
    c.close()


def test_message_and_routed_share_one_counter(env):
    c = hs(env["nostore"], uniq("id"))
    c.send(tx.message(5, "five") + tx.routed(5, "nobody", "again"))
    a = c.read()
    assert (a.id, a.status) == (5, tx.OK)
    assert_error_last(c, tx.ID_NOT_INCREASING)
    c.close()


def test_unknown_frame_type_error_3_last(env):
    c = hs(env["store"], uniq("t"), session())
    c.send(tx.message(1, "a") + tx.frame(0x7E, b"whatever"))
    frames = c.read_all()
    assert [f.type for f in frames] == [tx.ACK, tx.ERROR]
    assert frames[1].code == tx.UNKNOWN_FRAME_TYPE
    assert frames[1].reason == "unknown frame type 126"
    c.close()


def test_unknown_type_judged_from_header_alone(env):
    c = hs(env["store"], uniq("t"))
    c.send(struct.pack(">IB", 1000, 0x7E))  # payload never sent
    assert_error_last(c, tx.UNKNOWN_FRAME_TYPE)
    c.close()


def test_welcome_from_client_is_error_6(env):
    c = hs(env["store"], uniq("t"))
    c.send(tx.frame(tx.WELCOME, b'{"version":1}'))
    assert_error_last(c, tx.UNEXPECTED_FRAME)
    c.close()


def test_ack_for_unknown_id_is_ignored(env):
    c = hs(env["store"], uniq("t"))
    c.send(tx.ack(12345, reply="?") + tx.message(1, "still here"))
    a = c.read()
    assert (a.type, a.id, a.status) == (tx.ACK, 1, tx.OK)
    c.close()


def test_ping_pong(env):
    c = hs(env["store"], uniq("p"))
    c.send(tx.ping(b"12345678"))
    p = c.read()
    assert (p.type, p.data) == (tx.PONG, b"12345678")
    c.send(tx.frame(tx.PING, b"short"))
    assert_error_last(c, tx.MALFORMED_FRAME)
    c.close()


def test_stats_asked_and_answered(env):
    c = hs(env["store"], uniq("s"))
    c.send(tx.message(1, "counted"))
    a = c.read()
    assert (a.type, a.id, a.status) == (tx.ACK, 1, tx.OK)
    c.send(tx.stats())  # (a STATS answer is not an ACK: not ordered with them)
    st = c.read()
    assert st.type == tx.STATS and isinstance(st.obj.get("accepted"), int)
    assert st.obj["accepted"] >= 1 and "refused" not in st.obj
    c.close()


def test_stats_before_welcome_is_unexpected(env):
    c = env["store"].conn()
    c.send(tx.PREAMBLE + tx.stats())
    assert_error_last(c, tx.UNEXPECTED_FRAME)
    c.close()


def test_ping_pipelined_after_hello_gets_pong_after_welcome(env):
    c = env["store"].conn()
    c.send(tx.PREAMBLE + tx.hello(uniq("p")) + tx.ping(b"\x01" * 8))
    w, p = c.read(), c.read()
    assert w.type == tx.WELCOME
    assert (p.type, p.data) == (tx.PONG, b"\x01" * 8)
    c.close()


def test_messages_pipelined_after_hello(env):
    c = env["nostore"].conn()
    c.send(tx.PREAMBLE + tx.hello(uniq("p")) + tx.message(1, "early"))
    w, a = c.read(), c.read()
    assert w.type == tx.WELCOME
    assert (a.type, a.id, a.status) == (tx.ACK, 1, tx.OK)
    c.close()


def test_goodbye_after_every_ack_then_close(env):
    c = hs(env["store"], uniq("g"), session())
    c.send(b"".join(tx.message(i, f"n{i}") for i in range(1, 21)) + tx.goodbye())
    frames = c.read_all()
    assert [f.type for f in frames] == [tx.ACK] * 20 + [tx.GOODBYE]
    assert [f.id for f in frames[:20]] == list(range(1, 21))
    assert frames[-1].reason == "goodbye"
    c.close()


def test_message_after_goodbye_is_error_6(env):
    c = hs(env["nostore"], uniq("g"))
    c.send(tx.goodbye("") + tx.message(1, "late"))
    frames = c.read_all()
    assert frames[0].type == tx.GOODBYE
    # the server may have closed before reading the late MESSAGE; if it answers, ERROR 6
    if len(frames) > 1:
        assert frames[-1].type == tx.ERROR and frames[-1].code == tx.UNEXPECTED_FRAME
    c.close()


def test_half_close_gets_answers_then_close_without_goodbye(env):
    c = hs(env["store"], uniq("hc"), session())
    c.send(tx.message(1, "a") + tx.message(2, "b"))
    c.sock.shutdown(socket.SHUT_WR)
    frames = c.read_all()
    assert [(f.type, f.id) for f in frames] == [(tx.ACK, 1), (tx.ACK, 2)]
    c.close()


def test_truncated_frame_is_error_11(env):
    c = hs(env["store"], uniq("tr"))
    c.send(tx.message(1, "whole")[:-2])
    c.sock.shutdown(socket.SHUT_WR)
    assert_error_last(c, tx.TRUNCATED_FRAME)
    c.close()


def test_error_from_client_closes_without_answer(env):
    c = hs(env["store"], uniq("e"))
    c.send(tx.error(tx.INTERNAL_ERROR, "client broke"))
    assert c.read_all() == []
    c.close()


# --------------------------------------------------------------------------- routing


def test_routed_with_store_stored_then_receipt(env):
    s = env["store"]
    alice, bob = uniq("alice"), uniq("bob")
    a = hs(s, alice, session())
    b = hs(s, bob, session())
    a.send(tx.routed(1, bob, "hi bob"))
    ack = a.read()
    assert (ack.type, ack.id, ack.status) == (tx.ACK, 1, tx.OK)
    assert ack.flags & ~tx.TEXT == tx.STORED  # bob is here: not AWAY
    assert ack.reason == f"stored for {bob}"
    fwd = b.read()
    assert isinstance(fwd, tx.Routed) and fwd.type == tx.ROUTED
    assert (fwd.peer, fwd.flags, fwd.body) == (alice, tx.TEXT, b"hi bob")
    assert fwd.id >= 1
    b.send(tx.ack(fwd.id, reply="thanks"))
    rc = a.read()
    assert (rc.type, rc.id, rc.status, rc.flags) == (tx.RECEIPT, 1, tx.OK, 0x05)
    assert (rc.reason, rc.reply) == ("", b"thanks")
    log = [e for e in s.log() if e.get("sender") == alice]
    assert [(e["recipient"], e["seq"]) for e in log] == [(bob, fwd.id)]
    a.close()
    b.close()


def test_receipt_carries_recipient_refusal_and_bytes_reply(env):
    s = env["store"]
    alice, bob = uniq("alice"), uniq("bob")
    a = hs(s, alice, session())
    b = hs(s, bob, session())
    a.send(tx.routed(1, bob, "spam") + tx.routed(2, bob, b"\x01\x02"))
    assert [x.id for x in read_kind(a, 2)] == [1, 2]
    f1, f2 = b.read(), b.read()
    assert f2.flags == 0 and f2.body == b"\x01\x02" and f2.id > f1.id
    b.send(tx.ack(f1.id, tx.REFUSED, reason="no spam", flags=0))
    b.send(tx.ack(f2.id, reply=b"\xff\x00"))
    r1, r2 = a.read(), a.read()
    assert (r1.type, r1.id, r1.status, r1.flags, r1.reason) == (
        tx.RECEIPT,
        1,
        tx.REFUSED,
        tx.DELIVERED,
        "no spam",
    )
    assert (r2.type, r2.id, r2.status, r2.flags, r2.reply) == (
        tx.RECEIPT,
        2,
        tx.OK,
        tx.DELIVERED,
        b"\xff\x00",
    )
    a.close()
    b.close()


def test_routed_without_store_ack_is_recipients_answer(env):
    s = env["nostore"]
    alice, bob = uniq("alice"), uniq("bob")
    a = hs(s, alice, session())
    b = hs(s, bob, session())
    a.send(tx.routed(7, bob, "hi bob"))
    fwd = b.read()
    assert (fwd.id, fwd.peer, fwd.body) == (1, alice, b"hi bob")  # bob's connection: 1
    assert quiet(a), "the sender's ACK must wait for the recipient"
    b.send(tx.ack(fwd.id, reply="thanks"))
    ack = a.read()
    assert (ack.type, ack.id, ack.status, ack.flags) == (tx.ACK, 7, tx.OK, 0x05)
    assert ack.reply == b"thanks"
    a.send(tx.routed(9, bob, "again"))
    fwd2 = b.read()
    assert fwd2.id == 2
    b.send(tx.ack(fwd2.id, tx.REFUSED, reason="no spam", flags=0))
    ack2 = a.read()
    assert (ack2.id, ack2.status, ack2.flags, ack2.reason) == (
        9,
        tx.REFUSED,
        tx.DELIVERED,
        "no spam",
    )
    assert quiet(a), "no RECEIPT without a store"
    a.close()
    b.close()


def test_routed_without_store_recipient_absent_is_status_5(env):
    a = hs(env["nostore"], uniq("alice"), session())
    a.send(tx.routed(1, uniq("ghost"), "anyone?"))
    ack = a.read()
    assert (ack.type, ack.id, ack.status) == (tx.ACK, 1, tx.NOT_DELIVERED)
    assert ack.flags & ~tx.TEXT == 0
    assert ack.reason
    a.close()


def test_routed_without_store_recipient_leaves_is_status_5(env):
    s = env["nostore"]
    bob = uniq("bob")
    a = hs(s, uniq("alice"), session())
    b = hs(s, bob, session())
    a.send(tx.routed(1, bob, "hi"))
    assert b.read().type == tx.ROUTED
    b.close()
    ack = a.read()
    assert (ack.id, ack.status) == (1, tx.NOT_DELIVERED)
    assert ack.flags & ~tx.TEXT == 0
    a.close()


@pytest.mark.parametrize("key", ["store", "nostore"])
def test_routed_to_server_is_status_5(env, key):
    a = hs(env[key], uniq("alice"), session())
    a.send(tx.routed(1, "server", "hi server"))
    ack = a.read()
    assert (ack.type, ack.id, ack.status) == (tx.ACK, 1, tx.NOT_DELIVERED)
    a.close()


def test_routed_name_len_over_128_is_error_15_before_payload(env):
    c = hs(env["store"], uniq("r"))
    c.send(struct.pack(">IBQBB", 11 + 200 + 5, tx.ROUTED, 1, 1, 200))  # payload not sent
    assert_error_last(c, tx.INVALID_NAME)
    c.close()


def test_routed_name_len_past_frame_is_error_2(env):
    c = hs(env["store"], uniq("r"))
    c.send(tx.frame(tx.ROUTED, struct.pack(">QBB", 1, 1, 20) + b"bob"))
    assert_error_last(c, tx.MALFORMED_FRAME)
    c.close()


def test_routed_invalid_name_is_error_15(env):
    c = hs(env["store"], uniq("r"))
    c.send(tx.routed(1, "no such name!", "x"))
    assert_error_last(c, tx.INVALID_NAME)
    c.close()


def test_away_recipient_gets_outbox_in_order_with_stable_ids(env):
    s = env["store"]
    alice, bob, bob_session = uniq("alice"), uniq("bob"), session()
    a = hs(s, alice, session())
    a.send(b"".join(tx.routed(i, bob, f"note {i}") for i in (1, 2, 3)))
    for i, ack in zip((1, 2, 3), read_kind(a, 3), strict=True):
        assert (ack.type, ack.id, ack.status) == (tx.ACK, i, tx.OK)
        assert ack.flags & ~tx.TEXT == tx.STORED | tx.AWAY
        assert ack.reason == f"stored for {bob}, who is not connected"
    b = hs(s, bob, bob_session)
    assert b.welcome["stable_ids"] is True
    got = read_kind(b, 3)
    assert [(f.type, f.peer, f.text) for f in got] == [
        (tx.ROUTED, alice, f"note {i}") for i in (1, 2, 3)
    ]
    seqs = [f.id for f in got]
    assert seqs == sorted(seqs) and len(set(seqs)) == 3
    b.send(tx.ack(seqs[0], reply="one"))
    r = a.read()
    assert (r.type, r.id, r.reply) == (tx.RECEIPT, 1, b"one")
    b.close()  # the other two stay in bob's outbox
    b2 = hs(s, bob, bob_session)
    again = read_kind(b2, 2)
    assert [(f.id, f.text) for f in again] == [(seqs[1], "note 2"), (seqs[2], "note 3")]
    b2.send(tx.ack(seqs[1], reply="two") + tx.ack(seqs[2], reply="three"))
    rs = read_kind(a, 2)
    assert [(r.type, r.id, r.reply) for r in rs] == [
        (tx.RECEIPT, 2, b"two"),
        (tx.RECEIPT, 3, b"three"),
    ]
    a.close()
    b2.close()


def test_receipts_go_to_the_senders_session_after_reconnect(env):
    s = env["store"]
    alice, alice_s, bob = uniq("alice"), session(), uniq("bob")
    a = hs(s, alice, alice_s)
    a.send(tx.routed(1, bob, "later"))
    assert a.read().flags & tx.AWAY
    a.close()
    a2 = hs(s, alice, alice_s)
    b = hs(s, bob, session())
    fwd = b.read()
    b.send(tx.ack(fwd.id, reply="thanks"))
    rc = a2.read()
    assert (rc.type, rc.id, rc.flags, rc.reply) == (tx.RECEIPT, 1, 0x05, b"thanks")
    a2.close()
    b.close()


def test_resend_after_reconnect_same_session_not_stored_twice(env):
    s = env["store"]
    alice, alice_s, away = uniq("alice"), session(), uniq("away")
    text, rtext = f"resend {uuid.uuid4().hex}", f"routed {uuid.uuid4().hex}"
    a = hs(s, alice, alice_s)
    a.send(tx.message(1, text) + tx.routed(2, away, rtext))
    first = read_kind(a, 2)
    a.close()
    a2 = hs(s, alice, alice_s)
    a2.send(tx.message(1, text) + tx.routed(2, away, rtext) + tx.message(3, "new one"))
    second = read_kind(a2, 3)
    assert [(x.type, x.id, x.status) for x in second] == [
        (tx.ACK, 1, tx.OK),
        (tx.ACK, 2, tx.OK),
        (tx.ACK, 3, tx.OK),
    ]
    assert second[0].reply == first[0].reply == b"received"
    assert second[0].flags == first[0].flags
    assert second[1].flags & tx.STORED and first[1].flags & tx.STORED
    log = s.log()
    assert sum(1 for e in log if e.get("text") == text) == 1
    assert sum(1 for e in log if e.get("text") == rtext) == 1
    assert sum(1 for e in log if e.get("text") == "new one" and e["sender"] == alice) == 1
    a2.close()


def test_resend_without_store_is_handled_again(env):
    s = env["nostore"]
    name, sess = uniq("alice"), session()
    a = hs(s, name, sess)
    a.send(tx.message(1, "twice"))
    assert a.read().status == tx.OK
    a.close()
    a2 = hs(s, name, sess)
    a2.send(tx.message(1, "twice"))
    again = a2.read()
    assert (again.id, again.status, again.reply) == (1, tx.OK, b"received")
    a2.close()
    events = [json.loads(x) for x in s.out_path.read_text().splitlines() if x.startswith("{")]
    handled = [e for e in events if e.get("event") == "message" and e.get("sender") == name]
    assert len(handled) == 2


# --------------------------------------------------------------------------- names


def test_name_server_refused(env):
    c = env["store"].conn()
    c.send(tx.PREAMBLE + tx.hello("server", session()))
    assert_error_last(c, tx.NAME_TAKEN)
    c.close()


def test_name_held_by_another_session_is_error_14(env):
    s = env["store"]
    name = uniq("holder")
    holder = hs(s, name, session())
    for other in (session(), None):
        c = s.conn()
        c.send(tx.PREAMBLE + tx.hello(name, other))
        assert_error_last(c, tx.NAME_TAKEN)
        c.close()
    holder.send(tx.ping(b"stillhere"[:8]))
    assert holder.read().type == tx.PONG  # the holder keeps it
    holder.close()
    time.sleep(0.2)
    c = hs(s, name, session())  # free once the holder is gone
    c.close()


@pytest.mark.parametrize("name", ["Server", "SERVER"])
def test_server_name_reserved_in_any_case(env, name):
    c = env["nostore"].conn()
    c.send(tx.PREAMBLE + tx.hello(name, session()))
    f = c.read()  # the server answers WELCOME: do not wait for a close
    assert isinstance(f, tx.Error) and f.code == tx.NAME_TAKEN, f
    c.close()


def test_names_differing_in_case_are_two_names(env):
    """Documented: names compare exactly (case-sensitively)."""
    s = env["nostore"]
    base = uniq("Case")
    holder = hs(s, base, session())
    c = s.conn()
    c.send(tx.PREAMBLE + tx.hello(base.lower(), session()))
    f = c.read()
    assert f.type == tx.WELCOME, f
    c.close()
    holder.close()


def test_holder_without_session_keeps_name(env):
    s = env["store"]
    name = uniq("nos")
    holder = hs(s, name)
    for other in (session(), None):
        c = s.conn()
        c.send(tx.PREAMBLE + tx.hello(name, other))
        assert_error_last(c, tx.NAME_TAKEN)
    holder.close()


def test_routed_to_oneself_is_delivered_back(env):
    """SPEC GAP (silent): a ROUTED to one's own name. The server stores and forwards it."""
    name = uniq("self")
    c = hs(env["store"], name, session())
    c.send(tx.routed(1, name, "note to self"))
    ack, fwd = c.read(), c.read()
    assert (ack.type, ack.id, ack.flags & ~tx.TEXT) == (tx.ACK, 1, tx.STORED)
    assert (fwd.type, fwd.peer, fwd.text) == (tx.ROUTED, name, "note to self")
    c.send(tx.ack(fwd.id, reply="noted"))
    rc = c.read()
    assert (rc.type, rc.id, rc.reply) == (tx.RECEIPT, 1, b"noted")
    c.close()


def test_same_session_takes_name_over(env):
    s = env["store"]
    name, sess, sender = uniq("me"), session(), uniq("sender")
    old = hs(s, name, sess)
    peer = hs(s, sender, session())
    peer.send(tx.routed(1, name, "unacked"))
    assert peer.read().flags & tx.STORED
    fwd = old.read()
    new = hs(s, name, sess)
    assert new.welcome["name"] == name
    assert old.read_all() == []  # closed without ERROR or GOODBYE
    again = new.read()
    assert (again.type, again.id, again.text) == (tx.ROUTED, fwd.id, "unacked")
    new.send(tx.ack(again.id, reply="ok"))
    assert peer.read().type == tx.RECEIPT
    for c in (old, new, peer):
        c.close()


def test_takeover_without_store_is_not_delivered(env):
    s = env["nostore"]
    name, sess = uniq("me"), session()
    old = hs(s, name, sess)
    peer = hs(s, uniq("sender"), session())
    peer.send(tx.routed(1, name, "unacked"))
    assert old.read().type == tx.ROUTED
    new = hs(s, name, sess)
    ack = peer.read()
    assert (ack.id, ack.status) == (1, tx.NOT_DELIVERED)
    for c in (old, new, peer):
        c.close()


def test_receipt_needs_a_session(env):
    s = env["store"]
    bob = uniq("bob")
    a = hs(s, uniq("alice"))  # no session
    b = hs(s, bob, session())
    a.send(tx.routed(1, bob, "hi"))
    assert a.read().flags & tx.STORED
    fwd = b.read()
    b.send(tx.ack(fwd.id, reply="thanks"))
    assert quiet(a), "a sender without a session gets no RECEIPT"
    a.close()
    b.close()


def test_reasons_cut_to_1000_characters(env):
    for key in ("store", "nostore"):
        s = env[key]
        bob = uniq("bob")
        a = hs(s, uniq("alice"), session())
        b = hs(s, bob, session())
        a.send(tx.routed(1, bob, "x"))
        if key == "store":
            assert a.read().type == tx.ACK
        fwd = b.read()
        b.send(tx.ack(fwd.id, tx.REFUSED, reason="é" * 1500, flags=0))
        r = a.read()
        assert r.status == tx.REFUSED and r.reason == "é" * 1000
        a.close()
        b.close()


@pytest.mark.parametrize("key", ["store", "nostore"])
def test_client_goodbye_waits_for_its_acks(env, key):
    s = env[key]
    alice, bob = uniq("alice"), uniq("bob")
    a = hs(s, alice, session())
    b = hs(s, bob, session())
    a.send(tx.routed(1, bob, "pending"))
    if key == "store":
        assert a.read().flags & tx.STORED
    fwd = b.read()
    b.send(tx.goodbye("bye"))
    g = b.read()
    assert (g.type, g.reason) == (tx.GOODBYE, "goodbye")
    a.send(tx.routed(2, bob, "to a leaving client"))
    if key == "store":
        late = a.read()
        assert (late.id, late.status, late.flags & ~tx.TEXT) == (2, tx.OK, tx.STORED | tx.AWAY)
    assert quiet(b), "not closed while bob has a message outstanding"
    b.send(tx.ack(fwd.id, reply="late ack"))
    assert b.read_all() == []  # nothing new after GOODBYE, then the close
    first = a.read()
    assert (first.id, first.status, first.flags, first.reply) == (
        1,
        tx.OK,
        tx.TEXT | tx.DELIVERED,
        b"late ack",
    )
    assert first.type == (tx.RECEIPT if key == "store" else tx.ACK)
    if key == "nostore":
        late = a.read()
        assert (late.id, late.status, late.flags & ~tx.TEXT) == (2, tx.NOT_DELIVERED, 0)
    a.close()


def test_server_shutdown_says_goodbye_and_still_answers(tmp_path):
    srv = Server(tmp_path, "shutdown").wait_ready()
    try:
        c = srv.conn()
        assert c.handshake(uniq("sd"), session()).type == tx.WELCOME
        c.send(tx.message(1, "before"))
        first = c.read()
        while first.type == tx.PING:  # the server may ping a quiet client at any time
            first = c.read()
        assert first.id == 1
        srv.proc.terminate()
        g = c.read()
        while g.type == tx.PING:
            g = c.read()
        assert (g.type, g.reason) == (tx.GOODBYE, "server shutting down")
        c.send(tx.message(2, "after the server's goodbye") + tx.ping(b"sd-ping!"))
        # a PONG may overtake the ACK of an earlier message
        got = {f.type: f for f in (c.read(), c.read())}
        assert (got[tx.ACK].id, got[tx.ACK].status) == (2, tx.OK)
        assert got[tx.PONG].data == b"sd-ping!"
        c.sock.shutdown(socket.SHUT_WR)
        assert c.read_all() == []
        assert srv.proc.wait(5) == 0
    finally:
        srv.stop()


# --------------------------------------------------------------------------- timers


def test_handshake_timeout_error_8_after_preamble(env):
    c = env["timers"].conn()
    c.send(tx.PREAMBLE)
    t0 = time.monotonic()
    err = assert_error_last(c, tx.HANDSHAKE_TIMEOUT)
    assert err.reason == "no handshake within 0.5 s"
    assert 0.3 < time.monotonic() - t0 < 3
    c.close()


def test_silent_connection_gets_a_text_error_line(env):
    c = env["timers"].conn()
    assert c.sock.recv(100) == b"error: no handshake within 0.5 s\n"
    c.close()


def test_idle_ping_then_error_9(env):
    c = hs(env["timers"], uniq("idle"))
    assert c.welcome["limits"]["idle_timeout"] == 1.0
    p = c.read()
    assert (p.type, p.data) == (tx.PING, b"\0" * 8)
    err = assert_error_last(c, tx.IDLE_TIMEOUT)
    assert err.reason == "silent for 1 s"
    c.close()


def test_answering_pings_keeps_the_connection(env):
    c = hs(env["timers"], uniq("idle"))
    t0 = time.monotonic()
    while time.monotonic() - t0 < 1.6:
        p = c.read()
        assert p.type == tx.PING
        c.send(tx.pong(p.data))
    c.send(tx.message(1, "still here"))
    assert c.read().status == tx.OK
    c.close()


# --------------------------------------------------------------------------- auth


def test_token_challenge_right_token(env):
    c = env["token"].conn()
    c.start(uniq("t"), session())
    ch = c.read()
    assert ch.type == tx.CHALLENGE
    assert len(bytes.fromhex(ch.obj["challenge"])) == 32
    assert bytes.fromhex(ch.obj.get("salt", "")) == b""
    c.send(tx.auth(tx.auth_answer(TOKEN, ch.obj["challenge"]).upper()))  # either case
    w = c.read()
    assert w.type == tx.WELCOME
    c.send(tx.message(1, "authed"))
    assert c.read().status == tx.OK
    c.close()
    c2 = env["token"].conn()
    c2.start(uniq("t"))
    assert c2.read().obj["challenge"] != ch.obj["challenge"]  # new every connection
    c2.close()


def test_token_file_whitespace_is_not_part_of_token(env):
    assert tx.read_token_file(str(env["tmp"] / "token")) == TOKEN


def test_token_challenge_wrong_token_is_error_16(env):
    c = env["token"].conn()
    f = c.handshake(uniq("t"), session(), token="not the token")
    assert isinstance(f, tx.Error) and f.code == tx.AUTH_FAILED
    assert f.reason == "login refused: wrong token"
    assert c.read_all() == []
    c.close()


def test_message_before_auth_is_error_6(env):
    c = env["token"].conn()
    c.send(tx.PREAMBLE + tx.hello(uniq("t")) + tx.message(1, "too early"))
    frames = c.read_all()
    assert frames[0].type == tx.CHALLENGE
    assert frames[-1].type == tx.ERROR and frames[-1].code == tx.UNEXPECTED_FRAME
    c.close()


@pytest.mark.parametrize("answer", [b'{"answer":"00"}', b'{"answer":5}', b'{"answer":"zz"}'])
def test_auth_answer_not_32_hex_bytes_is_error_2(env, answer):
    c = env["token"].conn()
    c.start(uniq("t"))
    assert c.read().type == tx.CHALLENGE
    c.send(tx.frame(tx.AUTH, answer))
    assert_error_last(c, tx.MALFORMED_FRAME)
    c.close()


def test_ping_before_auth_is_error_6(env):
    c = env["token"].conn()
    c.start(uniq("t"))
    assert c.read().type == tx.CHALLENGE
    c.send(tx.ping())
    assert_error_last(c, tx.UNEXPECTED_FRAME)
    c.close()


def test_text_peer_auth_over_plain_tcp_is_refused(env):
    s = socket.create_connection((HOST, env["token"].port), timeout=5)
    OPEN.append(s)
    s.sendall(f"AUTH {TOKEN}\n".encode())
    data = b""
    while chunk := s.recv(4096):
        data += chunk
    assert data.startswith(b"error: ") and data.count(b"\n") == 1


def users_salt(env, name: str) -> str:
    for line in env["users_file"].read_text().splitlines():
        parts = line.split()
        if parts and parts[0] == name:
            return parts[1]
    raise KeyError(name)


def test_users_file_salt(env):
    c = env["users"].conn()
    c.start("ualice", session())
    ch = c.read()
    salt = ch.obj["salt"]
    assert len(bytes.fromhex(salt)) == 16
    assert salt.lower() == users_salt(env, "ualice").lower()
    c.send(tx.auth(tx.auth_answer(ALICE_TOKEN, ch.obj["challenge"], salt)))
    w = c.read()
    assert w.type == tx.WELCOME and w.obj["name"] == "ualice"
    c.close()


def test_unknown_user_gets_stable_fake_salt_and_fails(env):
    s = env["users"]
    name = uniq("nobody")
    salts = []
    for _ in range(2):
        c = s.conn()
        f = c.handshake(name, session(), token="guess")
        salts.append(c.challenge.get("salt", ""))
        assert isinstance(f, tx.Error) and f.code == tx.AUTH_FAILED
        c.close()
    assert len(bytes.fromhex(salts[0])) == 16
    assert salts[0].lower() == salts[1].lower()
    c = s.conn()
    c.start(None)
    ch = c.read()
    assert ch.type == tx.CHALLENGE and len(bytes.fromhex(ch.obj["salt"])) == 16
    c.close()


def test_users_and_shared_token(env):
    s = env["both"]
    c = s.conn()
    f = c.handshake(uniq("guest"), session(), token=TOKEN)
    assert bytes.fromhex(c.challenge.get("salt", "")) == b""
    assert f.type == tx.WELCOME
    c.close()
    c = s.conn()
    f = c.handshake("ualice", session(), token=ALICE_TOKEN)
    assert len(bytes.fromhex(c.challenge["salt"])) == 16
    assert f.type == tx.WELCOME and f.obj["name"] == "ualice"
    c.close()


# --------------------------------------------------------------------------- TLS


FP = re.compile(r"SHA256:(?:[0-9A-F]{2}:){31}[0-9A-F]{2}")


def test_tls_fingerprint_and_handshake(env):
    der = ssl.PEM_cert_to_DER_cert(env["cert_pem"].read_text())
    fp = tx.fingerprint(der)
    assert FP.fullmatch(fp)
    assert fp in env["cert_stdout"]
    shown = subprocess.run(
        [sys.executable, "-m", "telex", "cert", "--show", str(env["cert_pem"])],
        capture_output=True,
        text=True,
        timeout=10,
    ).stdout.strip()
    assert shown == fp
    ctx = tx.pinned_context()
    ctx.set_alpn_protocols(["telex", "http/1.1"])
    c = env["tls"].conn(tls=ctx, fingerprint_pin=fp)
    assert c.peer_fingerprint == fp
    assert c.sock.version() in ("TLSv1.2", "TLSv1.3")
    assert c.sock.selected_alpn_protocol() is None
    f = c.handshake(uniq("tls"), session())
    assert f.type == tx.WELCOME
    c.send(tx.message(1, "secret"))
    assert c.read().reply == b"received"
    c.close()


def test_tls_wrong_pin_refused_by_client(env):
    bad = "SHA256:" + ":".join(["00"] * 32)
    with pytest.raises(ssl.SSLError):
        env["tls"].conn(tls=tx.pinned_context(), fingerprint_pin=bad)


def test_plain_client_of_tls_port_sees_only_close(env):
    c = env["tls"].conn()
    c.send(tx.PREAMBLE + tx.hello(uniq("p")))
    data = b""
    c.sock.settimeout(12)
    try:
        while chunk := c.sock.recv(4096):
            data += chunk
    except ConnectionResetError:
        pass
    assert data == b""  # not a telex byte (nor a TLS alert)
    c.close()


def test_tls_client_of_plain_port_fails(env):
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        env["nostore"].conn(tls=tx.pinned_context())


# --------------------------------------------------------------------------- text peers


def test_text_peer_over_tls(env):
    c = env["tls"].conn(tls=tx.pinned_context())
    c.send(b"over tls\n")
    assert c._fill(len(b"ack 1: received\n"))
    assert c.buf == b"ack 1: received\n"
    c.close()


def test_text_peer_line(env):
    s = socket.create_connection((HOST, env["nostore"].port), timeout=5)
    OPEN.append(s)
    s.sendall(b"hello\r\nsecond\n")
    data = b""
    while data.count(b"\n") < 2:
        chunk = s.recv(4096)
        assert chunk
        data += chunk
    assert data == b"ack 1: received\nack 2: received\n"
    s.close()
