"""Where telex serve's settings come from, and the commands about them.

Each setting of ``telex serve`` is one of its flags, and comes from the first of:

1. the flag on the command line;
2. the TOML file of ``--config FILE`` (or ``TELEX_CONFIG``): a key a flag, named as the
   flag without its dashes (``max-message-size`` or ``max_message_size``);
3. the environment variable ``TELEX_`` + that name in capitals (``TELEX_MAX_MESSAGE_SIZE``);
4. the flag's default.

click does most of it: the file and the environment variables are read by the eager
``--config`` option into the context's ``default_map`` (so a flag still wins), checked by
each option's own type, and ``ctx.get_parameter_source`` says where a value came from;
``ctx.meta`` tells a value from the file from one from the environment. Any option added
to serve later is a key and a variable with nothing more to do.

``telex config show`` prints the result; ``telex completion`` prints a shell's script.
"""

from __future__ import annotations

import difflib
import json
import os
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource
from click.shell_completion import get_completion_class

from ..core.address import format_address
from .common import EXIT_USAGE, Address, fail, is_url, json_option, store_name

ENV_PREFIX = "TELEX_"
CONFIG_ENV = "TELEX_CONFIG"
SHELLS = ("bash", "zsh", "fish")
_SOURCES = "telex.config.sources"  # ctx.meta: option name -> ("env", VAR) or ("file", PATH)
_FILE = "telex.config.file"  # ctx.meta: the --config path, if any
_NOT_KEYS = frozenset({"help", "config"})


def key_of(option: click.Option) -> str | None:
    """The option's key: its long flag without the dashes, ``_`` for ``-``."""
    for flag in option.opts:
        if flag.startswith("--"):
            return flag[2:].replace("-", "_")
    return None


def settings(command: click.Command) -> dict[str, click.Option]:
    """Every key a config file may hold for ``command``, to its option."""
    found: dict[str, click.Option] = {}
    for param in command.params:
        if isinstance(param, click.Option):
            key = key_of(param)
            if key is not None and key not in _NOT_KEYS:
                found[key] = param
    return found


def env_name(key: str) -> str:
    return ENV_PREFIX + key.upper()


def flag_name(key: str) -> str:
    return "--" + key.replace("_", "-")


def _expected(option: click.Option) -> tuple[tuple[type, ...], str]:
    """The TOML types a key takes, and how to say so."""
    if option.is_flag or isinstance(option.type, click.types.BoolParamType):
        return (bool,), "true or false"
    if isinstance(option.type, click.types.IntParamType):
        return (int,), "an integer"
    if isinstance(option.type, click.types.FloatParamType):
        return (int, float), "a number"
    return (str,), "a string"


def _toml_type(value: object) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return "a date or time"


def _check_type(option: click.Option, value: object) -> str | None:
    """Why ``value`` (as TOML read it) cannot be this option's, or None."""
    types, wanted = _expected(option)
    items = value if option.multiple and isinstance(value, list) else [value]
    if option.multiple and not isinstance(value, list):
        return f"expected an array, got {_toml_type(value)}"
    for item in items:
        if isinstance(item, bool) and bool not in types:  # a bool is an int to Python
            return f"expected {wanted}, got a boolean ({str(item).lower()})"
        if not isinstance(item, types):
            shown = f" ({item!r})" if isinstance(item, str | int | float) else ""
            return f"expected {wanted}, got {_toml_type(item)}{shown}"
    return None


def _relative_to(folder: Path, option: click.Option, value: Any) -> Any:
    """A relative path in the file is relative to the file's folder, not to wherever the
    server was started (a service manager starts it in /)."""
    if not isinstance(option.type, click.Path) or not isinstance(value, str) or is_url(value):
        return value
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else folder / path)


def read_file(path: Path, ctx: click.Context) -> dict[str, Any]:
    """The settings of a config file for ``ctx.command``, keyed by option name, each
    checked and converted by its option's type; anything wrong is one line and exit 2."""
    try:
        with path.open("rb") as file:
            data = tomllib.load(file)
    except FileNotFoundError:
        fail(f"the config file {path} does not exist", EXIT_USAGE)
    except IsADirectoryError:
        fail(f"the config file {path} is a directory", EXIT_USAGE)
    except OSError as exc:
        fail(f"cannot read the config file {path}: {exc.strerror or exc}", EXIT_USAGE)
    except UnicodeDecodeError:
        fail(f"the config file {path} is not UTF-8 text", EXIT_USAGE)
    except tomllib.TOMLDecodeError as exc:
        fail(f"the config file {path} is not TOML: {exc}", EXIT_USAGE)
    options = settings(ctx.command)
    values: dict[str, Any] = {}
    spelled: dict[str, str] = {}
    for key, value in data.items():
        normal = key.replace("-", "_")
        option = options.get(normal)
        if option is None or option.name is None:
            hyphenated = sorted(k.replace("_", "-") for k in options)
            close = difflib.get_close_matches(normal.replace("_", "-"), hyphenated, 1, 0.7)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            if isinstance(value, dict):
                hint = " (a table: the keys of telex serve go at the top of the file)"
            fail(f"{path}: unknown key {key!r}{hint}", EXIT_USAGE)
        assert option is not None and option.name is not None
        if normal in spelled:
            fail(f"{path}: {key!r} is given twice (also as {spelled[normal]!r})", EXIT_USAGE)
        spelled[normal] = key
        wrong = _check_type(option, value)
        if wrong is not None:
            fail(f"{path}: {key}: {wrong}", EXIT_USAGE)
        value = _relative_to(path.absolute().parent, option, value)
        try:
            values[option.name] = option.type_cast_value(ctx, value)
        except click.BadParameter as exc:
            fail(f"{path}: {key}: {exc.message}", EXIT_USAGE)
    return values


def read_environment(ctx: click.Context, environ: Mapping[str, str]) -> dict[str, Any]:
    """The settings given as ``TELEX_*`` variables, keyed by option name, each with the
    variable's name: ``{"port": (9000, "TELEX_PORT")}``. An empty variable counts as
    unset (as click does)."""
    values: dict[str, Any] = {}
    for key, option in settings(ctx.command).items():
        name = env_name(key)
        raw = environ.get(name)
        if not raw or option.name is None:
            continue
        try:
            values[option.name] = (option.type_cast_value(ctx, raw), name)
        except click.BadParameter as exc:
            fail(f"{name}={raw!r}: {exc.message}", EXIT_USAGE)
    return values


def _load(ctx: click.Context, param: click.Parameter, value: Path | None) -> None:
    """--config's callback, run before every other option (it is eager): the environment,
    then the file over it, into ``default_map``, under anything already there."""
    if ctx.resilient_parsing:  # shell completion: nothing to check, nothing to say
        return
    sources: dict[str, tuple[str, str]] = {}
    found: dict[str, Any] = {}
    for name, (setting, variable) in read_environment(ctx, os.environ).items():
        found[name] = setting
        sources[name] = ("env", variable)
    if value is not None:
        for name, setting in read_file(value, ctx).items():
            found[name] = setting
            sources[name] = ("file", str(value))
    ctx.default_map = {**(ctx.default_map or {}), **found}
    ctx.meta[_SOURCES] = sources
    ctx.meta[_FILE] = value


config_option = click.option(
    "--config",
    type=click.Path(path_type=Path),  # read_file says what is wrong with it, in one line
    envvar=CONFIG_ENV,
    is_eager=True,
    expose_value=False,
    callback=_load,
    metavar="FILE",
    help="Read settings from this TOML file (else TELEX_CONFIG): each key a flag's name "
    "(port = 7777, max-message-size = 1048576). Flags given here win over the file, the file "
    "over TELEX_* variables (TELEX_PORT ...), those over the defaults (docs/operations.md).",
)


@dataclass(frozen=True)
class Setting:
    key: str  # as the flag is spelled: max-message-size
    value: Any
    source: str  # default, env, file or flag
    origin: str | None  # TELEX_X, the file's path, --flag; None for a default


def effective(ctx: click.Context) -> Iterator[Setting]:
    """Each setting of a parsed ``ctx`` (serve's), its value and where it came from."""
    sources: dict[str, tuple[str, str]] = ctx.meta.get(_SOURCES, {})
    for key, option in settings(ctx.command).items():
        if option.name is None:
            continue
        shown = key.replace("_", "-")
        source = ctx.get_parameter_source(option.name)
        value = ctx.params.get(option.name)
        if isinstance(option.type, Address) and isinstance(value, tuple):
            value = format_address(value)  # as it is written: HOST:PORT
        if isinstance(value, str) and is_url(value):
            value = store_name(value)  # a database URL without its password
        if source is ParameterSource.COMMANDLINE:
            yield Setting(shown, value, "flag", flag_name(key))
        elif source is ParameterSource.DEFAULT_MAP and option.name in sources:
            kind, origin = sources[option.name]
            yield Setting(shown, value, kind, origin)
        elif source is ParameterSource.ENVIRONMENT:  # an option with its own envvar=
            yield Setting(shown, value, "env", _first(option.envvar))
        else:
            yield Setting(shown, value, "default", None)


def _first(envvar: str | Sequence[str] | None) -> str | None:
    if envvar is None or isinstance(envvar, str):
        return envvar
    return envvar[0] if envvar else None


def plain(value: Any) -> Any:
    """A value as JSON has it: paths as strings, tuples as arrays."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, tuple | list):
        return [plain(item) for item in value]
    return str(value)


def toml(value: Any) -> str:
    """A value as a TOML file would hold it."""
    value = plain(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(toml(item) for item in value) + "]"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(value, ensure_ascii=False)  # a TOML basic string


@click.group()
def config() -> None:
    """The settings of telex serve: a TOML file, TELEX_* variables and flags.

    See 'telex config show --help' and docs/operations.md.
    """


@config.command(context_settings={"ignore_unknown_options": True})
@click.option(
    "--config",
    "config_file",
    type=click.Path(path_type=Path),
    metavar="FILE",
    help="The config file serve would read (else TELEX_CONFIG, if set).",
)
@json_option
@click.argument("serve_options", nargs=-1, type=click.UNPROCESSED, metavar="[SERVE_OPTIONS]...")
@click.pass_context
def show(
    ctx: click.Context, config_file: Path | None, as_json: bool, serve_options: tuple[str, ...]
) -> None:
    """Print the settings telex serve would run with, and where each came from.

    Each line is a TOML line that a config file could hold, then where its value
    came from: 'default', 'env TELEX_X', 'file PATH' or 'flag --x'. Give serve's own
    options after the others (or after --) to see what they change:

    \b
      telex config show --config /etc/telex/telex.toml -- --port 9000

    With --json, one object a line: {"event": "setting", "key", "value", "source",
    "origin"}.

    \b
    Exit codes:
      0  printed
      2  usage error, or a config file or TELEX_* variable serve would refuse (named)
    """
    root = ctx.find_root()
    serve = (
        root.command.get_command(root, "serve") if isinstance(root.command, click.Group) else None
    )
    if serve is None:  # pragma: no cover - telex always has serve
        fail("no serve command", EXIT_USAGE)
    assert serve is not None
    args = ["--config", str(config_file)] if config_file is not None else []
    with serve.make_context("serve", [*args, *serve_options], parent=root) as parsed:
        rows = list(effective(parsed))
        where: Path | None = parsed.meta.get(_FILE)
        config_source = parsed.get_parameter_source("config")
    if as_json:
        for row in rows:
            print(json.dumps({"event": "setting", "key": row.key, "value": plain(row.value),
                              "source": row.source, "origin": row.origin}))  # fmt: skip
        return
    if where is None:
        click.echo("# no config file (--config FILE or TELEX_CONFIG)")
    elif config_source is ParameterSource.ENVIRONMENT:
        click.echo(f"# config file {where} (from {CONFIG_ENV})")
    else:
        click.echo(f"# config file {where}")
    lines = [
        (f"{row.key} = {toml(row.value)}" if row.value is not None else f"# {row.key} (not set)")
        for row in rows
    ]
    width = max(len(line) for line in lines)
    for line, row in zip(lines, rows, strict=True):
        origin = row.source if row.origin is None else f"{row.source} {row.origin}"
        click.echo(f"{line:<{width}}  # {origin}")


@click.command()
@click.argument("shell", type=click.Choice(SHELLS))
@click.pass_context
def completion(ctx: click.Context, shell: str) -> None:
    """Print the shell completion script for bash, zsh or fish.

    With it installed, Tab completes telex's commands, options and their choices.

    \b
    Install it once (then open a new shell):
      bash  telex completion bash > ~/.local/share/bash-completion/completions/telex
            (needs the bash-completion package; or add to ~/.bashrc:
             eval "$(telex completion bash)")
      zsh   mkdir -p ~/.zfunc && telex completion zsh > ~/.zfunc/_telex
            and in ~/.zshrc, before compinit: fpath+=~/.zfunc
            (or after compinit: eval "$(telex completion zsh)")
      fish  telex completion fish > ~/.config/fish/completions/telex.fish

    Run it again after upgrading telex. The script calls telex itself to complete, so
    telex must be on the PATH.

    \b
    Exit codes:
      0  printed
      2  usage error (a shell it does not know)
    """
    root = ctx.find_root()
    complete = get_completion_class(shell)
    assert complete is not None  # SHELLS are click's own
    click.echo(complete(root.command, {}, "telex", "_TELEX_COMPLETE").source())
