"""monai-spine: vertebra keypoints with uncertainty on spinal X-rays, as a MONAI workflow."""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["__version__"]
