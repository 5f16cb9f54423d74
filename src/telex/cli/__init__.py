"""The ``telex`` command: its subcommands live in ``telex.commands``, a module each.

Exit codes of the client commands: 0 done; 1 some messages rejected; 2 usage error;
3 cannot connect; 4 the connection failed after it was up, with messages
unacknowledged; 5 the server's certificate was refused; 6 the token was refused.
"""

from __future__ import annotations

import click

from .._version import __version__
from .admin import cert, user
from .bench import bench
from .chat import chat, listen
from .config import completion, config
from .demo import demo
from .log import log
from .ping import ping
from .send import send
from .serve import serve
from .stats import stats

__all__ = ["main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="telex")
def main() -> None:
    """Send messages between machines over TCP; every message is acknowledged.

    Start a server with 'telex serve', send to it with 'telex send', or watch both
    sides at once with 'telex demo'.

    Exit codes: each command's --help lists its own; for every one, 0 success;
    2 usage error (before anything is done); 130 Ctrl-C.
    """


for command in (serve, send, chat, listen, log, cert, user, demo):
    main.add_command(command)
main.add_command(ping)
main.add_command(bench)
main.add_command(stats)
main.add_command(config)
main.add_command(completion)
