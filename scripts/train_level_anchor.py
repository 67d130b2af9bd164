"""Train the AP detector's level anchor (a patch classifier of level groups) into the detector's model folder.

The anchor is trained on the dataset's training split, its weight in the chain decoding is chosen on
the validation split (right-level rate; 0 = no anchor is always a candidate), and both are saved
beside the detector (``level_anchor_model.json``, ``level_anchor.pt``).

Example::

    python scripts/train_level_anchor.py --dataset /tmp/aasce/cache/aasce-seed0-0.7-0.15-0.15 \
        --detector-dir bundle/models/ap/detector
"""

import sys

from monai_spine.engines.level_anchor import main

if __name__ == "__main__":
    sys.exit(main())
