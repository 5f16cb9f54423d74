"""The public API is what __all__ says, and every name in it exists."""

from __future__ import annotations

import telex


def test_all_names_exist() -> None:
    for name in telex.__all__:
        assert hasattr(telex, name), name


def test_public_names_are_exported() -> None:
    public = {
        name
        for name, value in vars(telex).items()
        if not name.startswith("_") and not isinstance(value, type(telex))
    }
    assert public <= set(telex.__all__)


def test_every_error_is_a_telex_error() -> None:
    for error in (
        telex.ConnectError,
        telex.ConnectionClosed,
        telex.MessageRejected,
        telex.ProtocolError,
        telex.TelexTimeout,
    ):
        assert issubclass(error, telex.TelexError)
    assert issubclass(telex.TelexTimeout, TimeoutError)
