"""Copies of a dataset folder whose labels carry other crop boxes than their annotations' own.

A crop regressor learns the framing of the boxes it is trained on, so it must meet the same framing
at prediction. These copies give the training (and, where asked, validation and test) annotations
the boxes a model will be fed: :func:`frame_box_dataset` the spine-frame boxes of
:class:`~monai_spine.data.frames.FrameBoxes` around the annotated centres; the AASCE benchmark adds
detector and spacing boxes with :func:`reboxed_dataset`. Images stay where they are; the copy holds
``dataset.json`` and ``labels/``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from monai_spine.data.frames import FrameBoxes, annotation_frames, frame_coords

__all__ = ["reboxed_dataset", "frame_box_dataset", "outside_ratio"]


def reboxed_dataset(dataset_dir: str | os.PathLike, out_dir: str | os.PathLike, rebox: Callable[[Any], Any],
                    splits: Sequence[str] = ("training", "validation")) -> Path:
    """A copy of a dataset folder whose labels of ``splits`` went through ``rebox``.

    Args:
        dataset_dir: folder with ``dataset.json`` (split -> items with a ``label`` path, or bare label
            paths; relative to the folder or absolute).
        out_dir: the copy (``dataset.json`` and ``labels/``).
        rebox: annotation -> annotation with new ``boxes_px`` (and ``box_angles_rad``).
        splits: the splits reboxed; the other splits' labels are copied unchanged.

    Returns:
        ``out_dir``.

    Raises:
        ValueError: two labels of the dataset share a file name (the copy keeps names).
    """
    from monai_spine.data.annotation import read_annotation, write_annotation

    src, out = Path(dataset_dir), Path(out_dir)
    index = json.loads((src / "dataset.json").read_text(encoding="utf-8"))
    (out / "labels").mkdir(parents=True, exist_ok=True)
    seen: set[str] = set()
    for split in ("training", "validation", "test"):
        entries = index.get(split) or []
        for k, item in enumerate(entries):
            label = item["label"] if isinstance(item, dict) else item  # {"label": path, ...} or a bare path
            name = Path(label).name
            if name in seen:
                raise ValueError(f"{src / 'dataset.json'}: two labels named {name!r}; the copy keeps file names")
            seen.add(name)
            ann = read_annotation(src / label)
            target = out / "labels" / name
            write_annotation(rebox(ann) if split in splits else ann, target)
            if isinstance(item, dict):
                item["label"] = f"labels/{name}"
            else:
                entries[k] = f"labels/{name}"
    (out / "dataset.json").write_text(json.dumps(index, indent=1), encoding="utf-8")
    return out


def outside_ratio(keypoints_px: np.ndarray, visible: np.ndarray, boxes_px: np.ndarray,
                  angles_rad: np.ndarray) -> np.ndarray:
    """``(N,)`` how far each vertebra's farthest visible keypoint lies from its box centre, in half box
    sizes along the box's turned axes (<= 1: every point inside the box; NaN: no visible point)."""
    kp = np.where(np.asarray(visible, bool)[..., None], np.asarray(keypoints_px, np.float64), np.nan)
    b = np.asarray(boxes_px, np.float64)
    c, half = 0.5 * (b[:, :2] + b[:, 2:]), np.maximum(0.5 * (b[:, 2:] - b[:, :2]), 1e-9)
    q = frame_coords(kp - c[:, None], angles_rad)
    r = np.max(np.abs(q) / half[:, None], axis=-1)
    with np.errstate(all="ignore"):
        return np.where(np.all(np.isnan(r), axis=1), np.nan, np.nanmax(np.where(np.isnan(r), -np.inf, r), axis=1))


def frame_box_dataset(dataset_dir: str | os.PathLike, out_dir: str | os.PathLike, rule: FrameBoxes,
                      splits: Sequence[str] = ("training", "validation"), max_outside: float | None = 2.0) -> Path:
    """A copy of a dataset folder whose labels of ``splits`` carry :class:`FrameBoxes` boxes and angles
    around their annotated centres (the corners' mean); a vertebra without four corners, or a film with
    fewer than two such vertebrae, keeps its keypoints' axis-aligned box.

    A box made from the centres misses its vertebra where the annotation's centres are not a spine's
    (levels out of order, a vertebra labelled twice: AASCE has such films): a vertebra whose keypoints
    reach farther than ``max_outside`` half box sizes from its box centre (:func:`outside_ratio`) is
    left out of these splits (its points marked not visible; ``meta["frame_boxes_left_out"]`` lists
    its level). Such targets lie crops away from the crop and would set the target codec's scale.
    None keeps every vertebra.

    Returns:
        ``out_dir``.
    """
    from monai_spine.data.keypoints import get_scheme

    def rebox(ann: Any) -> Any:
        boxes = ann.boxes_from_keypoints()
        angles = np.zeros(len(ann.levels))
        rows, centres, _, _ = annotation_frames(ann.keypoints_px, ann.visible, get_scheme(ann.scheme).corner_indices,
                                                1.0, levels=ann.levels)
        if len(rows) >= 2:
            boxes[rows], angles[rows] = rule.boxes(centres, [ann.levels[r] for r in rows])
        ann.boxes_px, ann.box_angles_rad = boxes, angles
        if max_outside is not None:
            far = outside_ratio(ann.keypoints_px, ann.visible, boxes, angles) > float(max_outside)
            if far.any():
                ann.visible = ann.visible & ~far[:, None]
                ann.meta = {**(ann.meta or {}), "frame_boxes_left_out": [ann.levels[i] for i in np.flatnonzero(far)]}
        return ann

    return reboxed_dataset(dataset_dir, out_dir, rebox, splits)
