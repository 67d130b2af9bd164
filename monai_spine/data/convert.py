"""Public dataset annotations to ``monai-spine-keypoints`` JSON (the library of ``monai-spine convert``, :mod:`monai_spine.cli.data`).

One JSON file per image is written under ``out`` (the images are not copied: each file refers to
its image by a path relative to the JSON's folder). Folders given as input are searched
recursively and their sub-folders are mirrored under ``out`` (BUU-LSPINE's ``AP/`` and ``LA/``
stay apart, so each output folder holds one region and can be opened as a dataset).

Formats (:data:`CONVERT_FORMATS`):

* ``buu-lspine``: annotation CSVs (:mod:`monai_spine.data.buu_lspine`); in folders, a ``*.csv``
  counts as an annotation when an image with its stem lies beside it (other CSVs, such as an
  exported report sheet, are skipped and counted).
* ``csxa``: labelme JSON files (:mod:`monai_spine.data.csxa`); in folders, every ``*.json`` that
  is a labelme object (has a ``shapes`` list) is converted, other JSON files are skipped.
* ``aasce``: the AASCE 2019 folder (``images/``, ``labels/``; one path): written as a dataset folder
  with the seeded patient-wise training / validation / test split in ``dataset.json``
  (:func:`monai_spine.data.aasce.write_aasce_dataset`, ``--split-seed``), ready for the bundle's
  ``--dataset_dir OUT --region ap``.

Batch behaviour (issue #9): a bad file does not stop the run; every output is written atomically
(temporary file, then rename, so no partial file is ever left); the failures are listed after a
one-line summary; the exit status is 1 when any file failed (or nothing was found), else 0.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from monai_spine.data.annotation import SpineAnnotation, write_annotation
from monai_spine.data.buu_lspine import read_buu_lspine
from monai_spine.data.csxa import read_csxa
from monai_spine.data.lateral_corners import FACINGS
from monai_spine.data.spacing_table import SPACING_UNITS, explicit_spacing, read_spacing_table

__all__ = [
    "CONVERT_FORMATS",
    "ConvertReport",
    "find_convert_inputs",
    "convert_dataset",
    "VIEWS",
]

#: dataset formats the converter reads
CONVERT_FORMATS = ("buu-lspine", "csxa")
#: BUU-LSPINE views (``auto``: from the file name)
VIEWS = ("auto", "ap", "lateral")
_IMAGE_EXTS = (".jpg", ".jpeg", ".png")


@dataclass
class ConvertReport:
    """Outcome of a conversion run.

    Attributes:
        converted: ``(input, output)`` paths of the files written.
        failed: ``(input, message)`` of the files that could not be converted.
        skipped: ``(input, reason)`` of files found in folders that are not annotations of the
            format, and existing outputs kept with ``overwrite=False``.
        spacing_known: number of written annotations with a pixel spacing.
        facing: count of lateral annotations per facing decision (``"cues"``, ``"user"``,
            ``"default"``) and of conflicting cues (``"conflict"``).
    """

    converted: list[tuple[str, str]] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    spacing_known: int = 0
    facing: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when at least one file was converted and none failed."""
        return bool(self.converted) and not self.failed

    def summary(self, out: str | os.PathLike) -> str:
        """The one-line summary printed by :func:`monai_spine.cli.data.convert_cli`."""
        n = len(self.converted)
        line = (
            f"convert: {n} converted, {len(self.failed)} failed, {len(self.skipped)} skipped -> {out}; "
            f"spacing known for {self.spacing_known}, unknown for {n - self.spacing_known}"
        )
        if self.facing:
            parts = ", ".join(f"{k} {v}" for k, v in sorted(self.facing.items()))
            line += f"; lateral facing decided by: {parts}"
        return line


def _is_labelme(path: Path) -> bool:
    try:
        with open(path, encoding="utf-8") as f:
            d = json.load(f)
    except (OSError, ValueError):
        return True  # let the reader report the problem as a failure
    return isinstance(d, dict) and "shapes" in d


def find_convert_inputs(
    paths: Sequence[str | os.PathLike], fmt: str
) -> tuple[list[tuple[Path, Path]], list[tuple[str, str]]]:
    """Annotation files of format ``fmt`` under ``paths``.

    Args:
        paths: files (always taken) and folders (searched recursively, see the module docstring).
        fmt: one of :data:`CONVERT_FORMATS`.

    Returns:
        ``(inputs, skipped)``: ``(file, relative output folder)`` pairs in sorted order, and
        ``(file, reason)`` for files in folders that were passed over.

    Raises:
        ValueError: unknown format.
        FileNotFoundError: a path does not exist.
    """
    if fmt not in CONVERT_FORMATS:
        raise ValueError(f"unknown format {fmt!r}; known: {CONVERT_FORMATS}")
    pattern = "*.csv" if fmt == "buu-lspine" else "*.json"
    inputs: list[tuple[Path, Path]] = []
    skipped: list[tuple[str, str]] = []
    for raw in paths:
        p = Path(raw)
        if p.is_file():
            inputs.append((p, Path(".")))
            continue
        if not p.is_dir():
            raise FileNotFoundError(f"{p} does not exist")
        for f in sorted(p.rglob(pattern)):
            if not f.is_file() or f.name.startswith("."):
                continue
            if fmt == "buu-lspine" and not any(f.with_suffix(e).is_file() or f.with_suffix(e.upper()).is_file()
                                               for e in _IMAGE_EXTS):
                skipped.append((str(f), "no image with the same stem beside it"))
                continue
            if fmt == "csxa" and not _is_labelme(f):
                skipped.append((str(f), "not a labelme file"))
                continue
            inputs.append((f, f.parent.relative_to(p)))
    return inputs, skipped


def _read_one(path: Path, fmt: str, options: dict[str, Any]) -> SpineAnnotation:
    if fmt == "buu-lspine":
        return read_buu_lspine(
            path, view=options["view"], spacing_mm=options["spacing"], spacing_table=options["table"],
            spacing_table_name=options["table_name"], facing=options["facing"],
        )
    return read_csxa(
        path, spacing_mm=options["spacing"], spacing_table=options["table"], spacing_table_name=options["table_name"],
        spacing_unit=options["spacing_unit"], facing=options["facing"],
    )


def convert_dataset(
    paths: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    fmt: str = "buu-lspine",
    spacing: float | Sequence[float] | None = None,
    spacing_table: str | os.PathLike | None = None,
    spacing_sheet: str | None = None,
    spacing_key_column: str | None = None,
    spacing_value_column: str | None = None,
    spacing_unit: str = "mm_per_px",
    facing: str = "auto",
    view: str = "auto",
    overwrite: bool = True,
) -> ConvertReport:
    """Convert every annotation found under ``paths``; one bad file never stops the others.

    Args:
        paths: annotation files and/or dataset folders.
        out: output folder (created); folders given in ``paths`` are mirrored below it.
        fmt: ``"buu-lspine"`` or ``"csxa"``.
        spacing: one spacing for every image: one number or ``(sx, sy)``, mm per pixel.
        spacing_table: per-image / per-patient spacing table (BUU-LSPINE report sheet
            ``Pixel Spacing`` as CSV or ``.xlsx``; CSXA pixel equivalents), see
            :func:`~monai_spine.data.spacing_table.read_spacing_table`.
        spacing_sheet: workbook sheet of an ``.xlsx`` table.
        spacing_key_column: header of the table's image / patient column (default: guessed).
        spacing_value_column: header of the table's spacing column (default: guessed).
        spacing_unit: ``"mm_per_px"`` or ``"px_per_mm"`` (table and CSXA JSON values).
        facing: lateral views: ``"auto"`` (from the points), ``"left"`` or ``"right"`` (anterior on
            that side of the image).
        view: BUU-LSPINE: ``"auto"`` (file name / folder), ``"ap"`` or ``"lateral"``.
        overwrite: replace existing outputs (default); False keeps them and counts them as skipped.

    Returns:
        A :class:`ConvertReport`.

    Raises:
        ValueError: bad option values, or an unreadable spacing table (the run does not start).
        FileNotFoundError: an input path or the spacing table does not exist.
    """
    if facing not in FACINGS:
        raise ValueError(f"facing must be one of {FACINGS}, got {facing!r}")
    if view not in VIEWS:
        raise ValueError(f"view must be one of {VIEWS}, got {view!r}")
    if spacing_unit not in SPACING_UNITS:
        raise ValueError(f"spacing_unit must be one of {SPACING_UNITS}, got {spacing_unit!r}")
    if spacing is not None:
        spacing = explicit_spacing(spacing)  # fail before the run, not once per file
    table = None
    if spacing_table is not None:
        table = read_spacing_table(spacing_table, sheet=spacing_sheet, key_column=spacing_key_column,
                                   value_column=spacing_value_column, unit=spacing_unit)
    inputs, skipped = find_convert_inputs(paths, fmt)
    options = {"view": view, "spacing": spacing, "table": table, "spacing_unit": spacing_unit, "facing": facing,
               "table_name": Path(spacing_table).name if spacing_table is not None else None}
    report = ConvertReport(skipped=list(skipped))
    out = Path(out)
    written: dict[Path, str] = {}
    for src, rel in inputs:
        dst = out / rel / f"{src.stem}.json"
        try:
            key = dst.resolve()
            if key == src.resolve():
                raise ValueError(f"output {dst} would replace the input file; choose another --out")
            if key in written:
                raise ValueError(f"output {dst} was already written from {written[key]} (same file stem)")
            if dst.exists() and not overwrite:
                report.skipped.append((str(src), f"output {dst} exists"))
                continue
            ann = _read_one(src, fmt, options)
            write_annotation(ann, dst)  # atomic: temporary file, then rename
        except Exception as e:  # noqa: BLE001 - a batch goes on past any bad file (issue #9)
            msg = str(e.args[0] if isinstance(e, KeyError) and e.args else e)
            for prefix in (f"{src}: ", f"{src.resolve()}: "):
                msg = msg[len(prefix):] if msg.startswith(prefix) else msg  # the file is listed once
            report.failed.append((str(src), f"{type(e).__name__}: {msg}"))
            continue
        written[key] = str(src)
        report.converted.append((str(src), str(dst)))
        report.spacing_known += ann.spacing_mm is not None
        if "facing_evidence" in ann.meta:
            ev = ann.meta["facing_evidence"]
            report.facing[ev["decided_by"]] = report.facing.get(ev["decided_by"], 0) + 1
            if ev.get("conflict"):
                report.facing["conflict"] = report.facing.get("conflict", 0) + 1
    return report
