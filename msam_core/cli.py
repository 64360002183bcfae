"""The ``msam`` command: ``msam train | demo | compare | landscape | report ...``.

Commands are plug-ins, so each lives in its own module and only the one you run is imported.
A command module exposes::

    HELP: str                                        # one line for ``msam --help``
    def add_arguments(parser: argparse.ArgumentParser) -> None: ...
    def run(args: argparse.Namespace) -> int: ...    # the exit status

Two places provide commands:

- built-in: every module in the package :mod:`msam_core.commands` (``train.py`` gives
  ``msam train``; an underscore in the module name becomes a dash);
- other packages: entry points in the group ``msam.commands`` whose value is such a module,
  e.g. in their ``pyproject.toml``::

      [project.entry-points."msam.commands"]
      report = "msam_viz.report_command"

  so ``msam report`` works when that package is installed, without msam_core importing it.

``run`` closes (or finalizes) what it opens before it returns: the console script freezes
what is still alive then out of the interpreter's final collections (:func:`entry`), so a
reference cycle left behind is not finalized at exit.

A command that sets ``EXTRA_ARGS = True`` receives unparsed ``--key value`` tokens in
``args.extra`` (``msam train`` uses them as config overrides).

Errors: user errors (bad names, bad values, missing files, an existing run directory) print
one line ``msam <command>: error: <what was wrong and what to do>`` to stderr and exit with
status 2, without a traceback; a run whose loss diverged exits with status 1.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import os
import pkgutil
import signal
import sys
import warnings
from collections.abc import Sequence
from importlib.metadata import entry_points
from types import ModuleType

from msam_core.suggest import did_you_mean

ENTRY_POINT_GROUP = "msam.commands"
#: one line and exit status 2, no traceback: bad input, and the machine's refusals (a full
#: disk, a read-only folder, a run directory another process is writing: OSError)
USER_ERRORS = (ValueError, KeyError, OSError)


def _builtin_commands() -> dict[str, str]:
    """``{command: module path}`` of the modules in :mod:`msam_core.commands`."""
    package = importlib.import_module("msam_core.commands")
    return {
        info.name.replace("_", "-"): f"msam_core.commands.{info.name}"
        for info in pkgutil.iter_modules(package.__path__)
        if not info.name.startswith("_")
    }


def _plugin_commands() -> dict[str, object]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def available_commands() -> list[str]:
    """Every command name, built-in and plug-in, sorted."""
    return sorted({*_builtin_commands(), *_plugin_commands()})


def load_command(name: str) -> ModuleType:
    """Import the module behind command ``name`` (built-ins win over plug-ins)."""
    builtin = _builtin_commands()
    if name in builtin:
        return importlib.import_module(builtin[name])
    plugins = _plugin_commands()
    if name in plugins:
        return plugins[name].load()
    choices = available_commands()
    raise ValueError(
        f"unknown command {name!r}{did_you_mean(name, choices)}; choose one of {choices}"
    )


def _one_line_warning(command: str):
    """``warnings.showwarning`` for the command line: ``msam <command>: warning: ...``."""

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        print(f"msam {command}: warning: {message}", file=file or sys.stderr)

    return show


def _error_text(err: BaseException) -> str:
    # KeyError's str() adds quotes around its message
    return str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)


def _unrecognized(parser: argparse.ArgumentParser, extra: Sequence[str]) -> str:
    """argparse's "unrecognized arguments" message, with the closest options suggested."""
    options = [o for action in parser._actions for o in action.option_strings]
    flags = [t.split("=", 1)[0] for t in extra if t.startswith("-")]
    return f"unrecognized arguments: {' '.join(extra)}{did_you_mean(flags, options)}"


def _top_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="msam",
        description="See and fix modality imbalance: train multimodal models with M-SAM and "
        "baselines, recording every step's Shapley contributions and sharpness.",
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    return parser


def _usage() -> str:
    lines = ["usage: msam <command> [options]   (msam <command> --help for its options)", ""]
    lines.append("commands:")
    for name in available_commands():
        try:
            help_text = getattr(load_command(name), "HELP", "")
        except Exception as err:  # a broken plug-in must not break the listing
            help_text = f"(unavailable: {_error_text(err)})"
        lines.append(f"  {name:<12}{help_text}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``msam`` console script; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    if argv[0] == "--version":
        from msam_core.version import __version__

        print(f"msam {__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    try:
        module = load_command(name)
    except ValueError as err:
        print(f"msam: error: {_error_text(err)}", file=sys.stderr)
        return 2
    parser = argparse.ArgumentParser(
        prog=f"msam {name}", description=getattr(module, "HELP", ""), allow_abbrev=False
    )
    module.add_arguments(parser)
    if getattr(module, "EXTRA_ARGS", False):
        args, extra = parser.parse_known_args(rest)
        args.extra = extra
    else:
        args, extra = parser.parse_known_args(rest)  # argparse exits 2 on its own errors
        if extra:
            parser.error(_unrecognized(parser, extra))
    args.argv = list(rest)  # the command's own tokens, for commands that relaunch themselves
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _one_line_warning(name)
            return int(module.run(args) or 0)
    except USER_ERRORS as err:
        print(f"msam {name}: error: {_error_text(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:
        # training's TrainingInterrupted says where the run stands and how to resume it
        how = getattr(err, "signal", "SIGINT")
        if os.environ.get("RANK", "0") == "0":  # one rank of many: rank 0 speaks for the run
            print(f"msam {name}: {err or 'interrupted'}", file=sys.stderr)
        return 128 + int(getattr(signal, how, signal.SIGINT))
    except RuntimeError as err:
        from msam_core.train import TrainingDiverged

        if isinstance(err, TrainingDiverged):
            print(f"msam {name}: {err}", file=sys.stderr)
            return 1
        raise


def entry() -> int:
    """The ``msam`` console script and ``python -m msam_core``: :func:`main`, then the objects
    still alive are frozen out of the interpreter's final garbage collections (``gc.freeze``).

    Those collections traverse every object torch and torch._dynamo created at import, about a
    million: 1.5-2 s of every command's exit on a slow 2-core machine, more than some commands' own
    work.  Only what is alive at the end is skipped; every file the commands write is closed
    (and renamed into place) before :func:`main` returns.  In-process callers of :func:`main`
    (tests, notebooks) keep their collector as it is."""
    status = main()
    gc.collect(1)  # the young generations (milliseconds): cycles the command just left
    gc.freeze()
    return status


if __name__ == "__main__":  # pragma: no cover
    sys.exit(entry())
