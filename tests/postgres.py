"""A real PostgreSQL for the tests, started by them: ``initdb`` into a temporary folder,
``pg_ctl start`` on a free loopback port with its socket in that folder, a database
per test, and ``pg_ctl stop`` at the end of the session.

Where the binaries are missing the PostgreSQL tests are skipped with one line, unless
``TELEX_REQUIRE_PEERS=1`` (CI sets it): then missing is a failure. initdb refuses to
run as root: as root, the cluster is made and run by the ``postgres`` user (or
``nobody``) through ``runuser``.
"""

from __future__ import annotations

import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

MISSING = "PostgreSQL is not installed (apt-get install postgresql)"
SEARCH = [
    *os.environ.get("PATH", "").split(os.pathsep),
    *map(str, sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)),
]
_names = itertools.count(1)


def binary(name: str) -> str | None:
    """``initdb``, ``pg_ctl``: on PATH, or in Debian's /usr/lib/postgresql/N/bin."""
    return shutil.which(name, path=os.pathsep.join(SEARCH))


def required() -> bool:
    return os.environ.get("TELEX_REQUIRE_PEERS") == "1"


def missing() -> bool:
    """Whether the PostgreSQL tests cannot run here (and need not: not required)."""
    return not required() and (binary("initdb") is None or binary("pg_ctl") is None)


def uses_postgres(item: pytest.Item) -> bool:
    """A test that needs the cluster: it takes it, or runs the store tests on it."""
    params = getattr(getattr(item, "callspec", None), "params", {})
    fixtures = getattr(item, "fixturenames", ())
    return params.get("store") == "postgres" or bool({"postgres", "postgres_url"} & set(fixtures))


def leave_out(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Without PostgreSQL, its tests are deselected and said so in one line at the end
    (see ``summary``), rather than skipped one line each."""
    if not missing():
        return
    dropped = [item for item in items if uses_postgres(item)]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = [item for item in items if not uses_postgres(item)]
        config.stash[_LEFT_OUT] = len(dropped)


def summary(reporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    count = config.stash.get(_LEFT_OUT, 0)
    if count:
        reporter.write_line(f"{count} PostgreSQL tests not run: {MISSING}", yellow=True)


_LEFT_OUT = pytest.StashKey[int]()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Cluster:
    """A running PostgreSQL: its socket folder, port and superuser ``telex``."""

    home: Path
    port: int
    run_as: list[str]
    pg_ctl: str

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://telex@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        """A new empty database; its URL."""
        import psycopg

        name = f"t{os.getpid()}_{next(_names)}"
        with psycopg.connect(self.url(), autocommit=True) as db:
            db.execute(f'CREATE DATABASE "{name}"'.encode())
        return self.url(name)

    def ctl(self, *args: str) -> None:
        subprocess.run(
            [*self.run_as, self.pg_ctl, "-D", str(self.home / "data"), *args],
            check=True,
            capture_output=True,
            timeout=60,
        )

    def start(self, durable: bool = False) -> None:
        """Start it; ``durable`` keeps PostgreSQL's fsync (the tests run without)."""
        options = f"-p {self.port} -k {self.home} -c listen_addresses=127.0.0.1 "
        options += "-c max_connections=200"
        if not durable:
            options += " -c fsync=off -c full_page_writes=off"
        self.ctl("-l", str(self.home / "log"), "-w", "-o", options, "start")

    def stop(self, mode: str = "fast") -> None:
        self.ctl("-m", mode, "-w", "stop")


def start_cluster(durable: bool = False) -> Iterator[Cluster]:
    """Make and start a cluster; stop and remove it after."""
    initdb, pg_ctl = binary("initdb"), binary("pg_ctl")
    if initdb is None or pg_ctl is None:
        if required():
            pytest.fail(f"{MISSING}, and TELEX_REQUIRE_PEERS=1")
        pytest.skip(MISSING)
    run_as: list[str] = []
    owner = None
    if os.getuid() == 0:  # initdb refuses root
        for user in ("postgres", "nobody"):
            try:
                owner = pwd.getpwnam(user)
            except KeyError:
                continue
            run_as = ["runuser", "-u", user, "--"]
            break
    home = Path(tempfile.mkdtemp(prefix="telex-pg-"))
    try:
        (home / "data").mkdir()
        if owner is not None:
            home.chmod(0o755)
            os.chown(home, owner.pw_uid, owner.pw_gid)
            os.chown(home / "data", owner.pw_uid, owner.pw_gid)
        subprocess.run(
            [*run_as, initdb, "-D", str(home / "data"), "-U", "telex", "--auth=trust",
             "-E", "UTF8", "--no-sync", "--no-instructions"],
            check=True,
            capture_output=True,
            timeout=120,
        )  # fmt: skip
        cluster = Cluster(home, free_port(), run_as, pg_ctl)
        cluster.start(durable)
        try:
            yield cluster
        finally:
            cluster.stop("immediate")
    finally:
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres() -> Iterator[Cluster]:
    yield from start_cluster()


@pytest.fixture
def postgres_url(postgres: Cluster) -> str:
    """A new empty database of the session's cluster."""
    return postgres.create_database()
