"""docs/protocol.md against the code: its hex examples are the encoder's bytes, its
whole exchange is what the server's broker writes, its state tables are ``RECEIVES``
and ``TRANSITIONS``, and every frame type, error code, ack status and flag is in it."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import pytest

from telex.core import frames
from telex.core.broker import Broker, Close, Find, Link, Load, Peer
from telex.core.events import AckStatus, ErrorCode, ProtocolViolation
from telex.core.frames import PREAMBLE, FrameType
from telex.core.limits import Limits
from telex.core.protocol import Connection, Role
from telex.core.state import RECEIVES, TRANSITIONS, State, next_state
from telex.security import (
    TokenGate,
    Users,
    answer_challenge,
    fingerprint,
    load_token,
    normal_fingerprint,
    stretch,
)
from telex.server.server import default_handler
from telex.store import SQLiteStore

DOC = (Path(__file__).parents[2] / "docs" / "protocol.md").read_text()

# The values the examples use. The agent is the one of telex 0.1.0: an example, not
# whatever version is installed.
AGENT = "telex/0.1.0"
SESSION = "4f1c0b7e9a2d4e6f8b3c5a7d9e1f2a3b"
CHALLENGE = bytes.fromhex("9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08")
SALT = bytes.fromhex("6e1d4f0a2c3b5e7d9f8a1b2c3d4e5f60")
TOKEN = "correct horse battery staple"

HEX_LINE = re.compile(r"^([0-9a-f]{2}(?: [0-9a-f]{2})*)(?: {2,}(.*))?$")
LENGTH_NOTE = re.compile(r"^length (\d+), ([A-Z]+)$")


# -- reading the document -------------------------------------------------------------------


def section(title: str) -> str:
    """The text of the ``## title`` section, up to the next ``##`` heading."""
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", DOC, re.M | re.S)
    assert match, f"no section {title!r} in docs/protocol.md"
    return match.group(1)


def fenced(text: str, info: str) -> list[str]:
    """The bodies of the fenced blocks with this info string."""
    return re.findall(rf"^```{info}\n(.*?)^```", text, re.M | re.S)


def segments(block: str) -> list[tuple[str, bytes]]:
    """A hex block as (label, bytes) pairs: a line that is not hex starts a segment."""
    out: list[tuple[str, bytearray]] = []
    for line in block.splitlines():
        if not line.strip():
            continue
        match = HEX_LINE.match(line)
        if match is None:
            out.append((line.strip(), bytearray()))
            continue
        assert out, f"hex before any label: {line!r}"
        data = bytes.fromhex(match.group(1))
        note = LENGTH_NOTE.match(match.group(2) or "")
        if note is not None:  # "length N, TYPE" beside a frame header: check it
            length, name = int(note.group(1)), note.group(2)
            assert data == frames.HEADER.pack(length, FrameType[name]), line
        out[-1][1].extend(data)
    return [(label, bytes(data)) for label, data in out]


def examples() -> dict[str, bytes]:
    """Every labelled hex block outside the whole exchange, by its label."""
    found: dict[str, bytes] = {}
    for title in ("Preamble", "Examples"):
        for block in fenced(section(title), "hex"):
            for label, data in segments(block):
                assert label not in found, f"two examples labelled {label!r}"
                found[label] = data
    return found


# -- what the code makes --------------------------------------------------------------------


def sent(conn: Connection) -> bytes:
    return conn.data_to_send()


def client() -> Connection:
    return Connection(Role.CLIENT)


def server() -> Connection:
    conn = Connection(Role.SERVER)
    assert conn.data_to_send() == PREAMBLE  # queued first, always
    return conn


def expected_examples() -> dict[str, bytes]:
    hello = client()
    hello.initiate(name="alice", agent=AGENT, session=SESSION)
    welcome = server()
    welcome.send_welcome(name="alice", agent=AGENT, limits=Limits().advertised(), stable_ids=True)
    challenge = server()
    challenge.send_challenge(CHALLENGE, SALT)
    auth = client()
    auth.send_auth(answer_challenge(stretch(TOKEN, SALT), CHALLENGE))
    message = client()
    assert message.send_message("hello") == 1
    ok = server()
    ok.send_ack(1, "received")
    refused = server()
    refused.send_rejection(2, AckStatus.REFUSED, "no spam")
    routed = client()
    routed.send_message("hi bob", name="bob", msg_id=3)
    stored = server()
    stored.send_answer(
        3,
        AckStatus.OK,
        "stored for bob, who is not connected",
        b"",
        frames.FLAG_STORED | frames.FLAG_AWAY,
    )
    forwarded = server()
    forwarded.send_message("hi bob", name="alice", msg_id=17)
    receipt = server()
    receipt.send_receipt(3, AckStatus.OK, "", "thanks")
    asked = client()
    asked.send_stats({})
    counters = server()
    counters.send_stats({"accepted": 3, "rejected": 0})
    delivered = server()
    delivered.send_answer(4, AckStatus.OK, "", "thanks", frames.FLAG_DELIVERED)
    ping = server()
    ping.send_ping()  # as the server sends it to a quiet peer
    pong = client()
    pong.send_pong(bytes(8))
    error = server()
    error.send_error(ErrorCode.UNKNOWN_FRAME_TYPE, "unknown frame type 126")
    goodbye = client()
    goodbye.send_goodbye("client closing")
    return {
        "preamble": PREAMBLE,
        "HELLO from alice, with a session": sent(hello)[len(PREAMBLE) :],
        "WELCOME to alice, from a server with a store": sent(welcome),
        "CHALLENGE for alice, a user with a salt": sent(challenge),
        "AUTH with that answer": sent(auth),
        "MESSAGE 1, the text hello": sent(message),
        "ACK of message 1: ok, with the reply received": sent(ok),
        "ACK of message 2: refused, with the reason no spam": sent(refused),
        "ROUTED 3, from alice to bob": sent(routed),
        "ACK of message 3: stored for bob, who is away": sent(stored),
        "ROUTED forwarded to bob from alice, under its seq 17": sent(forwarded),
        "RECEIPT of message 3: bob's answer": sent(receipt),
        "ACK of ROUTED 4 without a store: bob's answer": sent(delivered),
        "PING from the server": sent(ping),
        "PONG": sent(pong),
        "STATS asked by a client": sent(asked),
        "STATS from the server (two of its counters)": sent(counters),
        "ERROR 3": sent(error),
        "GOODBYE from our client": sent(goodbye),
    }


# -- the examples ---------------------------------------------------------------------------


def test_doc_has_exactly_the_examples_this_test_knows() -> None:
    assert sorted(examples()) == sorted(expected_examples())


@pytest.mark.parametrize("label", sorted(expected_examples()))
def test_doc_example_is_the_encoders_bytes(label: str) -> None:
    documented = examples().get(label)
    assert documented is not None, f"docs/protocol.md has no example {label!r}"
    assert documented.hex(" ") == expected_examples()[label].hex(" ")


def test_doc_examples_cover_every_frame_type() -> None:
    shown = {data[4] for label, data in examples().items() if label != "preamble"}
    assert shown == {int(frame_type) for frame_type in FrameType}


def test_doc_error_example_is_what_a_receiver_reports() -> None:
    conn = server()
    hello = client()
    hello.initiate()
    conn.receive_data(sent(hello))
    events = conn.receive_data(frames.HEADER.pack(1, 126))
    assert events[-1] == ProtocolViolation(ErrorCode.UNKNOWN_FRAME_TYPE, "unknown frame type 126")


def test_doc_challenge_answer_is_computed_as_described() -> None:
    block = section("Examples")
    values = dict(re.findall(r"^(challenge|salt|key|answer) +([0-9a-f]+)$", block, re.M))
    token = re.search(r"for the token `([^`]+)`", block)
    shared = re.search(r"shared token.*?`([0-9a-f]{64})`", block, re.S)
    assert token and shared and set(values) == {"challenge", "salt", "key", "answer"}
    assert token.group(1) == TOKEN
    challenge, salt = bytes.fromhex(values["challenge"]), bytes.fromhex(values["salt"])
    key = stretch(TOKEN, salt)
    assert key.hex() == values["key"]
    assert answer_challenge(key, challenge).hex() == values["answer"]
    assert answer_challenge(TOKEN.encode(), challenge).hex() == shared.group(1)
    # the same values as in the CHALLENGE and AUTH frames shown
    shown = examples()
    sent_challenge = json.loads(shown["CHALLENGE for alice, a user with a salt"][5:])
    assert sent_challenge == {"challenge": values["challenge"], "salt": values["salt"]}
    assert json.loads(shown["AUTH with that answer"][5:]) == {"answer": values["answer"]}
    # as written out in the text: the key, then HMAC over the domain and the challenge
    assert key == hashlib.pbkdf2_hmac("sha256", TOKEN.encode(), salt, 200_000, 32)
    assert '"telex-auth-v1" || challenge' in DOC and "200000 iterations" in DOC


def test_doc_fingerprint_format_is_the_codes() -> None:
    shown = re.findall(r"SHA256:(?:[0-9A-F]{2}:){31}[0-9A-F]{2}", section("TLS"))
    assert shown
    assert all(normal_fingerprint(text) == text for text in shown)
    made = fingerprint(b"any DER bytes")
    assert re.fullmatch(r"SHA256:(?:[0-9A-F]{2}:){31}[0-9A-F]{2}", made)


# -- the whole exchange, as the server's broker writes it ------------------------------------


class _Server:
    """The broker with a store, its actions carried out as ``telex.server`` does."""

    def __init__(self, path: Path) -> None:
        self.store = SQLiteStore(path)
        self.broker = Broker(
            default_handler,
            stored=True,
            advertised=Limits().advertised(),
            agent=AGENT,
        )
        self.link = Link(Peer("127.0.0.1:40000"), "127.0.0.1")
        self.broker.connect(self.link)
        self.out = bytearray()
        self.closed = False

    def write(self, data: bytes) -> bytes:
        """One read on the server's side; returns what the server wrote back."""
        self.broker.receive_data(self.link, data)
        self._run()
        out, self.out = bytes(self.out), bytearray()
        return out

    def _run(self) -> None:
        broker = self.broker
        while True:
            for link in broker.take_dirty():
                link.dirty = False
                if link.proto is not None and not self.closed:
                    self.out += link.proto.data_to_send()
            actions = broker.take_actions()
            if not actions:
                batch = broker.take_batch()  # the end of the loop turn: commit
                if batch is None:
                    return
                broker.committed(self.store.commit(batch, 0.0))
                continue
            for action in actions:
                match action:
                    case Close(link):
                        link.dirty = False
                        if link.proto is not None and not self.closed:
                            self.out += link.proto.data_to_send()
                        self.closed = self.closed or isinstance(action, Close)
                    case Load(link, session, name):
                        broker.loaded(link, self.store.session_state(session, name))
                    case Find(link, session, ids):
                        broker.found(link, self.store.find_many(session, ids), ids)
                    case _:
                        pass


def exchange_blocks() -> list[list[tuple[str, bytes]]]:
    return [segments(block) for block in fenced(section("A whole exchange"), "hex")]


@pytest.mark.parametrize("one_byte_at_a_time", [False, True])
def test_doc_exchange_is_what_the_server_writes(tmp_path: Path, one_byte_at_a_time: bool) -> None:
    steps = exchange_blocks()[0]
    assert [label for label, _ in steps] == ["client → server", "server → client"] * 3
    srv = _Server(tmp_path / "telex.db")
    try:
        for (_, request), (_, answer) in zip(steps[::2], steps[1::2], strict=True):
            assert not srv.closed
            if one_byte_at_a_time:  # the same answers however the bytes are split
                got = b"".join(srv.write(request[i : i + 1]) for i in range(len(request)))
            else:
                got = srv.write(request)
            assert got.hex(" ") == answer.hex(" ")
        assert srv.closed  # "Then the server closes the connection."
    finally:
        srv.store.close()


def test_doc_exchange_uses_the_examples_bytes() -> None:
    shown = examples()
    steps = [data for _, data in exchange_blocks()[0]]
    assert steps[0] == PREAMBLE + shown["HELLO from alice, with a session"]
    assert steps[1] == PREAMBLE + shown["WELCOME to alice, from a server with a store"]
    assert steps[2] == shown["MESSAGE 1, the text hello"]
    assert steps[3] == shown["ACK of message 1: ok, with the reply received"]
    assert steps[4] == shown["GOODBYE from our client"]


def test_doc_bad_preamble_answer_is_what_the_server_writes(tmp_path: Path) -> None:
    [(label, answer)] = exchange_blocks()[1]
    assert label == "server → a bad preamble"
    srv = _Server(tmp_path / "telex.db")
    try:
        assert srv.write(PREAMBLE[:1] + b"TELEX!!").hex(" ") == answer.hex(" ")
        assert srv.closed
    finally:
        srv.store.close()


# -- the state tables -----------------------------------------------------------------------


def state_table(role: Role) -> dict[State, tuple[set[FrameType], dict[FrameType, State], str]]:
    """The doc's table for one side: per state, what it receives, where frames move it,
    and the text of its last column."""
    heading = "### The server's side" if role is Role.SERVER else "### The client's side"
    text = section("States")
    assert heading in text
    part = text.split(heading, 1)[1].split("\n### ", 1)[0]
    table: dict[State, tuple[set[FrameType], dict[FrameType, State], str]] = {}
    for line in part.splitlines():
        if not line.startswith("| `"):
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        state = State(cells[0].strip("`"))
        receives = {FrameType[name] for name in re.findall(r"`([A-Z]+)`", cells[1])}
        moves = {
            FrameType[frame]: State(to)
            for frame, to in re.findall(r"`([A-Z]+)` → `([a-z]+)`", cells[2])
        }
        assert state not in table, f"{state} twice in the {role.value}'s table"
        table[state] = (receives, moves, cells[2])
    return table


@pytest.mark.parametrize("role", list(Role))
def test_doc_state_table_is_receives(role: Role) -> None:
    table = state_table(role)
    assert set(table) == set(RECEIVES[role])
    for state, allowed in RECEIVES[role].items():
        assert table[state][0] == set(allowed), f"{role.value} in {state.value}"


@pytest.mark.parametrize("role", list(Role))
def test_doc_state_table_is_transitions(role: Role) -> None:
    table = state_table(role)
    documented = {
        (state, frame): to for state, row in table.items() for frame, to in row[1].items()
    }
    code = {(state, frame): to for (who, state, frame), to in TRANSITIONS.items() if who is role}
    assert documented == code
    for state, (receives, _, _) in table.items():  # the rest keep the state
        for frame in receives - {frame for (s, frame) in code if s is state}:
            assert next_state(role, state, frame) is state
    assert "the preamble → `handshake`" in table[State.PREAMBLE][2]


def test_doc_state_table_has_the_token_servers_auth_state() -> None:
    table = state_table(Role.SERVER)
    assert "to `auth` instead when the server needs a token" in table[State.HANDSHAKE][2]
    hello = next_state(Role.SERVER, State.HANDSHAKE, FrameType.HELLO, needs_auth=True)
    assert hello is State.AUTH


def test_doc_preamble_moves_to_handshake() -> None:
    for role in Role:
        conn = Connection(role)
        conn.receive_data(PREAMBLE)
        assert conn.state is State.HANDSHAKE


# -- every name is documented ---------------------------------------------------------------


def test_doc_names_every_frame_type() -> None:
    for frame_type in FrameType:
        assert f"| 0x{frame_type.value:02x} | `{frame_type.name}` |" in DOC, frame_type


def test_doc_names_every_error_code() -> None:
    for code in ErrorCode:
        assert f"| {code.value} | `{code.name}` |" in DOC, code


def test_doc_names_every_ack_status() -> None:
    for status in AckStatus:
        assert f"| {status.value} | `{status.name}` |" in DOC, status


def test_doc_names_every_flag_bit() -> None:
    flags: dict[str, Any] = {
        name.removeprefix("FLAG_"): value
        for name, value in vars(frames).items()
        if name.startswith("FLAG_")
    }
    assert set(flags) == {"TEXT", "STORED", "DELIVERED", "AWAY"}
    for name, mask in flags.items():
        bit = mask.bit_length() - 1
        assert mask == 1 << bit
        assert f"| {bit} | 0x{mask:02x} | `{name}` |" in DOC, name


# -- rules the doc states that fit in a line of code ------------------------------------------


@pytest.mark.parametrize("version", [None, True, 1.0, "1", 2, 0])
def test_doc_version_must_be_the_integer_1(version: object) -> None:
    hello: dict[str, Any] = {"agent": ""} if version is None else {"version": version}
    conn = server()
    events = conn.receive_data(PREAMBLE + frames.json_frame(FrameType.HELLO, hello))
    assert isinstance(events[-1], ProtocolViolation)
    assert events[-1].code == ErrorCode.UNSUPPORTED_VERSION
    assert '`true`, `1.0`, `"1"`, `2`' in DOC


def test_doc_token_file_rule(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("  s3cret token \t\nsecond line\n")
    assert load_token(path) == "s3cret token"


def test_doc_unknown_names_get_a_stable_salt_and_always_fail(tmp_path: Path) -> None:
    users = Users(tmp_path / "users")
    users.add("alice", TOKEN)
    gate = TokenGate(users=users)
    _, _, alice_salt = gate.challenge("alice")
    key, challenge, salt = gate.challenge("mallory")
    assert len(alice_salt) == len(salt) == 16
    assert gate.challenge("mallory")[2] == salt != gate.challenge("eve")[2]
    for token in (TOKEN, "mallory", ""):
        answer = answer_challenge(stretch(token, salt), challenge)
        assert not gate.verify(key, challenge, answer)
