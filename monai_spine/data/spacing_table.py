"""Reader of per-image (or per-patient) pixel spacing tables, and the spacing precedence of the readers.

A spacing table maps an image (or patient) name to its pixel spacing in mm per pixel: the
BUU-LSPINE report's ``Pixel Spacing`` sheet, its CSV export, or a CSV of CSXA's per-image pixel
equivalents (:func:`read_spacing_table`). A cell holds one number (isotropic) or two (``"[0.14, 0.14]"``
or ``"0.14\\0.14"``) read in DICOM order ``[row, column]`` = ``(sy, sx)``; values outside 0.005-5 mm
per pixel are refused (a table in pixels per mm needs ``unit="px_per_mm"``). ``.xlsx`` is read only
when ``openpyxl`` is importable; otherwise the error says to export the sheet as CSV.

The dataset readers (:mod:`monai_spine.data.buu_lspine`, :mod:`monai_spine.data.csxa`) take a spacing
with the precedence of :func:`resolve_spacing`: given by the user, else from the table, else unknown
(never 1.0). Spacings are returned as ``(sx, sy)`` mm per pixel. This module knows no dataset's
file names: a reader whose table is keyed otherwise than by the image stem passes the keys to try
(``fallback_keys``; BUU-LSPINE passes the patient key, the stem without its view digit).
"""

from __future__ import annotations

import csv
import math
import os
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from monai_spine.data.annotation import AnnotationError

__all__ = [
    "SPACING_UNITS",
    "SpacingTableError",
    "parse_spacing_value",
    "read_spacing_table",
    "lookup_spacing",
    "explicit_spacing",
    "resolve_spacing",
]

#: units of a spacing table's values
SPACING_UNITS = ("mm_per_px", "px_per_mm")

_SPACING_RANGE_MM = (0.005, 5.0)
#: normalised header names accepted for a spacing table's key / value columns
_KEY_COLUMNS = ("filename", "file", "filenames", "image", "imagename", "imagefile", "name", "id", "imageid")
_VALUE_COLUMNS = (
    "pixelspacing", "pixelspacingmm", "spacing", "spacingmm", "pixelequivalent", "pixelequivalentmm",
    "mmperpixel", "mmpx", "pixelsize", "pixelsizemm",
)
_STRIP_EXTS = (".jpg", ".jpeg", ".png", ".csv", ".json", ".dcm", ".tif", ".tiff", ".bmp")


class SpacingTableError(AnnotationError):
    """A spacing table (report spreadsheet or its CSV export) is malformed or unreadable."""


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


def lookup_spacing(
    table: Mapping[str, tuple[float, float]], stem: str, fallback_keys: Sequence[str] = (),
) -> tuple[float, float] | None:
    """Spacing of an image from a table of :func:`read_spacing_table`: by its stem, then by each of
    ``fallback_keys`` in turn (case ignored; e.g. a BUU-LSPINE name's patient key without the view
    digit, :func:`monai_spine.data.buu_lspine.parse_buu_name`); None when absent."""
    k = _norm_key(stem)
    if k in table:
        return table[k]
    for key in fallback_keys:
        if key.lower() in table:
            return table[key.lower()]
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


def resolve_spacing(
    spacing_mm: float | Sequence[float] | None, table: Mapping[str, tuple[float, float]] | None, stem: str,
    table_name: str | None, fallback_keys: Sequence[str] = (),
) -> tuple[tuple[float, float] | None, str, str | None]:
    """The spacing of one image with the precedence explicit > table > unknown.

    Args:
        spacing_mm: given by the user: one number or ``(sx, sy)`` mm per pixel (:func:`explicit_spacing`); or None.
        table: table of :func:`read_spacing_table`, or None.
        stem: the image's (or annotation's) file stem, looked up in ``table``.
        table_name: where the table came from, for the where-from text.
        fallback_keys: further table keys tried after ``stem`` (:func:`lookup_spacing`).

    Returns:
        ``(spacing, source, where_from)``: ``(sx, sy)`` mm per pixel, ``"sidecar"``, and
        ``"given by the user"`` / ``"spacing table <name>"``; or ``(None, "unknown", None)``.

    Raises:
        SpacingTableError: ``spacing_mm`` is not a plausible spacing.
    """
    if spacing_mm is not None:
        sp = explicit_spacing(spacing_mm)
        return sp, "sidecar", "given by the user"
    if table is not None:
        sp = lookup_spacing(table, stem, fallback_keys)
        if sp is not None:
            return sp, "sidecar", f"spacing table {table_name}" if table_name else "spacing table"
    return None, "unknown", None
