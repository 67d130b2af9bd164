"""MONAI-style transforms of monai-spine (array transforms plus ``...d`` dictionary wrappers).

The repository keeps this folder at its top level; it is installed as ``monai_spine.transforms``
(setup.py maps the package to this folder, for wheels and editable installs), so there is no
top-level ``transforms`` package. Usable from MONAI bundle configs as
``{"_target_": "monai_spine.transforms.VertebraCropd", ...}``.
"""

from __future__ import annotations

from .intensity import CLAHE, CLAHEd, RandCLAHEd, clahe
from .crop import RandVertebraCropd, VertebraCrop, VertebraCropd
from .flip import FlipKeypoints, FlipKeypointsd, RandFlipKeypointsd, flip_box_px, flip_image, flip_keypoints_px, permute_labels
from .keypoints import (
    DenormalizeKeypoints,
    DenormalizeKeypointsd,
    NormalizeKeypoints,
    NormalizeKeypointsd,
    crop_to_image_px,
    frac_to_image_px,
    frac_to_px_like,
    image_to_crop_px,
    px_to_frac_like,
)

__all__ = [
    "CLAHE",
    "CLAHEd",
    "RandCLAHEd",
    "clahe",
    "FlipKeypoints",
    "FlipKeypointsd",
    "RandFlipKeypointsd",
    "VertebraCrop",
    "VertebraCropd",
    "RandVertebraCropd",
    "NormalizeKeypoints",
    "DenormalizeKeypoints",
    "NormalizeKeypointsd",
    "DenormalizeKeypointsd",
    "crop_to_image_px",
    "image_to_crop_px",
    "frac_to_image_px",
    "flip_image",
    "flip_keypoints_px",
    "flip_box_px",
    "permute_labels",
    "px_to_frac_like",
    "frac_to_px_like",
]

try:  # written by another module owner; optional until integrated
    from .io import LoadXray, LoadXrayd  # noqa: F401

    __all__ += ["LoadXray", "LoadXrayd"]
except ImportError:  # pragma: no cover - depends on transforms/io.py being present
    pass
