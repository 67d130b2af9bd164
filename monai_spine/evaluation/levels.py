"""Which detected vertebrae are at their right level: the one rule of the "right level" figures.

A detected level is right when its centre lies inside the annotated box of the same level (boxes
``(x0, y0, x1, y1)`` image pixels, edges included). Used by the AASCE benchmark's tables, the
detector-box datasets and the level anchor's weight choice.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

__all__ = ["matched_levels", "right_level_rate", "level_misses", "MISS_KINDS"]


def matched_levels(det_levels: Sequence[Any], det_centres_px: Any, ann_levels: Sequence[str], ann_boxes_px: Any,
                   rows: Iterable[int] | None = None) -> list[tuple[int, int]]:
    """``(detection index, annotation row)`` of every annotated vertebra the detector found at its level.

    Args:
        det_levels: ``(N,)`` level names of the detections.
        det_centres_px: ``(N, 2)`` detected centres ``(x, y)``.
        ann_levels: ``(M,)`` level names of the annotation's rows.
        ann_boxes_px: ``(M, 4)`` annotated boxes.
        rows: the annotation rows that count (default: all).

    Returns:
        The pairs in the order of the detections.
    """
    wanted = set(range(len(ann_levels)) if rows is None else rows)
    row_of = {str(lev): j for j, lev in enumerate(ann_levels) if j in wanted}
    boxes = np.asarray(ann_boxes_px, dtype=np.float64).reshape(-1, 4)
    centres = np.asarray(det_centres_px, dtype=np.float64).reshape(-1, 2)
    out = []
    for d, lev in enumerate(det_levels):
        j = row_of.get(str(lev))
        if j is None:
            continue
        (cx, cy), b = centres[d], boxes[j]
        if b[0] <= cx <= b[2] and b[1] <= cy <= b[3]:
            out.append((d, j))
    return out


def right_level_rate(detector: Any, label_paths: Sequence[str]) -> float:
    """Share of annotated vertebrae whose level the detector puts inside that level's annotated box.

    Seen and inferred levels both count (the rule of ``bench_aasce``'s "right level" column).
    """
    from monai_spine.data.annotation import read_annotation
    from monai_spine.data.readers import read_xray

    right = total = 0
    for label in label_paths:
        ann = read_annotation(label)
        det = detector.detect(read_xray(ann.image).channel_first(), None, "unknown")
        boxes = ann.boxes_px if ann.boxes_px is not None else ann.boxes_from_keypoints()
        rows = [j for j, lev in enumerate(ann.levels) if lev in detector.levels and ann.visible[j].any()]
        total += len(rows)
        right += len(matched_levels(det.levels, det.centres_px, ann.levels, boxes, rows))
    return right / max(1, total)


#: the kinds of :func:`level_misses`, in the order tables print them
MISS_KINDS = ("whole chain shifted", "run off by a level", "outside every box")


def level_misses(det_levels: Sequence[Any], det_centres_px: Any, ann_levels: Sequence[str], ann_boxes_px: Any,
                 levels: Sequence[str], rows: Iterable[int] | None = None) -> dict[str, int]:
    """How one film's annotated vertebrae were missed: counts per kind of :data:`MISS_KINDS`.

    Each annotated level (of ``rows``, default all) that the detector did not put inside its own box is
    one miss. Its detection's centre lies in another level's box (off by ``k`` levels) or in none
    ("outside every box"; also a level the detector did not output). When every detection that lies in
    some box is off, all by the same sign, the film's misses are "whole chain shifted" (a C7 taken for T1,
    an S1 for L5); other off-by-``k`` misses are "run off by a level" (a vertebra skipped or counted twice
    part-way down).

    Args:
        det_levels, det_centres_px: the detections (level names, ``(N, 2)`` centres).
        ann_levels, ann_boxes_px: the annotation's level names and ``(M, 4)`` boxes.
        levels: the region's levels, top to bottom (gives the offsets).
        rows: the annotation rows that count.
    """
    order = {str(lev): k for k, lev in enumerate(levels)}
    wanted = [j for j in (range(len(ann_levels)) if rows is None else rows) if str(ann_levels[j]) in order]
    boxes = np.asarray(ann_boxes_px, dtype=np.float64).reshape(-1, 4)
    centres = np.asarray(det_centres_px, dtype=np.float64).reshape(-1, 2)
    where = {str(lev): centres[d] for d, lev in enumerate(det_levels)}
    offsets: list[int | None] = []
    for j in wanted:
        c = where.get(str(ann_levels[j]))
        off = None
        if c is not None:
            for i in wanted:
                b = boxes[i]
                if b[0] <= c[0] <= b[2] and b[1] <= c[1] <= b[3]:
                    off = order[str(ann_levels[i])] - order[str(ann_levels[j])]
                    break
        offsets.append(off)
    out = dict.fromkeys(MISS_KINDS, 0)
    inside = [o for o in offsets if o is not None]
    shifted = bool(inside) and (all(o > 0 for o in inside) or all(o < 0 for o in inside))
    for o in offsets:
        if o is None:
            out["outside every box"] += 1
        elif o != 0:
            out["whole chain shifted" if shifted else "run off by a level"] += 1
    return out
