"""Benchmark the BayeRegX regressors (Baseline, CBAM, BayeCBAM) on one synthetic cervical set, same CPU budget.

Each variant is trained by the bundle (``bundle/configs/train.json``) on the same synthetic cervical
radiographs (generated once under ``$MONAI_SPINE_CACHE``, split 70/15/15 by image), with the same
epochs, batch size, crop size and network width, so with the same number of optimisation steps;
its training wall time is recorded. Each trained model is then evaluated on the held-out test
split (which holds the generator's hard cases at ``--hard-case-rate``) with the bundle's predictor
and MC dropout. One markdown table is printed, with the command, thread and core counts and the
settings above it, ready to paste into ``docs/results.md``; it is also written to
``OUT/table.md``, with per-variant details (per point type, hard cases only, p-values) in
``OUT/results.json``. Logic lives in :mod:`monai_spine.bench.regressor`.

Example (the documented benchmark)::

    python scripts/bench_regressor.py --out runs/bench-regressor

Duration with the defaults (80 images of 512 x 512 px, so 56 / 12 / 12 training / validation /
test images and about 280 training crops; 20 epochs of batch 16, i.e. 18 steps per epoch and 360
optimisation steps per variant; crop 112 x 224, width 0.25, fc 256, T = 10): about 17 minutes on 2
idle CPU cores (estimate, range 15-22 min), about 35-45 minutes when another job shares the cores.
Estimated from runs on a shared 2-core machine (torch 2.13, 2 threads): one optimisation step costs
about 1.0 CPU-s for each of the three variants, loading and cropping one training crop about
13 CPU-ms, so an epoch (training and the bundle's per-epoch validation) about 24 CPU-s, 15-18 s wall on
2 idle cores; each variant adds about 15 s of fixed cost (config parsing, creating its MLflow store),
the synthetic set about 20 s once (it is cached under ``$MONAI_SPINE_CACHE``), the test-split
evaluation a few seconds per variant. Wall time scales with ``--epochs`` x ``--n``.

Smoke run (about 1 minute)::

    python scripts/bench_regressor.py --n 8 --size 256 --epochs 1 --width 0.125 --fc-features 32 --out /tmp/bench
"""

from __future__ import annotations

import argparse
import json
import contextlib
import logging
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """Command-line options (defaults: the documented benchmark)."""
    from monai_spine.bench.regressor import VARIANTS, BenchSettings

    d = BenchSettings()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=d.n, help=f"synthetic images, all splits (default {d.n})")
    p.add_argument("--size", type=int, default=d.size, help=f"image side in pixels (default {d.size})")
    p.add_argument("--epochs", type=int, default=d.epochs, help=f"training epochs (default {d.epochs})")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help=f"batch size (default {d.batch_size})")
    p.add_argument("--width", type=float, default=d.width, help=f"network width multiplier (default {d.width})")
    p.add_argument("--fc-features", type=int, default=d.fc_features, help=f"hidden FC features (default {d.fc_features})")
    p.add_argument("--crop", type=int, nargs=2, metavar=("H", "W"), default=list(d.crop),
                   help=f"crop (network input) height and width (default {d.crop[0]} {d.crop[1]})")
    p.add_argument("--hard-case-rate", type=float, default=d.hard_case_rate,
                   help=f"share of hard-case images in the generated set, test split included (default {d.hard_case_rate})")
    p.add_argument("--mc-samples", type=int, default=d.mc_samples, help=f"MC-dropout passes T (default {d.mc_samples})")
    p.add_argument("--lr", type=float, default=d.learning_rate, help=f"Adam learning rate (default {d.learning_rate})")
    p.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS), help="variants to run, in order")
    p.add_argument("--out", default=str(REPO / "runs" / "bench-regressor"),
                   help="output folder: one run folder per variant, table.md, results.json (default runs/bench-regressor)")
    p.add_argument("--seed", type=int, default=d.seed, help="training and dropout seed (default 0)")
    p.add_argument("--seeds", type=int, nargs="+", default=None,
                   help="several training seeds: one run per seed (OUT/seed<S>) and a table of means with 95 %% "
                        "confidence intervals over the seeds")
    p.add_argument("--region", choices=("cervical", "lumbar"), default=d.region, help="synthetic region (default cervical)")
    p.add_argument("--eval-model", default=None, metavar="DIR",
                   help="evaluate this trained model folder (e.g. bundle/models/cervical/regressor) instead of training")
    p.add_argument("--detector-dir", default=None,
                   help="a trained detector's model folder: test boxes come from it (fully automatic), not the annotations")
    p.add_argument("--data-seed", type=int, default=d.data_seed, help="synthetic generator seed (default 0)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's own choice)")
    p.add_argument("--num-workers", type=int, default=0, help="data loader workers of the bundle (default 0)")
    p.add_argument("--no-mlflow", action="store_true", help="switch the bundle's MLflow handlers off (no mlflow installed)")
    p.add_argument("--override", action="append", default=[], metavar="KEY=JSON",
                   help="any further train.json override, e.g. train#crop_transforms#2#prob=0 (repeatable)")
    p.add_argument("--quiet", action="store_true", help="no log lines from the bundle runs (progress still on stderr)")
    return p


def _extra_overrides(args: argparse.Namespace) -> dict:
    extra: dict = {"num_workers": args.num_workers}
    for item in args.override:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--override needs KEY=JSON, got {item!r}")
        extra[key] = json.loads(value)
    if args.no_mlflow:  # the MLflow handlers of train.json, disabled by name
        extra.update({"train#handler#mlflow#_disabled_": True, "validate#handler#mlflow#_disabled_": True})
    return extra


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import torch

    from monai_spine.bench.regressor import BenchSettings, run_benchmark
    from monai_spine.engines.demo import bundle_dir

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    settings = BenchSettings(
        n=args.n, size=args.size, epochs=args.epochs, batch_size=args.batch_size, width=args.width,
        fc_features=args.fc_features, crop=tuple(args.crop), hard_case_rate=args.hard_case_rate,
        mc_samples=args.mc_samples, learning_rate=args.lr, seed=args.seed, data_seed=args.data_seed,
        region=args.region, extra=_extra_overrides(args),
    )
    bundle = bundle_dir()
    logging_file: str | bool = False if args.quiet else str(bundle / "configs" / "logging.conf")
    command = ["python", "scripts/bench_regressor.py", *(sys.argv[1:] if argv is None else argv)]
    quiet = contextlib.nullcontext()
    if args.quiet:  # the bundle's handlers log to stdout: send it to the null device until the table
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # read when mlflow is first imported
        logging.getLogger("mlflow").setLevel(logging.WARNING)
        quiet = contextlib.redirect_stdout(open(os.devnull, "w"))  # left open: handlers may keep it
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    if args.eval_model:
        from monai_spine.bench.regressor import evaluate_model_folder

        report, _ = evaluate_model_folder(settings, args.eval_model, bundle, args.detector_dir, command)
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "table.md").write_text(report, encoding="utf-8")
        print("\n" + report, flush=True)
        return 0
    if not args.seeds:
        with quiet:
            report, _ = run_benchmark(settings, args.out, bundle, args.variants, command, logging_file, log=log,
                                      detector_dir=args.detector_dir)
        print("\n" + report, flush=True)
        return 0
    import dataclasses

    from monai_spine.bench.regressor import format_seed_table

    per_seed = []
    for seed in args.seeds:
        with quiet:
            report, results = run_benchmark(dataclasses.replace(settings, seed=seed), Path(args.out) / f"seed{seed}",
                                            bundle, args.variants, command, logging_file, log=log,
                                            detector_dir=args.detector_dir)
        print(f"\n## seed {seed}\n\n" + report, flush=True)
        per_seed.append(results)
    table = format_seed_table(per_seed)
    (Path(args.out) / "seeds.md").write_text(table + "\n", encoding="utf-8")
    print("\n## over seeds " + " ".join(map(str, args.seeds)) + " (mean ± 95 % CI)\n\n" + table, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
