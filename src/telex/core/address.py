"""How an address is written for people: ``host:port``, ``[v6]:port`` (as it is typed)."""

from __future__ import annotations

from typing import Any

__all__ = ["format_address"]


def format_address(address: Any) -> str:
    """``(host, port, ...)`` as ``host:port``, an IPv6 host in brackets; else ``str()``."""
    if isinstance(address, tuple) and len(address) >= 2:
        host, port = address[0], address[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(address)
