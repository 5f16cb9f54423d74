"""The load generator: one process, a blocking socket, the same bytes for every server.

    python bench/load.py PORT --size 64 --count 1000000 --window 1000
    python bench/load.py PORT --size 64 --latency 20000

It sends telex's preamble, HELLO and MESSAGE frames and counts the ACK frames that come
back (every ACK has the same size, as both servers reply "received"), so the clients
cost the same whichever server they face: the difference is the servers' own.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import socket
import ssl
import statistics
import struct
import time

from telex.core import frames
from telex.core.frames import FrameType

ACK_SIZE = frames.ACK_HEAD.size + len(b"received")


TLS = False  # --tls: the same load over TLS 1.2+ (the certificate is not checked here)


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if TLS:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        sock = context.wrap_socket(sock)
    sock.sendall(frames.PREAMBLE + frames.json_frame(FrameType.HELLO, {"version": 1}))
    data = b""
    while len(data) < 13 or len(data) < 12 + struct.unpack_from(">I", data, 8)[0]:
        data += sock.recv(65536)  # the preamble and WELCOME, whatever their size
    return sock


def build(count: int, size: int, first_id: int = 1) -> bytes:
    body = b"x" * size
    return b"".join(frames.message(i, body, 0) for i in range(first_id, first_id + count))


def throughput(port: int, size: int, count: int, window: int) -> dict[str, float]:
    sock = connect(port)
    warmup = max(count // 10, window)
    stream = memoryview(build(warmup + count, size))
    frame = 14 + size
    chunk = max(window // 2, 1)

    def run(first: int, total: int) -> float:
        sent = acked = received = 0
        start = time.perf_counter()
        while acked < total:
            while sent < total and sent - acked <= window - chunk:
                n = min(chunk, total - sent)
                offset = (first + sent) * frame
                sock.sendall(stream[offset : offset + n * frame])
                sent += n
            data = sock.recv(1 << 20)
            if not data:
                raise SystemExit("the server closed the connection")
            received += len(data)
            acked = received // ACK_SIZE
        elapsed = time.perf_counter() - start
        if received != total * ACK_SIZE:
            raise SystemExit(f"expected {total * ACK_SIZE} bytes of acks, got {received}")
        return elapsed

    run(0, warmup)
    elapsed = run(warmup, count)
    sock.close()
    return {"messages": count, "seconds": elapsed, "per_second": count / elapsed}


def pushed(port: int, size: int, count: int) -> dict[str, float]:
    """Ask the server to push; ack each message as its frame completes (acks prebuilt)."""
    sock = connect(port)
    warmup = max(count // 10, 1000)
    frame = 14 + size
    empty_ack = frames.ACK_HEAD.size
    acks = b"".join(frames.ack(i, 0, b"", b"", 0) for i in range(1, warmup + count + 1))

    def run(command_id: int, first: int, total: int) -> float:
        command = f"push {total} {size}".encode()
        start = time.perf_counter()
        sock.sendall(frames.message(command_id, command, 0))
        received = -empty_ack  # the ack of the push command comes first
        acked = 0
        while acked < total:
            data = sock.recv(1 << 20)
            if not data:
                raise SystemExit("the server closed the connection")
            received += len(data)
            complete = max(received, 0) // frame
            if complete > acked:
                sock.sendall(acks[(first + acked) * empty_ack : (first + complete) * empty_ack])
                acked = complete
        elapsed = time.perf_counter() - start
        if received != total * frame:
            raise SystemExit(f"expected {total * frame} bytes of messages, got {received}")
        return elapsed

    run(1, 0, warmup)
    elapsed = run(2, warmup, count)
    sock.close()
    return {"messages": count, "seconds": elapsed, "per_second": count / elapsed}


def latency(port: int, size: int, count: int) -> dict[str, float]:
    sock = connect(port)
    body = b"x" * size
    samples = []
    for i in range(1, count + 1):
        message = frames.message(i, body, 0)
        start = time.perf_counter()
        sock.sendall(message)
        got = 0
        while got < ACK_SIZE:
            got += len(sock.recv(65536))
        samples.append(time.perf_counter() - start)
    sock.close()
    samples = samples[count // 10 :]  # warm-up
    cuts = statistics.quantiles(samples, n=100)
    return {"p50_us": cuts[49] * 1e6, "p99_us": cuts[98] * 1e6}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--count", type=int, default=1_000_000)
    parser.add_argument("--window", type=int, default=1000)
    parser.add_argument("--latency", type=int, default=0, help="round trips to time instead")
    parser.add_argument("--push", action="store_true", help="the server sends, the client acks")
    parser.add_argument("--tls", action="store_true", help="connect over TLS")
    args = parser.parse_args()
    global TLS
    TLS = args.tls
    if args.push:
        print(json.dumps(pushed(args.port, args.size, args.count)))
    elif args.latency:
        print(json.dumps(latency(args.port, args.size, args.latency)))
    else:
        print(json.dumps(throughput(args.port, args.size, args.count, args.window)))


if __name__ == "__main__":
    main()
