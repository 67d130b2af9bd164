"""The command-line options every model-folder script shares: its dataset and splits, threads, seed, the command line.

The scripts that train or tune a shipped model into its folder (``scripts/train_chain_detector.py``,
``train_level_anchor.py``, ``train_spine_strip.py``, ``choose_prior_pull.py``) read a converted dataset
folder (``monai-spine convert``; its ``dataset.json`` names the splits), use two torch threads by default
(the project's 2-core machine) and record their own command line in the model's spec:

* :func:`add_dataset_arguments`: ``--dataset`` (the help names the splits the script reads),
  ``--max-train`` / ``--max-val`` for the splits it reads, ``--threads`` and, when asked, ``--seed``;
* :func:`dataset_splits`: sets the threads and returns the splits' label files, cut to the limits, with a
  ``ValueError`` naming the folder and the missing split;
* :func:`script_command`: ``python scripts/<name>.py ARGS`` as the spec's ``training_command``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import torch

__all__ = ["add_dataset_arguments", "dataset_splits", "script_command"]

#: the ``--max-*`` option of each split a script may limit
_LIMITS = {"training": ("--max-train", "use only the first N training films (0: all)"),
           "validation": ("--max-val", "use only the first N validation films (0: all)")}


def add_dataset_arguments(parser: argparse.ArgumentParser, splits: Sequence[str], limits: Sequence[str] = (),
                          seed: bool = True) -> argparse.ArgumentParser:
    """Add ``--dataset``, ``--max-train`` / ``--max-val`` (for the splits in ``limits``), ``--threads`` and ``--seed``.

    Args:
        parser: the script's parser.
        splits: the splits the script reads (named in the help of ``--dataset``).
        limits: the splits that get a ``--max-*`` option (``"training"``, ``"validation"``).
        seed: add ``--seed`` (default 0).

    Raises:
        ValueError: a split in ``limits`` has no ``--max-*`` option.
    """
    unknown = [s for s in limits if s not in _LIMITS]
    if unknown:
        raise ValueError(f"add_dataset_arguments: no --max-* option for the splits {unknown}; known: {list(_LIMITS)}")
    parser.add_argument("--dataset", required=True, help=f"converted dataset folder with a {'/'.join(splits)} split "
                        "(monai-spine convert, e.g. --format aasce)")
    for split in limits:
        flag, text = _LIMITS[split]
        parser.add_argument(flag, type=int, default=0, help=text)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2: the project's 2-core machine)")
    if seed:
        parser.add_argument("--seed", type=int, default=0)
    return parser


def dataset_splits(args: argparse.Namespace, splits: Sequence[str], whole_as_training: bool = False
                   ) -> dict[str, list[str]]:
    """Set ``torch``'s threads from ``args.threads`` and return the label files of each of ``splits``.

    A split with a ``--max-*`` option in ``args`` is cut to its first N files (0: all).

    Args:
        args: parsed options of :func:`add_dataset_arguments`.
        splits: the splits the script needs, each non-empty.
        whole_as_training: a dataset without a split (a synthetic folder) gives all its films as ``training``.

    Raises:
        ValueError: a needed split is missing or empty (the message names the dataset folder).
    """
    from monai_spine.data.datasets import list_cases

    torch.set_num_threads(int(args.threads))
    cases = list_cases(args.dataset)
    if whole_as_training and "training" not in cases and "cases" in cases:
        cases = {**cases, "training": cases["cases"]}
    out: dict[str, list[str]] = {}
    for split in splits:
        limit = getattr(args, _LIMITS[split][0][2:].replace("-", "_"), 0) if split in _LIMITS else 0
        out[split] = list(cases.get(split) or [])[: limit or None]
        if not out[split]:
            raise ValueError(f"{args.dataset}: no {split} films (the script needs a dataset.json with "
                             f"{' and '.join(splits)} splits)")
    return out


def script_command(name: str, argv: Sequence[str] | None = None) -> str:
    """``python scripts/<name>.py`` followed by ``argv`` (default: this process's arguments)."""
    return f"python scripts/{name}.py " + " ".join(sys.argv[1:] if argv is None else argv)
