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

import sys

from monai_spine.bench.refine import main

if __name__ == "__main__":
    sys.exit(main())
