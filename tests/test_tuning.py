"""The malloc tuning telex serve applies: real on glibc, a no-op elsewhere."""

from __future__ import annotations

import platform
import sys

from telex.tuning import retain_freed_memory


def test_retain_freed_memory_on_glibc() -> None:
    applied = retain_freed_memory()
    on_glibc = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
    assert applied is on_glibc
