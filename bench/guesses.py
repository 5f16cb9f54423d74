"""How fast one address can guess a server's token, and how long a right token waits.

    python bench/guesses.py [--seconds 10] [--parallel 50]

A TLS server with a token on 127.0.0.1; --parallel connections from 127.0.0.1 keep
guessing wrong for --seconds; then the right token logs in from the same address (it
waits out the address's last penalty, up to 30 s). Prints guesses answered per second. Nothing is
asserted: the pacing itself is tested in tests/server/test_security.py.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import telex
from telex.security import client_context, server_context, write_certificate
from telex.server import Server

TOKEN = "the right token"


async def main(seconds: float, parallel: int) -> None:
    folder = Path(tempfile.mkdtemp())
    found = write_certificate(folder / "server", ["127.0.0.1"])
    context = server_context(folder / "server.pem", folder / "server.key")
    options = {"ssl": client_context(verify=False), "fingerprint": found}
    async with Server(host="127.0.0.1", port=0, ssl=context, token=TOKEN) as server:
        answered = 0
        deadline = time.monotonic() + seconds

        async def guesser() -> None:
            nonlocal answered
            while time.monotonic() < deadline:
                try:
                    async with asyncio.timeout(deadline - time.monotonic()):
                        await telex.connect("127.0.0.1", server.port, token="guess", **options)
                except telex.AuthenticationFailed:
                    answered += 1
                except TimeoutError:
                    return

        started = time.monotonic()
        await asyncio.gather(*(guesser() for _ in range(parallel)))
        elapsed = time.monotonic() - started
        print(
            f"{answered} wrong guesses answered in {elapsed:.1f} s from one address "
            f"with {parallel} connections at a time: {answered / elapsed:.2f} guesses/s"
        )
        print(f"server counted {server.stats()['auth_failures']} failed logins")
        started = time.monotonic()
        async with telex.connect(
            "127.0.0.1", server.port, token=TOKEN, connect_timeout=60, **options
        ) as client:
            await client.send("in")
        print(
            f"then the right token from that address: in after {time.monotonic() - started:.1f} s"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--parallel", type=int, default=50)
    args = parser.parse_args()
    asyncio.run(main(args.seconds, args.parallel))
