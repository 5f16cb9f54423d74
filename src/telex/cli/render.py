"""How a message body is shown to a person or a script: safely, on one line."""

from __future__ import annotations

import base64
from typing import Any

from ..core.events import Body

__all__ = ["body_fields", "printable"]

# Control characters would let a peer move the cursor or recolour the terminal: escape them.
_ESCAPES = {c: f"\\x{c:02x}" for c in [*range(0x20), 0x7F]}
_ESCAPES.update({ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t"})


def printable(body: Body) -> str:
    """The body as one line of text; binary and control characters are escaped."""
    text = body if isinstance(body, str) else body.decode("utf-8", "backslashreplace")
    if text.isprintable():
        return text
    escaped = text.translate(_ESCAPES)
    return "".join(
        ch if ch.isprintable() else ch.encode("unicode_escape").decode() for ch in escaped
    )


def body_fields(body: Body, key: str = "text") -> dict[str, Any]:
    """JSON fields for a body: ``{key: text}``, or ``{key + "_base64": ...}`` for bytes;
    an empty body is ``{key: ""}`` (no reply is not worth a base64 field)."""
    if isinstance(body, str):
        return {key: body}
    if not body:
        return {key: ""}
    return {f"{key}_base64": base64.b64encode(body).decode()}
