"""Each layer imports only the layers below it (docs: DESIGN.md, Layers).

Read from the source with ``ast``, so a forbidden import fails here even when nothing
runs it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).parents[1] / "src" / "telex"

# package -> what its modules may import from telex (by first component after "telex").
MAY_IMPORT: dict[str, set[str]] = {
    "core": {"core"},
    "store": {"core.records", "core.events", "store"},
    "security": set(),
    "server": {"core", "store", "security", "exceptions", "_version", "server", "flushing"},
    "client": {"core", "security", "exceptions", "_version", "client", "flushing"},
}
NO_IO = {"asyncio", "socket", "ssl", "sqlite3", "threading", "time", "selectors", "subprocess"}
NEVER_BELOW_CLI = {"click", "rich", "prompt_toolkit"}
# third-party or stdlib modules each package must not import
FORBIDDEN: dict[str, set[str]] = {
    "core": NO_IO | NEVER_BELOW_CLI | {"concurrent", "hashlib", "hmac", "secrets", "random"},
    "store": {"asyncio", "socket", "ssl"} | NEVER_BELOW_CLI,
    "security": {"asyncio"} | NEVER_BELOW_CLI,
    "server": NEVER_BELOW_CLI,
    "client": NEVER_BELOW_CLI | {"sqlite3"},
}


def imports(path: Path) -> list[str]:
    """Absolute module names imported by a file (relative imports resolved)."""
    package = ["telex", *path.relative_to(SRC).parent.parts]
    if path.name == "__init__.py":
        package = ["telex", *path.relative_to(SRC).parent.parts]
    found: list[str] = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                module = ".".join([*base, *([node.module] if node.module else [])])
                if node.module is None:
                    found += [f"{module}.{alias.name}" for alias in node.names]
                    continue
            else:
                module = node.module or ""
            found.append(module)
    return found


def layer_of(path: Path) -> str:
    parts = path.relative_to(SRC).parts
    return parts[0] if len(parts) > 1 else path.stem


FILES = sorted(p for p in SRC.rglob("*.py") if layer_of(p) in MAY_IMPORT)


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(SRC)))
def test_each_module_imports_only_the_layers_below_it(path: Path) -> None:
    layer = layer_of(path)
    for module in imports(path):
        top = module.split(".")[0]
        assert top not in FORBIDDEN[layer], f"{path.name} imports {module}"
        if top != "telex":
            continue
        inner = module.removeprefix("telex").lstrip(".")
        allowed = MAY_IMPORT[layer] | {layer}
        assert any(inner == a or inner.startswith(a + ".") for a in allowed), (
            f"{path.relative_to(SRC)} ({layer}) imports {module}"
        )


def test_the_rule_catches_a_forbidden_import(tmp_path: Path) -> None:
    """The check itself can fail: a core module importing asyncio is found."""
    bad = SRC / "core" / "_layers_probe.py"
    try:
        bad.write_text("import asyncio\nfrom ..server import Server\n")
        with pytest.raises(AssertionError):
            test_each_module_imports_only_the_layers_below_it(bad)
    finally:
        bad.unlink()
