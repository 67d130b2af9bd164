"""The ``monai-spine`` command: one entry point, one subcommand per job.

One module per command group, each with a ``register(subparsers)``: :mod:`~monai_spine.cli.data`
(``synth``, ``overlay``, ``convert``), :mod:`~monai_spine.cli.predict` (``predict``, ``corners``),
:mod:`~monai_spine.cli.measure` (``measure``), :mod:`~monai_spine.cli.evaluate` (``report``,
``calibrate``) and :mod:`~monai_spine.cli.demo` (``demo``, the one command that trains). Library
modules hold no argument parsing.

Subcommands import their heavy modules lazily so ``monai-spine --help`` stays fast. Errors that a
user can fix (a bad file, a missing spacing) are printed as one line, without a traceback, and the
command exits non-zero.

Exit status: 0 success; 1 a batch command (``predict``, ``measure``) finished but some files failed
(each is listed, one line per file, and the others were processed); 2 a user error stopped the
command (bad argument, missing or unreadable file: one line on stderr naming it); 3 an unexpected
internal error (one line; set ``MONAI_SPINE_DEBUG=1`` to see the traceback); 130 interrupted.
Warnings (a rejected spacing, a colour image converted) are printed as one line each on stderr.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from typing import Sequence

from monai_spine.cli import data, demo, evaluate, measure, predict
from monai_spine.cli._common import DEBUG_ENV, debug, one_line

__all__ = ["main", "build_parser", "package_version", "DEBUG_ENV", "COMMAND_GROUPS"]

#: The command modules, in the order of ``monai-spine --help``.
COMMAND_GROUPS = (data, measure, predict, evaluate, demo)


def package_version() -> str:
    """The installed ``monai-spine`` version (package metadata), else the source tree's ``__version__``."""
    try:
        from importlib.metadata import PackageNotFoundError, version

        return version("monai-spine")
    except PackageNotFoundError:
        from monai_spine import __version__

        return __version__


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``monai-spine`` (exposed for tests and docs)."""
    p = argparse.ArgumentParser(prog="monai-spine", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    sub = p.add_subparsers(dest="command", required=True)
    for group in COMMAND_GROUPS:
        group.register(sub)
    return p


def _model_folders(items: Sequence[str] | None) -> list[str]:
    """The folders of ``NAME=FOLDER`` (or bare ``FOLDER``) items."""
    return [str(i).partition("=")[2] or str(i) for i in items or []]


def _preflight(args: argparse.Namespace) -> None:
    """Check the output and the inputs of a command before it reads a film or loads a model.

    Raises:
        FileNotFoundError: an input path does not exist (all of them are named).
        ValueError / PermissionError: the output folder (file, for ``corners``) cannot be written.
    """
    from monai_spine.outputs import check_inputs_exist, check_output_dir, check_output_file

    cmd = args.command
    inputs = {
        "predict": lambda: list(args.paths),
        "corners": lambda: [args.image],
        "overlay": lambda: [args.dataset],
        "measure": lambda: list(args.paths) + list(args.flexion) + list(args.extension),
        "report": lambda: _model_folders(args.predictions) + list(args.annotations),
        "calibrate": lambda: list(args.predictions) + list(args.annotations),
    }
    if cmd in inputs:
        check_inputs_exist(inputs[cmd](), "input")
    if cmd == "corners":
        if args.out:
            check_output_file(args.out)
    elif cmd == "calibrate":
        check_output_dir(args.models_dir, "--models-dir")
    elif getattr(args, "out", None):
        check_output_dir(args.out)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``monai-spine``; returns the exit status (see the module docstring)."""
    args = build_parser().parse_args(argv)
    prog = f"monai-spine {args.command}"

    def show_warning(message, category, filename, lineno, file=None, line=None):  # one line, no source code
        print(f"{prog}: warning: {one_line(message)}", file=sys.stderr)

    old_show = warnings.showwarning
    warnings.showwarning = show_warning
    try:
        _preflight(args)
        return int(args.func(args) or 0)
    except (ValueError, KeyError, OSError) as e:  # includes XrayReadError, AnnotationError, FileNotFoundError
        if debug():
            raise
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"{prog}: error: {one_line(msg)}", file=sys.stderr)
        return 2
    except MemoryError as e:
        if debug():
            raise
        print(f"{prog}: error: out of memory ({one_line(e) or 'MemoryError'})", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a bug, not a user error: still no traceback unless asked for
        if debug():
            raise
        print(f"{prog}: internal error: {type(e).__name__}: {one_line(e)} (set {DEBUG_ENV}=1 for the traceback)",
              file=sys.stderr)
        return 3
    finally:
        warnings.showwarning = old_show


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
