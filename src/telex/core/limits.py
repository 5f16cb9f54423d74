"""Every limit the server enforces, with its default; docs/limits.md explains each one."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from .protocol import DEFAULT_MAX_MESSAGE_SIZE

__all__ = ["Limits"]


@dataclass(frozen=True, slots=True)
class Limits:
    """What one peer may cost the server. Sizes are bytes, times are seconds."""

    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
    handshake_timeout: float = 10.0
    idle_timeout: float = 60.0
    max_connections: int = 10_000
    max_connections_per_address: int = 256
    max_handshakes_per_address: int = 256
    write_buffer_limit: int = 1024 * 1024

    def __post_init__(self) -> None:
        for key, value in asdict(self).items():
            if value <= 0:
                raise ValueError(f"{key} must be positive, not {value}")

    def advertised(self) -> dict[str, Any]:
        """The limits a client needs to know, as stated in the server's WELCOME."""
        return {
            "max_message_size": self.max_message_size,
            "handshake_timeout": self.handshake_timeout,
            "idle_timeout": self.idle_timeout,
        }
