"""Run one target of fuzz/targets.py under atheris, the coverage-guided fuzzer (libFuzzer).

    pip install -e '.[fuzz]'
    python fuzz/atheris_main.py TARGET [libFuzzer arguments] [corpus folder or input files]

    python fuzz/atheris_main.py framed -max_total_time=600
    python fuzz/atheris_main.py broker -max_total_time=600 -jobs=4 -workers=4
    python fuzz/atheris_main.py framed crash-1234abcd          # replay one input

TARGET is one of ``framed``, ``text``, ``decoders``, ``broker``, ``broker_idle``. Without a
corpus folder, the corpus is ``$TMPDIR/telex-fuzz/TARGET``, which keeps what earlier runs
found; the seed corpus (valid streams built with the encoders of ``frames.py``,
``targets.seed_inputs``) is written into it first. A broken promise is a crash to
libFuzzer: it stops and writes the input to ``crash-<sha1>`` (``-artifact_prefix=`` moves
it). Only the telex package and the targets are instrumented.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):  # run as a script: the repository is the import root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

USAGE = __doc__.split("\n\n")[1]
NAMES = ("framed", "text", "decoders", "broker", "broker_idle")


def corpus_folder(name: str) -> Path:
    return Path(tempfile.gettempdir()) / "telex-fuzz" / name


def write_seeds(name: str, folder: Path) -> int:
    """Write the seed corpus of ``name`` into ``folder``; how many inputs."""
    from fuzz.targets import seed_inputs

    folder.mkdir(parents=True, exist_ok=True)
    seeds = seed_inputs(name)
    for number, data in enumerate(seeds):
        (folder / f"seed-{number:03d}").write_bytes(data)
    return len(seeds)


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[1] not in NAMES:
        print(f"usage:\n{USAGE}\n\ntargets: {', '.join(NAMES)}", file=sys.stderr)
        return 2
    name, rest = argv[1], argv[2:]
    try:
        import atheris  # type: ignore[import-untyped,import-not-found,unused-ignore]
    except ImportError:
        print("atheris is not installed: pip install -e '.[fuzz]'", file=sys.stderr)
        return 2
    with atheris.instrument_imports(include=["telex", "fuzz", "tests"]):
        from fuzz.targets import TARGETS
    target = TARGETS[name]
    inputs = [arg for arg in rest if not arg.startswith("-")]
    if not inputs:  # no corpus given: ours, seeded
        folder = corpus_folder(name)
        count = write_seeds(name, folder)
        print(f"corpus {folder} ({count} seeds written)", file=sys.stderr)
        rest = [*rest, str(folder)]
    elif Path(inputs[0]).is_dir() or not Path(inputs[0]).exists():  # a corpus folder
        write_seeds(name, Path(inputs[0]))
    atheris.Setup([argv[0], *rest], target)
    atheris.Fuzz()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
