"""Benchmark the vertebra detector (level heatmaps on whole radiographs) on synthetic lateral radiographs, CPU budget.

For each region (default: cervical C3-C7 and lumbar L1-L5) the detector is trained by the bundle
(``configs/train.json`` + ``configs/detector_train.json``, in this process, as ``python -m monai.bundle
run training ...`` would) on synthetic radiographs (generated once under ``$MONAI_SPINE_CACHE``,
default ``OUT/cache``; split 70/15/15 by image), and the checkpoint the bundle kept (best validation
penalised centre error) is evaluated on the held-out test split by
:class:`monai_spine.inference.detector.VertebraDetector`, reading each DICOM file as a user would.
Two rows per region: the bundle's ``sequence`` decoding (order-preserving level assignment) and the
plain per-level ``argmax`` of the same network, so the effect of the decoding is visible.

Printed (and written to ``OUT/table.md``, details in ``OUT/results.json``): one markdown table with
recall (a vertebra is found when the predicted centre of *its level* lies inside its annotated box and
nearer to its own annotated centre than to any other; :func:`monai_spine.metrics.detection.match_detections`),
precision, the share of test images whose every vertebra is found, the mean and largest centre error
of the found vertebrae in mm, the mean box IoU, the training wall time and the inference time per image.

Example (the documented benchmark)::

    python scripts/bench_detector.py --threads 1 --out runs/bench-detector

Duration with the defaults (per region 40 images of 256 x 256 px: 28 / 6 / 6 training / validation /
test; network input 64 x 64, BasicUNet features 8-8-16-32-64-8 (125 k parameters); 150 epochs of 7 steps
of 4 images = 1050 optimisation steps; validation every 50 epochs): about 2 minutes per region with
``--threads 1`` on this 2-core machine while other jobs used the cores (training 93-96 s, one step about
0.08 s; evaluating both decodings 1 s), plus about 30 s of fixed costs (config parsing, the MLflow store,
generating the synthetic sets). Measured so (region by region, ``--regions cervical`` then
``--regions lumbar``, otherwise the defaults; test split, and the validation split scored the same way
with the kept checkpoint)::

    region    split       decoding  recall   all found  centre error mean / max mm  box IoU
    cervical  test        sequence  100.0 %  6 / 6      0.35 / 1.03                 0.76
    cervical  test        argmax     50.0 %  0 / 6      0.35 / 0.79                 0.76
    cervical  validation  sequence   83.3 %  5 / 6      0.35 / 0.68                 0.78
    lumbar    test        sequence  100.0 %  6 / 6      0.64 / 2.49                 0.75
    lumbar    test        argmax     20.0 %  0 / 6      0.59 / 1.12                 0.79
    lumbar    validation  sequence  100.0 %  6 / 6      0.63 / 1.31                 0.76

(30 vertebrae per split and region; precision equalled recall in every row.) The cervical validation
miss is one whole image with every level shifted by one (the column touches the top edge and the young
network's level heatmaps are flat there): more epochs, data or a larger input are the remedy. With the
per-level ``argmax``, neighbouring levels collapse onto one vertebra while the network is young.

Larger images and input (closer to real radiographs; about 3 times slower per step)::

    python scripts/bench_detector.py --size 512 --spatial 128 --sigma 2.0 --threads 1 --out runs/bench-detector-128

Smoke run (about 1 minute)::

    python scripts/bench_detector.py --regions cervical --n 8 --epochs 2 --features 4 4 8 8 16 4 \\
        --val-interval 1 --out /tmp/bench-detector
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
    p.add_argument("--regions", nargs="+", default=["cervical", "lumbar"], choices=["cervical", "lumbar"],
                   help="synthetic regions to train and test, one detector each (default cervical lumbar)")
    p.add_argument("--n", type=int, default=40, help="synthetic images per region, all splits (default 40)")
    p.add_argument("--size", type=int, default=256, help="image side in pixels (default 256)")
    p.add_argument("--hard-case-rate", type=float, default=0.1, help="share of hard-case images (default 0.1)")
    p.add_argument("--spatial", type=int, default=64, help="network input side, multiple of 16 (default 64)")
    p.add_argument("--features", type=int, nargs=6, default=[8, 8, 16, 32, 64, 8],
                   help="BasicUNet features (default 8 8 16 32 64 8)")
    p.add_argument("--sigma", type=float, default=1.5, help="target Gaussian sigma, network pixels (default 1.5)")
    p.add_argument("--epochs", type=int, default=150, help="training epochs (default 150)")
    p.add_argument("--batch-size", type=int, default=4, help="images per optimisation step (default 4)")
    p.add_argument("--lr", type=float, default=2e-3, help="Adam learning rate (default 2e-3)")
    p.add_argument("--val-interval", type=int, default=50,
                   help="validate (and keep the best checkpoint) every N epochs; the largest divisor of --epochs "
                        "not above N is used, so the last epoch is validated (default 50)")
    p.add_argument("--score-threshold", type=float, default=0.2, help="detection threshold (default 0.2)")
    p.add_argument("--out", default=str(REPO / "runs" / "bench-detector"),
                   help="output folder (default runs/bench-detector)")
    p.add_argument("--seed", type=int, default=0, help="training seed (default 0)")
    p.add_argument("--data-seed", type=int, default=0, help="synthetic generator seed (default 0)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's own choice; use 1 on a CPU shared with other jobs)")
    p.add_argument("--device", default="cpu", help="torch device of training and evaluation (default cpu)")
    p.add_argument("--quiet", action="store_true", help="no per-epoch log lines from the bundle")
    return p


def _num(v: Any, fmt: str = "{:.2f}") -> str:
    return "—" if v is None or not math.isfinite(float(v)) else fmt.format(float(v))


def _pct(v: Any) -> str:
    return "—" if v is None or not math.isfinite(float(v)) else f"{100 * float(v):.1f} %"


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """Markdown table; each row: ``region``, ``decoding``, ``summary``
    (:meth:`~monai_spine.metrics.detection.DetectionAccumulator.summary`), ``train_s`` and ``s_per_image``."""
    units = {"mm" if r["summary"].get("spacing_known", 1.0) == 1.0 else "px" for r in rows}
    if len(units) != 1:
        raise ValueError(f"rows mix units {sorted(units)}")
    u = units.pop()
    header = ["region", "decoding", "images", "vertebrae", "recall", "precision", "images all found",
              f"centre error mean {u}", f"centre error max {u}", "box IoU", "train s", "s / image"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * (len(header) - 2)) + "|"]
    for r in rows:
        s = r["summary"]
        cells = [
            r["region"], r["decoding"], _num(s.get("images"), "{:.0f}"), _num(s.get("vertebrae"), "{:.0f}"),
            _pct(s.get("recall")), _pct(s.get("precision")), _pct(s.get("images_all_found")),
            _num(s.get(f"centre_error_mean_{u}")), _num(s.get(f"centre_error_max_{u}")), _num(s.get("box_iou_mean")),
            _num(r.get("train_s"), "{:.0f}"), _num(r.get("s_per_image"), "{:.3f}"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _clean(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_clean(x) for x in v]
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("MONAI_SPINE_CACHE", str(out / "cache"))

    import torch

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    import dataclasses
    import logging

    from monai.bundle import run

    from monai_spine.data.datasets import bundle_splits
    from monai_spine.engines.demo import bundle_dir
    from monai_spine.engines.detector import detector_datalists
    from monai_spine.evaluation.detector import evaluate_detector
    from monai_spine.inference.detector import VertebraDetector

    bundle = bundle_dir()
    if args.quiet:
        logging.basicConfig(level=logging.WARNING)
    val_interval = next(d for d in range(max(min(args.val_interval, args.epochs), 1), 0, -1) if args.epochs % d == 0)
    command = ["python", "scripts/bench_detector.py", *(sys.argv[1:] if argv is None else argv)]
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    rows: list[dict[str, Any]] = []
    details: dict[str, Any] = {}
    test_counts = {}
    for region in args.regions:
        ckpt = out / "models" / region
        overrides = {
            "bundle_root": str(bundle), "ckpt_dir": str(ckpt), "mlflow_dir": str(out / "mlruns"),
            "output_dir": str(out / "eval"), "region": region, "epochs": args.epochs, "batch_size": args.batch_size,
            "val_batch_size": args.batch_size, "learning_rate": args.lr, "val_interval": val_interval,
            "seed": args.seed, "device": f"$torch.device('{args.device}')",
            "synthetic#n": args.n, "synthetic#seed": args.data_seed, "synthetic#hard_case_rate": args.hard_case_rate,
            "synthetic#size": [args.size, args.size], "detector#spatial_size": [args.spatial, args.spatial],
            "detector#features": list(args.features), "detector#sigma_px": args.sigma,
            "detector#score_threshold": args.score_threshold,
        }
        log(f"training the {region} detector ({args.spatial} px input) for {args.epochs} epochs into {ckpt}")
        t0 = time.time()
        run(run_id="training", meta_file=str(bundle / "configs" / "metadata.json"),
            config_file=[str(bundle / "configs" / "train.json"), str(bundle / "configs" / "detector_train.json")],
            logging_file=False if args.quiet else str(bundle / "configs" / "logging.conf"), **overrides)
        train_s = time.time() - t0

        splits = bundle_splits(None, region, args.n, args.data_seed, args.hard_case_rate, (args.size, args.size))
        test = detector_datalists(splits, region)["test"]
        test_counts[region] = len(test)
        log(f"evaluating the {region} detector on {len(test)} test images")
        det = VertebraDetector.from_checkpoint(ckpt, device=args.device)
        for decoding in ("sequence", "argmax"):
            d = VertebraDetector(det.network, dataclasses.replace(det.spec, decode_method=decoding), args.device)
            t1 = time.time()
            summary, _, per_image = evaluate_detector(d, test)
            rows.append({"region": region, "decoding": decoding, "summary": summary,
                         "train_s": train_s if decoding == "sequence" else float("nan"),
                         "s_per_image": sum(r["seconds"] for r in per_image) / max(len(per_image), 1)})
            details[f"{region}/{decoding}"] = per_image
            log(f"  {decoding}: recall {summary['recall']:.3f} in {time.time() - t1:.1f} s")

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    feats = "-".join(str(f) for f in args.features)
    header = "\n".join([
        f"command: `{shlex.join(command)}`",
        f"torch threads: {torch.get_num_threads()}, CPU cores: {cores}, device: {args.device}",
        f"settings: {args.n} synthetic images per region, {args.size}x{args.size} px "
        f"(hard-case rate {args.hard_case_rate}), "
        f"network input {args.spatial}x{args.spatial}, BasicUNet features {feats}, target sigma {args.sigma} px, "
        f"{args.epochs} epochs x batch {args.batch_size}, lr {args.lr}, score threshold {args.score_threshold}",
        "test split: " + ", ".join(f"{r} {n} images" for r, n in test_counts.items()),
    ])
    notes = (
        "recall: share of annotated vertebrae whose level's predicted centre lies inside the vertebra's annotated "
        "box (box around its keypoints and body outline) and nearest to its own annotated centre; precision: found "
        "/ detected levels; images all found: test images with every vertebra found; centre errors over the found "
        "vertebrae (centre: mean of the four body corners); box IoU: predicted vs annotated box of the found "
        "vertebrae; train s: wall seconds of the bundle's training run (validation included); s / image: detection "
        "time per test radiograph (reading, resizing, network, decoding). The sequence decoding is the bundle's; "
        "argmax is the same network decoded level by level."
    )
    report = f"{header}\n\n{format_table(rows)}\n\n{notes}"
    (out / "table.md").write_text(report + "\n", encoding="utf-8")
    (out / "results.json").write_text(json.dumps({"command": command, "rows": _clean(rows), "per_image": details},
                                                 indent=1), encoding="utf-8")
    print("\n" + report, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
