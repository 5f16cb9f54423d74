"""Where messages are kept: the store interface and its SQLite implementation (the
PostgreSQL one is ``telex.store.postgres``, with the optional extra ``telex[postgres]``)."""

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
