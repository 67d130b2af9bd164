"""The detection codec: encode-then-decode round trips, hand-computed targets and chain filling."""

import math

import numpy as np
import pytest
import torch

from monai_spine.codecs.chain import complete_chain
from monai_spine.codecs.detection import (
    TARGET_EXTRA_CHANNELS,
    decode_detections,
    encode_centre_heatmaps,
    encode_chain_target,
    vertebra_centres_px,
)
from monai_spine.transforms.detection import letterbox_affine, points_to_image_px

#: how close a decoded centre or box edge must come to the encoded one (net pixels): the parabola fit
#: on the log of the encoder's Gaussian is exact, so only float32 rounding is left
TOL_PX = 0.01


def _boxes(centres, half_wh):
    c = np.asarray(centres, dtype=np.float64)
    return np.concatenate([c - half_wh, c + half_wh], -1)


#: at the frame's border the decoder does not refine (no neighbour on one side): the pixel itself
BORDER_TOL_PX = 0.5

# (method, (H, W), sigma_px, level centres (x, y) in net pixels, top to bottom, tolerance px)
ROUND_TRIPS = [
    ("argmax", (32, 24), 1.5, [[12.0, 6.0], [11.3, 15.7], [12.6, 25.2]], TOL_PX),
    ("sequence", (32, 24), 1.5, [[12.0, 6.0], [11.3, 15.7], [12.6, 25.2]], TOL_PX),
    ("sequence", (40, 40), 2.0, [[5.49, 4.51], [20.25, 19.75], [30.0, 33.1], [33.4, 37.6]], TOL_PX),
    ("argmax", (16, 48), 1.0, [[1.2, 7.9], [46.3, 8.4]], TOL_PX),  # one pixel in from the edges
    ("argmax", (16, 48), 1.0, [[0.2, 7.9], [47.3, 8.4]], BORDER_TOL_PX),  # nearest pixel on the border
    ("sequence", (40, 40), 2.0, [[5.0, 4.0], [33.4, 38.6]], BORDER_TOL_PX),
]


@pytest.mark.parametrize("method, size, sigma, centres, tol", ROUND_TRIPS)
def test_per_level_round_trip_recovers_centres_and_boxes(method, size, sigma, centres, tol):
    c = np.asarray(centres)
    boxes = _boxes(c, [3.0, 2.5])
    target = encode_centre_heatmaps(c, boxes, None, size, sigma, box_radius_px=1)
    n_lev = len(c)
    assert target.shape == (n_lev + TARGET_EXTRA_CHANNELS, *size)
    # the target's heatmaps are probabilities and its box channels fractions: the decoder's input
    dec = decode_detections(target[: n_lev + 4], score_threshold=0.5, apply_sigmoid=False, method=method)
    assert dec["detected"].all()
    np.testing.assert_allclose(dec["centres_net_px"], c, atol=tol)
    np.testing.assert_allclose(dec["boxes_net_px"], boxes, atol=tol)
    np.testing.assert_allclose(dec["scores"], 1.0)


# (sigma_px, level centres); profile: the even spacing of the centres
CHAIN_TRIPS = [
    (1.5, [[10.0, 5.0], [10.5, 13.0], [11.0, 21.0], [11.5, 29.0], [12.0, 37.0]]),
    (2.0, [[20.3, 6.2], [19.1, 18.7], [20.9, 31.4]]),
]


@pytest.mark.parametrize("sigma, centres", CHAIN_TRIPS)
def test_chain_round_trip_recovers_levels_and_centres(sigma, centres):
    c = np.asarray(centres)
    target = encode_chain_target(c, _boxes(c, [4.0, 3.0]), None, (44, 32), sigma, level_channel=False)
    assert target.shape == (1 + 5, 44, 32)
    profile = np.ones(len(c) - 1)
    dec = decode_detections(target[:5], score_threshold=0.5, apply_sigmoid=False, method="chain", profile=profile)
    assert dec["detected"].all()
    np.testing.assert_allclose(dec["centres_net_px"], c, atol=TOL_PX)
    np.testing.assert_allclose(dec["boxes_net_px"], _boxes(c, [4.0, 3.0]), atol=TOL_PX)


def test_hand_computed_target_and_decoding():
    # one level at (3.25, 2.0), sigma 1, net 5 x 7: nearest pixel (3, 2) is exactly 1; its row
    # neighbours are exp(-((x - 3.25)^2 - 0.25^2) / 2): exp(-0.75) at x = 2, exp(-0.25) at x = 4
    box = [[1.25, 0.5, 5.25, 3.0]]
    t = encode_centre_heatmaps([[3.25, 2.0]], box, None, (5, 7), sigma_px=1.0, box_radius_px=0)
    assert t[0, 2, 3] == 1.0
    assert t[0, 2, 2] == pytest.approx(math.exp(-0.75), rel=1e-6)
    assert t[0, 2, 4] == pytest.approx(math.exp(-0.25), rel=1e-6)
    assert t[0, 1, 3] == pytest.approx(math.exp(-0.5), rel=1e-6)  # y: (1 - 2)^2 / 2
    # box distances (left, top, right, bottom) in fractions of W = 7, H = 5, at the centre pixel only
    np.testing.assert_allclose(t[1:5, 2, 3], [2.0 / 7, 1.5 / 5, 2.0 / 7, 1.0 / 5], rtol=1e-6)
    assert t[5].sum() == 1.0 and t[5, 2, 3] == 1.0
    # parabola on the logs (-0.75, 0, -0.25): vertex at 0.5 * (-0.75 + 0.25) / (-0.75 - 0.25) = +0.25 px
    dec = decode_detections(t[:5], apply_sigmoid=False, method="argmax")
    np.testing.assert_allclose(dec["centres_net_px"], [[3.25, 2.0]], atol=1e-5)
    np.testing.assert_allclose(dec["boxes_net_px"], box, atol=1e-5)


@pytest.mark.parametrize(
    "centres, present, expected_levels",
    [
        # all present, top to bottom: level k / (L - 1) around each centre
        ([[5.0, 4.0], [5.0, 12.0], [5.0, 20.0]], None, [0.0, 0.5, 1.0]),
        # out of order (a mislabelled film): no level target at all
        ([[5.0, 12.0], [5.0, 4.0], [5.0, 20.0]], None, None),
        # the absent middle level: none there, the others keep their level
        ([[5.0, 4.0], [5.0, 12.0], [5.0, 20.0]], [True, False, True], [0.0, None, 1.0]),
    ],
)
def test_chain_target_level_channel(centres, present, expected_levels):
    t = encode_chain_target(centres, None, present, (24, 10), 1.0, box_radius_px=0, level_channel=True)
    assert t.shape == (2 + 5 + 1, 24, 10)
    level, mask = t[1], t[-1]
    for k, (x, y) in enumerate(centres):
        want = None if expected_levels is None else expected_levels[k]
        if want is None:
            assert mask[int(y), int(x)] == 0.0
        else:
            assert mask[int(y), int(x)] == 1.0 and level[int(y), int(x)] == pytest.approx(want)
    assert mask.sum() == (0 if expected_levels is None else sum(v is not None for v in expected_levels))


@pytest.mark.parametrize(
    "centres, profile, scale, expected, inferred",
    [
        # a gap between two found levels: placed at the profile's share of their distance
        ([[0, 0], [np.nan, np.nan], [0, 30]], [1.0, 2.0], None, [[0, 0], [0, 10], [0, 30]], [False, True, False]),
        # below the last found level: along the direction of the two nearest found, at their scale (10 px/unit)
        ([[0, 0], [0, 10], [np.nan, np.nan]], [1.0, 2.0], None, [[0, 0], [0, 10], [0, 30]], [False, False, True]),
        # one found level and a given scale: straight down (and up) from it
        ([[np.nan, np.nan], [4, 10], [np.nan, np.nan]], [1.0, 1.0], 5.0, [[4, 5], [4, 10], [4, 15]], [True, False, True]),
    ],
)
def test_complete_chain_hand_computed(centres, profile, scale, expected, inferred):
    out, inf = complete_chain(np.asarray(centres, dtype=np.float64), profile, scale)
    np.testing.assert_allclose(out, expected, atol=1e-9)
    assert inf.tolist() == inferred


def test_torch_input_and_shape_errors():
    c = torch.tensor([[4.0, 4.0]])
    np.testing.assert_array_equal(encode_centre_heatmaps(c, None, None, (8, 8)), encode_centre_heatmaps(c.numpy(), None, None, (8, 8)))
    with pytest.raises(ValueError, match=r"centres_net_px must have shape \(L, 2\)"):
        encode_centre_heatmaps(np.zeros(3), None, None, (8, 8))
    with pytest.raises(ValueError, match=r"boxes_net_px must have shape \(1, 4\)"):
        encode_centre_heatmaps(c, np.zeros((2, 4)), None, (8, 8))
    with pytest.raises(ValueError, match="sigma_px must be positive"):
        encode_centre_heatmaps(c, None, None, (8, 8), sigma_px=0.0)
    with pytest.raises(ValueError, match=r"expected \(L \+ 4, H, W\)"):
        decode_detections(np.zeros((4, 8, 8)))


# ---------------------------------------------------------------------------------------------- decoding hand-made maps


def _gauss_map(h: int, w: int, peaks: list[tuple[float, float, float]], sigma: float = 1.5) -> np.ndarray:
    """A heatmap with Gaussian peaks ``(x, y, height)`` (maximum where they overlap)."""
    ys, xs = np.mgrid[0:h, 0:w]
    out = np.zeros((h, w))
    for x, y, a in peaks:
        out = np.maximum(out, a * np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * sigma**2)))
    return out


def _pred(maps: list[np.ndarray], ltrb: tuple[float, float, float, float] = (0.1, 0.05, 0.2, 0.1)) -> np.ndarray:
    h, w = maps[0].shape
    box = np.broadcast_to(np.asarray(ltrb, dtype=np.float64)[:, None, None], (4, h, w))
    return np.concatenate([np.stack(maps), box])


@pytest.mark.parametrize("method", ["argmax", "sequence"])
def test_decode_recovers_known_subpixel_peaks(method):
    h, w = 40, 32
    centres = [(10.3, 6.6), (12.8, 15.2), (14.5, 24.9)]
    maps = [_gauss_map(h, w, [(x, y, a)]) for (x, y), a in zip(centres, (0.9, 0.8, 0.7))]
    dec = decode_detections(_pred(maps), score_threshold=0.5, apply_sigmoid=False, method=method)
    np.testing.assert_allclose(dec["centres_net_px"], centres, atol=1e-6)
    # the score is the map at the peak pixel: a * exp(-d^2 / (2 sigma^2)), d from the nearest pixel
    d2 = [(x - round(x)) ** 2 + (y - round(y)) ** 2 for x, y in centres]
    np.testing.assert_allclose(dec["scores"], np.array([0.9, 0.8, 0.7]) * np.exp(-np.array(d2) / 4.5), rtol=1e-9)
    assert dec["detected"].all()
    # box: distances (0.1, 0.05, 0.2, 0.1) of (W, H, W, H) = (3.2, 2, 6.4, 4) px around the centre
    np.testing.assert_allclose(dec["boxes_net_px"][0], [10.3 - 3.2, 6.6 - 2.0, 10.3 + 6.4, 6.6 + 4.0], atol=1e-6)


def test_decode_logits_thresholds_and_border_peaks():
    h, w = 20, 20
    maps = [_gauss_map(h, w, [(0.0, 5.0, 0.9)]), _gauss_map(h, w, [(10.0, 15.0, 0.1)])]
    logits = np.log(np.clip(np.stack(maps), 1e-6, 1 - 1e-6) / (1 - np.clip(np.stack(maps), 1e-6, 1 - 1e-6)))
    pred = np.concatenate([logits, np.zeros((4, h, w))])
    dec = decode_detections(torch.as_tensor(pred), score_threshold=0.2, method="argmax")
    np.testing.assert_allclose(dec["centres_net_px"], [[0.0, 5.0], [10.0, 15.0]], atol=1e-6)  # border: no x refinement
    np.testing.assert_array_equal(dec["detected"], [True, False])
    seq = decode_detections(torch.as_tensor(pred), score_threshold=0.2)
    np.testing.assert_array_equal(seq["detected"], [True, False])
    assert np.all(np.isnan(seq["centres_net_px"][1])) and seq["scores"][1] == 0.0
    with pytest.raises(ValueError, match="L \\+ 4"):
        decode_detections(np.zeros((4, 8, 8)))
    with pytest.raises(ValueError, match="method"):
        decode_detections(pred, method="nms")


def test_sequence_decoding_separates_levels_that_share_a_vertebra():
    # three vertebrae at y = 10, 20, 30 and an unannotated one above (y = 2): levels 0 and 1 both peak on
    # the first vertebra; level 1 is only second-best on the second one; level 0 is weak on the neighbour above
    h, w = 40, 32
    v = [(16.0, 2.0), (16.0, 10.0), (16.0, 20.0), (16.0, 30.0)]
    maps = [
        _gauss_map(h, w, [(*v[0], 0.4), (*v[1], 0.9), (*v[2], 0.5)]),
        _gauss_map(h, w, [(*v[1], 0.8), (*v[2], 0.6)]),
        _gauss_map(h, w, [(*v[3], 0.7)]),
    ]
    argmax = decode_detections(_pred(maps), 0.2, apply_sigmoid=False, method="argmax")
    np.testing.assert_allclose(argmax["centres_net_px"][:2], [v[1], v[1]], atol=1e-6)  # both on one vertebra
    seq = decode_detections(_pred(maps), 0.2, apply_sigmoid=False)
    np.testing.assert_allclose(seq["centres_net_px"], [v[1], v[2], v[3]], atol=1e-6)
    np.testing.assert_allclose(seq["scores"], [0.9, 0.6, 0.7], atol=1e-6)  # the vertebra's peak (max over levels)


def test_sequence_decoding_keeps_contiguous_levels_when_a_level_prefers_the_neighbour():
    # level 0 fires more on the unannotated vertebra above (0.5) than on its own (0.3): free pairing would skip
    # the own vertebra, the gap penalty keeps the levels contiguous; with gap_penalty 0 the skip wins
    h, w = 40, 32
    v = [(16.0, 2.0), (16.0, 12.0), (16.0, 24.0)]
    maps = [_gauss_map(h, w, [(*v[0], 0.5), (*v[1], 0.3)]), _gauss_map(h, w, [(*v[2], 0.8)])]
    seq = decode_detections(_pred(maps), 0.2, apply_sigmoid=False)
    np.testing.assert_allclose(seq["centres_net_px"], [v[1], v[2]], atol=1e-6)
    free = decode_detections(_pred(maps), 0.2, apply_sigmoid=False, gap_penalty=0.0)
    np.testing.assert_allclose(free["centres_net_px"], [v[0], v[2]], atol=1e-6)


def test_decoded_centres_map_back_through_the_affine_hand_computed():
    a = letterbox_affine((200, 100), (64, 64))  # x = 3.125 u + 1.0625, y = 3.125 v - 48.9375
    maps = [_gauss_map(64, 64, [(10.3, 20.7, 0.9)]), _gauss_map(64, 64, [(40.0, 30.0, 0.8)])]
    dec = decode_detections(_pred(maps), 0.5, apply_sigmoid=False)
    expected = [[33.25, 15.75], [126.0625, 44.8125]]
    np.testing.assert_allclose(points_to_image_px(dec["centres_net_px"], a), expected, atol=1e-5)


# ---------------------------------------------------------------------------------------------- vertebra centres

SQUARE = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 8.0], [10.0, 8.0], [20.0, 4.0]])  # AS PS AI PI SP


@pytest.mark.parametrize(
    "visible, outline, box, expected",
    [
        ([1, 1, 1, 1, 1], None, None, (5.0, 4.0)),  # mean of the four corners (SP not used)
        ([1, 1, 1, 0, 1], [[2.0, 1.0], [12.0, 1.0], [12.0, 9.0]], None, (7.0, 5.0)),  # outline box centre
        ([1, 1, 1, 0, 1], None, None, (10.0 / 3, 8.0 / 3)),  # mean of the three visible corners
        ([1, 0, 0, 0, 1], None, [0.0, 0.0, 30.0, 10.0], (15.0, 5.0)),  # box centre
        ([0, 0, 0, 0, 0], None, None, (math.nan, math.nan)),
    ],
)
def test_vertebra_centres_fallback_chain(visible, outline, box, expected):
    out = vertebra_centres_px(
        SQUARE[None], np.array([visible], dtype=bool), "lateral5",
        None if outline is None else [np.array(outline)], None if box is None else np.array([box]),
    )
    np.testing.assert_allclose(out[0], expected)
