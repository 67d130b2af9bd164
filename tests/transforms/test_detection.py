"""Letterbox resize (net <-> image affine), random zoom/shift/flip and centre-heatmap targets."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from monai_spine.transforms.detection import (
    CentreHeatmapTarget,
    CentreHeatmapTargetd,
    LetterboxResize,
    LetterboxResized,
    RandLetterboxResized,
    augment_affine,
    boxes_through_affine,
    boxes_to_image_px,
    boxes_to_net_px,
    letterbox_affine,
    net_key,
    net_spacing_mm,
    points_to_image_px,
    points_to_net_px,
    resample_to_net,
)

# ---------------------------------------------------------------------------------------------- geometry


@pytest.mark.parametrize(
    "size_wh, net_hw, spacing, expected",
    [
        # 200 x 100 px into 64 x 64: 3.125 image px per net px, x0 = 99.5 - 3.125 * 31.5, y0 = 49.5 - 98.4375
        ((200, 100), (64, 64), None, [[3.125, 0, 1.0625], [0, 3.125, -48.9375], [0, 0, 1]]),
        # portrait 100 x 200 into 32 (H) x 64 (W): limited by the height, 6.25 px per net px
        ((100, 200), (32, 64), None, [[6.25, 0, 49.5 - 6.25 * 31.5], [0, 6.25, 99.5 - 6.25 * 15.5], [0, 0, 1]]),
        # 100 x 100 px of 0.2 x 0.1 mm = 20 x 10 mm into 64 x 64: 0.3125 mm per net px both ways
        ((100, 100), (64, 64), (0.2, 0.1),
         [[1.5625, 0, 49.5 - 1.5625 * 31.5], [0, 3.125, 49.5 - 3.125 * 31.5], [0, 0, 1]]),
        # unknown (NaN) spacing: square image pixels
        ((100, 100), (64, 64), (np.nan, np.nan),
         [[1.5625, 0, 49.5 - 1.5625 * 31.5], [0, 1.5625, 49.5 - 1.5625 * 31.5], [0, 0, 1]]),
    ],
)
def test_letterbox_affine_hand_computed(size_wh, net_hw, spacing, expected):
    np.testing.assert_allclose(letterbox_affine(size_wh, net_hw, spacing), expected, atol=1e-12)


def test_letterbox_puts_the_image_edges_on_the_padded_frame():
    a = letterbox_affine((200, 100), (64, 64))
    # the image's outer pixel edges land on the net frame (x) and 16 rows inside it (y, padding)
    edges = points_to_net_px(np.array([[-0.5, -0.5], [199.5, 99.5]]), a)
    np.testing.assert_allclose(edges, [[-0.5, 15.5], [63.5, 47.5]])
    np.testing.assert_allclose(net_spacing_mm(a, (0.1, 0.1)), [0.3125, 0.3125])
    assert np.all(np.isnan(net_spacing_mm(a, None)))


def test_anisotropic_spacing_gives_square_millimetre_net_pixels():
    a = letterbox_affine((100, 100), (64, 64), (0.2, 0.1))
    np.testing.assert_allclose(net_spacing_mm(a, (0.2, 0.1)), [0.3125, 0.3125])
    # without keep_mm_aspect pixels are treated as square
    b = letterbox_affine((100, 100), (64, 64), (0.2, 0.1), keep_mm_aspect=False)
    np.testing.assert_allclose(b[0, 0], b[1, 1])


@pytest.mark.parametrize(
    "zoom, shift, flip",
    [(1.0, (0.0, 0.0), False), (2.0, (0.0, 0.0), False), (1.25, (3.0, -5.0), False), (1.0, (0.0, 0.0), True),
     (0.8, (2.0, 1.0), True)],
)
def test_augment_affine_moves_content_as_documented(zoom, shift, flip):
    size = (32, 64)  # H, W
    c = np.array([31.5, 15.5])
    p = np.array([[10.0, 4.0], [31.5, 15.5], [50.0, 30.0]])  # letterbox positions of features
    d = p - c
    q = c + zoom * np.stack([-d[:, 0] if flip else d[:, 0], d[:, 1]], -1) + np.asarray(shift)  # where they appear
    m = augment_affine(size, zoom, shift, flip)
    np.testing.assert_allclose(q @ m[:2, :2].T + m[:2, 2], p, atol=1e-12)


def test_boxes_through_a_flip_stay_ordered_and_nan_stays_nan():
    flip = augment_affine((64, 64), flip=True)  # u -> 63 - u
    out = boxes_through_affine(np.array([[10.0, 20.0, 30.0, 40.0], [np.nan] * 4]), flip)
    np.testing.assert_allclose(out[0], [33.0, 20.0, 53.0, 40.0])
    assert np.all(np.isnan(out[1]))


def test_points_and_boxes_round_trip_net_image():
    a = letterbox_affine((300, 500), (64, 48), (0.15, 0.16)) @ augment_affine((64, 48), 1.1, (2.0, -3.0), True)
    pts = np.array([[12.0, 300.0], [250.5, 7.25]])
    np.testing.assert_allclose(points_to_image_px(points_to_net_px(pts, a), a), pts, atol=1e-9)
    boxes = np.array([[10.0, 20.0, 60.0, 80.0]])
    np.testing.assert_allclose(boxes_to_image_px(boxes_to_net_px(boxes, a), a), boxes, atol=1e-9)


def _blob(h: int, w: int, x: float, y: float, sigma: float = 6.0) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma**2)).astype(np.float32)[None]


def test_resample_places_image_content_at_the_mapped_net_position():
    img = _blob(120, 200, 140.0, 30.0)
    a = letterbox_affine((200, 120), (64, 64))
    net = resample_to_net(img, a, (64, 64), cval=-1.0)
    assert net.shape == (1, 64, 64) and net.dtype == np.float32
    yx = np.unravel_index(np.argmax(net[0]), net[0].shape)
    expected = points_to_net_px(np.array([140.0, 30.0]), a)
    assert abs(yx[1] - expected[0]) <= 0.5 and abs(yx[0] - expected[1]) <= 0.5
    # rows outside the image are padding (120 px tall -> rows 0..12 and 51..63 of 64 lie outside)
    assert np.all(net[0, :12] == -1.0) and np.all(net[0, 52:] == -1.0)


def test_antialiasing_suppresses_pixel_noise():
    rng = np.random.default_rng(0)
    img = rng.normal(0.0, 1.0, (1, 256, 256)).astype(np.float32)
    a = letterbox_affine((256, 256), (64, 64))
    blurred = resample_to_net(img, a, (64, 64), antialias=True)
    assert blurred.std() < 0.5 * resample_to_net(img, a, (64, 64), antialias=False).std()


def test_letterbox_resize_array_transform_accepts_tensors():
    out, a = LetterboxResize((32, 32))(torch.ones(1, 50, 100), spacing_mm=(0.5, 0.5))
    assert isinstance(out, np.ndarray) and out.shape == (1, 32, 32)
    np.testing.assert_allclose(a, letterbox_affine((100, 50), (32, 32)))
    with pytest.raises(ValueError, match="C, H, W"):
        LetterboxResize((32, 32))(np.ones((50, 100)))


# ---------------------------------------------------------------------------------------------- dictionary transforms


def _sample() -> dict:
    img = _blob(120, 200, 140.0, 30.0)
    return {
        "image": img,
        "spacing_mm": np.array([0.2, 0.2], dtype=np.float32),
        "centres_px": np.array([[140.0, 30.0], [np.nan, np.nan]], dtype=np.float32),
        "boxes_px": np.array([[130.0, 20.0, 150.0, 40.0], [np.nan] * 4], dtype=np.float32),
    }


@pytest.mark.parametrize(
    "key, expected", [("centres_px", "centres_net_px"), ("boxes_px", "boxes_net_px"), ("pred", "pred_net")]
)
def test_net_key_names(key, expected):
    assert net_key(key) == expected


def test_letterbox_resized_maps_centres_boxes_and_inverts():
    t = LetterboxResized("image", (64, 64))
    d = t(_sample())
    a = letterbox_affine((200, 120), (64, 64), (0.2, 0.2))
    np.testing.assert_allclose(d["det_to_image"], a)
    np.testing.assert_allclose(d["centres_net_px"][0], points_to_net_px(np.array([140.0, 30.0]), a), atol=1e-5)
    assert np.all(np.isnan(d["centres_net_px"][1])) and np.all(np.isnan(d["boxes_net_px"][1]))
    np.testing.assert_allclose(d["det_spacing_mm"], [0.2 * 200 / 64] * 2, rtol=1e-6)
    assert d["image"].shape == (1, 64, 64)
    # inverse: predictions in net pixels go back to image pixels
    back = t.inverse({k: d[k] for k in ("det_to_image", "centres_net_px", "boxes_net_px")})
    np.testing.assert_allclose(back["centres_px"][0], [140.0, 30.0], atol=1e-4)
    np.testing.assert_allclose(back["boxes_px"][0], [130.0, 20.0, 150.0, 40.0], atol=1e-4)
    with pytest.raises(KeyError, match="det_to_image"):
        t.inverse({"centres_net_px": d["centres_net_px"]})


def test_letterbox_resized_allow_missing_keys():
    t = LetterboxResized(["image", "other"], (32, 32), allow_missing_keys=True)
    assert t(_sample())["image"].shape == (1, 32, 32)
    with pytest.raises(KeyError):
        LetterboxResized(["image", "other"], (32, 32))(_sample())


def test_rand_letterbox_without_randomness_equals_the_plain_one():
    d0 = LetterboxResized("image", (64, 64))(_sample())
    d1 = RandLetterboxResized("image", (64, 64), prob=0.0, flip_prob=0.0).set_random_state(0)(_sample())
    np.testing.assert_allclose(d1["image"], d0["image"])
    np.testing.assert_allclose(d1["det_to_image"], d0["det_to_image"])


def test_rand_letterbox_flip_mirrors_the_image_exactly():
    d0 = LetterboxResized("image", (64, 64))(_sample())
    d1 = RandLetterboxResized("image", (64, 64), prob=0.0, flip_prob=1.0).set_random_state(0)(_sample())
    np.testing.assert_allclose(d1["image"], d0["image"][:, :, ::-1], atol=1e-6)
    c0 = d0["centres_net_px"][0]
    np.testing.assert_allclose(d1["centres_net_px"][0], [63.0 - c0[0], c0[1]], atol=1e-4)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rand_letterbox_keeps_centres_on_the_content(seed):
    kwargs = {"zoom_range": (0.8, 1.3), "shift_frac": 0.15, "flip_prob": 0.5}
    t = RandLetterboxResized("image", (64, 64), **kwargs).set_random_state(seed)
    d = t(_sample())
    yx = np.unravel_index(np.argmax(d["image"][0]), (64, 64))
    c = d["centres_net_px"][0]
    assert abs(yx[1] - c[0]) <= 0.5 and abs(yx[0] - c[1]) <= 0.5
    b = d["boxes_net_px"][0]
    assert b[0] < c[0] < b[2] and b[1] < c[1] < b[3]
    # the same seed draws the same geometry
    d2 = RandLetterboxResized("image", (64, 64), **kwargs).set_random_state(seed)(_sample())
    np.testing.assert_allclose(d2["det_to_image"], d["det_to_image"])


def test_rand_letterbox_rejects_bad_ranges():
    with pytest.raises(ValueError, match="zoom_range"):
        RandLetterboxResized("image", zoom_range=(1.2, 0.8))
    with pytest.raises(ValueError, match="shift_frac"):
        RandLetterboxResized("image", shift_frac=1.5)


# ---------------------------------------------------------------------------------------------- targets


def test_target_peaks_at_the_centre_and_recovers_it_to_subpixel():
    t = CentreHeatmapTarget((32, 48), sigma_px=2.0, box_radius_px=1)
    centres = np.array([[10.3, 20.7], [np.nan, np.nan], [40.0, 5.0]])
    boxes = np.array([[5.0, 15.0, 15.0, 25.0], [np.nan] * 4, [36.0, 1.0, 46.0, 9.0]])
    y = t(centres, boxes)
    assert y.shape == (3 + 5, 32, 48) and y.dtype == np.float32
    # level 0: the nearest pixel (10, 21) is exactly 1, the maximum
    assert y[0, 21, 10] == 1.0 and y[0].max() == 1.0 and np.argmax(y[0]) == 21 * 48 + 10
    # hand-computed: at (12, 21), exp(-((1.7^2 + 0.3^2) - (0.3^2 + 0.3^2)) / 8) = exp(-0.35)
    assert y[0, 21, 12] == pytest.approx(np.exp(-0.35), rel=1e-6)
    # the log-map is a paraboloid with its vertex at the centre
    lm, l0, lp = np.log(y[0, 21, 9:12])
    assert 10 + 0.5 * (lm - lp) / (lm - 2 * l0 + lp) == pytest.approx(10.3, abs=1e-5)
    lm, l0, lp = np.log(y[0, 20:23, 10])
    assert 21 + 0.5 * (lm - lp) / (lm - 2 * l0 + lp) == pytest.approx(20.7, abs=1e-5)
    # an absent level is empty
    assert not y[1].any()
    # box distances (fractions of W, H, W, H) in the 3 x 3 window around the centre pixel, mask 1 there
    np.testing.assert_allclose(y[3:7, 21, 10], [5.3 / 48, 5.7 / 32, 4.7 / 48, 4.3 / 32], rtol=1e-5)
    np.testing.assert_allclose(y[3:7, 20, 11], y[3:7, 21, 10])
    assert y[7, 20:23, 9:12].sum() == 9 and y[7, 4:7, 39:42].sum() == 9 and y[7].sum() == 18
    np.testing.assert_allclose(y[3:7, 5, 40], [4 / 48, 4 / 32, 6 / 48, 4 / 32], rtol=1e-6)


@pytest.mark.parametrize(
    "centre, present, empty",
    [((10.0, 10.0), True, False), ((10.0, 10.0), False, True), ((-3.0, 10.0), True, True), ((10.0, 40.0), True, True),
     ((-0.4, 31.4), True, False)],
)
def test_target_leaves_absent_and_out_of_frame_levels_empty(centre, present, empty):
    y = CentreHeatmapTarget((32, 32))(np.array([centre]), None, np.array([present]))
    assert (not y[0].any()) == empty
    assert not y[1:].any()  # no boxes given: no box target and no mask


def test_target_rejects_bad_shapes():
    t = CentreHeatmapTarget((16, 16))
    with pytest.raises(ValueError, match="L, 2"):
        t(np.zeros((3, 3)))
    with pytest.raises(ValueError, match="boxes_net_px"):
        t(np.zeros((2, 2)), np.zeros((3, 4)))
    with pytest.raises(ValueError, match="sigma_px"):
        CentreHeatmapTarget((16, 16), sigma_px=0)


def test_target_dictionary_wrapper():
    d = {"centres_net_px": np.array([[5.0, 6.0], [8.0, 9.0]]),
         "boxes_net_px": np.array([[2, 3, 8, 9], [6, 7, 10, 11]], float), "present": np.array([True, False])}
    out = CentreHeatmapTargetd("centres_net_px", (16, 16), sigma_px=1.0)(d)
    assert out["label"].shape == (7, 16, 16)
    assert out["label"][0, 6, 5] == 1.0 and not out["label"][1].any()
    assert CentreHeatmapTargetd("missing", (16, 16), allow_missing_keys=True)(d).keys() == d.keys()
