"""Training targets built from keypoints: the regressor's ``(K, 3)`` label."""

from __future__ import annotations

from typing import Hashable, Mapping

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Transform

__all__ = ["KeypointTarget", "KeypointTargetd"]


class KeypointTarget(Transform):
    """Stack fractional keypoints (K, 2) and visibility (K,) into a float32 (K, 3) target.

    The regressor losses (:mod:`monai_spine.losses.gaussian_nll`) read ``y[..., :2]`` as fractions
    and ``y[..., 2]`` as the visibility mask; invisible or non-finite points get coordinates 0.5 (the
    crop centre) so that no NaN reaches the loss, and visibility 0.
    """

    def __call__(self, keypoints_frac, visible=None) -> torch.Tensor:
        kp = torch.as_tensor(np.asarray(keypoints_frac, dtype=np.float32))
        if kp.ndim != 2 or kp.shape[-1] != 2:
            raise ValueError(f"keypoints_frac must have shape (K, 2), got {tuple(kp.shape)}")
        vis = torch.ones(kp.shape[0], dtype=torch.bool) if visible is None else torch.as_tensor(np.asarray(visible))
        if vis.shape != kp.shape[:1]:
            raise ValueError(f"visible must have shape ({kp.shape[0]},), got {tuple(vis.shape)}")
        vis = vis.bool() & torch.isfinite(kp).all(-1)
        kp = torch.where(vis[:, None], kp, torch.full_like(kp, 0.5))
        return torch.cat([kp, vis[:, None].float()], dim=-1)


class KeypointTargetd(MapTransform):
    """Dictionary wrapper of :class:`KeypointTarget`: ``d[label_key] = target(d[key], d[visible_key])``.

    Args:
        keys: fractional keypoint keys (K, 2) (default ``"keypoints_frac"``).
        visible_key: the (K,) visibility mask key (absent: all visible).
        label_key: where the (K, 3) target goes (one key; with several ``keys`` the key name is
            suffixed with ``_target``).
    """

    def __init__(
        self,
        keys: KeysCollection = "keypoints_frac",
        visible_key: str = "visible",
        label_key: str = "label",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.visible_key = visible_key
        self.label_key = label_key
        self.target = KeypointTarget()

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        keys = list(self.key_iterator(d))
        for key in keys:
            out_key = self.label_key if len(self.keys) == 1 else f"{key}_target"
            d[out_key] = self.target(d[key], d.get(self.visible_key))
        return d
