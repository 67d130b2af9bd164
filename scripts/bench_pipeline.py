"""End-to-end benchmark of the whole-radiograph pipeline (detector -> regressor / heatmap corners) on synthetic data.

Trains the detector, the BayeCBAM regressor and the heatmap FCN with the bundle on one shared synthetic
cervical set, calibrates split-conformal radii and uncertainty classes on the validation split (from
detected boxes / centres by default, as on the test split; ``--calibrate-on annotation`` uses the
ground-truth ones; both are compared in a third table), then runs
``SpinePipeline.predict_file`` on every test radiograph and prints per model: mean / median mm error,
share of scans < 2 mm, SDR@2mm, fit failure > 3 mm, Spearman(sigma, error), AUSE, conformal coverage and
mean radius, detection recall and seconds per radiograph (see ``monai_spine/bench/pipeline.py``).
The report goes to ``OUT/table.md`` (details in ``OUT/results.json``).

Default run::

    python scripts/bench_pipeline.py --threads 1 --out runs/bench-pipeline

Smoke run::

    python scripts/bench_pipeline.py --n 10 --size 256 --epochs-detector 2 --epochs-regressor 1 \\
        --epochs-heatmap 1 --quiet --out /tmp/bench-pipeline
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
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=60, help="synthetic images, all splits (default 60)")
    p.add_argument("--size", type=int, default=512, help="image side in px (default 512)")
    p.add_argument("--hard-case-rate", type=float, default=0.3, help="share of hard-case images (default 0.3)")
    p.add_argument("--epochs-detector", type=int, default=100, help="detector epochs (default 100)")
    p.add_argument("--epochs-regressor", type=int, default=12, help="regressor epochs (default 12)")
    p.add_argument("--epochs-heatmap", type=int, default=8, help="heatmap FCN epochs (default 8)")
    p.add_argument("--heatmap-width", type=int, default=8, help="heatmap FCN base width (default 8)")
    p.add_argument("--heatmap-patches", type=int, default=24, help="heatmap training patches per image (default 24)")
    p.add_argument("--mc-samples", type=int, default=10, help="MC-dropout passes T (default 10)")
    p.add_argument("--alpha", type=float, default=0.1, help="conformal miscoverage (default 0.1)")
    p.add_argument("--no-flip-tta", action="store_true", help="skip the regressor + flip TTA row")
    p.add_argument("--calibrate-on", choices=("detected", "annotation"), default="detected",
                   help="validation predictions behind the main table's conformal radii and uncertainty classes: "
                        "from detected boxes / centres (default, as on test) or ground-truth ones; both are "
                        "compared in the calibration table")
    p.add_argument("--seed", type=int, default=0, help="training seed (default 0)")
    p.add_argument("--data-seed", type=int, default=0, help="synthetic generator seed (default 0)")
    p.add_argument("--out", default=str(REPO / "runs" / "bench-pipeline"), help="output folder")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--quiet", action="store_true", help="no per-epoch log lines from the bundle")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("MONAI_SPINE_CACHE", str(out / "cache"))
    import torch

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    from monai_spine.bench.pipeline import PipelineBenchSettings, run_pipeline_benchmark
    from monai_spine.engines.demo import bundle_dir

    if args.quiet:
        logging.basicConfig(level=logging.WARNING)
    settings = PipelineBenchSettings(
        n=args.n, size=args.size, hard_case_rate=args.hard_case_rate, data_seed=args.data_seed,
        epochs_detector=args.epochs_detector, epochs_regressor=args.epochs_regressor,
        epochs_heatmap=args.epochs_heatmap, heatmap_width=args.heatmap_width, heatmap_patches=args.heatmap_patches,
        mc_samples=args.mc_samples, alpha=args.alpha, flip_tta=not args.no_flip_tta, seed=args.seed,
        calibrate_on=args.calibrate_on,
    )
    bundle = bundle_dir()
    command = ["python", "scripts/bench_pipeline.py", *(sys.argv[1:] if argv is None else argv)]
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    report, _ = run_pipeline_benchmark(
        settings, out, bundle, command,
        logging_file=False if args.quiet else str(bundle / "configs" / "logging.conf"), log=log,
    )
    print("\n" + report, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
