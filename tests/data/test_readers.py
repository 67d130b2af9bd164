"""Tests of monai_spine.data.readers: pixels, orientation and trustworthy pixel spacing.

DICOM, PNG, NIfTI and NRRD files are written into ``tmp_path``; the three real DICOM files of
``<data>/dicom-spacing`` (see its PROVENANCE.md) are read in place and the tests skip without them.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.tag import Tag
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from monai_spine.data.readers import (
    SpacingInfo,
    SpacingWarning,
    XrayImage,
    XrayReadError,
    XrayWarning,
    detect_format,
    read_sidecar,
    read_spacing,
    read_xray,
    sidecar_path,
    spacing_from_dicom,
    write_sidecar,
    xray_from_dicom,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
DX = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation
CR = "1.2.840.10008.5.1.4.1.1.1"  # Computed Radiography Image Storage
SC = "1.2.840.10008.5.1.4.1.1.7"  # Secondary Capture Image Storage


def _data_dir() -> Path:
    root = os.environ.get("MONAI_SPINE_DATA") or str(REPO_ROOT / ".." / "shared" / "data")
    return Path(root) / "dicom-spacing"


@pytest.fixture(scope="module")
def dicom_dir() -> Path:
    d = _data_dir()
    if not (d / "RG1_UNCI.dcm").exists():
        pytest.skip(f"real DICOM test data not found under {d}")
    return d


def _pixels(rows: int = 4, cols: int = 7, dtype=np.uint16) -> np.ndarray:
    """Distinct values 10 * row + col, so every pixel's place can be checked."""
    r, c = np.mgrid[0:rows, 0:cols]
    return (10 * r + c).astype(dtype)


def write_dicom(
    path: Path,
    pixels: np.ndarray | None = None,
    *,
    sop_class: str = DX,
    modality: str = "DX",
    photometric: str = "MONOCHROME2",
    bits_stored: int | None = None,
    raw_tags: dict[str, str] | None = None,
    tags: dict | None = None,
    preamble: bool = True,
) -> Path:
    """Write a small single-frame DICOM file.

    Args:
        pixels: (H, W) integer array or (H, W, 3) uint8 RGB; None writes no PixelData.
        raw_tags: keyword -> text written byte for byte (so malformed values reach the file).
        tags: keyword -> value set through pydicom.
        preamble: False writes a file without the 128-byte preamble and "DICM".
    """
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = modality
    if pixels is None:
        ds.Rows, ds.Columns = 4, 7
    else:
        ds.Rows, ds.Columns = pixels.shape[:2]
        rgb = pixels.ndim == 3
        ds.SamplesPerPixel = 3 if rgb else 1
        ds.PhotometricInterpretation = "RGB" if rgb else photometric
        if rgb:
            ds.PlanarConfiguration = 0
        bits = pixels.dtype.itemsize * 8
        ds.BitsAllocated = bits
        ds.BitsStored = bits_stored or bits
        ds.HighBit = ds.BitsStored - 1
        ds.PixelRepresentation = 1 if pixels.dtype.kind == "i" else 0
        ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    for k, v in (tags or {}).items():
        setattr(ds, k, v)
    for k, text in (raw_tags or {}).items():
        data = text.encode("ascii")
        data += b" " * (len(data) % 2)
        ds[Tag(k)] = RawDataElement(Tag(k), dictionary_VR(k), len(data), data, 0, False, True)
    if preamble:
        ds.save_as(path, enforce_file_format=True)
    else:
        ds.preamble = None
        ds.save_as(path, implicit_vr=False, little_endian=True)
    return path


def _spacing_warnings(record) -> list[str]:
    return [str(w.message) for w in record if issubclass(w.category, SpacingWarning)]


# ----------------------------------------------------------------------------- DICOM spacing

# id, SOP class, tags written as text, expected (sx, sy), expected source, text in the warning (None: no warning)
DICOM_SPACING_CASES = [
    ("dx_pixelspacing_row_col_swapped", DX, {"PixelSpacing": "0.2\\0.1"}, (0.1, 0.2), "PixelSpacing", None),
    (
        "pixelspacing_beats_imager",
        DX,
        {"PixelSpacing": "0.1\\0.1", "ImagerPixelSpacing": "0.15\\0.15"},
        (0.1, 0.1),
        "PixelSpacing",
        None,
    ),
    (
        "cr_imager_divided_by_magnification",  # 0.144 / 1.2 = 0.12 (columns), 0.168 / 1.2 = 0.14 (rows)
        CR,
        {"ImagerPixelSpacing": "0.168\\0.144", "EstimatedRadiographicMagnificationFactor": "1.2"},
        (0.12, 0.14),
        "ImagerPixelSpacing",
        None,
    ),
    (
        "cr_imager_without_magnification",
        CR,
        {"ImagerPixelSpacing": "0.15\\0.15"},
        (0.15, 0.15),
        "ImagerPixelSpacing",
        None,
    ),
    (
        "bad_magnification_imager_as_is",
        CR,
        {"ImagerPixelSpacing": "0.15\\0.15", "EstimatedRadiographicMagnificationFactor": "0"},
        (0.15, 0.15),
        "ImagerPixelSpacing",
        "EstimatedRadiographicMagnificationFactor = '0'",
    ),
    ("pixelspacing_negative", DX, {"PixelSpacing": "-0.1\\0.1"}, None, "unknown", "PixelSpacing = '-0.1\\0.1'"),
    (
        "negative_pixelspacing_falls_back_to_imager",
        DX,
        {"PixelSpacing": "-0.1\\0.1", "ImagerPixelSpacing": "0.2\\0.2"},
        (0.2, 0.2),
        "ImagerPixelSpacing",
        "-0.1",
    ),
    ("pixelspacing_zero", DX, {"PixelSpacing": "0.000\\0.000"}, None, "unknown", "zero or negative"),
    ("pixelspacing_malformed", DX, {"PixelSpacing": "0.1\\abc"}, None, "unknown", "malformed number 'abc'"),
    ("pixelspacing_one_value", DX, {"PixelSpacing": "0.1"}, None, "unknown", "expected 2 values"),
    ("pixelspacing_three_values", DX, {"PixelSpacing": "0.1\\0.1\\0.1"}, None, "unknown", "expected 2 values"),
    ("pixelspacing_nan", DX, {"PixelSpacing": "nan\\0.1"}, None, "unknown", "malformed number 'nan'"),
    ("pixelspacing_overflow_inf", DX, {"PixelSpacing": "1e400\\0.1"}, None, "unknown", "not finite"),
    ("sc_nominal_scanned", SC, {"NominalScannedPixelSpacing": "0.25\\0.3"}, (0.3, 0.25), "header", None),
    ("sc_without_spacing", SC, {}, None, "unknown", None),
]


@pytest.mark.parametrize(
    "sop_class, raw_tags, expected, source, warning_text",
    [c[1:] for c in DICOM_SPACING_CASES],
    ids=[c[0] for c in DICOM_SPACING_CASES],
)
def test_dicom_spacing_rules(tmp_path, sop_class, raw_tags, expected, source, warning_text):
    modality = {DX: "DX", CR: "CR", SC: "OT"}[sop_class]
    path = write_dicom(tmp_path / "x.dcm", _pixels(), sop_class=sop_class, modality=modality, raw_tags=raw_tags)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        img = read_xray(path)
        info = read_spacing(path)
    assert img.spacing_source == source == info.spacing_source
    if expected is None:
        assert img.spacing_mm is None and info.spacing_mm is None
        assert np.isnan(img.spacing_array).all()
    else:
        np.testing.assert_allclose(img.spacing_mm, expected, rtol=1e-12)
        np.testing.assert_allclose(info.spacing_mm, expected, rtol=1e-12)
    messages = _spacing_warnings(record)
    if warning_text is None:
        assert messages == []
    else:
        assert messages and all(str(path) in m for m in messages)
        assert any(warning_text in m for m in messages), messages
        assert any(warning_text in n for n in img.meta["spacing_notes"])


@settings(max_examples=30, deadline=None)
@given(
    st.floats(min_value=1e-3, max_value=10.0, allow_nan=False),
    st.floats(min_value=1e-3, max_value=10.0, allow_nan=False),
)
def test_dicom_pixelspacing_is_row_then_column(row_mm, col_mm):
    ds = Dataset()
    ds.PixelSpacing = [f"{row_mm:.10g}", f"{col_mm:.10g}"]
    info = spacing_from_dicom(ds)
    assert info.spacing_source == "PixelSpacing"
    np.testing.assert_allclose(info.spacing_mm, (col_mm, row_mm), rtol=1e-9)


# ----------------------------------------------------------------------------- DICOM pixels

# id, stored pixels, photometric, BitsStored, extra tags, expected array as a function of the stored pixels
DICOM_PIXEL_CASES = [
    ("monochrome2_raw", _pixels(), "MONOCHROME2", 12, {}, lambda p: p),
    (
        "monochrome2_rescale",
        _pixels(),
        "MONOCHROME2",
        12,
        {"RescaleSlope": "2", "RescaleIntercept": "-10"},
        lambda p: 2.0 * p - 10,
    ),
    ("monochrome1_12bit", _pixels(), "MONOCHROME1", 12, {}, lambda p: 4095.0 - p),
    (
        # range of 2 * stored - 100 over stored 0..4095 is [-100, 8090]: -100 + 8090 - (2 p - 100) = 8090 - 2 p
        "monochrome1_rescale",
        _pixels(),
        "MONOCHROME1",
        12,
        {"RescaleSlope": "2", "RescaleIntercept": "-100"},
        lambda p: 8090.0 - 2.0 * p,
    ),
    # signed 12-bit range [-2048, 2047]: -2048 + 2047 - p = -1 - p
    ("monochrome1_signed", _pixels(dtype=np.int16) - 20, "MONOCHROME1", 12, {}, lambda p: -1.0 - p),
    ("monochrome2_8bit", _pixels(dtype=np.uint8), "MONOCHROME2", 8, {}, lambda p: p),
]


@pytest.mark.parametrize(
    "pixels, photometric, bits_stored, tags, expected_fn",
    [c[1:] for c in DICOM_PIXEL_CASES],
    ids=[c[0] for c in DICOM_PIXEL_CASES],
)
def test_dicom_pixels_modality_lut_and_inversion(tmp_path, pixels, photometric, bits_stored, tags, expected_fn):
    path = write_dicom(
        tmp_path / "x.dcm", pixels, photometric=photometric, bits_stored=bits_stored, tags=dict(tags)
    )
    img = read_xray(path)
    assert img.array.dtype == np.float32 and img.array.shape == pixels.shape
    np.testing.assert_array_equal(img.array, expected_fn(pixels.astype(np.float64)).astype(np.float32))
    assert img.meta["inverted"] == (photometric == "MONOCHROME1")
    assert img.meta["photometric_interpretation"] == photometric
    assert img.meta["bits_stored"] == bits_stored
    assert img.meta["original_dtype"] == str(pixels.dtype)


def test_dicom_orientation_and_meta(tmp_path):
    pixels = np.zeros((4, 7), np.uint16)
    pixels[2, 5] = 1000  # row 2, column 5
    path = write_dicom(tmp_path / "x.dcm", pixels, raw_tags={"PixelSpacing": "0.3\\0.2"})
    img = read_xray(path)
    assert img.array.shape == (4, 7) and img.size_wh == (7, 4)
    assert np.argwhere(img.array == 1000).tolist() == [[2, 5]]
    assert img.channel_first().shape == (1, 4, 7)
    np.testing.assert_array_equal(img.spacing_array, np.array([0.2, 0.3], np.float32))
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    assert img.meta["sop_instance_uid"] == ds.SOPInstanceUID
    assert img.meta["modality"] == "DX"
    assert img.meta["spacing_tags"] == {"PixelSpacing": "0.3\\0.2"}
    json.dumps(img.meta)  # plain JSON types only


def test_dicom_rgb_secondary_capture_becomes_luminance(tmp_path):
    rgb = np.zeros((3, 4, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 100, 50, 200
    path = write_dicom(tmp_path / "sc.dcm", rgb, sop_class=SC, modality="OT")
    with pytest.warns(XrayWarning, match="luminance"):
        img = read_xray(path)
    # 0.299 * 100 + 0.587 * 50 + 0.114 * 200 = 29.9 + 29.35 + 22.8 = 82.05
    np.testing.assert_allclose(img.array, np.full((3, 4), 82.05), rtol=1e-6)
    assert img.meta["converted_to_luminance"] is True


def test_dicom_errors_name_the_file(tmp_path):
    header_only = write_dicom(tmp_path / "header_only.dcm", None, raw_tags={"ImagerPixelSpacing": "0.15\\0.15"})
    with pytest.raises(XrayReadError, match="header_only.dcm.*no pixel data"):
        read_xray(header_only)
    assert read_spacing(header_only) == SpacingInfo((0.15, 0.15), "ImagerPixelSpacing", ())

    frames = np.zeros((2 * 4, 7), np.uint16)  # two 4 x 7 frames, one after the other
    multi = write_dicom(tmp_path / "multi.dcm", frames, tags={"NumberOfFrames": 2})
    ds = pydicom.dcmread(multi)
    ds.Rows = 4
    ds.save_as(multi)
    with pytest.raises(XrayReadError, match="multi.dcm.*2 frames"):
        read_xray(multi)

    bogus = tmp_path / "bogus.dcm"
    bogus.write_bytes(b"not a dicom file at all")
    with pytest.raises(XrayReadError, match="bogus.dcm"):
        read_xray(bogus)


def test_dicom_without_preamble_and_in_memory(tmp_path):
    path = write_dicom(tmp_path / "nopreamble.dcm", _pixels(), raw_tags={"PixelSpacing": "0.1\\0.1"}, preamble=False)
    assert path.read_bytes()[128:132] != b"DICM"
    img = read_xray(path)
    np.testing.assert_array_equal(img.array, _pixels())
    assert img.spacing_mm == (0.1, 0.1)
    mem = xray_from_dicom(pydicom.dcmread(path, force=True), name="memory")
    np.testing.assert_array_equal(mem.array, img.array)
    assert mem.path == "memory" and mem.spacing_source == "PixelSpacing"


# ----------------------------------------------------------------------------- real DICOM files


def test_real_rg1_zero_pixelspacing_rejected_and_inverted(dicom_dir):
    path = dicom_dir / "RG1_UNCI.dcm"
    with pytest.warns(SpacingWarning, match=r"RG1_UNCI\.dcm: PixelSpacing = '0\.000\\0\.000' rejected"):
        img = read_xray(path)
    assert img.spacing_mm is None and img.spacing_source == "unknown"
    raw = pydicom.dcmread(path).pixel_array
    assert img.array.shape == (1955, 1841) == raw.shape
    # MONOCHROME1, 15-bit unsigned, no rescale: inverted over the stored range [0, 32767]
    assert img.meta["inversion_range"] == [0.0, 32767.0]
    np.testing.assert_array_equal(img.array, 32767.0 - raw.astype(np.float32))
    # bone bright after inversion: the mediastinum (centre) is brighter than either lung field
    h, w = img.array.shape
    centre = img.array[int(0.35 * h) : int(0.6 * h), int(0.45 * w) : int(0.55 * w)].mean()
    rows = slice(int(0.3 * h), int(0.55 * h))
    lungs = [img.array[rows, int(a * w) : int(b * w)].mean() for a, b in ((0.2, 0.35), (0.65, 0.8))]
    assert centre > max(lungs)


def test_real_rg3_no_spacing_and_inverted(dicom_dir):
    path = dicom_dir / "RG3_UNCI.dcm"
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        img = read_xray(path)
    assert _spacing_warnings(record) == []  # absent tags are unknown, not rejected
    assert img.spacing_mm is None and img.spacing_source == "unknown"
    raw = pydicom.dcmread(path).pixel_array
    np.testing.assert_array_equal(img.array, 1023.0 - raw.astype(np.float32))  # 10-bit MONOCHROME1
    assert img.meta["modality"] == "CR" and img.meta["bits_stored"] == 10


def test_real_header_only_file(dicom_dir):
    path = dicom_dir / "chrJapMulti.dcm"
    with pytest.raises(XrayReadError, match=r"chrJapMulti\.dcm.*no pixel data"):
        read_xray(path)
    info = read_spacing(path)
    assert info.spacing_mm == (0.15, 0.15) and info.spacing_source == "ImagerPixelSpacing"


# ----------------------------------------------------------------------------- PNG / JPEG and sidecars


def _png(path: Path, arr: np.ndarray) -> Path:
    assert cv2.imwrite(str(path), arr)
    return path


# id, stored array, expected original dtype
RASTER_CASES = [
    ("png_8bit", _pixels(dtype=np.uint8), "uint8"),
    ("png_16bit_full_range", (_pixels() * 1000 + 535).astype(np.uint16), "uint16"),  # up to 36535 > 255
]


@pytest.mark.parametrize("arr, dtype", [c[1:] for c in RASTER_CASES], ids=[c[0] for c in RASTER_CASES])
def test_png_values_orientation_and_no_spacing(tmp_path, arr, dtype):
    path = _png(tmp_path / "img.png", arr)
    img = read_xray(path)
    np.testing.assert_array_equal(img.array, arr.astype(np.float32))
    assert img.array[2, 5] == arr[2, 5] and img.size_wh == (7, 4)
    assert img.meta["original_dtype"] == dtype and img.meta["format"] == "raster"
    assert img.spacing_mm is None and img.spacing_source == "unknown"


def test_png_rgb_to_luminance(tmp_path):
    gray = _pixels(dtype=np.uint8)
    same = _png(tmp_path / "same.png", np.stack([gray] * 3, axis=-1))
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        img = read_xray(same)
    assert not [w for w in record if issubclass(w.category, XrayWarning)]  # gray stored as RGB: exact
    np.testing.assert_array_equal(img.array, gray)

    bgr = np.zeros((2, 3, 3), np.uint8)
    bgr[..., 0], bgr[..., 1], bgr[..., 2] = 200, 50, 100  # OpenCV order: B=200, G=50, R=100
    with pytest.warns(XrayWarning, match="luminance"):
        img = read_xray(_png(tmp_path / "rgb.png", bgr))
    np.testing.assert_allclose(img.array, 82.05, rtol=1e-6)  # 0.299*100 + 0.587*50 + 0.114*200


def test_jpeg_reads_as_grayscale(tmp_path):
    arr = np.full((8, 16), 120, np.uint8)
    path = tmp_path / "img.jpg"
    assert cv2.imwrite(str(path), arr)
    img = read_xray(path)
    assert img.array.shape == (8, 16)
    np.testing.assert_allclose(img.array, 120, atol=2)


# id, sidecar content (None: no file), spacing_mm argument, expected spacing, source, warning text
SIDECAR_CASES = [
    ("auto_sidecar", {"spacing_mm": [0.1, 0.2]}, None, (0.1, 0.2), "sidecar", None),
    ("argument_beats_sidecar", {"spacing_mm": [0.1, 0.2]}, (0.3, 0.4), (0.3, 0.4), "sidecar", None),
    ("argument_without_sidecar", None, (0.3, 0.4), (0.3, 0.4), "sidecar", None),
    ("zero_in_sidecar", {"spacing_mm": [0.0, 0.2]}, None, None, "unknown", "zero or negative"),
    ("three_values", {"spacing_mm": [0.1, 0.2, 0.3]}, None, None, "unknown", "expected 2 values"),
    ("string_values", {"spacing_mm": ["a", "b"]}, None, None, "unknown", "not a list of numbers"),
    ("null_is_unknown", {"spacing_mm": None}, None, None, "unknown", None),
]


@pytest.mark.parametrize(
    "content, argument, expected, source, warning_text",
    [c[1:] for c in SIDECAR_CASES],
    ids=[c[0] for c in SIDECAR_CASES],
)
def test_png_sidecar(tmp_path, content, argument, expected, source, warning_text):
    path = _png(tmp_path / "img.png", _pixels(dtype=np.uint8))
    if content is not None:
        (tmp_path / "img.png.spacing.json").write_text(json.dumps(content))
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        img = read_xray(path, spacing_mm=argument)
        info = read_spacing(path, spacing_mm=argument)
    assert img.spacing_mm == expected == info.spacing_mm
    assert img.spacing_source == source == info.spacing_source
    messages = _spacing_warnings(record)
    if warning_text is None:
        assert messages == []
    else:
        assert messages and all("img.png.spacing.json" in m for m in messages)
        assert any(warning_text in m for m in messages)


def test_explicit_sidecar_and_override_of_dicom_header(tmp_path):
    dcm = write_dicom(tmp_path / "x.dcm", _pixels(), raw_tags={"PixelSpacing": "0.1\\0.1"})
    car = write_sidecar(dcm, (0.25, 0.5), sidecar=tmp_path / "calib.json")
    assert read_sidecar(car) == [0.25, 0.5]
    img = read_xray(dcm, sidecar=car)
    assert img.spacing_mm == (0.25, 0.5) and img.spacing_source == "sidecar"
    assert any("PixelSpacing" in n and "overridden" in n for n in img.meta["spacing_notes"])
    img = read_xray(dcm, spacing_mm=(0.3, 0.3))
    assert img.spacing_mm == (0.3, 0.3) and img.spacing_source == "sidecar"
    assert read_xray(dcm).spacing_mm == (0.1, 0.1)  # no auto sidecar beside it: header


def test_write_sidecar_round_trip(tmp_path):
    path = _png(tmp_path / "a.png", _pixels(dtype=np.uint8))
    car = write_sidecar(path, [0.143, 0.15])
    assert car == sidecar_path(path) == tmp_path / "a.png.spacing.json"
    expected_note = f"spacing_mm (0.143, 0.15) from sidecar {car}"
    assert read_spacing(path) == SpacingInfo((0.143, 0.15), "sidecar", (expected_note,))


@pytest.mark.parametrize("bad", [(0.0, 0.1), (-1.0, 1.0), (float("nan"), 0.1), (0.1,), "ab"])
def test_invalid_spacing_argument_raises(tmp_path, bad):
    path = _png(tmp_path / "img.png", _pixels(dtype=np.uint8))
    with pytest.raises(ValueError, match="img.png.*spacing_mm"):
        read_xray(path, spacing_mm=bad)


def test_sidecar_errors(tmp_path):
    path = _png(tmp_path / "img.png", _pixels(dtype=np.uint8))
    with pytest.raises(FileNotFoundError, match="missing.json"):
        read_xray(path, sidecar=tmp_path / "missing.json")
    (tmp_path / "img.png.spacing.json").write_text("{not json")
    with pytest.raises(XrayReadError, match=r"img\.png\.spacing\.json.*not valid JSON"):
        read_xray(path)
    (tmp_path / "img.png.spacing.json").write_text("[0.1, 0.1]")
    with pytest.raises(XrayReadError, match="JSON object"):
        read_xray(path)


# ----------------------------------------------------------------------------- format detection


def test_detect_format_by_content_then_extension(tmp_path):
    dcm = write_dicom(tmp_path / "scan.img", _pixels())  # DICM preamble, odd extension
    png = _png(tmp_path / "p.png", _pixels(dtype=np.uint8))
    renamed = tmp_path / "picture.dat"
    renamed.write_bytes(png.read_bytes())
    nopre = write_dicom(tmp_path / "np.dcm", _pixels(), preamble=False)
    nrrd = tmp_path / "a.nrrd"
    nrrd.write_bytes(b"NRRD0004\ntype: uint8\ndimension: 2\nsizes: 1 1\nencoding: raw\n\n\x00")
    unknown = tmp_path / "a.xyz"
    unknown.write_bytes(b"hello")
    formats = [detect_format(p) for p in (dcm, png, renamed, nopre, nrrd)]
    assert formats == ["dicom", "raster", "raster", "dicom", "nrrd"]
    with pytest.raises(XrayReadError, match="a.xyz.*unknown image format"):
        detect_format(unknown)
    with pytest.raises(FileNotFoundError):
        read_xray(tmp_path / "absent.png")


# ----------------------------------------------------------------------------- NIfTI / NRRD


def _nifti(path: Path, data_wh: np.ndarray, zooms=(0.2, 0.3), unit: str | None = "mm") -> Path:
    nib = pytest.importorskip("nibabel")
    img = nib.Nifti1Image(data_wh, np.eye(4))
    img.header.set_zooms(zooms + (1.0,) * (data_wh.ndim - 2))
    if unit is not None:
        img.header.set_xyzt_units(unit)
    nib.save(img, str(path))
    return path


# id, pixdim (x, y), unit, expected spacing, source, warning text
NIFTI_SPACING_CASES = [
    ("mm", (0.2, 0.3), "mm", (0.2, 0.3), "header", None),
    ("meter", (0.0002, 0.0003), "meter", (0.2, 0.3), "header", None),
    ("micron", (200.0, 300.0), "micron", (0.2, 0.3), "header", None),
    ("unit_unset_taken_as_mm", (0.2, 0.3), None, (0.2, 0.3), "header", None),
    ("default_1x1_without_unit", (1.0, 1.0), None, None, "unknown", "writers' default"),
]


@pytest.mark.parametrize(
    "zooms, unit, expected, source, warning_text",
    [c[1:] for c in NIFTI_SPACING_CASES],
    ids=[c[0] for c in NIFTI_SPACING_CASES],
)
def test_nifti_header_spacing(tmp_path, zooms, unit, expected, source, warning_text):
    path = _nifti(tmp_path / "x.nii.gz", np.zeros((7, 4), np.float32), zooms, unit)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        info = read_spacing(path)
    assert info.spacing_source == source
    if expected is None:
        assert info.spacing_mm is None
        assert any(warning_text in m for m in _spacing_warnings(record))
    else:
        np.testing.assert_allclose(info.spacing_mm, expected, rtol=1e-6)
        assert _spacing_warnings(record) == []


@pytest.mark.parametrize("extra_dims", [(), (1,)], ids=["2d", "trailing_singleton"])
def test_nifti_axis_order(tmp_path, extra_dims):
    data = np.zeros((7, 4) + extra_dims, np.int16)  # NIfTI (i, j) = (x, y) = (W, H)
    data[5, 2] = 9  # column 5, row 2
    path = _nifti(tmp_path / "x.nii", data)
    assert detect_format(path) == "nifti"
    img = read_xray(path)
    assert img.array.shape == (4, 7) and img.array.dtype == np.float32
    assert np.argwhere(img.array == 9).tolist() == [[2, 5]]
    np.testing.assert_allclose(img.spacing_mm, (0.2, 0.3), rtol=1e-6)
    assert img.spacing_source == "header" and img.meta["original_dtype"] == "int16"


def test_nifti_volume_is_an_error(tmp_path):
    path = _nifti(tmp_path / "vol.nii.gz", np.zeros((7, 4, 3), np.float32))
    with pytest.raises(XrayReadError, match=r"vol\.nii\.gz.*2D"):
        read_xray(path)


def _nrrd(path: Path, arr_hw: np.ndarray, spacing_lines: str) -> Path:
    h, w = arr_hw.shape
    header = f"NRRD0004\ntype: uint16\ndimension: 2\nsizes: {w} {h}\n{spacing_lines}endian: little\nencoding: raw\n\n"
    path.write_bytes(header.encode() + arr_hw.astype("<u2").tobytes())
    return path


# id, header lines, expected spacing, source, warning text
NRRD_SPACING_CASES = [
    ("spacings", "spacings: 0.2 0.3\n", (0.2, 0.3), "header", None),
    # a 2D image in 3D space with rotated axes: spacing is each direction vector's length
    ("space_directions", "space: RAS\nspace directions: (0,0.2,0) (0.3,0,0)\n", (0.2, 0.3), "header", None),
    (
        "space_units_cm",
        'space dimension: 2\nspace directions: (0.02,0) (0,0.03)\nspace units: "cm" "cm"\n',
        (0.2, 0.3),
        "header",
        None,
    ),
    ("no_spacing", "", None, "unknown", None),
    ("negative", "spacings: -0.2 0.3\n", None, "unknown", "zero or negative"),
    ("malformed", "spacings: 0.2 abc\n", None, "unknown", "malformed"),
]


@pytest.mark.parametrize(
    "lines, expected, source, warning_text",
    [c[1:] for c in NRRD_SPACING_CASES],
    ids=[c[0] for c in NRRD_SPACING_CASES],
)
def test_nrrd_header_spacing(tmp_path, lines, expected, source, warning_text):
    path = _nrrd(tmp_path / "x.nrrd", np.zeros((4, 7)), lines)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        info = read_spacing(path)
    assert info.spacing_source == source
    if expected is None:
        assert info.spacing_mm is None
    else:
        np.testing.assert_allclose(info.spacing_mm, expected, rtol=1e-9)
    messages = _spacing_warnings(record)
    assert (messages == []) if warning_text is None else any(warning_text in m for m in messages)


@pytest.mark.slow  # importing itk takes several seconds
def test_nrrd_pixels_through_itk(tmp_path):
    pytest.importorskip("itk")
    arr = np.zeros((4, 7), np.uint16)
    arr[2, 5] = 1000
    img = read_xray(_nrrd(tmp_path / "x.nrrd", arr, "spacings: 0.2 0.3\n"))
    assert img.array.shape == (4, 7)
    assert np.argwhere(img.array == 1000).tolist() == [[2, 5]]
    assert img.spacing_mm == (0.2, 0.3) and img.spacing_source == "header"


# ----------------------------------------------------------------------------- the record


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"array": np.zeros((1, 2, 3))}, "2D"),
        ({"spacing_source": "guess"}, "spacing_source"),
        ({"spacing_mm": None, "spacing_source": "PixelSpacing"}, "without spacing_mm"),
        ({"spacing_mm": (0.1, 0.1), "spacing_source": "unknown"}, "unknown"),
        ({"spacing_mm": (0.0, 0.1), "spacing_source": "PixelSpacing"}, "positive"),
    ],
)
def test_xray_image_validation(kwargs, match):
    base = {"array": np.zeros((2, 3)), "spacing_mm": None, "spacing_source": "unknown", "path": "p.png"}
    with pytest.raises(ValueError, match=match):
        XrayImage(**{**base, **kwargs})
