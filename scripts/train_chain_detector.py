"""Train a ``chain`` detector (one "any vertebra centre" heatmap + levels from the spacing) into a model folder.

Trains on the dataset's training split (for AP films ``monai-spine convert --format aasce``; a dataset
without a split is trained on whole) and writes ``model.pt`` and ``detector_model.json`` into ``--out``;
nothing is evaluated (``scripts/bench_aasce.py --detector-dir OUT``
does that on the original films); ``--statistics-only`` measures the spec's film statistics of a trained
folder again without training. The level anchor and the spine-strip refiner are trained into the same
folder afterwards (``scripts/train_level_anchor.py``, ``scripts/train_spine_strip.py``).

Example (the larger detector of docs/results.md, on a GPU)::

    python scripts/train_chain_detector.py --dataset DATASET --out runs/ap-detector-large \
        --spatial 768 256 --features 16 16 32 64 128 16 --device cuda --workers 6 --time-budget-s 330
"""

import argparse
import sys
from typing import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """Train the detector (optionally as many epochs as fit a time budget) and save its folder."""
    from monai_spine.bench.aasce import restate_chain_statistics, train_chain_folder
    from monai_spine.engines.hardware import add_hardware_arguments, budgeted_epochs
    from monai_spine.engines.script_options import add_dataset_arguments, dataset_splits, script_command

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_dataset_arguments(ap, ["training"], limits=["training"])
    ap.add_argument("--out", required=True, help="model folder to write")
    ap.add_argument("--region", default="ap", help="the region whose films are trained on (default ap)")
    ap.add_argument("--spatial", type=int, nargs=2, default=[384, 128], metavar=("H", "W"), help="network input, px")
    ap.add_argument("--features", type=int, nargs=6, default=[8, 8, 16, 32, 64, 8], help="BasicUNet features")
    ap.add_argument("--epochs", type=int, default=28, help="epochs (the most, with --time-budget-s)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--learning-rate", type=float, default=2e-3)
    ap.add_argument("--statistics-only", action="store_true",
                    help="train nothing: measure the film statistics of the detector in --out (spacing profile, level "
                         "heights, span range) again on the training films and save them into its spec")
    add_hardware_arguments(ap)
    args = ap.parse_args(argv)
    train = dataset_splits(args, ["training"], whole_as_training=True)["training"]
    command = script_command("train_chain_detector", argv)
    if args.statistics_only:
        restate_chain_statistics(args.out, train, command)
        return 0
    opts = dict(spatial_size=tuple(args.spatial), features=tuple(args.features), batch_size=args.batch_size,
                learning_rate=args.learning_rate, seed=args.seed, region=args.region, device=args.device,
                num_workers=args.workers)
    epochs, budget = budgeted_epochs(lambda d: train_chain_folder(d, train, epochs=1, **opts), args.time_budget_s,
                                     args.epochs, log=lambda m: print(m, flush=True))
    meta = {"training_command": command, "dataset": str(args.dataset), **({"time_budget": budget} if budget else {})}
    out = train_chain_folder(args.out, train, epochs=epochs, meta=meta, **opts)
    print(f"chain detector ({epochs} epochs) saved in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
