"""The SQLite message log, on real files, through the typed store interface."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import pytest

from telex.core.records import (
    Batch,
    Committed,
    Envelope,
    Found,
    Inbound,
    Item,
    Pending,
    SessionState,
)
from telex.store import (
    MIGRATIONS,
    SCHEMA_VERSION,
    SQLiteStore,
    Store,
    StoreError,
    pack,
    unpack,
)


def inbound(session: str | None, sender: str | None, *items: Item) -> Batch:
    """A batch of messages for the server from one connection."""
    return Batch(inbound=[Inbound(session, sender, list(items))])


def bodies(store: SQLiteStore, **filters: object) -> list[object]:
    return [record.body for record in store.records(**filters)]  # type: ignore[arg-type]


# -- the file ---------------------------------------------------------------------------


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
    assert bodies(store) == ["old"]
    assert store.next_seq() == 2
    assert store.session_state("s", "alice").last_id == 1
    assert store.find_many("s", [1]) == {1: Found("received", None)}
    assert store.commit(inbound("s", "alice", (2, "new", "received")), 2.0) == Committed([2], [])
    assert bodies(store) == ["old", "new"]
    store.close()


# -- committing -------------------------------------------------------------------------


def test_inbound_text_and_bytes_bodies_and_replies_round_trip(store: SQLiteStore) -> None:
    store.commit(inbound("s1", "alice", (1, "héllo", "received"), (2, b"\x00\xff", b"\x01")), 1.0)
    assert [(r.body, r.reply) for r in store.records()] == [
        ("héllo", "received"),
        (b"\x00\xff", b"\x01"),
    ]
    assert store.find_many("s1", [1, 2]) == {1: Found("received"), 2: Found(b"\x01")}


def test_envelope_text_and_bytes_bodies_round_trip(store: SQLiteStore) -> None:
    batch = Batch(envelopes=[Envelope("bob", "héllo", "alice", "s1", 1), Envelope("bob", b"\xff")])
    store.commit(batch, 1.0)
    assert bodies(store) == ["héllo", b"\xff"]
    assert [p.body for p in store.session_state(None, "bob").outbox] == ["héllo", b"\xff"]


def test_commit_numbers_inbound_by_first_seq_then_envelopes(store: SQLiteStore) -> None:
    batch = Batch(
        inbound=[
            Inbound("s1", "alice", [(1, "a", "r"), (2, "b", "r"), (3, "c", "r")]),
            Inbound("s2", "carol", [(1, "d", "r")]),
        ],
        envelopes=[Envelope("bob", "x"), Envelope("bob", "y")],
    )
    assert store.commit(batch, 1.0) == Committed([1, 4], [5, 6])
    assert [(r.seq, r.body) for r in store.records()] == [
        (1, "a"),
        (2, "b"),
        (3, "c"),
        (4, "d"),
        (5, "x"),
        (6, "y"),
    ]
    assert store.next_seq() == 7


def test_seqs_continue_across_commits(store: SQLiteStore) -> None:
    assert store.commit(inbound("s", "alice", (1, "a", "r"), (2, "b", "r")), 1.0) == Committed(
        [1], []
    )
    assert store.commit(Batch(envelopes=[Envelope("bob", "c")]), 2.0) == Committed([], [3])
    assert store.commit(inbound("s", "alice", (3, "d", "r")), 3.0) == Committed([4], [])
    assert store.next_seq() == 5


def test_seqs_continue_after_reopening_the_file(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "t.db")
    store.commit(inbound("s", "alice", (1, "a", "r"), (2, "b", "r")), 1.0)
    store.commit(Batch(envelopes=[Envelope("bob", "c")]), 2.0)
    store.close()
    store = SQLiteStore(tmp_path / "t.db")
    assert store.next_seq() == 4
    assert store.commit(inbound("s", "alice", (3, "d", "r")), 3.0) == Committed([4], [])
    assert store.commit(Batch(envelopes=[Envelope("bob", "e")]), 4.0) == Committed([], [5])
    assert [r.seq for r in store.records()] == [1, 2, 3, 4, 5]
    store.close()


def test_seqs_continue_after_the_last_segment_is_reopened(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "t.db")
    store.commit(Batch(envelopes=[Envelope("bob", "a")]), 1.0)
    store.commit(inbound("s", "alice", (1, "b", "r"), (2, "c", "r"), (3, "d", "r")), 2.0)
    store.close()
    store = SQLiteStore(tmp_path / "t.db")
    assert store.commit(Batch(envelopes=[Envelope("bob", "e")]), 3.0) == Committed([], [5])
    store.close()


def test_a_message_is_stored_once_per_session_and_sender_id(store: SQLiteStore) -> None:
    store.commit(Batch(envelopes=[Envelope("bob", "a", "alice", "s1", 1)]), 1.0)
    again = Batch(
        inbound=[Inbound("s2", "carol", [(1, "other", "r")])],
        envelopes=[
            Envelope("bob", "b", "alice", "s1", 2),
            Envelope("bob", "a again", "alice", "s1", 1),
        ],
    )
    with pytest.raises(StoreError):
        store.commit(again, 2.0)
    assert bodies(store) == ["a"]  # the failed batch left nothing, not even its Inbound
    assert store.session_state("s1", "bob") == SessionState(1, (Pending(1, "a", "alice", "s1", 1),))
    assert store.find_many("s2", [1]) == {}


def test_the_same_sender_id_in_another_session_is_another_message(store: SQLiteStore) -> None:
    store.commit(Batch(envelopes=[Envelope("bob", "a", "alice", "s1", 1)]), 1.0)
    store.commit(Batch(envelopes=[Envelope("bob", "b", "alice", "s2", 1)]), 2.0)
    assert bodies(store) == ["a", "b"]


def test_messages_from_the_server_have_no_key_to_repeat(store: SQLiteStore) -> None:
    store.commit(Batch(envelopes=[Envelope("bob", "a"), Envelope("bob", "b")]), 1.0)
    store.commit(Batch(envelopes=[Envelope("bob", "c")]), 2.0)
    assert bodies(store) == ["a", "b", "c"]


@pytest.mark.sqlite_only
def test_a_failed_commit_uses_up_no_seqs(store: SQLiteStore) -> None:
    store.commit(Batch(envelopes=[Envelope("bob", "a", "alice", "s1", 1)]), 1.0)
    with pytest.raises(StoreError):
        store.commit(Batch(envelopes=[Envelope("bob", "a", "alice", "s1", 1)]), 2.0)
    assert store.commit(Batch(envelopes=[Envelope("bob", "b")]), 3.0) == Committed([], [2])


def test_a_failed_commit_leaves_a_gap_and_numbering_goes_on(store: Store) -> None:
    """A store may leave a gap where a failed commit took numbers (PostgreSQL's
    sequence does); what is stored after it is numbered higher, in order."""
    store.commit(Batch(envelopes=[Envelope("bob", "a", "alice", "s1", 1)]), 1.0)
    with pytest.raises(StoreError):
        store.commit(Batch(envelopes=[Envelope("bob", "a", "alice", "s1", 1)]), 2.0)
    after = store.commit(Batch(envelopes=[Envelope("bob", "b"), Envelope("bob", "c")]), 3.0)
    assert after.envelopes[0] > 1 and after.envelopes[1] == after.envelopes[0] + 1
    assert [r.seq for r in store.records()] == [1, *after.envelopes]


@pytest.mark.sqlite_only
def test_a_full_store_raises_and_keeps_what_it_had(store: SQLiteStore) -> None:
    store.commit(inbound("s", "alice", (1, "fits", "received")), 1.0)
    pages = store.db.execute("PRAGMA page_count").fetchone()[0]
    store.db.execute(f"PRAGMA max_page_count = {pages}")  # as a full disk does
    big = Batch(
        inbound=[Inbound("s", "alice", [(i, "x" * 5000, "received") for i in range(2, 50)])],
        envelopes=[Envelope("bob", "y" * 5000, "alice", "s", 50)],
    )
    with pytest.raises(StoreError, match="full"):
        store.commit(big, 2.0)
    assert bodies(store) == ["fits"]
    assert store.session_state("s", "bob") == SessionState(1, ())


def test_a_read_only_store_raises(tmp_path: Path) -> None:
    SQLiteStore(tmp_path / "t.db").close()
    store = SQLiteStore(tmp_path / "t.db")
    store.db.execute("PRAGMA query_only = ON")  # as a file system remounted read-only
    with pytest.raises(StoreError, match="readonly"):
        store.commit(inbound("s", "alice", (1, "x", "received")), 1.0)
    with pytest.raises(StoreError, match="readonly"):
        store.commit(Batch(envelopes=[Envelope("bob", "x")]), 1.0)
    store.close()


# -- segments ---------------------------------------------------------------------------


@pytest.mark.sqlite_only
def test_an_inbound_is_packed_in_one_segment_row(store: SQLiteStore) -> None:
    items: list[Item] = [(1, "one", "received"), (2, b"\x00two", "received"), (4, "four", b"\x01")]
    assert store.commit(inbound("s1", "alice", *items), 50.0) == Committed([1], [])
    assert store.db.execute("SELECT COUNT(*) FROM segments").fetchone()[0] == 1
    assert store.db.execute("SELECT COUNT(*) FROM messages").fetchone()[0] == 0
    assert store.next_seq() == 4
    assert [(r.seq, r.sender_id, r.body, r.reply) for r in store.records()] == [
        (1, 1, "one", "received"),
        (2, 2, b"\x00two", "received"),
        (3, 4, "four", b"\x01"),
    ]


def test_pack_and_unpack_round_trip() -> None:
    items: list[Item] = [(1, "one", "ok"), (2, b"\x00two", "ok"), (4, "", b""), (2**63, b"", "é")]
    assert list(unpack(pack(items))) == items


# -- records ----------------------------------------------------------------------------


@pytest.fixture
def three(store: SQLiteStore) -> SQLiteStore:
    """1 alice to the server at 10; 2 bob to alice at 20; 3 the server to bob at 30."""
    store.commit(inbound("a", "alice", (1, "1", "received")), 10.0)
    store.commit(Batch(envelopes=[Envelope("alice", "2", "bob", "b", 1)]), 20.0)
    store.commit(Batch(envelopes=[Envelope("bob", "3")]), 30.0)
    return store


def test_records_by_sender(three: SQLiteStore) -> None:
    assert bodies(three, sender="alice") == ["1"]
    assert bodies(three, sender="bob") == ["2"]
    assert bodies(three, sender="server") == ["3"]


def test_records_by_recipient(three: SQLiteStore) -> None:
    assert bodies(three, recipient="alice") == ["2"]
    assert bodies(three, recipient="bob") == ["3"]
    assert bodies(three, recipient="server") == ["1"]


def test_records_since(three: SQLiteStore) -> None:
    assert bodies(three, since=15.0) == ["2", "3"]
    assert bodies(three, since=20.0) == ["2", "3"]  # inclusive


def test_records_limit_keeps_the_latest(three: SQLiteStore) -> None:
    assert bodies(three, limit=2) == ["2", "3"]


def test_records_after_seq(three: SQLiteStore) -> None:
    second = list(three.records())[1].seq
    assert bodies(three, after_seq=second) == ["3"]


def test_records_give_every_field(three: SQLiteStore) -> None:
    first, second, third = three.records()
    assert (first.sender, first.recipient, first.sender_id, first.reply) == (
        "alice",
        None,
        1,
        "received",
    )
    assert (first.received, first.delivered) == (10.0, 10.0)
    assert (second.sender, second.recipient, second.sender_id, second.reply) == (
        "bob",
        "alice",
        1,
        None,
    )
    assert (second.received, second.delivered) == (20.0, None)
    assert (third.sender, third.recipient, third.sender_id) == (None, "bob", None)


def test_records_merge_both_tables_in_seq_order(store: SQLiteStore) -> None:
    store.commit(inbound("s1", "alice", (1, "a", "r"), (2, "b", "r")), 10.0)
    store.commit(Batch(envelopes=[Envelope("bob", "to bob", "alice", "s1", 3)]), 15.0)
    store.commit(inbound("s2", "carol", (1, "c", "r")), 20.0)
    assert [(r.seq, r.body) for r in store.records()] == [
        (1, "a"),
        (2, "b"),
        (3, "to bob"),
        (4, "c"),
    ]
    assert bodies(store, recipient="server") == ["a", "b", "c"]
    assert bodies(store, recipient="bob") == ["to bob"]
    assert bodies(store, sender="carol") == ["c"]
    assert bodies(store, sender="alice") == ["a", "b", "to bob"]
    assert bodies(store, after_seq=1) == ["b", "to bob", "c"]  # inside a segment
    assert bodies(store, limit=2) == ["to bob", "c"]
    assert bodies(store, since=15.0) == ["to bob", "c"]


# -- the outbox -------------------------------------------------------------------------


def test_the_outbox_in_seq_order_until_delivered(store: SQLiteStore) -> None:
    committed = store.commit(
        Batch(
            envelopes=[
                Envelope("bob", "one", "alice", "s1", 1),
                Envelope("carol", "other", "alice", "s1", 2),
                Envelope("bob", "two", "alice", "s1", 3),
            ]
        ),
        1.0,
    )
    one, _, two = committed.envelopes
    assert store.outbox("bob") == [(one, "s1", 1, "alice", "one"), (two, "s1", 3, "alice", "two")]
    store.commit(Batch(delivered=[one]), 2.0)
    assert store.outbox("bob") == [(two, "s1", 3, "alice", "two")]
    assert [r.delivered for r in store.records(recipient="bob")] == [2.0, None]
    store.commit(Batch(delivered=[two]), 3.0)
    assert store.outbox("bob") == []
    assert len(store.outbox("carol")) == 1


def test_delivered_commits_with_new_envelopes_in_one_batch(store: SQLiteStore) -> None:
    (first,) = store.commit(Batch(envelopes=[Envelope("bob", "one")]), 1.0).envelopes
    store.commit(Batch(envelopes=[Envelope("bob", "two")], delivered=[first]), 2.0)
    assert [p.body for p in store.session_state(None, "bob").outbox] == ["two"]


# -- session_state ----------------------------------------------------------------------


def test_session_state_of_a_new_session_is_empty(store: SQLiteStore) -> None:
    assert store.session_state("new", "nobody") == SessionState(0, ())
    assert store.session_state(None, "nobody") == SessionState(0, ())


def test_session_state_gives_the_last_id_from_both_tables(store: SQLiteStore) -> None:
    store.commit(inbound("s1", "alice", (1, "a", "r"), (4, "b", "r")), 1.0)
    assert store.session_state("s1", "alice").last_id == 4
    store.commit(Batch(envelopes=[Envelope("bob", "c", "alice", "s1", 6)]), 2.0)
    assert store.session_state("s1", "alice").last_id == 6
    assert store.session_state("other", "alice").last_id == 0


def test_session_state_gives_the_outbox_as_pending_records(store: SQLiteStore) -> None:
    store.commit(
        Batch(
            envelopes=[
                Envelope("bob", "hi", "alice", "s1", 1),
                Envelope("bob", b"\x00"),
                Envelope("carol", "not bob's"),
            ]
        ),
        1.0,
    )
    assert store.session_state("sb", "bob") == SessionState(
        0, (Pending(1, "hi", "alice", "s1", 1), Pending(2, b"\x00", None, None, None))
    )


# -- find_many --------------------------------------------------------------------------


def test_find_many_gives_the_reply_of_messages_to_the_server(store: SQLiteStore) -> None:
    store.commit(inbound("s1", "alice", (1, "a", "ok"), (2, "b", b"\x01")), 1.0)
    assert store.find_many("s1", [1, 2]) == {1: Found("ok", None), 2: Found(b"\x01", None)}


def test_find_many_gives_the_recipient_of_envelopes(store: SQLiteStore) -> None:
    store.commit(Batch(envelopes=[Envelope("bob", "hi", "alice", "s1", 1)]), 1.0)
    assert store.find_many("s1", [1]) == {1: Found(None, "bob")}


def test_find_many_leaves_out_ids_never_stored(store: SQLiteStore) -> None:
    store.commit(inbound("s1", "alice", (1, "a", "r"), (4, "b", "r")), 1.0)
    store.commit(Batch(envelopes=[Envelope("bob", "c", "alice", "s1", 5)]), 2.0)
    found = store.find_many("s1", [0, 1, 2, 3, 4, 5, 6])
    assert found == {1: Found("r"), 4: Found("r"), 5: Found(None, "bob")}  # 2, 3: inside


def test_find_many_looks_only_in_the_given_session(store: SQLiteStore) -> None:
    store.commit(inbound("s1", "alice", (1, "a", "r")), 1.0)
    store.commit(Batch(envelopes=[Envelope("bob", "c", "alice", "s1", 2)]), 2.0)
    assert store.find_many("s2", [1, 2]) == {}
    assert store.find_many("s1", []) == {}


def test_a_new_store_is_its_owners_alone(tmp_path: Path) -> None:
    path = tmp_path / "new" / "telex.db"
    store = SQLiteStore(path)
    store.commit(Batch(inbound=[Inbound("s", "a", [(1, "x", "r")])]), 1.0)
    assert path.parent.stat().st_mode & 0o777 == 0o700
    for file in path.parent.iterdir():  # the file, and its -wal and -shm
        assert file.stat().st_mode & 0o777 == 0o600, file
    store.close()


# -- reading a big store from the end (issue 10): -n, --from, --to, --since -------------


def mixed(store: SQLiteStore) -> list[tuple[int, str | None, str | None, float]]:
    """Segments of one to four messages and client messages, interleaved, from three
    senders, a commit a second from time 100 on; (seq, sender, recipient, received) of all."""
    names = ["alice", "bob", "carol"]
    ids = dict.fromkeys(names, 0)
    for turn in range(24):
        sender = names[turn % 3]
        items: list[Item] = []
        for _ in range(1 + turn % 4):
            ids[sender] += 1
            items.append((ids[sender], f"{sender} {ids[sender]}", "received"))
        envelopes = []
        for _ in range(turn // 3 % 3):
            ids[sender] += 1
            recipient = names[(turn + 1) % 3]
            envelopes.append(
                Envelope(recipient, f"{sender} {ids[sender]}", sender, sender, ids[sender])
            )
        batch = Batch([Inbound(sender, sender, items)], envelopes)
        if turn % 5 == 4:  # a client message before the segment, too
            ids[sender] += 1
            early = Envelope("alice", f"{sender} {ids[sender]}", sender, sender, ids[sender])
            store.commit(Batch(envelopes=[early]), 100.0 + turn)
        store.commit(batch, 100.0 + turn)
    return [(r.seq, r.sender, r.recipient, r.received) for r in store.records()]


FILTERS: list[dict[str, object]] = [
    {},
    {"sender": "bob"},
    {"recipient": "server"},
    {"recipient": "carol"},
    {"since": 117.0},
    {"sender": "carol", "since": 110.0},
    {"sender": "alice", "recipient": "bob"},
    {"after_seq": 40},
    {"sender": "bob", "after_seq": 40},
]


def matches(row: tuple[int, str | None, str | None, float], filters: dict[str, object]) -> bool:
    seq, sender, recipient, received = row
    since = filters.get("since")
    return (
        filters.get("sender", sender) == sender
        and filters.get("recipient", recipient or "server") == (recipient or "server")
        and (since is None or received >= since)  # type: ignore[operator]
        and seq > filters.get("after_seq", 0)  # type: ignore[operator]
    )


@pytest.mark.parametrize("filters", FILTERS)
def test_limit_gives_exactly_the_last_n_across_both_tables(
    store: SQLiteStore, filters: dict[str, object]
) -> None:
    everything = mixed(store)
    if isinstance(store, SQLiteStore):
        assert store.db.execute("SELECT COUNT(*) FROM segments").fetchone()[0] == 24
        assert store.db.execute("SELECT COUNT(*) FROM messages").fetchone()[0] > 20
    wanted = [row[0] for row in everything if matches(row, filters)]
    assert wanted, "a filter that matches nothing tests nothing"
    assert [r.seq for r in store.records(**filters)] == wanted  # type: ignore[arg-type]
    for n in range(1, len(wanted) + 2):
        got = [r.seq for r in store.records(limit=n, **filters)]  # type: ignore[arg-type]
        assert got == wanted[-n:], n


def test_limit_splits_a_segment_and_keeps_its_order(store: SQLiteStore) -> None:
    store.commit(Batch(envelopes=[Envelope("bob", "before")]), 1.0)
    store.commit(inbound("s", "alice", *[(i, f"m{i}", "r") for i in range(1, 6)]), 2.0)
    assert bodies(store, limit=3) == ["m3", "m4", "m5"]
    assert bodies(store, limit=6) == ["before", "m1", "m2", "m3", "m4", "m5"]
    assert bodies(store, limit=2, after_seq=4) == ["m4", "m5"]  # after_seq inside it
    assert bodies(store, after_seq=4) == ["m4", "m5"]


def test_since_takes_a_segment_whole_at_its_one_time(store: SQLiteStore) -> None:
    store.commit(inbound("s", "alice", (1, "a", "r"), (2, "b", "r")), 10.0)
    store.commit(inbound("s", "alice", (3, "c", "r"), (4, "d", "r")), 20.0)
    assert bodies(store, since=15.0) == ["c", "d"]
    assert bodies(store, since=10.0, limit=3) == ["b", "c", "d"]
    assert bodies(store, since=21.0) == []


def test_since_is_exact_when_the_clock_went_back(store: SQLiteStore) -> None:
    """The rows since a time are found from the lowest seq stored since then, not from
    the first one in time: a clock set back does not hide the messages before it."""
    store.commit(Batch(envelopes=[Envelope("bob", "old")]), 50.0)
    store.commit(Batch(envelopes=[Envelope("bob", "late")]), 60.0)
    store.commit(inbound("s", "alice", (1, "segment late", "r")), 61.0)
    store.commit(Batch(envelopes=[Envelope("bob", "set back")]), 55.0)
    store.commit(inbound("s", "alice", (2, "segment set back", "r")), 54.0)
    store.commit(Batch(envelopes=[Envelope("bob", "new")]), 70.0)
    assert bodies(store, since=58.0) == ["late", "segment late", "new"]
    assert bodies(store, since=58.0, limit=2) == ["segment late", "new"]


def test_next_seq_reads_the_end_of_both_tables(store: SQLiteStore) -> None:
    assert store.next_seq() == 1
    store.commit(inbound("s", "alice", (1, "a", "r"), (2, "b", "r"), (3, "c", "r")), 1.0)
    assert store.next_seq() == 4
    store.commit(Batch(envelopes=[Envelope("bob", "d")]), 2.0)
    assert store.next_seq() == 5


class Planner:
    """A stand-in for the store's connection that keeps SQLite's plan of each query."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db
        self.plans: list[tuple[str, str]] = []

    def execute(self, sql: str, args: object = ()) -> sqlite3.Cursor:
        plan = self.db.execute(f"EXPLAIN QUERY PLAN {sql}", args)  # type: ignore[arg-type]
        self.plans.append((sql, " / ".join(row[3] for row in plan)))
        return self.db.execute(sql, args)  # type: ignore[arg-type]


@pytest.mark.sqlite_only
@pytest.mark.parametrize("filters", [*FILTERS, {"sender": "server"}, {"since": 0.0}])
@pytest.mark.parametrize("limit", [None, 3])
def test_every_log_query_walks_an_index_in_order(
    store: SQLiteStore, filters: dict[str, object], limit: int | None
) -> None:
    """What keeps ``telex log -n``, --from, --to and --since fast on a big store: each
    query reads a range of the index its filter names, in seq order, and sorts nothing."""
    mixed(store)
    planner = Planner(store.db)
    store.db = planner  # type: ignore[assignment]
    try:
        list(store.records(limit=limit, **filters))  # type: ignore[arg-type]
    finally:
        store.db = planner.db
    assert planner.plans
    for sql, plan in planner.plans:
        assert "SCAN" not in plan and "TEMP B-TREE" not in plan, (sql, plan)
        assert not re.search(r"SEARCH \w+( /|$)", plan), (sql, plan)  # a range, of an index
        filtered = [
            index
            for column, index in (
                ("sender", "(sender=?"),
                ("recipient", "(recipient=?"),
                (" received", "(received>?)"),  # the bound's query; ``+received`` only filters
            )
            if re.search(rf"{column} (= \?|IS NULL|>= \?)", sql)
        ]
        assert not filtered or any(index in plan for index in filtered), (sql, plan)


def downgrade_to_3(path: Path) -> None:
    """A store as version 3 left it: version 4 only added indexes."""
    db = sqlite3.connect(path, isolation_level=None)
    for name in re.findall(r"CREATE INDEX (\w+)", MIGRATIONS[3]):
        db.execute(f"DROP INDEX {name}")
    db.execute("PRAGMA user_version = 3")
    db.close()


def test_a_version_3_store_is_migrated_to_4_and_keeps_its_messages(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    store = SQLiteStore(path)
    everything = mixed(store)
    indexes = "SELECT name FROM sqlite_master WHERE type = 'index' ORDER BY name"
    new = [row[0] for row in store.db.execute(indexes)]
    store.close()
    downgrade_to_3(path)
    store = SQLiteStore(path)
    assert store.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 4
    assert [(r.seq, r.sender, r.recipient, r.received) for r in store.records()] == everything
    assert [row[0] for row in store.db.execute(indexes)] == new
    assert store.commit(Batch(envelopes=[Envelope("bob", "after")]), 200.0).envelopes == [
        everything[-1][0] + 1
    ]
    store.close()


def test_an_old_store_opened_read_only_is_read_the_same_without_the_indexes(
    tmp_path: Path,
) -> None:
    """``telex log`` cannot migrate (the server does when it starts): slower, not wrong."""
    path = tmp_path / "t.db"
    store = SQLiteStore(path)
    everything = mixed(store)
    store.close()
    downgrade_to_3(path)
    old = SQLiteStore(path, readonly=True)
    try:
        assert old.db.execute("PRAGMA user_version").fetchone()[0] == 3
        for filters in FILTERS:
            wanted = [row[0] for row in everything if matches(row, filters)]
            assert [r.seq for r in old.records(limit=4, **filters)] == wanted[-4:]  # type: ignore[arg-type]
            assert [r.seq for r in old.records(**filters)] == wanted  # type: ignore[arg-type]
    finally:
        old.close()
