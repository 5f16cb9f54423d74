"""The interactive side of ``telex serve`` and ``telex chat``.

On a terminal, a prompt_toolkit prompt stays at the bottom while events scroll above
it, with a status line under it. Without a terminal, stdin is read line by line with
the same commands, so a script can drive either command.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import click

from ..client.aio import AsyncClient
from ..core.address import format_address
from ..core.events import Ack, Body, Message, Receipt
from ..core.protocol import valid_name
from ..core.textmode import text_body
from ..exceptions import TelexError
from ..server import Peer, PeerEvent, Server, default_handler
from .render import body_fields, printable

__all__ = [
    "Command",
    "MessagePrinter",
    "Output",
    "PeerEventPrinter",
    "ServerConsole",
    "StderrHandler",
    "parse_command",
    "read_lines",
    "run_prompt",
]

HELP = "@NAME TEXT: to one client · TEXT: to {everyone} · /who · /stats · /help · /quit"


@dataclass(frozen=True, slots=True)
class Command:
    """A line typed at a console: ``kind`` is send, who, help, quit or unknown."""

    kind: str
    text: str = ""
    to: str | None = None


def parse_command(line: str) -> Command | None:
    """``@name text``, ``/who``, ``/help``, ``/quit``, or plain text; None for a blank line."""
    stripped = line.strip()
    if not stripped:
        return None
    if stripped.startswith("/"):
        word = stripped.split()[0][1:].lower()
        if word in ("who", "help", "quit", "stats"):
            return Command(word)
        if word == "exit":
            return Command("quit")
        return Command("unknown", stripped)
    if stripped.startswith("@") and len(stripped) > 1:
        name, _, text = stripped[1:].partition(" ")
        return Command("send", text.strip(), to=name)
    return Command("send", line.rstrip("\r\n"))


class Output:
    """Lines for a person (coloured on a terminal, readable without) or JSON for scripts."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self.color = sys.stdout.isatty() and "NO_COLOR" not in os.environ

    def style(self, text: str, **style: Any) -> str:
        return click.style(text, **style) if self.color else text

    def line(self, text: str, **style: Any) -> None:
        """One line for a person; ignored in JSON mode."""
        if not self.as_json:
            print(self.style(text, **style), flush=True)

    def record(self, event: str, **fields: Any) -> None:
        """One JSON object; ignored unless in JSON mode."""
        if self.as_json:
            print(json.dumps({"event": event, **fields}), flush=True)


class StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Logs to whatever ``sys.stderr`` is now, so lines land above a prompt."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


async def read_lines() -> AsyncIterator[Body]:
    """Each line of stdin as it arrives (text when it is UTF-8), read off the event loop.

    The reading is done by a daemon thread, not the loop's executor: a stdin that stays
    open (a pipe from a supervisor, a FIFO) must never keep the process from exiting.
    """
    loop = asyncio.get_running_loop()
    chunks: asyncio.Queue[bytes] = asyncio.Queue()

    def read() -> None:
        while True:
            try:  # the file descriptor itself: a buffered stdin's lock would abort the exit
                chunk = os.read(sys.stdin.fileno(), 65536)
            except (
                OSError,
                ValueError,
                AttributeError,
            ):  # no stdin at all, as under a service manager
                chunk = b""
            try:
                loop.call_soon_threadsafe(chunks.put_nowait, chunk)
            except RuntimeError:  # the loop is closed: the command is ending
                return
            if not chunk:
                return

    threading.Thread(target=read, name="telex-stdin", daemon=True).start()
    rest = b""
    while chunk := await chunks.get():
        lines = (rest + chunk).split(b"\n")
        rest = lines.pop()
        for line in lines:
            yield text_body(line.removesuffix(b"\r"))
    if rest:
        yield text_body(rest)


async def run_prompt(
    on_line: Callable[[str], Awaitable[bool]],
    status: Callable[[], str],
    prompt: str = "> ",
) -> bool:
    """Prompt at the bottom of the terminal until Ctrl-D, Ctrl-C or ``on_line`` says stop;
    True if it was Ctrl-C."""
    from prompt_toolkit import PromptSession
    from prompt_toolkit.patch_stdout import patch_stdout

    session: PromptSession[str] = PromptSession()
    with patch_stdout(raw=True):
        while True:
            try:
                line = await session.prompt_async(
                    prompt, bottom_toolbar=status, refresh_interval=0.5
                )
            except EOFError:
                return False
            except KeyboardInterrupt:
                return True
            if not await on_line(line):
                return False


def clock() -> str:
    return time.strftime("%H:%M:%S")


def now_iso() -> str:
    return datetime.now().astimezone().isoformat(timespec="milliseconds")


def iso(moment: float | None) -> str | None:
    """A unix time as JSON gives every time (docs/json.md): ISO 8601, local offset."""
    if moment is None:
        return None
    return datetime.fromtimestamp(moment).astimezone().isoformat(timespec="milliseconds")


# -- telex serve ---------------------------------------------------------------------------


class MessagePrinter:
    """The server's handler in a terminal: print each message, then acknowledge it."""

    def __init__(self, out: Output) -> None:
        self.out = out

    def __call__(self, message: Message, peer: Peer) -> str:
        out = self.out
        if out.as_json:
            out.record("message", time=now_iso(), id=message.id,
                       sender=peer.name or peer.address,
                       peer=peer.address, **body_fields(message.body))  # fmt: skip
        else:
            who = out.style(peer.name or peer.address, fg="cyan")
            stamp = out.style(clock(), dim=True)
            out.line(f"{stamp} {who} #{message.id} {printable(message.body)}")
        return default_handler(message, peer)


class PeerEventPrinter:
    """Joins and leaves, as lines or JSON."""

    def __init__(self, out: Output) -> None:
        self.out = out

    def __call__(self, event: PeerEvent) -> None:
        peer = self.out.style(event.peer.name or event.peer.address, fg="cyan")
        if event.kind == "joined":
            self.out.line(f"{clock()} {peer} joined from {event.peer.address} ({event.peer.mode})")
        else:
            self.out.line(f"{clock()} {peer} left", dim=True)
        mode = {"mode": event.peer.mode} if event.kind == "joined" else {}
        self.out.record(event.kind, time=now_iso(), name=event.peer.name,
                        peer=event.peer.address, **mode)  # fmt: skip


def outcome(ack: Ack, who: str) -> tuple[str, str]:
    """What an answer means, from its flags (never from its reason text): a status word
    (acknowledged, stored, delivered, rejected) and a phrase for people."""
    if not ack.ok:
        return "rejected", ack.reason
    if ack.stored:
        return "stored", f"stored for {who}" + (" (not connected)" if ack.away else "")
    if ack.delivered:
        return "delivered", f"delivered to {who}"
    return "acknowledged", f"{who} acknowledged"


def ack_fields(ack: Ack, to: str | None) -> dict[str, Any]:
    """An answer as the JSON fields of an ``ack`` line (docs/json.md), from every command."""
    status, _ = outcome(ack, to or "server")
    fields: dict[str, Any] = {"id": ack.id, "to": None if to == "server" else to}
    if status == "rejected":
        return {**fields, "status": "rejected", "outcome": status, "code": int(ack.status),
                "reason": ack.reason}  # fmt: skip
    return {**fields, "status": "ok", "outcome": status, "away": ack.stored and ack.away,
            **body_fields(ack.reply, "reply")}  # fmt: skip


def receipt_fields(msg_id: int, to: str, ack: Ack | Receipt) -> dict[str, Any]:
    """A recipient's later answer as the fields of a ``receipt`` line (docs/json.md)."""
    if ack.ok:
        return {"id": msg_id, "to": to, "status": "delivered", **body_fields(ack.reply, "reply")}
    return {"id": msg_id, "to": to, "status": "refused", "reason": ack.reason}


def show_ack(out: Output, who: str, ack: Ack) -> None:
    """One answer to a message this console sent: acknowledged, stored or delivered."""
    out.record("ack", **ack_fields(ack, who))
    status, text = outcome(ack, who)
    if status == "rejected":
        out.line(f"  ✗ #{ack.id} {who}: {ack.reason}", fg="red")
        return
    reply = f": {printable(ack.reply)}" if ack.reply else ""
    mark, colour = ("…", "yellow") if status == "stored" else ("✓", "green")
    out.line(f"  {mark} #{ack.id} {text}{reply}", fg=colour)


def show_delivery(out: Output, who: str, msg_id: int, ack: Ack | Receipt) -> None:
    """The later answer to a stored message: its recipient acknowledged it (or refused)."""
    out.record("receipt", **receipt_fields(msg_id, who, ack))
    if ack.ok:
        reply = f": {printable(ack.reply)}" if ack.reply else ""
        out.line(f"  ✓✓ #{msg_id} delivered to {who}{reply}", fg="green")
    else:
        out.line(f"  ✗ #{msg_id} refused by {who}: {ack.reason}", fg="red")


class ServerConsole:
    """Commands typed at ``telex serve``: to one client, to all, /who, /help, /quit."""

    def __init__(self, server: Server, out: Output, stop: asyncio.Event) -> None:
        self.server = server
        self.out = out
        self.stop = stop
        self.tasks: set[asyncio.Task[None]] = set()

    def status(self) -> str:
        count = len(self.server.clients)
        return f" telex on {self.where()} · {count} connected · /help"

    async def on_line(self, line: str) -> bool:
        command = parse_command(line)
        if command is None:
            return True
        if command.kind == "quit":
            self.stop.set()
            return False
        if command.kind == "help":
            self.out.line(HELP.format(everyone="every connected client"))
        elif command.kind == "who":
            self.who()
        elif command.kind == "stats":
            await self.show_stats()
        elif command.kind == "unknown":
            self.out.line(f"unknown command {command.text!r}; /help lists them", fg="yellow")
        else:
            task = asyncio.create_task(self.send(command))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        return True

    def who(self) -> None:
        peers = self.server.who()
        for peer in peers:
            since = time.strftime("%H:%M:%S", time.localtime(peer.connected_at))
            name = peer.name or "(text peer)"
            self.out.line(f"  {name:<20} since {since}  from {peer.address} ({peer.mode})")
            self.out.record("who", name=peer.name, peer=peer.address, mode=peer.mode,
                            since=iso(peer.connected_at))  # fmt: skip
        if not peers:
            self.out.line("  nobody is connected")

    async def show_stats(self) -> None:
        from .stats import describe

        values = await self.server.figures()
        self.out.record("stats", time=now_iso(), server=self.where(), values=values)
        for line in describe(values, self.where()):
            self.out.line(f"  {line}")

    def where(self) -> str:
        return format_address((self.server.host, self.server.port))

    async def send(self, command: Command) -> None:
        if command.to is not None:
            self.out.line(f"→ @{command.to}: {command.text}", fg="magenta")
            self.out.record("sent", to=command.to, text=command.text)
            show_ack(self.out, command.to, await self.server.send_nowait(command.to, command.text))
            return
        names = sorted(self.server.clients)
        if not names:
            self.out.line("nobody is connected to receive it", fg="yellow")
            return
        self.out.line(f"→ everyone ({len(names)}): {command.text}", fg="magenta")
        self.out.record("sent", to=None, text=command.text)
        for name, ack in (await self.server.broadcast(command.text)).items():
            show_ack(self.out, name, ack)

    async def run(self, interactive: bool) -> None:
        """On a terminal, the prompt (its end stops the server); else stdin's lines."""
        if interactive:
            await run_prompt(self.on_line, self.status)
            self.stop.set()
            return
        async for line in read_lines():
            text = line if isinstance(line, str) else line.decode("utf-8", "replace")
            if not await self.on_line(text):
                return
        await asyncio.gather(*self.tasks)  # the end of stdin ends the console, not the server


# -- telex chat and telex listen --------------------------------------------------------------


def show_message(out: Output, message: Message) -> None:
    """A message that arrived from the server, or through it from another client."""
    sender = message.sender or "server"
    out.line(f"{out.style(clock(), dim=True)} [{out.style(sender, fg='cyan')}] "
             f"{printable(message.body)}")  # fmt: skip
    out.record("message", time=now_iso(), sender=message.sender, id=message.id,
               **body_fields(message.body))  # fmt: skip


class ChatSession:
    """``telex chat``: send what is typed, show acks and what arrives; the client reconnects
    by itself when the connection drops, and the status line follows it."""

    def __init__(
        self,
        addresses: list[tuple[str, int]],
        out: Output,
        *,
        name: str | None,
        timeout: float,
        connect_timeout: float,
        retries: int = 30,
        **client_options: Any,
    ) -> None:
        self.out = out
        self.state = "connecting"
        self.connected = asyncio.Event()
        self.gave_up = asyncio.Event()
        self.recipients: dict[int, str] = {}  # message id -> the client it was for
        self.unanswered: set[int] = set()  # ids sent and not yet answered
        self.answered = 0
        self.interrupted = False  # Ctrl-C: exit 130
        self.client = AsyncClient(
            addresses,
            name=name,
            handler=lambda message: show_message(out, message),
            timeout=timeout,
            connect_timeout=connect_timeout,
            reconnect=retries > 0,
            retries=retries,
            on_state=self._on_state,
            on_receipt=self._on_receipt,
            **client_options,
        )

    def status(self) -> str:
        """The server in use (of several, the one failed over to) and the state."""
        state = "connected" if self.state.startswith("connected") else self.state
        return f" {self.client.name or '?'} @ {self.client.address} · {state} · /help"

    def _on_state(self, state: str) -> None:
        """The client's reconnecting, said once on a line and kept on the status line."""
        if "reconnecting" in state and self.connected.is_set():
            self.out.line(f"-- {state.split(':')[0]}; reconnecting", fg="yellow")
            self.out.record("disconnected", reason=state.split(":")[0])
        if state.startswith("connected"):
            self.out.line(f"-- reconnected to {self.client.address}", fg="green")
            self.out.record("reconnected", address=self.client.address)
            self.connected.set()
        elif state == "gave up":
            self.out.line(f"-- gave up after {self.client.retries} attempts to reconnect", fg="red")
            self.gave_up.set()
        else:
            self.connected.clear()
        self.state = state

    def _on_receipt(self, receipt: Receipt) -> None:
        who = self.recipients.pop(receipt.id, "its recipient")
        show_delivery(self.out, who, receipt.id, receipt)

    async def start(self) -> None:
        """Connect for the first time; a failure here is the caller's (no retry)."""
        await self.client.connect()
        self.state = "connected"
        self.connected.set()

    async def on_line(self, line: str) -> bool:
        command = parse_command(line)
        if command is None:
            return True
        if command.kind == "quit":
            return False
        if command.kind == "help":
            self.out.line(
                "TEXT: to the server · @NAME TEXT: to another client · /stats · /quit (Ctrl-D)"
            )
            return True
        if command.kind == "stats":
            await self.show_stats()
            return True
        if command.kind != "send":
            self.out.line(f"unknown command {command.text!r}; /help lists them", fg="yellow")
            return True
        if self.gave_up.is_set():
            return False
        if command.to is not None and not valid_name(command.to):
            reason = f"{command.to!r} is not a name: 1 to 32 letters, digits, . _ -"
            self.out.line(f"  ✗ not sent: {reason}", fg="red")
            self.out.record("not_sent", to=command.to, text=command.text, reason=reason)
            return True
        msg_id = self.client.next_id
        who = command.to or "server"
        future = self.client.send_nowait(command.text, to=command.to)
        self.unanswered.add(msg_id)
        if command.to is not None:
            self.recipients[msg_id] = command.to
        arrow = f" → @{command.to}" if command.to else ""
        waiting = "" if self.connected.is_set() else " (waits for the reconnection)"
        self.out.line(f"you #{msg_id}{arrow}: {command.text}{waiting}", dim=True)
        self.out.record("sent", id=msg_id, to=command.to, text=command.text)
        future.add_done_callback(lambda done: self._acknowledged(done, who, msg_id))
        return True

    async def show_stats(self) -> None:
        from .stats import describe

        where = self.client.address
        try:
            values = await self.client.stats()
        except TelexError as exc:
            self.out.line(f"  no stats: {exc}", fg="yellow")
            return
        self.out.record("stats", time=now_iso(), server=where, values=values)
        for line in describe(values, where):
            self.out.line(f"  {line}")

    def _acknowledged(self, future: asyncio.Future[Ack], who: str, msg_id: int) -> None:
        if future.cancelled():
            return
        error = future.exception()
        if error is None:
            self.unanswered.discard(msg_id)
            self.answered += 1
            show_ack(self.out, who, future.result())
        else:
            self.out.line(f"  ✗ #{msg_id} not acknowledged: {error}", fg="red")
            self.out.record("ack", id=msg_id, to=None if who == "server" else who,
                            status="unacknowledged", outcome="unacknowledged",
                            reason=str(error))  # fmt: skip

    async def run(self, interactive: bool) -> int:
        """Until /quit, Ctrl-D, Ctrl-C or the end of stdin: 0; 4 if reconnecting failed
        or a message stayed unacknowledged; 130 after Ctrl-C."""
        await self.start()
        if interactive:
            prompt = asyncio.create_task(run_prompt(self.on_line, self.status))
            gave_up = asyncio.create_task(self.gave_up.wait())
            await asyncio.wait([prompt, gave_up], return_when=asyncio.FIRST_COMPLETED)
            prompt.cancel()
            gave_up.cancel()
            if prompt.done() and not prompt.cancelled():
                self.interrupted = prompt.result()
        else:
            async for line in read_lines():
                text = line if isinstance(line, str) else line.decode("utf-8", "replace")
                if not await self.on_line(text):
                    break
        if self.unanswered and not self.gave_up.is_set():
            self.out.line(
                f"-- {len(self.unanswered)} not yet acknowledged: waiting up to "
                f"{self.client.timeout:g} s (Ctrl-C leaves without them)",
                fg="yellow",
            )
        await self.client.close()  # waits for the acks on their way
        if self.interrupted:
            return 130
        return 4 if self.gave_up.is_set() or self.unanswered else 0

    def summary(self) -> str:
        """What happened to what was sent, for the last line."""
        return f"{self.answered} messages acknowledged, {len(self.unanswered)} not acknowledged"
