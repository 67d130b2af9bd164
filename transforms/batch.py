"""Augmentation of whole batches of cached vertebra crops: random zoom, shift and label-swapping flip.

Crop-based regressor training spends most of a step preparing crops when every crop is cut from
its radiograph again (random padding, percentile scaling, CLAHE). The bundle instead caches one
deterministic crop per vertebra with the largest margin (``CacheDataset``) and augments the batch
in one ``torch.nn.functional.grid_sample`` call (:class:`RandZoomFlipKeypointsBatch`):

* zoom in by ``s ~ U(min_scale, 1)`` (same in x and y, so a crop is never distorted) with the
  window shifted at random but always containing the central ``min_scale`` part of the crop — the
  vertebra and its base margin — which is what per-side random padding of ``[0, pad]`` does;
* with probability ``flip_prob`` mirror along the width and swap left/right (anterior/posterior)
  labels with the scheme's flip permutation;
* with probability ``alt_prob`` take a precomputed alternative image (e.g. the CLAHE copy).

Keypoints are in edge-based crop fractions ``(x + 0.5) / W`` and map exactly: a window
``[x0, x0 + s]`` of the cached crop gives ``x_frac' = (x_frac - x0) / s`` (flipped:
``1 - x_frac'``), which is the inverse of the sampling grid ``u_src = x0 + s * u_out`` used with
``align_corners=False``.
"""

from __future__ import annotations

from typing import Any, Hashable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.transforms import MapTransform, Randomizable, Transform

__all__ = ["RandZoomFlipKeypointsBatch", "RandZoomFlipKeypointsBatchd"]


class RandZoomFlipKeypointsBatch(Randomizable, Transform):
    """Array transform on a batch: per-sample random zoom/shift, flip with label swap, alternative image.

    Args:
        min_scale: smallest window size as a fraction of the crop (in (0, 1]); 1 disables the zoom.
        flip_prob: probability of a horizontal flip per sample.
        flip_perm: ``(K,)`` permutation of point labels under a horizontal flip (required when
            ``flip_prob > 0``); ``flipped[:, j] = points[:, perm[j]]``.
        alt_prob: probability of using the alternative image per sample (when one is given).

    Call:
        ``images (B, C, H, W)``, ``keypoints_frac (B, K, 2)`` and optional ``extra (B, K, ...)``
        per-point values permuted with the points (e.g. visibility), optional ``alt_images`` of the
        images' shape -> ``(images, keypoints_frac, extra)`` augmented (new tensors).
    """

    def __init__(
        self,
        min_scale: float = 0.8,
        flip_prob: float = 0.0,
        flip_perm: Sequence[int] | None = None,
        alt_prob: float = 0.0,
    ) -> None:
        if not 0.0 < float(min_scale) <= 1.0:
            raise ValueError(f"min_scale must be in (0, 1], got {min_scale}")
        for name, p in (("flip_prob", flip_prob), ("alt_prob", alt_prob)):
            if not 0.0 <= float(p) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {p}")
        if float(flip_prob) > 0 and flip_perm is None:
            raise ValueError("flip_perm is required when flip_prob > 0")
        self.min_scale = float(min_scale)
        self.flip_prob = float(flip_prob)
        self.flip_perm = None if flip_perm is None else np.asarray(flip_perm, dtype=np.int64)
        self.alt_prob = float(alt_prob)
        self._params: dict[str, np.ndarray] = {}

    def randomize(self, data: Any = None) -> None:
        """Draw per-sample scale, window origin (x0, y0), flip and alternative choice; ``data`` = batch size."""
        b = int(data)
        s = self.R.uniform(self.min_scale, 1.0, size=b)
        a = (1.0 - self.min_scale) / 2.0  # the part of each side that a window may leave out
        lo = np.maximum(0.0, 1.0 - a - s)
        hi = np.minimum(a, 1.0 - s)
        origin = lo[:, None] + self.R.uniform(size=(b, 2)) * (hi - lo)[:, None]
        self._params = {
            "scale": s,
            "origin": origin,
            "flip": self.R.uniform(size=b) < self.flip_prob,
            "alt": self.R.uniform(size=b) < self.alt_prob,
        }

    def __call__(
        self,
        images: torch.Tensor,
        keypoints_frac: torch.Tensor,
        extra: torch.Tensor | None = None,
        alt_images: torch.Tensor | None = None,
        randomize: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        if images.ndim != 4:
            raise ValueError(f"images must be (B, C, H, W), got shape {tuple(images.shape)}")
        b = images.shape[0]
        if keypoints_frac.ndim != 3 or keypoints_frac.shape[0] != b or keypoints_frac.shape[-1] != 2:
            raise ValueError(f"keypoints_frac must be ({b}, K, 2), got shape {tuple(keypoints_frac.shape)}")
        if alt_images is not None and alt_images.shape != images.shape:
            raise ValueError(f"alt_images must have the images' shape {tuple(images.shape)}, got {tuple(alt_images.shape)}")
        if randomize:
            self.randomize(b)
        p = self._params
        dev, dt = images.device, images.dtype
        s = torch.as_tensor(p["scale"], dtype=dt, device=dev)
        x0 = torch.as_tensor(p["origin"][:, 0], dtype=dt, device=dev)
        y0 = torch.as_tensor(p["origin"][:, 1], dtype=dt, device=dev)
        flip = torch.as_tensor(p["flip"], device=dev)
        sign = torch.where(flip, -torch.ones_like(s), torch.ones_like(s))
        # normalised grid coordinate g = 2u - 1: g_src = s * g_out + (2 x0 + s - 1); flip: g_out -> -g_out
        theta = torch.zeros(b, 2, 3, dtype=dt, device=dev)
        theta[:, 0, 0] = s * sign
        theta[:, 0, 2] = 2 * x0 + s - 1
        theta[:, 1, 1] = s
        theta[:, 1, 2] = 2 * y0 + s - 1
        src = images
        if alt_images is not None and p["alt"].any():
            pick = torch.as_tensor(p["alt"], device=dev).view(b, 1, 1, 1)
            src = torch.where(pick, alt_images, images)
        grid = F.affine_grid(theta, list(images.shape), align_corners=False)
        out = F.grid_sample(src, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

        kp = keypoints_frac.to(dt)
        u = (kp[..., 0] - x0[:, None]) / s[:, None]
        v = (kp[..., 1] - y0[:, None]) / s[:, None]
        u = torch.where(flip[:, None], 1.0 - u, u)
        kp_out = torch.stack([u, v], dim=-1).to(keypoints_frac.dtype)
        ex = extra
        if flip.any() and self.flip_perm is not None:
            perm = torch.as_tensor(self.flip_perm, device=dev)
            if perm.numel() != kp.shape[1]:
                raise ValueError(f"flip_perm has {perm.numel()} entries, keypoints have {kp.shape[1]}")
            kp_out = torch.where(flip[:, None, None], kp_out[:, perm], kp_out)
            if ex is not None:
                fl = flip.view(b, *([1] * (ex.ndim - 1)))
                ex = torch.where(fl, ex[:, perm], ex)
        return out, kp_out, ex


class RandZoomFlipKeypointsBatchd(Randomizable, MapTransform):
    """Dictionary wrapper of :class:`RandZoomFlipKeypointsBatch` on a collated batch.

    The image ``keys`` (all with one draw) are augmented; ``label_key`` holds ``(B, K, 3)`` targets
    (fractions and visibility, :class:`monai_spine.transforms.targets.KeypointTargetd`) whose coordinates move and
    whose points (visibility included) are permuted by a flip; ``alt_key`` names the precomputed
    alternative of the first image key (e.g. its CLAHE copy), dropped from the output.

    Args:
        keys: image keys of the batch.
        label_key: the target key.
        alt_key: alternative image key, or None.
        min_scale, flip_prob, flip_perm, alt_prob: see :class:`RandZoomFlipKeypointsBatch`.
        allow_missing_keys: skip absent image keys.
    """

    def __init__(
        self,
        keys: KeysCollection = "image",
        label_key: str = "label",
        alt_key: str | None = "image_clahe",
        min_scale: float = 0.8,
        flip_prob: float = 0.0,
        flip_perm: Sequence[int] | None = None,
        alt_prob: float = 0.0,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        self.label_key = label_key
        self.alt_key = alt_key
        self.aug = RandZoomFlipKeypointsBatch(min_scale, flip_prob, flip_perm, alt_prob)

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None) -> "RandZoomFlipKeypointsBatchd":
        super().set_random_state(seed, state)
        self.aug.set_random_state(seed, state)
        return self

    def randomize(self, data: Any = None) -> None:
        """One draw for the whole batch (``data`` = batch size), shared by all keys."""
        self.aug.randomize(data)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        if self.label_key not in d:
            raise KeyError(f"{type(self).__name__}: the batch has no {self.label_key!r}")
        label = torch.as_tensor(d[self.label_key])
        keys = list(self.key_iterator(d))
        if not keys:
            return d
        self.randomize(torch.as_tensor(d[keys[0]]).shape[0])
        alt = d.pop(self.alt_key, None) if self.alt_key else None
        new_label = None
        for i, key in enumerate(keys):
            img = torch.as_tensor(d[key])
            out, kp, vis = self.aug(
                img, label[..., :2], label[..., 2:], alt_images=torch.as_tensor(alt) if (i == 0 and alt is not None) else None,
                randomize=False,
            )
            d[key] = out
            new_label = torch.cat([kp, vis], dim=-1)
        d[self.label_key] = new_label
        return d
