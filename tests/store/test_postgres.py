"""What the PostgreSQL store does beyond the interface tests it shares with SQLite (see
conftest.py): its schema, its URL, and a real ``telex serve --db postgresql://...``
under load and under kill -9."""

from __future__ import annotations

import collections
import os
import signal
import subprocess
from pathlib import Path

import pytest

from telex.core.records import Batch, Committed, Envelope, Inbound
from telex.store import SQLiteStore, StoreError, open_store
from telex.store.postgres import SCHEMA_VERSION, PostgresStore

from ..cli.test_cli import closed_port
from ..conftest import TIMEOUT
from ..postgres import Cluster
from ..server.test_faults import TELEX, acks_of, lines_file, sender, start_server, wait_for


def count(url: str) -> int:
    store = PostgresStore(url)
    try:
        row = store.db.execute(
            "SELECT (SELECT count(*) FROM telex_messages) + "
            "(SELECT coalesce(sum(count), 0) FROM telex_segments)"
        ).fetchone()
        return int(row[0])  # type: ignore[index]
    finally:
        store.close()


# -- the schema and the URL ------------------------------------------------------------------


def test_a_new_database_gets_the_telex_tables_and_its_version(postgres_url: str) -> None:
    store = PostgresStore(postgres_url)
    tables = {
        name
        for (name,) in store.db.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
        ).fetchall()
    }
    assert tables == {
        "telex_schema",
        "telex_messages",
        "telex_segments",
        "telex_servers",
        "telex_names",
    }
    assert store.db.execute("SELECT version FROM telex_schema").fetchall() == [(SCHEMA_VERSION,)]
    store.close()
    PostgresStore(postgres_url).close()  # opening again migrates nothing


def test_a_newer_schema_is_refused_in_one_line(postgres_url: str) -> None:
    store = PostgresStore(postgres_url)
    store.db.execute("UPDATE telex_schema SET version = %s", (SCHEMA_VERSION + 1,))
    store.close()
    with pytest.raises(StoreError, match="schema version") as refused:
        PostgresStore(postgres_url)
    assert "\n" not in str(refused.value)


def test_seqs_go_on_after_reopening(postgres_url: str) -> None:
    store = PostgresStore(postgres_url)
    items = [(1, "a", "r"), (2, "b", "r")]
    assert store.commit(Batch(inbound=[Inbound("s", "alice", items)]), 1.0) == Committed([1], [])
    store.close()
    store = PostgresStore(postgres_url)
    assert store.commit(Batch(envelopes=[Envelope("bob", "c")]), 2.0) == Committed([], [3])
    assert store.session_state("s", "bob").last_id == 2
    store.close()


def test_open_store_takes_both_url_schemes_and_hides_the_password(postgres_url: str) -> None:
    for url in (postgres_url, postgres_url.replace("postgresql://", "postgres://")):
        store = open_store(url)
        assert isinstance(store, PostgresStore)
        store.close()
    secret = postgres_url.replace("telex@", "telex:hunter2@")
    store = PostgresStore(secret)  # trust auth: the password is not checked
    assert "hunter2" not in store.where and store.where.startswith("postgresql://telex@")
    store.close()


def test_a_database_it_cannot_reach_is_one_line() -> None:
    with pytest.raises(StoreError, match="cannot reach the database") as refused:
        PostgresStore(f"postgresql://telex:hunter2@127.0.0.1:{closed_port()}/none")
    assert "\n" not in str(refused.value)
    assert "hunter2" not in str(refused.value)


@pytest.mark.parametrize("given", ["flag", "env", "file"])
def test_telex_serve_on_a_database_it_cannot_reach_exits_3_in_one_line(
    tmp_path: Path, given: str
) -> None:
    url = f"postgresql://telex:hunter2@127.0.0.1:{closed_port()}/none"
    command = [*TELEX, "serve", "--port", str(closed_port())]
    env = dict(os.environ)
    if given == "flag":
        command += ["--db", url]
    elif given == "env":
        env["TELEX_DB"] = url
    else:  # a URL in a config file is not a path relative to the file
        (tmp_path / "telex.toml").write_text(f'db = "{url}"\n')
        command += ["--config", str(tmp_path / "telex.toml")]
    done = subprocess.run(
        command, capture_output=True, timeout=TIMEOUT * 3, stdin=subprocess.DEVNULL, env=env
    )
    assert done.returncode == 3, done.stderr.decode()
    lines = done.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and "cannot open the store postgresql://telex@" in lines[0]
    assert "hunter2" not in lines[0]


def test_an_export_moves_between_sqlite_and_postgresql(tmp_path: Path, postgres: Cluster) -> None:
    source = SQLiteStore(tmp_path / "a.db")
    source.commit(Batch(inbound=[Inbound("s", "alice", [(1, "a", b"r"), (2, b"\0b", "r")])]), 1.0)
    seq = source.commit(Batch(envelopes=[Envelope("bob", "c\0", "alice", "s", 3)]), 2.0)
    source.commit(Batch(delivered=seq.envelopes, answers={seq.envelopes[0]: (0, "", "ok")}), 3.0)
    exported = list(source.export())
    target = PostgresStore(postgres.create_database())
    assert target.import_messages(exported).stored == 3
    assert list(target.export()) == exported
    assert target.import_messages(exported).skipped == 3  # twice: stored once
    back = SQLiteStore(tmp_path / "b.db")
    back.import_messages(target.export())
    assert list(back.export()) == exported
    for store in (source, target, back):
        store.close()


# -- a real server --------------------------------------------------------------------------


def test_telex_serve_on_postgresql_stores_10000_lines_once(
    tmp_path: Path, postgres_url: str
) -> None:
    port = closed_port()
    server = start_server(port, postgres_url)  # type: ignore[arg-type]
    lines = lines_file(tmp_path, "p", 10_000)
    try:
        process = sender(port, lines)
        _, err = process.communicate(timeout=TIMEOUT * 6)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=TIMEOUT)
    assert process.returncode == 0, err.decode()
    assert len(acks_of(lines)) == 10_000
    log = subprocess.run(
        [*TELEX, "log", "--db", postgres_url], capture_output=True, timeout=TIMEOUT * 3, check=True
    )
    shown = log.stdout.decode().splitlines()
    assert len(shown) == 10_000 and shown[-1].endswith("p-9999")
    store = PostgresStore(postgres_url)
    counts = collections.Counter(record.body for record in store.records())
    store.close()
    assert set(counts) == {f"p-{i}" for i in range(10_000)} and set(counts.values()) == {1}


def test_kill_9_of_the_server_on_postgresql_loses_and_doubles_nothing(
    tmp_path: Path, postgres_url: str
) -> None:
    port = closed_port()
    server = start_server(port, postgres_url)  # type: ignore[arg-type]
    lines = lines_file(tmp_path, "k", 20_000)
    process = sender(port, lines)
    try:
        wait_for(lambda: count(postgres_url) >= 5_000, "5,000 stored messages")
        server.send_signal(signal.SIGKILL)
        server.wait(timeout=TIMEOUT)
        server = start_server(port, postgres_url)  # type: ignore[arg-type]
        _, err = process.communicate(timeout=TIMEOUT * 6)
    finally:
        for running in (server, process):
            if running.poll() is None:
                running.kill()
                running.wait(timeout=TIMEOUT)
    assert process.returncode == 0, err.decode()
    assert len(acks_of(lines)) == 20_000  # every line acknowledged
    store = PostgresStore(postgres_url)
    counts = collections.Counter(record.body for record in store.records())
    store.close()
    assert set(counts) == {f"k-{i}" for i in range(20_000)}  # nothing lost
    assert set(counts.values()) == {1}  # nothing twice
