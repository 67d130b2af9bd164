"""The level anchor: a patch classifier that tells the chain decoding which level group each detector peak shows.

A detector peak is looked at in square patches of ``side_spacings`` times the film's level spacing
(about four vertebrae: the ribs beside a thoracic vertebra; a second, larger patch shows the rib
cage's lower end or the pelvis), one input channel per patch side,
resampled to ``patch_size`` pixels and standardised; a small MONAI ``Classifier`` gives the
probabilities of the level groups of :class:`~monai_spine.codecs.level_groups.LevelGroups` (plus
"above", "below" and "not a centre"), and :meth:`LevelGroups.level_cost` turns them into the chain
assignment's node costs. The anchor lives in the detector's model folder (``level_anchor_model.json``
and its weights beside ``detector_model.json``) and is used by
:meth:`~monai_spine.inference.detector.VertebraDetector.predict_levels` when present.

Patch geometry: the film's level spacing ``spacing_px`` is the median distance between consecutive
level centres (training: annotated centres; inference: the chain's own scale); the patch is
axis-aligned (the chain is assigned before any spine frame is known) and centred on the peak.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from monai_spine.codecs.level_groups import LevelGroups
from monai_spine.data.patches import extract_patch, image_2d, normalize_patch, patch_affine
from monai_spine.inference.model_zoo import load_strict_weights

__all__ = ["LevelAnchorSpec", "LevelAnchor", "anchor_patches", "build_anchor_network", "ANCHOR_SPEC_FILE"]

ANCHOR_SPEC_FILE = "level_anchor_model.json"
_FORMAT = "monai-spine-level-anchor"


def build_anchor_network(patch_size: int, num_classes: int, channels: Sequence[int], strides: Sequence[int],
                         in_channels: int = 1) -> torch.nn.Module:
    """A MONAI ``Classifier`` on ``(in_channels, patch_size, patch_size)`` patches returning class logits."""
    from monai.networks.nets import Classifier

    return Classifier(in_shape=(int(in_channels), int(patch_size), int(patch_size)), classes=int(num_classes),
                      channels=tuple(int(c) for c in channels), strides=tuple(int(s) for s in strides),
                      num_res_units=1, norm="BATCH")


def _side_list(side_spacings: Any) -> tuple[float, ...]:
    sides = tuple(float(v) for v in np.ravel(side_spacings))
    if not sides or not all(np.isfinite(sides)) or min(sides) <= 0:
        raise ValueError(f"side_spacings must be positive, got {side_spacings!r}")
    return sides


def anchor_patches(image: Any, points_px: Any, spacing_px: float, side_spacings: float | Sequence[float] = 4.0,
                   patch_size: int = 48, angle_deg: Any = 0.0) -> np.ndarray:
    """Standardised square patches around points, one channel per patch side: ``(P, C, S, S)`` float32.

    For each side the film is shrunk once (area averaging) so that a patch pixel is about one film
    pixel, then each patch is resampled bilinearly; a small side shows the vertebra, a large one the
    ribs or the pelvis around it.

    Args:
        image: ``(H, W)`` or ``(1, H, W)`` film, any intensity range.
        points_px: ``(P, 2)`` ``(x, y)`` patch centres in film pixels.
        spacing_px: the film's level spacing in film pixels (patch side = ``side * spacing_px``).
        side_spacings: patch side(s) in level spacings, one channel each (``C``).
        patch_size: patch side in patch pixels (``S``).
        angle_deg: scalar or ``(P,)`` patch rotation (training augmentation; 0 at inference).

    Raises:
        ValueError: a bad image or point shape, a spacing or side that is not positive.
    """
    img = image_2d(image, "anchor_patches")
    pts = np.asarray(points_px, dtype=np.float64).reshape(-1, 2)
    if not (np.isfinite(spacing_px) and spacing_px > 0):
        raise ValueError(f"anchor_patches: spacing_px must be positive, got {spacing_px}")
    ang = np.broadcast_to(np.asarray(angle_deg, dtype=np.float64), (pts.shape[0],))
    sides = _side_list(side_spacings)
    out = np.zeros((pts.shape[0], len(sides), patch_size, patch_size), np.float32)
    for ch, side_spacing in enumerate(sides):
        side = side_spacing * float(spacing_px)
        shrink = max(1.0, side / patch_size / 1.5)
        if shrink > 1.0:
            small = cv2.resize(img, (max(1, round(img.shape[1] / shrink)), max(1, round(img.shape[0] / shrink))),
                               interpolation=cv2.INTER_AREA)
            fx, fy = small.shape[1] / img.shape[1], small.shape[0] / img.shape[0]
        else:
            small, fx, fy = img, 1.0, 1.0
        fill = float(np.median(small))
        for i, ((x, y), a) in enumerate(zip(pts, ang)):
            aff = patch_affine((x + 0.5) * fx - 0.5, (y + 0.5) * fy - 0.5, side * 0.5 * (fx + fy), float(a), patch_size)
            out[i, ch] = normalize_patch(extract_patch(small, aff, patch_size, antialias=True, fill=fill))
    return out


def _sides_from_json(v: Any) -> float | tuple[float, ...]:
    return tuple(float(x) for x in v) if isinstance(v, (list, tuple)) else float(v)


@dataclass
class LevelAnchorSpec:
    """What a trained level anchor needs at inference time (saved as ``level_anchor_model.json``).

    Attributes:
        groups: the level groups the classifier tells apart.
        patch_size: patch side in pixels.
        side_spacings: patch side(s) in level spacings, one input channel each.
        channels, strides: the ``Classifier``'s layers.
        weight: chain cost per nat of ``-log p`` (chosen on validation films).
        cap: largest cost per peak and level, in nats.
        checkpoint_file: the weights, beside the spec.
        meta: free-form record (training command, data, metrics).
    """

    groups: LevelGroups
    patch_size: int = 48
    side_spacings: float | tuple[float, ...] = 4.0
    channels: tuple[int, ...] = (8, 16, 32, 64)
    strides: tuple[int, ...] = (2, 2, 2, 2)
    weight: float = 1.0
    cap: float = 4.6
    checkpoint_file: str = "level_anchor.pt"
    meta: dict[str, Any] = field(default_factory=dict)

    def build_network(self) -> torch.nn.Module:
        return build_anchor_network(self.patch_size, self.groups.num_classes, self.channels, self.strides,
                                    len(_side_list(self.side_spacings)))

    def to_dict(self) -> dict[str, Any]:
        return {"format": _FORMAT, "version": 1, "groups": self.groups.to_dict(), "patch_size": self.patch_size,
                "side_spacings": list(self.side_spacings) if isinstance(self.side_spacings, tuple) else self.side_spacings, "channels": list(self.channels), "strides": list(self.strides),
                "weight": self.weight, "cap": self.cap, "checkpoint_file": self.checkpoint_file, "meta": self.meta}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str = "<dict>") -> "LevelAnchorSpec":
        if d.get("format") != _FORMAT:
            raise ValueError(f"{source}: not a level anchor spec (format {d.get('format')!r}, expected {_FORMAT!r})")
        try:
            return cls(groups=LevelGroups.from_dict(d["groups"]), patch_size=int(d["patch_size"]),
                       side_spacings=_sides_from_json(d["side_spacings"]), channels=tuple(d["channels"]),
                       strides=tuple(d["strides"]), weight=float(d["weight"]), cap=float(d["cap"]),
                       checkpoint_file=str(d["checkpoint_file"]), meta=dict(d.get("meta", {})))
        except KeyError as e:
            raise KeyError(f"{source}: level anchor spec misses {e.args[0]!r}") from None

    def save(self, model_dir: str | os.PathLike) -> Path:
        path = Path(model_dir) / ANCHOR_SPEC_FILE
        path.write_text(json.dumps(self.to_dict(), indent=1), encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "LevelAnchorSpec":
        p = Path(path)
        if p.is_dir():
            p = p / ANCHOR_SPEC_FILE
        return cls.from_dict(json.loads(p.read_text(encoding="utf-8")), str(p))


class LevelAnchor:
    """A trained level anchor: level-group probabilities and chain costs for detector peaks."""

    def __init__(self, network: torch.nn.Module, spec: LevelAnchorSpec) -> None:
        self.network = network.eval()
        self.spec = spec

    @classmethod
    def from_dir(cls, model_dir: str | os.PathLike) -> "LevelAnchor":
        """Load ``level_anchor_model.json`` and its weights from a model folder."""
        spec = LevelAnchorSpec.load(model_dir)
        net = load_strict_weights(spec.build_network(), Path(model_dir) / spec.checkpoint_file,
                                  "the level anchor spec beside them",
                                  hint=f"the level anchor weights named in {ANCHOR_SPEC_FILE} are missing")
        return cls(net, spec)

    @staticmethod
    def exists(model_dir: str | os.PathLike) -> bool:
        return (Path(model_dir) / ANCHOR_SPEC_FILE).is_file()

    @torch.inference_mode()
    def probabilities(self, image: Any, points_px: Any, spacing_px: float) -> np.ndarray:
        """``(P, G)`` class probabilities of the peaks at ``points_px`` (film pixels)."""
        pts = np.asarray(points_px, dtype=np.float64).reshape(-1, 2)
        if pts.shape[0] == 0:
            return np.zeros((0, self.spec.groups.num_classes))
        x = anchor_patches(image, pts, spacing_px, self.spec.side_spacings, self.spec.patch_size)
        return torch.softmax(self.network(torch.from_numpy(x)), -1).double().numpy()

    def level_cost(self, image: Any, points_px: Any, spacing_px: float) -> np.ndarray:
        """``(P, L)`` chain node costs of the peaks (see :meth:`LevelGroups.level_cost`)."""
        return self.spec.groups.level_cost(self.probabilities(image, points_px, spacing_px),
                                           self.spec.weight, self.spec.cap)

