"""The store's housekeeping on real SQLite files: prune, export and import; and the
running server pruning with --keep, in-process and as a real ``telex serve`` process.

Run as a script, it measures what a big prune costs a pipelined sender's acks:
``python -m tests.store.test_housekeeping [OLD_MESSAGES]`` (docs/durability.md).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import telex
from telex.core.records import Batch, Envelope, Inbound
from telex.server import Server
from telex.server.housekeeping import Housekeeper
from telex.store import SQLiteStore, StoreError
from telex.store.base import Imported, StoredMessage

from ..conftest import TIMEOUT

DAY = 86400.0
IDS = itertools.count(1)  # alice's ids, in her session "a"
NOW = time.time()
OLD = NOW - 10 * DAY


def to_server(
    store: SQLiteStore, session: str | None, sender: str | None, ids: range, when: float
) -> int:
    """Messages for the server, one segment row; the first seq."""
    items = [(i, f"{sender} {i}", "received") for i in ids]
    return store.commit(Batch(inbound=[Inbound(session, sender, items)]), when).inbound[0]


def to_client(
    store: SQLiteStore, recipient: str, body: str, when: float, *, delivered: float | None
) -> int:
    """A message from alice (session "a") for a client, delivered at ``delivered``."""
    envelope = Envelope(recipient, body, "alice", "a", next(IDS))
    seq = store.commit(Batch(envelopes=[envelope]), when).envelopes[0]
    if delivered is not None:
        store.commit(Batch(delivered=[seq], answers={seq: (0, "", "thanks")}), delivered)
    return seq


def seqs(store: SQLiteStore) -> list[int]:
    return [message.seq for message in store.export()]


def everything(store: SQLiteStore) -> list[StoredMessage]:
    return list(store.export())


# -- prune ---------------------------------------------------------------------------------


def test_prune_deletes_only_delivered_messages_older_than_the_time(store: SQLiteStore) -> None:
    old_segment = to_server(store, "s1", "bob", range(1, 4), OLD)
    old_delivered = to_client(store, "carol", "old, taken", OLD, delivered=OLD + 1)
    old_waiting = to_client(store, "carol", "old, waiting", OLD, delivered=None)
    taken_late = to_client(store, "carol", "old, taken today", OLD, delivered=NOW)
    new_segment = to_server(store, "s1", "bob", range(4, 6), NOW)
    new_delivered = to_client(store, "dave", "new, taken", NOW, delivered=NOW)
    newest = to_client(store, "dave", "new, waiting", NOW, delivered=None)

    assert store.prunable(NOW - DAY) == 5
    assert sum(store.prune(NOW - DAY)) == 5
    assert seqs(store) == [old_waiting, new_segment, new_segment + 1, new_delivered, newest]
    assert old_segment not in seqs(store)
    assert {old_delivered, taken_late}.isdisjoint(seqs(store))  # age is the time stored
    assert [p.body for p in store.session_state(None, "carol").outbox] == ["old, waiting"]
    assert store.prunable(NOW - DAY) == 0
    assert sum(store.prune(NOW - DAY)) == 0


def test_an_outbox_message_is_never_pruned_whatever_its_age(store: SQLiteStore) -> None:
    waiting = [to_client(store, "carol", f"waiting {i}", OLD + i, delivered=None) for i in range(5)]
    to_server(store, None, None, range(1, 2), NOW)
    assert sum(store.prune(NOW + DAY)) == 0
    assert [p.seq for p in store.session_state(None, "carol").outbox] == waiting


def test_the_newest_message_is_kept_so_numbering_goes_on(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "t.db")
    to_server(store, "s1", "bob", range(1, 4), OLD)
    last = to_server(store, "s1", "bob", range(4, 7), OLD + 1) + 2
    assert sum(store.prune(NOW)) == 3  # the newest segment, whole, stays
    store.close()
    store = SQLiteStore(tmp_path / "t.db")
    assert store.next_seq() == last + 1  # not 1 again: clients know seqs as ids
    store.close()


@pytest.mark.sqlite_only
def test_prune_goes_in_steps_of_at_most_limit_messages(store: SQLiteStore) -> None:
    for turn in range(30):  # segments of 7, then message rows
        to_server(store, "s1", "bob", range(turn * 7 + 1, turn * 7 + 8), OLD + turn)
    for turn in range(45):
        to_client(store, "carol", f"m{turn}", OLD + 100 + turn, delivered=OLD + 200)
    to_client(store, "carol", "new", NOW, delivered=None)
    steps = []
    pruning = store.prune(NOW - DAY, limit=20)
    for step in pruning:
        assert not store.db.in_transaction  # between steps the server's commits run
        steps.append(step)
    assert sum(steps) == 30 * 7 + 45
    assert all(step <= 20 for step in steps)
    assert steps == [14] * 15 + [20, 20, 5]  # two segments a step, then rows
    assert seqs(store) == [store.next_seq() - 1]


def test_a_segment_bigger_than_the_limit_goes_whole(store: SQLiteStore) -> None:
    to_server(store, "s1", "bob", range(1, 51), OLD)
    to_server(store, "s1", "bob", range(51, 52), NOW)
    assert list(store.prune(NOW - DAY, limit=10)) == [50]


@pytest.mark.sqlite_only
def test_old_outbox_messages_are_walked_past_once_a_pass(store: SQLiteStore) -> None:
    """A step reads ``limit`` index entries from where the last one stopped: a thousand
    waiting messages cost a pass a few steps, not every step."""
    for i in range(100):
        to_client(store, "carol", f"waiting {i}", OLD + i, delivered=None)
    for i in range(10):
        to_client(store, "dave", f"taken {i}", OLD + 200 + i, delivered=OLD + 300)
    to_client(store, "dave", "newest", NOW, delivered=None)
    queries: list[str] = []
    store.db.set_trace_callback(queries.append)
    steps = list(store.prune(NOW - DAY, limit=25))
    store.db.set_trace_callback(None)
    assert steps == [0, 0, 0, 0, 10]  # 110 entries, 25 a step
    assert sum("recipient IS NULL FROM messages" in query for query in queries) == 5
    assert len(store.session_state(None, "carol").outbox) == 100


def test_a_pruned_message_is_forgotten_for_dedup_and_the_rest_is_found(
    store: SQLiteStore,
) -> None:
    to_server(store, "s1", "bob", range(1, 4), OLD)
    seq = to_client(store, "carol", "hi", OLD, delivered=OLD)
    to_server(store, "s1", "bob", range(4, 7), NOW)
    sent_id = next(m.sender_id for m in store.export() if m.seq == seq)
    assert sum(store.prune(NOW - DAY)) == 4
    assert set(store.find_many("s1", [1, 2, 3, 4, 5, 6])) == {4, 5, 6}
    assert store.find_many("a", [sent_id]) == {}  # sent again, it would be new
    if isinstance(store, SQLiteStore):
        rows = store.db.execute("SELECT first_id, last_id FROM segments").fetchall()
        assert rows == [(4, 6)]  # the dedup index holds what is there, no more
    assert store.last_id("s1") == 6


def test_prune_beside_a_server_waits_for_its_lock(tmp_path: Path) -> None:
    """The server holds the store lock; a second connection (telex log prune) still
    prunes, each step waiting for the server's transaction."""
    server_side = SQLiteStore(tmp_path / "t.db")
    to_server(server_side, "s1", "bob", range(1, 4), OLD)
    to_server(server_side, "s1", "bob", range(4, 5), NOW)
    with pytest.raises(StoreError, match="in use by another telex server"):
        SQLiteStore(tmp_path / "t.db")
    beside = SQLiteStore(tmp_path / "t.db", lock=False)
    server_side.db.execute("BEGIN IMMEDIATE")  # a commit in progress
    threading.Timer(0.3, lambda: server_side.db.execute("COMMIT")).start()
    started = time.monotonic()
    assert sum(beside.prune(NOW - DAY)) == 3
    assert time.monotonic() - started >= 0.25
    beside.close()
    assert seqs(server_side) == [4]
    server_side.close()


# -- export and import ---------------------------------------------------------------------


def mixed(store: SQLiteStore) -> None:
    """Every kind of message: for the server (text and bytes, from a session and from a
    plain-text peer), between clients (delivered, refused, waiting), from the server."""
    store.commit(
        Batch(inbound=[Inbound("s1", "bob", [(1, "one", "received"), (2, b"\x00\xff", b"ok")])]),
        OLD,
    )
    store.commit(Batch(inbound=[Inbound(None, None, [(1, "a line", "got it")])]), OLD + 1)
    taken = store.commit(Batch(envelopes=[Envelope("carol", "hi", "bob", "s1", 3)]), OLD + 2)
    refused = store.commit(Batch(envelopes=[Envelope("carol", b"\x01", "bob", "s1", 4)]), OLD + 3)
    store.commit(
        Batch(
            delivered=[taken.envelopes[0], refused.envelopes[0]],
            answers={taken.envelopes[0]: (0, "", "thanks"), refused.envelopes[0]: (3, "no", None)},
        ),
        OLD + 4,
    )
    store.commit(Batch(envelopes=[Envelope("dave", "from the server")]), OLD + 5)
    store.commit(Batch(inbound=[Inbound("s1", "bob", [(5, "five", "received")])]), NOW)


def test_export_gives_every_field_of_every_message_in_seq_order(store: SQLiteStore) -> None:
    mixed(store)
    exported = everything(store)
    assert [m.seq for m in exported] == list(range(1, 8))
    first, second, line, hi, refused, server_sent, five = exported
    assert first == StoredMessage(
        1, "s1", 1, "bob", None, "one", "received", OLD, OLD, 0, None
    )  # for the server: delivered when stored
    assert (second.body, second.reply) == (b"\x00\xff", b"ok")
    assert (line.session, line.sender, line.sender_id) == (None, None, 1)
    assert hi == StoredMessage(4, "s1", 3, "bob", "carol", "hi", "thanks", OLD + 2, OLD + 4, 0, "")
    assert (refused.status, refused.reason, refused.reply, refused.body) == (3, "no", None, b"\1")
    assert (server_sent.sender, server_sent.session, server_sent.delivered) == (None, None, None)
    assert five.received == NOW
    assert [m.seq for m in store.export(sender="bob", since=OLD + 1.5)] == [4, 5, 7]
    assert [m.seq for m in store.export(recipient="server")] == [1, 2, 3, 7]
    assert [m.seq for m in store.export(recipient="carol")] == [4, 5]


def test_import_into_an_empty_store_gives_the_same_export(tmp_path: Path) -> None:
    source = SQLiteStore(tmp_path / "a.db")
    mixed(source)
    exported = everything(source)
    source.close()
    target = SQLiteStore(tmp_path / "b.db")
    assert target.import_messages(exported) == Imported(7, 0)
    assert everything(target) == exported
    segments = target.db.execute("SELECT seq, count FROM segments ORDER BY seq").fetchall()
    assert segments == [(1, 2), (3, 1), (7, 1)]  # packed again as they were
    assert [p.body for p in target.session_state(None, "dave").outbox] == ["from the server"]
    assert set(target.find_many("s1", [1, 2, 3, 4, 5])) == {1, 2, 3, 4, 5}
    assert target.commit(Batch(envelopes=[Envelope("x", "next")]), NOW).envelopes == [8]
    target.close()


def test_importing_twice_stores_once(tmp_path: Path) -> None:
    source = SQLiteStore(tmp_path / "a.db")
    mixed(source)
    exported = everything(source)
    source.close()
    target = SQLiteStore(tmp_path / "b.db")
    target.import_messages(exported)
    assert target.import_messages(exported) == Imported(0, 7)  # sessions and seqs both
    assert target.import_messages(exported + exported) == Imported(0, 14)
    assert everything(target) == exported
    target.close()


def test_a_duplicate_within_one_import_is_skipped(store: SQLiteStore) -> None:
    one = StoredMessage(1, "s", 1, "bob", None, "x", "ok", OLD, OLD, 0, None)
    line = StoredMessage(2, None, 1, None, None, "y", "ok", OLD, OLD, 0, None)
    assert store.import_messages([one, line, one, line]) == Imported(2, 2)


def test_import_into_a_store_in_use_numbers_on_from_its_highest(store: SQLiteStore) -> None:
    to_server(store, "mine", "eve", range(1, 4), OLD)  # seqs 1 to 3
    imported = [
        StoredMessage(2, "s", 1, "bob", None, "b1", "ok", OLD, OLD, 0, None),
        StoredMessage(3, "s", 2, "bob", None, "b2", "ok", OLD, OLD, 0, None),
        StoredMessage(9, "s", 3, "bob", "carol", "b3", None, OLD, None, None, None),
    ]
    assert store.import_messages(imported) == Imported(3, 0)
    assert [(m.seq, m.body) for m in store.export()][3:] == [(4, "b1"), (5, "b2"), (9, "b3")]


def test_import_is_all_or_nothing(store: SQLiteStore) -> None:
    def messages() -> Iterator[StoredMessage]:
        yield StoredMessage(1, "s", 1, "bob", None, "b1", "ok", OLD, OLD, 0, None)
        yield StoredMessage(2, "s", 2, "bob", "carol", "b2", None, OLD, None, None, None)
        raise ValueError("line 3 is bad")

    with pytest.raises(ValueError, match="line 3"):
        store.import_messages(messages())
    assert everything(store) == []
    assert store.commit(Batch(envelopes=[Envelope("x", "next")]), NOW).envelopes == [1]


# -- the server prunes with keep -----------------------------------------------------------


async def test_the_server_prunes_on_its_store_thread_while_acks_go_on(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "t.db")
    for turn in range(50):
        to_server(store, f"old{turn}", "bob", range(1, 101), OLD + turn)  # 5,000 old
    waiting = to_client(store, "carol", "waiting for ever", OLD, delivered=None)
    threads: set[str] = set()
    prune = store.prune

    def watched(before: float, limit: int = 1000) -> Iterator[int]:
        for step in prune(before, limit):
            threads.add(threading.current_thread().name)
            yield step

    store.prune = watched  # type: ignore[method-assign]
    async with Server(port=0, store=store, keep=DAY) as server:
        async with telex.connect(*server.address) as client:
            acks = await client.send_many([f"new {i}" for i in range(2000)])
            assert all(ack.ok for ack in acks)
        keeper = server._housekeeper
        assert keeper is not None
        async with asyncio.timeout(TIMEOUT):
            while keeper.pruned < 5000:  # noqa: ASYNC110 - nothing to wait on
                await asyncio.sleep(0.01)
    assert keeper.pruned == 5000
    assert threads == {"telex-store_0"}  # the thread that commits, no other
    assert [p.seq for p in store.session_state(None, "carol").outbox] == [waiting]
    assert len(list(store.export())) == 2001
    store.close()


async def test_a_store_that_cannot_prune_is_logged_once_and_tried_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = SQLiteStore(tmp_path / "t.db")
    to_server(store, "s", "bob", range(1, 3), OLD)
    to_server(store, "s", "bob", range(3, 4), NOW)
    failures = 0

    def broken(before: float, limit: int = 1000) -> Iterator[int]:
        nonlocal failures
        failures += 1
        raise StoreError("disk I/O error")
        yield 0

    store.prune = broken  # type: ignore[method-assign]
    async with Server(port=0, store=store) as server:
        keeper = Housekeeper(store, server._store_thread, 0.05).start()  # type: ignore[arg-type]
        async with asyncio.timeout(TIMEOUT):
            while failures < 3:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        await keeper.close()
    assert [r.getMessage() for r in caplog.records] == ["store: cannot prune: disk I/O error"]
    store.close()


def test_keep_must_be_positive(store: SQLiteStore) -> None:
    with pytest.raises(ValueError, match="positive"):
        Housekeeper(store, None, 0)  # type: ignore[arg-type]


# -- a real telex serve --keep, while messages flow ------------------------------------------

TELEX = [sys.executable, "-m", "telex"]


def start_serve(db: Path, *options: str) -> tuple[subprocess.Popen[str], int]:
    process = subprocess.Popen(
        [*TELEX, "serve", "--port", "0", "--json", "--quiet", "--db", str(db), *options],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    assert line, process.stderr.read() if process.stderr else ""
    return process, int(json.loads(line)["port"])


def stop_serve(process: subprocess.Popen[str]) -> str:
    process.terminate()
    out, err = process.communicate(timeout=TIMEOUT)
    assert process.returncode == 0, err
    return out


def test_telex_serve_keep_prunes_while_messages_flow(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    store = SQLiteStore(db)
    for turn in range(20):
        to_server(store, f"old{turn}", "bob", range(1, 251), OLD + turn)  # 5,000
    for turn in range(200):
        to_client(store, "dave", f"taken {turn}", OLD + 30, delivered=OLD + 40)
    waiting = [to_client(store, "carol", f"wait {i}", OLD, delivered=None) for i in range(50)]
    store.close()
    process, port = start_serve(db, "--keep", "2s")
    try:
        sent = asyncio.run(send_for(port, seconds=4.0))
        reader = SQLiteStore(db, readonly=True)
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:  # a pass every 2 s (--keep) prunes what is 2 s old
            left = list(reader.export())
            if len({m.received for m in left if m.sender == "frank"}) == 1:
                break  # one segment of frank's is left: the newest, kept (numbering)
            time.sleep(0.1)
        reader.close()
        assert [m.seq for m in left if m.received < NOW] == waiting  # the old ones went
        newest = [m.body for m in left if m.sender == "frank"]
        assert len(newest) <= 200
        assert newest[-1] == f"new {sent - 1}"
        bodies = asyncio.run(take_outbox(port, "carol", 50))
        assert bodies == [f"wait {i}" for i in range(50)]
    finally:
        if process.poll() is None:
            stop_serve(process)


async def send_for(port: int, seconds: float) -> int:
    """Pipelined messages for ``seconds``; every one acknowledged. How many."""
    count = 0
    async with telex.connect("127.0.0.1", port, name="frank") as client:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            acks = await client.send_many([f"new {count + i}" for i in range(200)])
            assert all(ack.ok for ack in acks)
            count += len(acks)
            await asyncio.sleep(0.02)
    return count


async def take_outbox(port: int, name: str, count: int) -> list[object]:
    async with telex.connect("127.0.0.1", port, name=name) as client:
        return [(await client.receive(timeout=TIMEOUT)).body for _ in range(count)]


# -- what a big prune costs acks: python -m tests.store.test_housekeeping -------------------


def fill_old(db: Path, count: int) -> None:
    """``count`` delivered messages, ten days old: half for the server (segments of 50),
    half between clients (a row each); and 1,000 still waiting in an outbox."""
    store = SQLiteStore(db)
    half = count // 2
    for turn in range(half // 50):
        to_server(store, f"old{turn}", "bob", range(1, 51), OLD + turn)
    rows = [Envelope("dave", f"old {i}", "alice", "a", i) for i in range(1, half + 1)]
    for start in range(0, half, 5000):
        part = rows[start : start + 5000]
        done = store.commit(Batch(envelopes=part), OLD + 10)
        store.commit(Batch(delivered=done.envelopes), OLD + 20)
    store.commit(Batch(envelopes=[Envelope("carol", f"w{i}") for i in range(1000)]), OLD)
    store.close()


async def ack_delays(port: int, seconds: float, rate: int = 20000) -> list[tuple[float, float]]:
    """(when sent, seconds to its ack) of each message of a sender pipelining ``rate``
    messages a second (bursts of 100 every 5 ms), from its connection on. It keeps no
    future: a heap growing with them would time the collector, not the server."""
    delays: list[tuple[float, float]] = []
    waiting = 0
    all_done = asyncio.Event()
    async with telex.connect("127.0.0.1", port, name="frank") as client:
        loop = asyncio.get_running_loop()
        begin = loop.time()
        end = begin + seconds
        while loop.time() < end:
            sent = loop.time()

            def done(future: asyncio.Future[telex.Ack], sent: float = sent) -> None:
                nonlocal waiting
                assert future.result().ok
                delays.append((sent - begin, loop.time() - sent))
                waiting -= 1
                if not waiting:
                    all_done.set()

            for i in range(rate // 200):
                client.send_nowait(f"message {i}").add_done_callback(done)
                waiting += 1
            await asyncio.sleep(0.005)
        async with asyncio.timeout(TIMEOUT):
            await all_done.wait()
    return delays


def measure(old: int, keep: str | None, seconds: float = 6.0) -> dict[str, float]:
    """A server on a store of ``old`` old messages, a sender for ``seconds`` from just
    after it starts: the ack delays, the worst while the old ones go (the first 1.5 s),
    and how long they took to go."""
    import tempfile

    db = Path(tempfile.mkdtemp(prefix="telex-prune-")) / "t.db"
    fill_old(db, old)
    options = ("--keep", keep) if keep else ()
    process, port = start_serve(db, *options)
    gone: list[float] = []

    def watch() -> None:
        reader = SQLiteStore(db, readonly=True)
        started = time.monotonic()
        while time.monotonic() - started < seconds and reader.prunable(NOW - DAY):
            time.sleep(0.02)
        gone.append(time.monotonic() - started)
        reader.close()

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        timed = asyncio.run(ack_delays(port, seconds))
    finally:
        stop_serve(process)
        watcher.join()
    delays = sorted(delay for _, delay in timed)
    return {
        "acks": len(timed),
        "p50_ms": round(delays[len(delays) // 2] * 1000, 2),
        "p99_ms": round(delays[int(len(delays) * 0.99)] * 1000, 2),
        "max_ms": round(delays[-1] * 1000, 2),
        "max_ms_first_1.5s": round(max(d for s, d in timed if s < 1.5) * 1000, 2),
        "old_gone_after_s": round(gone[0], 2) if keep else float("nan"),
    }


if __name__ == "__main__":
    size = int(sys.argv[1]) if len(sys.argv) > 1 else 200_000
    for keep in (None, "1d"):
        print(
            f"{size} old messages, {'--keep ' + keep if keep else 'no --keep'}:",
            measure(size, keep),
        )
