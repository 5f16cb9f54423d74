"""The blocking client has the asyncio client's names and signatures."""

from __future__ import annotations

import inspect

import telex


def public(cls: type) -> dict[str, object]:
    return {
        name: member
        for name, member in inspect.getmembers(cls)
        if not name.startswith("_") and name not in {"connect"}
    }


def test_every_public_name_of_the_async_client_is_on_the_blocking_one() -> None:
    missing = set(public(telex.AsyncClient)) - set(public(telex.Client))
    # Settings the blocking client takes at construction and does not expose again.
    settings = {
        "host", "port", "timeout", "connect_timeout", "max_message_size", "handler",
        "reconnect", "retries", "reconnect_delay", "stay_after_goodbye", "on_state",
        "on_receipt", "ssl", "fingerprint", "known_hosts", "trust", "token",
        "server_fingerprint", "server_agent", "server_said_goodbye",
    }  # fmt: skip
    assert missing <= settings, missing - settings


def test_methods_take_the_same_arguments() -> None:
    sync_members = public(telex.Client)
    for name, member in public(telex.AsyncClient).items():
        if not inspect.isfunction(member) or name not in sync_members:
            continue
        ours = inspect.signature(member).parameters
        theirs = inspect.signature(sync_members[name]).parameters  # type: ignore[arg-type]
        assert [(p.name, p.kind) for p in ours.values()] == [
            (p.name, p.kind) for p in theirs.values()
        ], name
