"""The DICOM DX writer: spacing in DICOM order, round trip of the pixels, refusals."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest

from monai_spine.data.synthetic_dicom import write_dx_dicom


def test_write_dx_dicom_puts_row_spacing_first(tmp_path):
    arr = np.arange(12, dtype=np.uint16).reshape(3, 4) * 300
    path = write_dx_dicom(tmp_path / "x.dcm", arr, (0.1, 0.25), imager_spacing_mm=(0.12, 0.3), uid_entropy=["t"],
                          body_part="LSPINE", view_position="RL")
    ds = pydicom.dcmread(path)
    back = ds.pixel_array
    np.testing.assert_array_equal(back, arr)
    assert [float(v) for v in ds.PixelSpacing] == [0.25, 0.1]
    assert [float(v) for v in ds.ImagerPixelSpacing] == [0.3, 0.12]
    assert ds.ViewPosition == "RL" and ds.BodyPartExamined == "LSPINE"
    path2 = write_dx_dicom(tmp_path / "y.dcm", arr, None, imager_spacing_mm=None)
    ds2 = pydicom.dcmread(path2)
    assert "PixelSpacing" not in ds2 and "ImagerPixelSpacing" not in ds2


@pytest.mark.parametrize(
    "arr, spacing, match",
    [
        (np.zeros((2, 3, 4), np.uint16), (0.1, 0.1), "2D"),
        (np.full((3, 3), 5000, np.uint16), (0.1, 0.1), "values"),
        (np.zeros((3, 3), np.float32), (0.1, 0.1), "integer"),
        (np.zeros((3, 3), np.uint16), (0.1, 0.0), "spacing"),
    ],
)
def test_write_dx_dicom_rejects_bad_input(tmp_path, arr, spacing, match):
    with pytest.raises(ValueError, match=match):
        write_dx_dicom(tmp_path / "bad.dcm", arr, spacing)
    assert not (tmp_path / "bad.dcm").exists()
