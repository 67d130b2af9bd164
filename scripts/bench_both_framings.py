"""The lumbar regressor trained on both framings (annotation boxes and the shipped detector's boxes): a one-off
experiment of docs/results.md (issue 14), kept so its figures can be reproduced.

It writes a dataset folder whose training split holds every training film twice (annotation boxes, and
the shipped lumbar detector's boxes via :func:`monai_spine.bench.aasce.detector_box_dataset`) and whose
validation split holds the detector's boxes, trains the shipped recipe on it for half the epochs (the
same number of steps), and prints the re-cut table of ``scripts/bench_refine.py`` on the validation films.

Example::

    python scripts/bench_both_framings.py --out runs/both-framings
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(REPO / "runs" / "both-framings"))
    p.add_argument("--epochs", type=int, default=75)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--width", type=float, default=None, help="network width (default: the bundle's 0.25)")
    p.add_argument("--fc-features", type=int, default=None, help="head width (default: the bundle's 256)")
    args = p.parse_args(argv)
    import torch

    from monai_spine.bench.aasce import detector_box_dataset
    from monai_spine.data.datasets import bundle_splits
    from monai_spine.engines.ship import train_shipped_regressor
    from monai_spine.inference.detector import VertebraDetector

    torch.set_num_threads(args.threads)
    out = Path(args.out).resolve()
    sp = bundle_splits(None, "lumbar", 160, 1000, 0.3, (512, 512))  # the shipped lumbar models' films
    (out / "split").mkdir(parents=True, exist_ok=True)
    (out / "split" / "dataset.json").write_text(json.dumps(
        {"name": "lumbar-1000", "region": "lumbar", **{s: [{"label": q} for q in v] for s, v in sp.items()}}))
    det_dir = REPO / "bundle" / "models" / "lumbar" / "detector"
    detector_box_dataset(out / "split", out / "detbox", VertebraDetector.from_checkpoint(det_dir))
    d = json.loads((out / "detbox" / "dataset.json").read_text())
    mix = {"name": "lumbar-1000-both-framings", "region": "lumbar",
           "training": [{"label": q} for q in sp["training"]]
           + [{"label": str(out / "detbox" / e["label"])} for e in d["training"]],
           "validation": [{"label": str(out / "detbox" / e["label"])} for e in d["validation"]],
           "test": [{"label": q} for q in sp["test"]]}
    (out / "mix").mkdir(exist_ok=True)
    (out / "mix" / "dataset.json").write_text(json.dumps(mix, indent=1))
    model = out / "models" / "lumbar" / "regressor"
    rec = train_shipped_regressor("lumbar", model, out / "work", epochs=args.epochs,
                                  init_checkpoint=str(REPO / "bundle/models/cervical/regressor/model.pt"),
                                  command=["python", "scripts/bench_both_framings.py", *(argv or sys.argv[1:])],
                                  extra={"spatial_size": [160, 320], "dataset_dir": str(out / "mix"),
                                         **({"network_width": args.width} if args.width is not None else {}),
                                         **({"fc_features": args.fc_features} if args.fc_features is not None else {})})
    print(f"trained in {rec['train_seconds']:.0f} s; test (annotation boxes) mean "
          f"{rec['metrics'].get('val_mean_mm', float('nan')):.2f} mm")
    link = out / "models" / "lumbar" / "detector"
    if not link.exists():
        link.symlink_to(det_dir)
    return subprocess.call([sys.executable, str(REPO / "scripts" / "bench_refine.py"), "--region", "lumbar",
                            "--split", "validation", "--passes", "0", "1", "2", "--models-root", str(out / "models")])


if __name__ == "__main__":
    sys.exit(main())
