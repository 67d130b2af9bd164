"""Motion-segment and regional measurements on lateral radiographs (scheme ``lateral5``).

Geometry (see ``docs/measurements.md`` for the definitions, sign conventions and sources):

* Points per vertebra: ``AS, PS, AI, PI, SP`` (anterior/posterior, superior/inferior corners and
  the spinous-process tip); ``x`` = column, ``y`` = row (down); the patient faces image left, so
  anterior is smaller ``x``.
* Coordinates are first converted to millimetres (``x * sx, y * sy``) when the spacing is known,
  so anisotropic pixels give correct angles; with unknown spacing the computation stays in pixels
  (angles then assume square pixels) and lengths are in pixels.
* A line's direction angle is measured in the anatomical frame ``(posterior, superior)`` =
  ``(+x, -y)``: ``theta = atan2(-dy, dx)`` for the vector from the anterior to the posterior point.
* **Intervertebral (segmental) angle** of the motion segment upper/lower:
  ``theta(AS->PS of lower) - theta(AI->PI of upper)``, wrapped to (-180, 180] degrees. Positive =
  lordotic (the disc space opens anteriorly), negative = kyphotic.
* **Sagittal translation**: ``(PS_lower - PI_upper) . e``, with ``e`` the unit vector along the
  lower vertebra's superior endplate from AS to PS. Positive = the upper vertebra lies anterior
  to the lower one (anterolisthesis), negative = retrolisthesis. Its share of body depth divides
  by the lower vertebra's superior endplate length ``|PS - AS|``.
* **Disc heights**: anterior ``|AS_lower - AI_upper|``, posterior ``|PS_lower - PI_upper|``.
* **Lordosis** between a top and a bottom vertebra (Cobb method): ``theta(AI->PI of bottom) -
  theta(AS->PS of top)``; positive = lordosis, negative = kyphosis.

All functions accept any leading axes ``(..., N, 5, 2)`` (e.g. Monte-Carlo samples first) and
return arrays with those leading axes. An invisible or non-finite point makes every measurement
that uses it NaN.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from monai_spine.data.keypoints import get_scheme, level_order

__all__ = [
    "LATERAL_SCHEME",
    "AS",
    "PS",
    "AI",
    "PI",
    "SP",
    "DEFAULT_LORDOSIS_LEVELS",
    "MotionSegment",
    "LateralLayout",
    "lateral_layout",
    "to_metric",
    "line_angle_deg",
    "wrap_deg",
    "motion_segments",
    "segment_angle_deg",
    "sagittal_translation",
    "body_depth",
    "disc_heights",
    "lordosis_angle_deg",
    "lateral_measurements",
]

#: scheme of lateral views
LATERAL_SCHEME = "lateral5"
_NAMES = get_scheme(LATERAL_SCHEME).point_names
#: point indices of the lateral5 scheme
AS, PS, AI, PI, SP = (_NAMES.index(n) for n in ("AS", "PS", "AI", "PI", "SP"))

#: the regional lordosis measured per region: (top vertebra, bottom vertebra)
DEFAULT_LORDOSIS_LEVELS: dict[str, tuple[str, str]] = {"cervical": ("C3", "C7"), "lumbar": ("L1", "L5")}


@dataclass(frozen=True)
class MotionSegment:
    """Two anatomically adjacent vertebrae, by their row indices in the keypoint array."""

    upper: int
    lower: int
    upper_level: str
    lower_level: str

    @property
    def name(self) -> str:
        """``"C3-C4"``."""
        return f"{self.upper_level}-{self.lower_level}"


def to_metric(keypoints_px: Any, spacing_mm: Sequence[float] | None, visible: Any = None) -> tuple[np.ndarray, str]:
    """Points in millimetres when the spacing is known, else in pixels; hidden points become NaN.

    Args:
        keypoints_px: (..., N, K, 2) points in pixels.
        spacing_mm: (sx, sy) or None (unknown).
        visible: (N, K) mask, or None (all points with finite coordinates are used).

    Returns:
        ``(points, unit)`` with ``unit`` ``"mm"`` or ``"px"``.

    Raises:
        ValueError: a spacing that is not two positive finite numbers, or a mask of the wrong shape.
    """
    kp = np.array(keypoints_px, dtype=np.float64)
    if kp.ndim < 3 or kp.shape[-1] != 2:
        raise ValueError(f"keypoints must have shape (..., N, K, 2), got {kp.shape}")
    if visible is not None:
        vis = np.asarray(visible, dtype=bool)
        if vis.shape != kp.shape[-3:-1]:
            raise ValueError(f"visibility mask shape {vis.shape} does not match keypoints {kp.shape[-3:-1]}")
        kp[..., ~vis, :] = np.nan
    if spacing_mm is None:
        return kp, "px"
    sp = np.asarray(spacing_mm, dtype=np.float64).reshape(-1)
    if sp.shape != (2,) or not np.all(np.isfinite(sp)) or np.any(sp <= 0):
        raise ValueError(f"spacing_mm must be two positive finite numbers (sx, sy), got {spacing_mm!r}")
    return kp * sp, "mm"


def wrap_deg(angle_deg: Any) -> np.ndarray:
    """Wrap angles to (-180, 180] degrees."""
    a = np.asarray(angle_deg, dtype=np.float64)
    return 180.0 - np.mod(180.0 - a, 360.0)


def line_angle_deg(p_from: Any, p_to: Any) -> np.ndarray:
    """Direction angle of the vector ``p_from -> p_to`` in the frame (posterior = +x, superior = -y).

    Args:
        p_from, p_to: (..., 2) points (x right, y down).

    Returns:
        (...) degrees in (-180, 180]; 0 for a horizontal line pointing posteriorly, positive when
        the line rises (smaller y) towards posterior.
    """
    d = np.asarray(p_to, dtype=np.float64) - np.asarray(p_from, dtype=np.float64)
    return wrap_deg(np.degrees(np.arctan2(-d[..., 1], d[..., 0])))


def motion_segments(levels: Sequence[str]) -> list[MotionSegment]:
    """Consecutive, anatomically adjacent vertebrae of ``levels`` (C3, C4, C6 gives only C3-C4).

    Unknown level names give no segment (they cannot be known to be adjacent).
    """
    segs = []
    for i in range(len(levels) - 1):
        try:
            a, b = level_order(levels[i]), level_order(levels[i + 1])
        except KeyError:
            continue
        if b == a + 1:
            segs.append(MotionSegment(i, i + 1, str(levels[i]), str(levels[i + 1])))
    return segs


def _segment_index(pts: np.ndarray, segments: Sequence[MotionSegment] | None) -> tuple[np.ndarray, np.ndarray]:
    if segments is None:
        up = np.arange(max(pts.shape[-3] - 1, 0))
        return up, up + 1
    return (
        np.asarray([s.upper for s in segments], dtype=int),
        np.asarray([s.lower for s in segments], dtype=int),
    )


def segment_angle_deg(points: Any, segments: Sequence[MotionSegment] | None = None) -> np.ndarray:
    """Intervertebral angle of each motion segment, lordosis positive.

    Args:
        points: (..., N, 5, 2) points in a metric frame (see :func:`to_metric`).
        segments: which vertebra pairs; None: every consecutive pair ``(i, i + 1)``.

    Returns:
        (..., M) degrees, ``theta(AS->PS of lower) - theta(AI->PI of upper)`` wrapped to (-180, 180].
    """
    p = np.asarray(points, dtype=np.float64)
    up, lo = _segment_index(p, segments)
    upper = line_angle_deg(p[..., up, AI, :], p[..., up, PI, :])
    lower = line_angle_deg(p[..., lo, AS, :], p[..., lo, PS, :])
    return wrap_deg(lower - upper)


def sagittal_translation(points: Any, segments: Sequence[MotionSegment] | None = None) -> np.ndarray:
    """Sagittal translation of each motion segment, anterolisthesis positive.

    ``(PS_lower - PI_upper) . e`` with ``e = (PS_lower - AS_lower) / |PS_lower - AS_lower|``: the
    distance from the upper vertebra's posterior-inferior corner to the lower vertebra's
    posterior-superior corner, measured along the lower vertebra's superior endplate.

    Args:
        points: (..., N, 5, 2) metric points.
        segments: see :func:`segment_angle_deg`.

    Returns:
        (..., M) in the points' unit (mm or px).
    """
    p = np.asarray(points, dtype=np.float64)
    up, lo = _segment_index(p, segments)
    e = p[..., lo, PS, :] - p[..., lo, AS, :]
    with np.errstate(invalid="ignore", divide="ignore"):
        e = e / np.linalg.norm(e, axis=-1, keepdims=True)
    return ((p[..., lo, PS, :] - p[..., up, PI, :]) * e).sum(-1)


def body_depth(points: Any) -> np.ndarray:
    """Sagittal depth of each vertebral body: its superior endplate length ``|PS - AS|``.

    Returns:
        (..., N) in the points' unit.
    """
    p = np.asarray(points, dtype=np.float64)
    return np.linalg.norm(p[..., PS, :] - p[..., AS, :], axis=-1)


def disc_heights(points: Any, segments: Sequence[MotionSegment] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Anterior ``|AS_lower - AI_upper|`` and posterior ``|PS_lower - PI_upper|`` disc heights.

    Returns:
        two (..., M) arrays in the points' unit.
    """
    p = np.asarray(points, dtype=np.float64)
    up, lo = _segment_index(p, segments)
    ant = np.linalg.norm(p[..., lo, AS, :] - p[..., up, AI, :], axis=-1)
    post = np.linalg.norm(p[..., lo, PS, :] - p[..., up, PI, :], axis=-1)
    return ant, post


def lordosis_angle_deg(points: Any, top: int, bottom: int) -> np.ndarray:
    """Cobb lordosis between the superior endplate of vertebra ``top`` and the inferior endplate
    of vertebra ``bottom`` (row indices), lordosis positive.

    Returns:
        (...) degrees: ``theta(AI->PI of bottom) - theta(AS->PS of top)`` wrapped to (-180, 180].
    """
    p = np.asarray(points, dtype=np.float64)
    n = p.shape[-3]
    if not (0 <= top < n and 0 <= bottom < n) or top >= bottom:
        raise IndexError(f"lordosis needs 0 <= top < bottom < {n}, got top={top}, bottom={bottom}")
    sup = line_angle_deg(p[..., top, AS, :], p[..., top, PS, :])
    inf = line_angle_deg(p[..., bottom, AI, :], p[..., bottom, PI, :])
    return wrap_deg(inf - sup)


@dataclass
class LateralLayout:
    """Which segments and lordosis spans a lateral image has (by row index)."""

    segments: list[MotionSegment]
    lordosis: list[tuple[str, int, int]] = field(default_factory=list)


def lateral_layout(levels: Sequence[str], lordosis_levels: Sequence[tuple[str, str]] | None = None) -> LateralLayout:
    """Motion segments of ``levels`` and the lordosis spans present in them.

    Args:
        levels: N level names, top to bottom.
        lordosis_levels: (top, bottom) level pairs; default: those of
            :data:`DEFAULT_LORDOSIS_LEVELS` whose both levels are present.
    """
    spans = list(lordosis_levels) if lordosis_levels is not None else list(DEFAULT_LORDOSIS_LEVELS.values())
    idx = {str(lev): i for i, lev in enumerate(levels)}
    lordosis = [(f"{t}-{b}", idx[t], idx[b]) for t, b in spans if t in idx and b in idx and idx[t] < idx[b]]
    return LateralLayout(motion_segments(levels), lordosis)


def lateral_measurements(
    keypoints_px: Any,
    levels: Sequence[str],
    spacing_mm: Sequence[float] | None = None,
    visible: Any = None,
    lordosis_levels: Sequence[tuple[str, str]] | None = None,
) -> tuple[dict[str, np.ndarray], str, LateralLayout]:
    """Every lateral measurement of one image (vectorised over leading sample axes).

    Args:
        keypoints_px: (..., N, 5, 2) pixels.
        levels: N level names.
        spacing_mm: (sx, sy) or None.
        visible: (N, 5) mask or None.
        lordosis_levels: see :func:`lateral_layout`.

    Returns:
        ``(values, unit, layout)``: ``values`` maps ``segment_angle_deg``, ``translation``,
        ``translation_share``, ``disc_height_anterior``, ``disc_height_posterior`` to (..., M)
        arrays (lengths in ``unit``, ``"mm"`` or ``"px"``), ``body_depth`` to (..., N) and
        ``lordosis_deg`` to (..., L) (one per ``layout.lordosis`` span).
    """
    kp = np.asarray(keypoints_px, dtype=np.float64)
    if kp.ndim < 3 or kp.shape[-2:] != (len(_NAMES), 2):
        raise ValueError(f"lateral keypoints must have shape (..., N, {len(_NAMES)}, 2), got {kp.shape}")
    if kp.shape[-3] != len(levels):
        raise ValueError(f"{len(levels)} levels but keypoints for {kp.shape[-3]} vertebrae")
    layout = lateral_layout(levels, lordosis_levels)
    pts, unit = to_metric(kp, spacing_mm, visible)
    segs = layout.segments
    trans = sagittal_translation(pts, segs)
    depth = body_depth(pts)
    lo = np.asarray([s.lower for s in segs], dtype=int)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = trans / depth[..., lo]
    ant, post = disc_heights(pts, segs)
    lead = kp.shape[:-3]
    lordosis = (
        np.stack([lordosis_angle_deg(pts, t, b) for _, t, b in layout.lordosis], axis=-1)
        if layout.lordosis
        else np.zeros(lead + (0,))
    )
    values = {
        "segment_angle_deg": segment_angle_deg(pts, segs),
        "translation": trans,
        "translation_share": share,
        "disc_height_anterior": ant,
        "disc_height_posterior": post,
        "body_depth": depth,
        "lordosis_deg": lordosis,
    }
    return values, unit, layout
