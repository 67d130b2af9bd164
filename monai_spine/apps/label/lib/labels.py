"""Labels submitted to the Label app, free of MONAI Label: safe image names, uploads parsed and checked, labels written.

Units: points are ``(x, y)`` pixels of the radiograph (:mod:`monai_spine.data.keypoints`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from monai_spine.apps.label.lib.core import LabelAppError

__all__ = ["safe_image_id", "label_from_upload", "write_label"]


def safe_image_id(image_id: str) -> str:
    """Check that an image id (or file name) names a file directly inside the studies folder.

    Refused: empty names, absolute paths, path separators (``/`` or ``\\``), ``.`` and ``..``,
    names starting with a dot, and control characters.

    Raises:
        LabelAppError: the name and the reason.
    """
    s = str(image_id)
    if not s or s.strip() != s:
        raise LabelAppError(f"refused name {image_id!r}: empty or surrounded by spaces")
    if os.path.isabs(s) or "/" in s or "\\" in s or s in (".", "..") or s.startswith(".") or ".." in s.split("."):
        raise LabelAppError(f"refused name {image_id!r}: it must be a plain file name inside the studies folder")
    if any(ord(ch) < 32 for ch in s) or ":" in s:
        raise LabelAppError(f"refused name {image_id!r}: control characters or ':'")
    return s


def label_from_upload(path: str | os.PathLike, image_path: str | os.PathLike, image_id: str,
                      expected_scheme: str | None = None) -> Any:
    """Parse an uploaded label: a ``monai-spine-keypoints`` JSON or a 3D Slicer markups JSON.

    Markups without the ``monaiSpine`` block take the image's spacing (positions in mm) or, when it is
    unknown, pixel units. The image, its size and its spacing are always those of the datastore's
    image (the label's own ``image`` field is ignored: a label cannot point outside the studies).
    With ``expected_scheme`` (the app's regressor's), a label of another scheme is refused: the
    training stacks every label's points, so one 5-point lateral label among 4-point AP ones would
    stop every training.

    Returns:
        The :class:`~monai_spine.data.annotation.SpineAnnotation`.

    Raises:
        LabelAppError: not JSON, or not a valid label (the message names the image id and the problem).
    """
    from monai_spine.data.annotation import AnnotationError, SpineAnnotation
    from monai_spine.data.readers import read_xray
    from monai_spine.data.slicer import MONAI_SPINE_KEY, markups_to_annotation

    try:
        d = json.loads(Path(path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as e:
        raise LabelAppError(f"label of {image_id}: not a JSON file ({e})") from None
    if not isinstance(d, dict):
        raise LabelAppError(f"label of {image_id}: expected a JSON object")
    img = read_xray(image_path)
    if "markups" in d:
        kinds = [m.get("type") for m in (d.get("markups") or []) if isinstance(m, dict)]
        if not any(k in (None, "Fiducial") for k in kinds):
            raise LabelAppError(
                f"label of {image_id}: the markups file holds no point list (markups: {kinds or 'none'}); 3D Slicer's "
                "'Submit Label' sends ROI boxes for a detection task: submit the keypoint point list instead "
                "(docs/label.md, 'Submitting the points')")
    try:
        if "markups" in d:
            has_block = any(isinstance(m, dict) and MONAI_SPINE_KEY in m for m in d.get("markups") or [])
            if has_block:
                ann = markups_to_annotation(d, source=f"label of {image_id}")
            else:
                ann = markups_to_annotation(d, spacing_mm=img.spacing_mm, source=f"label of {image_id}")
        else:
            d = dict(d)
            d["image"] = None
            ann = SpineAnnotation.from_dict(d, source=f"label of {image_id}")
    except AnnotationError as e:
        raise LabelAppError(str(e)) from None
    if expected_scheme is not None and ann.scheme != expected_scheme:
        from monai_spine.data.keypoints import get_scheme

        raise LabelAppError(
            f"label of {image_id}: keypoint scheme {ann.scheme!r} ({ann.keypoints_px.shape[1]} points per vertebra) "
            f"does not match the app's model ({expected_scheme!r}, {get_scheme(expected_scheme).num_points} points "
            "per vertebra); label this film with the model's scheme or serve it with a model of its view")
    ann.image = str(image_path)
    ann.image_size = img.size_wh
    if img.spacing_mm is not None or ann.spacing_mm is None:
        ann.spacing_mm, ann.spacing_source = img.spacing_mm, img.spacing_source
    w, h = img.size_wh
    kp = ann.keypoints_px[ann.visible]
    if kp.size and (kp.min() < -0.5 or np.any(kp[:, 0] > w - 0.5) or np.any(kp[:, 1] > h - 0.5)):
        raise LabelAppError(f"label of {image_id}: visible points lie outside the {w} x {h} image")
    return ann


def write_label(ann: Any, path: str | os.PathLike, meta: Mapping[str, Any] | None = None) -> None:
    """Write an annotation as ``monai-spine-keypoints`` JSON atomically (image path relative to the label)."""
    from monai_spine.data.annotation import write_annotation

    if meta:
        ann.meta = {**(ann.meta or {}), **dict(meta)}
    write_annotation(ann, path)
