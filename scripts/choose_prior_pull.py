"""Choose how far a corner model moves its corners toward the corner prior's mean, on the validation films.

The corner FCN's maps are noisy: a corner taken at the map's peak and moved part of the way to the prior's
mean (the training films' corner layout in the vertebra's frame) is on average nearer the reference
(shrinkage). The prior mean sits at the centre the model is given, so choose at the centres it gets in
use: ``--detector-dir`` predicts at the detector's centres and scores the levels it found (the fully
automatic pipeline); without it, at the annotated centres (the means of the annotated corners: a prior
mean placed there carries the reference's own centroid and favours a larger pull than real clicks would).
The pull with the least mean corner error on the validation split is written into the model folder's
``heatmap_model.json`` (``postprocess.prior_pull``, with the validation table under
``meta.prior_pull_choice``). Refit the folder's calibration afterwards: the errors changed.

Example::

    python scripts/choose_prior_pull.py --dataset /tmp/aasce/cache/aasce-seed0-0.7-0.15-0.15 \\
        --heatmap-dir bundle/models/ap/heatmap --detector-dir bundle/models/ap/detector --write
"""

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """Score every candidate pull on the validation films; with ``--write``, store the best in the folder."""
    from monai_spine.engines.heatmap import PRIOR_PULL_GRID, choose_prior_pull, heatmap_cases
    from monai_spine.engines.script_options import add_dataset_arguments, dataset_splits, script_command
    from monai_spine.inference.detector import VertebraDetector
    from monai_spine.inference.heatmap import MODEL_FILE, CornerPredictor

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_dataset_arguments(ap, ["validation"], limits=["validation"], seed=False)
    ap.add_argument("--heatmap-dir", required=True, help="the corner model's folder (heatmap_model.json, model.pt)")
    ap.add_argument("--detector-dir", default=None,
                    help="predict at this detector's centres (the fully automatic use); default: the annotated centres")
    ap.add_argument("--grid", type=float, nargs="+", default=list(PRIOR_PULL_GRID), help="candidate pulls in [0, 1]")
    ap.add_argument("--write", action="store_true", help="store the chosen pull in the folder's heatmap_model.json")
    args = ap.parse_args(argv)
    labels = dataset_splits(args, ["validation"])["validation"]
    predictor = CornerPredictor.from_ckpt_dir(args.heatmap_dir)
    val = heatmap_cases(labels, predictor.spec.region)
    detector = VertebraDetector.from_checkpoint(args.detector_dir) if args.detector_dir else None
    best, table = choose_prior_pull(predictor, val, args.grid, detector, log=lambda m: print(m, flush=True))
    print(f"chosen prior pull: {best:g} (mean corner error {table[f'{best:g}']['mean_px']:.2f} px on {len(val)} "
          f"validation films, {table['0']['mean_px']:.2f} px without)" if "0" in table else
          f"chosen prior pull: {best:g}")
    if args.write:
        path = Path(args.heatmap_dir) / MODEL_FILE
        d = json.loads(path.read_text(encoding="utf-8"))
        d.setdefault("postprocess", {})["prior_pull"] = best
        command = script_command("choose_prior_pull", argv)
        d.setdefault("meta", {})["prior_pull_choice"] = {
            "command": command, "validation_films": len(val), "criterion": "mean corner error, px, " + (
                "at the detector's centres, levels it found" if detector is not None else "at the annotated centres"),
            "table": {k: {m: round(v, 3) for m, v in row.items()} for k, row in table.items()}, "chosen": best}
        path.write_text(json.dumps(d, indent=1), encoding="utf-8")
        print(f"written into {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
