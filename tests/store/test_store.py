"""The SQLite message log, on real files."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from telex.store import MIGRATIONS, SCHEMA_VERSION, SQLiteStore, StoreError, pack, unpack

_seq = iter(range(1, 1_000_000))


def row(session: str | None, sender_id: int | None, body: object, **kw: object) -> tuple:  # type: ignore[type-arg]
    return (
        kw.get("seq", next(_seq)),
        session,
        sender_id,
        kw.get("sender", "alice"),
        kw.get("recipient"),
        body,
        kw.get("reply", "received"),
        kw.get("received", 100.0),
        kw.get("delivered", 100.0),
    )


def test_a_new_store_has_the_current_schema_in_wal_mode(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "t.db")
    assert store.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert store.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    store.close()
    SQLiteStore(tmp_path / "t.db").close()  # opening again migrates nothing


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    SQLiteStore(tmp_path / "t.db").close()
    db = sqlite3.connect(tmp_path / "t.db")
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(StoreError, match="schema version"):
        SQLiteStore(tmp_path / "t.db")


def test_rows_round_trip_with_text_and_bytes(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "t.db", sync="full")
    store.write([row("s1", 1, "héllo"), row("s1", 2, b"\x00\xff", reply=b"\x01")])
    records = list(store.records())
    assert [(r.body, r.reply) for r in records] == [("héllo", "received"), (b"\x00\xff", b"\x01")]
    assert store.last_id("s1") == 2 and store.last_id("other") == 0
    assert store.find("s1", 2) == (records[1].seq, b"\x01")
    assert store.find("s1", 3) is None


def test_a_message_is_stored_once_per_sender_id(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "t.db")
    store.write([row("s1", 1, "a")])
    with pytest.raises(StoreError):
        store.write([row("s1", 2, "b"), row("s1", 1, "a again")])
    assert [r.body for r in store.records()] == ["a"]  # the failed batch left nothing


def test_the_outbox_in_order_until_delivered(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "t.db")
    assert store.next_seq() == 1
    store.write(
        [
            row("s1", 1, "one", recipient="bob", delivered=None, seq=1),
            row("s2", 1, "other", recipient="carol", delivered=None, seq=2),
            row("s1", 2, "two", recipient="bob", delivered=None, seq=3),
        ]
    )
    assert store.next_seq() == 4
    assert store.outbox("bob") == [(1, "s1", 1, "alice", "one"), (3, "s1", 2, "alice", "two")]
    store.write([], delivered=[(200.0, 1)])
    assert store.outbox("bob") == [(3, "s1", 2, "alice", "two")]


def test_records_filter(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "t.db")
    store.write(
        [
            row("a", 1, "1", sender="alice", received=10.0),
            row("b", 1, "2", sender="bob", recipient="alice", received=20.0),
            row(None, None, "3", sender=None, recipient="bob", received=30.0),
        ]
    )
    assert [r.body for r in store.records(sender="alice")] == ["1"]
    assert [r.body for r in store.records(recipient="alice")] == ["2"]
    assert [r.body for r in store.records(sender="server")] == ["3"]
    assert [r.body for r in store.records(recipient="server")] == ["1"]
    assert [r.body for r in store.records(since=15.0)] == ["2", "3"]
    assert [r.body for r in store.records(limit=2)] == ["2", "3"]
    second = list(store.records())[1].seq
    assert [r.body for r in store.records(after_seq=second)] == ["3"]


def test_a_full_store_raises_and_keeps_what_it_had(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "t.db")
    store.write([row("s", 1, "fits")])
    pages = store.db.execute("PRAGMA page_count").fetchone()[0]
    store.db.execute(f"PRAGMA max_page_count = {pages}")  # as a full disk does
    with pytest.raises(StoreError, match="full"):
        store.write([row("s", i, "x" * 5000) for i in range(2, 50)])
    assert [r.body for r in store.records()] == ["fits"]


def test_a_read_only_store_raises(tmp_path: Path) -> None:
    SQLiteStore(tmp_path / "t.db").close()
    store = SQLiteStore(tmp_path / "t.db")
    store.db.execute("PRAGMA query_only = ON")  # as a file system remounted read-only
    with pytest.raises(StoreError, match="readonly"):
        store.write([row("s", 1, "x")])


def test_segments_pack_a_batch_in_one_row(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "t.db")
    items = [(1, "one", "received"), (2, b"\x00two", "received"), (4, "four", b"\x01")]
    store.write(segments=[(10, "s1", "alice", 50.0, items)])
    assert store.db.execute("SELECT COUNT(*) FROM segments").fetchone()[0] == 1
    assert store.next_seq() == 13
    assert [(r.seq, r.sender_id, r.body, r.reply) for r in store.records()] == [
        (10, 1, "one", "received"),
        (11, 2, b"\x00two", "received"),
        (12, 4, "four", b"\x01"),
    ]
    assert store.last_id("s1") == 4
    assert store.find("s1", 2) == (11, "received")
    assert store.find("s1", 3) is None  # inside the range, never sent (rejected, say)
    assert list(unpack(pack(items))) == items


def test_records_merge_both_tables_in_seq_order(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "t.db")
    store.write(
        rows=[row("s1", 3, "to bob", recipient="bob", seq=3, delivered=None)],
        segments=[
            (1, "s1", "alice", 10.0, [(1, "a", "r"), (2, "b", "r")]),
            (4, "s2", "carol", 20.0, [(1, "c", "r")]),
        ],
    )
    assert [r.body for r in store.records()] == ["a", "b", "to bob", "c"]
    assert [r.body for r in store.records(recipient="server")] == ["a", "b", "c"]
    assert [r.body for r in store.records(recipient="bob")] == ["to bob"]
    assert [r.body for r in store.records(sender="carol")] == ["c"]
    assert [r.body for r in store.records(after_seq=2)] == ["to bob", "c"]
    assert [r.body for r in store.records(limit=2)] == ["to bob", "c"]
    assert [r.body for r in store.records(since=15.0)] == ["to bob", "c"]
    assert store.last_id("s1") == 3


def test_a_version_1_store_is_migrated_and_keeps_its_messages(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    db = sqlite3.connect(path, isolation_level=None)
    db.executescript(MIGRATIONS[0])
    db.execute("PRAGMA user_version = 1")
    db.execute(
        "INSERT INTO messages VALUES (1, 's', 1, 'alice', NULL, 'old', 'received', 1.0, 1.0)"
    )
    db.close()
    store = SQLiteStore(path)
    assert store.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert [r.body for r in store.records()] == ["old"]
    assert store.next_seq() == 2
