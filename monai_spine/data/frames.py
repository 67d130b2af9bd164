"""Vertebra frames (orientation and size) from clicked centres, and from annotations as a click would give them.

The corner FCN cuts its patches around each vertebra in a frame: its centre, an orientation and a size.
An operator clicks only the centres, so the frames come from the centres alone
(:func:`centre_frames`: orientation from the neighbouring centres, size ``size_ratio`` times the
distance to them); training and validation make the same frames from annotated corners
(:func:`annotation_frames`). Pure numpy; conventions of :mod:`monai_spine.data.patches` (points
``(x, y)`` pixels, angles in degrees in the image frame, y down).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from monai_spine.data.keypoints import level_order, validate_keypoints
from monai_spine.data.patches import orientation_from_centres, vertebra_geometry

__all__ = ["centre_frames", "annotation_frames", "frame_coords", "turned_box_px", "FrameBoxes"]


def _level_gaps(levels: Sequence[str] | None, n: int) -> np.ndarray:
    """``(n - 1,)`` number of vertebrae between consecutive centres (1 without levels)."""
    if levels is None or n < 2:
        return np.ones(max(n - 1, 0))
    if len(levels) != n:
        raise ValueError(f"{len(levels)} levels for {n} centres")
    try:
        order = np.array([level_order(str(lev)) for lev in levels], dtype=np.float64)
    except KeyError:
        return np.ones(n - 1)
    gaps = np.abs(np.diff(order))
    return np.where(gaps >= 1, gaps, 1.0)


def frame_coords(points_px: np.ndarray, angles_rad: Any) -> np.ndarray:
    """Coordinates of points along axes turned by ``angles_rad``: ``u`` along ``(cos a, sin a)``, ``v``
    along ``(-sin a, cos a)`` (the image axes when the angle is 0).

    Args:
        points_px: ``(..., K, 2)`` (x, y) pixels (NaN stays NaN).
        angles_rad: ``(...)`` one angle per group of K points (broadcast), radians.

    Returns:
        ``(..., K, 2)`` ``(u, v)``.
    """
    p = np.asarray(points_px, dtype=np.float64)
    a = np.asarray(angles_rad, dtype=np.float64)[..., None]
    c, s = np.cos(a), np.sin(a)
    return np.stack([p[..., 0] * c + p[..., 1] * s, -p[..., 0] * s + p[..., 1] * c], -1)


def turned_box_px(points_px: np.ndarray, angles_rad: Any) -> np.ndarray:
    """The box of points along turned axes, written as the box before its turn about its centre.

    Args:
        points_px: ``(..., K, 2)`` (x, y) pixels; NaN points are ignored.
        angles_rad: ``(...)`` the boxes' turns, radians (the ``box_angle_rad`` convention of
            :class:`~monai_spine.transforms.crop.VertebraCrop`).

    Returns:
        ``(..., 4)`` ``x0, y0, x1, y1``: the centre in image pixels plus/minus the half extents along
        the turned axes.
    """
    q = frame_coords(points_px, angles_rad)
    lo, hi = np.nanmin(q, axis=-2), np.nanmax(q, axis=-2)
    mu, mv = (0.5 * (lo + hi))[..., 0], (0.5 * (lo + hi))[..., 1]
    a = np.asarray(angles_rad, dtype=np.float64)
    centre = np.stack([mu * np.cos(a) - mv * np.sin(a), mu * np.sin(a) + mv * np.cos(a)], -1)
    half = 0.5 * (hi - lo)
    return np.concatenate([centre - half, centre + half], axis=-1)


def centre_frames(
    centres_px: np.ndarray, size_ratio: float, levels: Sequence[str] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Orientation and size of each vertebra from the clicked centres alone.

    Args:
        centres_px: ``(V, 2)`` centres, top to bottom, ``V >= 2``.
        size_ratio: vertebra size / centre spacing (:attr:`HeatmapModelSpec.size_ratio`).
        levels: optional level names; a gap of ``g`` levels between two consecutive centres divides
            their distance by ``g`` (a vertebra that was not clicked does not inflate the size).

    A step between consecutive centres that runs against the spine's median direction or is longer than
    :data:`MAX_STEP_RATIO` median steps (a centre clicked or labelled out of order) is not used: the
    vertebrae beside it are framed from their other step, or from the spine's median step and direction.

    Returns:
        ``(orientations_deg (V,), sizes_px (V,))``, conventions of :mod:`monai_spine.data.patches`.

    Raises:
        ValueError: fewer than two centres, or a degenerate (repeated) centre.
    """
    c = np.asarray(centres_px, dtype=np.float64).reshape(-1, 2)
    if len(c) < 2:
        raise ValueError(f"at least two vertebra centres are needed to estimate orientation and size, got {len(c)}")
    if not np.all(np.isfinite(c)):
        raise ValueError("vertebra centres must be finite")
    angle, _ = orientation_from_centres(c)
    gaps = _level_gaps(levels, len(c))
    d = np.linalg.norm(np.diff(c, axis=0), axis=1) / gaps
    if np.any(d <= 0):
        raise ValueError("two consecutive vertebra centres coincide")
    dist = np.empty(len(c))
    dist[0], dist[-1] = d[0], d[-1]
    if len(c) > 2:
        dist[1:-1] = 0.5 * (d[:-1] + d[1:])
    bad = _implausible_steps(c, d)
    if bad.any():  # a centre out of order: frame its neighbours from their other side (or the spine's median)
        angle, dist = _frames_without(c, d, gaps, bad, angle, dist)
    return angle, float(size_ratio) * dist


#: a step between consecutive centres longer than this many median steps (per level) is not trusted
MAX_STEP_RATIO = 3.0


def _implausible_steps(c: np.ndarray, d: np.ndarray) -> np.ndarray:
    """``(V - 1,)`` steps that cannot join neighbouring vertebrae: against the spine's median direction,
    or longer than :data:`MAX_STEP_RATIO` median steps (a centre clicked or labelled out of order)."""
    if len(c) < 3:
        return np.zeros(len(d), bool)
    steps = np.diff(c, axis=0)
    med = np.median(steps, axis=0)
    return (steps @ med <= 0) | (d > MAX_STEP_RATIO * np.median(d))


def _frames_without(c: np.ndarray, d: np.ndarray, gaps: np.ndarray, bad: np.ndarray, angle: np.ndarray,
                    dist: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Orientation and spacing of the vertebrae next to an implausible step, from their trusted steps only."""
    steps = np.diff(c, axis=0) / gaps[:, None]
    ok = ~bad
    med_dir = np.median(steps[ok], axis=0) if ok.any() else np.array([0.0, 1.0])
    med_d = float(np.median(d[ok])) if ok.any() else float(np.median(d))
    angle, dist = angle.copy(), dist.copy()
    for i in range(len(c)):
        near = [k for k in (i - 1, i) if 0 <= k < len(d)]
        if all(ok[k] for k in near):
            continue
        trusted = [k for k in near if ok[k]]
        axis = steps[trusted].sum(axis=0) if trusted else med_dir
        angle[i] = np.degrees(np.arctan2(-axis[0], axis[1]))
        dist[i] = float(np.mean(d[trusted])) if trusted else med_d
    return angle, dist


def annotation_frames(
    keypoints_px: np.ndarray,
    visible: np.ndarray | None,
    corner_indices: Sequence[int],
    size_ratio: float,
    select: np.ndarray | None = None,
    levels: Sequence[str] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Frames of annotated vertebrae, as an operator clicking their centres would get them.

    The "clicked" centre of a vertebra is the mean of its four corners; the vertebrae used are those
    with four visible, finite corners (and ``select`` true), in annotation order (top to bottom).
    Their frames come from :func:`centre_frames` of these centres only; an image with a single such
    vertebra uses that vertebra's own corner geometry instead.

    Returns:
        ``(rows (V,), centres_px (V, 2), orientations_deg (V,), sizes_px (V,))``; ``rows`` index the
        annotation's vertebrae.
    """
    kp, vis = validate_keypoints(keypoints_px, visible)
    idx = list(corner_indices)
    corners = kp[:, idx]
    ok = np.all(vis[:, idx], axis=1) & np.all(np.isfinite(corners), axis=(1, 2))
    if select is not None:
        sel = np.asarray(select, dtype=bool).reshape(-1)
        if sel.shape != ok.shape:
            raise ValueError(f"select has shape {sel.shape}, expected ({len(ok)},)")
        ok &= sel
    rows = np.nonzero(ok)[0]
    if len(rows) == 0:
        return rows, np.zeros((0, 2)), np.zeros(0), np.zeros(0)
    g = vertebra_geometry(corners[rows])
    if len(rows) == 1:
        return rows, g.centre, g.angle_deg, g.size
    lv = None if levels is None else [levels[r] for r in rows]
    ang, size = centre_frames(g.centre, size_ratio, lv)
    return rows, g.centre, ang, size


@dataclass
class FrameBoxes:
    """Vertebra crop boxes from centres alone, turned into each vertebra's frame (:func:`centre_frames`).

    A box is the centre (moved by ``offset_ratio``) with a width (along the endplates) and a height
    (along the spine) proportional to the local centre spacing, turned by the frame's orientation: the
    ``box_px`` / ``box_angle_rad`` pair of :class:`~monai_spine.transforms.crop.VertebraCrop`. (A
    lateral vertebra's spinous process lies behind its body, so its box's centre is not the body's.) A regressor trained in these boxes
    around annotated centres and fed the same boxes around detected centres sees a vertebra upright
    and at one scale, whatever the spine's tilt, and only has to learn the residual.

    Attributes:
        width_ratio, height_ratio: box width and height over the local centre spacing (:meth:`fit`:
            the median extent of the annotated keypoints along the frame's axes on training films).
        offset_ratio: ``(along the endplates, along the spine)`` shift of the box centre from the
            vertebra centre over the local spacing (:meth:`fit`: the median on training films).
    """

    width_ratio: float
    height_ratio: float
    offset_ratio: tuple[float, float] = (0.0, 0.0)

    def __post_init__(self) -> None:
        if not (np.isfinite(self.width_ratio) and np.isfinite(self.height_ratio)
                and self.width_ratio > 0 and self.height_ratio > 0):
            raise ValueError(f"FrameBoxes: ratios must be positive, got {self.width_ratio}, {self.height_ratio}")
        off = tuple(float(v) for v in np.asarray(self.offset_ratio, dtype=np.float64).reshape(-1))
        if len(off) != 2 or not all(np.isfinite(off)):
            raise ValueError(f"FrameBoxes: offset_ratio must be two finite numbers, got {self.offset_ratio!r}")
        self.offset_ratio = off  # type: ignore[assignment]
        self.width_ratio, self.height_ratio = float(self.width_ratio), float(self.height_ratio)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready ``{"kind": "frame", ...}`` (a model spec's ``box_rule``)."""
        return {"kind": "frame", "width_ratio": self.width_ratio, "height_ratio": self.height_ratio,
                "offset_ratio": list(self.offset_ratio)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "FrameBoxes":
        """Inverse of :meth:`to_dict`; ``ValueError`` naming the problem for anything else."""
        if not isinstance(d, dict) or d.get("kind") != "frame":
            raise ValueError(f"box_rule: expected {{'kind': 'frame', ...}}, got {d!r}")
        try:
            return cls(d["width_ratio"], d["height_ratio"], tuple(d.get("offset_ratio", (0.0, 0.0))))
        except (KeyError, TypeError) as e:
            raise ValueError(f"box_rule: {e!r} in {d!r}") from None

    def boxes(self, centres_px: np.ndarray, levels: Sequence[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Boxes around ``(V, 2)`` centres given top to bottom (``V >= 2``).

        Returns:
            ``(boxes_px (V, 4), angles_rad (V,))``: each box ``x0, y0, x1, y1`` before its turn by
            ``angle_rad`` about the centre.
        """
        c = np.asarray(centres_px, dtype=np.float64).reshape(-1, 2)
        ang, dist = centre_frames(c, 1.0, levels)
        a = np.radians(ang)
        e = np.stack([np.cos(a), np.sin(a)], -1)  # along the endplates
        t = np.stack([-np.sin(a), np.cos(a)], -1)  # along the spine
        c = c + dist[:, None] * (self.offset_ratio[0] * e + self.offset_ratio[1] * t)
        half = 0.5 * np.stack([dist * self.width_ratio, dist * self.height_ratio], -1)
        return np.concatenate([c - half, c + half], axis=1), a

    @staticmethod
    def extents(keypoints_px: np.ndarray, visible: np.ndarray | None, corner_indices: Sequence[int],
                levels: Sequence[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """One film's ``(rows (V,), extents (V, 4))``: the width and height of each vertebra's visible
        keypoints along its frame's axes, then the offset of their box's centre from the vertebra centre
        along the same axes, over the local centre spacing (frames of :func:`annotation_frames`)."""
        kp, vis = validate_keypoints(keypoints_px, visible)
        rows, centres, ang, dist = annotation_frames(kp, vis, corner_indices, 1.0, levels=levels)
        if len(rows) < 2:
            return rows[:0], np.zeros((0, 4))
        a = np.radians(ang)
        pts = np.where(vis[rows][..., None], kp[rows], np.nan)
        q, qc = frame_coords(pts, a), frame_coords(centres[:, None], a)[:, 0]  # along each vertebra's frame
        lo, hi = np.nanmin(q, axis=1), np.nanmax(q, axis=1)
        return rows, np.concatenate([hi - lo, 0.5 * (hi + lo) - qc], axis=-1) / dist[:, None]

    @classmethod
    def fit(cls, annotations: Sequence[Any]) -> "FrameBoxes":
        """Median ratios over annotated films (:class:`~monai_spine.data.annotation.SpineAnnotation`).

        Raises:
            ValueError: no film has two vertebrae with four corners.
        """
        from monai_spine.data.keypoints import get_scheme

        ext = [cls.extents(a.keypoints_px, a.visible, get_scheme(a.scheme).corner_indices, a.levels)[1]
               for a in annotations]
        ext = np.concatenate(ext) if ext else np.zeros((0, 4))
        if not len(ext):
            raise ValueError(f"FrameBoxes.fit: no film with two vertebrae with four corners among {len(annotations)}")
        w, h, du, dv = np.median(ext, axis=0)
        return cls(float(w), float(h), (float(du), float(dv)))
