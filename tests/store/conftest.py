"""The store tests run against every store: each test that takes ``store`` runs once
on SQLite and once on a real PostgreSQL (see ``tests/postgres.py``), unless marked
``sqlite_only`` (it looks at SQLite's own file, pragmas or segments)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from telex.store import SQLiteStore, Store

ENGINES = ["sqlite", "postgres"]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "store" in metafunc.fixturenames:
        only = metafunc.definition.get_closest_marker("sqlite_only")
        metafunc.parametrize("store", ["sqlite"] if only else ENGINES, indirect=True)


@pytest.fixture
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "postgres":
        from telex.store.postgres import PostgresStore

        opened: Store = PostgresStore(request.getfixturevalue("postgres_url"))
    else:
        opened = SQLiteStore(tmp_path / "t.db")
    yield opened
    opened.close()
