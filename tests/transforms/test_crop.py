"""Tests of monai_spine.transforms.crop: crops turned into a vertebra's own frame (``angle_rad``).

The axis-aligned crop's geometry is tested in ``test_keypoints.py``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from monai_spine.transforms import RandVertebraCropd, VertebraCrop, VertebraCropd, frac_to_image_px, image_to_crop_px

BOX = np.array([10.0, 20.0, 30.0, 60.0])  # centre (20, 40), 20 px wide, 40 px high
KP = np.array([[12.0, 25.0], [28.0, 24.0], [13.0, 55.0], [29.0, 57.0], [35.0, 40.0]])


@pytest.mark.parametrize("angle", [None, 0.0, float("nan"), np.array([0.0], np.float32)])
@pytest.mark.parametrize("spacing", [(0.2, 0.4), None])
def test_no_angle_is_the_axis_aligned_crop_bit_for_bit(angle, spacing):
    crop = VertebraCrop(spatial_size=(8, 16), margin_mm=2.0)
    plain = crop.geometry(KP, box_px=BOX, spacing_mm=spacing)
    turned = crop.geometry(KP, box_px=BOX, spacing_mm=spacing, angle_rad=angle)
    assert turned["crop_angle_rad"] == 0.0
    np.testing.assert_array_equal(turned["crop_to_image"], plain["crop_to_image"])
    np.testing.assert_array_equal(turned["keypoints_frac"], plain["keypoints_frac"])
    from_points = crop.geometry(KP, spacing_mm=spacing, angle_rad=angle)
    np.testing.assert_array_equal(from_points["crop_to_image"], crop.geometry(KP, spacing_mm=spacing)["crop_to_image"])


def test_quarter_turn_affine_hand_computed():
    # no margin, no aspect change: crop (W=2, H=4) pixels are 10 x 10 px of the box's frame; the
    # frame's offsets (dx, dy) from the centre (20, 40) turn by 90 degrees into (-dy, dx)
    crop = VertebraCrop(spatial_size=(4, 2), margin_frac=0.0, keep_aspect=False)
    g = crop.geometry(box_px=BOX, angle_rad=math.pi / 2)
    # crop (0, 0): frame offset (-5, -15) -> image offset (15, -5) -> (35, 35)
    # crop (1, 3): frame offset (5, 15) -> image offset (-15, 5) -> (5, 45)
    pts = g["crop_to_image"] @ np.array([[0.0, 0.0, 1.0], [1.0, 3.0, 1.0]]).T
    np.testing.assert_allclose(pts[:2].T, [[35.0, 35.0], [5.0, 45.0]], atol=1e-12)
    np.testing.assert_allclose(g["crop_box_px"], BOX)
    assert g["crop_angle_rad"] == pytest.approx(math.pi / 2)


@pytest.mark.parametrize("angle", [0.3, -1.1, math.pi / 2, 2.5])
@pytest.mark.parametrize("spacing", [(0.25, 0.25), (0.1, 0.3), None])
def test_turned_crop_round_trip(angle, spacing):
    t = RandVertebraCropd(spatial_size=(32, 64), rand_pad_mm=(0, 3), rand_pad_frac=(0, 0.2))
    d = {"image": np.zeros((1, 80, 90), np.float32), "keypoints_px": KP, "box_angle_rad": angle,
         "spacing_mm": np.full(2, np.nan) if spacing is None else np.asarray(spacing)}
    out = t.set_random_state(3)(d)
    assert out["image"].shape == (1, 32, 64)
    np.testing.assert_allclose(frac_to_image_px(out["keypoints_frac"], out["crop_to_image"], (32, 64)), KP, atol=1e-9)
    np.testing.assert_allclose(image_to_crop_px(KP, out["crop_to_image"]), out["keypoints_crop_px"], atol=1e-9)
    inv = t.inverse({**out, "keypoints_px": None})
    np.testing.assert_allclose(inv["keypoints_px"], KP, atol=1e-9)


@pytest.mark.parametrize("angle", [0.4, -0.7])
def test_box_from_points_follows_the_turned_axes(angle):
    # a 30 x 12 px rectangle turned by `angle`: in its own frame its corners are the crop box's
    # corners (no margin, no aspect change), so they land on the crop's outer pixel edges
    c, s = math.cos(angle), math.sin(angle)
    local = np.array([[-15.0, -6.0], [15.0, -6.0], [-15.0, 6.0], [15.0, 6.0]])
    pts = local @ np.array([[c, s], [-s, c]]) + [50.0, 40.0]
    g = VertebraCrop(spatial_size=(12, 30), margin_frac=0.0, keep_aspect=False).geometry(pts, angle_rad=angle)
    np.testing.assert_allclose(g["keypoints_crop_px"], [[-0.5, -0.5], [29.5, -0.5], [-0.5, 11.5], [29.5, 11.5]],
                               atol=1e-9)
    np.testing.assert_allclose(g["crop_box_px"], [35.0, 34.0, 65.0, 46.0], atol=1e-9)


def test_spacing_along_the_turned_axes_hand_computed():
    # a quarter turn puts the crop's width along the image's y: 0.4 mm/px there, 0.2 mm/px along its height;
    # margin 2 mm -> 5 px (width) and 10 px (height); box 20 x 40 -> 30 x 60 frame px
    crop = VertebraCrop(spatial_size=(60, 30), margin_mm=2.0, keep_aspect=False)
    g = crop.geometry(box_px=BOX, spacing_mm=(0.2, 0.4), angle_rad=math.pi / 2)
    np.testing.assert_allclose(g["crop_margin_px"], [5.0, 10.0])
    np.testing.assert_allclose(g["crop_spacing_mm"], [0.4, 0.2])


def test_turned_crop_shows_the_blob_where_the_point_maps():
    h, w = 96, 120
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    blob_at = np.array([70.0, 38.0])
    img = np.exp(-((xx - blob_at[0]) ** 2 + (yy - blob_at[1]) ** 2) / (2 * 2.5**2))[None].astype(np.float32)
    kp = np.array([[40.0, 30.0], [75.0, 35.0], [42.0, 60.0], [74.0, 62.0], blob_at])
    out = VertebraCropd(spatial_size=(64, 128), margin_mm=4.0)(
        {"image": img, "keypoints_px": kp, "spacing_mm": np.array([0.25, 0.25]), "box_angle_rad": 0.35})
    cy, cx = ndimage.center_of_mass(out["image"][0].astype(np.float64))
    np.testing.assert_allclose([cx, cy], out["keypoints_crop_px"][4], atol=0.05)


def test_angle_key_is_optional_and_can_be_switched_off():
    d = {"image": np.zeros((1, 80, 90), np.float32), "keypoints_px": KP, "box_angle_rad": 0.5}
    turned = VertebraCropd(spatial_size=(32, 64))(d)
    ignored = VertebraCropd(spatial_size=(32, 64), angle_key=None)(d)
    absent = VertebraCropd(spatial_size=(32, 64))({k: v for k, v in d.items() if k != "box_angle_rad"})
    assert turned["crop_angle_rad"] == 0.5
    assert ignored["crop_angle_rad"] == absent["crop_angle_rad"] == 0.0
    np.testing.assert_array_equal(ignored["crop_to_image"], absent["crop_to_image"])
    assert not np.allclose(turned["crop_to_image"], absent["crop_to_image"])


@pytest.mark.parametrize("bad", [[0.1, 0.2], np.zeros((2, 2)), "x"])
def test_bad_angle_is_a_value_error(bad):
    with pytest.raises(ValueError, match="angle_rad"):
        VertebraCrop(spatial_size=(8, 16)).geometry(KP, angle_rad=bad)
