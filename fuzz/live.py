"""Fuzz a live ``telex serve`` on 127.0.0.1 while a well-behaved client uses it.

    python fuzz/live.py --seconds 60 [--cases N] [--seed S] [--workers 4] [--no-store]

Starts ``python -m telex serve --port 0`` with a store in a temporary folder (and small
limits, so they are hit), then for the time given (or until N cases):

- worker threads each open connection after connection and send a fuzz case: random
  bytes (often after the preamble), a valid client stream mutated (bits flipped, bytes
  inserted, deleted, repeated, a length field changed, cut short), plain-text lines, or
  the valid stream itself; in reads of random sizes, ending with a half-close, a close
  or a reset. What the server writes to a framed peer is parsed: it must be valid telex.
- a ``telex.Client`` named ``good`` sends batches of messages the whole time (and
  answers whatever the fuzzed peers route to it).

At the end: the server is still running, the good client got one ok ack per message,
in order, with the server's reply, and, once the server is stopped (SIGTERM, as Ctrl-C
would), its exit status is 0 and its stderr holds no ``Traceback``. Every wait is
bounded; only loopback is used. ``run()`` is what tests/fuzz/test_fuzz.py calls.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # run as a script: the repository is the import root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import telex
from telex.core import frames
from telex.core.events import ProtocolViolation
from telex.core.frames import FLAG_TEXT, PREAMBLE, FrameType
from telex.core.protocol import Connection, Role

__all__ = ["LiveFailure", "Report", "main", "run"]

HOST = "127.0.0.1"
MAX_MESSAGE_SIZE = 4096
START_TIMEOUT = 20.0  # seconds for the server to start listening
STOP_TIMEOUT = 20.0  # for it to stop after SIGTERM (its shutdown grace is 5 s)
CASE_TIMEOUT = 2.0  # the longest one case may wait for the server
GOOD_BATCH = 20
GOOD_PAUSE = 0.01  # seconds between the good client's batches


class LiveFailure(AssertionError):
    """The live server broke a promise (or died) during a fuzz run."""


@dataclass
class Report:
    seconds: float = 0.0
    cases: Counter[str] = field(default_factory=Counter)
    good_messages: int = 0
    server_stats: dict[str, object] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def total(self) -> int:
        return sum(self.cases.values())

    def summary(self) -> str:
        kinds = ", ".join(f"{kind} {count}" for kind, count in sorted(self.cases.items()))
        return (
            f"{self.total} fuzz cases in {self.seconds:.1f} s ({kinds}); "
            f"the good client sent {self.good_messages} messages, all acknowledged in order; "
            f"server stats {self.server_stats}"
        )


# -- the server ----------------------------------------------------------------------


class _Server:
    """``telex serve`` in a child process, its output read by threads (so it never blocks)."""

    def __init__(self, folder: Path, store: bool) -> None:
        command = [
            sys.executable,
            "-m",
            "telex",
            "serve",
            "--host",
            HOST,
            "--port",
            "0",
            "--json",
            "--quiet",
            "--max-message-size",
            str(MAX_MESSAGE_SIZE),
            "--handshake-timeout",
            "3",
            "--idle-timeout",
            "6",
            *(["--db", str(folder / "live.db")] if store else ["--no-store"]),
        ]
        env = {**os.environ, "PYTHONFAULTHANDLER": "1"}
        self.process = subprocess.Popen(  # noqa: S603 - our own interpreter and arguments
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        self.records: list[dict[str, object]] = []
        self.stderr = bytearray()
        self._listening = threading.Event()
        stdout, stderr = self.process.stdout, self.process.stderr
        assert stdout is not None and stderr is not None
        self._readers = [
            threading.Thread(target=self._read_stdout, args=(stdout,), daemon=True),
            threading.Thread(target=self._read_stderr, args=(stderr,), daemon=True),
        ]
        for reader in self._readers:
            reader.start()
        if not self._listening.wait(START_TIMEOUT):
            self.close()
            raise LiveFailure(f"the server did not start: {self.stderr.decode(errors='replace')}")
        listening = next(r for r in self.records if r.get("event") == "listening")
        self.port = int(str(listening["port"]))

    def _read_stdout(self, stream: object) -> None:
        for line in stream:  # type: ignore[attr-defined]
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                self.records.append(record)
                if record.get("event") == "listening":
                    self._listening.set()

    def _read_stderr(self, stream: object) -> None:
        while chunk := stream.read1(65536):  # type: ignore[attr-defined]
            self.stderr += chunk

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> int:
        """SIGTERM, as a service manager stops it; its exit status."""
        if self.alive:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise LiveFailure(f"the server did not stop within {STOP_TIMEOUT} s") from None

    def close(self) -> None:
        """Kill it if it still runs; read its output to the end; close the pipes."""
        if self.alive:
            self.process.kill()
            self.process.wait(STOP_TIMEOUT)
        for reader in self._readers:
            reader.join(STOP_TIMEOUT)
        for pipe in (self.process.stdout, self.process.stderr):
            if pipe is not None:
                pipe.close()


# -- fuzz cases ----------------------------------------------------------------------


def _valid_stream(rng: random.Random, name: str) -> bytes:
    """A well-behaved client: HELLO, messages of every kind (one over the limit, one
    routed to itself, one to the good client), answers, and sometimes GOODBYE."""
    hello = {
        "version": 1,
        "agent": "telex-fuzz",
        "name": name,
        "session": f"{rng.getrandbits(128):032x}",
    }
    parts = [PREAMBLE, frames.json_frame(FrameType.HELLO, hello)]
    msg_id = 0
    for _ in range(rng.randint(1, 12)):
        msg_id += rng.randint(1, 3)
        kind = rng.randrange(6)
        body = rng.randbytes(rng.choice([0, 1, 10, 100, 1000]))
        if kind == 0:
            parts.append(frames.message(msg_id, body, 0))
        elif kind == 1:
            parts.append(frames.message(msg_id, "caf\u00e9 \u2713".encode(), FLAG_TEXT))
        elif kind == 2:
            parts.append(frames.routed(msg_id, rng.choice([b"good", name.encode()]), body, 0))
        elif kind == 3:
            parts.append(frames.message(msg_id, b"x" * (MAX_MESSAGE_SIZE + rng.randint(1, 99)), 0))
        elif kind == 4:
            parts.append(frames.ping(FrameType.PING, rng.getrandbits(64)))
        else:
            parts.append(frames.ack(rng.randint(1, 5), 0, b"", b"ok", 0))
    if rng.random() < 0.3:
        parts.append(frames.goodbye("done"))
    return b"".join(parts)


def _mutate(rng: random.Random, data: bytes) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 6)):
        if not buf:
            buf += rng.randbytes(8)
        at = rng.randrange(len(buf))
        kind = rng.randrange(7)
        if kind == 0:
            buf[at] ^= 1 << rng.randrange(8)
        elif kind == 1:
            buf[at] = rng.randrange(256)
        elif kind == 2:
            buf[at:at] = rng.randbytes(rng.randint(1, 16))
        elif kind == 3:
            del buf[at : at + rng.randint(1, 16)]
        elif kind == 4:
            piece = buf[at : at + rng.randint(1, 64)]
            buf[at:at] = piece * rng.randint(1, 4)
        elif kind == 5 and at + 4 <= len(buf):
            length = rng.choice([0, 1, 0xFFFFFFFF, MAX_MESSAGE_SIZE * 17, rng.getrandbits(32)])
            buf[at : at + 4] = struct.pack(">I", length)
        else:
            del buf[at:]
    return bytes(buf)


def _text_lines(rng: random.Random) -> bytes:
    lines = []
    for _ in range(rng.randint(1, 10)):
        kind = rng.randrange(4)
        if kind == 0:
            lines.append(b"hello from netcat")
        elif kind == 1:
            lines.append("caf\u00e9 \u2713 \u0000".encode())
        elif kind == 2:
            lines.append(rng.randbytes(rng.randint(0, 64)).replace(b"\n", b""))
        else:
            lines.append(b"y" * (MAX_MESSAGE_SIZE + rng.randint(-2, 50)))
    ending = rng.choice([b"\n", b"\r\n"])
    return ending.join(lines) + rng.choice([ending, b""])


def _case(rng: random.Random, number: int) -> tuple[str, bytes]:
    name = f"fz{number % 50}"
    kind = rng.choice(["random", "preamble+random", "mutated", "mutated", "text", "valid"])
    if kind == "random":
        data = rng.randbytes(rng.randint(1, 2000))
    elif kind == "preamble+random":
        data = PREAMBLE + rng.randbytes(rng.randint(0, 2000))
    elif kind == "mutated":
        data = _mutate(rng, _valid_stream(rng, name))
    elif kind == "text":
        data = _text_lines(rng)
        if rng.random() < 0.3:
            data = _mutate(rng, data)
    else:
        data = _valid_stream(rng, name)
    return kind, data


def _send_case(rng: random.Random, port: int, data: bytes) -> bytes:
    """One connection: ``data`` in reads of random sizes, then an ending; what the server
    wrote back (as much as arrived within CASE_TIMEOUT)."""
    received = bytearray()
    deadline = time.monotonic() + CASE_TIMEOUT
    with socket.create_connection((HOST, port), timeout=CASE_TIMEOUT) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            pos = 0
            while pos < len(data) and time.monotonic() < deadline:
                size = rng.choice([1, 2, 7, 64, 512, 4096])
                sock.sendall(data[pos : pos + size])
                pos += size
                _drain(sock, received)
            ending = rng.randrange(3)
            if ending == 0:  # half-close, and read the answers until the server closes
                sock.shutdown(socket.SHUT_WR)
                while time.monotonic() < deadline:
                    sock.settimeout(max(0.01, deadline - time.monotonic()))
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    received += chunk
            elif ending == 1:  # a reset: no FIN, the server sees an error
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            else:
                _drain(sock, received)
        except OSError:
            pass  # the server closed a bad peer (or reset it), or took too long: all allowed
    return bytes(received)


def _drain(sock: socket.socket, received: bytearray) -> None:
    """Read what has arrived, without waiting (so the server's writes never back up)."""
    timeout = sock.gettimeout()
    sock.settimeout(0)
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except (BlockingIOError, InterruptedError):
        pass
    finally:
        sock.settimeout(timeout)


def _check_reply(data: bytes, reply: bytes, report: Report) -> None:
    """What the server wrote to a framed peer must be valid telex."""
    if not data.startswith(PREAMBLE[:1]) or not reply:
        return
    events = Connection(Role.CLIENT).receive_data(reply)
    if not any(isinstance(e, ProtocolViolation) for e in events):
        return
    with report.lock:
        report.problems.append(f"the server wrote {events!r}\nto the peer that sent {data!r}")


def _worker(seed: int, port: int, stop: threading.Event, budget: _Budget, report: Report) -> None:
    rng = random.Random(seed)  # noqa: S311 - fuzz cases, not secrets
    while not stop.is_set():
        number = budget.take()
        if number is None:
            return
        kind, data = _case(rng, number)
        try:
            reply = _send_case(rng, port, data)
        except OSError as exc:  # it could not even connect: is the server still running?
            with report.lock:
                report.problems.append(f"case {number} ({kind}): {exc!r}")
            stop.set()
            return
        _check_reply(data, reply, report)
        with report.lock:
            report.cases[kind] += 1


class _Budget:
    """Case numbers, up to ``cases`` (None: no limit)."""

    def __init__(self, cases: int | None) -> None:
        self._left = cases
        self._next = 0
        self._lock = threading.Lock()

    def take(self) -> int | None:
        with self._lock:
            if self._left is not None:
                if self._left <= 0:
                    return None
                self._left -= 1
            self._next += 1
            return self._next


# -- the good client -----------------------------------------------------------------


def _good_client(port: int, stop: threading.Event, report: Report) -> None:
    """Batches of messages, pipelined; each ack checked as it arrives."""
    arrived: list[telex.Ack] = []
    with telex.Client(
        HOST, port, name="good", reconnect=False, handler=lambda m: "thanks"
    ) as client:
        batch = 0
        while True:
            batch += 1
            first = client.next_id
            bodies = [f"good {batch}.{i}" for i in range(GOOD_BATCH)]
            acks = client.send_many(bodies, timeout=30.0, on_ack=arrived.append)
            ids = list(range(first, first + GOOD_BATCH))
            got = [(a.id, a.status, a.reply) for a in acks]
            want = [(i, 0, "received") for i in ids]
            if got != want or [a.id for a in arrived] != ids:
                raise LiveFailure(f"batch {batch}: sent {want}, got {got}, in order {arrived}")
            arrived.clear()
            report.good_messages += GOOD_BATCH
            if stop.wait(GOOD_PAUSE):  # a steady client, not a flood that starves the rest
                return


# -- a run ---------------------------------------------------------------------------


def run(
    seconds: float = 3.0,
    cases: int | None = None,
    *,
    seed: int | None = None,
    workers: int = 4,
    store: bool = True,
) -> Report:
    """Fuzz a live server for ``seconds`` (or ``cases`` cases, whichever ends first);
    raise ``LiveFailure`` if it broke a promise."""
    seed = random.randrange(2**32) if seed is None else seed  # noqa: S311 - a fuzz seed
    report = Report()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="telex-live-fuzz-") as folder:
        server = _Server(Path(folder), store)
        try:
            stop = threading.Event()
            budget = _Budget(cases)
            good_errors: list[BaseException] = []

            def good() -> None:
                try:
                    _good_client(server.port, stop, report)
                except BaseException as exc:  # reported below, with the server's state
                    good_errors.append(exc)
                    stop.set()

            threads = [threading.Thread(target=good, name="good", daemon=True)]
            threads += [
                threading.Thread(
                    target=_worker,
                    args=(seed + n, server.port, stop, budget, report),
                    name=f"fuzz-{n}",
                    daemon=True,
                )
                for n in range(workers)
            ]
            for thread in threads:
                thread.start()
            deadline = started + seconds
            while time.monotonic() < deadline and not stop.is_set():
                if all(not t.is_alive() for t in threads[1:]):
                    break  # every case was sent
                time.sleep(0.05)
            stop.set()
            for thread in threads:
                thread.join(CASE_TIMEOUT + 60.0)
                if thread.is_alive():
                    report.problems.append(f"{thread.name} did not finish")
            alive = server.alive
            report.seconds = time.monotonic() - started
            status = server.stop()
        finally:
            server.close()
    stopped = [r for r in server.records if r.get("event") == "stopped"]
    report.server_stats = {
        k: v for k, v in (stopped[-1] if stopped else {}).items() if k != "event"
    }
    stderr = server.stderr.decode(errors="replace")
    if not alive:
        report.problems.append(f"the server died during the run (seed {seed})")
    if good_errors:
        report.problems.append(f"the good client failed: {good_errors[0]!r}")
    if report.good_messages == 0:
        report.problems.append("the good client got no message through")
    if status != 0:
        report.problems.append(f"the server exited with status {status}")
    if "Traceback" in stderr:
        report.problems.append("a Traceback in the server's stderr")
    if report.problems:
        problems = "\n".join(dict.fromkeys(report.problems))
        raise LiveFailure(f"seed {seed}:\n{problems}\n--- server stderr ---\n{stderr[-4000:]}")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--cases", type=int, default=None)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--no-store", action="store_true")
    args = parser.parse_args(argv)
    try:
        report = run(
            args.seconds, args.cases, seed=args.seed, workers=args.workers, store=not args.no_store
        )
    except LiveFailure as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        return 1
    print(report.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
