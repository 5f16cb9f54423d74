"""The state table of a telex connection, one per side: which frames each side may
receive in each state, and where a received frame moves it.

docs/protocol.md carries the same tables, and a test checks that they agree. Anything
not listed for a state is ``UNEXPECTED_FRAME``.

    PREAMBLE --preamble--> HANDSHAKE
    HANDSHAKE --HELLO--> OPEN              (server; AUTH instead when it needs a token)
    AUTH --WELCOME sent--> OPEN            (server, once the answer was right)
    HANDSHAKE --WELCOME--> OPEN            (client; CHALLENGE keeps it in HANDSHAKE)
    OPEN --GOODBYE--> DRAINING             (the peer sends no new messages; answers flow)
    any --ERROR, or a violation--> CLOSED  (nothing more is read)
"""

from __future__ import annotations

from enum import Enum

from .frames import FrameType

__all__ = ["RECEIVES", "TRANSITIONS", "Role", "State", "next_state"]


class Role(Enum):
    CLIENT = "client"
    SERVER = "server"


class State(Enum):
    PREAMBLE = "preamble"  # waiting for the peer's 8-byte preamble
    HANDSHAKE = "handshake"  # waiting for HELLO (server) or WELCOME (client)
    AUTH = "auth"  # server only: HELLO came, waiting for the answer to its CHALLENGE
    OPEN = "open"  # messages flow both ways
    DRAINING = "draining"  # the peer said GOODBYE: no new messages from it, answers still
    CLOSED = "closed"  # after an ERROR either way; nothing more is read


F = FrameType
_ANSWERS = {F.ACK, F.PING, F.PONG, F.ERROR}

RECEIVES: dict[Role, dict[State, frozenset[FrameType]]] = {
    Role.SERVER: {
        State.PREAMBLE: frozenset(),
        State.HANDSHAKE: frozenset({F.HELLO, F.ERROR}),
        State.AUTH: frozenset({F.AUTH, F.ERROR}),
        State.OPEN: frozenset({F.MESSAGE, F.ROUTED, F.GOODBYE, F.STATS, *_ANSWERS}),
        State.DRAINING: frozenset(_ANSWERS),
        State.CLOSED: frozenset(),
    },
    Role.CLIENT: {
        State.PREAMBLE: frozenset(),
        State.HANDSHAKE: frozenset({F.WELCOME, F.CHALLENGE, F.ERROR}),
        State.OPEN: frozenset({F.MESSAGE, F.ROUTED, F.RECEIPT, F.GOODBYE, F.STATS, *_ANSWERS}),
        State.DRAINING: frozenset({F.RECEIPT, F.STATS, *_ANSWERS}),
        State.CLOSED: frozenset(),
    },
}
"""Which frame types each side may receive in each state (the preamble is not a frame)."""

TRANSITIONS: dict[tuple[Role, State, FrameType], State] = {
    (Role.SERVER, State.HANDSHAKE, F.HELLO): State.OPEN,  # AUTH when a token is needed
    (Role.CLIENT, State.HANDSHAKE, F.WELCOME): State.OPEN,
    **{(role, State.OPEN, F.GOODBYE): State.DRAINING for role in Role},
    **{
        (role, state, F.ERROR): State.CLOSED
        for role in Role
        for state in State
        if F.ERROR in RECEIVES[role].get(state, ())
    },
}
"""Where receiving a frame moves a side; an allowed frame not listed keeps the state."""


def next_state(role: Role, state: State, frame: FrameType, *, needs_auth: bool = False) -> State:
    """The state after receiving ``frame`` (which must be allowed in ``state``)."""
    if needs_auth and role is Role.SERVER and state is State.HANDSHAKE and frame is F.HELLO:
        return State.AUTH
    return TRANSITIONS.get((role, state, frame), state)
