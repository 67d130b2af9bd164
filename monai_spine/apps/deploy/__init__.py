"""MONAI Deploy App SDK application for spine radiographs (``python -m monai_spine.apps.deploy -i IN -o OUT``).

DICOM folder in -> the spine radiograph series (DX/CR, single-frame 2D, with a pixel spacing) ->
detector + BayeRegX keypoints with uncertainty + clinical measurements -> a TID 1500 DICOM SR, the
prediction JSON, the overlay PNG and the measurement JSON/CSV. See ``docs/deploy.md``.

Modules: :mod:`.selection` (series choice), :mod:`.models` (models folder -> pipeline),
:mod:`.processing` (predict + measure), :mod:`.staging` (all-or-nothing output) need only the main
stack; :mod:`.sr` needs highdicom; :mod:`.operators` and :mod:`.app` need the MONAI Deploy App SDK
(``.venv-deploy``, built by ``scripts/deploy_env.sh``). Importing this package imports none of them,
so ``monai_spine`` stays importable without the SDK.
"""

from __future__ import annotations

__all__: list[str] = []
