"""Benchmark the probabilistic spatial regressor (Al Arif et al. 2017) on synthetic cervical radiographs, CPU budget.

The model is trained by the bundle (``configs/train.json`` + ``configs/heatmap_train.json``, in this
process, as ``python -m monai.bundle run training ...`` would) on synthetic cervical radiographs
(generated once under ``$MONAI_SPINE_CACHE``, default ``OUT/cache``; split 70/15/15 by image), then
evaluated on the held-out test split by the semi-automatic predictor
(:class:`monai_spine.inference.heatmap.CornerPredictor`) with the ground-truth centres as the
"clicked" ones. A second row, "prior only", localises every corner with the learned corner prior
alone (no network), so the network's contribution is visible.

Printed (and written to ``OUT/table.md``, details in ``OUT/results.json``): one markdown table with
the corner point-to-point error (mean, median, std), the point-to-curve error to the vertebral-body
outline, the fit failure (share of corners with P2P > 3 mm), the mean patch-level Bhattacharyya
coefficient, the training wall time and the Spearman rank correlation between each corner's
``sigma`` and its P2P error.

Example (the documented benchmark)::

    python scripts/bench_heatmap.py --out runs/bench-heatmap

Duration with the defaults (40 images of 512 x 512 px: 28 / 6 / 6 training / validation / test;
64 x 64 patches, FCN width 8 (380 k parameters); 40 epochs of 7 steps of 4 images x 48 random
patches = 192 patches per step, i.e. 280 optimisation steps and about 54 k training patches;
validation on the 405 test-grid patches of each validation image every 10 epochs): about 10 minutes
on 2 idle CPU cores (estimate, range 9-13 min). Measured on this 2-core machine, idle, torch 2.13
with 2 threads: one training epoch 12.5 s (one step of 192 patches about 1.5 s, drawing and cutting the
patches about 1.5 s per epoch), one validation 11 s, the fixed costs (config parsing, the MLflow
store, generating the synthetic set, evaluating the test split twice) about 50 s. Twice as long when
another job shares the cores. Training time scales with ``--epochs`` x ``--n`` x ``--patches-per-image``.
For orientation (a plain training loop with the same data, transforms, network and loss on a GPU,
not this script): width 8 trained 20 epochs x 32 patches gave a test P2P of 0.20 mm and a mean patch
BC of 0.95, 80 epochs x 64 patches 0.14 mm and 0.98 (paper: 0.9794); prior only: 0.50 mm.

Smoke run (about 1 minute)::

    python scripts/bench_heatmap.py --n 8 --size 256 --epochs 1 --width 4 --patches-per-image 8 \\
        --scales 2.0 --rotations 0 --out /tmp/bench-heatmap
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Sequence

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

__all__ = ["build_parser", "main", "format_table"]


def build_parser() -> argparse.ArgumentParser:
    """Command-line options (defaults: the documented benchmark)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--region", default="cervical", choices=["cervical", "lumbar"],
                   help="synthetic lateral region (default cervical)")
    p.add_argument("--n", type=int, default=40, help="synthetic images, all splits (default 40)")
    p.add_argument("--size", type=int, default=512, help="image side in pixels (default 512)")
    p.add_argument("--hard-case-rate", type=float, default=0.1, help="share of hard-case images (default 0.1)")
    p.add_argument("--epochs", type=int, default=40, help="training epochs (default 40)")
    p.add_argument("--batch-size", type=int, default=4, help="images per optimisation step (default 4)")
    p.add_argument("--patches-per-image", type=int, default=48,
                   help="random patches drawn per training image and epoch (default 48)")
    p.add_argument("--width", type=int, default=8, help="FCN base width (paper: 64; default 8)")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default 1e-3)")
    p.add_argument("--val-interval", type=int, default=10,
                   help="validate (and keep the best checkpoint) every N epochs; the largest divisor of --epochs "
                        "not above N is used, so the last epoch is validated (default 10)")
    p.add_argument("--scales", type=float, nargs="+", default=[1.6, 2.0, 2.4],
                   help="patch sides / vertebra size, training and test grid (default 1.6 2.0 2.4)")
    p.add_argument("--rotations", type=float, nargs="+", default=[-10.0, 0.0, 10.0],
                   help="patch rotations in degrees relative to the vertebra, training and test grid (default -10 0 10)")
    p.add_argument("--grid", type=float, nargs=2, default=[3, 0.15], metavar=("N", "HALF_EXTENT"),
                   help="patch-centre grid: N x N points over +-HALF_EXTENT x size (default 3 0.15)")
    p.add_argument("--out", default=str(REPO / "runs" / "bench-heatmap"), help="output folder (default runs/bench-heatmap)")
    p.add_argument("--seed", type=int, default=0, help="training seed (default 0)")
    p.add_argument("--data-seed", type=int, default=0, help="synthetic generator seed (default 0)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's own choice)")
    p.add_argument("--device", default="cpu", help="torch device of training and evaluation (default cpu)")
    p.add_argument("--quiet", action="store_true", help="no per-epoch log lines from the bundle")
    return p


def _num(v: Any, fmt: str = "{:.2f}") -> str:
    return "—" if v is None or not math.isfinite(float(v)) else fmt.format(float(v))


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """Markdown table; each row: ``model``, ``summary``
    (:meth:`~monai_spine.metrics.corners.CornerErrorAccumulator.summary`), ``train_s`` and ``spearman``
    (rho of sigma vs P2P)."""
    units = {"mm" if r["summary"].get("spacing_known", 1.0) == 1.0 else "px" for r in rows}
    if len(units) != 1:
        raise ValueError(f"rows mix units {sorted(units)}")
    u = units.pop()
    header = ["model", f"mean {u}", f"median {u}", f"std {u}", f"P2C mean {u}", f"fit failure > 3 {u}", "mean BC",
              "train s", "Spearman σ"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for r in rows:
        s = r["summary"]
        ff = s.get(f"p2p_fit_failure_3.0{u}", float("nan"))
        cells = [
            r["model"], _num(s.get(f"p2p_mean_{u}")), _num(s.get(f"p2p_median_{u}")), _num(s.get(f"p2p_std_{u}")),
            _num(s.get(f"p2c_mean_{u}")), "—" if not math.isfinite(ff) else f"{100 * ff:.1f} %",
            _num(s.get("bc_mean"), "{:.4f}"), _num(r.get("train_s"), "{:.0f}"), _num(r.get("spearman"), "{:+.3f}"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _spearman(acc: Any) -> float:
    import numpy as np
    from scipy.stats import spearmanr

    p2p, _, _, _ = acc.errors()
    sig = acc.sigmas()
    ok = np.isfinite(p2p) & np.isfinite(sig)
    if ok.sum() < 3 or np.ptp(sig[ok]) == 0 or np.ptp(p2p[ok]) == 0:
        return float("nan")
    return float(spearmanr(sig[ok], p2p[ok]).statistic)


def _uniform_maps() -> Any:
    """Stands in for the network: flat maps, so every corner falls back to the prior (a parameter-free
    ``torch.nn.Module``, as the predictor moves and inspects its network)."""
    import torch

    class UniformMaps(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.full_like(x, 1.0 / (x.shape[-1] * x.shape[-2]))

    return UniformMaps()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("MONAI_SPINE_CACHE", str(out / "cache"))

    import torch

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    import logging

    from monai.bundle import run

    from monai_spine.data.datasets import bundle_splits
    from monai_spine.engines.demo import bundle_dir
    from monai_spine.engines.heatmap import heatmap_datalists
    from monai_spine.evaluation.corners import evaluate_corner_model
    from monai_spine.inference.heatmap import CornerPredictor

    bundle = bundle_dir()
    if args.quiet:
        logging.basicConfig(level=logging.WARNING)
    # validate at the last epoch too, so the kept checkpoint has seen the whole training
    val_interval = next(d for d in range(max(min(args.val_interval, args.epochs), 1), 0, -1) if args.epochs % d == 0)
    overrides = {
        "bundle_root": str(bundle), "ckpt_dir": str(out / "models"), "mlflow_dir": str(out / "mlruns"),
        "output_dir": str(out / "eval"), "epochs": args.epochs, "batch_size": args.batch_size,
        "fcn_width": args.width, "learning_rate": args.lr, "val_interval": val_interval, "seed": args.seed,
        "device": f"$torch.device('{args.device}')",
        "synthetic#n": args.n, "synthetic#seed": args.data_seed, "synthetic#hard_case_rate": args.hard_case_rate,
        "synthetic#size": [args.size, args.size], "patches#per_image": args.patches_per_image, "region": args.region,
        "patches#scales": list(args.scales), "patches#rotations_deg": list(args.rotations),
        "patches#grid": [int(args.grid[0]), float(args.grid[1])],
    }
    command = ["python", "scripts/bench_heatmap.py", *(sys.argv[1:] if argv is None else argv)]
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    log(f"training the heatmap FCN (width {args.width}) for {args.epochs} epochs into {out}")
    t0 = time.time()
    run(run_id="training", meta_file=str(bundle / "configs" / "metadata.json"),
        config_file=[str(bundle / "configs" / "train.json"), str(bundle / "configs" / "heatmap_train.json")],
        logging_file=False if args.quiet else str(bundle / "configs" / "logging.conf"), **overrides)
    train_s = time.time() - t0

    splits = bundle_splits(None, args.region, args.n, args.data_seed, args.hard_case_rate, (args.size, args.size))
    test = heatmap_datalists(splits, args.region)["test"]
    log(f"evaluating on {len(test)} test images")
    predictor = CornerPredictor.from_ckpt_dir(out / "models", device=args.device)
    fcn, fcn_acc = evaluate_corner_model(predictor, test)
    prior_only = CornerPredictor(_uniform_maps(), predictor.spec)
    base, base_acc = evaluate_corner_model(prior_only, test, with_bc=False)
    rows = [
        {"model": "prior only (clicked centres)", "summary": base, "train_s": float("nan"), "spearman": _spearman(base_acc)},
        {"model": f"FCN w={args.width} + prior", "summary": fcn, "train_s": train_s, "spearman": _spearman(fcn_acc)},
    ]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    header = "\n".join([
        f"command: `{shlex.join(command)}`",
        f"torch threads: {torch.get_num_threads()}, CPU cores: {cores}, device: {args.device}",
        f"settings: {args.n} synthetic {args.region} images {args.size}x{args.size} px (hard-case rate {args.hard_case_rate}), "
        f"FCN width {args.width}, {args.epochs} epochs x {args.batch_size} images x {args.patches_per_image} patches/step, "
        f"lr {args.lr}, patches 64 px, grid {int(args.grid[0])}x{int(args.grid[0])} +-{args.grid[1]}, "
        f"scales {args.scales}, rotations {args.rotations}",
        f"test split: {int(fcn['images'])} images, {int(fcn['vertebrae'])} vertebrae, {int(fcn['p2p_count'])} corners",
    ])
    notes = ("P2P: corner point-to-point error; P2C: distance from the corner to the annotated body outline; fit failure: "
             "corners with P2P > 3; BC: mean Bhattacharyya coefficient of the test patches' maps (paper: 0.9794); "
             "Spearman σ: rank correlation of each corner's σ and its P2P error; train s: wall seconds of the bundle's "
             "training run (validation included). Centres: means of the annotated corners.")
    report = f"{header}\n\n{format_table(rows)}\n\n{notes}"
    (out / "table.md").write_text(report + "\n", encoding="utf-8")
    def clean(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, float) and not math.isfinite(v):
            return None
        return v

    (out / "results.json").write_text(json.dumps({"command": command, "rows": clean(rows)}, indent=1), encoding="utf-8")
    print("\n" + report, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
