"""The bad-input corpus of the reliability tests, written into a temporary folder by the tests.

Nothing here is committed as a binary: every file is built from a few lines of code.
(``conftest.py`` puts this folder on ``sys.path``: the suite runs with ``--import-mode=importlib``.)
"""

from __future__ import annotations

import copy
import json
import struct
import zlib
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np

from monai_spine.data.annotation import SpineAnnotation
from monai_spine.data.synthetic_dicom import write_dx_dicom

#: the size the oversized images claim (20000 x 20000 = 400 megapixels: 1.6 GB as float32)
HUGE = 20000


def _image_u16(h: int = 64, w: int = 48, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).random((h, w)) * 4000).astype(np.uint16)


def _edit_dicom(path: Path, edit: Callable[[Any], None]) -> Path:
    import pydicom

    ds = pydicom.dcmread(path)
    edit(ds)
    ds.save_as(path, enforce_file_format=True)
    return path


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def huge_png(path: Path, width: int = HUGE, height: int = HUGE) -> Path:
    """A PNG whose valid IHDR claims ``width x height`` 8-bit gray pixels, with one tiny IDAT (a few bytes)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat)
                     + _png_chunk(b"IEND", b""))
    return path


def huge_nifti(path: Path, width: int = HUGE, height: int = HUGE) -> Path:
    """A NIfTI-1 header claiming a ``width x height`` uint8 image, followed by only 16 bytes of data."""
    import nibabel as nib

    hdr = nib.Nifti1Header()
    hdr.set_data_shape((width, height))
    hdr.set_data_dtype(np.uint8)
    hdr.set_zooms((0.1, 0.1))
    hdr.set_xyzt_units("mm")
    raw = hdr.binaryblock + b"\x00" * 4 + b"\x00" * 16  # 348-byte header, 4-byte extension flag, data
    path.write_bytes(raw)
    return path


def _nifti(path: Path, array: np.ndarray) -> Path:
    import nibabel as nib

    img = nib.Nifti1Image(array, np.diag([0.2, 0.2, 1.0, 1.0]))
    img.header.set_xyzt_units("mm")
    nib.save(img, str(path))
    return path


def build_image_corpus(root: Path) -> dict[str, Path]:
    """Write the bad (and borderline) image files; returns name -> path."""
    root.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}

    good = write_dx_dicom(root / "good.dcm", _image_u16(), (0.1, 0.2))
    files["good.dcm"] = good
    raw = good.read_bytes()
    (root / "truncated.dcm").write_bytes(raw[: len(raw) // 2])  # cut inside the pixel data
    files["truncated.dcm"] = root / "truncated.dcm"
    (root / "truncated_header.dcm").write_bytes(raw[:200])  # cut inside the file meta header
    files["truncated_header.dcm"] = root / "truncated_header.dcm"
    rng = np.random.default_rng(1)
    (root / "corrupt.dcm").write_bytes(raw[:132] + rng.integers(0, 256, 2000, dtype=np.uint8).tobytes())
    files["corrupt.dcm"] = root / "corrupt.dcm"
    (root / "text.dcm").write_text("this is not a DICOM file\n")
    files["text.dcm"] = root / "text.dcm"

    def drop_pixels(ds):
        del ds.PixelData

    files["nopixels.dcm"] = _edit_dicom(write_dx_dicom(root / "nopixels.dcm", _image_u16(), (0.1, 0.1)), drop_pixels)

    def three_frames(ds):
        frames = np.stack([_image_u16(seed=s) for s in range(3)])
        ds.NumberOfFrames = 3
        ds.PixelData = frames.tobytes()

    files["multiframe.dcm"] = _edit_dicom(write_dx_dicom(root / "multiframe.dcm", _image_u16(), (0.1, 0.1)),
                                          three_frames)

    def huge_dims(ds):
        ds.Rows = HUGE
        ds.Columns = HUGE

    files["huge.dcm"] = _edit_dicom(write_dx_dicom(root / "huge.dcm", _image_u16(), (0.1, 0.1)), huge_dims)
    files["volume.nii.gz"] = _nifti(root / "volume.nii.gz", np.random.default_rng(2).random((16, 12, 5), dtype=np.float32))
    nan = np.random.default_rng(3).random((16, 12), dtype=np.float32)
    nan[3, 4] = np.nan
    files["nan.nii.gz"] = _nifti(root / "nan.nii.gz", nan)
    inf = np.random.default_rng(4).random((16, 12), dtype=np.float32)
    inf[5, 6] = np.inf
    cv2.imwrite(str(root / "inf.tif"), inf)
    files["inf.tif"] = root / "inf.tif"
    files["huge.png"] = huge_png(root / "huge.png")
    files["huge.nii"] = huge_nifti(root / "huge.nii")
    (root / "empty.png").write_bytes(b"")
    files["empty.png"] = root / "empty.png"
    png = cv2.imencode(".png", (_image_u16() // 16).astype(np.uint8))[1].tobytes()
    (root / "truncated.png").write_bytes(png[: len(png) // 2])
    files["truncated.png"] = root / "truncated.png"

    rgb = np.zeros((32, 24, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 10, 100, 200  # BGR in OpenCV: B=10, G=100, R=200
    rgb[0, 0] = 0  # one black pixel: not a constant image
    cv2.imwrite(str(root / "rgb.png"), rgb)
    files["rgb.png"] = root / "rgb.png"
    cv2.imwrite(str(root / "u16.png"), _image_u16())
    files["u16.png"] = root / "u16.png"
    cv2.imwrite(str(root / "constant.png"), np.full((32, 24), 77, np.uint8))
    files["constant.png"] = root / "constant.png"

    files["spacing_missing.dcm"] = write_dx_dicom(root / "spacing_missing.dcm", _image_u16(), None,
                                                  imager_spacing_mm=None)

    def zero_spacing(ds):
        ds.PixelSpacing = ["0", "0"]
        ds.ImagerPixelSpacing = ["0", "0"]

    def negative_spacing(ds):
        ds.PixelSpacing = ["-0.1", "0.1"]
        ds.ImagerPixelSpacing = ["-0.1", "0.1"]

    files["spacing_zero.dcm"] = _edit_dicom(write_dx_dicom(root / "spacing_zero.dcm", _image_u16(), (0.1, 0.1)),
                                            zero_spacing)
    files["spacing_negative.dcm"] = _edit_dicom(
        write_dx_dicom(root / "spacing_negative.dcm", _image_u16(), (0.1, 0.1)), negative_spacing)
    return files


def good_annotation_dict(image: str = "good.dcm") -> dict[str, Any]:
    """A valid two-vertebra ``monai-spine-keypoints`` dictionary on a 48 x 64 image."""
    kp = np.array([[[10, 10], [30, 10], [10, 20], [30, 20], [40, 15]],
                   [[10, 30], [30, 30], [10, 40], [30, 40], [40, 35]]], float)
    ann = SpineAnnotation(levels=["C3", "C4"], keypoints_px=kp, visible=np.ones((2, 5), bool), region="cervical",
                          scheme="lateral5", image=image, image_size=(48, 64), spacing_mm=(0.1, 0.2),
                          spacing_source="PixelSpacing")
    return ann.to_dict()


def _mutate(fn: Callable[[dict], None]) -> dict:
    d = copy.deepcopy(good_annotation_dict())
    fn(d)
    return d


#: bad annotation files: name -> (content, a phrase the error message must contain)
BAD_ANNOTATIONS: dict[str, tuple[Any, str]] = {
    "missing_vertebrae.json": (_mutate(lambda d: d.pop("vertebrae")), "missing field 'vertebrae'"),
    "missing_scheme.json": (_mutate(lambda d: d.pop("scheme")), "missing field 'scheme'"),
    "missing_format.json": (_mutate(lambda d: d.pop("format")), "'format' must be"),
    "missing_level.json": (_mutate(lambda d: d["vertebrae"][0].pop("level")), "needs 'level'"),
    "wrong_point_count.json": (_mutate(lambda d: d["vertebrae"][1]["keypoints_px"].pop()), "expected 5 points"),
    "unknown_level.json": (_mutate(lambda d: d["vertebrae"][0].update(level="X9")), "X9"),
    "repeated_level.json": (_mutate(lambda d: d["vertebrae"][1].update(level="C3")), "more than once"),
    "infinite_point.json": (_mutate(lambda d: d["vertebrae"][0]["keypoints_px"].__setitem__(0, [float("inf"), 1.0])),
                            "not finite"),
    "point_not_pair.json": (_mutate(lambda d: d["vertebrae"][0]["keypoints_px"].__setitem__(0, [1.0])), "not [x, y]"),
    "spacing_zero.json": (_mutate(lambda d: d.update(spacing_mm=[0.0, 0.0])), "spacing_mm"),
    "spacing_negative.json": (_mutate(lambda d: d.update(spacing_mm=[-0.1, 0.1])), "spacing_mm"),
    "huge_image_size.json": (_mutate(lambda d: d.update(image_size=[1e400, 10])), "image_size"),
    "unknown_scheme.json": (_mutate(lambda d: d.update(scheme="lateral7")), "lateral7"),
    "wrong_version.json": (_mutate(lambda d: d.update(version=99)), "version"),
    "list.json": ([1, 2, 3], "JSON object"),
    "not_json.json": ("{this is not json", "not valid JSON"),
    "empty.json": ("", "not valid JSON"),
    "binary.json": (b"\xff\xfe\x00garbage", "not valid JSON"),
    "deep.json": ("[" * 100000 + "]" * 100000, "nested too deeply"),
}


def write_json_case(path: Path, content: Any) -> Path:
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif isinstance(content, str):
        path.write_text(content)
    else:
        path.write_text(json.dumps(content))  # json.dumps writes inf as Infinity, as a careless producer would
    return path


