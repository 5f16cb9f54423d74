"""The blocking client: ``with telex.Client("127.0.0.1", 7777) as client``.

It runs the asyncio client on an event loop in a background thread, so both share one
implementation and the same method names.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterable
from typing import Any, TypeVar

from ..core.events import Ack, Body, Message
from .aio import DEFAULT_WINDOW, AsyncClient

__all__ = ["Client"]

T = TypeVar("T")


class Client:
    """A blocking telex client; it connects when created (or entered)."""

    def __init__(self, host: str, port: int, **options: Any) -> None:
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

    def send(self, body: Body, *, to: str | None = None, timeout: float | None = None) -> Ack:
        """Send one message and return its acknowledgment; raise if it was rejected."""
        return self._run(self._client.send(body, to=to, timeout=timeout))

    def send_many(
        self,
        bodies: Iterable[Body],
        *,
        window: int = DEFAULT_WINDOW,
        timeout: float | None = None,
        to: str | None = None,
    ) -> list[Ack]:
        """Send every body with up to ``window`` in flight; return all acks in order."""
        return self._run(
            self._client.send_many(list(bodies), window=window, timeout=timeout, to=to)
        )

    def receive(self, timeout: float | None = None) -> Message:
        """The next message from the server; ``TelexTimeout`` after ``timeout`` seconds."""
        return self._run(self._client.receive(timeout=timeout))

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
