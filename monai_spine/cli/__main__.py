"""``python -m monai_spine.cli``: the ``monai-spine`` command."""

import sys

from monai_spine.cli import main

sys.exit(main())
