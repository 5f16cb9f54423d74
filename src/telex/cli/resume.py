"""``telex send --session FILE``: a sender that can be killed and run again.

A session file holds the sender's session id, the id its run's first message had, how
many of the run's messages were answered, and whether the run finished. Run again on
the same input after a kill, the sender skips what was answered and sends the rest
under the same ids, so the server (with a store) recognises what it already stored and
acknowledges it again without storing it twice. After a run that finished, the next
run goes on in the same session with new ids.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

__all__ = ["SendSession", "SessionFileError"]

SAVE_EVERY = 0.2  # seconds between writes of the progress while acks arrive


class SessionFileError(Exception):
    """The session file cannot be read or written: one line for the user."""


@dataclass
class SendSession:
    session: str
    first_id: int = 1  # the id of this run's first message
    answered: int = 0  # how many of this run's messages were answered, in order
    finished: bool = False

    @classmethod
    def open(cls, path: Path) -> tuple[SendSession, bool]:
        """The session to run now from ``path``, and whether it resumes a killed run."""
        if not path.exists():
            return cls(uuid.uuid4().hex), False
        try:
            fields = json.loads(path.read_text())
            last = cls(**fields)
            valid = (
                type(last.session) is str
                and 0 < len(last.session) <= 256
                and type(last.first_id) is int
                and type(last.answered) is int
                and type(last.finished) is bool
                and last.first_id >= 1
                and last.answered >= 0
            )
        except (OSError, ValueError, TypeError) as exc:
            raise SessionFileError(f"cannot read the session file {path}: {exc}") from None
        if not valid:
            raise SessionFileError(f"{path} is not a telex send session file")
        if last.finished:  # a new run in the same session, after the last one's ids
            return cls(last.session, last.first_id + last.answered), False
        return last, True

    @property
    def next_id(self) -> int:
        """The id of the first message this run sends (after what is skipped)."""
        return self.first_id + self.answered

    def save(self, path: Path) -> None:
        """Write atomically: a kill mid-write leaves the old file whole."""
        partial = path.with_name(path.name + ".partial")
        try:
            partial.write_text(json.dumps(asdict(self)) + "\n")
            os.replace(partial, path)
        except OSError as exc:
            raise SessionFileError(f"cannot write the session file {path}: {exc}") from None


class Progress:
    """Counts answers as they come and saves them now and then (and at the end)."""

    def __init__(self, state: SendSession, path: Path) -> None:
        self.state = state
        self.path = path
        self.saved_at = time.monotonic()

    def answered(self) -> None:
        self.state.answered += 1
        now = time.monotonic()
        if now - self.saved_at >= SAVE_EVERY:
            self.saved_at = now
            self.state.save(self.path)

    def finish(self, finished: bool) -> None:
        self.state.finished = finished
        self.state.save(self.path)
