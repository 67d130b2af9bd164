"""Reader for BUU-LSPINE (Burapha University lumbar spine radiographs, AP and lateral).

Published format (what this reader expects; sources below):

* Dataset: Klinwichit P. et al., "BUU-LSPINE: A Thai Open Lumbar Spine Dataset for Spondylolisthesis
  Detection", Applied Sciences 13(15):8646, 2023 (doi:10.3390/app13158646); 3600 patients, one AP and
  one lateral (LA) plain radiograph each; downloaded from https://services.informatics.buu.ac.th/spine/.
* Folder layout, as used by public code that reads the release (e.g. the MAHT-Net dataset loader and
  its data-preparation notes, github.com/mohamednourdine/spondylolisthesis-maht-net)::

      <root>/AP/0001-F-037Y0.jpg   <root>/AP/0001-F-037Y0.csv     # AP view
      <root>/LA/0001-F-037Y1.jpg   <root>/LA/0001-F-037Y1.csv     # lateral view
      <root>/KIOM2022_dataset_report.xlsx                           # per-patient report spreadsheet

  File stems are ``<4-digit patient id>-<F|M>-<3-digit age>Y<view digit>``; the view digit is ``0``
  for AP and ``1`` for lateral (it matches the AP / LA folder).
* Annotation CSV: one row per vertebral endplate, ``x1,y1,x2,y2,label``: the left corner ``(x1, y1)``
  and right corner ``(x2, y2)`` of the endplate in pixels, and an integer label (the dataset's
  per-endplate slip class; kept in ``meta["row_labels"]``, not interpreted). Rows go top to bottom:
  L1 superior, L1 inferior, ..., L5 superior, L5 inferior (10 rows, AP), plus the superior endplate of
  S1 (11 rows, lateral). Public loaders read the CSVs without a header; a first row
  ``x1,y1,x2,y2,label`` is also accepted.
* Pixel spacing: the report spreadsheet has a sheet ``Pixel Spacing`` with columns ``filename``
  (the patient part of the stem, without the view digit, e.g. ``0001-F-037Y``) and
  ``pixel_spacing`` (mm per pixel), as read by public conversion code (a BUU xlsx-to-Label-Studio
  script reading ``sheet_name='Pixel Spacing'``, columns ``filename`` / ``pixel_spacing``). The
  endplate corners also appear in sheets such as ``Pos_LA`` (columns ``L1a_1c, L1a_1r, ...``:
  level, ``a`` superior / ``b`` inferior endplate, corner 1 / 2, column / row), which confirms the
  superior-then-inferior row order of the CSVs.

Uncertain points and how the reader handles them (strict, with errors naming the file):

* The number of rows must be exactly 10 (AP) or 11 (lateral); five numeric columns per row.
* The spacing cell may hold one number (isotropic) or two (``"[0.14, 0.14]"`` or ``"0.14\\0.14"``);
  two numbers are read in DICOM order ``[row, column]`` = ``(sy, sx)``. Values outside
  0.005-5 mm/pixel are refused (a table in pixels per mm needs ``unit="px_per_mm"``).
* ``.xlsx`` is read only when ``openpyxl`` is importable; otherwise export the ``Pixel Spacing``
  sheet as CSV (the error says so). A missing spacing leaves the annotation's spacing unknown
  (``spacing_mm=None``, source ``unknown``), never 1.0. A spacing from the report or given by the
  user is recorded as source ``sidecar`` with ``meta["spacing_from"]`` naming where it came from.
* A row of four zeros or empty cells is read as a missing endplate: its corners are invisible.
  Left/right are taken from the x coordinates (a swapped pair is put back and noted in
  ``meta["label_notes"]``). A vertebra whose superior endplate lies below its inferior one is an
  error. Points outside the image are made invisible and noted; more than half outside is an error.

Mapping onto the project's schemes:

* AP: region ``ap``, scheme ``ap4`` (``TL, TR, BL, BR`` as displayed), levels L1-L5.
* Lateral: region ``lumbar``, scheme ``lateral5``, levels L1-L5; the spinous process is not
  annotated (``SP`` invisible). Which corner is anterior depends on the side the patient faces,
  decided per image by :func:`decide_lumbar_facing` (or forced with ``facing="left" / "right"``):
  the lumbar lordosis makes the front of the column taller than the back between the L1 superior
  and S1 superior endplates, and the sacral slope puts the anterior corner of the S1 superior
  endplate lower than its posterior corner. The S1 endplate is outside the ``lumbar`` levels: it is
  kept as ``meta["extra_points_px"]["S1"] = {"AS": [x, y], "PS": [x, y]}`` (null when missing).

The spacing table is read by :func:`monai_spine.data.spacing_table.read_spacing_table`; the
lateral-corner helpers shared with :mod:`monai_spine.data.csxa` (left/right order, facing decision,
``lateral5`` mapping, points outside the image) are in :mod:`monai_spine.data.lateral_corners`.
"""

from __future__ import annotations

import csv
import math
import os
import re
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
from monai_spine.data.spacing_table import resolve_spacing

__all__ = [
    "BUU_VIEWS",
    "BUU_NUM_ROWS",
    "BUU_LEVELS",
    "BUU_NAME_PATTERN",
    "BuuLspineError",
    "parse_buu_name",
    "buu_view_of",
    "read_buu_csv",
    "read_buu_lspine",
    "find_buu_image",
    "decide_lumbar_facing",
]

#: the two views of the dataset: folder name / view digit 0 = AP, 1 = LA (lateral)
BUU_VIEWS = ("AP", "LA")
#: CSV rows per view (5 vertebrae x 2 endplates, plus the S1 superior endplate on lateral views)
BUU_NUM_ROWS = {"AP": 10, "LA": 11}
#: annotated vertebrae (the schemes' levels); S1 is extra data
BUU_LEVELS = ("L1", "L2", "L3", "L4", "L5")
#: file stem: patient id, sex, age in years, view digit
BUU_NAME_PATTERN = re.compile(r"^(?P<patient>\d{4})-(?P<sex>[FM])-(?P<age>\d{3})Y(?P<view>[01])$", re.IGNORECASE)

_HEADER = ("x1", "y1", "x2", "y2", "label")
_IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".JPG", ".JPEG", ".PNG")


class BuuLspineError(AnnotationError):
    """A BUU-LSPINE file is malformed; the message names the file, row and problem."""


# ----------------------------------------------------------------------------------------------
# names and views
# ----------------------------------------------------------------------------------------------
def parse_buu_name(stem: str) -> dict[str, Any] | None:
    """Split a BUU-LSPINE file stem ``0001-F-037Y1`` into its fields.

    Returns:
        ``{"patient": "0001", "sex": "F", "age_years": 37, "view": "LA", "patient_key": "0001-F-037Y"}``,
        or None when ``stem`` does not follow the naming pattern.
    """
    m = BUU_NAME_PATTERN.match(stem)
    if m is None:
        return None
    return {
        "patient": m["patient"],
        "sex": m["sex"].upper(),
        "age_years": int(m["age"]),
        "view": BUU_VIEWS[int(m["view"])],
        "patient_key": stem[:-1],
    }


def buu_view_of(path: str | os.PathLike, view: str = "auto") -> str:
    """The view (``"AP"`` or ``"LA"``) of an annotation file.

    Args:
        path: the CSV (or image) path.
        view: ``"auto"`` (from the file name's view digit, else the parent folder ``AP`` / ``LA``),
            or ``"AP"`` / ``"LA"`` (``"ap"``, ``"lateral"`` accepted) to force it.

    Raises:
        BuuLspineError: the view cannot be told, or the name and folder disagree.
    """
    v = str(view).strip().upper()
    if v in ("LATERAL", "LAT", "LA"):
        return "LA"
    if v == "AP":
        return "AP"
    if v != "AUTO":
        raise BuuLspineError(f"{path}: unknown view {view!r}; expected auto, ap or lateral")
    p = Path(path)
    info = parse_buu_name(p.stem)
    folder = p.parent.name.upper()
    folder_view = folder if folder in BUU_VIEWS else None
    if info is not None:
        if folder_view is not None and folder_view != info["view"]:
            raise BuuLspineError(
                f"{path}: the file name says view {info['view']} but it is in folder {p.parent.name}; "
                "pass the view explicitly"
            )
        return info["view"]
    if folder_view is not None:
        return folder_view
    raise BuuLspineError(
        f"{path}: cannot tell AP from lateral (name is not like 0001-F-037Y1 and the folder is not AP/LA); "
        "pass the view explicitly"
    )


def find_buu_image(csv_path: str | os.PathLike) -> Path:
    """The image beside an annotation CSV (same stem, ``.jpg`` / ``.png``).

    Raises:
        FileNotFoundError: no image with that stem beside the CSV.
    """
    p = Path(csv_path)
    for ext in _IMAGE_EXTS:
        cand = p.with_suffix(ext)
        if cand.is_file():
            return cand
    raise FileNotFoundError(f"{csv_path}: no image {p.stem}.jpg / .png beside the annotation")


# ----------------------------------------------------------------------------------------------
# annotation CSV
# ----------------------------------------------------------------------------------------------
def read_buu_csv(path: str | os.PathLike, num_rows: int | None = None) -> tuple[np.ndarray, np.ndarray, list[int | None]]:
    """Read one BUU-LSPINE annotation CSV.

    Args:
        path: the CSV file.
        num_rows: expected number of endplate rows (10 AP, 11 lateral); None: any.

    Returns:
        ``(endplates_px, present, labels)``: ``endplates_px`` (R, 2, 2) float64 as in the file,
        ``[row, (first, second) corner, (x, y)]``; ``present`` (R,) bool (False for a missing row:
        four zeros or empty cells, whose points are NaN); ``labels`` the R integer labels (None if
        empty).

    Raises:
        BuuLspineError: wrong column count, non-numeric value, wrong row count (naming file and row).
        FileNotFoundError: the file does not exist.
    """
    rows: list[list[str]] = []
    with open(path, encoding="utf-8-sig", newline="") as f:
        try:
            for i, row in enumerate(csv.reader(f)):
                cells = [c.strip() for c in row]
                if not cells or all(not c for c in cells):
                    continue
                if not rows and [c.lower() for c in cells] == list(_HEADER):
                    continue  # optional header
                rows.append(cells)
        except (csv.Error, UnicodeDecodeError) as e:
            raise BuuLspineError(f"{path}: not a readable CSV ({e})") from None
    if num_rows is not None and len(rows) != num_rows:
        raise BuuLspineError(f"{path}: {len(rows)} endplate rows, expected {num_rows} (x1,y1,x2,y2,label)")
    pts = np.full((len(rows), 2, 2), np.nan)
    present = np.zeros(len(rows), dtype=bool)
    labels: list[int | None] = []
    for i, cells in enumerate(rows):
        if len(cells) != 5:
            raise BuuLspineError(f"{path}: row {i + 1} has {len(cells)} values, expected 5 (x1,y1,x2,y2,label)")
        coords = cells[:4]
        if all(c == "" for c in coords):
            vals = [0.0] * 4
        else:
            try:
                vals = [float(c) for c in coords]
            except ValueError:
                raise BuuLspineError(f"{path}: row {i + 1} is not numeric: {cells}") from None
            if not all(math.isfinite(v) for v in vals):
                raise BuuLspineError(f"{path}: row {i + 1} has a non-finite coordinate: {cells}")
        if cells[4] == "":
            labels.append(None)
        else:
            try:
                lab = float(cells[4])
            except ValueError:
                raise BuuLspineError(f"{path}: row {i + 1} label {cells[4]!r} is not a number") from None
            if not math.isfinite(lab) or lab != int(lab):
                raise BuuLspineError(f"{path}: row {i + 1} label {cells[4]!r} is not an integer")
            labels.append(int(lab))
        if all(v == 0.0 for v in vals):
            continue  # missing endplate
        pts[i] = [[vals[0], vals[1]], [vals[2], vals[3]]]
        present[i] = True
    return pts, present, labels


# ----------------------------------------------------------------------------------------------
# facing of a lateral lumbar view
# ----------------------------------------------------------------------------------------------
def decide_lumbar_facing(endplates_lr: np.ndarray, facing: str = "auto", default: str = "left") -> tuple[str, dict[str, Any]]:
    """Side a lateral lumbar radiograph's patient faces, from its endplate corners.

    Cues (positive = anterior on the image left):

    * ``lordosis``: between the highest available superior endplate (L1 first) and the S1
      superior endplate (else the lowest inferior endplate), the anterior column is taller than
      the posterior one (lumbar lordosis, normally 40-60 degrees): (left height - right height) /
      mean endplate width.
    * ``sacral_slope``: the anterior corner of the S1 superior endplate is lower (larger y) than
      the posterior one (sacral slope, normally 30-50 degrees): (y_left - y_right) / endplate width.

    Args:
        endplates_lr: (11, 2, 2) left-first endplates (rows L1 sup, L1 inf, ..., L5 inf, S1 sup),
            NaN for missing rows.
        facing: ``"auto"``, ``"left"`` or ``"right"`` (see :func:`decide_facing`).
        default: answer when the cues do not decide.
    """
    ep = np.asarray(endplates_lr, dtype=np.float64)
    width = mean_width(ep)
    ok = [i for i in range(ep.shape[0]) if np.all(np.isfinite(ep[i]))]
    upper = next((ep[i] for i in ok if i % 2 == 0 and i < 10), None)
    lower = ep[10] if ep.shape[0] > 10 and 10 in ok else next((ep[i] for i in reversed(ok) if i % 2 == 1), None)
    cues: dict[str, float | None] = {"lordosis": lordosis_cue(upper, lower, width), "sacral_slope": None}
    if ep.shape[0] > 10 and 10 in ok:
        s1 = ep[10]
        w = s1[1, 0] - s1[0, 0]
        if w > 0:
            cues["sacral_slope"] = float((s1[0, 1] - s1[1, 1]) / w)
    return decide_facing(cues, facing=facing, default=default)


# ----------------------------------------------------------------------------------------------
# the reader
# ----------------------------------------------------------------------------------------------
def read_buu_lspine(
    csv_path: str | os.PathLike,
    image: str | os.PathLike | None = None,
    view: str = "auto",
    spacing_mm: float | Sequence[float] | None = None,
    spacing_table: Mapping[str, tuple[float, float]] | None = None,
    spacing_table_name: str | None = None,
    facing: str = "auto",
    default_facing: str = "left",
) -> SpineAnnotation:
    """Read one BUU-LSPINE annotation CSV as a :class:`SpineAnnotation`.

    Args:
        csv_path: the annotation CSV.
        image: the radiograph; default: the ``.jpg`` / ``.png`` with the same stem beside the CSV.
        view: ``"auto"`` (file name / folder), ``"ap"`` or ``"lateral"``.
        spacing_mm: explicit spacing for this image: one number or ``(sx, sy)`` mm per pixel;
            overrides the table.
        spacing_table: table of :func:`read_spacing_table` (the report's ``Pixel Spacing`` sheet).
        spacing_table_name: where the table came from (recorded in ``meta["spacing_from"]``).
        facing: lateral views: ``"auto"`` (:func:`decide_lumbar_facing`), ``"left"`` or ``"right"``.
        default_facing: lateral views: the facing used when the cues do not decide.

    Returns:
        AP: region ``ap``, scheme ``ap4``, levels L1-L5, keypoints (5, 4, 2). Lateral: region
        ``lumbar``, scheme ``lateral5``, keypoints (5, 5, 2) with ``SP`` invisible, S1 in
        ``meta["extra_points_px"]``. ``image_size`` from the image header; spacing as described in
        the module docstring.

    Raises:
        BuuLspineError / AnnotationError: malformed CSV or inconsistent points (the message names
        the file).
        FileNotFoundError: the CSV or its image is missing.
    """
    csv_path = Path(csv_path)
    v = buu_view_of(csv_path, view)
    img = Path(image) if image is not None else find_buu_image(csv_path)
    size = read_image_size(img)
    raw, present, labels = read_buu_csv(csv_path, BUU_NUM_ROWS[v])
    ep, swapped = sort_left_right(raw)
    notes = [f"left_right_swapped: row {i + 1}" for i in swapped]
    for j, lev in enumerate(BUU_LEVELS):
        t, b = ep[2 * j], ep[2 * j + 1]
        if present[2 * j] and present[2 * j + 1] and t[:, 1].mean() >= b[:, 1].mean():
            raise BuuLspineError(
                f"{csv_path}: {lev} superior endplate (row {2 * j + 1}) is not above its inferior endplate "
                f"(row {2 * j + 2}); rows must go top to bottom"
            )
    top, bot = ep[0:10:2], ep[1:10:2]
    meta: dict[str, Any] = {"source_format": "buu-lspine", "source_file": csv_path.name, "view": v}
    info = parse_buu_name(csv_path.stem)
    if info is not None:
        meta.update({k: info[k] for k in ("patient", "sex", "age_years")})
    meta["row_labels"] = labels
    if v == "AP":
        kp = np.concatenate([top, bot], axis=1)  # TL, TR, BL, BR
        region, scheme, names = "ap", "ap4", ("TL", "TR", "BL", "BR")
    else:
        fac, evidence = decide_lumbar_facing(nan_outside(ep, size), facing=facing, default=default_facing)
        kp = lateral5_from_endplates(top, bot, fac)
        region, scheme, names = "lumbar", "lateral5", ("AS", "PS", "AI", "PI", "SP")
        meta["facing"] = fac
        meta["facing_evidence"] = evidence
        a, p = (0, 1) if fac == "left" else (1, 0)
        s1 = ep[10]
        meta["extra_points_px"] = {"S1": {"AS": point_or_none(s1[a]), "PS": point_or_none(s1[p])}}
    vis = np.all(np.isfinite(kp), axis=-1)
    vis = hide_outside(kp, vis, size, str(csv_path), names, BUU_LEVELS, notes)
    missing = [f"{BUU_LEVELS[j // 2]} {'superior' if j % 2 == 0 else 'inferior'}" for j in range(10) if not present[j]]
    if missing:
        notes.append(f"missing_endplates: {', '.join(missing)}")
    if not vis.any():
        raise BuuLspineError(f"{csv_path}: no visible point")
    meta["label_notes"] = notes
    patient_keys = (info["patient_key"],) if info is not None else ()  # the report is keyed by patient
    sp, source, where = resolve_spacing(spacing_mm, spacing_table, csv_path.stem, spacing_table_name, patient_keys)
    if where is not None:
        meta["spacing_from"] = where
    return SpineAnnotation(
        levels=list(BUU_LEVELS),
        keypoints_px=kp,
        visible=vis,
        region=region,
        scheme=scheme,
        image=str(img.resolve()),
        image_size=size,
        spacing_mm=sp,
        spacing_source=source,
        meta=meta,
    )
