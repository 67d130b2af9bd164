"""Clicked vertebra centres of the Label app's corners task: parsed, checked, and their levels named.

Free of MONAI Label. Units: points are ``(x, y)`` pixels of the radiograph
(:mod:`monai_spine.data.keypoints`).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from monai_spine.apps.label.lib.core import LabelAppError

__all__ = ["LEVEL_AUTO", "parse_centres", "check_inside", "click_levels"]

#: ``first_level`` value meaning "infer the levels of the clicks" (the first entry of the corners task's config)
LEVEL_AUTO = "auto"


def parse_centres(value: Any, name: str = "centres", min_count: int = 1) -> np.ndarray:
    """``(V, 2)`` clicked centres from a request value: ``[[x, y], ...]`` or MONAI Label's
    ``[[x, y, z], ...]`` clicks (z ignored; the 3D Slicer module sends image indices ``[i, j, k]``,
    i = column), or the text ``"x,y;x,y"``.

    Raises:
        LabelAppError: fewer than ``min_count`` centres or non-finite numbers (names ``name``).
    """
    if isinstance(value, str):
        try:
            value = [[float(t) for t in p.split(",")] for p in value.split(";") if p.strip()]
        except ValueError:
            raise LabelAppError(f"{name}: expected 'x,y;x,y;...', got {value!r}") from None
    try:
        pts = [list(p)[:2] for p in (value or [])]
        arr = np.asarray(pts, dtype=np.float64).reshape(-1, 2)
    except (TypeError, ValueError):
        raise LabelAppError(f"{name}: expected a list of [x, y] pixel points, got {value!r}") from None
    if len(arr) < min_count:
        raise LabelAppError(f"{name}: click at least {min_count} vertebra centre{'s' if min_count > 1 else ''}, "
                            f"got {len(arr)}")
    if not np.all(np.isfinite(arr)):
        raise LabelAppError(f"{name}: centres must be finite numbers")
    return arr


def check_inside(points_px: np.ndarray, size_wh: Sequence[int], name: str = "centres") -> None:
    """Refuse points outside the image (pixel centres span ``[-0.5, W - 0.5] x [-0.5, H - 0.5]``).

    Raises:
        LabelAppError: naming the first point outside and the image size.
    """
    w, h = int(size_wh[0]), int(size_wh[1])
    p = np.asarray(points_px, dtype=np.float64).reshape(-1, 2)
    bad = (p[:, 0] < -0.5) | (p[:, 0] > w - 0.5) | (p[:, 1] < -0.5) | (p[:, 1] > h - 0.5)
    if np.any(bad):
        i = int(np.nonzero(bad)[0][0])
        raise LabelAppError(f"{name}: click {i + 1} at ({p[i, 0]:g}, {p[i, 1]:g}) px lies outside the {w} x {h} image")


def _check_levels(levels: Sequence[Any], n: int, name: str = "levels") -> list[str]:
    from monai_spine.data.keypoints import level_order

    out = [str(v).strip().upper() for v in levels]
    if len(out) != n:
        raise LabelAppError(f"{name}: {len(out)} names for {n} centres")
    for lev in out:
        try:
            level_order(lev)
        except KeyError:
            raise LabelAppError(f"{name}: unknown level {lev!r}") from None
    if len(set(out)) != len(out):
        raise LabelAppError(f"{name}: repeated names in {out}")
    return out


def _consecutive(c: np.ndarray, anchor_rank: int, anchor_level: str, name: str) -> list[str]:
    """Levels of the clicks in top-to-bottom (y) order, consecutive, the ``anchor_rank``-th being ``anchor_level``."""
    from monai_spine.data.keypoints import _ALL_LEVELS, level_order

    rank = np.empty(len(c), dtype=int)
    rank[np.argsort(c[:, 1], kind="stable")] = np.arange(len(c))
    start = level_order(anchor_level) - anchor_rank
    idx = start + rank
    if idx.min() < 0 or idx.max() >= len(_ALL_LEVELS):
        raise LabelAppError(f"{name}: {len(c)} clicks do not fit consecutive levels around {anchor_level}: send 'levels'")
    return [_ALL_LEVELS[i] for i in idx]


def click_levels(centres_px: np.ndarray, levels: Sequence[Any] | None = None, first_level: str | None = None,
                 detections: Any = None, region: str | None = None) -> tuple[list[str], str]:
    """The level of each clicked centre, given or inferred.

    In this order: ``levels`` given (one per click); ``first_level`` (not ``"auto"``): the topmost
    click (smallest y) is that level and the others follow down the spine in y order; detections:
    a click within ``max(box width, box height)`` of a detected centre takes its level (all clicks
    matched to distinct levels), or the topmost matched click anchors consecutive levels in y order;
    otherwise the region's top level down, in y order.

    Args:
        centres_px: ``(V, 2)`` clicks (x, y) px.
        levels: level names, one per click.
        first_level: level of the topmost click, or ``"auto"`` / None.
        detections: :class:`~monai_spine.inference.detector.Detections` of the image, or None.
        region: region whose top level starts the default naming.

    Returns:
        ``(levels, source)``; source is ``given``, ``first_level``, ``detector`` or ``top_down``.

    Raises:
        LabelAppError: bad ``levels`` / ``first_level``, or clicks that do not fit the spine's levels.
    """
    from monai_spine.data.keypoints import get_region

    c = np.asarray(centres_px, dtype=np.float64).reshape(-1, 2)
    if levels is not None and len(levels) > 0:
        return _check_levels(levels, len(c)), "given"
    if first_level is not None and str(first_level).strip().lower() not in ("", LEVEL_AUTO):
        (first,) = _check_levels([first_level], 1, "first_level")
        return _consecutive(c, 0, first, "first_level"), "first_level"
    if detections is not None and len(detections) > 0:
        cen = np.asarray(detections.centres_px, dtype=np.float64).reshape(-1, 2)
        box = np.asarray(detections.boxes_px, dtype=np.float64).reshape(-1, 4)
        radius = np.maximum(box[:, 2] - box[:, 0], box[:, 3] - box[:, 1])
        d = np.linalg.norm(c[:, None, :] - cen[None, :, :], axis=-1)
        near = np.argmin(d, axis=1)
        matched = d[np.arange(len(c)), near] <= radius[near]
        names = [detections.levels[j] for j in near]
        if np.all(matched) and len(set(names)) == len(names):
            return [str(n) for n in names], "detector"
        if np.any(matched):
            order = np.argsort(c[:, 1], kind="stable")
            rank_of = {int(i): r for r, i in enumerate(order)}
            k = next(int(i) for i in order if matched[i])
            try:
                return _consecutive(c, rank_of[k], names[k], "levels"), "detector"
            except LabelAppError:
                pass
    try:
        top = get_region(region or "cervical").levels[0]
    except KeyError:
        top = get_region("cervical").levels[0]
    return _consecutive(c, 0, top, "levels"), "top_down"


def _one_click_neighbour(click: np.ndarray, level: str, det: Any, size_ratio: float) -> tuple[np.ndarray, str]:
    """A neighbouring centre for a single click, so the corner model gets the vertebra's frame.

    The clicked vertebra's size is that of the detection containing the click (mean of the box's
    width and height) and the spine's direction the line through its detected neighbours (vertical
    without one). The neighbour lies one vertebra (``size / size_ratio``) below, named the next
    level (above, the previous level, for the last level).

    Raises:
        LabelAppError: no detector, or no detection within a box size of the click.
    """
    from monai_spine.data.keypoints import _ALL_LEVELS, level_order

    if det is None or len(det) == 0:
        raise LabelAppError("one click: the app has no vertebra detector (or it found nothing) to size a single "
                            "vertebra; click the centre of a second vertebra")
    cen = np.asarray(det.centres_px, dtype=np.float64).reshape(-1, 2)
    box = np.asarray(det.boxes_px, dtype=np.float64).reshape(-1, 4)
    d = np.linalg.norm(cen - click[None], axis=1)
    j = int(np.argmin(d))
    wh = box[j, 2:] - box[j, :2]
    if not d[j] <= max(wh.max(), 1.0):
        raise LabelAppError(f"one click: no vertebra detected at ({click[0]:g}, {click[1]:g}) px; click the centre of "
                            "a vertebral body, or click a second vertebra")
    size = float(np.mean(wh))
    direction = np.array([0.0, 1.0])
    nb = [k for k in (j - 1, j + 1) if 0 <= k < len(cen)]
    if nb:
        a, b = cen[min(nb + [j])], cen[max(nb + [j])]
        v = b - a
        if np.linalg.norm(v) > 0:
            direction = v / np.linalg.norm(v)
            if direction[1] < 0:
                direction = -direction
    step = size / float(size_ratio)
    o = level_order(level)
    if o + 1 < len(_ALL_LEVELS):
        return click + step * direction, _ALL_LEVELS[o + 1]
    return click - step * direction, _ALL_LEVELS[o - 1]
