"""Train the AP detector's level anchor (a patch classifier of level groups) into the detector's model folder.

The anchor is trained on the dataset's training split, its weight in the chain decoding is chosen on
the validation split (right-level rate; 0 = no anchor is always a candidate), and both are saved
beside the detector (``level_anchor_model.json``, ``level_anchor.pt``).

Example::

    python scripts/train_level_anchor.py --dataset /tmp/aasce/cache/aasce-seed0-0.7-0.15-0.15 \
        --detector-dir bundle/models/ap/detector
"""

import argparse
import sys
from typing import Sequence

from monai_spine.codecs.level_groups import level_groups_for
from monai_spine.engines.level_anchor import choose_anchor_weight, class_recall, train_level_anchor


def main(argv: Sequence[str] | None = None) -> int:
    """Train the level anchor into a detector folder and weigh it on the validation films."""
    from monai_spine.engines.script_options import add_dataset_arguments, dataset_splits, script_command
    from monai_spine.inference.level_anchor import LevelAnchorSpec
    from monai_spine.inference.detector import DetectorSpec

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_dataset_arguments(ap, ["training", "validation"])
    ap.add_argument("--detector-dir", required=True, help="the chain detector's model folder (the anchor goes there)")
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--patch-size", type=int, default=48)
    ap.add_argument("--side-spacings", type=float, nargs="+", default=[4.0],
                    help="patch side(s) in level spacings, one input channel each")
    ap.add_argument("--variants", type=int, default=4)
    ap.add_argument("--weights", type=float, nargs="+", default=[0.25, 0.5, 1.0],
                    help="anchor weights tried on the validation films (0, no anchor, is always tried)")
    ap.add_argument("--detector-peaks", action="store_true",
                    help="add the detector's own peaks on the training films to the samples (labelled by the annotated boxes)")
    ap.add_argument("--edge-crops", type=float, default=0.0, metavar="P",
                    help="share of augmented patches cut from a tighter framing of the film (the film's top edge "
                         "0.35-1.5 level spacings above the first level, its bottom 0.5-1.8 below the last), so "
                         "that a film's edge does not tell the classes apart")
    ap.add_argument("--recall-only", action="store_true",
                    help="train nothing: print the per-class recall of the detector folder's anchor on the validation films")
    args = ap.parse_args(argv)
    cases = dataset_splits(args, ["training", "validation"])
    if args.recall_only:
        from monai_spine.inference.level_anchor import LevelAnchor

        recall = class_recall(LevelAnchor.from_dir(args.detector_dir), cases["validation"])
        print("| class | recall on validation points |\n|---|---:|")
        for name, r in recall.items():
            print(f"| {name} | {100 * r:.1f} % |")
        return 0
    levels = DetectorSpec.load(args.detector_dir).levels
    spec = LevelAnchorSpec(level_groups_for(levels), patch_size=args.patch_size, side_spacings=args.side_spacings[0] if len(args.side_spacings) == 1 else tuple(args.side_spacings))
    command = script_command("train_level_anchor", argv)
    detector = None
    if args.detector_peaks:
        from monai_spine.inference.detector import VertebraDetector

        detector = VertebraDetector.from_checkpoint(args.detector_dir, use_anchor=False)
    spec = train_level_anchor(args.detector_dir, cases["training"], cases["validation"], levels, epochs=args.epochs,
                              variants=args.variants, spec=spec, seed=args.seed, detector=detector,
                              edge_crop_prob=args.edge_crops,
                              meta={"training_command": command, "dataset": str(args.dataset)})
    weight, rates = choose_anchor_weight(args.detector_dir, cases["validation"], args.weights)
    spec.weight = weight
    spec.meta["weight_choice"] = {"right_level_rate_validation": rates, "chosen": weight}
    spec.save(args.detector_dir)
    print(f"level anchor saved in {args.detector_dir}: validation accuracy {spec.meta['validation_accuracy']:.3f}, "
          f"weight {weight:g} (right level on validation: {rates})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
