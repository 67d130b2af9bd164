"""Train the AP detector's spine-strip refiner (every level placed again along the straightened spine).

The refiner is trained on the dataset's training split and saved beside the detector
(``spine_strip_model.json``, ``spine_strip.pt``); the weights of its level reading and of the
film-height prior in the decoding are chosen on the validation split (right-level rate, printed with and
without the refiner).

Example::

    python scripts/train_spine_strip.py --dataset /tmp/aasce/cache/aasce-seed0-0.7-0.15-0.15 \
        --detector-dir bundle/models/ap/detector
"""

import argparse
import sys
from typing import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """Train the refiner into a detector folder and compare the validation right-level rates."""
    from monai_spine.engines.hardware import add_hardware_arguments, budgeted_epochs
    from monai_spine.engines.script_options import add_dataset_arguments, dataset_splits, script_command
    from monai_spine.engines.spine_strip import choose_strip_decoding, train_spine_strip
    from monai_spine.inference.detector import DetectorSpec
    from monai_spine.inference.spine_strip import SpineStripSpec

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_dataset_arguments(ap, ["training", "validation"], limits=["training", "validation"])
    ap.add_argument("--detector-dir", required=True, help="the chain detector's model folder (the refiner goes there)")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--rows", type=int, default=768)
    ap.add_argument("--width", type=int, default=96)
    ap.add_argument("--features", type=int, nargs=6, default=[8, 16, 32, 64, 128, 8])
    ap.add_argument("--learning-rate", type=float, default=2e-3)
    ap.add_argument("--init-from", default=None, help="a folder with a refiner of the same size to train on from")
    ap.add_argument("--position-weights", type=float, nargs="+", default=[0.5, 1.0],
                    help="weights of the film-height level prior in the decoding, chosen on the validation films")
    ap.add_argument("--level-weights", type=float, nargs="+", default=[0.0, 0.5, 1.0],
                    help="weights of the network's level reading in the decoding, chosen on the validation films")
    ap.add_argument("--choose-only", action="store_true",
                    help="train nothing: choose the decoding of the detector folder's refiner on the validation films")
    ap.add_argument("--train-only", action="store_true",
                    help="train, but leave the decoding choice on the validation films for a later --choose-only")
    add_hardware_arguments(ap)
    args = ap.parse_args(argv)
    cases = dataset_splits(args, ["training", "validation"])
    train, val = cases["training"], cases["validation"]
    if not args.choose_only:
        levels = DetectorSpec.load(args.detector_dir).levels
        spec = SpineStripSpec(levels=levels, rows=args.rows, width=args.width, features=tuple(args.features))
        command = script_command("train_spine_strip", argv)
        opts = dict(batch_size=args.batch_size, learning_rate=args.learning_rate, seed=args.seed,
                    init_from=args.init_from, device=args.device, num_workers=args.workers)
        epochs, budget = budgeted_epochs(
            lambda d: train_spine_strip(d, train, SpineStripSpec.from_dict(spec.to_dict()), epochs=1, **opts),
            args.time_budget_s, args.epochs, log=lambda m: print(m, flush=True))
        meta = {"training_command": command, "dataset": str(args.dataset), **({"time_budget": budget} if budget else {})}
        train_spine_strip(args.detector_dir, train, spec, epochs=epochs, meta=meta, **opts)
        if args.train_only:
            print(f"spine-strip refiner trained into {args.detector_dir} ({epochs} epochs; decoding not chosen)")
            return 0
    grid = [{"position_weight": p, "level_weight": w} for p in args.position_weights for w in args.level_weights]
    best, rates = choose_strip_decoding(args.detector_dir, val, grid)
    spec = SpineStripSpec.load(args.detector_dir)
    spec.decode_kwargs.update(best)
    spec.meta["decoding_choice"] = {"validation_films": len(val),
                                    "right_level_rate_validation": {k: round(v, 4) for k, v in rates.items()},
                                    "chosen": best}
    spec.save(args.detector_dir)
    print(f"spine-strip refiner saved in {args.detector_dir} (decoding {best}; right level on {len(val)} validation "
          f"films {100 * max(v for k, v in rates.items() if k != 'without the refiner'):.1f} %, "
          f"{100 * rates['without the refiner']:.1f} % without)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
