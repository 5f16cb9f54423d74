"""Where messages are kept: the store interface and its SQLite implementation."""

from .sqlite import (
    MIGRATIONS,
    SCHEMA_VERSION,
    SYNC_LEVELS,
    Item,
    Record,
    Row,
    Segment,
    Store,
    StoreError,
    pack,
    unpack,
)

__all__ = [
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "SYNC_LEVELS",
    "Item",
    "Record",
    "Row",
    "Segment",
    "Store",
    "StoreError",
    "pack",
    "unpack",
]
