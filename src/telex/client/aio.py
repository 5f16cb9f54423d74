"""The asyncio client: ``async with telex.connect(host, port) as client``.

``send(body)`` waits for one acknowledgment; ``send_nowait(body)`` returns a future at
once so many messages can be in flight; ``send_many(bodies)`` keeps a window of them
in flight and returns every acknowledgment in order. Writes made in one loop turn
leave as one write.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import time
import uuid
from collections import deque
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Generator,
    Iterable,
    Iterator,
    Sequence,
)
from ssl import SSLContext
from typing import Any, cast

from .._version import __version__
from ..core.address import format_address
from ..core.events import (
    Ack,
    AckStatus,
    Body,
    Challenge,
    ErrorCode,
    Goodbye,
    Message,
    PeerError,
    Ping,
    Pong,
    ProtocolViolation,
    Receipt,
    StatsFrame,
    Welcome,
)
from ..core.handlers import Reject, is_async, rejection_for, reply_body
from ..core.protocol import DEFAULT_MAX_MESSAGE_SIZE, Connection, Role
from ..core.session import ClientSession
from ..exceptions import (
    AuthenticationFailed,
    CertificateRejected,
    ConnectError,
    ConnectionClosed,
    MessageRejected,
    ProtocolError,
    TelexError,
    TelexTimeout,
)
from ..flushing import FlushOnce
from ..security import (
    CertificateError,
    KnownHosts,
    answer_challenge,
    check_certificate,
    fingerprint,
    stretch,
)

__all__ = ["AsyncClient", "connect", "connect_errors"]

DEFAULT_WINDOW = 1000
INBOX_HIGH = 10_000  # messages waiting for the application before the client stops reading
INBOX_LOW = 1_000

log = logging.getLogger("telex.client")

Reply = Body | None
ClientHandler = Callable[[Message], Reply] | Callable[[Message], Awaitable[Reply]]


@contextlib.contextmanager
def connect_errors(host: str, port: int, timeout: float) -> Iterator[None]:
    """Turn the ways a TCP connect fails into one ``ConnectError`` that says which."""
    where = format_address((host, port))
    try:
        yield
    except ssl.SSLCertVerificationError as exc:
        raise CertificateRejected(
            f"cannot verify the certificate of {where}: {exc.verify_message}; pin it with "
            "--fingerprint, or trust its CA with --cafile"
        ) from exc
    except ssl.SSLError as exc:
        raise ConnectError(
            f"the TLS handshake with {where} failed ({exc.reason or exc}): "
            "does it speak TLS? (leave out --tls for a plain server)"
        ) from exc
    except socket.gaierror as exc:
        raise ConnectError(f"cannot resolve host {host!r}") from exc
    except ConnectionRefusedError as exc:
        raise ConnectError(f"connection refused by {where} (is a server running there?)") from exc
    except TimeoutError as exc:
        raise ConnectError(f"no answer from {where} within {timeout:g} s") from exc
    except OSError as exc:
        raise ConnectError(f"cannot connect to {where}: {exc.strerror or exc}") from exc


class _ClientProtocol(FlushOnce, asyncio.Protocol):
    """One connection: feeds its core and hands acks, receipts and messages to the client."""

    def __init__(self, client: AsyncClient, conn: Connection) -> None:
        self.client = client
        self.conn = conn
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.welcome: asyncio.Future[Welcome] = self.loop.create_future()
        # Its failure is reported by connect(), or not at all once another error was.
        self.welcome.add_done_callback(lambda f: f.cancelled() or f.exception())
        self.closed: asyncio.Future[None] = self.loop.create_future()
        self.failure: TelexError | None = None
        self.refusal: PeerError | None = None  # an ERROR from the server during the handshake
        self.server_goodbye = False
        self.first_bytes = b""
        self.flush_scheduled = False
        self.can_write: asyncio.Future[None] | None = None
        self.challenge: Challenge | None = None
        self.verified = False  # the server's certificate (if any) passed our checks
        self.pings: dict[bytes, asyncio.Future[float]] = {}  # payload -> when its PONG came
        self.stats: deque[asyncio.Future[dict[str, Any]]] = deque()  # STATS asked, in order

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        client = self.client
        self.conn.initiate(name=client.name, agent=f"telex/{__version__}", session=client.session)
        self.flush()

    def data_received(self, data: bytes) -> None:
        if not self.welcome.done() and len(self.first_bytes) < 64:
            self.first_bytes += data[: 64 - len(self.first_bytes)]
        client = self.client
        for event in self.conn.receive_data(data):
            if type(event) is Ack:
                client._on_ack(event)
            elif type(event) is Message:
                client._on_message(event, self.conn)
            elif type(event) is Receipt:
                if client.on_receipt is not None and client._session.got_receipt(event.id):
                    client.on_receipt(event)
            elif type(event) is Challenge:
                self.challenge = event
                if self.verified:
                    client._answer_challenge(self)
            elif type(event) is Welcome:
                if not self.welcome.done():
                    self.welcome.set_result(event)
            elif type(event) is Ping:
                self.conn.send_pong(event.payload)
            elif type(event) is Pong:
                ping = self.pings.get(event.payload)
                if ping is not None and not ping.done():
                    ping.set_result(time.perf_counter())
            elif type(event) is StatsFrame:
                if self.stats:
                    answer = self.stats.popleft()
                    if not answer.done():
                        answer.set_result(event.values)
            elif type(event) is Goodbye:
                self.server_goodbye = True
            elif type(event) is ProtocolViolation:
                self.conn.send_error(ErrorCode(event.code), event.reason)
                self.failure = ProtocolError(event.code, event.reason)
            elif type(event) is PeerError:
                self.failure = ProtocolError(event.code, event.reason)
                if type(event) is PeerError and not self.welcome.done():
                    self.refusal = event
        self.flush()
        if self.failure is not None or (self.server_goodbye and not client._pending):
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.failure is None:
            reason = "the server said goodbye" if self.server_goodbye else "connection lost"
            if exc is not None:
                reason = f"connection lost: {exc}"
            self.failure = ConnectionClosed(reason)
        if not self.welcome.done():
            self.welcome.set_exception(self.failure)
            self.welcome.exception()  # no one may wait for it any more (a refused pin)
        if self.can_write is not None and not self.can_write.done():
            self.can_write.set_result(None)
        if not self.closed.done():
            self.closed.set_result(None)
        waiting: list[asyncio.Future[Any]] = [*self.pings.values(), *self.stats]
        for answer in waiting:
            if not answer.done():
                answer.set_exception(self.failure)
                answer.exception()  # its caller may have given up waiting
        self.client._connection_lost(self)

    def pause_writing(self) -> None:
        self.can_write = self.loop.create_future()

    def resume_writing(self) -> None:
        if self.can_write is not None and not self.can_write.done():
            self.can_write.set_result(None)
        self.can_write = None

    def queued_bytes(self) -> bytes:
        return self.conn.data_to_send()

    def close(self) -> None:
        self.flush()
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()


class AsyncClient:
    """A telex client; make one with ``connect()``.

    Each client has a session (a random id unless given) and numbers its messages in
    it. When a connection that was up drops, the client reconnects with backoff (up to
    ``retries`` times), resends every message not yet acknowledged under its first id,
    and the server acknowledges again, without storing twice, what it already had.
    A sender that resumes a session after its process ended gives the same ``session``
    and the ``first_id`` its messages had then (``telex send --session`` does).

    Several servers: give a list of ``(host, port)`` pairs instead of ``host, port``.
    The first connection tries them in order and takes the first that finishes its
    handshake; a lost connection resumes the same session on the next one in the
    list (round robin, with the backoff between full rounds; ``retries`` counts
    rounds). A refused certificate or token ends the first connection at once: it is
    an answer, not an address that is down.
    """

    def __init__(
        self,
        host: str | Sequence[tuple[str, int]],
        port: int | None = None,
        *,
        name: str | None = None,
        timeout: float = 30.0,
        connect_timeout: float = 10.0,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        handler: ClientHandler | None = None,
        reconnect: bool = True,
        retries: int = 10,
        reconnect_delay: float = 0.1,
        stay_after_goodbye: bool = True,
        session: str | None = None,
        first_id: int = 1,
        on_state: Callable[[str], object] | None = None,
        on_receipt: Callable[[Receipt], object] | None = None,
        ssl: SSLContext | None = None,
        fingerprint: str | None = None,
        known_hosts: KnownHosts | None = None,
        trust: Callable[[str], bool] | None = None,
        token: str | None = None,
    ) -> None:
        self.addresses = _addresses(host, port)
        self.host, self.port = self.addresses[0]  # the address in use, or last tried
        self._at = 0  # its index in ``addresses``
        self.name = name
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.max_message_size = max_message_size
        self.handler = handler
        self.reconnect = reconnect
        self.retries = retries
        self.reconnect_delay = reconnect_delay  # the first wait; it doubles up to 5 s
        self.stay_after_goodbye = stay_after_goodbye
        self.session = session or uuid.uuid4().hex
        self.on_state = on_state
        self.on_receipt = on_receipt
        self.ssl = ssl  # TLS; with a pin or known hosts, the caller's context need not verify
        self.fingerprint = fingerprint  # the server certificate's SHA-256, pinned
        self.known_hosts = known_hosts  # fingerprints remembered on first use
        self.trust = trust  # asked about a fingerprint seen for the first time
        self.token = token
        self._keys: dict[bytes, bytes] = {}  # salt -> stretched token
        self.server_fingerprint = ""
        self.server_limits: dict[str, Any] = {}
        self.server_agent = ""
        self._handler_is_async = handler is not None and is_async(handler)
        self._inbox: asyncio.Queue[Message | None] = asyncio.Queue()
        self._work: deque[tuple[Message, Connection]] = deque()  # for an async handler
        self._worker: asyncio.Task[None] | None = None
        self._conn = Connection(Role.CLIENT, max_message_size=max_message_size)
        self._protocol: _ClientProtocol | None = None
        self._pending: dict[int, asyncio.Future[Ack]] = {}
        if type(first_id) is not int or not 1 <= first_id < 2**63:
            raise ValueError(f"first_id is from 1 to 2**63 - 1, not {first_id!r}")
        # ids, resend, redeliveries; with on_receipt, stored messages until their receipts
        self._session = ClientSession(self.session, receipts=on_receipt is not None)
        self._session.next_id = first_id
        self._limit = max_message_size  # the server's, once its WELCOME says
        self._refused: dict[int, Ack] = {}  # refused here, answered in their turn
        self._failure: TelexError | None = None  # the end, for good
        self._closing = False
        self._done: asyncio.Future[None] | None = None
        self._reconnecting: asyncio.Task[None] | None = None
        self._pings = 0  # PINGs sent: each one's payload is its number

    @property
    def address(self) -> str:
        """The server's address in use (or, while reconnecting, the last one tried)."""
        return format_address((self.host, self.port))

    async def connect(self) -> AsyncClient:
        """Open the connection and finish the handshake, or raise ``ConnectError``.

        With several addresses, each is tried in order until one finishes its handshake;
        the error names each and why it failed. A refused certificate or token
        (``CertificateRejected``, ``AuthenticationFailed``) is raised at once. A first
        connection that fails is not retried: only a connection that was up is.
        """
        self._done = asyncio.get_running_loop().create_future()
        errors: list[ConnectError] = []
        for index in range(len(self.addresses)):
            try:
                await self._open(index)
            except (CertificateRejected, AuthenticationFailed):
                raise
            except ConnectError as exc:
                if len(self.addresses) == 1:
                    raise
                errors.append(exc)
                continue
            return self
        raise ConnectError(_none_answered(self.addresses, errors))

    async def _open(self, index: int) -> None:
        loop = asyncio.get_running_loop()
        self._at = index
        self.host, self.port = self.addresses[index]
        where = self.address
        conn = Connection(Role.CLIENT, max_message_size=self.max_message_size)
        tls = self.ssl
        with connect_errors(self.host, self.port, self.connect_timeout):
            async with asyncio.timeout(self.connect_timeout):
                _, protocol = await loop.create_connection(
                    lambda: _ClientProtocol(self, conn),
                    self.host,
                    self.port,
                    ssl=tls,
                    server_hostname=self.host if tls is not None and tls.check_hostname else None,
                )
        try:
            if tls is not None:
                self._check_certificate(protocol)
            protocol.verified = True
            if protocol.challenge is not None:
                self._answer_challenge(protocol)
            async with asyncio.timeout(self.connect_timeout):
                welcome = await protocol.welcome
        except TimeoutError as exc:
            protocol.close()
            if protocol.challenge is not None:
                raise ConnectError(
                    f"{where} did not check the login within {self.connect_timeout:g} s "
                    "(a server slows down logins from an address after failed ones: "
                    "try again later, or with a longer --connect-timeout)"
                ) from exc
            raise ConnectError(
                f"{where} did not answer the telex handshake within {self.connect_timeout:g} s "
                "(for a plain line-based server, use --text; for a TLS one, --tls)"
            ) from exc
        except ProtocolError as exc:
            refusal = protocol.refusal
            if refusal is not None and refusal.code == ErrorCode.AUTH_FAILED:
                raise AuthenticationFailed(f"{where} refused the login: {refusal.reason}") from exc
            if refusal is not None:
                raise ConnectError(f"{where} refused: {refusal.reason}") from exc
            answer = protocol.first_bytes
            if answer[:1] in (b"\x15", b"\x16") and answer[1:2] == b"\x03":
                raise ConnectError(f"{where} speaks TLS: connect with --tls") from exc
            raise ConnectError(
                f"{where} is not a telex server (it answered {answer!r})"
                if answer
                else f"{where} broke the handshake: {exc.reason}"
            ) from exc
        except ConnectionClosed as exc:
            hint = "" if tls is not None else ", or expects TLS (--tls)"
            raise ConnectError(
                f"{where} closed the connection during the handshake "
                f"(is it at its connection limit, or not a telex server{hint}?)"
            ) from exc
        except BaseException:  # a wrong pin, or the caller cancelled: leave nothing open
            protocol.close()
            raise
        self._conn = conn
        self._protocol = protocol
        self.server_limits = welcome.limits
        limit = welcome.limits.get("max_message_size")
        if type(limit) is int and limit > 0:
            self._limit = limit
        self.server_agent = welcome.agent
        self.name = welcome.name or self.name
        self._session.welcomed(welcome, conn)  # resend what waits, in order, under its ids
        protocol.flush()

    def _check_certificate(self, protocol: _ClientProtocol) -> None:
        """A pinned or remembered fingerprint, or trust on first use; else the CA checked."""
        assert protocol.transport is not None
        ssl_object = protocol.transport.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        if der is None:
            protocol.close()
            raise CertificateRejected(f"{self.address} sent no certificate")
        where = self.address
        remembered = None if self.known_hosts is None else self.known_hosts.get(where)
        try:
            found = check_certificate(der, self.fingerprint or remembered)
        except CertificateError as exc:
            protocol.close()
            if remembered is not None and not self.fingerprint:
                raise CertificateRejected(
                    f"THE CERTIFICATE OF {where} HAS CHANGED: it was {remembered}, it is now "
                    f"{fingerprint(der)}. Someone may be intercepting the connection; if the "
                    f"change is expected, remove {where} from {self.known_hosts.path}"  # type: ignore[union-attr]
                ) from exc
            raise CertificateRejected(str(exc)) from exc
        self.server_fingerprint = found
        if self.fingerprint is None and remembered is None and self.known_hosts is not None:
            if self.trust is None or not self.trust(found):
                protocol.close()
                raise CertificateRejected(f"the certificate of {where} ({found}) is not trusted")
            self.known_hosts.remember(where, found)

    def _answer_challenge(self, protocol: _ClientProtocol) -> None:
        challenge = protocol.challenge
        assert challenge is not None
        if self.token is None:
            protocol.failure = AuthenticationFailed(
                f"{self.address} needs a token: give --token-file, or set TELEX_TOKEN"
            )
            if not protocol.welcome.done():
                protocol.welcome.set_exception(protocol.failure)
            protocol.close()
            return
        key = self._keys.get(challenge.salt)
        if key is None:
            key = self._keys[challenge.salt] = stretch(self.token, challenge.salt)
        protocol.conn.send_auth(answer_challenge(key, challenge.challenge))
        protocol.flush()

    def _connection_lost(self, protocol: _ClientProtocol) -> None:
        if protocol is not self._protocol:
            return
        failure = protocol.failure
        assert failure is not None
        gone_for_good = protocol.server_goodbye and not self.stay_after_goodbye
        if (
            self._closing
            or not self.reconnect
            or isinstance(failure, ProtocolError)
            or (gone_for_good and not self._pending)
        ):
            if isinstance(failure, ConnectionClosed):
                failure = ConnectionClosed(failure.reason, len(self._pending))
            self._finish(failure)
            return
        why = "the server said goodbye" if protocol.server_goodbye else "connection lost"
        self._reconnecting = asyncio.create_task(self._reconnect(why))

    async def _reconnect(self, why: str) -> None:
        """Reconnect with backoff, starting with the next address (round robin: the one
        lost is tried last in each round); on success resend, after the last round give
        up. An attempt is a round over every address; the backoff is between rounds."""
        delay = self.reconnect_delay
        count = len(self.addresses)
        lost = self._at
        errors: list[ConnectError] = []
        for attempt in range(1, self.retries + 1):
            errors = []
            for step in range(1, count + 1):
                index = (lost + step) % count
                where = format_address(self.addresses[index])
                to = f" to {where}" if count > 1 else ""
                self._state(f"{why}: reconnecting{to} (attempt {attempt} of {self.retries})")
                if step == 1:
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 5.0)
                if self._closing:
                    return
                try:
                    await self._open(index)
                except (CertificateRejected, AuthenticationFailed) as exc:
                    self._state("gave up")  # an answer, not a server that is down
                    self._finish(ConnectionClosed(f"{why}; {exc}", len(self._pending)))
                    return
                except ConnectError as exc:
                    errors.append(exc)
                    continue
                self._state(f"connected to {self.address}")
                return
        detail = ": " + "; ".join(str(error) for error in errors) if errors else ""
        reason = f"{why}; gave up after {self.retries} attempts to reconnect{detail}"
        self._state("gave up")
        self._finish(ConnectionClosed(reason, len(self._pending)))

    def _state(self, state: str) -> None:
        if self.on_state is not None:
            self.on_state(state)

    def _finish(self, failure: TelexError) -> None:
        """The end, for good: fail what waits, end the inbox."""
        self._failure = failure
        pending, self._pending = self._pending, {}
        self._session.forget()
        for future in pending.values():
            if not future.done():
                future.set_exception(failure)
        self._inbox.put_nowait(None)
        if self._done is not None and not self._done.done():
            self._done.set_result(None)

    # -- receiving --------------------------------------------------------------------

    def _on_message(self, message: Message, conn: Connection) -> None:
        """Answer a message from the server: through the handler, or into the inbox."""
        if self._session.is_redelivery(message):
            conn.send_ack(message.id)  # sent again after a reconnect: taken already
            return
        handler = self.handler
        if handler is None:
            self._inbox.put_nowait(message)
            self._acknowledge(conn, message.id, b"")  # it waits in this process's inbox
            if self._inbox.qsize() > INBOX_HIGH:
                self._pause()
        elif self._handler_is_async:
            self._work.append((message, conn))
            if self._worker is None:
                self._worker = asyncio.create_task(self._run_async_handler())
            if len(self._work) > INBOX_HIGH:
                self._pause()
        else:
            try:
                reply = cast(Callable[[Message], Reply], handler)(message)
            except Exception as exc:
                self._handler_failed(conn, message, exc)
            else:
                self._acknowledge(conn, message.id, reply)

    def _acknowledge(self, conn: Connection, msg_id: int, reply: Reply) -> None:
        try:
            body = reply_body(reply)
        except TypeError as exc:
            log.error("handler failed on message %d", msg_id, exc_info=exc)
            conn.send_rejection(msg_id, *rejection_for(exc))
            return
        conn.send_ack(msg_id, body)
        self._session.took(msg_id)

    def _handler_failed(self, conn: Connection, message: Message, exc: Exception) -> None:
        if not isinstance(exc, Reject):
            log.error("handler failed on message %d", message.id, exc_info=exc)
        conn.send_rejection(message.id, *rejection_for(exc))

    async def _run_async_handler(self) -> None:
        handler = cast(Callable[[Message], Awaitable[Reply]], self.handler)
        try:
            while self._work:
                message, conn = self._work.popleft()
                try:
                    reply = await handler(message)
                except Exception as exc:
                    self._handler_failed(conn, message, exc)
                else:
                    self._acknowledge(conn, message.id, reply)
                if self._protocol is not None and conn is self._conn:
                    self._protocol.schedule_flush()  # else it went with its connection
                if len(self._work) < INBOX_LOW:
                    self._resume()
        finally:
            self._worker = None

    def _pause(self) -> None:
        if self._protocol is not None and self._protocol.transport is not None:
            self._protocol.transport.pause_reading()

    def _resume(self) -> None:
        transport = None if self._protocol is None else self._protocol.transport
        if transport is not None and not transport.is_closing() and not transport.is_reading():
            transport.resume_reading()

    async def receive(self, *, timeout: float | None = None) -> Message:
        """The next message from the server (or, through it, from another client).

        Raises ``ConnectionClosed`` once the connection has ended and the inbox is empty.
        """
        if self.handler is not None:
            raise RuntimeError("this client has a handler: messages go to it, not to receive()")
        try:
            async with asyncio.timeout(timeout):
                message = await self._inbox.get()
        except TimeoutError as exc:
            raise TelexTimeout(f"no message within {timeout:g} s") from exc
        if message is None:
            self._inbox.put_nowait(None)  # every later call ends the same way
            raise ConnectionClosed("the connection is closed")
        if self._inbox.qsize() < INBOX_LOW:
            self._resume()
        return message

    def __aiter__(self) -> AsyncIterator[Message]:
        return self._messages()

    async def _messages(self) -> AsyncIterator[Message]:
        while True:
            try:
                yield await self.receive()
            except ConnectionClosed:
                return

    # -- sending ----------------------------------------------------------------------

    @property
    def next_id(self) -> int:
        """The id the next message sent will have."""
        return self._session.next_id

    def _on_ack(self, ack: Ack) -> None:
        future = self._pending.pop(ack.id, None)
        self._session.answered(ack)
        if future is not None and not future.done():
            future.set_result(ack)
        if self._refused:
            self._answer_refused()

    def _answer_refused(self) -> None:
        """Answer the messages refused here once those sent before them are answered, so
        that answers keep their order."""
        pending = self._pending
        while pending and (first := next(iter(pending))) in self._refused:
            future = pending.pop(first)
            if not future.done():
                future.set_result(self._refused.pop(first))

    def send_nowait(self, body: Body, *, to: str | None = None) -> asyncio.Future[Ack]:
        """Queue a message and return a future of its acknowledgment (rejections included).

        ``to`` names another client: the server forwards the message, and the ack is that
        client's own (or, from a server with a store, that it is stored for that client).
        While the client is reconnecting, the message waits and goes out on reconnection.
        """
        if self._failure is not None:
            raise self._failure
        if self._done is None or self._closing:
            raise RuntimeError("the client is not connected; use 'async with telex.connect(...)'")
        if not isinstance(body, str | bytes | bytearray | memoryview):
            raise TypeError(f"a message body is str or bytes, not {type(body).__name__}")
        future: asyncio.Future[Ack] = asyncio.get_running_loop().create_future()
        if len(body) * 4 > self._limit and (size := _size(body)) > self._limit:
            # The server would refuse it (or, far over, close): refuse it here, in its turn.
            msg_id = self._session.skip()
            reason = f"message of {size} bytes is over the limit of {self._limit}"
            self._pending[msg_id] = future
            self._refused[msg_id] = Ack(msg_id, AckStatus.TOO_LARGE, reason)
            self._answer_refused()
            return future
        msg_id = self._session.number(body, to)
        self._pending[msg_id] = future
        protocol = self._protocol
        if protocol is not None and not protocol.closed.done():
            self._conn.send_message(body, name=to, msg_id=msg_id)
            protocol.schedule_flush()
        return future

    async def send(self, body: Body, *, to: str | None = None, timeout: float | None = None) -> Ack:
        """Send one message and return its acknowledgment; raise if it was rejected."""
        ack = await self._wait(self.send_nowait(body, to=to), timeout)
        if not ack.ok:
            raise MessageRejected(ack)
        return ack

    async def send_many(
        self,
        bodies: Iterable[Body] | AsyncIterable[Body],
        *,
        window: int = DEFAULT_WINDOW,
        timeout: float | None = None,
        on_ack: Callable[[Ack], object] | None = None,
        to: str | None = None,
    ) -> list[Ack]:
        """Send every body with up to ``window`` in flight; return all acks in order.

        ``bodies`` may be an async iterable, such as lines read as they arrive.
        Rejections are returned, not raised: look at ``ack.ok``. ``on_ack`` is called
        with each acknowledgment as it arrives, in order.
        """
        acks: list[Ack] = []
        in_flight: deque[asyncio.Future[Ack]] = deque()
        unreported: deque[asyncio.Future[Ack]] = deque()  # for on_ack, in order

        def report(_: object = None) -> None:
            while unreported and unreported[0].done():
                future = unreported.popleft()
                if on_ack is not None and not future.cancelled() and future.exception() is None:
                    on_ack(future.result())

        try:
            async for body in _each(bodies):
                if len(in_flight) >= window:
                    acks.append(await self._wait(in_flight.popleft(), timeout))
                future = self.send_nowait(body, to=to)
                future.add_done_callback(report)  # as acks arrive, even while input waits
                in_flight.append(future)
                unreported.append(future)
                protocol = self._protocol
                if protocol is not None and protocol.can_write is not None:
                    await protocol.can_write
            while in_flight:
                acks.append(await self._wait(in_flight.popleft(), timeout))
            report()  # a future found done when awaited may not have run its callback yet
        except BaseException:
            for future in in_flight:  # their failure is reported by the one raised here
                if future.done() and not future.cancelled():
                    future.exception()
                else:
                    future.cancel()
            raise
        return acks

    async def _wait(self, future: Awaitable[Ack], timeout: float | None) -> Ack:
        limit = self.timeout if timeout is None else timeout
        try:
            async with asyncio.timeout(limit):
                return await future
        except TimeoutError as exc:
            raise TelexTimeout(f"no acknowledgment from {self.address} within {limit:g} s") from exc

    async def ping(self, *, timeout: float | None = None) -> float:
        """Send a PING and return the seconds until its PONG came back.

        The round trip goes through the network and the server's event loop, not its
        handler or store (a message's ack measures those). Raises ``TelexTimeout``
        after ``timeout`` (default: the client's), ``ConnectionClosed`` when the
        connection is down or drops before the PONG.
        """
        if self._failure is not None:
            raise self._failure
        protocol = self._protocol
        if self._done is None or self._closing or protocol is None or protocol.closed.done():
            raise ConnectionClosed(f"not connected to {self.address}")
        self._pings += 1
        payload = self._pings.to_bytes(8, "big")
        pong: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        protocol.pings[payload] = pong
        limit = self.timeout if timeout is None else timeout
        try:
            self._conn.send_ping(self._pings)
            sent = time.perf_counter()
            protocol.flush()  # now, not at the end of this loop turn: the clock runs
            async with asyncio.timeout(limit):
                return await pong - sent
        except TimeoutError as exc:
            raise TelexTimeout(f"no PONG from {self.address} within {limit:g} s") from exc
        finally:
            del protocol.pings[payload]

    async def stats(self, *, timeout: float | None = None) -> dict[str, Any]:
        """The server's live counters (docs/operations.md lists them). A server with a
        shared token tells only a client that logged in with it: else ``TelexError``."""
        if self._failure is not None:
            raise self._failure
        protocol = self._protocol
        if self._done is None or self._closing or protocol is None or protocol.closed.done():
            raise ConnectionClosed(f"not connected to {self.address}")
        answer: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        protocol.stats.append(answer)
        self._conn.send_stats({})
        protocol.flush()
        limit = self.timeout if timeout is None else timeout
        try:
            async with asyncio.timeout(limit):
                values = await answer
        except TimeoutError as exc:
            raise TelexTimeout(f"no STATS from {self.address} within {limit:g} s") from exc
        if "refused" in values:
            raise TelexError(f"{self.address} refused: {values['refused']}")
        return values

    @property
    def server_said_goodbye(self) -> bool:
        return self._protocol is not None and self._protocol.server_goodbye

    @property
    def connected(self) -> bool:
        return self._protocol is not None and not self._protocol.closed.done()

    async def wait_closed(self) -> None:
        """Return once the client is done for good: closed, or gave up reconnecting."""
        if self._done is not None:
            await asyncio.shield(self._done)

    @property
    def unacknowledged(self) -> int:
        return len(self._pending)

    @property
    def failure_reason(self) -> str:
        """Why the client ended, if it has."""
        return "" if self._failure is None else str(self._failure)

    # -- closing ----------------------------------------------------------------------

    async def close(self) -> None:
        """Wait (within the timeout) for outstanding acks, say goodbye, close."""
        if self._pending and self._failure is None:
            waiting = list(self._pending.values())
            await asyncio.wait(waiting, timeout=self.timeout)
            for future in waiting:
                if future.done() and not future.cancelled():
                    future.exception()
        self._closing = True
        if self._reconnecting is not None:
            self._reconnecting.cancel()
        protocol = self._protocol
        if protocol is not None and not protocol.closed.done():
            self._conn.send_goodbye("client closing")
            protocol.close()
            try:
                async with asyncio.timeout(self.timeout):
                    await protocol.closed
            except TimeoutError:
                if protocol.transport is not None:
                    protocol.transport.abort()
        self._finish(self._failure or ConnectionClosed("the client closed", len(self._pending)))

    async def __aenter__(self) -> AsyncClient:
        if self._protocol is None:
            await self.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


async def _each(bodies: Iterable[Body] | AsyncIterable[Body]) -> AsyncIterator[Body]:
    if isinstance(bodies, AsyncIterable):
        async for body in bodies:
            yield body
    else:
        for body in bodies:
            yield body


def _size(body: Body) -> int:
    return len(body.encode()) if isinstance(body, str) else len(body)


def _addresses(host: str | Sequence[tuple[str, int]], port: int | None) -> list[tuple[str, int]]:
    """``host, port``, or a list of ``(host, port)`` pairs, as a checked list."""
    if isinstance(host, str):
        if port is None:
            raise TypeError("give a port with the host: connect(host, port)")
        return [(host, port)]
    if port is not None:
        raise TypeError("give either host and port, or a list of (host, port) pairs, not both")
    addresses: list[tuple[str, int]] = []
    for pair in host:
        if (
            not isinstance(pair, tuple | list)
            or len(pair) != 2
            or not isinstance(pair[0], str)
            or type(pair[1]) is not int
        ):
            raise TypeError(f"an address is a (host, port) pair, not {pair!r}")
        addresses.append((pair[0], pair[1]))
    if not addresses:
        raise ValueError("an empty list of addresses")
    return addresses


def _none_answered(addresses: Sequence[tuple[str, int]], errors: Sequence[ConnectError]) -> str:
    """One line: each address and why it failed."""
    return f"none of the {len(addresses)} addresses answered: " + "; ".join(
        str(error) for error in errors
    )


class connect:
    """Connect to a telex server: ``async with telex.connect("127.0.0.1", 7777) as client``,
    or to the first of several that answers, failing over between them:
    ``telex.connect([("a.example", 7777), ("b.example", 7777)])``."""

    def __init__(
        self, host: str | Sequence[tuple[str, int]], port: int | None = None, **options: Any
    ) -> None:
        self._client = AsyncClient(host, port, **options)

    def __await__(self) -> Generator[Any, None, AsyncClient]:
        return self._client.connect().__await__()

    async def __aenter__(self) -> AsyncClient:
        return await self._client.connect()

    async def __aexit__(self, *exc_info: object) -> None:
        await self._client.close()
