"""Corner helpers of lateral views, shared by the BUU-LSPINE and CSXA readers.

Both readers get each vertebra as two endplates (superior, inferior), each a pair of corners in
pixels. These helpers put each pair left corner first (:func:`sort_left_right`), decide from signed
orientation cues which side the patient faces (:func:`decide_facing`; the dataset readers compute the
cues: :func:`monai_spine.data.buu_lspine.decide_lumbar_facing`,
:func:`monai_spine.data.csxa.decide_cervical_facing`), name the corners anatomically
(:func:`lateral5_from_endplates`: scheme ``lateral5``, ``AS, PS, AI, PI, SP``), and handle points
outside the image (:func:`nan_outside` for the cues, :func:`hide_outside` for the keypoints).

Points are (x, y) pixels; a pair array is ``(R, 2, 2)`` ``[row, corner, (x, y)]``; NaN marks a missing
point.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np

from monai_spine.data.annotation import AnnotationError

__all__ = [
    "FACINGS",
    "sort_left_right",
    "decide_facing",
    "mean_width",
    "lordosis_cue",
    "lateral5_from_endplates",
    "point_or_none",
    "nan_outside",
    "hide_outside",
]

#: ``left``: the patient faces image left (anterior on the left, the project's standard display)
FACINGS = ("auto", "left", "right")
#: smallest |score| of the summed orientation cues that decides the facing
_MIN_FACING_SCORE = 0.15


def sort_left_right(pairs_px: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """Order each pair of points so the first has the smaller x (image left).

    Args:
        pairs_px: (R, 2, 2) float array ``[row, corner, (x, y)]``; NaN rows are left alone.

    Returns:
        ``(sorted_pairs, swapped_rows)``: a copy with left first, and the indices of rows that
        were swapped.
    """
    out = np.array(pairs_px, dtype=np.float64, copy=True)
    swapped = []
    for i in range(out.shape[0]):
        if np.all(np.isfinite(out[i])) and out[i, 0, 0] > out[i, 1, 0]:
            out[i] = out[i, ::-1]
            swapped.append(i)
    return out, swapped


def _finite(v: float) -> float | None:
    return float(v) if v is not None and math.isfinite(v) else None


def decide_facing(cues: Mapping[str, float | None], facing: str = "auto", default: str = "left",
                  min_score: float = _MIN_FACING_SCORE) -> tuple[str, dict[str, Any]]:
    """Decide the side the patient faces from signed orientation cues.

    Each cue is a number that is positive when the anatomy says "anterior on the image left" and
    negative for "anterior on the right" (None or NaN: not available). The cues are summed.

    Args:
        cues: name -> signed score (dimensionless, about tan of an angle or a fraction of a
            vertebra's depth).
        facing: ``"auto"`` to decide from the cues, or ``"left"`` / ``"right"`` to force it.
        default: the answer when the cues are missing or sum to less than ``min_score``.
        min_score: smallest absolute sum that decides.

    Returns:
        ``(facing, evidence)``: ``"left"`` or ``"right"``, and a JSON-ready dictionary with
        ``decided_by`` (``"user"``, ``"cues"`` or ``"default"``), ``score``, ``cues`` and
        ``conflict`` (two cues of opposite sign, each beyond ``min_score``).

    Raises:
        ValueError: ``facing`` or ``default`` is not one of the known values.
    """
    if facing not in FACINGS:
        raise ValueError(f"facing must be one of {FACINGS}, got {facing!r}")
    if default not in ("left", "right"):
        raise ValueError(f"default facing must be 'left' or 'right', got {default!r}")
    clean = {k: _finite(v) for k, v in cues.items()}
    vals = [v for v in clean.values() if v is not None]
    score = float(sum(vals)) if vals else None
    conflict = any(v > min_score for v in vals) and any(v < -min_score for v in vals)
    evidence: dict[str, Any] = {"cues": clean, "score": score, "conflict": conflict}
    if facing != "auto":
        evidence["decided_by"] = "user"
        return facing, evidence
    if score is None or abs(score) < min_score:
        evidence["decided_by"] = "default"
        return default, evidence
    evidence["decided_by"] = "cues"
    return ("left" if score > 0 else "right"), evidence


def mean_width(pairs_lr: np.ndarray) -> float:
    """Mean horizontal width in pixels of (R, 2, 2) left-first pairs (rows with NaN or zero width skipped;
    NaN when none is left)."""
    w = np.abs(pairs_lr[:, 1, 0] - pairs_lr[:, 0, 0])
    w = w[np.isfinite(w) & (w > 0)]
    return float(np.mean(w)) if len(w) else float("nan")


def lordosis_cue(upper_lr: np.ndarray | None, lower_lr: np.ndarray | None, width: float) -> float | None:
    """(left column height - right column height) / width between two endplates (left-first pairs)."""
    if upper_lr is None or lower_lr is None or not (np.all(np.isfinite(upper_lr)) and np.all(np.isfinite(lower_lr))):
        return None
    if not math.isfinite(width) or width <= 0:
        return None
    left_h = lower_lr[0, 1] - upper_lr[0, 1]
    right_h = lower_lr[1, 1] - upper_lr[1, 1]
    return float((left_h - right_h) / width)


def lateral5_from_endplates(top_lr: np.ndarray, bottom_lr: np.ndarray, facing: str) -> np.ndarray:
    """Lateral5 keypoints (AS, PS, AI, PI, SP) from left-first superior / inferior endplates.

    Args:
        top_lr: (N, 2, 2) superior endplates, left corner first.
        bottom_lr: (N, 2, 2) inferior endplates, left corner first.
        facing: ``"left"`` (anterior = image left) or ``"right"``.

    Returns:
        (N, 5, 2) float64; ``SP`` is NaN (not annotated), missing corners stay NaN.
    """
    if facing not in ("left", "right"):
        raise ValueError(f"facing must be 'left' or 'right', got {facing!r}")
    a, p = (0, 1) if facing == "left" else (1, 0)
    top = np.asarray(top_lr, dtype=np.float64)
    bot = np.asarray(bottom_lr, dtype=np.float64)
    kp = np.full((top.shape[0], 5, 2), np.nan)
    kp[:, 0], kp[:, 1] = top[:, a], top[:, p]
    kp[:, 2], kp[:, 3] = bot[:, a], bot[:, p]
    return kp


def point_or_none(p: np.ndarray) -> list[float] | None:
    """A (2,) point ``(x, y)`` as ``[x, y]`` floats for JSON, or None when it is not finite."""
    return [float(p[0]), float(p[1])] if np.all(np.isfinite(p)) else None


def _outside_image(kp: np.ndarray, vis: np.ndarray, size_wh: tuple[int, int]) -> np.ndarray:
    """(N, K) mask of visible points outside ``[-0.5, W - 0.5] x [-0.5, H - 0.5]``."""
    w, h = size_wh
    with np.errstate(invalid="ignore"):
        out = (kp[..., 0] < -0.5) | (kp[..., 0] > w - 0.5) | (kp[..., 1] < -0.5) | (kp[..., 1] > h - 0.5)
    return out & vis


def nan_outside(pairs_px: np.ndarray, size_wh: tuple[int, int]) -> np.ndarray:
    """Copy of (..., 2) points with those outside the image set to NaN (orientation cues skip them)."""
    pts = np.array(pairs_px, dtype=np.float64, copy=True)
    out = _outside_image(pts, np.ones(pts.shape[:-1], dtype=bool), size_wh)
    pts[out] = np.nan
    return pts


def hide_outside(kp: np.ndarray, vis: np.ndarray, size_wh: tuple[int, int], source: str,
                 names: Sequence[str], levels: Sequence[str], notes: list[str]) -> np.ndarray:
    """Make visible keypoints outside the image invisible, noting each one in ``notes``.

    Args:
        kp: (N, K, 2) keypoints, (x, y) pixels.
        vis: (N, K) bool visibility.
        size_wh: image ``(width, height)`` in pixels.
        source: the annotation file, named in the error.
        names: the K point names (for the notes).
        levels: the N level names (for the notes).
        notes: list the ``point_outside_image: ...`` notes are appended to.

    Returns:
        (N, K) bool: ``vis`` without the points outside.

    Raises:
        AnnotationError: more than half of the visible points lie outside (wrong image or units).
    """
    out = _outside_image(kp, vis, size_wh)
    if out.sum() > max(1, vis.sum()) / 2:
        raise AnnotationError(
            f"{source}: {int(out.sum())} of {int(vis.sum())} points lie outside the {size_wh[0]}x{size_wh[1]} image "
            "(wrong image or coordinates in other units?)"
        )
    for i, j in zip(*np.nonzero(out)):
        notes.append(f"point_outside_image: {levels[i]} {names[j]} at ({kp[i, j, 0]:.1f}, {kp[i, j, 1]:.1f}) made invisible")
    return vis & ~out


