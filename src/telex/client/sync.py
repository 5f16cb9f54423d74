"""The blocking client: ``with telex.Client("127.0.0.1", 7777) as client``.

It runs the asyncio client on an event loop in a background thread, so both share one
implementation and the same method names.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable, Coroutine, Iterable, Iterator, Sequence
from typing import Any, TypeVar

from ..core.events import Ack, Body, Message
from ..exceptions import ConnectionClosed
from .aio import DEFAULT_WINDOW, AsyncClient

__all__ = ["Client"]

T = TypeVar("T")


class Client:
    """A blocking telex client; it connects when created (or entered).

    ``Client(host, port)``, or ``Client([(host, port), ...])`` to fail over between
    several servers (as ``AsyncClient``)."""

    def __init__(
        self, host: str | Sequence[tuple[str, int]], port: int | None = None, **options: Any
    ) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="telex", daemon=True)
        self._thread.start()
        self._client = AsyncClient(host, port, **options)
        try:
            self._run(self._client.connect())
        except BaseException:
            self._stop()
            raise

    def _run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    @property
    def server_limits(self) -> dict[str, Any]:
        return self._client.server_limits

    @property
    def name(self) -> str | None:
        """The name the server knows this client by."""
        return self._client.name

    @property
    def address(self) -> str:
        """The server's address in use (or, while reconnecting, the last one tried)."""
        return self._client.address

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """Every address this client may connect to, in the order they are tried."""
        return self._client.addresses

    @property
    def session(self) -> str:
        return self._client.session

    @property
    def next_id(self) -> int:
        """The id the next message sent will have."""
        return self._client.next_id

    @property
    def connected(self) -> bool:
        return self._client.connected

    @property
    def unacknowledged(self) -> int:
        return self._client.unacknowledged

    @property
    def failure_reason(self) -> str:
        """Why the client ended, if it has."""
        return self._client.failure_reason

    def send_nowait(self, body: Body, *, to: str | None = None) -> concurrent.futures.Future[Ack]:
        """Queue a message; the future gets its acknowledgment (rejections included)."""

        async def send() -> Ack:
            return await self._client.send_nowait(body, to=to)

        return asyncio.run_coroutine_threadsafe(send(), self._loop)

    def send(self, body: Body, *, to: str | None = None, timeout: float | None = None) -> Ack:
        """Send one message and return its acknowledgment; raise if it was rejected."""
        return self._run(self._client.send(body, to=to, timeout=timeout))

    def send_many(
        self,
        bodies: Iterable[Body],
        *,
        window: int = DEFAULT_WINDOW,
        timeout: float | None = None,
        on_ack: Callable[[Ack], object] | None = None,
        to: str | None = None,
    ) -> list[Ack]:
        """Send every body with up to ``window`` in flight; return all acks in order.
        ``on_ack`` is called (on the client's thread) with each as it arrives."""
        many = self._client.send_many(
            list(bodies), window=window, timeout=timeout, on_ack=on_ack, to=to
        )
        return self._run(many)

    def ping(self, *, timeout: float | None = None) -> float:
        """Send a PING and return the seconds until its PONG came back (the network and
        the server's event loop, not its handler or store)."""
        return self._run(self._client.ping(timeout=timeout))

    def stats(self, *, timeout: float | None = None) -> dict[str, Any]:
        """The server's live counters (docs/operations.md lists them)."""
        return self._run(self._client.stats(timeout=timeout))

    def receive(self, *, timeout: float | None = None) -> Message:
        """The next message from the server; ``TelexTimeout`` after ``timeout`` seconds."""
        return self._run(self._client.receive(timeout=timeout))

    def __iter__(self) -> Iterator[Message]:
        """Every message from the server, until the connection ends."""
        while True:
            try:
                yield self.receive()
            except ConnectionClosed:
                return

    def wait_closed(self) -> None:
        """Return once the client is done for good: closed, or gave up reconnecting."""
        self._run(self._client.wait_closed())

    def close(self) -> None:
        if self._thread.is_alive():
            try:
                self._run(self._client.close())
            finally:
                self._stop()

    def _stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
