"""Bodies are shown on one line, with nothing a peer sends able to drive the terminal."""

from __future__ import annotations

from telex.cli.render import body_fields, printable


def test_plain_text_is_unchanged() -> None:
    assert printable("héllo, wörld") == "héllo, wörld"


def test_control_characters_are_escaped() -> None:
    assert printable("red \x1b[31m\n") == "red \\x1b[31m\\n"
    assert printable("\u202eevil") == "\\u202eevil"


def test_binary_is_shown_safely() -> None:
    assert printable(b"\xff\x00ok") == "\\xff\\x00ok"


def test_json_fields() -> None:
    assert body_fields("hi") == {"text": "hi"}
    assert body_fields(b"\x00", "reply") == {"reply_base64": "AA=="}
