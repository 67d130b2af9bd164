"""Array conversion shared by the codecs."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

__all__: list[str] = []


def _np(x: Any) -> np.ndarray:
    """A numpy array of ``x`` (torch tensors and MONAI MetaTensors detached, as float)."""
    if isinstance(x, torch.Tensor):
        x = x.as_tensor() if hasattr(x, "as_tensor") else x
        return x.detach().float().cpu().numpy()
    return np.asarray(x)
