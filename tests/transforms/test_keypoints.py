"""Tests of monai_spine.transforms.keypoints: flip with label swap, vertebra crop geometry, px <-> frac."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.data import MetaTensor
from monai.transforms import Compose
from scipy import ndimage

from monai_spine.transforms import (
    DenormalizeKeypoints,
    DenormalizeKeypointsd,
    FlipKeypoints,
    FlipKeypointsd,
    NormalizeKeypoints,
    NormalizeKeypointsd,
    RandFlipKeypointsd,
    RandVertebraCropd,
    VertebraCrop,
    VertebraCropd,
    crop_to_image_px,
    flip_box_px,
    frac_to_image_px,
    image_to_crop_px,
)

# lateral5 order AS, PS, AI, PI, SP; ap4 order TL, TR, BL, BR
LAT_KP = np.array([[2.0, 3.0], [5.0, 1.0], [2.0, 0.0], [4.0, 1.0], [6.0, 1.0]])
# W = 10: x' = 9 - x, and AS<->PS, AI<->PI swap places
LAT_FLIPPED = np.array([[4.0, 1.0], [7.0, 3.0], [5.0, 1.0], [7.0, 0.0], [3.0, 1.0]])
AP_KP = np.array([[10.0, 20.0], [30.0, 22.0], [12.0, 40.0], [32.0, 41.0]])
# W = 100: x' = 99 - x, TL<->TR, BL<->BR
AP_FLIPPED = np.array([[69.0, 22.0], [89.0, 20.0], [67.0, 41.0], [87.0, 40.0]])


def _unique_image(h: int, w: int) -> np.ndarray:
    return np.arange(h * w, dtype=np.float32).reshape(1, h, w)


# ----------------------------------------------------------------------------------------------
# flip
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "scheme, width, kp, expected",
    [("lateral5", 10, LAT_KP, LAT_FLIPPED), ("ap4", 100, AP_KP, AP_FLIPPED)],
)
@pytest.mark.parametrize("lead", [(), (1,), (3,)])
@pytest.mark.parametrize("as_tensor", [False, True])
def test_flip_keypoints_hand_computed(scheme, width, kp, expected, lead, as_tensor):
    pts = np.broadcast_to(kp, lead + kp.shape).copy()
    exp = np.broadcast_to(expected, lead + kp.shape)
    vis = np.zeros(lead + kp.shape[:1], dtype=bool)
    vis[..., 0] = True  # only the first point (AS / TL) is seen
    x, v = (torch.as_tensor(pts), torch.as_tensor(vis)) if as_tensor else (pts, vis)
    out, out_vis = FlipKeypoints(scheme, width)(x, visible=v)
    assert type(out) is type(x) and type(out_vis) is type(v)
    np.testing.assert_allclose(np.asarray(out), exp)
    # the seen point changed label: it is now the second one (PS / TR)
    exp_vis = np.zeros_like(vis)
    exp_vis[..., 1] = True
    np.testing.assert_array_equal(np.asarray(out_vis), exp_vis)
    np.testing.assert_array_equal(pts, np.broadcast_to(kp, lead + kp.shape))  # input untouched


def test_flip_keypoints_twice_is_identity_and_checks_k():
    flip = FlipKeypoints("lateral5")
    rng = np.random.default_rng(0)
    kp = rng.uniform(0, 50, size=(4, 5, 2))
    np.testing.assert_allclose(flip(flip(kp, 51), 51), kp, atol=1e-12)
    with pytest.raises(ValueError, match="permutation"):
        flip(kp[:, :4], 51)
    with pytest.raises(ValueError, match="width"):
        flip(kp)


@pytest.mark.parametrize(
    "box, width, expected", [((1, 2, 4, 6), 10, (5, 2, 8, 6)), ((-0.5, 0, 9.5, 3), 10, (-0.5, 0, 9.5, 3))]
)
def test_flip_box_hand_computed(box, width, expected):
    np.testing.assert_allclose(flip_box_px(np.array(box, float), width), expected)


def _lateral_sample(n: int = 2, h: int = 6, w: int = 10) -> dict:
    kp = np.stack([LAT_KP + [0.0, i] for i in range(n)])
    vis = np.ones((n, 5), dtype=bool)
    vis[:, 2] = False  # AI unseen
    return {"image": _unique_image(h, w), "keypoints_px": kp, "visible": vis, "scheme": "lateral5",
            "spacing_mm": np.array([0.1, 0.1])}


def test_flipd_moves_image_and_points_together():
    d = _lateral_sample()
    out = FlipKeypointsd()(d)
    np.testing.assert_array_equal(out["image"], d["image"][..., ::-1])
    np.testing.assert_allclose(out["keypoints_px"][0], LAT_FLIPPED)
    # the unseen AI became the unseen PI
    np.testing.assert_array_equal(out["visible"][:, 3], False)
    np.testing.assert_array_equal(out["visible"][:, 2], True)
    # pixel under original AS is under flipped PS
    x, y = d["keypoints_px"][1, 0].astype(int)
    xf, yf = out["keypoints_px"][1, 1].astype(int)
    assert out["image"][0, yf, xf] == d["image"][0, y, x]
    np.testing.assert_array_equal(out["spacing_mm"], d["spacing_mm"])


def test_flipd_twice_is_identity_and_inverse_restores():
    d = _lateral_sample()
    f = FlipKeypointsd()
    twice = f(f(d))
    for k in ("image", "keypoints_px", "visible"):
        np.testing.assert_array_equal(twice[k], d[k])
    once = f(d)
    back = f.inverse(once)
    for k in ("image", "keypoints_px", "visible"):
        np.testing.assert_array_equal(back[k], d[k])
    assert back["keypoints_px_transforms"] == []  # the recorded entry was consumed


def test_rand_flipd_inverse_restores_exactly_for_both_outcomes():
    rng = np.random.default_rng(5)
    d = _lateral_sample()
    d["keypoints_px"] = rng.uniform(0, 9, size=(2, 5, 2))
    t = RandFlipKeypointsd(prob=0.5).set_random_state(0)
    seen = set()
    for _ in range(12):
        out = t(d)
        flipped = not np.array_equal(out["image"], d["image"])
        seen.add(flipped)
        # one draw for all keys: points flipped exactly when the image is
        assert flipped == (not np.allclose(out["keypoints_px"], d["keypoints_px"]))
        back = t.inverse(out)
        np.testing.assert_array_equal(back["image"], d["image"])
        np.testing.assert_allclose(back["keypoints_px"], d["keypoints_px"], rtol=0, atol=1e-12)
        np.testing.assert_array_equal(back["visible"], d["visible"])
    assert seen == {True, False}


def test_rand_flipd_metatensor_affine_and_compose_inverse():
    aff = torch.tensor([[0.5, 0.0, 3.0], [0.0, 0.2, -1.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    img = MetaTensor(torch.as_tensor(_unique_image(6, 10)), affine=aff)
    d = {"image": img, "keypoints_px": torch.as_tensor(LAT_KP), "visible": torch.ones(5, dtype=torch.bool),
         "box_px": torch.tensor([2.0, 0.0, 6.0, 3.0])}
    t = Compose([RandFlipKeypointsd(box_keys="box_px", prob=1.0, scheme="lateral5")])
    out = t(d)
    assert isinstance(out["image"], MetaTensor) and len(out["image"].applied_operations) == 1
    np.testing.assert_allclose(out["keypoints_px"].numpy(), LAT_FLIPPED)
    np.testing.assert_allclose(out["box_px"].numpy(), [3.0, 0.0, 7.0, 3.0])
    # world position of a pixel is unchanged by the flip: new index (row, 9 - col) -> same world point
    row, col = 2.0, 3.0
    world_before = aff @ torch.tensor([row, col, 1.0], dtype=torch.float64)
    world_after = out["image"].affine @ torch.tensor([row, 9.0 - col, 1.0], dtype=torch.float64)
    np.testing.assert_allclose(world_after.numpy(), world_before.numpy())
    back = t.inverse(out)
    np.testing.assert_array_equal(back["image"].numpy(), img.numpy())
    np.testing.assert_allclose(back["image"].affine.numpy(), aff.numpy())
    np.testing.assert_allclose(back["keypoints_px"].numpy(), LAT_KP)
    np.testing.assert_allclose(back["box_px"].numpy(), [2.0, 0.0, 6.0, 3.0])
    assert len(back["image"].applied_operations) == 0


@pytest.mark.parametrize(
    "kwargs, sample_update, error",
    [
        ({}, {"scheme": None}, ValueError),  # no scheme anywhere
        ({"scheme": "ap4"}, {}, ValueError),  # conflicts with the sample's lateral5
        ({}, {"scheme": "ap4"}, ValueError),  # K = 5 points but ap4 has 4
        ({}, {"visible": None}, KeyError),  # missing key without allow_missing_keys
        ({"scheme": "nope"}, {}, KeyError),  # unknown scheme name
    ],
)
def test_flipd_errors(kwargs, sample_update, error):
    d = _lateral_sample()
    for k, v in sample_update.items():
        if v is None:
            d.pop(k)
        else:
            d[k] = v
    with pytest.raises(error):
        FlipKeypointsd(**kwargs)(d)


def test_flipd_allow_missing_keys_and_width_without_image():
    d = _lateral_sample()
    del d["visible"]
    out = FlipKeypointsd(allow_missing_keys=True)(d)
    np.testing.assert_allclose(out["keypoints_px"][0], LAT_FLIPPED)
    del d["image"]
    out = FlipKeypointsd(width_px=10, allow_missing_keys=True)(d)
    np.testing.assert_allclose(out["keypoints_px"][0], LAT_FLIPPED)


# ----------------------------------------------------------------------------------------------
# vertebra crop: geometry by hand
# ----------------------------------------------------------------------------------------------

SQUARE_KP = np.array([[20.0, 30.0], [40.0, 30.0], [20.0, 50.0], [40.0, 50.0], [30.0, 40.0]])


@pytest.mark.parametrize(
    "spacing, margin_mm, margin_frac, margin_px, box, source",
    [
        ((0.2, 0.2), 2.0, 0.0, (10.0, 10.0), (10.0, 20.0, 50.0, 60.0), "mm"),  # 2 mm / 0.2 mm = 10 px
        ((0.2, 0.4), 2.0, 0.0, (10.0, 5.0), (10.0, 25.0, 50.0, 55.0), "mm"),  # per-axis spacing
        ((0.1, 0.1), 2.0, 0.0, (20.0, 20.0), (0.0, 10.0, 60.0, 70.0), "mm"),  # finer pixels, more px
        ((np.nan, np.nan), 2.0, 0.25, (5.0, 5.0), (15.0, 25.0, 45.0, 55.0), "frac"),  # 0.25 * 20 px
        (None, 2.0, 0.25, (5.0, 5.0), (15.0, 25.0, 45.0, 55.0), "frac"),
        ((0.0, 0.0), 2.0, 0.1, (2.0, 2.0), (18.0, 28.0, 42.0, 52.0), "frac"),  # zero spacing = unknown
    ],
)
def test_crop_margin_hand_computed(spacing, margin_mm, margin_frac, margin_px, box, source):
    crop = VertebraCrop(spatial_size=(40, 40), margin_mm=margin_mm, margin_frac=margin_frac, keep_aspect=False)
    g = crop.geometry(SQUARE_KP, spacing_mm=None if spacing is None else np.array(spacing))
    np.testing.assert_allclose(g["crop_margin_px"], margin_px)
    np.testing.assert_allclose(g["crop_box_px"], box)
    assert g["crop_margin_source"] == source
    bw, bh = box[2] - box[0], box[3] - box[1]
    if source == "mm":
        np.testing.assert_allclose(g["crop_spacing_mm"], [spacing[0] * bw / 40, spacing[1] * bh / 40])
    else:
        assert np.all(np.isnan(g["crop_spacing_mm"]))
    # crop_to_image: x = x0 + (u + 0.5) * bw / W
    np.testing.assert_allclose(
        g["crop_to_image"], [[bw / 40, 0, box[0] + 0.5 * bw / 40], [0, bh / 40, box[1] + 0.5 * bh / 40], [0, 0, 1]]
    )


def test_crop_affine_and_fractions_hand_computed():
    crop = VertebraCrop(spatial_size=(40, 40), margin_mm=2.0, keep_aspect=False)
    g = crop.geometry(SQUARE_KP, spacing_mm=(0.2, 0.2))
    np.testing.assert_allclose(g["crop_to_image"], [[1, 0, 10.5], [0, 1, 20.5], [0, 0, 1]])
    # AS at (20, 30) is 10 px right of the box edge x0 = 10: crop pixel 9.5, fraction 10 / 40
    np.testing.assert_allclose(g["keypoints_crop_px"][0], [9.5, 9.5])
    np.testing.assert_allclose(g["keypoints_frac"][0], [0.25, 0.25])
    np.testing.assert_allclose(g["keypoints_frac"][3], [0.75, 0.75])


@pytest.mark.parametrize(
    "spacing, expected_box",
    [
        ((0.5, 0.5), (-5.0, 0.0, 15.0, 10.0)),  # square pixels: box becomes twice as wide as high
        ((0.1, 0.2), (-15.0, 0.0, 25.0, 10.0)),  # 1 mm x 2 mm box: 4 mm x 2 mm, i.e. 40 px x 10 px
        ((np.nan, np.nan), (-5.0, 0.0, 15.0, 10.0)),  # unknown: square pixels assumed
        ((0.2, 0.05), (0.0, -5.0, 10.0, 15.0)),  # 2 mm x 0.5 mm box: height grows to 1 mm = 20 px
    ],
)
def test_keep_aspect_hand_computed(spacing, expected_box):
    crop = VertebraCrop(spatial_size=(224, 448), margin_mm=0.0, margin_frac=0.0, keep_aspect=True)
    g = crop.geometry(box_px=np.array([0.0, 0.0, 10.0, 10.0]), spacing_mm=np.array(spacing))
    np.testing.assert_allclose(g["crop_box_px"], expected_box)
    if np.all(np.isfinite(spacing)):
        sx, sy = g["crop_spacing_mm"]
        assert sx == pytest.approx(sy)  # isotropic output pixels


def test_box_sources_visible_points_and_precedence():
    crop = VertebraCrop(spatial_size=(10, 10), margin_mm=0.0, margin_frac=0.0, keep_aspect=False)
    kp = np.vstack([SQUARE_KP[:4], [[1000.0, 1000.0]]])
    vis = np.array([True, True, True, True, False])
    # the unseen outlier does not widen the box; neither does a NaN point
    np.testing.assert_allclose(crop.geometry(kp, vis)["crop_box_px"], [20, 30, 40, 50])
    kp_nan = kp.copy()
    kp_nan[4] = np.nan
    np.testing.assert_allclose(crop.geometry(kp_nan)["crop_box_px"], [20, 30, 40, 50])
    # a detected box wins over the keypoints; a NaN box falls back to them
    np.testing.assert_allclose(crop.geometry(kp, vis, box_px=[0, 1, 5, 6])["crop_box_px"], [0, 1, 5, 6])
    np.testing.assert_allclose(crop.geometry(kp, vis, box_px=np.full(4, np.nan))["crop_box_px"], [20, 30, 40, 50])
    # a single point still gives a 1 px box about it
    np.testing.assert_allclose(crop.geometry(kp[:1])["crop_box_px"], [19.5, 29.5, 20.5, 30.5])
    with pytest.raises(ValueError, match="no visible"):
        crop.geometry(kp, np.zeros(5, bool))
    with pytest.raises(ValueError, match="neither"):
        crop.geometry(None)
    with pytest.raises(ValueError, match="spacing"):
        crop.geometry(kp, spacing_mm=[0.1, 0.1, 0.1])


# ----------------------------------------------------------------------------------------------
# vertebra crop: pixels and round trips
# ----------------------------------------------------------------------------------------------


def _smooth_image(h: int = 96, w: int = 120) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    return (np.sin(xx / 7.0) * np.cos(yy / 9.0) + 0.01 * xx)[None].astype(np.float32)


def _sample(spacing=(0.25, 0.25)) -> dict:
    kp = np.array([[40.3, 30.7], [70.2, 33.1], [41.6, 60.4], [71.9, 62.2], [90.5, 50.0]])
    return {"image": _smooth_image(), "keypoints_px": kp, "visible": np.ones(5, bool),
            "spacing_mm": np.array(spacing), "scheme": "lateral5"}


def test_crop_pixels_match_interpolated_image():
    d = _sample()
    out = VertebraCropd(spatial_size=(32, 64), margin_mm=3.0)(d)
    crop, a = out["image"], out["crop_to_image"]
    assert crop.shape == (1, 32, 64) and crop.dtype == np.float32
    # crop pixels next to each keypoint equal the bilinear value of the image where they map to
    uv = np.rint(out["keypoints_crop_px"])
    xy = crop_to_image_px(uv, a)
    expected = ndimage.map_coordinates(d["image"][0].astype(np.float64), [xy[:, 1], xy[:, 0]], order=1)
    got = crop[0, uv[:, 1].astype(int), uv[:, 0].astype(int)]
    # cv2 bilinear weights have 1/32 px resolution; the image changes at most ~0.16 per px
    np.testing.assert_allclose(got, expected, atol=0.01)


def test_crop_keeps_a_linear_image_at_keypoints():
    d = _sample()
    yy, xx = np.mgrid[0:96, 0:120].astype(np.float32)
    d["image"] = (0.5 * xx - 0.25 * yy + 3.0)[None]
    out = VertebraCropd(spatial_size=(24, 48), margin_mm=2.0)(d)
    kc = out["keypoints_crop_px"]
    at_crop = ndimage.map_coordinates(out["image"][0].astype(np.float64), [kc[:, 1], kc[:, 0]], order=1)
    kp = d["keypoints_px"]
    np.testing.assert_allclose(at_crop, 0.5 * kp[:, 0] - 0.25 * kp[:, 1] + 3.0, atol=0.02)


def test_crop_blob_lands_on_the_mapped_keypoint():
    h, w = 96, 120
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    kp = _sample()["keypoints_px"]
    blob_at = kp[4]
    img = np.exp(-((xx - blob_at[0]) ** 2 + (yy - blob_at[1]) ** 2) / (2 * 2.5**2))[None].astype(np.float32)
    out = VertebraCropd(spatial_size=(64, 128), margin_mm=4.0)({"image": img, "keypoints_px": kp,
                                                                "spacing_mm": np.array([0.25, 0.25])})
    cy, cx = ndimage.center_of_mass(out["image"][0].astype(np.float64))
    np.testing.assert_allclose([cx, cy], out["keypoints_crop_px"][4], atol=0.05)


@pytest.mark.parametrize("spacing", [(0.25, 0.25), (0.1, 0.3), (np.nan, np.nan)])
@pytest.mark.parametrize("keep_aspect", [True, False])
def test_crop_frac_image_round_trip(spacing, keep_aspect):
    d = _sample(spacing)
    t = RandVertebraCropd(spatial_size=(224, 448), keep_aspect=keep_aspect, rand_pad_mm=(0, 3), rand_pad_frac=(0, 0.2))
    out = t.set_random_state(7)(d)
    back_frac = frac_to_image_px(out["keypoints_frac"], out["crop_to_image"], (224, 448))
    back_crop = crop_to_image_px(out["keypoints_crop_px"], out["crop_to_image"])
    np.testing.assert_allclose(back_frac, d["keypoints_px"], atol=1e-3)
    np.testing.assert_allclose(back_crop, d["keypoints_px"], atol=1e-3)
    np.testing.assert_allclose(image_to_crop_px(d["keypoints_px"], out["crop_to_image"]), out["keypoints_crop_px"])
    inv = t.inverse({**out, "keypoints_px": None})
    np.testing.assert_allclose(inv["keypoints_px"], d["keypoints_px"], atol=1e-3)


def test_batched_torch_predictions_map_back():
    d1, d2 = _sample((0.25, 0.25)), _sample((np.nan, np.nan))
    t = VertebraCropd(spatial_size=(32, 64))
    o1, o2 = t(d1), t(d2)
    frac = torch.as_tensor(np.stack([o1["keypoints_frac"], o2["keypoints_frac"]]), dtype=torch.float32)
    a = torch.as_tensor(np.stack([o1["crop_to_image"], o2["crop_to_image"]]))
    back = frac_to_image_px(frac, a, (32, 64))
    assert isinstance(back, torch.Tensor) and back.dtype == torch.float32 and back.shape == (2, 5, 2)
    np.testing.assert_allclose(back.numpy(), np.stack([d1["keypoints_px"], d2["keypoints_px"]]), atol=1e-3)


def test_random_padding_is_shared_and_hand_computed():
    d = _sample((0.2, 0.2))
    d["image2"] = d["image"].copy()
    # fixed 1 mm extra on every side = 5 px at 0.2 mm
    fixed = RandVertebraCropd(keys=["image", "image2"], spatial_size=(20, 20), margin_mm=0.0, rand_pad_mm=(1.0, 1.0),
                              keep_aspect=False)(d)
    kp = d["keypoints_px"]
    np.testing.assert_allclose(fixed["crop_box_px"], [kp[:, 0].min() - 5, kp[:, 1].min() - 5,
                                                      kp[:, 0].max() + 5, kp[:, 1].max() + 5])
    np.testing.assert_array_equal(fixed["image"], fixed["image2"])
    t = RandVertebraCropd(keys=["image", "image2"], spatial_size=(20, 20), margin_mm=0.0, rand_pad_mm=(0.0, 3.0),
                          keep_aspect=False).set_random_state(1)
    boxes = []
    for _ in range(5):
        out = t(d)
        np.testing.assert_array_equal(out["image"], out["image2"])
        inner = np.array([kp[:, 0].min(), kp[:, 1].min(), -kp[:, 0].max(), -kp[:, 1].max()])
        pad = inner - out["crop_box_px"] * [1, 1, -1, -1]  # extra px per side (left, top, right, bottom)
        assert np.all(pad >= 0) and np.all(pad <= 15 + 1e-9)
        boxes.append(out["crop_box_px"])
    assert len({tuple(b) for b in boxes}) == 5
    again = RandVertebraCropd(keys=["image", "image2"], spatial_size=(20, 20), margin_mm=0.0, rand_pad_mm=(0.0, 3.0),
                              keep_aspect=False).set_random_state(1)(d)
    np.testing.assert_array_equal(again["crop_box_px"], boxes[0])
    # prob = 0: no padding
    off = RandVertebraCropd(spatial_size=(20, 20), margin_mm=0.0, rand_pad_mm=(1.0, 1.0), prob=0.0, keep_aspect=False)(d)
    np.testing.assert_allclose(off["crop_box_px"], [kp[:, 0].min(), kp[:, 1].min(), kp[:, 0].max(), kp[:, 1].max()])


def test_only_the_rand_crop_is_random():
    # issue 17: a random crop is named Rand...; VertebraCropd draws nothing and takes no random padding
    from monai.transforms import Randomizable

    assert isinstance(RandVertebraCropd(), Randomizable) and not isinstance(VertebraCropd(), Randomizable)
    with pytest.raises(TypeError):
        VertebraCropd(rand_pad_mm=(0.0, 1.0))


def test_crop_types_metatensor_and_inverse_sources():
    d = _sample((0.25, 0.25))
    aff = torch.tensor([[0.25, 0.0, 10.0], [0.0, 0.25, 20.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    d["image"] = MetaTensor(torch.as_tensor(d["image"]), affine=aff)
    d["keypoints_px"] = torch.as_tensor(d["keypoints_px"], dtype=torch.float32)
    t = VertebraCropd(spatial_size=(16, 32))
    out = t(d)
    assert isinstance(out["image"], MetaTensor) and out["image"].shape == (1, 16, 32)
    assert isinstance(out["keypoints_frac"], torch.Tensor) and out["keypoints_frac"].dtype == torch.float32
    # crop index (row, col) maps to the same world point as the image pixel it samples
    a = out["crop_to_image"]
    x, y = crop_to_image_px(np.array([3.0, 5.0]), a)
    w_crop = out["image"].affine @ torch.tensor([5.0, 3.0, 1.0], dtype=torch.float64)
    w_img = aff @ torch.tensor([y, x, 1.0], dtype=torch.float64)
    np.testing.assert_allclose(w_crop.numpy(), w_img.numpy(), atol=1e-9)
    # inverse: from fractions (e.g. predictions), else from crop pixels
    inv = t.inverse({k: v for k, v in out.items() if k != "keypoints_frac"})
    np.testing.assert_allclose(np.asarray(inv["keypoints_px"]), d["keypoints_px"].numpy(), atol=1e-3)
    with pytest.raises(KeyError):
        t.inverse({"image": out["image"]})


def test_crop_with_box_only_and_missing_image_key():
    d = {"image": _smooth_image(), "box_px": np.array([30.0, 20.0, 80.0, 70.0]), "spacing_mm": np.array([np.nan] * 2)}
    out = VertebraCropd(spatial_size=(16, 32), margin_frac=0.1)(d)
    assert "keypoints_frac" not in out and out["crop_margin_source"] == "frac"
    np.testing.assert_allclose(out["crop_margin_px"], [5.0, 5.0])
    with pytest.raises(KeyError):
        VertebraCropd(keys=["image", "label"])(d)
    assert VertebraCropd(keys=["image", "label"], allow_missing_keys=True)(d)["image"].shape == (1, 224, 448)


def test_bundle_config_instantiates_keypoint_transforms():
    parser = ConfigParser({
        "crop": {"_target_": "monai_spine.transforms.RandVertebraCropd", "keys": ["image"], "spatial_size": [24, 48],
                 "margin_mm": 2.0, "rand_pad_mm": [0.0, 2.0], "prob": 0.5},
        "flip": {"_target_": "monai_spine.transforms.RandFlipKeypointsd", "keys": ["image"], "keypoint_keys": ["keypoints_px"],
                 "visible_keys": ["visible"], "prob": 0.5},
        "norm": {"_target_": "monai_spine.transforms.NormalizeKeypointsd", "keys": ["keypoints_px"],
                 "output_keys": ["kp_frac"]},
    })
    crop, flip, norm = (parser.get_parsed_content(k) for k in ("crop", "flip", "norm"))
    assert crop.spatial_size == (24, 48) and crop.rand_pad_mm == (0.0, 2.0)
    d = _sample()
    out = crop(norm(flip(d)))
    assert out["image"].shape == (1, 24, 48) and out["kp_frac"].shape == (5, 2)


# ----------------------------------------------------------------------------------------------
# pixels <-> fractions
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "px, spatial_size, frac",
    [
        ([0.0, 0.0], (20, 10), [0.05, 0.025]),  # H = 20, W = 10
        ([9.0, 19.0], (20, 10), [0.95, 0.975]),
        ([-0.5, -0.5], (20, 10), [0.0, 0.0]),  # top-left edge
        ([447.5, 223.5], (224, 448), [1.0, 1.0]),  # bottom-right edge
    ],
)
def test_normalize_hand_computed(px, spatial_size, frac):
    np.testing.assert_allclose(NormalizeKeypoints(spatial_size)(np.array(px)), frac)
    np.testing.assert_allclose(DenormalizeKeypoints(spatial_size)(np.array(frac)), px, atol=1e-12)


@pytest.mark.parametrize("as_tensor", [False, True])
@pytest.mark.parametrize("size_from", ["fixed", "key", "image"])
def test_normalize_dict_round_trip(as_tensor, size_from):
    rng = np.random.default_rng(2)
    kp = rng.uniform(-0.5, 30, size=(3, 5, 2)).astype(np.float32)
    d = {"image": np.zeros((1, 40, 32), np.float32), "size": np.array([40, 32]),
         "keypoints_px": torch.as_tensor(kp) if as_tensor else kp}
    kwargs = {"fixed": {"spatial_size": (40, 32)}, "key": {"spatial_size_key": "size", "image_key": None},
              "image": {}}[size_from]
    out = NormalizeKeypointsd(output_keys="kp_frac", **kwargs)(d)
    frac = out["kp_frac"]
    assert type(frac) is type(d["keypoints_px"]) and frac.dtype == d["keypoints_px"].dtype
    np.testing.assert_allclose(np.asarray(frac)[0, 0], (kp[0, 0] + 0.5) / [32, 40], rtol=1e-6)
    back = DenormalizeKeypointsd(keys="kp_frac", output_keys="kp_back", **kwargs)(out)
    np.testing.assert_allclose(np.asarray(back["kp_back"]), kp, atol=1e-4)
    np.testing.assert_array_equal(np.asarray(back["keypoints_px"]), kp)  # the input key is untouched


def test_normalize_errors():
    with pytest.raises(KeyError):
        NormalizeKeypointsd(image_key=None)({"keypoints_px": np.zeros((5, 2))})
    with pytest.raises(ValueError):
        NormalizeKeypointsd(keys=["a", "b"], output_keys=["c"])
    with pytest.raises(ValueError):
        NormalizeKeypoints((10, 10))(np.zeros((5, 3)))


def test_flip_keypointsd_flips_points_with_the_array_transform(monkeypatch):
    # FlipKeypointsd wraps FlipKeypoints (issue 17): the dictionary flip goes through the array class
    calls = []
    orig = FlipKeypoints.__call__

    def spy(self, keypoints_px, width_px=None, visible=None):
        calls.append((self.width_px, None if self.perm is None else list(self.perm)))
        return orig(self, keypoints_px, width_px, visible)

    monkeypatch.setattr(FlipKeypoints, "__call__", spy)
    # ap4 TL, TR, BL, BR; W = 10: x' = 9 - x, and TL<->TR, BL<->BR swap places
    kp = np.array([[2.0, 3.0], [4.0, 3.0], [2.0, 5.0], [4.0, 5.0]], dtype=np.float32)
    out = FlipKeypointsd(keys="image", keypoint_keys="keypoints_px", visible_keys=(), scheme="ap4")(
        {"image": np.zeros((1, 8, 10), np.float32), "keypoints_px": kp})
    assert calls == [(10, [1, 0, 3, 2])]
    np.testing.assert_allclose(out["keypoints_px"], [[5.0, 3.0], [7.0, 3.0], [5.0, 5.0], [7.0, 5.0]])
