"""How many crop re-cuts (``refine_passes``) the shipped regressor needs in the shipped detector's boxes.

Prints a table (mean / median / p90 point error in mm per pass count) on one split of the synthetic
set the shipped lateral models were trained on (160 films, generator seed 1000), the validation split
by default: the split the shipped count was chosen on. ``--export-split DIR`` instead links a split's
films and annotations into DIR, for the ``predict`` / ``report`` / ``calibrate`` commands of
docs/results.md.

Example::

    python scripts/bench_refine.py --region cervical --passes 0 1 2 3
    python scripts/bench_refine.py --region lumbar --split test --export-split runs/films-lumbar-test
"""

import argparse
import sys
from pathlib import Path
from typing import Sequence

from monai_spine.bench.refine import export_split, refine_errors, refine_table
from monai_spine.bench.regressor import BenchSettings, split_labels


def main(argv: Sequence[str] | None = None) -> int:
    """The table of pass counts, or ``--export-split`` a split's films."""
    root = Path(__file__).resolve().parents[1]
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--region", choices=("cervical", "lumbar"), default="cervical")
    p.add_argument("--n", type=int, default=160, help="synthetic films, all splits (default 160: the shipped models')")
    p.add_argument("--data-seed", type=int, default=1000, help="generator seed (default 1000: the shipped models')")
    p.add_argument("--hard-case-rate", type=float, default=0.3)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--split", choices=("training", "validation", "test"), default="validation")
    p.add_argument("--passes", type=int, nargs="+", default=[0, 1, 2, 3])
    p.add_argument("--mc-samples", type=int, default=10)
    p.add_argument("--models-root", default=str(root / "bundle" / "models"),
                   help="model-zoo root: <root>/<region>/{detector,regressor}")
    p.add_argument("--export-split", metavar="DIR", default=None,
                   help="only link the split's films and annotations into DIR (for predict / report)")
    a = p.parse_args(argv)
    settings = BenchSettings(n=a.n, size=a.size, hard_case_rate=a.hard_case_rate, data_seed=a.data_seed, region=a.region)
    labels = split_labels(settings, root / "bundle", split=a.split)
    if a.export_split:
        print(f"{len(labels)} {a.split} films linked into {export_split(labels, a.export_split)}")
        return 0
    zoo = Path(a.models_root) / a.region
    rows = refine_errors(labels, zoo / "regressor", zoo / "detector", a.passes, a.mc_samples)
    print(f"{a.region}, {a.split} split: {len(labels)} films ({settings.describe().split(', epochs')[0]}); "
          f"boxes from {zoo / 'detector'}, regressor {zoo / 'regressor'}, T = {a.mc_samples}\n")
    print(refine_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
