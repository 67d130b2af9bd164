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

This module also holds the spacing-table reader (:func:`read_spacing_table`) and the
lateral-corner helpers shared with :mod:`monai_spine.data.csxa`.
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

__all__ = [
    "BUU_VIEWS",
    "BUU_NUM_ROWS",
    "BUU_LEVELS",
    "BUU_NAME_PATTERN",
    "FACINGS",
    "SPACING_UNITS",
    "BuuLspineError",
    "SpacingTableError",
    "parse_buu_name",
    "buu_view_of",
    "read_buu_csv",
    "read_buu_lspine",
    "find_buu_image",
    "read_spacing_table",
    "lookup_spacing",
    "parse_spacing_value",
    "explicit_spacing",
    "sort_left_right",
    "decide_facing",
    "decide_lumbar_facing",
    "lateral5_from_endplates",
]

#: the two views of the dataset: folder name / view digit 0 = AP, 1 = LA (lateral)
BUU_VIEWS = ("AP", "LA")
#: CSV rows per view (5 vertebrae x 2 endplates, plus the S1 superior endplate on lateral views)
BUU_NUM_ROWS = {"AP": 10, "LA": 11}
#: annotated vertebrae (the schemes' levels); S1 is extra data
BUU_LEVELS = ("L1", "L2", "L3", "L4", "L5")
#: file stem: patient id, sex, age in years, view digit
BUU_NAME_PATTERN = re.compile(r"^(?P<patient>\d{4})-(?P<sex>[FM])-(?P<age>\d{3})Y(?P<view>[01])$", re.IGNORECASE)
#: ``left``: the patient faces image left (anterior on the left, the project's standard display)
FACINGS = ("auto", "left", "right")
#: units of a spacing table's values
SPACING_UNITS = ("mm_per_px", "px_per_mm")

_HEADER = ("x1", "y1", "x2", "y2", "label")
_IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".JPG", ".JPEG", ".PNG")
_SPACING_RANGE_MM = (0.005, 5.0)
#: normalised header names accepted for a spacing table's key / value columns
_KEY_COLUMNS = ("filename", "file", "filenames", "image", "imagename", "imagefile", "name", "id", "imageid")
_VALUE_COLUMNS = (
    "pixelspacing", "pixelspacingmm", "spacing", "spacingmm", "pixelequivalent", "pixelequivalentmm",
    "mmperpixel", "mmpx", "pixelsize", "pixelsizemm",
)
_STRIP_EXTS = (".jpg", ".jpeg", ".png", ".csv", ".json", ".dcm", ".tif", ".tiff", ".bmp")
#: smallest |score| of the summed orientation cues that decides the facing
_MIN_FACING_SCORE = 0.15


class BuuLspineError(AnnotationError):
    """A BUU-LSPINE file is malformed; the message names the file, row and problem."""


class SpacingTableError(AnnotationError):
    """A spacing table (report spreadsheet or its CSV export) is malformed or unreadable."""


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
# left/right, facing, lateral mapping (shared with csxa)
# ----------------------------------------------------------------------------------------------
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


def _mean_width(pairs_lr: np.ndarray) -> float:
    w = np.abs(pairs_lr[:, 1, 0] - pairs_lr[:, 0, 0])
    w = w[np.isfinite(w) & (w > 0)]
    return float(np.mean(w)) if len(w) else float("nan")


def _lordosis_cue(upper_lr: np.ndarray | None, lower_lr: np.ndarray | None, width: float) -> float | None:
    """(left column height - right column height) / width between two endplates (left-first pairs)."""
    if upper_lr is None or lower_lr is None or not (np.all(np.isfinite(upper_lr)) and np.all(np.isfinite(lower_lr))):
        return None
    if not math.isfinite(width) or width <= 0:
        return None
    left_h = lower_lr[0, 1] - upper_lr[0, 1]
    right_h = lower_lr[1, 1] - upper_lr[1, 1]
    return float((left_h - right_h) / width)


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
    width = _mean_width(ep)
    ok = [i for i in range(ep.shape[0]) if np.all(np.isfinite(ep[i]))]
    upper = next((ep[i] for i in ok if i % 2 == 0 and i < 10), None)
    lower = ep[10] if ep.shape[0] > 10 and 10 in ok else next((ep[i] for i in reversed(ok) if i % 2 == 1), None)
    cues: dict[str, float | None] = {"lordosis": _lordosis_cue(upper, lower, width), "sacral_slope": None}
    if ep.shape[0] > 10 and 10 in ok:
        s1 = ep[10]
        w = s1[1, 0] - s1[0, 0]
        if w > 0:
            cues["sacral_slope"] = float((s1[0, 1] - s1[1, 1]) / w)
    return decide_facing(cues, facing=facing, default=default)


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


def _point_or_none(p: np.ndarray) -> list[float] | None:
    return [float(p[0]), float(p[1])] if np.all(np.isfinite(p)) else None


def _outside_image(kp: np.ndarray, vis: np.ndarray, size_wh: tuple[int, int]) -> np.ndarray:
    """(N, K) mask of visible points outside ``[-0.5, W - 0.5] x [-0.5, H - 0.5]``."""
    w, h = size_wh
    with np.errstate(invalid="ignore"):
        out = (kp[..., 0] < -0.5) | (kp[..., 0] > w - 0.5) | (kp[..., 1] < -0.5) | (kp[..., 1] > h - 0.5)
    return out & vis


def _nan_outside(pairs_px: np.ndarray, size_wh: tuple[int, int]) -> np.ndarray:
    """Copy of (..., 2) points with those outside the image set to NaN (orientation cues skip them)."""
    pts = np.array(pairs_px, dtype=np.float64, copy=True)
    out = _outside_image(pts, np.ones(pts.shape[:-1], dtype=bool), size_wh)
    pts[out] = np.nan
    return pts


def _hide_outside(kp: np.ndarray, vis: np.ndarray, size_wh: tuple[int, int], source: str,
                  names: Sequence[str], levels: Sequence[str], notes: list[str]) -> np.ndarray:
    out = _outside_image(kp, vis, size_wh)
    if out.sum() > max(1, vis.sum()) / 2:
        raise AnnotationError(
            f"{source}: {int(out.sum())} of {int(vis.sum())} points lie outside the {size_wh[0]}x{size_wh[1]} image "
            "(wrong image or coordinates in other units?)"
        )
    for i, j in zip(*np.nonzero(out)):
        notes.append(f"point_outside_image: {levels[i]} {names[j]} at ({kp[i, j, 0]:.1f}, {kp[i, j, 1]:.1f}) made invisible")
    return vis & ~out


# ----------------------------------------------------------------------------------------------
# spacing tables
# ----------------------------------------------------------------------------------------------
def _norm_header(s: Any) -> str:
    return re.sub(r"[\s_\-\.()\[\]/]", "", str(s or "")).lower()


def _norm_key(s: Any) -> str:
    k = str(s).strip().replace("\\", "/").rsplit("/", 1)[-1]
    low = k.lower()
    for ext in _STRIP_EXTS:
        if low.endswith(ext):
            k = k[: -len(ext)]
            break
    return k.lower()


def parse_spacing_value(value: Any, unit: str = "mm_per_px", where: str = "spacing") -> tuple[float, float] | None:
    """Parse one spacing cell into ``(sx, sy)`` mm per pixel.

    Accepts a number (isotropic), or two numbers as ``"[a, b]"``, ``"a, b"``, ``"a\\b"`` or a
    2-sequence, read in DICOM order ``[row, column]`` = ``(sy, sx)``.

    Args:
        value: the cell.
        unit: ``"mm_per_px"`` or ``"px_per_mm"`` (values are inverted).
        where: name used in error messages (file and row).

    Returns:
        ``(sx, sy)``, or None for an empty cell.

    Raises:
        SpacingTableError: not one or two numbers, not positive and finite, or implausible
        (outside 0.005-5 mm per pixel).
    """
    if unit not in SPACING_UNITS:
        raise ValueError(f"unit must be one of {SPACING_UNITS}, got {unit!r}")
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        nums = [float(value)]
    elif isinstance(value, (list, tuple)):
        nums = list(value)
    else:
        text = str(value).strip()
        if not text:
            return None
        parts = [t for t in re.split(r"[\s,;\\\[\]()]+", text) if t]
        nums = parts
    try:
        vals = [float(v) for v in nums]
    except (TypeError, ValueError):
        raise SpacingTableError(f"{where}: spacing {value!r} is not one or two numbers") from None
    if len(vals) not in (1, 2):
        raise SpacingTableError(f"{where}: spacing {value!r} is not one or two numbers")
    if not all(math.isfinite(v) and v > 0 for v in vals):
        raise SpacingTableError(f"{where}: spacing {value!r} must be positive and finite")
    if unit == "px_per_mm":
        vals = [1.0 / v for v in vals]
    lo, hi = _SPACING_RANGE_MM
    if not all(lo <= v <= hi for v in vals):
        hint = " (pixels per mm? use unit px_per_mm)" if unit == "mm_per_px" else ""
        raise SpacingTableError(f"{where}: spacing {value!r} is outside {lo}-{hi} mm per pixel{hint}")
    sy, sx = (vals[0], vals[0]) if len(vals) == 1 else (vals[0], vals[1])
    return (sx, sy)


def _table_rows(path: Path, sheet: str | None) -> list[list[Any]]:
    suffix = path.suffix.lower()
    if suffix in (".xlsx", ".xlsm"):
        try:
            import openpyxl  # optional
        except ImportError:
            raise SpacingTableError(
                f"{path}: reading .xlsx needs the 'openpyxl' package, which is not installed; export the "
                f"'{sheet or 'Pixel Spacing'}' sheet as CSV (File > Save As > CSV) and pass that file instead"
            ) from None
        try:
            wb = openpyxl.load_workbook(path, read_only=True, data_only=True)
        except Exception as e:  # openpyxl raises many kinds for a bad file
            raise SpacingTableError(f"{path}: not a readable .xlsx workbook ({e})") from None
        try:
            names = wb.sheetnames
            if sheet is None:
                sheet_name = "Pixel Spacing" if "Pixel Spacing" in names else (names[0] if len(names) == 1 else None)
                if sheet_name is None:
                    raise SpacingTableError(f"{path}: several sheets {names} and none is 'Pixel Spacing'; name one")
            elif sheet in names:
                sheet_name = sheet
            else:
                raise SpacingTableError(f"{path}: no sheet {sheet!r}; sheets are {names}")
            return [list(r) for r in wb[sheet_name].iter_rows(values_only=True)]
        finally:
            wb.close()
    if suffix == ".xls":
        raise SpacingTableError(f"{path}: old .xls workbooks are not read; export the sheet as CSV")
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            text = f.read()
    except UnicodeDecodeError:
        raise SpacingTableError(f"{path}: not a UTF-8 text table (export the sheet as CSV UTF-8)") from None
    first = next((line for line in text.splitlines() if line.strip()), "")
    delim = max((",", ";", "\t"), key=first.count)
    try:
        return [row for row in csv.reader(text.splitlines(), delimiter=delim)]
    except csv.Error as e:
        raise SpacingTableError(f"{path}: not a readable CSV ({e})") from None


def read_spacing_table(
    path: str | os.PathLike,
    sheet: str | None = None,
    key_column: str | None = None,
    value_column: str | None = None,
    unit: str = "mm_per_px",
) -> dict[str, tuple[float, float]]:
    """Read a per-image (or per-patient) pixel spacing table.

    Works for the BUU-LSPINE report's ``Pixel Spacing`` sheet (columns ``filename``,
    ``pixel_spacing``), its CSV export, and similar tables (e.g. CSXA's per-image pixel equivalent):
    the first non-empty row is the header; the key column is the first whose name is one of
    ``filename, file, image, name, id, ...`` and the value column the first named like
    ``pixel_spacing, spacing_mm, pixel_equivalent, mm_per_pixel, ...`` (case, spaces and
    underscores ignored), unless named explicitly.

    Args:
        path: ``.csv`` / ``.tsv`` / ``.txt`` (comma, semicolon or tab separated), or ``.xlsx`` (needs
            ``openpyxl``).
        sheet: workbook sheet (default ``Pixel Spacing``, or the only sheet).
        key_column: header of the key column, to override the guess.
        value_column: header of the spacing column, to override the guess.
        unit: ``"mm_per_px"`` or ``"px_per_mm"``.

    Returns:
        key -> ``(sx, sy)`` mm per pixel; keys are lower-cased file stems (directory and image /
        annotation extension removed). Rows with an empty key or value are skipped.

    Raises:
        SpacingTableError: unreadable file, missing columns, bad or conflicting values (naming the
        file and row).
        FileNotFoundError: the file does not exist.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"spacing table {p} does not exist")
    rows = _table_rows(p, sheet)
    rows = [r for r in rows if r and any(c is not None and str(c).strip() for c in r)]
    if not rows:
        raise SpacingTableError(f"{p}: the table is empty")
    header = [_norm_header(c) for c in rows[0]]

    def _pick(wanted: str | None, candidates: Sequence[str], what: str) -> int:
        if wanted is not None:
            w = _norm_header(wanted)
            if w not in header:
                raise SpacingTableError(f"{p}: no {what} column {wanted!r}; header is {list(rows[0])}")
            return header.index(w)
        for c in candidates:
            if c in header:
                return header.index(c)
        raise SpacingTableError(
            f"{p}: no {what} column (looked for {list(candidates)}); header is {list(rows[0])}; name it explicitly"
        )

    ki = _pick(key_column, _KEY_COLUMNS, "key")
    vi = _pick(value_column, _VALUE_COLUMNS, "spacing")
    table: dict[str, tuple[float, float]] = {}
    for n, row in enumerate(rows[1:], start=2):
        key = row[ki] if ki < len(row) else None
        if key is None or not str(key).strip():
            continue
        where = f"{p}: row {n} ({str(key).strip()})"
        sp = parse_spacing_value(row[vi] if vi < len(row) else None, unit=unit, where=where)
        if sp is None:
            continue
        k = _norm_key(key)
        if k in table and not np.allclose(table[k], sp):
            raise SpacingTableError(f"{where}: spacing {sp} conflicts with an earlier row's {table[k]}")
        table[k] = sp
    return table


def lookup_spacing(table: Mapping[str, tuple[float, float]], stem: str) -> tuple[float, float] | None:
    """Spacing of an image from a table of :func:`read_spacing_table`: by its stem, then (for a
    BUU-LSPINE name) by its patient key without the view digit; None when absent."""
    k = _norm_key(stem)
    if k in table:
        return table[k]
    info = parse_buu_name(Path(stem).stem)
    if info is not None and info["patient_key"].lower() in table:
        return table[info["patient_key"].lower()]
    return None


def explicit_spacing(spacing_mm: float | Sequence[float]) -> tuple[float, float]:
    """Validate a user-given spacing: one number (isotropic) or ``(sx, sy)``, mm per pixel.

    Raises:
        SpacingTableError: not one or two positive numbers in 0.005-5 mm per pixel.
    """
    if isinstance(spacing_mm, (int, float)) and not isinstance(spacing_mm, bool):
        vals = [spacing_mm]
    else:
        try:
            vals = list(spacing_mm)
        except TypeError:
            raise SpacingTableError(f"spacing {spacing_mm!r} is not one or two numbers") from None
    if len(vals) == 2:
        vals = vals[::-1]  # parse_spacing_value reads two numbers as (sy, sx)
    sp = parse_spacing_value(vals, where="spacing")
    if sp is None:
        raise SpacingTableError(f"spacing {spacing_mm!r} is empty")
    return sp


def _resolve_spacing(
    spacing_mm: float | Sequence[float] | None, table: Mapping[str, tuple[float, float]] | None, stem: str,
    table_name: str | None,
) -> tuple[tuple[float, float] | None, str, str | None]:
    """(spacing, source, where-from) with the precedence explicit > table > unknown."""
    if spacing_mm is not None:
        sp = explicit_spacing(spacing_mm)
        return sp, "sidecar", "given by the user"
    if table is not None:
        sp = lookup_spacing(table, stem)
        if sp is not None:
            return sp, "sidecar", f"spacing table {table_name}" if table_name else "spacing table"
    return None, "unknown", None


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
        fac, evidence = decide_lumbar_facing(_nan_outside(ep, size), facing=facing, default=default_facing)
        kp = lateral5_from_endplates(top, bot, fac)
        region, scheme, names = "lumbar", "lateral5", ("AS", "PS", "AI", "PI", "SP")
        meta["facing"] = fac
        meta["facing_evidence"] = evidence
        a, p = (0, 1) if fac == "left" else (1, 0)
        s1 = ep[10]
        meta["extra_points_px"] = {"S1": {"AS": _point_or_none(s1[a]), "PS": _point_or_none(s1[p])}}
    vis = np.all(np.isfinite(kp), axis=-1)
    vis = _hide_outside(kp, vis, size, str(csv_path), names, BUU_LEVELS, notes)
    missing = [f"{BUU_LEVELS[j // 2]} {'superior' if j % 2 == 0 else 'inferior'}" for j in range(10) if not present[j]]
    if missing:
        notes.append(f"missing_endplates: {', '.join(missing)}")
    if not vis.any():
        raise BuuLspineError(f"{csv_path}: no visible point")
    meta["label_notes"] = notes
    sp, source, where = _resolve_spacing(spacing_mm, spacing_table, csv_path.stem, spacing_table_name)
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
