"""Reader for CSXA (Cervical Spine X-ray Atlas) lateral cervical radiographs.

Published format (what this reader expects; source below):

* Dataset: Ran Y., Qin W., Qin C. et al., "A high-quality dataset featuring classified and annotated
  cervical spine X-ray atlas", Scientific Data 11, 2024 (doi:10.1038/s41597-024-03383-0): 4963 raw
  PNG lateral cervical radiographs, each with an annotation in JSON (labelme) format holding 23
  keypoints, and per-image metadata (sex, age, *pixel equivalent* measured on the image's ruler,
  symptomatic / asymptomatic class, curvature class, 118 quantitative parameters) in the release's
  spreadsheet.
* The 23 points, in this order: the C2 centroid, the bottom-left and bottom-right corners of C2, then
  the top-left, top-right, bottom-left and bottom-right corners of each of C3, C4, C5, C6 and C7
  (3 + 5 x 4 = 23).
* labelme JSON: ``{"shapes": [{"label": ..., "points": [[x, y]], "shape_type": "point", ...}, ...],
  "imagePath": ..., "imageWidth": W, "imageHeight": H, ...}``; coordinates are pixels of the image.

Uncertain points and how the reader handles them (strict, errors name the file):

* The label strings of the 23 points are not documented in the sources found. Points are matched by
  label when every label is an integer (``1..23`` or ``0..22``, any order; absent numbers are
  missing points; the numbering base is told by the presence of 0 or 23, else it is an error) or
  one of :data:`CSXA_POINT_NAMES` (case-insensitive); otherwise the 23 point shapes are taken in
  file order, and any other count is an error (it cannot be told which is
  missing). Shapes that are not single points (a ruler line, a box) are ignored and listed in
  ``meta["ignored_shapes"]``.
* "left" / "right" in the published order are taken as displayed; each pair is re-ordered by x
  (a swapped pair is noted in ``meta["label_notes"]``).
* Spacing: the pixel equivalent is per image, from the ruler. It is taken (in this precedence) from
  an explicit ``spacing_mm``, a spacing table (:func:`~monai_spine.data.spacing_table.read_spacing_table`,
  e.g. a CSV export of the release's spreadsheet with an image-name column and a pixel-equivalent
  column, in mm per pixel unless ``unit="px_per_mm"``), or a top-level key of the JSON named
  ``pixel_equivalent`` / ``pixelEquivalent`` / ``pixel_spacing`` / ``spacing_mm``; otherwise it is
  unknown (never 1.0). Known spacing is recorded as source ``sidecar`` with ``meta["spacing_from"]``.

Mapping onto the project's schemes: region ``cervical``, scheme ``lateral5``, levels C3-C7; the
spinous process is not annotated (``SP`` invisible). Which corner is anterior depends on the side
the patient faces, decided per image by :func:`decide_cervical_facing` (or forced with
``facing="left" / "right"``). C2 is outside the ``cervical`` levels: its points are kept as
``meta["extra_points_px"]["C2"] = {"centroid": [x, y], "AI": [x, y], "PI": [x, y]}`` (null when
missing), named anatomically after the facing decision.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from monai_spine.data.aasce import read_image_size
from monai_spine.data.annotation import AnnotationError, SpineAnnotation
from monai_spine.data.lateral_corners import (
    decide_facing,
    hide_outside,
    lateral5_from_endplates,
    lordosis_cue,
    mean_width,
    nan_outside,
    point_or_none,
    sort_left_right,
)
from monai_spine.data.spacing_table import parse_spacing_value, resolve_spacing

__all__ = [
    "CSXA_NUM_POINTS",
    "CSXA_LEVELS",
    "CSXA_POINT_NAMES",
    "CSXA_SPACING_KEYS",
    "CsxaError",
    "read_labelme_points",
    "csxa_points_to_endplates",
    "decide_cervical_facing",
    "find_csxa_image",
    "read_csxa",
]

#: points per image
CSXA_NUM_POINTS = 23
#: vertebrae with four corners (the ``cervical`` region's levels)
CSXA_LEVELS = ("C3", "C4", "C5", "C6", "C7")
#: the 23 points in the published order (names used by this reader; also accepted as labels)
CSXA_POINT_NAMES = ("C2_centroid", "C2_BL", "C2_BR") + tuple(
    f"{lev}_{c}" for lev in CSXA_LEVELS for c in ("TL", "TR", "BL", "BR")
)
#: top-level JSON keys read as the image's pixel equivalent (mm per pixel)
CSXA_SPACING_KEYS = ("pixel_equivalent", "pixelEquivalent", "pixel_spacing", "spacing_mm")

_IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".PNG", ".JPG", ".JPEG")


class CsxaError(AnnotationError):
    """A CSXA (labelme) file is malformed; the message names the file and the problem."""


def _as_int_label(label: Any) -> int | None:
    try:
        text = str(label).strip()
        return int(text) if text.lstrip("-").isdigit() else None
    except (TypeError, ValueError):
        return None


def read_labelme_points(path: str | os.PathLike) -> tuple[np.ndarray, dict[str, Any]]:
    """Read the 23 CSXA points of a labelme JSON file.

    Args:
        path: the labelme JSON.

    Returns:
        ``(points_px, info)``: (23, 2) float64 ``(x, y)`` in the published order (NaN for a missing
        point), and ``info`` with ``image_path`` (the file's ``imagePath`` or None), ``image_size``
        (``(W, H)`` or None), ``matched_by`` (``"number"``, ``"name"`` or ``"order"``),
        ``ignored_shapes`` (labels of non-point shapes) and ``spacing`` (a spacing key's value and
        name, or None).

    Raises:
        CsxaError: not JSON, not a labelme object, malformed points, wrong point count, duplicate
        labels.
        FileNotFoundError: the file does not exist.
    """
    try:
        with open(path, encoding="utf-8") as f:
            d = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CsxaError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(d, dict) or not isinstance(d.get("shapes"), list):
        raise CsxaError(f"{path}: not a labelme file (no 'shapes' list)")
    labels: list[Any] = []
    pts: list[tuple[float, float]] = []
    ignored: list[str] = []
    for i, s in enumerate(d["shapes"]):
        if not isinstance(s, dict) or not isinstance(s.get("points"), list):
            raise CsxaError(f"{path}: shapes[{i}] has no 'points' list")
        stype = s.get("shape_type", "point")
        if stype != "point" or len(s["points"]) != 1:
            ignored.append(str(s.get("label")))
            continue
        p = s["points"][0]
        try:
            x, y = float(p[0]), float(p[1])
        except (TypeError, ValueError, IndexError, KeyError):
            raise CsxaError(f"{path}: shapes[{i}] ({s.get('label')!r}) point is not [x, y]: {p!r}") from None
        if not (math.isfinite(x) and math.isfinite(y)):
            raise CsxaError(f"{path}: shapes[{i}] ({s.get('label')!r}) has a non-finite coordinate")
        labels.append(s.get("label"))
        pts.append((x, y))
    out = np.full((CSXA_NUM_POINTS, 2), np.nan)
    ints = [_as_int_label(lab) for lab in labels]
    lower_names = [n.lower() for n in CSXA_POINT_NAMES]
    names = [str(lab).strip().lower() for lab in labels]
    if labels and all(v is not None for v in ints):
        if 0 in ints and CSXA_NUM_POINTS in ints:
            raise CsxaError(f"{path}: point labels include both 0 and {CSXA_NUM_POINTS}")
        if 0 not in ints and CSXA_NUM_POINTS not in ints:
            raise CsxaError(
                f"{path}: point labels {sorted(ints)} have neither 0 nor {CSXA_NUM_POINTS}: cannot tell "
                "0-based from 1-based numbering"
            )
        base = 0 if 0 in ints else 1
        idx = [v - base for v in ints]
        matched_by = "number"
        bad = [lab for lab, j in zip(labels, idx) if not 0 <= j < CSXA_NUM_POINTS]
        if bad:
            raise CsxaError(f"{path}: point labels {bad} are outside 1..23 (or 0..22)")
    elif labels and all(n in lower_names for n in names):
        idx = [lower_names.index(n) for n in names]
        matched_by = "name"
    else:
        if len(pts) != CSXA_NUM_POINTS:
            raise CsxaError(
                f"{path}: {len(pts)} point shapes, expected {CSXA_NUM_POINTS} (labels are not numbers or "
                "known names, so points are taken in file order and none may be missing)"
            )
        idx = list(range(CSXA_NUM_POINTS))
        matched_by = "order"
    dups = sorted({str(labels[k]) for k, j in enumerate(idx) if idx.count(j) > 1})
    if dups:
        raise CsxaError(f"{path}: point labels {dups} appear more than once")
    for j, p in zip(idx, pts):
        out[j] = p
    size = None
    w, h = d.get("imageWidth"), d.get("imageHeight")
    if w is not None or h is not None:
        try:
            size = (int(w), int(h))
        except (TypeError, ValueError, OverflowError):
            raise CsxaError(f"{path}: imageWidth/imageHeight are not integers: {w!r}, {h!r}") from None
        if min(size) <= 0:
            raise CsxaError(f"{path}: image size {size} is not positive")
    spacing = None
    for key in CSXA_SPACING_KEYS:
        if d.get(key) is not None:
            spacing = (d[key], key)
            break
    image_path = d.get("imagePath")
    info = {
        "image_path": str(image_path) if image_path else None,
        "image_size": size,
        "matched_by": matched_by,
        "ignored_shapes": ignored,
        "spacing": spacing,
    }
    return out, info


def csxa_points_to_endplates(points_px: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Split the 23 points into C2 and C3-C7 endplates.

    Args:
        points_px: (23, 2) points in the published order.

    Returns:
        ``(c2_centroid, c2_bottom, tops, bottoms)``: (2,), (2, 2) ``[first, second]``,
        (5, 2, 2) superior endplates and (5, 2, 2) inferior endplates of C3-C7, ``[corner, (x, y)]``
        with the published left corner first.
    """
    p = np.asarray(points_px, dtype=np.float64)
    if p.shape != (CSXA_NUM_POINTS, 2):
        raise ValueError(f"expected ({CSXA_NUM_POINTS}, 2) points, got {p.shape}")
    verts = p[3:].reshape(len(CSXA_LEVELS), 4, 2)
    return p[0], p[1:3], verts[:, 0:2], verts[:, 2:4]


def decide_cervical_facing(c2_centroid: np.ndarray, c2_bottom_lr: np.ndarray, tops_lr: np.ndarray,
                           bottoms_lr: np.ndarray, facing: str = "auto",
                           default: str = "left") -> tuple[str, dict[str, Any]]:
    """Side a lateral cervical radiograph's patient faces, from its points.

    Cues (positive = anterior on the image left):

    * ``lordosis``: between the highest available endplate (C2 inferior, else C3 superior, ...) and
      the lowest (C7 inferior, ...), the anterior column is taller than the posterior one
      (cervical lordosis): (left height - right height) / mean endplate width. Weak or reversed in
      straight or kyphotic necks.
    * ``c2_c7_sva``: the C2 centroid lies anterior to the middle of the C7 superior endplate (the
      C2-C7 sagittal vertical axis is normally 15-20 mm anterior): (x_mid - x_C2) / endplate width.

    Args:
        c2_centroid: (2,) point (NaN when missing).
        c2_bottom_lr: (2, 2) C2 inferior endplate, left first.
        tops_lr: (5, 2, 2) C3-C7 superior endplates, left first.
        bottoms_lr: (5, 2, 2) C3-C7 inferior endplates, left first.
        facing: ``"auto"``, ``"left"`` or ``"right"`` (see
            :func:`~monai_spine.data.lateral_corners.decide_facing`).
        default: answer when the cues do not decide.
    """
    endplates = np.concatenate([np.asarray(c2_bottom_lr, dtype=np.float64)[None],
                                np.stack([tops_lr, bottoms_lr], axis=1).reshape(-1, 2, 2)], axis=0)
    width = mean_width(endplates)
    ok = [i for i in range(endplates.shape[0]) if np.all(np.isfinite(endplates[i]))]
    cues: dict[str, float | None] = {"lordosis": None, "c2_c7_sva": None}
    if len(ok) >= 2:
        cues["lordosis"] = lordosis_cue(endplates[ok[0]], endplates[ok[-1]], width)
    c7_top = np.asarray(tops_lr, dtype=np.float64)[-1]
    c2 = np.asarray(c2_centroid, dtype=np.float64)
    if np.all(np.isfinite(c7_top)) and np.all(np.isfinite(c2)) and math.isfinite(width) and width > 0:
        cues["c2_c7_sva"] = float((c7_top[:, 0].mean() - c2[0]) / width)
    return decide_facing(cues, facing=facing, default=default)


def find_csxa_image(json_path: str | os.PathLike, image_path: str | None = None) -> Path:
    """The image of a labelme file: its ``imagePath`` (relative to the JSON's folder), else an image
    with the JSON's stem beside it.

    Raises:
        FileNotFoundError: neither exists.
    """
    jp = Path(json_path)
    tried = []
    if image_path:
        cand = Path(image_path.replace("\\", "/"))
        cand = cand if cand.is_absolute() else jp.parent / cand
        if cand.is_file():
            return cand
        tried.append(str(cand))
        by_name = jp.parent / cand.name
        if by_name.is_file():
            return by_name
    for ext in _IMAGE_EXTS:
        cand = jp.with_suffix(ext)
        if cand.is_file():
            return cand
        tried.append(cand.name)
    raise FileNotFoundError(f"{json_path}: image not found (tried {', '.join(tried[:4])}, ...)")


def read_csxa(
    json_path: str | os.PathLike,
    image: str | os.PathLike | None = None,
    spacing_mm: float | Sequence[float] | None = None,
    spacing_table: Mapping[str, tuple[float, float]] | None = None,
    spacing_table_name: str | None = None,
    spacing_unit: str = "mm_per_px",
    facing: str = "auto",
    default_facing: str = "left",
) -> SpineAnnotation:
    """Read one CSXA labelme JSON as a :class:`SpineAnnotation`.

    Args:
        json_path: the labelme JSON.
        image: the radiograph; default from ``imagePath`` / the JSON's stem (:func:`find_csxa_image`).
        spacing_mm: explicit spacing (one number or ``(sx, sy)`` mm per pixel); overrides the rest.
        spacing_table: table of :func:`~monai_spine.data.spacing_table.read_spacing_table`, keyed by
            image stem.
        spacing_table_name: where the table came from (recorded in ``meta["spacing_from"]``).
        spacing_unit: unit of a spacing key inside the JSON (``"mm_per_px"`` or ``"px_per_mm"``).
        facing: ``"auto"`` (:func:`decide_cervical_facing`), ``"left"`` or ``"right"``.
        default_facing: the facing used when the cues do not decide.

    Returns:
        Region ``cervical``, scheme ``lateral5``, levels C3-C7, keypoints (5, 5, 2) with ``SP``
        invisible; C2 in ``meta["extra_points_px"]``.

    Raises:
        CsxaError / AnnotationError: malformed file, image size mismatch, points off the image.
        FileNotFoundError: the JSON or its image is missing.
    """
    json_path = Path(json_path)
    pts, info = read_labelme_points(json_path)
    img = Path(image) if image is not None else find_csxa_image(json_path, info["image_path"])
    size = read_image_size(img)
    if info["image_size"] is not None and tuple(info["image_size"]) != tuple(size):
        raise CsxaError(
            f"{json_path}: imageWidth/imageHeight {info['image_size']} differ from the image {img} ({size})"
        )
    c2, c2_bottom, tops, bottoms = csxa_points_to_endplates(pts)
    pairs, swapped = sort_left_right(np.concatenate([c2_bottom[None], tops, bottoms], axis=0))
    pair_names = (["C2 inferior"] + [f"{lev} superior" for lev in CSXA_LEVELS]
                  + [f"{lev} inferior" for lev in CSXA_LEVELS])
    notes = [f"left_right_swapped: {pair_names[i]}" for i in swapped]
    c2_bottom, tops, bottoms = pairs[0], pairs[1:6], pairs[6:11]
    for j, lev in enumerate(CSXA_LEVELS):
        both = np.all(np.isfinite(tops[j])) and np.all(np.isfinite(bottoms[j]))
        if both and tops[j][:, 1].mean() >= bottoms[j][:, 1].mean():
            raise CsxaError(f"{json_path}: {lev} top corners are not above its bottom corners")
    fac, evidence = decide_cervical_facing(nan_outside(c2, size), nan_outside(c2_bottom, size), nan_outside(tops, size),
                                           nan_outside(bottoms, size), facing=facing, default=default_facing)
    kp = lateral5_from_endplates(tops, bottoms, fac)
    vis = np.all(np.isfinite(kp), axis=-1)
    vis = hide_outside(kp, vis, size, str(json_path), ("AS", "PS", "AI", "PI", "SP"), CSXA_LEVELS, notes)
    if not vis.any():
        raise CsxaError(f"{json_path}: no visible C3-C7 corner")
    missing = [CSXA_POINT_NAMES[i] for i in range(CSXA_NUM_POINTS) if not np.all(np.isfinite(pts[i]))]
    if missing:
        notes.append(f"missing_points: {', '.join(missing)}")
    a, p = (0, 1) if fac == "left" else (1, 0)
    meta: dict[str, Any] = {
        "source_format": "csxa",
        "source_file": json_path.name,
        "points_matched_by": info["matched_by"],
        "ignored_shapes": info["ignored_shapes"],
        "facing": fac,
        "facing_evidence": evidence,
        "extra_points_px": {
            "C2": {"centroid": point_or_none(c2), "AI": point_or_none(c2_bottom[a]), "PI": point_or_none(c2_bottom[p])}
        },
        "label_notes": notes,
    }
    sp, source, where = resolve_spacing(spacing_mm, spacing_table, json_path.stem, spacing_table_name)
    if sp is None and spacing_table is not None:
        sp, source, where = resolve_spacing(None, spacing_table, img.stem, spacing_table_name)
    if sp is None and info["spacing"] is not None:
        value, key = info["spacing"]
        sp = parse_spacing_value(value, unit=spacing_unit, where=f"{json_path}: {key}")
        if sp is not None:
            source, where = "sidecar", f"labelme JSON key {key!r}"
    if where is not None:
        meta["spacing_from"] = where
    return SpineAnnotation(
        levels=list(CSXA_LEVELS),
        keypoints_px=kp,
        visible=vis,
        region="cervical",
        scheme="lateral5",
        image=str(img.resolve()),
        image_size=size,
        spacing_mm=sp,
        spacing_source=source if sp is not None else "unknown",
        meta=meta,
    )
