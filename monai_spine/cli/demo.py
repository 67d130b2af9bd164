"""``monai-spine demo``: the main job on the embedded synthetic data (the README's first command).

It generates synthetic films, trains and calibrates a regressor, predicts and measures
(:func:`monai_spine.engines.demo.run_demo`). It is the one command that trains, so it is the one
command module that imports ``engines``.
"""

from __future__ import annotations

import argparse

__all__ = ["register"]


def register(sub: "argparse._SubParsersAction") -> None:
    """Add ``demo`` to the ``monai-spine`` subcommands."""
    d = sub.add_parser("demo", help="the main job on the embedded synthetic data (README)")
    d.add_argument("--out", default="runs/demo", help="output folder")
    d.add_argument("--epochs", type=int, default=None, help="training epochs (default: the demo's)")
    d.add_argument("--n", type=int, default=None, help="synthetic radiographs to generate")
    d.add_argument("--variant", default="bayecbam", choices=("baseline", "cbam", "bayecbam"))
    d.add_argument("--seed", type=int, default=0)
    d.set_defaults(func=_cmd_demo)


def _cmd_demo(args: argparse.Namespace) -> int:
    from monai_spine.engines.demo import run_demo

    return run_demo(out=args.out, epochs=args.epochs, n=args.n, variant=args.variant, seed=args.seed)
