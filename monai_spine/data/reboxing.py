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

from monai_spine.data.frames import FrameBoxes, annotation_frames

__all__ = ["reboxed_dataset", "frame_box_dataset"]


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


def frame_box_dataset(dataset_dir: str | os.PathLike, out_dir: str | os.PathLike, rule: FrameBoxes,
                      splits: Sequence[str] = ("training", "validation")) -> Path:
    """A copy of a dataset folder whose labels of ``splits`` carry :class:`FrameBoxes` boxes and angles
    around their annotated centres (the corners' mean); a vertebra without four corners, or a film with
    fewer than two such vertebrae, keeps its keypoints' axis-aligned box.

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
        return ann

    return reboxed_dataset(dataset_dir, out_dir, rebox, splits)
