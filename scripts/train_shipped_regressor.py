"""Train the lateral regressor that ships in ``bundle/models/<region>/regressor`` (synthetic films).

Examples (the shipped models)::

    python scripts/train_shipped_regressor.py --region cervical --refine-passes 2
    python scripts/train_shipped_regressor.py --region lumbar --crop 160 320 --refine-passes 1 --init bundle/models/cervical/regressor/model.pt

Logic: :func:`monai_spine.engines.ship.train_shipped_regressor`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _network_overrides(args: argparse.Namespace) -> dict:
    """Bundle overrides of the crop and network size given on the command line."""
    ov: dict = {}
    if args.crop:
        ov["spatial_size"] = list(args.crop)
    if args.width is not None:
        ov["network_width"] = float(args.width)
    if args.fc_features is not None:
        ov["fc_features"] = int(args.fc_features)
    return ov


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--region", choices=("cervical", "lumbar"), required=True)
    p.add_argument("--n", type=int, default=160, help="synthetic radiographs, all splits (default 160)")
    p.add_argument("--size", type=int, default=512, help="image side, px (default 512)")
    p.add_argument("--epochs", type=int, default=150, help="training epochs (default 150)")
    p.add_argument("--data-seed", type=int, default=1000,
                   help="synthetic generator seed (default 1000: not the demo's or the benchmarks' 0)")
    p.add_argument("--flip-prob", type=float, default=0.0,
                   help="flip augmentation with label swap (default 0: every synthetic patient faces left)")
    p.add_argument("--crop", type=int, nargs=2, metavar=("H", "W"), default=None,
                   help="crop (network input) height and width (default: the bundle's 112 224)")
    p.add_argument("--width", type=float, default=None,
                   help="network width multiplier (default: the bundle's 0.25; the paper's network is 1.0)")
    p.add_argument("--fc-features", type=int, default=None, help="width of the head (default: the bundle's 256)")
    p.add_argument("--init", default="", help="initial checkpoint (lumbar: the cervical model)")
    p.add_argument("--refine-passes", type=int, default=0,
                   help="crop re-cuts in a detector's boxes, written into the spec before the calibration "
                        "(choose with scripts/bench_refine.py; shipped: cervical 2, lumbar 1)")
    p.add_argument("--extra-films", type=int, default=0,
                   help="add this many synthetic films of --extra-seed to the training split only (default 0)")
    p.add_argument("--extra-seed", type=int, default=2000, help="generator seed of the extra training films")
    p.add_argument("--boxes", choices=("annotation", "frame"), default="annotation",
                   help="crops cut from the annotations' boxes (default; a detector's boxes are re-cut at prediction) "
                        "or from spine-frame boxes around the vertebra centres (frame: the same boxes at prediction)")
    p.add_argument("--out", default=None, help="model folder (default bundle/models/<region>/regressor)")
    p.add_argument("--work", default=None, help="MLflow store, predictions, metrics (default runs/ship-<region>)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = p.parse_args(argv)
    import torch

    from monai_spine.engines.ship import train_shipped_regressor

    if args.threads:
        torch.set_num_threads(args.threads)
    out = args.out or str(REPO / "bundle" / "models" / args.region / "regressor")
    work = args.work or str(REPO / "runs" / f"ship-{args.region}")
    command = ["python", "scripts/train_shipped_regressor.py", *(sys.argv[1:] if argv is None else argv)]
    rec = train_shipped_regressor(args.region, out, work, n=args.n, epochs=args.epochs, size=args.size,
                                  init_checkpoint=args.init, command=command, data_seed=args.data_seed,
                                  flip_prob=args.flip_prob, refine_passes=args.refine_passes,
                                  extra_films=args.extra_films, extra_seed=args.extra_seed, boxes=args.boxes,
                                  extra=_network_overrides(args) or None)
    from monai_spine.engines.ship import _METRICS

    print(json.dumps({"metrics": {k: rec["metrics"].get(k) for k in _METRICS}, "mean_shape_mm": rec["mean_shape_mm"],
                      "train_seconds": round(rec["train_seconds"])}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
