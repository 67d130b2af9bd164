"""Pick the spine radiograph out of a DICOM folder (pydicom only: no MONAI Deploy SDK, no torch).

The MONAI Deploy application (:mod:`monai_spine.apps.deploy.app`) and its command-line pre-flight
(:mod:`monai_spine.apps.deploy.__main__`) share these rules, so a folder that cannot be processed
is refused with the same one-line message before or inside the SDK graph.

Selection rules, in order:

1. Instances that are not DICOM, or that carry no pixel data (presentation states, SR, KOS), are
   not candidates.
2. A candidate must have ``Modality`` ``DX`` (digital X-ray) or ``CR`` (computed radiography);
   anything else (CT, MR, US, ...) is named in the refusal.
3. It must hold one 2D frame: ``NumberOfFrames`` absent or 1, ``SamplesPerPixel`` 1, ``Rows`` and
   ``Columns`` > 1, and pixel data that can be decoded (:func:`pixel_data_problem`: a truncated
   file is refused here, not after the models have run).
4. It must have a usable pixel spacing (``PixelSpacing``, then ``ImagerPixelSpacing`` /
   ``EstimatedRadiographicMagnificationFactor``, then ``NominalScannedPixelSpacing``, the rules of
   :func:`monai_spine.data.readers.spacing_from_dicom`). The application reports millimetre
   measurements; it refuses an image whose spacing is unknown rather than report pixels as mm.
5. Among the images left, the series with the most of them wins (ties: the lowest
   ``SeriesNumber``, then Series Instance UID); inside it the lowest ``InstanceNumber`` (then SOP
   Instance UID). One image is processed per run; each skipped series is named in a note (with
   its patient), and a note says when the folder holds several patients.

Files in hidden folders (a name starting with ``.``) are ignored by the pre-flight and by the graph
alike (:func:`is_hidden`).

A folder where no image passes raises :class:`DeployInputError` whose message names the folder
and what was found (counts per modality, the multi-frame or spacing-less series).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "RADIOGRAPH_MODALITIES",
    "DeployInputError",
    "SelectedImage",
    "is_hidden",
    "list_files",
    "pixel_data_problem",
    "read_datasets",
    "select_radiograph",
    "select_from_folder",
]

#: Modalities accepted as a projection radiograph.
RADIOGRAPH_MODALITIES = ("DX", "CR")

_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


class DeployInputError(ValueError):
    """The input folder holds nothing the application can process (the message says why)."""


@dataclass
class SelectedImage:
    """The radiograph chosen for a run.

    Attributes:
        dataset: its pydicom dataset (with pixel data).
        path: the file it was read from ("" when unknown).
        spacing_mm: ``(sx, sy)`` mm per pixel (x = columns, y = rows).
        spacing_source: which tag gave the spacing.
        notes: what else was in the folder (skipped series), for the log.
    """

    dataset: Any
    path: str
    spacing_mm: tuple[float, float]
    spacing_source: str
    notes: list[str] = field(default_factory=list)

    @property
    def sop_instance_uid(self) -> str:
        return str(self.dataset.SOPInstanceUID)

    @property
    def sop_class_uid(self) -> str:
        return str(self.dataset.SOPClassUID)

    @property
    def series_instance_uid(self) -> str:
        return str(self.dataset.get("SeriesInstanceUID", ""))


def is_hidden(path: str | os.PathLike, folder: str | os.PathLike) -> bool:
    """True when ``path`` or a folder between it and ``folder`` starts with a dot (or it is not under ``folder``).

    The pre-flight and the graph both ignore such files, so they agree on what the input is.
    """
    try:
        rel = Path(path).resolve().relative_to(Path(folder).resolve())
    except ValueError:
        return True
    return any(part.startswith(".") for part in rel.parts)


def list_files(folder: str | os.PathLike) -> list[Path]:
    """Every regular, non-hidden file under ``folder`` (recursively, sorted; :func:`is_hidden`).

    Raises:
        DeployInputError: ``folder`` is not an existing directory.
    """
    root = Path(folder)
    if not root.is_dir():
        raise DeployInputError(f"input folder {root} does not exist or is not a directory")
    return sorted(p for p in root.rglob("*") if p.is_file() and not is_hidden(p, root))


def read_datasets(files: Iterable[str | os.PathLike]) -> tuple[list[Any], list[str]]:
    """Read the DICOM files among ``files`` (full datasets, pixel data loaded lazily by pydicom).

    Returns:
        ``(datasets, skipped)``: readable DICOM datasets (``ds.filename`` is their path) and the
        names of the files that are not DICOM.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    datasets, skipped = [], []
    for f in files:
        try:
            with open(f, "rb") as fh:
                preamble = fh.read(132)
            if preamble[128:132] != b"DICM":  # forced reads of arbitrary files give garbage datasets
                skipped.append(str(f))
                continue
            ds = pydicom.dcmread(f)
        except (InvalidDicomError, OSError, EOFError, ValueError, TypeError, KeyError):
            skipped.append(str(f))
            continue
        datasets.append(ds)
    return datasets, skipped


def _int(ds: Any, keyword: str, default: int) -> int:
    try:
        value = ds.get(keyword)
        return default if value in (None, "") else int(value)
    except (TypeError, ValueError):
        return default


def _patient(ds: Any) -> str:
    """The patient's ID for messages (``"<no PatientID>"`` when absent or empty)."""
    return str(ds.get("PatientID", "") or "") or "<no PatientID>"


def _why_not_2d(ds: Any) -> str | None:
    frames = _int(ds, "NumberOfFrames", 1)
    if frames > 1:
        return f"{frames} frames"
    if _int(ds, "SamplesPerPixel", 1) != 1:
        return f"{_int(ds, 'SamplesPerPixel', 1)} samples per pixel"
    rows, cols = _int(ds, "Rows", 0), _int(ds, "Columns", 0)
    if rows < 2 or cols < 2:
        return f"{rows} x {cols} pixels"
    return None


def pixel_data_problem(ds: Any) -> str | None:
    """Why the pixel data cannot be decoded (e.g. ``"truncated: 48304 of 98304 bytes"``), or None when it can.

    Native (uncompressed) pixel data is checked by its length against ``Rows x Columns x
    SamplesPerPixel x BitsAllocated``; encapsulated (compressed) data is decoded.
    """
    if "PixelData" not in ds:
        return None  # float pixel data: left to the reader
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    try:
        if ts is not None and ts.is_encapsulated:
            ds.pixel_array  # noqa: B018 - decoding is the check
            return None
        expected = (_int(ds, "Rows", 0) * _int(ds, "Columns", 0) * _int(ds, "SamplesPerPixel", 1)
                    * _int(ds, "NumberOfFrames", 1) * _int(ds, "BitsAllocated", 16) + 7) // 8
        got = len(ds.PixelData or b"")
    except Exception as e:  # noqa: BLE001 - any decoder failure makes the image unusable
        return f"undecodable pixel data ({type(e).__name__}: {' '.join(str(e).split())[:120]})"
    if got < expected:
        return f"truncated pixel data: {got} of {expected} bytes"
    return None


def _counts(counter: Counter) -> str:
    return ", ".join(f"{n} {k}" for k, n in sorted(counter.items()))


def select_radiograph(datasets: Iterable[Any], folder: str | os.PathLike, skipped_files: int = 0) -> SelectedImage:
    """Choose the spine radiograph among ``datasets`` (see the module docstring for the rules).

    Args:
        datasets: pydicom datasets (e.g. the native SOP instances of the SDK's DICOM loader).
        folder: the input folder, named in messages.
        skipped_files: how many files of the folder were not DICOM (for the message).

    Raises:
        DeployInputError: no image passes; the message names the folder and what was found.
    """
    import warnings

    from monai_spine.data.readers import spacing_from_dicom

    datasets = list(datasets)
    images = [ds for ds in datasets if any(k in ds for k in _PIXEL_KEYWORDS)]
    all_count = len(datasets)
    if not images:
        what = f"{all_count} DICOM instance(s) without pixel data" if all_count else "no DICOM file"
        extra = f" ({skipped_files} non-DICOM file(s))" if skipped_files else ""
        raise DeployInputError(f"no DICOM image in input folder {folder}: found {what}{extra}")
    modalities = Counter(str(ds.get("Modality", "") or "?") for ds in images)
    radiographs = [ds for ds in images if str(ds.get("Modality", "")).upper() in RADIOGRAPH_MODALITIES]
    if not radiographs:
        raise DeployInputError(
            f"no spine radiograph (Modality {'/'.join(RADIOGRAPH_MODALITIES)}) in input folder {folder}: "
            f"found {_counts(modalities)} image(s)"
        )
    not_2d: list[str] = []
    no_spacing: list[str] = []
    broken: list[str] = []
    ok: list[tuple[Any, tuple[float, float], str]] = []
    for ds in radiographs:
        name = str(getattr(ds, "filename", "") or ds.get("SOPInstanceUID", "?"))
        why = _why_not_2d(ds)
        if why is not None:
            not_2d.append(f"{Path(name).name} ({why})")
            continue
        why = pixel_data_problem(ds)
        if why is not None:
            broken.append(f"{Path(name).name} ({why})")
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # rejected tags are summarised in the message instead
            info = spacing_from_dicom(ds, name)
        if info.spacing_mm is None:
            no_spacing.append(Path(name).name)
            continue
        ok.append((ds, (float(info.spacing_mm[0]), float(info.spacing_mm[1])), info.spacing_source))
    if not ok:
        parts = []
        if no_spacing:
            parts.append(
                f"{len(no_spacing)} without a usable pixel spacing (PixelSpacing / ImagerPixelSpacing / "
                f"NominalScannedPixelSpacing: {', '.join(no_spacing[:3])}{', ...' if len(no_spacing) > 3 else ''}); "
                "millimetre measurements need it"
            )
        if not_2d:
            more = ", ..." if len(not_2d) > 3 else ""
            parts.append(f"{len(not_2d)} not single-frame 2D ({', '.join(not_2d[:3])}{more})")
        if broken:
            more = ", ..." if len(broken) > 3 else ""
            parts.append(f"{len(broken)} with unreadable pixel data ({', '.join(broken[:3])}{more})")
        raise DeployInputError(
            f"no usable spine radiograph in input folder {folder}: {len(radiographs)} DX/CR image(s), "
            + "; ".join(parts)
        )
    by_series: dict[str, list[tuple[Any, tuple[float, float], str]]] = {}
    for item in ok:
        by_series.setdefault(str(item[0].get("SeriesInstanceUID", "")), []).append(item)

    def series_key(uid: str) -> tuple[int, int, str]:
        return (-len(by_series[uid]), _int(by_series[uid][0][0], "SeriesNumber", 0), uid)

    chosen_uid = min(by_series, key=series_key)
    members = sorted(
        by_series[chosen_uid], key=lambda it: (_int(it[0], "InstanceNumber", 0), str(it[0].SOPInstanceUID))
    )
    ds, spacing, source = members[0]
    notes = []
    patients = sorted({_patient(it[0]) for it in ok})
    if len(patients) > 1:
        notes.append(f"the input holds radiographs of {len(patients)} patients ({', '.join(patients)}); "
                     f"processing one of patient {_patient(ds)}, the others are not reported")
    if len(members) > 1:
        notes.append(f"series {chosen_uid} has {len(members)} radiographs; processing the first (InstanceNumber order)")
    for uid in sorted(by_series, key=series_key):
        if uid != chosen_uid:
            first = by_series[uid][0][0]
            notes.append(
                f"skipped series {uid} (SeriesNumber {first.get('SeriesNumber', '?')}, patient {_patient(first)}, "
                f"{len(by_series[uid])} radiograph(s)): one series per run, the one with the most radiographs "
                f"({len(members)}, ties: lowest SeriesNumber) was chosen"
            )
    other = {k: n for k, n in modalities.items() if k.upper() not in RADIOGRAPH_MODALITIES}
    if other:
        notes.append(f"ignored non-radiograph images: {_counts(Counter(other))}")
    if not_2d or no_spacing:
        notes.append(f"ignored {len(not_2d)} multi-frame and {len(no_spacing)} spacing-less DX/CR image(s)")
    if broken:
        notes.append(f"ignored {len(broken)} DX/CR image(s) with unreadable pixel data: {', '.join(broken[:3])}")
    return SelectedImage(ds, str(getattr(ds, "filename", "") or ""), spacing, source, notes)


def select_from_folder(folder: str | os.PathLike) -> SelectedImage:
    """:func:`list_files` + :func:`read_datasets` + :func:`select_radiograph` (the pre-flight check).

    Raises:
        DeployInputError: as :func:`select_radiograph`, or the folder is missing / holds no DICOM file.
    """
    files = list_files(folder)
    datasets, skipped = read_datasets(files)
    if not datasets:
        found = f"{len(files)} file(s), none of them DICOM" if files else "it is empty"
        raise DeployInputError(f"no DICOM file in input folder {folder}: {found}")
    return select_radiograph(datasets, folder, skipped_files=len(skipped))
