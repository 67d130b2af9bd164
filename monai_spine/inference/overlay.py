"""Overlay pictures: a radiograph with its keypoints drawn, coloured by uncertainty class.

Colours follow the BayeRegX paper: certain points violet, moderately uncertain yellow, highly
uncertain red, ground truth green (:mod:`monai_spine.uncertainty.classes`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from monai_spine.uncertainty.classes import CLASS_COLOURS_RGB, GROUND_TRUTH_COLOUR_RGB

__all__ = ["to_display_uint8", "draw_keypoints", "write_overlay", "overlay_dataset"]

_PRED_DEFAULT_RGB = CLASS_COLOURS_RGB["certain"]


def to_display_uint8(image: np.ndarray, low_pct: float = 0.5, high_pct: float = 99.5) -> np.ndarray:
    """Window an image (H, W) or (1, H, W) to uint8 (H, W) by intensity percentiles."""
    img = np.asarray(image, dtype=np.float32)
    if img.ndim == 3:
        img = img[0]
    if img.ndim != 2:
        raise ValueError(f"expected an (H, W) or (1, H, W) image, got shape {img.shape}")
    finite = img[np.isfinite(img)]
    if finite.size == 0:
        return np.zeros(img.shape, np.uint8)
    lo, hi = np.percentile(finite, [low_pct, high_pct])
    if hi <= lo:
        hi = lo + 1.0
    out = np.clip((np.nan_to_num(img, nan=lo) - lo) / (hi - lo), 0, 1)
    return (out * 255).round().astype(np.uint8)


def draw_keypoints(
    canvas_rgb: np.ndarray,
    keypoints_px: np.ndarray,
    visible: np.ndarray | None = None,
    colors_rgb: Sequence[Sequence[int]] | np.ndarray | None = None,
    radius: int | None = None,
    connect: bool = True,
    labels: Sequence[str] | None = None,
) -> np.ndarray:
    """Draw points of (N, K, 2) ``keypoints_px`` on an RGB uint8 canvas (H, W, 3), in place.

    Args:
        canvas_rgb: (H, W, 3) uint8 picture.
        keypoints_px: (N, K, 2) (x, y) pixels.
        visible: (N, K) mask; invisible points are drawn hollow.
        colors_rgb: one colour for all, or (N, K, 3) per point.
        radius: point radius in pixels (default: 0.6 % of the image size, at least 2).
        connect: join the four body corners of each vertebra (indices 0-1-3-2).
        labels: N level names written beside each vertebra.

    Returns:
        The canvas.
    """
    kp = np.asarray(keypoints_px, dtype=np.float64)
    n, k = kp.shape[:2]
    vis = np.ones((n, k), bool) if visible is None else np.asarray(visible, bool)
    h, w = canvas_rgb.shape[:2]
    r = radius or max(2, int(round(0.006 * max(h, w))))
    cols = np.broadcast_to(np.asarray(colors_rgb if colors_rgb is not None else _PRED_DEFAULT_RGB), (n, k, 3))
    for i in range(n):
        if connect and k >= 4 and np.all(np.isfinite(kp[i, :4])):
            quad = kp[i, [0, 1, 3, 2]].round().astype(np.int32)
            cv2.polylines(canvas_rgb, [quad], True, tuple(int(c) for c in cols[i, 0]), max(1, r // 3), cv2.LINE_AA)
        for j in range(k):
            if not np.all(np.isfinite(kp[i, j])):
                continue
            c = tuple(int(v) for v in cols[i, j])
            cv2.circle(canvas_rgb, tuple(kp[i, j].round().astype(int)), r, c, -1 if vis[i, j] else max(1, r // 3), cv2.LINE_AA)
        if labels is not None and np.any(np.isfinite(kp[i])):
            x, y = np.nanmax(kp[i, :, 0]) + 2 * r, np.nanmean(kp[i, :, 1])
            cv2.putText(canvas_rgb, str(labels[i]), (int(x), int(y)), cv2.FONT_HERSHEY_SIMPLEX, r / 5, (255, 255, 255), 1, cv2.LINE_AA)
    return canvas_rgb


def write_overlay(path: str | os.PathLike, image: np.ndarray, layers: Sequence[dict]) -> None:
    """Write a PNG of ``image`` with keypoint layers (each a dict of :func:`draw_keypoints` kwargs)."""
    gray = to_display_uint8(image)
    canvas = np.ascontiguousarray(np.repeat(gray[..., None], 3, axis=-1))
    for layer in layers:
        draw_keypoints(canvas, **layer)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}.png")
    if not cv2.imwrite(str(tmp), cv2.cvtColor(canvas, cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write overlay {path}")
    os.replace(tmp, path)


def overlay_dataset(
    dataset_dir: str | os.PathLike, out_dir: str | os.PathLike, limit: int | None = None,
    failures: list[tuple[str, str]] | None = None,
) -> list[Path]:
    """Draw the ground-truth keypoints of every annotation in a dataset folder (green).

    Args:
        dataset_dir: dataset folder (``dataset.json`` or annotation files).
        out_dir: output folder of ``<case>.png``.
        limit: at most this many cases.
        failures: when given, a case whose annotation or image cannot be read or drawn is appended
            as ``(file, one-line message)`` and the others are drawn (a batch goes on); when None,
            the first such error is raised.

    Returns:
        Paths of the PNG files written (``<case>.png`` in ``out_dir``; each written atomically).
    """
    from monai_spine.data.annotation import read_annotation
    from monai_spine.data.datasets import list_cases
    from monai_spine.data.readers import read_xray

    index = list_cases(dataset_dir)
    labels = index.get("cases") or [p for s in ("training", "validation", "test") for p in index.get(s, [])]
    written = []
    for label in labels[:limit]:
        try:
            ann = read_annotation(label)
            img = read_xray(ann.image)
            out = Path(out_dir) / (Path(label).stem + ".png")
            write_overlay(
                out,
                img.array,
                [dict(keypoints_px=ann.keypoints_px, visible=ann.visible, colors_rgb=GROUND_TRUTH_COLOUR_RGB,
                      labels=ann.levels)],
            )
        except Exception as e:  # noqa: BLE001 -- listed, the batch goes on
            if failures is None:
                raise
            msg = " ".join(str(e.args[0] if isinstance(e, KeyError) and e.args else e).split())
            if not isinstance(e, (ValueError, KeyError, OSError)):
                msg = f"{type(e).__name__}: {msg}"
            failures.append((str(label), msg if str(label) in msg else f"{label}: {msg}"))
            continue
        written.append(out)
    return written
