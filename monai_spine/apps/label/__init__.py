"""MONAI Label app of monai-spine: vertebra keypoints, clicked-centre corners, fine-tuning and active learning.

Start it with ``scripts/label_server.sh`` (which builds the separate ``.venv-label`` with MONAI Label
0.8.5) or ``.venv-label/bin/monailabel start_server --app monai_spine/apps/label --studies DIR``;
see ``docs/label.md``. The work is in :mod:`monai_spine.apps.label.lib.core` (configuration),
:mod:`~monai_spine.apps.label.lib.models` (models and predictions), :mod:`~monai_spine.apps.label.lib.clicks`
(clicked centres), :mod:`~monai_spine.apps.label.lib.labels` (submitted labels) and
:mod:`~monai_spine.apps.label.lib.training` (fine-tuning), and :mod:`~monai_spine.apps.label.lib.uploads`
holds the per-request upload record; these import without MONAI Label. The other ``lib`` modules and
``main.py`` need the ``monailabel`` package.
"""

from __future__ import annotations

__all__: list[str] = []
