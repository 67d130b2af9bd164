"""Train and evaluate on real radiographs: the AASCE set (481 AP radiographs, read in place).

Splits the set by patient with a seed, trains the vertebra detector, the heatmap FCN and the BayeCBAM
corner regressor with the bundle (``--dataset_dir <split folder> --region ap``) on the CPU, calibrates
split-conformal radii on the validation split and prints, on the test split: detection recall, mean /
median corner error in px and in % of vertebra height, SDR at 1 / 2 / 5 % of the image height,
Spearman(sigma, error), AUSE, conformal coverage, the three Cobb angles' SMAPE against the dataset's
angles, and seconds per radiograph (see ``monai_spine/bench/aasce.py``). The report goes to
``OUT/table.md`` (details in ``OUT/results.json``); the trained models stay in ``OUT/<model>/models``
(never in git).

Default run (the data folder from ``--data`` or ``$MONAI_SPINE_DATA``, default ``../shared/data``)::

    python scripts/bench_aasce.py --out runs/bench-aasce

Smoke run::

    python scripts/bench_aasce.py --max-train 4 --max-val 2 --max-test 2 --epochs-detector 1 \\
        --epochs-heatmap 1 --epochs-regressor 1 --quiet --out /tmp/bench-aasce
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """Command-line options."""
    from monai_spine.bench.aasce import REGRESSOR_BOXES, AasceBenchSettings

    d = AasceBenchSettings()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=None, help="AASCE folder or the shared data root (default $MONAI_SPINE_DATA)")
    p.add_argument("--split-seed", type=int, default=d.split_seed, help="patient split seed (default 0)")
    p.add_argument("--max-train", type=int, default=None, help="training images used (default all)")
    p.add_argument("--max-val", type=int, default=None, help="validation images for calibration (default all)")
    p.add_argument("--max-test", type=int, default=None, help="test images evaluated (default all)")
    p.add_argument("--epochs-detector", type=int, default=d.epochs_detector)
    p.add_argument("--detector-spatial", type=int, nargs=2, default=list(d.detector_spatial), metavar=("H", "W"))
    p.add_argument("--detector-method", choices=("chain", "levels"), default=d.detector_method,
                   help="chain: one 'any vertebra' heatmap + levels from the spacing (default); levels: one heatmap per level")
    p.add_argument("--detector-batch", type=int, default=d.detector_batch)
    p.add_argument("--detector-dir", default="", help="evaluate this trained detector folder instead of training one")
    p.add_argument("--heatmap-dir", default="", help="evaluate this trained heatmap folder instead of training one")
    p.add_argument("--epochs-heatmap", type=int, default=d.epochs_heatmap)
    p.add_argument("--heatmap-width", type=int, default=d.heatmap_width)
    p.add_argument("--heatmap-patches", type=int, default=d.heatmap_patches)
    p.add_argument("--heatmap-grid", type=float, nargs=2, default=list(d.heatmap_grid), metavar=("N", "STEP"),
                   help="patch-centre grid per vertebra at prediction (default 1 0: the centre only)")
    p.add_argument("--epochs-regressor", type=int, default=d.epochs_regressor)
    p.add_argument("--regressor-width", type=float, default=d.regressor_width)
    p.add_argument("--crop", type=int, nargs=2, default=list(d.crop), metavar=("H", "W"))
    p.add_argument("--init-regressor", default="", help="warm-start checkpoint of the regressor")
    p.add_argument("--regressor-boxes", choices=REGRESSOR_BOXES, default=d.regressor_boxes,
                   help="boxes the regressor's training crops are cut from (default: the annotation's); spacing: "
                        "from the centre and the local centre distance, at prediction too; frame: the same turned "
                        "into the spine's frame")
    p.add_argument("--models", nargs="+", default=list(d.models), choices=("detector", "heatmap", "regressor"))
    p.add_argument("--mc-samples", type=int, default=d.mc_samples)
    p.add_argument("--alpha", type=float, default=d.alpha)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--reuse", action="store_true", help="keep models already trained in OUT (no retraining)")
    p.add_argument("--out", default=str(REPO / "runs" / "bench-aasce"), help="output folder")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--quiet", action="store_true", help="no per-epoch log lines from the bundle")
    p.add_argument("--labels-only", action="store_true",
                   help="print the labels' report (level order, each annotation batch's vertebra proportions) "
                        "per split and stop: no model is trained or run")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    import torch

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.labels_only:
        from monai_spine.bench.aasce import label_report
        from monai_spine.data.aasce import ensure_aasce_dataset
        from monai_spine.data.datasets import default_cache_dir, list_cases

        ds = ensure_aasce_dataset(os.environ.get("MONAI_SPINE_CACHE") or default_cache_dir(), args.data,
                                  seed=args.split_seed)
        index = list_cases(ds)
        print(label_report({k: index[k] for k in ("training", "validation", "test")}), flush=True)
        return 0
    from monai_spine.bench.aasce import AasceBenchSettings, run_aasce_benchmark
    from monai_spine.engines.demo import bundle_dir

    if args.quiet:
        logging.basicConfig(level=logging.WARNING)
    settings = AasceBenchSettings(
        split_seed=args.split_seed, max_train=args.max_train, max_val=args.max_val, max_test=args.max_test,
        epochs_detector=args.epochs_detector, detector_spatial=tuple(args.detector_spatial),
        detector_method=args.detector_method, detector_batch=args.detector_batch, detector_dir=args.detector_dir,
        heatmap_dir=args.heatmap_dir,
        epochs_heatmap=args.epochs_heatmap, heatmap_width=args.heatmap_width, heatmap_patches=args.heatmap_patches,
        heatmap_grid=(int(args.heatmap_grid[0]), float(args.heatmap_grid[1])),
        epochs_regressor=args.epochs_regressor, regressor_width=args.regressor_width, crop=tuple(args.crop),
        init_regressor=args.init_regressor, regressor_boxes=args.regressor_boxes, models=tuple(args.models),
        mc_samples=args.mc_samples,
        alpha=args.alpha, seed=args.seed, reuse=args.reuse,
    )
    bundle = bundle_dir()
    command = ["python", "scripts/bench_aasce.py", *(sys.argv[1:] if argv is None else argv)]
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    report, _ = run_aasce_benchmark(
        settings, out, bundle, data_root=args.data, cache_dir=os.environ.get("MONAI_SPINE_CACHE") or None,
        command=command, logging_file=False if args.quiet else str(bundle / "configs" / "logging.conf"), log=log,
    )
    print("\n" + report, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
