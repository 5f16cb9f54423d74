"""How long ``telex log`` takes on a big store: the query alone, and the whole command.

    python bench/log.py                    # builds a 1,000,000-message store once: ~20 s in all
    python bench/log.py --db /tmp/big.db   # that store: built if missing, reused if not
    python bench/log.py --keep-schema      # reuse a store without migrating it

The store is built through ``SQLiteStore.commit``, as a server fills it: a commit every
~20 s over a week, each with a batch for the server from one connection (a segment row)
and a few messages between clients (``messages`` rows), from six senders and a rare
seventh who spoke only at the start. Each case is timed three ways: in-process (open the
store, read the records: what the store costs), as a real ``telex log`` process (what a
user waits for, Python's start-up included; ``telex --version`` is that floor), and,
where ``sqlite3`` is installed, the obvious SQL for the same rows in the sqlite3 shell
(no Python, no unpacking of segments; for --since SQLite walks the rows in seq order
from the first, which the store avoids by asking the index on ``received`` where to
start). Medians; nothing here is a test.
"""

from __future__ import annotations

import argparse
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from telex.core.records import Batch, Envelope, Inbound, Item
from telex.store import SCHEMA_VERSION, SQLiteStore

SENDERS = ["alice", "bob", "carol", "dave", "erin", "frank"]
RARE = "zed"  # a few messages at the very start: a filter the newest rows do not satisfy
WEEK = 7 * 86400


def build(path: Path, count: int) -> None:
    """``count`` messages, about 80 % for the server (segments), the rest between clients."""
    rng = random.Random(1)
    store = SQLiteStore(path)
    ids = dict.fromkeys([*SENDERS, RARE], 0)
    stored = 0
    start = time.time() - WEEK
    while stored < count:
        sender = RARE if stored < 100 else rng.choice(SENDERS)
        items: list[Item] = []
        for _ in range(min(rng.randint(1, 60), count - stored)):
            ids[sender] += 1
            items.append((ids[sender], f"reading {ids[sender]} from {sender}", "received"))
        envelopes = []
        for _ in range(min(rng.randint(0, 15), count - stored - len(items))):
            ids[sender] += 1
            recipient = rng.choice([name for name in SENDERS if name != sender])
            body = f"note {ids[sender]} from {sender} to {recipient}"
            envelopes.append(Envelope(recipient, body, sender, sender, ids[sender]))
        now = start + WEEK * stored / count  # a commit every ~20 s
        store.commit(Batch([Inbound(sender, sender, items)], envelopes), now)
        stored += len(items) + len(envelopes)
    store.close()


def last_received(store: SQLiteStore) -> float:
    """The newest message's time (the bench store's clock never goes back)."""
    return float(
        store.db.execute(
            "SELECT MAX((SELECT received FROM messages ORDER BY seq DESC LIMIT 1), "
            "(SELECT received FROM segments ORDER BY seq DESC LIMIT 1))"
        ).fetchone()[0]
    )


def median_ms(run: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    result = run()  # a warm-up: the file in the page cache, as on a second run
    times = []
    for _ in range(repeat):
        began = time.perf_counter()
        result = run()
        times.append((time.perf_counter() - began) * 1000)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--db", type=Path, help="the store (default: in the temp folder)")
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=5, help="runs a figure is the median of")
    parser.add_argument("--keep-schema", action="store_true", help="do not migrate a reused store")
    options = parser.parse_args()
    path = options.db or Path(tempfile.gettempdir()) / "telex-bench-log" / "telex.db"
    if not path.exists():
        began = time.perf_counter()
        build(path, options.messages)
        print(f"built {path} in {time.perf_counter() - began:.1f} s")
    elif not options.keep_schema:
        SQLiteStore(path).close()  # migrates, as a server does when it starts
    store = SQLiteStore(path, readonly=True)
    version = store.db.execute("PRAGMA user_version").fetchone()[0]
    total = store.next_seq() - 1
    since = last_received(store) - 60
    store.close()
    print(f"{path}: {total:,} messages, schema version {version} (this telex: {SCHEMA_VERSION})")
    iso = datetime.fromtimestamp(since).astimezone().isoformat()
    hour = datetime.fromtimestamp(since - 3540).astimezone().isoformat()

    telex = Path(sys.executable).with_name("telex")
    command = [str(telex)] if telex.exists() else [sys.executable, "-m", "telex"]
    sqlite = shutil.which("sqlite3")
    msg = "SELECT seq, sender, recipient, body, received FROM messages"
    seg = "SELECT seq, count, sender, received, length(messages) FROM segments"
    cases: list[tuple[str, list[str], dict[str, Any], str]] = [
        ("-n 2", ["-n", "2"], {"limit": 2},
         f"{msg} ORDER BY seq DESC LIMIT 2; {seg} ORDER BY seq DESC LIMIT 2"),
        ("--since 1m (before the last)", ["--since", iso], {"since": since},
         f"{msg} WHERE received >= {since} ORDER BY seq; "
         f"{seg} WHERE received >= {since} ORDER BY seq"),
        ("--from carol -n 10", ["--from", "carol", "-n", "10"], {"sender": "carol", "limit": 10},
         f"{msg} WHERE sender = 'carol' ORDER BY seq DESC LIMIT 10; "
         f"{seg} WHERE sender = 'carol' ORDER BY seq DESC LIMIT 10"),
        ("--to dave -n 10", ["--to", "dave", "-n", "10"], {"recipient": "dave", "limit": 10},
         f"{msg} WHERE recipient = 'dave' ORDER BY seq DESC LIMIT 10"),
        (f"--from {RARE} -n 10 (rare, oldest)", ["--from", RARE, "-n", "10"],
         {"sender": RARE, "limit": 10},
         f"{msg} WHERE sender = '{RARE}' ORDER BY seq DESC LIMIT 10; "
         f"{seg} WHERE sender = '{RARE}' ORDER BY seq DESC LIMIT 10"),
        ("--from carol --since 1h -n 10", ["--from", "carol", "--since", hour, "-n", "10"],
         {"sender": "carol", "since": since - 3540, "limit": 10}, ""),
    ]  # fmt: skip
    repeat = options.repeat

    def process(args: list[str]) -> Callable[[], None]:
        return lambda: subprocess.run(args, stdout=subprocess.DEVNULL, timeout=120, check=True)

    print(f"medians of {repeat} runs, in ms\n")
    header = f"{'case':<34} {'found':>7} {'in-process':>11} {'telex log':>10} {'sqlite3':>8}"
    print(header)
    print("-" * len(header))
    startup, _ = median_ms(process([*command, "--version"]), repeat)
    print(f"{'(start-up: telex --version)':<34} {'':>7} {'':>11} {startup:>10.1f} {'':>8}")
    for label, args, filters, sql in cases:

        def query(filters: dict[str, Any] = filters) -> int:
            opened = SQLiteStore(path, readonly=True)
            try:
                return sum(1 for _ in opened.records(**filters))
            finally:
                opened.close()

        inprocess, found = median_ms(query, repeat)
        wall, _ = median_ms(process([*command, "log", "--db", str(path), *args]), repeat)
        shell = "-"
        if sqlite and sql:
            ms, _ = median_ms(process([sqlite, "-readonly", str(path), sql]), repeat)
            shell = f"{ms:.1f}"
        print(f"{label:<34} {found:>7,} {inprocess:>11.1f} {wall:>10.1f} {shell:>8}", flush=True)


if __name__ == "__main__":
    main()
