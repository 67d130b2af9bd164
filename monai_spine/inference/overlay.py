"""Overlay pictures: a radiograph with its keypoints drawn, coloured by uncertainty class.

Colours follow the BayeRegX paper: certain points violet, moderately uncertain yellow, highly
uncertain red, ground truth green (:mod:`monai_spine.uncertainty.classes`); heatmap corners are cyan
(:data:`monai_spine.inference.pipeline.CORNER_COLOUR_RGB`). Every picture carries a legend of the
colours it uses (read from its layers), placed in the corner that hides fewest points, level names
and the scale bar, level names outlined so that they read on bone, a scale bar in mm when the pixel
spacing is given, and, where a layer gives ``radii_px``, each point's conformal radius as a thin circle.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np

from monai_spine.uncertainty.classes import CLASS_COLOURS_RGB, GROUND_TRUTH_COLOUR_RGB, UNKNOWN_COLOUR_RGB

__all__ = ["to_display_uint8", "draw_keypoints", "legend_entries", "draw_legend", "draw_scale_bar",
           "write_overlay", "overlay_dataset"]

_PRED_DEFAULT_RGB = CLASS_COLOURS_RGB["certain"]
_RING = "ring"  # legend marker of the conformal-radius circles
_CORNER_RGB = (0, 255, 255)  # as monai_spine.inference.pipeline.CORNER_COLOUR_RGB (not imported: no cycle)
#: legend text of each colour a layer can use
_COLOUR_NAMES: dict[tuple[int, int, int], str] = {
    tuple(GROUND_TRUTH_COLOUR_RGB): "ground truth",
    tuple(CLASS_COLOURS_RGB["certain"]): "prediction: certain",
    tuple(CLASS_COLOURS_RGB["moderately_uncertain"]): "prediction: moderately uncertain",
    tuple(CLASS_COLOURS_RGB["highly_uncertain"]): "prediction: highly uncertain",
    tuple(UNKNOWN_COLOUR_RGB): "prediction: uncertainty unknown",
    _CORNER_RGB: "heatmap corners",
}


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


def _text(canvas: np.ndarray, text: str, org: tuple[int, int], scale: float, colour: Sequence[int]) -> None:
    """Text with a dark outline, readable on bright bone and on dark background alike."""
    th = max(1, int(round(scale * 1.5)))
    o = max(1, th // 2 + 1)  # outline: the same glyphs shifted (a thicker stroke would also widen the spacing)
    for dx, dy in ((-o, 0), (o, 0), (0, -o), (0, o), (-o, -o), (o, o), (-o, o), (o, -o)):
        cv2.putText(canvas, text, (org[0] + dx, org[1] + dy), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), th,
                    cv2.LINE_AA)
    cv2.putText(canvas, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, tuple(int(c) for c in colour), th, cv2.LINE_AA)


def _font_scale(h: int, w: int) -> float:
    """Font scale giving text about 1.8 % of the image's larger side tall (at least readable at 256 px)."""
    return max(0.35, 0.018 * max(h, w) / 22.0)


def draw_keypoints(
    canvas_rgb: np.ndarray,
    keypoints_px: np.ndarray,
    visible: np.ndarray | None = None,
    colors_rgb: Sequence[Sequence[int]] | np.ndarray | None = None,
    radius: int | None = None,
    connect: bool = True,
    labels: Sequence[str] | None = None,
    radii_px: np.ndarray | None = None,
) -> np.ndarray:
    """Draw points of (N, K, 2) ``keypoints_px`` on an RGB uint8 canvas (H, W, 3), in place.

    Args:
        canvas_rgb: (H, W, 3) uint8 picture.
        keypoints_px: (N, K, 2) (x, y) pixels.
        visible: (N, K) mask; invisible points are drawn hollow.
        colors_rgb: one colour for all, or (N, K, 3) per point.
        radius: point radius in pixels (default: 0.6 % of the image size, at least 2).
        connect: join the four body corners of each vertebra (indices 0-1-3-2).
        labels: N level names written beside each vertebra (white, outlined in black).
        radii_px: (N, K) conformal radius of each point in pixels (drawn as a thin circle in the
            point's colour; NaN: none).

    Returns:
        The canvas.
    """
    kp = np.asarray(keypoints_px, dtype=np.float64)
    n, k = kp.shape[:2]
    vis = np.ones((n, k), bool) if visible is None else np.asarray(visible, bool)
    h, w = canvas_rgb.shape[:2]
    r = radius or max(2, int(round(0.006 * max(h, w))))
    cols = np.broadcast_to(np.asarray(colors_rgb if colors_rgb is not None else _PRED_DEFAULT_RGB), (n, k, 3))
    rad = None if radii_px is None else np.broadcast_to(np.asarray(radii_px, dtype=np.float64), (n, k))
    scale = _font_scale(h, w)
    for i in range(n):
        if connect and k >= 4 and np.all(np.isfinite(kp[i, :4])):
            quad = kp[i, [0, 1, 3, 2]].round().astype(np.int32)
            cv2.polylines(canvas_rgb, [quad], True, tuple(int(c) for c in cols[i, 0]), max(1, r // 3), cv2.LINE_AA)
        for j in range(k):
            if not np.all(np.isfinite(kp[i, j])):
                continue
            c = tuple(int(v) for v in cols[i, j])
            centre = tuple(kp[i, j].round().astype(int))
            cv2.circle(canvas_rgb, centre, r, c, -1 if vis[i, j] else max(1, r // 3), cv2.LINE_AA)
            if rad is not None and np.isfinite(rad[i, j]) and rad[i, j] > r:
                cv2.circle(canvas_rgb, centre, int(round(rad[i, j])), c, 1, cv2.LINE_AA)
        if labels is not None and np.any(np.isfinite(kp[i])):
            x, y = np.nanmax(kp[i, :, 0]) + 2 * r, np.nanmean(kp[i, :, 1])
            _text(canvas_rgb, str(labels[i]), (int(x), int(y + 6 * scale)), scale, (255, 255, 255))
    return canvas_rgb


def _label_extent(layer: dict, hw: tuple[int, int]) -> np.ndarray:
    """Start and end points ``(2 N, 2)`` of the level names :func:`draw_keypoints` writes for ``layer``."""
    kp = np.asarray(layer["keypoints_px"], dtype=np.float64)
    h, w = hw
    r = layer.get("radius") or max(2, int(round(0.006 * max(h, w))))
    scale = _font_scale(h, w)
    out = []
    for i, lab in enumerate(layer["labels"]):
        if i < len(kp) and np.any(np.isfinite(kp[i])):
            x, y = np.nanmax(kp[i, :, 0]) + 2 * r, np.nanmean(kp[i, :, 1])
            tw = cv2.getTextSize(str(lab), cv2.FONT_HERSHEY_SIMPLEX, scale, max(1, int(round(scale * 1.5))))[0][0]
            out += [(x, y), (x + tw, y)]
    return np.asarray(out, dtype=np.float64).reshape(-1, 2)


def legend_entries(layers: Sequence[dict], ring_text: str = "ring: conformal radius") -> list[tuple[str, Any]]:
    """``(text, marker)`` for every known colour the layers use (in a fixed order; ``marker`` the RGB
    colour), a ring (``ring_text``) for conformal radii (``radii_px``) and a note (``marker`` None) on
    inferred levels when a label ends in ``?``; unknown colours are left out."""
    used: set[tuple[int, int, int]] = set()
    inferred: str | None = None
    radii = False
    for layer in layers:
        kp = np.asarray(layer["keypoints_px"], dtype=np.float64)
        cols = np.broadcast_to(np.asarray(layer.get("colors_rgb", _PRED_DEFAULT_RGB)), kp.shape[:2] + (3,))
        drawn = np.all(np.isfinite(kp), axis=-1)
        used.update(tuple(int(v) for v in c) for c in cols[drawn].reshape(-1, 3))
        inferred = inferred or next((str(lab) for lab in (layer.get("labels") or []) if str(lab).endswith("?")), None)
        r = layer.get("radii_px")
        radii = radii or (r is not None and bool(np.isfinite(np.asarray(r, dtype=np.float64)).any()))
    out: list[tuple[str, Any]] = [(name, rgb) for rgb, name in _COLOUR_NAMES.items() if rgb in used]
    if radii:
        out.append((ring_text, _RING))
    if inferred:
        out.append((f"{inferred} : level inferred, not seen", None))
    return out


def draw_legend(canvas_rgb: np.ndarray, entries: Sequence[tuple[str, Any]],
                avoid_px: np.ndarray | None = None) -> np.ndarray:
    """Draw a legend box (colour dot + text per entry) in the image corner holding fewest ``avoid_px`` points."""
    if not entries:
        return canvas_rgb
    h, w = canvas_rgb.shape[:2]
    scale = _font_scale(h, w) * 0.85
    th = max(1, int(round(scale * 1.5)))
    sizes = [cv2.getTextSize(t, cv2.FONT_HERSHEY_SIMPLEX, scale, th)[0] for t, _ in entries]
    line = int(max(s[1] for s in sizes) * 1.9)
    dot = max(3, line // 3)
    bw = min(w, max(s[0] for s in sizes) + 3 * dot + 12)
    bh = min(h, line * len(entries) + 8)
    pts = np.zeros((0, 2)) if avoid_px is None else np.asarray(avoid_px, dtype=np.float64).reshape(-1, 2)
    pts = pts[np.all(np.isfinite(pts), axis=1)]
    corners = [(w - bw - 4, 4), (4, 4), (w - bw - 4, h - bh - 4), (4, h - bh - 4)]

    def covered(corner: tuple[int, int]) -> int:
        x0, y0 = corner
        return int(np.sum((pts[:, 0] >= x0 - 10) & (pts[:, 0] <= x0 + bw + 10)
                          & (pts[:, 1] >= y0 - 10) & (pts[:, 1] <= y0 + bh + 10)))

    x0, y0 = min(corners, key=covered)
    x0, y0 = max(0, x0), max(0, y0)
    box = canvas_rgb[y0:y0 + bh, x0:x0 + bw]
    box[:] = (0.35 * box).astype(np.uint8)  # darkened, the film still shows through
    for m, ((text, rgb), (tw, tht)) in enumerate(zip(entries, sizes)):
        cy = y0 + 4 + line * m + line // 2
        if rgb is _RING:
            cv2.circle(canvas_rgb, (x0 + 6 + dot, cy), dot, (255, 255, 255), 1, cv2.LINE_AA)
        elif rgb is not None:
            cv2.circle(canvas_rgb, (x0 + 6 + dot, cy), dot, tuple(int(c) for c in rgb), -1, cv2.LINE_AA)
        _text(canvas_rgb, text, (x0 + 12 + 2 * dot, cy + tht // 2), scale, (255, 255, 255))
    return canvas_rgb


def draw_scale_bar(canvas_rgb: np.ndarray, spacing_mm: Sequence[float]) -> np.ndarray:
    """Draw a horizontal scale bar (a round number of mm, about a fifth of the width) bottom left."""
    h, w = canvas_rgb.shape[:2]
    sx = float(spacing_mm[0])
    if not (math.isfinite(sx) and sx > 0):
        return canvas_rgb
    target = 0.2 * w * sx
    length_mm = max(v for v in (1, 2, 5, 10, 20, 50, 100, 200) if v <= max(target, 1))
    length_px = int(round(length_mm / sx))
    scale = _font_scale(h, w) * 0.85
    x0, y = 8, h - 10
    th = max(2, int(round(0.004 * max(h, w))))
    cv2.line(canvas_rgb, (x0, y), (x0 + length_px, y), (0, 0, 0), th + 2, cv2.LINE_AA)
    cv2.line(canvas_rgb, (x0, y), (x0 + length_px, y), (255, 255, 255), th, cv2.LINE_AA)
    _text(canvas_rgb, f"{length_mm:g} mm", (x0, y - th - 4), scale, (255, 255, 255))
    return canvas_rgb


def write_overlay(path: str | os.PathLike, image: np.ndarray, layers: Sequence[dict],
                  spacing_mm: Sequence[float] | None = None, legend: bool | Sequence[tuple[str, Any]] = True) -> None:
    """Write a PNG of ``image`` with keypoint layers (each a dict of :func:`draw_keypoints` kwargs).

    Args:
        path: the PNG (written atomically).
        image: (H, W) or (1, H, W) radiograph.
        layers: :func:`draw_keypoints` keyword dicts, drawn in order.
        spacing_mm: ``(sx, sy)``: adds a scale bar in mm (None: none; pixels carry no unit).
        legend: True: a legend of the colours the layers use (:func:`legend_entries`); False: none;
            or explicit ``(text, rgb)`` entries.
    """
    gray = to_display_uint8(image)
    canvas = np.ascontiguousarray(np.repeat(gray[..., None], 3, axis=-1))
    for layer in layers:
        draw_keypoints(canvas, **layer)
    entries = legend_entries(layers) if legend is True else (list(legend) if legend else [])
    if entries:
        avoid = [np.asarray(layer["keypoints_px"], dtype=np.float64).reshape(-1, 2) for layer in layers]
        avoid += [_label_extent(layer, canvas.shape[:2]) for layer in layers if layer.get("labels") is not None]
        if spacing_mm is not None:  # the scale bar, bottom left
            h, w = canvas.shape[:2]
            avoid.append(np.array([[8.0, h - 10.0], [8.0 + 0.2 * w, h - 10.0]]))
        draw_legend(canvas, entries, np.concatenate(avoid) if avoid else None)
    if spacing_mm is not None:
        draw_scale_bar(canvas, spacing_mm)
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
                spacing_mm=img.spacing_mm,
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
