"""TLS handshakes started right after connect, against a real `telex serve --tls`:
how many finish, how many hang. Python's ssl and `openssl s_client`, side by side.

    python bench/handshakes.py [--count 500]

Each handshake has 5 s; one that takes longer counts as a hang. Nothing is asserted
(tests/server/test_security.py runs 200 in the suite).
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from telex.security import write_certificate


def python_handshake(port: int, context: ssl.SSLContext) -> bool:
    try:
        raw = socket.create_connection(("127.0.0.1", port), timeout=5)
        with raw, context.wrap_socket(raw, server_hostname="127.0.0.1"):  # ClientHello now
            return True
    except (OSError, ssl.SSLError):
        return False


def openssl_handshake(port: int, openssl: str) -> bool:
    try:
        done = subprocess.run(
            [openssl, "s_client", "-connect", f"127.0.0.1:{port}", "-brief"],
            input=b"",
            capture_output=True,
            timeout=5,
        )
    except subprocess.TimeoutExpired:
        return False
    return b"CONNECTION ESTABLISHED" in done.stderr or b"Protocol version" in done.stderr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=500)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp())
    write_certificate(folder / "server", ["127.0.0.1"])
    server = subprocess.Popen(
        [sys.executable, "-m", "telex", "serve", "--port", "0", "--json", "--no-store",
         "--quiet", "--tls", str(folder / "server")],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert server.stdout is not None
        port = json.loads(server.stdout.readline())["port"]
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        kinds = {"python ssl": lambda: python_handshake(port, context)}
        openssl = shutil.which("openssl")
        if openssl is not None:
            kinds["openssl s_client"] = lambda: openssl_handshake(port, openssl)
        print(f"{'client':<18} {'tried':>6} {'finished':>9} {'hung':>5} {'seconds':>8}")
        for kind, handshake in kinds.items():
            started = time.monotonic()
            finished = sum(handshake() for _ in range(args.count))
            took = time.monotonic() - started
            print(
                f"{kind:<18} {args.count:>6} {finished:>9} {args.count - finished:>5} {took:>8.1f}"
            )
    finally:
        server.terminate()
        server.wait(timeout=10)


if __name__ == "__main__":
    main()
