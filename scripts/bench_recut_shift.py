"""Does a point's shift between crop re-cuts rank the regressor's errors better than its sigma_p? (issue 14)

Prints a table of Spearman correlations with the error for the sigma kinds, the shift between the
last re-cut and its neighbours, and their combinations, over the films of a dataset folder (for
example a split linked by ``scripts/bench_refine.py --export-split``), with the shipped detector's
boxes and regressor of the region.

Example::

    python scripts/bench_refine.py --region cervical --split validation --export-split runs/films-cervical-val
    python scripts/bench_recut_shift.py --region cervical --films runs/films-cervical-val
"""

import argparse
import sys
from pathlib import Path
from typing import Sequence

from monai_spine.bench.refine import recut_shift_signal, recut_shift_table


def main(argv: Sequence[str] | None = None) -> int:
    """Print the table for one region's shipped models over one folder of annotated films."""
    root = Path(__file__).resolve().parents[1]
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--region", choices=("cervical", "lumbar"), default="cervical")
    p.add_argument("--films", required=True, help="folder of annotated films (annotation JSON beside each image)")
    p.add_argument("--models-root", default=str(root / "bundle" / "models"))
    p.add_argument("--mc-samples", type=int, default=10)
    a = p.parse_args(argv)
    labels = sorted(str(f) for f in Path(a.films).glob("*.json") if f.name != "dataset.json")
    zoo = Path(a.models_root) / a.region
    print(f"{a.region}: {len(labels)} films of {a.films}; boxes from {zoo / 'detector'}, regressor {zoo / 'regressor'}\n")
    print(recut_shift_table(recut_shift_signal(labels, zoo / "regressor", zoo / "detector", a.mc_samples)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
