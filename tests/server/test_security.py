"""TLS, pinned certificates, tokens that never cross the wire, names that belong to someone."""

from __future__ import annotations

import asyncio
import datetime
import os
import ssl
import stat
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import telex
from telex.core import frames
from telex.core.events import Challenge, ErrorCode, PeerError, Welcome
from telex.core.frames import FrameType
from telex.core.protocol import Connection, Role
from telex.core.records import SessionState
from telex.security import (
    KnownHosts,
    Users,
    answer_challenge,
    client_context,
    server_context,
    write_certificate,
)
from telex.server import Server
from telex.store import SQLiteStore

from ..cli.test_cli import TELEX, closed_port, need, one_clear_line
from ..cli.test_cli import telex as run_telex
from ..conftest import TIMEOUT, wait_until

TOKEN = "correct horse battery staple"


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, str]:
    prefix = tmp_path / "server"
    return prefix, write_certificate(prefix, ["localhost", "127.0.0.1"])


def context_of(prefix: Path) -> ssl.SSLContext:
    return server_context(
        prefix.with_name(prefix.name + ".pem"), prefix.with_name(prefix.name + ".key")
    )


@pytest.fixture
async def secured(certificate: tuple[Path, str]) -> AsyncIterator[tuple[Server, str]]:
    prefix, found = certificate
    async with Server(port=0, ssl=context_of(prefix), token=TOKEN) as server:
        yield server, found


def pinned(found: str, **options: object) -> dict[str, object]:
    return {"ssl": client_context(verify=False), "fingerprint": found, **options}


async def test_both_ways_over_tls_with_a_token(secured: tuple[Server, str]) -> None:
    server, found = secured
    got: list[telex.Message] = []
    async with telex.connect(
        "127.0.0.1", server.port, name="alice", handler=got.append, **pinned(found, token=TOKEN)
    ) as client:
        assert (await client.send("over TLS")).reply == "received"
        assert (await server.send("alice", "and back")).ok
        assert client.server_fingerprint == found
    assert [m.body for m in got] == ["and back"]


def test_cert_writes_a_key_only_its_owner_reads(certificate: tuple[Path, str]) -> None:
    prefix, found = certificate
    mode = stat.S_IMODE(os.stat(prefix.with_name(prefix.name + ".key")).st_mode)
    assert mode == 0o600
    assert found.startswith("SHA256:") and len(found) == 7 + 32 * 3 - 1


async def test_a_wrong_pin_is_refused(secured: tuple[Server, str]) -> None:
    server, _ = secured
    wrong = "SHA256:" + ":".join(["AB"] * 32)
    with pytest.raises(telex.CertificateRejected, match="not the pinned"):
        await telex.connect("127.0.0.1", server.port, **pinned(wrong, token=TOKEN))


async def test_an_unverifiable_certificate_is_refused(secured: tuple[Server, str]) -> None:
    server, _ = secured
    with pytest.raises(telex.CertificateRejected, match="self-signed"):
        await telex.connect("127.0.0.1", server.port, ssl=client_context(), token=TOKEN)


async def test_a_changed_remembered_certificate_is_refused(
    secured: tuple[Server, str], tmp_path: Path
) -> None:
    server, found = secured
    known = KnownHosts(tmp_path / "known_hosts")
    options = {"ssl": client_context(verify=False), "known_hosts": known, "token": TOKEN}
    asked: list[str] = []
    async with telex.connect(
        "127.0.0.1", server.port, trust=lambda f: asked.append(f) or True, **options
    ):
        pass
    assert asked == [found]
    assert known.get(f"127.0.0.1:{server.port}") == found  # remembered
    async with telex.connect("127.0.0.1", server.port, **options):
        pass  # the same certificate: no question
    known.remember(f"127.0.0.1:{server.port}", "SHA256:" + ":".join(["CD"] * 32))
    with pytest.raises(telex.CertificateRejected, match="HAS CHANGED"):
        await telex.connect("127.0.0.1", server.port, **options)


async def test_an_expired_certificate_is_refused(tmp_path: Path) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    old = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - datetime.timedelta(days=30))
        .not_valid_after(now - datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    (tmp_path / "old.pem").write_bytes(old.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "old.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    found = telex.security.fingerprint((tmp_path / "old.pem").read_bytes())
    async with Server(port=0, ssl=context_of(tmp_path / "old")) as server:
        with pytest.raises(telex.CertificateRejected, match="expired"):
            await telex.connect("127.0.0.1", server.port, **pinned(found))


async def test_a_wrong_token_and_no_token(secured: tuple[Server, str]) -> None:
    server, found = secured
    with pytest.raises(telex.AuthenticationFailed, match="wrong token"):
        await telex.connect("127.0.0.1", server.port, **pinned(found, token="guess"))
    with pytest.raises(telex.AuthenticationFailed, match="needs a token"):
        await telex.connect("127.0.0.1", server.port, **pinned(found))
    assert server.stats()["auth_failures"] >= 1


async def raw_login(port: int, answer_for: bytes | None = None) -> tuple[bytes, list[object]]:
    """Log in by hand over TLS; answer with ``answer_for`` (a recorded answer) if given.
    Returns the challenge and what the server said after the answer."""
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=client_context(verify=False)
    )
    conn = Connection(Role.CLIENT)
    conn.initiate(name="replayer")
    writer.write(conn.data_to_send())
    events: list[object] = []
    async with asyncio.timeout(TIMEOUT):
        while not any(isinstance(e, Challenge) for e in events):
            events += conn.receive_data(await reader.read(4096))
    challenge = next(e for e in events if isinstance(e, Challenge)).challenge
    answer = answer_for or answer_challenge(TOKEN.encode(), challenge)
    writer.write(frames.json_frame(FrameType.AUTH, {"answer": answer.hex()}))
    after: list[object] = []
    async with asyncio.timeout(TIMEOUT):
        while not any(isinstance(e, Welcome | PeerError) for e in after):
            data = await reader.read(4096)
            if not data:
                break
            after += conn.receive_data(data)
    writer.close()
    return answer, after


async def test_a_recorded_answer_cannot_be_replayed(secured: tuple[Server, str]) -> None:
    server, _ = secured
    recorded, after = await raw_login(server.port)
    assert any(isinstance(e, Welcome) for e in after)  # it was a good answer there
    _, replayed = await raw_login(server.port, answer_for=recorded)
    errors = [e for e in replayed if isinstance(e, PeerError)]
    assert errors and errors[0].code == ErrorCode.AUTH_FAILED


async def test_plain_tcp_to_tls_and_tls_to_plain(secured: tuple[Server, str]) -> None:
    server, found = secured
    with pytest.raises(telex.ConnectError, match="expects TLS"):
        await telex.connect("127.0.0.1", server.port, token=TOKEN)
    async with Server(port=0) as plain:
        with pytest.raises(telex.ConnectError, match="does it speak TLS"):
            await telex.connect("127.0.0.1", plain.port, **pinned(found))


async def test_a_silent_tls_peer_is_dropped(certificate: tuple[Path, str]) -> None:
    prefix, _ = certificate
    limits = telex.Limits(handshake_timeout=0.3)
    async with Server(port=0, ssl=context_of(prefix), limits=limits) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        async with asyncio.timeout(TIMEOUT):
            assert await reader.read() == b""  # closed without a TLS handshake
        writer.close()


async def test_failed_logins_slow_down_right_answers_too(secured: tuple[Server, str]) -> None:
    """The wait comes before the check: once an address is slowed, the right token
    waits too, so a quick answer never tells a guesser it was right."""
    server, found = secured
    for _ in range(6):  # the sixth failure makes the next check wait 1 s
        with pytest.raises(telex.AuthenticationFailed):
            await telex.connect("127.0.0.1", server.port, **pinned(found, token="guess"))
    started = asyncio.get_running_loop().time()
    async with telex.connect("127.0.0.1", server.port, **pinned(found, token=TOKEN)) as good:
        waited = asyncio.get_running_loop().time() - started
        assert (await good.send("let in, after the wait")).ok
    assert waited > 0.5


async def test_parallel_guesses_from_one_address_queue(secured: tuple[Server, str]) -> None:
    """Opening many connections at once does not check more answers at once."""
    server, found = secured

    async def guess() -> None:
        with pytest.raises(telex.AuthenticationFailed):
            await telex.connect("127.0.0.1", server.port, **pinned(found, token="guess"))

    guesses = [asyncio.ensure_future(guess()) for _ in range(30)]
    await asyncio.sleep(1.5)
    answered = sum(g.done() for g in guesses)
    assert 5 <= answered <= 7  # five free, then 1 s after the sixth
    assert server.stats()["auth_failures"] == answered
    assert server.logins.waiting("127.0.0.1") == 30 - answered
    for g in guesses:
        g.cancel()
    await asyncio.gather(*guesses, return_exceptions=True)


async def test_names_belong_to_someone(certificate: tuple[Path, str], tmp_path: Path) -> None:
    prefix, found = certificate
    users = Users(tmp_path / "users")
    users.add("alice", "alice's token")
    assert "alice's token" not in (tmp_path / "users").read_text()
    async with Server(port=0, ssl=context_of(prefix), users=Users(tmp_path / "users")) as server:
        async with telex.connect(
            "127.0.0.1", server.port, name="alice", **pinned(found, token="alice's token")
        ) as alice:
            assert (await alice.send("it is me")).ok
        with pytest.raises(telex.AuthenticationFailed):
            await telex.connect(
                "127.0.0.1", server.port, name="alice", **pinned(found, token="not hers")
            )
        with pytest.raises(telex.AuthenticationFailed):  # no users-file name, no shared token
            await telex.connect(
                "127.0.0.1", server.port, name="mallory", **pinned(found, token="x")
            )


# -- real peers --------------------------------------------------------------------------------


def tls_text_peer(command: list[str], lines: str) -> str:
    """Run a TLS text peer, give it ``lines``, return what it printed before we stop it."""
    process = subprocess.Popen(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    try:
        out, _ = process.communicate(lines.encode(), timeout=3)
    except subprocess.TimeoutExpired:  # they keep the connection after stdin ends
        process.kill()
        out, _ = process.communicate()
    return out.decode()


@pytest.mark.parametrize("peer", ["openssl", "socat"])
async def test_tls_text_peers_with_auth(secured: tuple[Server, str], peer: str) -> None:
    server, _ = secured
    tool = need(peer)
    address = f"127.0.0.1:{server.port}"
    command = (
        [tool, "s_client", "-quiet", "-connect", address]
        if peer == "openssl"
        else [tool, "-t", "2", "-", f"OPENSSL:{address},verify=0"]
    )
    out = await asyncio.to_thread(tls_text_peer, command, f"AUTH {TOKEN}\nhello from {peer}\n")
    assert out.splitlines()[:2] == ["ack 1: authenticated", "ack 2: received"]
    bad = await asyncio.to_thread(tls_text_peer, command, "AUTH nope\nhello\n")
    assert bad.splitlines() == ["error: login refused: wrong token"]


async def test_a_text_peer_is_told_to_use_tls(tmp_path: Path) -> None:
    async with Server(port=0, token=TOKEN) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(f"AUTH {TOKEN}\n".encode())
        async with asyncio.timeout(TIMEOUT):
            answer = await reader.read()
        writer.close()
    assert answer.startswith(b"error: this server needs a token")
    assert b"over TLS" in answer


# -- the commands -----------------------------------------------------------------------------


def test_cli_refusals_have_their_own_exit_codes(
    certificate: tuple[Path, str], tmp_path: Path
) -> None:
    prefix, found = certificate
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    wrong_file = tmp_path / "wrong"
    wrong_file.write_text("nope\n")
    db = tmp_path / "t.db"
    port = closed_port()
    server = subprocess.Popen(
        [*TELEX, "serve", "--port", str(port), "--tls", str(prefix), "--token-file",
         str(token_file), "--db", str(db), "--quiet", "--handshake-timeout", "1"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert server.stdout is not None
        assert "listening" in server.stdout.readline()
        address = f"127.0.0.1:{port}"
        good = run_telex(
            "send", address, "--fingerprint", found, "--token-file", str(token_file), "hi"
        )
        assert good.returncode == 0, good.stderr
        one_clear_line(
            run_telex(
                "send", address, "--fingerprint", found, "--token-file", str(wrong_file), "x"
            ),
            6,
            "authentication failed",
        )
        one_clear_line(
            run_telex("send", address, "--fingerprint", "SHA256:" + "00" * 32, "x"),
            5,
            "certificate refused",
        )
        one_clear_line(run_telex("send", address, "--tls", "x"), 5, "self-signed")
        # plain TCP to the TLS port: the TLS layer drops it at once, with a clear error
        one_clear_line(run_telex("send", address, "--connect-timeout", "5", "x"), 3, "TLS")
        insecure = run_telex("send", address, "--insecure", "--token-file", str(token_file), "y")
        assert insecure.returncode == 0 and "WARNING: --insecure" in insecure.stderr
    finally:
        server.terminate()
        _, err = server.communicate(timeout=TIMEOUT)
    assert "Traceback" not in err


def test_send_chat_and_listen_over_tls_with_a_token(
    certificate: tuple[Path, str], tmp_path: Path
) -> None:
    prefix, found = certificate
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    secure = ["--fingerprint", found, "--token-file", str(token_file)]
    port = closed_port()
    env = {**os.environ, "XDG_CONFIG_HOME": str(tmp_path / "config")}
    server = subprocess.Popen(
        [*TELEX, "serve", "--port", str(port), "--tls", str(prefix), "--token-file",
         str(token_file), "--db", str(tmp_path / "t.db"), "--quiet"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    address = f"127.0.0.1:{port}"
    listener = None
    try:
        assert server.stdout is not None
        assert "listening" in server.stdout.readline()
        listener = subprocess.Popen(
            [*TELEX, "listen", address, "--name", "bob", "--json", *secure],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert listener.stderr is not None and listener.stdout is not None
        assert "listening as bob" in listener.stderr.readline()
        chat = subprocess.run(
            [*TELEX, "chat", address, "--name", "alice", *secure],
            input="hi server\n@bob hi bob\n", capture_output=True, text=True, timeout=TIMEOUT,
            env=env,
        )  # fmt: skip
        assert chat.returncode == 0, chat.stderr
        assert "✓ #1 server acknowledged: received" in chat.stdout
        assert "hi bob" in listener.stdout.readline()
        # a remembered fingerprint that changed: refused, loudly, exit 5
        known = tmp_path / "config" / "telex" / "known_hosts"
        known.parent.mkdir(parents=True)
        known.write_text(f"{address} SHA256:{':'.join(['EE'] * 32)}\n")
        changed = subprocess.run(
            [*TELEX, "send", address, "--tls", "--token-file", str(token_file), "x"],
            capture_output=True, text=True, timeout=TIMEOUT, env=env,
        )  # fmt: skip
        one_clear_line(changed, 5, "HAS CHANGED")
    finally:
        for process in (listener, server):
            if process is not None:
                process.terminate()
                process.communicate(timeout=TIMEOUT)


def test_a_tls_client_to_a_plain_server_is_one_line_and_exit_3(tmp_path: Path) -> None:
    port = closed_port()
    server = subprocess.Popen(
        [*TELEX, "serve", "--port", str(port), "--no-store", "--quiet"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        assert server.stdout is not None
        assert "listening" in server.stdout.readline()
        result = run_telex("send", f"127.0.0.1:{port}", "--insecure", "x")
        assert result.returncode == 3
        assert "does it speak TLS" in result.stderr and "Traceback" not in result.stderr
    finally:
        server.terminate()
        server.communicate(timeout=TIMEOUT)


async def test_a_text_peer_logs_in_as_a_listed_user(
    certificate: tuple[Path, str], tmp_path: Path
) -> None:
    prefix, _ = certificate
    users = Users(tmp_path / "users")
    users.add("alice", "her token")
    seen: list[str | None] = []

    def handler(message: telex.Message, peer: telex.Peer) -> str:
        seen.append(peer.name)
        return "ok"

    async with Server(handler, port=0, ssl=context_of(prefix), users=users) as server:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", server.port, ssl=client_context(verify=False)
        )
        writer.write(b"AUTH alice her token\nhello as alice\n")
        async with asyncio.timeout(TIMEOUT):
            assert await reader.readline() == b"ack 1: authenticated\n"
            assert await reader.readline() == b"ack 2: ok\n"
        writer.close()
    assert seen == ["alice"]


def test_handshakes_started_right_after_connect_all_finish(
    certificate: tuple[Path, str],
) -> None:
    """The ClientHello sent at once, 200 times: every handshake finishes (the server's
    own TLS upgrade used to lose a ClientHello that arrived before it took over), and a
    plain telex client is told at once that this port speaks TLS (a close)."""
    prefix, _ = certificate

    async def run() -> None:
        async with Server(port=0, ssl=context_of(prefix)) as server:
            client = ssl.create_default_context()
            client.check_hostname = False
            client.verify_mode = ssl.CERT_NONE
            for _ in range(200):
                async with asyncio.timeout(TIMEOUT):
                    _, writer = await asyncio.open_connection("127.0.0.1", server.port, ssl=client)
                writer.close()
                await writer.wait_closed()
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(frames.PREAMBLE)
            async with asyncio.timeout(1.0):
                assert await reader.read() == b""
            writer.close()

    try:  # on uvloop too, where telex serve runs and where the lost ClientHello was seen
        import uvloop
    except ImportError:
        asyncio.run(run())
        return
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(run())


async def test_a_text_peer_paused_while_its_login_waited_is_read_again(
    secured: tuple[Server, str],
) -> None:
    """More lines than the server holds arrive while a text peer's login waits for its
    turn: once it is let in, reading resumes and every line is answered."""
    server, found = secured
    for _ in range(6):  # the sixth failure makes the next check wait 1 s
        with pytest.raises(telex.AuthenticationFailed):
            await telex.connect("127.0.0.1", server.port, **pinned(found, token="guess"))
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", server.port, ssl=client_context(verify=False)
    )
    writer.write(f"AUTH {TOKEN}\n".encode())
    await writer.drain()
    await asyncio.sleep(0.2)  # the AUTH line is read alone; its check waits
    lines = 20_000  # over the 10,000 a connection may have waiting
    writer.write(b"".join(b"line %d\n" % i for i in range(lines)))
    await writer.drain()
    async with asyncio.timeout(TIMEOUT):
        answers = [await reader.readline() for _ in range(lines + 1)]
    assert answers[0] == b"ack 1: authenticated\n" and answers[-1].startswith(b"ack 20001:")
    writer.close()


async def test_logins_of_closed_connections_leave_the_queue(secured: tuple[Server, str]) -> None:
    server, found = secured
    for _ in range(7):  # the next check waits 2 s
        with pytest.raises(telex.AuthenticationFailed):
            await telex.connect("127.0.0.1", server.port, **pinned(found, token="guess"))
    waiting = [
        asyncio.ensure_future(
            telex.connect("127.0.0.1", server.port, **pinned(found, token="guess"))
        )
        for _ in range(20)
    ]
    await wait_until(lambda: server.logins.waiting("127.0.0.1") == 20)
    for attempt in waiting:
        attempt.cancel()  # the clients give up: their connections close
    await asyncio.gather(*waiting, return_exceptions=True)
    await wait_until(lambda: server.logins.waiting("127.0.0.1") == 0)


async def test_a_login_that_waited_its_turn_is_not_timed_out_loading_its_session(
    certificate: tuple[Path, str], tmp_path: Path
) -> None:
    """The wait for the check does not count against the handshake time, nor does it
    eat into the reading of the session that follows."""

    class SlowStore(SQLiteStore):
        def session_state(self, session: str | None, name: str) -> SessionState:
            time.sleep(0.6)  # a busy store thread: the session waits behind commits
            return super().session_state(session, name)

    store = SlowStore(tmp_path / "slow.db")
    limits = telex.Limits(handshake_timeout=2.0)
    try:
        async with Server(port=0, token=TOKEN, store=store, limits=limits) as server:
            for _ in range(7):  # the next check waits 2 s: as long as the handshake time
                with pytest.raises(telex.AuthenticationFailed):
                    await telex.connect("127.0.0.1", server.port, token="guess")
            async with telex.connect(
                "127.0.0.1", server.port, token=TOKEN, connect_timeout=TIMEOUT
            ) as client:
                assert (await client.send("let in")).ok
    finally:
        store.close()
