"""Read one 2D X-ray image together with a pixel spacing that can be trusted.

Every reader returns an :class:`XrayImage`: the pixels as an ``(H, W)`` float32 array (rows first,
``array[y, x]``), the spacing ``spacing_mm = (sx, sy)`` in millimetres per pixel along x (columns)
and y (rows), and ``spacing_source``, one of :data:`~monai_spine.data.keypoints.SPACING_SOURCES`.
A spacing that is absent, zero, negative, non-finite or malformed is never used: the image then
has ``spacing_mm=None`` and ``spacing_source="unknown"`` (distances stay in pixels). A value that
was present but rejected is reported with a :class:`SpacingWarning` naming the file, the tag and
its value, and is listed in ``meta["spacing_notes"]``.

Formats (:func:`detect_format` looks at the file's content first, then at its extension):

* **DICOM** (pydicom 3; DX, CR, secondary capture and other single-frame images). Spacing, first
  usable of:

  1. ``PixelSpacing`` (0028,0030) -> source ``"PixelSpacing"``;
  2. ``ImagerPixelSpacing`` (0018,1164) divided by ``EstimatedRadiographicMagnificationFactor``
     (0018,1114) when that factor is present and valid, as it is otherwise -> ``"ImagerPixelSpacing"``;
  3. ``NominalScannedPixelSpacing`` (0018,2010, secondary capture of scanned film) -> ``"header"``.

  All three tags are stored ``[row spacing, column spacing] = (sy, sx)`` and are swapped into
  ``(sx, sy)``. A rejected tag falls through to the next one. Pixels: the modality LUT
  (``RescaleSlope``/``RescaleIntercept`` or a Modality LUT Sequence, by
  :func:`pydicom.pixels.apply_modality_lut`) is applied, then ``MONOCHROME1`` images are inverted
  so that bone is bright: ``value' = lo + hi - value``, where ``[lo, hi]`` is the range of values
  the modality LUT can produce from the ``BitsStored``/``PixelRepresentation`` range of stored
  values (for 15-bit unsigned data without rescale, ``value' = 32767 - value``). The inversion
  therefore does not depend on the image's content and is recorded in ``meta["inversion_range"]``.
  ``PresentationLUTShape`` is not applied (a DX ``MONOCHROME1`` image carries ``INVERSE`` for the
  same inversion), nor is any VOI LUT/window. RGB, YBR and PALETTE COLOR images are converted to
  luminance with an :class:`XrayWarning`. Multi-frame images, files without pixel data and pixel
  data pydicom cannot decode (compressed transfer syntaxes without a decoder plugin such as
  pylibjpeg) raise :class:`XrayReadError`.
* **PNG, JPEG, TIFF, BMP** (OpenCV, pixels as stored: EXIF orientation is ignored so keypoints
  refer to the stored pixel grid). 8- and 16-bit grayscale values are kept exactly; colour images
  become BT.601 luminance ``0.299 R + 0.587 G + 0.114 B`` (with an :class:`XrayWarning` unless all
  channels are equal, in which case one channel is taken as is); an alpha channel is dropped.
  These formats carry no spacing: it comes from a sidecar (below) or is unknown.
* **NIfTI** (MONAI ``LoadImage`` with ``NibabelReader``, no reorientation) and **NRRD** (MONAI
  ``LoadImage`` with ``ITKReader``; needs ``itk``). MONAI returns the spatial axes in ``(x, y)`` =
  ``(W, H)`` order (voxel index ``i`` is the column, ``j`` the row); they are transposed to
  ``(H, W)``, and trailing singleton axes are dropped. Spacing from the header -> ``"header"``:
  NIfTI ``pixdim[1:3]`` scaled by the spatial unit of ``xyzt_units`` (m, mm, um; an unset unit is
  taken as mm, except that ``pixdim`` 1 x 1 with no unit, the value every writer puts in by
  default, is rejected); NRRD ``space directions`` (vector lengths) or ``spacings`` with
  ``space units``/``units``. A header without any spacing field gives ``"unknown"``.

Spacing overrides, strongest first (all recorded with source ``"sidecar"``; a header spacing that
an override replaces is named in ``meta["spacing_notes"]``):

1. the ``spacing_mm=(sx, sy)`` argument of :func:`read_xray`/:func:`read_spacing`;
2. the ``sidecar=`` argument: a JSON file ``{"spacing_mm": [sx, sy]}``;
3. a sidecar file beside the image, named ``<image file name>.spacing.json`` (``img.png`` ->
   ``img.png.spacing.json``, see :func:`sidecar_path`); this applies to every format.

A sidecar that is not a JSON object raises :class:`XrayReadError`; a sidecar whose
``spacing_mm`` is missing, ``null`` or invalid is rejected like a bad tag (warning, next source).

Intensities are raw (after the modality LUT and MONOCHROME1 inversion), never normalised.

Bad input (see ``docs/reliability.md``): every failure to read an image is an
:class:`XrayReadError` (a ``ValueError``) whose message starts with the file name, or
``FileNotFoundError`` for a missing file; no other exception type leaves :func:`read_xray` for a
broken file. In particular:

* an image larger than :func:`max_image_pixels` (``W * H``, default :data:`MAX_IMAGE_PIXELS`,
  override with the environment variable ``MONAI_SPINE_MAX_PIXELS``) is refused from its header,
  before the pixels are decoded or allocated;
* NaN or infinite pixel values (float DICOM, NIfTI, NRRD, TIFF) are refused;
* a constant image (every pixel equal) is read, with an :class:`XrayWarning`: it has no contrast,
  so nothing can be found in it.

Why one module: every format here (DICOM, PNG/JPEG/TIFF, NIfTI, NRRD, spacing sidecars) keeps one
contract: an :class:`XrayImage` with a spacing and its recorded source, the same override and
rejection rules for a missing or zero spacing, and one error type naming the file. The fuzz tests
(``tests/reliability``) check that contract as one; split by format, each module would import the
spacing rules back and the contract would have no single home.
"""

from __future__ import annotations

import functools
import gzip
import json
import math
import os
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from monai_spine.data.keypoints import SPACING_SOURCES

__all__ = [
    "XrayImage",
    "SpacingInfo",
    "XrayReadError",
    "XrayWarning",
    "SpacingWarning",
    "FORMATS",
    "MAX_IMAGE_PIXELS",
    "max_image_pixels",
    "SIDECAR_SUFFIX",
    "LUMA_WEIGHTS_RGB",
    "read_xray",
    "read_spacing",
    "detect_format",
    "sidecar_path",
    "read_sidecar",
    "write_sidecar",
    "spacing_from_dicom",
    "xray_from_dicom",
]

#: Formats :func:`detect_format` can return.
FORMATS = ("dicom", "raster", "nifti", "nrrd")

#: Default largest image :func:`read_xray` accepts, in pixels (``W * H``): 100 megapixels, 400 MB
#: as float32. Radiographs are at most about 40 megapixels (a 43 x 90 cm stitched spine at 0.1 mm).
MAX_IMAGE_PIXELS = 100_000_000

#: Environment variable that overrides :data:`MAX_IMAGE_PIXELS`.
MAX_PIXELS_ENV = "MONAI_SPINE_MAX_PIXELS"

#: Name suffix of the spacing sidecar file: ``img.png`` -> ``img.png.spacing.json``.
SIDECAR_SUFFIX = ".spacing.json"

#: ITU-R BT.601 luma weights for (R, G, B), the weights of PIL's ``"L"`` mode and OpenCV's RGB2GRAY.
LUMA_WEIGHTS_RGB = (0.299, 0.587, 0.114)

_DICOM_EXTENSIONS = (".dcm", ".dicom")
_RASTER_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
_NIFTI_EXTENSIONS = (".nii", ".nii.gz")
_NRRD_EXTENSIONS = (".nrrd", ".nhdr")

#: DICOM spacing tags in order of preference, with the source each one gives.
_DICOM_SPACING_TAGS = (
    ("PixelSpacing", "PixelSpacing"),
    ("ImagerPixelSpacing", "ImagerPixelSpacing"),
    ("NominalScannedPixelSpacing", "header"),
)
_MAGNIFICATION_TAG = "EstimatedRadiographicMagnificationFactor"

#: A DICOM decimal string (DS) number; "nan", "inf" and other spellings are malformed.
_DS_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")

#: NIfTI spatial unit codes (``xyzt_units & 7``) -> millimetres per unit.
_NIFTI_UNIT_MM = {1: 1000.0, 2: 1.0, 3: 0.001}

#: NRRD unit names -> millimetres per unit ("" = not given, taken as mm).
_LENGTH_UNIT_MM = {"": 1.0, "mm": 1.0, "millimeter": 1.0, "cm": 10.0, "m": 1000.0, "um": 0.001, "µm": 0.001}


class XrayReadError(ValueError):
    """A file cannot be read as one 2D grayscale X-ray; the message names the file and the reason.

    Raised for files without pixel data (e.g. a header-only DICOM), multi-frame or 3D images,
    undecodable, truncated or corrupt files, images above :func:`max_image_pixels`, NaN or
    infinite pixel values, unknown formats and unreadable sidecar files. It is the only exception
    (besides ``FileNotFoundError`` for a missing file) that :func:`read_xray` raises for a bad file.
    """


class XrayWarning(UserWarning):
    """Something was converted while reading (colour to luminance, alpha channel dropped)."""


class SpacingWarning(XrayWarning):
    """A pixel spacing was present but rejected; the message names the file, the tag and its value."""


@dataclass(frozen=True)
class SpacingInfo:
    """A resolved pixel spacing.

    Attributes:
        spacing_mm: ``(sx, sy)`` millimetres per pixel along x (columns) and y (rows), or None.
        spacing_source: one of :data:`SPACING_SOURCES`; ``"unknown"`` exactly when ``spacing_mm`` is None.
        notes: human-readable remarks: rejected values, applied factors, overridden header values.
    """

    spacing_mm: tuple[float, float] | None
    spacing_source: str
    notes: tuple[str, ...] = ()


@dataclass
class XrayImage:
    """One 2D X-ray as read from a file.

    Attributes:
        array: ``(H, W)`` float32 raw intensities (after the modality LUT and MONOCHROME1 inversion).
        spacing_mm: ``(sx, sy)`` mm per pixel along x (columns) and y (rows), or None when unknown.
        spacing_source: one of :data:`SPACING_SOURCES`.
        path: the file that was read, as given.
        meta: JSON-serialisable facts about the file: ``format``, ``original_dtype``,
            ``spacing_notes`` and per format e.g. ``modality``, ``photometric_interpretation``,
            ``bits_stored``, ``sop_instance_uid``, ``inverted``, ``inversion_range`` (DICOM).

    Raises:
        ValueError: the array is not 2D, or spacing and source disagree.
    """

    array: np.ndarray
    spacing_mm: tuple[float, float] | None
    spacing_source: str
    path: str
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        arr = np.asarray(self.array)
        if arr.ndim != 2:
            raise XrayReadError(f"{self.path}: an X-ray must be a 2D (H, W) array, got shape {arr.shape}")
        self.array = np.ascontiguousarray(arr, dtype=np.float32)
        if self.spacing_source not in SPACING_SOURCES:
            raise ValueError(f"{self.path}: spacing_source {self.spacing_source!r} not in {SPACING_SOURCES}")
        if self.spacing_mm is None:
            if self.spacing_source != "unknown":
                raise ValueError(f"{self.path}: spacing_source {self.spacing_source!r} without spacing_mm")
        else:
            self.spacing_mm = _require_spacing(self.spacing_mm, self.path)
            if self.spacing_source == "unknown":
                raise ValueError(f"{self.path}: spacing_mm {self.spacing_mm} given with spacing_source 'unknown'")

    @property
    def height(self) -> int:
        """H, the number of rows."""
        return int(self.array.shape[0])

    @property
    def width(self) -> int:
        """W, the number of columns."""
        return int(self.array.shape[1])

    @property
    def size_wh(self) -> tuple[int, int]:
        """``(W, H)`` in pixels, the order of ``image_size`` in annotations."""
        return self.width, self.height

    @property
    def spacing_array(self) -> np.ndarray:
        """``(2,)`` float32 ``[sx, sy]``, or ``[nan, nan]`` when the spacing is unknown."""
        if self.spacing_mm is None:
            return np.full(2, np.nan, dtype=np.float32)
        return np.asarray(self.spacing_mm, dtype=np.float32)

    def channel_first(self) -> np.ndarray:
        """The image as a ``(1, H, W)`` float32 array (the project's channel-first layout)."""
        return self.array[None]


def max_image_pixels() -> int:
    """The largest image (``W * H`` pixels) :func:`read_xray` accepts.

    ``$MONAI_SPINE_MAX_PIXELS`` when set to a positive integer, else :data:`MAX_IMAGE_PIXELS`.

    Raises:
        ValueError: the environment variable is set but not a positive integer.
    """
    raw = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not raw:
        return MAX_IMAGE_PIXELS
    try:
        value = int(float(raw))
    except ValueError:
        value = 0
    if value <= 0:
        raise ValueError(f"${MAX_PIXELS_ENV} must be a positive number of pixels, got {raw!r}")
    return value


def _check_size(name: str, width: int, height: int, what: str = "image") -> None:
    """Refuse an image whose header announces more than :func:`max_image_pixels` pixels."""
    limit = max_image_pixels()
    if width < 0 or height < 0:
        raise XrayReadError(f"{name}: {what} header gives a negative size {width} x {height}")
    if width * height > limit:
        raise XrayReadError(
            f"{name}: {what} of {width} x {height} pixels exceeds the limit of {limit} pixels "
            f"(set ${MAX_PIXELS_ENV} to raise it); not read"
        )


def _check_pixels(name: str, array: np.ndarray) -> None:
    """Refuse NaN/inf pixels; warn about a constant image."""
    if array.size == 0:
        raise XrayReadError(f"{name}: the image has no pixels (shape {array.shape})")
    finite = np.isfinite(array)
    if not finite.all():
        bad = int(array.size - np.count_nonzero(finite))
        raise XrayReadError(f"{name}: {bad} of {array.size} pixel values are NaN or infinite; not a usable image")
    lo, hi = float(array.min()), float(array.max())
    if lo == hi:
        warnings.warn(
            f"{name}: constant image (every pixel = {lo:g}); it has no contrast, nothing can be found in it",
            XrayWarning,
            stacklevel=3,
        )


# --------------------------------------------------------------------------------------------
# public entry points
# --------------------------------------------------------------------------------------------


def read_xray(
    path: str | os.PathLike,
    spacing_mm: Sequence[float] | None = None,
    sidecar: str | os.PathLike | None = None,
) -> XrayImage:
    """Read a 2D X-ray (DICOM, PNG/JPEG/TIFF/BMP, NIfTI, NRRD) and its pixel spacing.

    Args:
        path: the image file; its format is found by :func:`detect_format`.
        spacing_mm: ``(sx, sy)`` mm per pixel that overrides every other source (recorded as
            ``"sidecar"``, the source for spacing supplied from outside the image file).
        sidecar: a JSON file ``{"spacing_mm": [sx, sy]}`` to use instead of
            ``<path>.spacing.json``.

    Returns:
        The image: ``array`` (H, W) float32, spacing, source, path and meta.

    Raises:
        FileNotFoundError: ``path`` (or an explicit ``sidecar``) does not exist.
        XrayReadError: the format is unknown, the file has no (decodable, single-frame 2D) pixels,
            is truncated or corrupt, is larger than :func:`max_image_pixels`, has NaN/inf pixels,
            or a sidecar is not a JSON object.
        ValueError: ``spacing_mm`` is not two positive finite numbers.

    Warns:
        SpacingWarning: a spacing tag/field was present but rejected (spacing then unknown).
        XrayWarning: colour converted to luminance, alpha dropped, or a constant image.
    """
    name = os.fspath(path)
    override = None if spacing_mm is None else _require_spacing(spacing_mm, name)
    fmt = detect_format(name)
    try:
        if fmt == "dicom":
            ds = _dcmread(name, stop_before_pixels=False)
            array, header, meta = _dicom_pixels_and_meta(ds, name)
        elif fmt == "raster":
            array, meta = _read_raster(name)
            header = SpacingInfo(None, "unknown")
        elif fmt == "nifti":
            array, header, meta = _read_nifti(name)
        else:
            array, header, meta = _read_nrrd(name)
    except (XrayReadError, FileNotFoundError):
        raise
    except MemoryError as e:
        raise XrayReadError(f"{name}: not enough memory to read this image ({e})") from e
    except Exception as e:  # third-party readers raise many types for corrupt files
        raise XrayReadError(f"{name}: cannot read this {fmt} file ({type(e).__name__}: {e})") from e
    _check_pixels(name, array)
    info = _apply_overrides(name, header, override, sidecar, fmt)
    meta["format"] = fmt
    meta["spacing_notes"] = list(info.notes)
    return XrayImage(array, info.spacing_mm, info.spacing_source, name, meta)


def read_spacing(
    path: str | os.PathLike,
    spacing_mm: Sequence[float] | None = None,
    sidecar: str | os.PathLike | None = None,
) -> SpacingInfo:
    """The spacing :func:`read_xray` would report, from headers and sidecars only (no pixels read).

    Works on files without pixel data (a header-only DICOM gives its ``ImagerPixelSpacing``).

    Args:
        path: the image file.
        spacing_mm: explicit override, as in :func:`read_xray`.
        sidecar: explicit sidecar JSON file, as in :func:`read_xray`.

    Raises:
        FileNotFoundError, XrayReadError, ValueError: as :func:`read_xray` (but never for pixels).
    """
    name = os.fspath(path)
    override = None if spacing_mm is None else _require_spacing(spacing_mm, name)
    fmt = detect_format(name)
    if fmt == "dicom":
        ds = _dcmread(name, stop_before_pixels=True)
        try:
            header = spacing_from_dicom(ds, name)
        except Exception as e:  # malformed elements of a forced read
            raise XrayReadError(f"{name}: cannot read the DICOM spacing ({type(e).__name__}: {e})") from e
    elif fmt == "raster":
        header = SpacingInfo(None, "unknown")
    elif fmt == "nifti":
        import nibabel as nib

        try:
            hdr = nib.load(name).header
        except Exception as e:  # nibabel raises several types for broken headers
            raise XrayReadError(f"{name}: not a readable NIfTI file ({e})") from e
        header = _nifti_spacing(hdr["pixdim"], hdr["xyzt_units"], name)
    else:
        header = _nrrd_spacing(_nrrd_header(name), name)
    return _apply_overrides(name, header, override, sidecar, fmt)


def detect_format(path: str | os.PathLike) -> str:
    """Which reader a file needs: ``"dicom"``, ``"raster"``, ``"nifti"`` or ``"nrrd"``.

    The content decides first (``DICM`` at byte 128, PNG/JPEG/TIFF/BMP signatures, ``NRRD`` magic,
    NIfTI-1/2 magic, also inside gzip); the extension decides otherwise (``.dcm``/``.dicom`` for
    DICOM files written without the 128-byte preamble, ``.png``, ``.jpg``, ``.nii.gz``, ``.nrrd``...).

    Raises:
        FileNotFoundError: the file does not exist.
        XrayReadError: neither content nor extension is recognised (message names the file).
    """
    name = os.fspath(path)
    with open(name, "rb") as f:
        head = f.read(352)
    if head[128:132] == b"DICM":
        return "dicom"
    if head.startswith((b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"II*\x00", b"MM\x00*", b"BM")):
        return "raster"
    if head.startswith(b"NRRD"):
        return "nrrd"
    if head.startswith(b"\x1f\x8b"):
        try:
            with gzip.open(name, "rb") as g:
                head = g.read(352)
        except (OSError, EOFError):
            head = b""
    if head[344:348] in (b"n+1\x00", b"ni1\x00") or head[4:8] == b"n+2\x00":
        return "nifti"
    lower = name.lower()
    for fmt, exts in (
        ("dicom", _DICOM_EXTENSIONS),
        ("raster", _RASTER_EXTENSIONS),
        ("nifti", _NIFTI_EXTENSIONS),
        ("nrrd", _NRRD_EXTENSIONS),
    ):
        if lower.endswith(exts):
            return fmt
    raise XrayReadError(f"{name}: unknown image format (not DICOM, PNG/JPEG/TIFF/BMP, NIfTI or NRRD)")


# --------------------------------------------------------------------------------------------
# sidecar files
# --------------------------------------------------------------------------------------------


def sidecar_path(image_path: str | os.PathLike) -> Path:
    """The default spacing sidecar of an image: ``<image file name>.spacing.json`` beside it."""
    return Path(os.fspath(image_path) + SIDECAR_SUFFIX)


def read_sidecar(path: str | os.PathLike) -> Any:
    """The raw ``spacing_mm`` entry of a sidecar JSON file (validated by the caller).

    Returns:
        Whatever ``spacing_mm`` holds (normally ``[sx, sy]``), or None when the key is absent.

    Raises:
        FileNotFoundError: the file does not exist.
        XrayReadError: the file is not a JSON object (message names the file).
    """
    name = os.fspath(path)
    try:
        with open(name, encoding="utf-8") as f:
            d = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise XrayReadError(f"{name}: spacing sidecar is not valid JSON ({e})") from None
    if not isinstance(d, dict):
        raise XrayReadError(f"{name}: spacing sidecar must be a JSON object like {{\"spacing_mm\": [sx, sy]}}")
    return d.get("spacing_mm")


def write_sidecar(
    image_path: str | os.PathLike, spacing_mm: Sequence[float], sidecar: str | os.PathLike | None = None
) -> Path:
    """Write ``{"spacing_mm": [sx, sy]}`` for an image (atomically) and return the sidecar's path.

    Args:
        image_path: the image the spacing belongs to.
        spacing_mm: ``(sx, sy)`` mm per pixel, two positive finite numbers.
        sidecar: where to write; defaults to :func:`sidecar_path` of ``image_path``.

    Raises:
        ValueError: invalid spacing.
    """
    from monai_spine.data.annotation import atomic_write_text

    sp = _require_spacing(spacing_mm, os.fspath(image_path))
    out = Path(sidecar) if sidecar is not None else sidecar_path(image_path)
    atomic_write_text(out, json.dumps({"spacing_mm": list(sp)}) + "\n")
    return out


# --------------------------------------------------------------------------------------------
# spacing checks
# --------------------------------------------------------------------------------------------


def _require_spacing(spacing_mm: Any, name: str) -> tuple[float, float]:
    """Two positive finite floats, or ValueError naming ``name``."""
    try:
        sp = tuple(float(s) for s in spacing_mm)
    except (TypeError, ValueError):
        sp = ()
    if len(sp) != 2 or not all(math.isfinite(s) and s > 0 for s in sp):
        raise ValueError(f"{name}: spacing_mm must be two positive finite numbers (sx, sy), got {spacing_mm!r}")
    return sp  # type: ignore[return-value]


def _reject(name: str, what: str, value: Any, reason: str, notes: list[str]) -> None:
    """Record and warn that a spacing value was found but not used."""
    shown = f"'{value}'" if isinstance(value, str) else repr(value)  # DICOM text unescaped: '0.000\0.000'
    msg = f"{name}: {what} = {shown} rejected ({reason}); not used as pixel spacing"
    notes.append(msg)
    warnings.warn(msg, SpacingWarning, stacklevel=4)


def _positive_pair(
    values: Sequence[float], name: str, what: str, raw: Any, notes: list[str]
) -> tuple[float, float] | None:
    """``values`` as a pair if it is two positive finite numbers; otherwise reject and return None."""
    if len(values) != 2:
        _reject(name, what, raw, f"expected 2 values, got {len(values)}", notes)
        return None
    if not all(math.isfinite(v) for v in values):
        _reject(name, what, raw, "not finite", notes)
        return None
    if not all(v > 0 for v in values):
        _reject(name, what, raw, "zero or negative", notes)
        return None
    return float(values[0]), float(values[1])


def _parse_ds(text: str) -> list[float]:
    """Numbers of a backslash-separated DICOM decimal string; ValueError when one is malformed."""
    out = []
    for part in text.split("\\"):
        part = part.strip(" \x00")
        if not _DS_NUMBER.match(part):
            raise ValueError(f"malformed number {part!r}")
        out.append(float(part))
    return out


def _apply_overrides(
    name: str,
    header: SpacingInfo,
    override: tuple[float, float] | None,
    sidecar: str | os.PathLike | None,
    fmt: str,
) -> SpacingInfo:
    """Replace the header spacing by an explicit value or a sidecar file when there is one."""
    info = _override(name, header, override, sidecar)
    if info.spacing_mm is None and fmt == "raster":
        note = f"{name}: PNG/JPEG/TIFF/BMP files carry no spacing and no sidecar gave one; spacing unknown"
        info = SpacingInfo(None, "unknown", info.notes + (note,))
    return info


def _override(
    name: str, header: SpacingInfo, override: tuple[float, float] | None, sidecar: str | os.PathLike | None
) -> SpacingInfo:
    """Explicit spacing, else the explicit or default sidecar, else ``header``.

    A sidecar whose ``spacing_mm`` is absent, null or rejected leaves the header spacing in place.
    """
    notes = list(header.notes)
    replaced = (
        f"header spacing {header.spacing_mm} ({header.spacing_source}) overridden"
        if header.spacing_mm is not None
        else None
    )
    if override is not None:
        notes.append(f"spacing_mm {override} given explicitly")
        if replaced:
            notes.append(replaced)
        return SpacingInfo(override, "sidecar", tuple(notes))
    if sidecar is not None:
        car = os.fspath(sidecar)
        if not os.path.exists(car):
            raise FileNotFoundError(f"{name}: spacing sidecar {car} does not exist")
    else:
        car = os.fspath(sidecar_path(name))
        if not os.path.exists(car):
            return header
    raw = read_sidecar(car)
    pair = None
    if raw is None:
        notes.append(f"{car}: no spacing_mm in sidecar (null or absent)")
    elif isinstance(raw, (list, tuple)) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in raw):
        pair = _positive_pair([float(v) for v in raw], name, f"sidecar {car} spacing_mm", raw, notes)
    else:
        _reject(name, f"sidecar {car} spacing_mm", raw, "not a list of numbers", notes)
    if pair is None:
        return SpacingInfo(header.spacing_mm, header.spacing_source, tuple(notes))
    notes.append(f"spacing_mm {pair} from sidecar {car}")
    if replaced:
        notes.append(replaced)
    return SpacingInfo(pair, "sidecar", tuple(notes))


# --------------------------------------------------------------------------------------------
# DICOM
# --------------------------------------------------------------------------------------------


def _dcmread(name: str, stop_before_pixels: bool):
    import pydicom
    from pydicom.errors import InvalidDicomError

    with open(name, "rb") as f:
        has_preamble = f.read(132)[128:132] == b"DICM"
    try:
        return pydicom.dcmread(name, stop_before_pixels=stop_before_pixels, force=not has_preamble)
    except FileNotFoundError:
        raise
    except (InvalidDicomError, EOFError) as e:
        raise XrayReadError(f"{name}: not a readable DICOM file (truncated or corrupt: {e})") from e
    except Exception as e:  # pydicom raises many types on garbage read with force=True
        raise XrayReadError(f"{name}: not a readable DICOM file ({type(e).__name__}: {e})") from e


def _dicom_text(ds, keyword: str) -> str | None:
    """The value of a DICOM element as text (multi-values joined by ``\\``), None when absent.

    Reads the undecoded bytes where pydicom has not converted them yet, so malformed numbers can
    be reported instead of raising.
    """
    try:
        el = ds.get_item(keyword)
    except (KeyError, ValueError):
        return None
    if el is None:
        return None
    value = el.value
    if isinstance(value, bytes):
        return value.decode("ascii", errors="replace").strip(" \x00")
    if value is None:
        return ""
    if isinstance(value, Sequence) and not isinstance(value, str):  # pydicom MultiValue, list
        return "\\".join(str(v) for v in value)
    return str(value)


def _dicom_pair(ds, keyword: str, name: str, notes: list[str]) -> tuple[float, float] | None:
    """A DICOM ``[row, column]`` spacing tag as ``(sx, sy)``, or None (rejected with a warning)."""
    text = _dicom_text(ds, keyword)
    if text is None:
        return None
    try:
        values = _parse_ds(text)
    except ValueError as e:
        _reject(name, keyword, text, str(e), notes)
        return None
    pair = _positive_pair(values, name, keyword, text, notes)
    return None if pair is None else (pair[1], pair[0])


def spacing_from_dicom(ds, name: str = "<dataset>") -> SpacingInfo:
    """Pixel spacing of a pydicom dataset (see the module docstring for the rules).

    Args:
        ds: a :class:`pydicom.Dataset` (pixel data not needed).
        name: what to call it in warnings and notes (normally the file path).

    Returns:
        ``(sx, sy)`` and its source, or ``(None, "unknown")`` with notes saying why.
    """
    notes: list[str] = []
    for keyword, source in _DICOM_SPACING_TAGS:
        pair = _dicom_pair(ds, keyword, name, notes)
        if pair is None:
            continue
        if keyword == "ImagerPixelSpacing":
            pair = _apply_magnification(ds, pair, name, notes)
        return SpacingInfo(pair, source, tuple(notes))
    notes.append(f"{name}: no usable {' / '.join(k for k, _ in _DICOM_SPACING_TAGS)}; spacing unknown")
    return SpacingInfo(None, "unknown", tuple(notes))


def _apply_magnification(ds, pair: tuple[float, float], name: str, notes: list[str]) -> tuple[float, float]:
    """Detector-plane spacing divided by a valid EstimatedRadiographicMagnificationFactor."""
    text = _dicom_text(ds, _MAGNIFICATION_TAG)
    if text is None:
        return pair
    try:
        values = _parse_ds(text)
    except ValueError as e:
        _reject(name, _MAGNIFICATION_TAG, text, f"{e}; ImagerPixelSpacing used as is", notes)
        return pair
    if len(values) != 1 or not math.isfinite(values[0]) or values[0] <= 0:
        _reject(name, _MAGNIFICATION_TAG, text, "not one positive finite number; ImagerPixelSpacing used as is", notes)
        return pair
    factor = values[0]
    notes.append(f"ImagerPixelSpacing divided by {_MAGNIFICATION_TAG} {factor:g}")
    return pair[0] / factor, pair[1] / factor


def _plain(value: Any) -> Any:
    """A DICOM value as plain JSON types (DSfloat -> float, IS -> int, UID -> str, MultiValue -> list)."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, float):
        return float(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, str):
        return str(value)
    if isinstance(value, Sequence) and not isinstance(value, bytes):
        return [_plain(v) for v in value]
    return str(value)


#: DICOM keywords copied into ``XrayImage.meta`` (no patient identity).
_DICOM_META = {
    "modality": "Modality",
    "sop_class_uid": "SOPClassUID",
    "sop_instance_uid": "SOPInstanceUID",
    "series_instance_uid": "SeriesInstanceUID",
    "study_instance_uid": "StudyInstanceUID",
    "photometric_interpretation": "PhotometricInterpretation",
    "samples_per_pixel": "SamplesPerPixel",
    "bits_allocated": "BitsAllocated",
    "bits_stored": "BitsStored",
    "pixel_representation": "PixelRepresentation",
    "rescale_slope": "RescaleSlope",
    "rescale_intercept": "RescaleIntercept",
    "rescale_type": "RescaleType",
    "window_center": "WindowCenter",
    "window_width": "WindowWidth",
    "presentation_lut_shape": "PresentationLUTShape",
    "view_position": "ViewPosition",
    "body_part_examined": "BodyPartExamined",
    "patient_orientation": "PatientOrientation",
    "pixel_spacing_calibration_type": "PixelSpacingCalibrationType",
}


def _dicom_meta(ds) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    for key, keyword in _DICOM_META.items():
        try:
            value = ds.get(keyword)
        except (ValueError, TypeError):  # malformed value: keep its text
            value = _dicom_text(ds, keyword)
        if value is not None and value != "":
            meta[key] = _plain(value)
    file_meta = getattr(ds, "file_meta", None)
    if file_meta is not None and "TransferSyntaxUID" in file_meta:
        meta["transfer_syntax_uid"] = str(file_meta.TransferSyntaxUID)
    tags = {k: _dicom_text(ds, k) for k, _ in _DICOM_SPACING_TAGS + ((_MAGNIFICATION_TAG, ""),)}
    meta["spacing_tags"] = {k: v for k, v in tags.items() if v is not None}
    return meta


def xray_from_dicom(ds, name: str = "<dataset>") -> XrayImage:
    """Pixels, spacing and meta of a pydicom dataset that holds one 2D image.

    Use this when the dataset is already in memory (e.g. in a MONAI Deploy operator); sidecars are
    not looked for. :func:`read_xray` does the same for a file and then applies overrides.

    Raises:
        XrayReadError: no pixel data, several frames, a 3D array or undecodable pixel data.
    """
    try:
        array, info, meta = _dicom_pixels_and_meta(ds, name)
    except XrayReadError:
        raise
    except Exception as e:  # malformed elements
        raise XrayReadError(f"{name}: cannot read this DICOM dataset ({type(e).__name__}: {e})") from e
    _check_pixels(name, array)
    meta["format"] = "dicom"
    meta["spacing_notes"] = list(info.notes)
    return XrayImage(array, info.spacing_mm, info.spacing_source, name, meta)


def _dicom_pixels_and_meta(ds, name: str) -> tuple[np.ndarray, SpacingInfo, dict[str, Any]]:
    from pydicom.pixels import apply_color_lut, apply_modality_lut

    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        if "Rows" not in ds or "Columns" not in ds:
            raise XrayReadError(
                f"{name}: not a readable DICOM image (no pixel data and no Rows/Columns: corrupt, truncated "
                "or not an image)"
            )
        raise XrayReadError(
            f"{name}: DICOM file has no pixel data (header only); read_spacing() can still give its spacing"
        )
    frames = _dicom_int(ds, "NumberOfFrames", 1)
    if frames > 1:
        raise XrayReadError(f"{name}: {frames} frames; only single-frame 2D images are supported")
    rows, cols = _dicom_int(ds, "Rows", 0), _dicom_int(ds, "Columns", 0)
    if rows <= 0 or cols <= 0:
        raise XrayReadError(f"{name}: DICOM Rows/Columns missing or not positive ({rows} x {cols})")
    _check_size(name, cols, rows, "DICOM image")
    info = spacing_from_dicom(ds, name)
    meta = _dicom_meta(ds)
    try:
        raw = ds.pixel_array
    except Exception as e:  # decoders raise many types (missing plugin, corrupt stream)
        ts = meta.get("transfer_syntax_uid", "?")
        raise XrayReadError(
            f"{name}: cannot decode the pixel data (transfer syntax {ts}): {e}. "
            "Compressed DICOM may need a pydicom decoder plugin (pylibjpeg, python-gdcm)."
        ) from e
    meta["original_dtype"] = str(raw.dtype)
    photometric = str(ds.get("PhotometricInterpretation", "")).upper()
    samples = _dicom_int(ds, "SamplesPerPixel", 1)
    if photometric == "PALETTE COLOR" and raw.ndim == 2:
        array = _luminance(apply_color_lut(raw, ds), name, photometric)
        meta["converted_to_luminance"] = True
    elif samples > 1:
        if raw.ndim != 3:
            raise XrayReadError(f"{name}: {samples} samples per pixel but pixel array shape {raw.shape}")
        array = _luminance(raw, name, photometric)  # pydicom returns YBR data as RGB
        meta["converted_to_luminance"] = True
    else:
        if raw.ndim != 2:
            raise XrayReadError(f"{name}: expected one 2D frame, got pixel array shape {raw.shape}")
        array = np.asarray(apply_modality_lut(raw, ds), dtype=np.float64)
        meta["inverted"] = photometric == "MONOCHROME1"
        if meta["inverted"]:
            lo, hi = _modality_range(ds, raw, array)
            array = (lo + hi) - array
            meta["inversion_range"] = [lo, hi]
    return array.astype(np.float32), info, meta


def _dicom_int(ds, keyword: str, default: int) -> int:
    try:
        value = ds.get(keyword)
        return default if value in (None, "") else int(value)
    except (TypeError, ValueError):
        return default


def _modality_range(ds, raw: np.ndarray, values: np.ndarray) -> tuple[float, float]:
    """``(lo, hi)``: the values the modality LUT gives for the smallest and largest storable value."""
    from pydicom.pixels import apply_modality_lut

    if raw.dtype.kind == "f":  # float pixel data has no stored-value range: use the data's own
        return float(values.min()), float(values.max())
    bits = _dicom_int(ds, "BitsStored", raw.dtype.itemsize * 8)
    if _dicom_int(ds, "PixelRepresentation", 0) == 1:
        ends = np.array([-(1 << (bits - 1)), (1 << (bits - 1)) - 1], dtype=np.int64)
    else:
        ends = np.array([0, (1 << bits) - 1], dtype=np.int64)
    out = np.asarray(apply_modality_lut(ends, ds), dtype=np.float64)
    return float(out.min()), float(out.max())


def _luminance(rgb: np.ndarray, name: str, what: str) -> np.ndarray:
    """(H, W, 3) RGB -> (H, W) float64 BT.601 luminance; one channel as is when all are equal."""
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[-1] != 3:
        raise XrayReadError(f"{name}: expected an (H, W, 3) colour image, got shape {rgb.shape}")
    if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2]):
        return rgb[..., 0].astype(np.float64)
    warnings.warn(
        f"{name}: {what} colour image converted to luminance 0.299 R + 0.587 G + 0.114 B",
        XrayWarning,
        stacklevel=4,
    )
    return rgb.astype(np.float64) @ np.asarray(LUMA_WEIGHTS_RGB)


# --------------------------------------------------------------------------------------------
# PNG / JPEG / TIFF / BMP
# --------------------------------------------------------------------------------------------


def _read_raster(name: str) -> tuple[np.ndarray, dict[str, Any]]:
    import cv2

    size = _raster_size(name)
    if size is not None:
        _check_size(name, size[0], size[1])
    buf = np.fromfile(name, dtype=np.uint8)
    if buf.size == 0:
        raise XrayReadError(f"{name}: empty file")
    cvlog = getattr(getattr(cv2, "utils", None), "logging", None)  # absent in older OpenCV builds
    level = cvlog.getLogLevel() if cvlog is not None else None
    if cvlog is not None:
        cvlog.setLogLevel(cvlog.LOG_LEVEL_SILENT)  # our error says it in one line
    try:
        arr = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)  # keeps 16-bit values, ignores EXIF orientation
    except cv2.error as e:
        raise XrayReadError(f"{name}: OpenCV cannot decode this image ({e})") from e
    finally:
        if cvlog is not None:
            cvlog.setLogLevel(level)
    if arr is None:
        raise XrayReadError(f"{name}: OpenCV cannot decode this image (truncated, corrupt or unsupported)")
    meta: dict[str, Any] = {"original_dtype": str(arr.dtype), "channels": 1 if arr.ndim == 2 else int(arr.shape[2])}
    if arr.ndim == 3 and arr.shape[2] in (2, 4):  # gray + alpha or BGRA: drop alpha
        meta["alpha_dropped"] = True
        arr = arr[..., :-1]
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim == 3:
        if arr.shape[2] != 3:
            raise XrayReadError(f"{name}: unsupported channel count {arr.shape[2]}")
        arr = _luminance(arr[..., ::-1], name, "RGB")  # OpenCV gives BGR
        meta["converted_to_luminance"] = True
    return np.asarray(arr, dtype=np.float32), meta


def _raster_size(name: str) -> tuple[int, int] | None:
    """``(W, H)`` from a PNG ``IHDR`` chunk, else from Pillow's header parser; None when unknown.

    Only the header is read, so an oversized image can be refused before it is decoded.
    """
    with open(name, "rb") as f:
        head = f.read(24)
    if head.startswith(b"\x89PNG\r\n\x1a\n") and head[12:16] == b"IHDR":
        return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(name) as im:  # reads the header only
                return int(im.size[0]), int(im.size[1])
    except Image.DecompressionBombError as e:  # above twice Pillow's limit (about 179 megapixels)
        raise XrayReadError(f"{name}: image too large ({e}); not read") from e
    except Exception:  # not identifiable by Pillow: OpenCV decides (and refuses) below
        return None


# --------------------------------------------------------------------------------------------
# NIfTI / NRRD through MONAI
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _monai_loader(reader: str):
    from monai.transforms import LoadImage

    return LoadImage(reader=reader, image_only=False, dtype=np.float32)


def _load_with_monai(name: str, reader: str) -> tuple[np.ndarray, dict[str, Any]]:
    """MONAI-loaded 2D image as (H, W): MONAI gives spatial axes (x, y) = (W, H), so transpose."""
    try:
        loader = _monai_loader(reader)
        img, meta = loader(name)
    except ImportError as e:
        raise XrayReadError(f"{name}: {reader} needs an optional package ({e}); for NRRD install itk") from e
    except Exception as e:  # readers raise RuntimeError/ValueError/OSError for broken files
        raise XrayReadError(f"{name}: {reader} cannot read this file ({e})") from e
    arr = np.asarray(img.detach().cpu().numpy() if hasattr(img, "detach") else img)
    while arr.ndim > 2 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim != 2:
        raise XrayReadError(
            f"{name}: expected a 2D image, got array shape {tuple(img.shape)}; "
            "3D volumes and multi-channel images are not supported"
        )
    return arr.T, dict(meta)


def _read_nifti(name: str) -> tuple[np.ndarray, SpacingInfo, dict[str, Any]]:
    import nibabel as nib

    try:
        shape = tuple(int(s) for s in nib.load(name).header.get_data_shape())
    except Exception as e:  # nibabel raises several types for broken headers
        raise XrayReadError(f"{name}: not a readable NIfTI file ({type(e).__name__}: {e})") from e
    if len(shape) >= 2:
        _check_size(name, shape[0], int(np.prod(shape[1:], dtype=np.int64)), "NIfTI image")
    arr, mmeta = _load_with_monai(name, "NibabelReader")
    pixdim = np.asarray(mmeta.get("pixdim", []), dtype=np.float64).reshape(-1)
    units = int(np.asarray(mmeta.get("xyzt_units", 0)).reshape(-1)[0])
    info = _nifti_spacing(pixdim, units, name)
    meta: dict[str, Any] = {"pixdim": [float(p) for p in pixdim[1:3]], "xyzt_units": units}
    try:
        from nibabel.nifti1 import data_type_codes

        meta["original_dtype"] = str(np.dtype(data_type_codes.dtype[int(np.asarray(mmeta["datatype"]))]))
    except (KeyError, TypeError, ValueError):
        pass
    return arr, info, meta


def _nifti_spacing(pixdim: Any, xyzt_units: Any, name: str) -> SpacingInfo:
    """NIfTI ``pixdim[1:3]`` in mm (see the module docstring)."""
    notes: list[str] = []
    pix = [float(v) for v in np.asarray(pixdim, dtype=np.float64).reshape(-1)[1:3]]
    unit = int(np.asarray(xyzt_units).reshape(-1)[0]) & 0x07
    what = "NIfTI pixdim[1:3]"
    if unit == 0:
        if pix == [1.0, 1.0]:
            _reject(name, what, pix, "1 x 1 with no spatial unit is the writers' default, not a measurement", notes)
            return SpacingInfo(None, "unknown", tuple(notes))
        notes.append(f"{name}: NIfTI spatial unit not set; pixdim taken as mm")
        scale = 1.0
    elif unit in _NIFTI_UNIT_MM:
        scale = _NIFTI_UNIT_MM[unit]
    else:
        _reject(name, what, pix, f"unknown spatial unit code {unit}", notes)
        return SpacingInfo(None, "unknown", tuple(notes))
    pair = _positive_pair(pix, name, what, pix, notes)
    if pair is None:
        return SpacingInfo(None, "unknown", tuple(notes))
    return SpacingInfo((pair[0] * scale, pair[1] * scale), "header", tuple(notes))


def _read_nrrd(name: str) -> tuple[np.ndarray, SpacingInfo, dict[str, Any]]:
    fields = _nrrd_header(name)
    try:
        sizes = [int(v) for v in fields.get("sizes", "").split()]
    except ValueError:
        raise XrayReadError(f"{name}: NRRD 'sizes' field is malformed: {fields.get('sizes')!r}") from None
    if len(sizes) >= 2:
        _check_size(name, sizes[0], int(np.prod(sizes[1:], dtype=np.int64)), "NRRD image")
    info = _nrrd_spacing(fields, name)
    arr, _ = _load_with_monai(name, "ITKReader")
    meta = {"nrrd_type": fields.get("type", "")}
    return arr, info, meta


def _nrrd_header(name: str) -> dict[str, str]:
    """The ``field: value`` lines of a NRRD header (keys lower-case)."""
    fields: dict[str, str] = {}
    with open(name, "rb") as f:
        if not f.readline().startswith(b"NRRD"):
            raise XrayReadError(f"{name}: not a NRRD file (no NRRD magic)")
        for line in f:
            text = line.decode("latin-1").rstrip("\r\n")
            if not text:
                break
            if text.startswith("#") or ":=" in text or ": " not in text:
                continue
            key, value = text.split(": ", 1)
            fields[key.strip().lower()] = value.strip()
    return fields


def _nrrd_spacing(fields: dict[str, str], name: str) -> SpacingInfo:
    """Spacing of the two spatial NRRD axes, the first (fastest) being x = columns."""
    notes: list[str] = []
    if "space directions" in fields:
        what, raw = "NRRD space directions", fields["space directions"]
        units = re.findall(r'"([^"]*)"', fields.get("space units", ""))
        try:
            values = []
            for vec, none in re.findall(r"\(([^)]*)\)|(none)", raw):
                if none:
                    continue
                values.append(math.sqrt(sum(float(c) ** 2 for c in vec.split(","))))
        except ValueError as e:
            _reject(name, what, raw, f"malformed ({e})", notes)
            return SpacingInfo(None, "unknown", tuple(notes))
    elif "spacings" in fields:
        what, raw = "NRRD spacings", fields["spacings"]
        units = re.findall(r'"([^"]*)"', fields.get("units", ""))
        try:
            values = [float(v) for v in raw.split() if v.lower() != "nan"]  # nan marks a non-spatial axis
        except ValueError as e:
            _reject(name, what, raw, f"malformed ({e})", notes)
            return SpacingInfo(None, "unknown", tuple(notes))
    else:
        notes.append(f"{name}: NRRD header has no spacings or space directions; spacing unknown")
        return SpacingInfo(None, "unknown", tuple(notes))
    pair = _positive_pair(values, name, what, raw, notes)
    if pair is None:
        return SpacingInfo(None, "unknown", tuple(notes))
    scales = [_LENGTH_UNIT_MM.get(u.strip().lower()) for u in (units or ["", ""])]
    if len(scales) != 2 or any(s is None for s in scales):
        _reject(name, what, raw, f"unsupported units {units}", notes)
        return SpacingInfo(None, "unknown", tuple(notes))
    return SpacingInfo((pair[0] * scales[0], pair[1] * scales[1]), "header", tuple(notes))
