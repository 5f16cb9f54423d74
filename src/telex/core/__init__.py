"""The I/O-free core: frames, events, the state table, the connection, text mode, the broker.

Nothing in this package imports asyncio, socket, threading, sqlite3, ssl or click, and
nothing here reads a clock: the adapters around it own time and I/O.
"""
