"""The clients: asyncio (``connect``, ``AsyncClient``), blocking (``Client``), plain text."""

from .aio import AsyncClient, connect, connect_errors
from .sync import Client

__all__ = ["AsyncClient", "Client", "connect", "connect_errors"]
