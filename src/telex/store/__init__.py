"""Where messages are kept: the store interface and its SQLite implementation."""

from ..core.records import Record
from .base import Store, StoreError, open_store
from .sqlite import MIGRATIONS, SCHEMA_VERSION, SYNC_LEVELS, SQLiteStore, pack, unpack

__all__ = [
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "SYNC_LEVELS",
    "Record",
    "SQLiteStore",
    "Store",
    "StoreError",
    "open_store",
    "pack",
    "unpack",
]
