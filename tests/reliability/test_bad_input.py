"""Every file of the bad-input corpus gives a clear error naming the file, or a warning and a documented fallback."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from reliability_corpus import BAD_ANNOTATIONS, good_annotation_dict

from monai_spine.data.annotation import AnnotationError, AnnotationWarning, read_annotation
from monai_spine.data.readers import (
    MAX_IMAGE_PIXELS,
    SpacingWarning,
    XrayReadError,
    XrayWarning,
    max_image_pixels,
    read_spacing,
    read_xray,
)

# name -> a phrase the XrayReadError message must contain
REFUSED_IMAGES = {
    "truncated.dcm": "pixel data",
    "truncated_header.dcm": "not a readable DICOM",
    "corrupt.dcm": "not a readable DICOM",
    "text.dcm": "not a readable DICOM",
    "nopixels.dcm": "no pixel data",
    "multiframe.dcm": "3 frames",
    "huge.dcm": "20000 x 20000 pixels exceeds the limit",
    "huge.png": "20000 x 20000 pixels exceeds the limit",
    "huge.nii": "20000 x 20000 pixels exceeds the limit",
    "volume.nii.gz": "3D volumes",
    "nan.nii.gz": "NaN or infinite",
    "inf.tif": "NaN or infinite",
    "empty.png": "empty file",
    "truncated.png": "cannot decode",
}


@pytest.mark.parametrize("name, phrase", sorted(REFUSED_IMAGES.items()))
def test_bad_image_is_refused_naming_the_file_and_the_problem(image_corpus, name, phrase):
    path = image_corpus[name]
    with pytest.raises(XrayReadError) as info:
        read_xray(path)
    msg = str(info.value)
    assert msg.startswith(str(path)), msg
    assert phrase in msg, msg


def test_huge_images_are_refused_before_their_pixels_are_allocated(image_corpus, monkeypatch):
    """The 20000 x 20000 files hold a few bytes of pixels: refusing them from the header is the only way out."""
    import cv2

    def no_decode(*a, **k):  # pragma: no cover - fails the test if reached
        raise AssertionError("decoder reached for an oversized image")

    monkeypatch.setattr(cv2, "imdecode", no_decode)
    for name in ("huge.png", "huge.dcm", "huge.nii"):
        assert image_corpus[name].stat().st_size < 10_000
        with pytest.raises(XrayReadError, match="exceeds the limit"):
            read_xray(image_corpus[name])


def test_size_limit_is_configurable(image_corpus, monkeypatch):
    assert max_image_pixels() == MAX_IMAGE_PIXELS == 100_000_000
    monkeypatch.setenv("MONAI_SPINE_MAX_PIXELS", "1000")  # the 48 x 64 = 3072-pixel DICOM is now too large
    with pytest.raises(XrayReadError, match="48 x 64 pixels exceeds the limit of 1000"):
        read_xray(image_corpus["good.dcm"])
    monkeypatch.setenv("MONAI_SPINE_MAX_PIXELS", "lots")
    with pytest.raises(ValueError, match="MONAI_SPINE_MAX_PIXELS"):
        max_image_pixels()


def test_header_only_dicom_still_gives_its_spacing(image_corpus):
    info = read_spacing(image_corpus["nopixels.dcm"])
    assert info.spacing_mm == pytest.approx((0.1, 0.1)) and info.spacing_source == "PixelSpacing"


def test_rgb_png_becomes_luminance_with_a_warning(image_corpus):
    with pytest.warns(XrayWarning, match="converted to luminance"):
        img = read_xray(image_corpus["rgb.png"])
    # R=200, G=100, B=10: 0.299 * 200 + 0.587 * 100 + 0.114 * 10 = 119.64
    assert img.array[5, 5] == pytest.approx(119.64, abs=1e-3)
    assert img.meta["converted_to_luminance"] is True


def test_16_bit_png_keeps_its_values(image_corpus):
    import cv2

    img = read_xray(image_corpus["u16.png"])
    raw = cv2.imread(str(image_corpus["u16.png"]), cv2.IMREAD_UNCHANGED)
    assert raw.dtype == np.uint16 and raw.max() > 255
    np.testing.assert_array_equal(img.array, raw.astype(np.float32))
    assert img.meta["original_dtype"] == "uint16"


def test_constant_image_is_read_with_a_warning(image_corpus):
    with pytest.warns(XrayWarning, match="constant image"):
        img = read_xray(image_corpus["constant.png"])
    assert float(img.array.min()) == float(img.array.max()) == 77.0


@pytest.mark.parametrize("name, rejected", [("spacing_missing.dcm", 0), ("spacing_zero.dcm", 2),
                                            ("spacing_negative.dcm", 2)])
def test_missing_zero_negative_spacing_is_unknown_never_one(image_corpus, name, rejected):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        img = read_xray(image_corpus[name])
    assert img.spacing_mm is None and img.spacing_source == "unknown"
    assert np.isnan(img.spacing_array).all()
    spacing_warnings = [w for w in caught if issubclass(w.category, SpacingWarning)]
    assert len(spacing_warnings) == rejected
    assert all(str(image_corpus[name]) in str(w.message) for w in spacing_warnings)
    assert any("spacing unknown" in n for n in img.meta["spacing_notes"]) or rejected


def test_good_file_of_the_corpus_reads(image_corpus):
    img = read_xray(image_corpus["good.dcm"])
    assert img.array.shape == (64, 48) and img.spacing_mm == pytest.approx((0.1, 0.2))


@pytest.mark.parametrize("name", sorted(BAD_ANNOTATIONS))
def test_bad_annotation_names_the_file_and_the_problem(annotation_corpus, name):
    path = annotation_corpus[name]
    with pytest.raises(AnnotationError) as info:
        read_annotation(path)
    msg = str(info.value)
    assert msg.startswith(str(path)), msg
    assert BAD_ANNOTATIONS[name][1] in msg, msg
    assert "\n" not in msg


def test_points_outside_the_image_are_kept_with_a_warning(tmp_path):
    import json

    d = good_annotation_dict()
    d["vertebrae"][1]["keypoints_px"][2] = [1.0e6, 35.0]  # far to the right of the 48 x 64 image
    path = tmp_path / "outside.json"
    path.write_text(json.dumps(d))
    with pytest.warns(AnnotationWarning, match=r"outside\.json: 1 point\(s\) outside the 48 x 64 image, first C4 point 2"):
        ann = read_annotation(path)
    assert ann.keypoints_px[1, 2, 0] == 1.0e6 and ann.visible[1, 2]


def test_annotation_error_is_a_value_error():
    assert issubclass(AnnotationError, ValueError) and issubclass(XrayReadError, ValueError)
