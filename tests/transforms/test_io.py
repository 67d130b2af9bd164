"""Tests of monai_spine.transforms.io: LoadXray / LoadXrayd on small files written into tmp_path."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest
import torch
from monai.bundle import ConfigParser
from monai.data import DataLoader, Dataset
from monai.transforms import Compose
from pydicom.dataset import Dataset as DicomDataset
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from monai_spine.data.readers import XrayReadError
from monai_spine.transforms.io import LoadXray, LoadXrayd


def _pixels(rows: int = 4, cols: int = 7) -> np.ndarray:
    r, c = np.mgrid[0:rows, 0:cols]
    return (10 * r + c).astype(np.uint16)


def _dicom(path: Path, pixel_spacing: str | None = "0.3\\0.2") -> Path:
    """A 4 x 7 DX file; PixelSpacing [row, col] = 0.3\\0.2 gives spacing_mm (0.2, 0.3)."""
    ds = DicomDataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    pixels = _pixels()
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    if pixel_spacing is not None:
        ds.PixelSpacing = pixel_spacing.split("\\")
    ds.PixelData = pixels.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def _png(path: Path) -> Path:
    assert cv2.imwrite(str(path), _pixels().astype(np.uint8))
    return path


@pytest.fixture
def files(tmp_path) -> dict[str, Path]:
    return {"dicom": _dicom(tmp_path / "a.dcm"), "png": _png(tmp_path / "b.png")}


def test_load_xray_array(files):
    for path in files.values():
        out = LoadXray()(path)
        assert out.shape == (1, 4, 7) and out.dtype == np.float32
        np.testing.assert_array_equal(out[0], _pixels())


# id, file, expected spacing, expected source
DICT_CASES = [
    ("dicom_pixelspacing", "dicom", [0.2, 0.3], "PixelSpacing"),
    ("png_unknown", "png", [np.nan, np.nan], "unknown"),
]


@pytest.mark.parametrize("which, spacing, source", [c[1:] for c in DICT_CASES], ids=[c[0] for c in DICT_CASES])
def test_load_xrayd_default_keys(files, which, spacing, source):
    d = LoadXrayd(keys="image")({"image": str(files[which]), "label": 3})
    assert d["image"].shape == (1, 4, 7) and d["image"].dtype == np.float32
    np.testing.assert_array_equal(d["image"][0, 2, 5], 25.0)  # row 2, column 5
    assert d["spacing_mm"].dtype == np.float32
    np.testing.assert_array_equal(d["spacing_mm"], np.array(spacing, np.float32))
    assert d["spacing_source"] == source
    np.testing.assert_array_equal(d["image_size"], [7, 4])  # (W, H)
    assert d["image_path"] == str(files[which])
    assert d["label"] == 3 and "meta" not in d


def test_load_xrayd_custom_keys_and_meta(files):
    t = LoadXrayd(
        keys="img",
        spacing_key="sp",
        spacing_source_key="src",
        image_size_key=None,
        image_path_key="file",
        meta_key="img_meta",
    )
    d = t({"img": files["dicom"]})
    assert set(d) == {"img", "sp", "src", "file", "img_meta"}
    assert d["src"] == "PixelSpacing" and d["img_meta"]["modality"] == "DX"
    assert d["file"] == str(files["dicom"])


def test_load_xrayd_two_image_keys(files):
    t = LoadXrayd(
        keys=("a", "b"),
        spacing_key=("a_sp", "b_sp"),
        spacing_source_key=("a_src", "b_src"),
        image_size_key=("a_size", "b_size"),
        image_path_key=None,
    )
    d = t({"a": files["dicom"], "b": files["png"]})
    assert d["a_src"] == "PixelSpacing" and d["b_src"] == "unknown"
    with pytest.raises(ValueError, match="spacing_key.*one name per image key"):
        LoadXrayd(keys=("a", "b"))


def test_load_xrayd_missing_and_bad_entries(files, tmp_path):
    assert LoadXrayd(keys="image", allow_missing_keys=True)({"x": 1}) == {"x": 1}
    with pytest.raises(KeyError, match="image"):
        LoadXrayd(keys="image")({"x": 1})
    with pytest.raises(TypeError, match="image.*file path"):
        LoadXrayd(keys="image")({"image": np.zeros((4, 7))})
    header_only = _dicom(tmp_path / "c.dcm")
    ds = pydicom.dcmread(header_only)
    del ds.PixelData
    ds.save_as(header_only)
    with pytest.raises(XrayReadError, match="c.dcm"):
        LoadXrayd(keys="image")({"image": header_only})


def test_bundle_target_and_collate(files):
    parser = ConfigParser(
        {"load": {"_target_": "monai_spine.transforms.io.LoadXrayd", "keys": "image", "image_path_key": "path"}}
    )
    load = parser.get_parsed_content("load")
    assert isinstance(load, LoadXrayd)
    data = [{"image": str(files["dicom"])}, {"image": str(files["png"])}]
    batch = next(iter(DataLoader(Dataset(data, Compose([load])), batch_size=2, num_workers=0)))
    assert tuple(batch["image"].shape) == (2, 1, 4, 7)
    assert batch["spacing_mm"].dtype == torch.float32
    torch.testing.assert_close(batch["spacing_mm"][0], torch.tensor([0.2, 0.3]))
    assert torch.isnan(batch["spacing_mm"][1]).all()  # unknown spacing: NaN, never 1.0
    assert list(batch["spacing_source"]) == ["PixelSpacing", "unknown"]
    assert batch["image_size"].tolist() == [[7, 4], [7, 4]]
    assert list(batch["path"]) == [str(files["dicom"]), str(files["png"])]

