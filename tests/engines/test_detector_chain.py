"""The ``chain`` detector's level assignment, complete-spine fill, decoding and training pieces
(monai_spine/codecs/detection.py, monai_spine/engines/detector.py and, for a trained network,
monai_spine/evaluation/detector.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from monai_spine.codecs.chain import (
    assign_levels_chain, centres_in_level_order, complete_chain, level_height_fractions, spacing_profile,
)
from monai_spine.codecs.detection import decode_detections
from monai_spine.engines.detector import chain_training_sample, train_chain_detector
from monai_spine.evaluation.detector import evaluate_chain_items
from monai_spine.networks.detector import VertebraDetectorNet

# A T1-L5-like profile: vertebrae (and their spacing) grow down the spine, 16 gaps, mean 1.
PROFILE = np.linspace(0.7, 1.3, 16)
PROFILE = PROFILE / PROFILE.mean()
CUM = np.concatenate([[0.0], np.cumsum(PROFILE)])
# 17 centres: 40 px per profile unit down, a gentle lateral curve (scoliosis-like)
SPINE = np.stack([100 + 6 * np.sin(CUM / 3.0), 30 + 40 * CUM], -1)
ALL = list(range(17))


def _case(keep, extra=None, extra_score=0.5):
    pts = SPINE[keep]
    sc = np.full(len(keep), 0.9)
    if extra is not None:
        pts = np.vstack([pts, extra])
        sc = np.r_[sc, extra_score]
    return pts, sc


# (name, kept levels, extra point, expected level of every input point)
CASES = [
    ("all 17", ALL, None, ALL),
    ("T5 missing", [0, 1, 2, 3] + list(range(5, 17)), None, [0, 1, 2, 3] + list(range(5, 17))),
    ("T5 and T10 missing", [k for k in ALL if k not in (4, 9)], None, [k for k in ALL if k not in (4, 9)]),
    ("film cut at the top (T1-T3 off the film)", list(range(3, 17)), None, list(range(3, 17))),
    ("film cut at the bottom (L4-L5 off)", list(range(0, 15)), None, list(range(0, 15))),
    ("extra peak between T9 and T10", ALL, (SPINE[8] + SPINE[9]) / 2, ALL + [-1]),
    ("extra peak far beside the spine", ALL, SPINE[6] + [150.0, 0.0], ALL + [-1]),
]


@pytest.mark.parametrize("name,keep,extra,expected", CASES, ids=[c[0] for c in CASES])
def test_assign_levels_chain_hand_built(name, keep, extra, expected):
    pts, sc = _case(keep, extra)
    rng = np.random.default_rng(0)
    perm = rng.permutation(len(pts))  # the input order must not matter
    lev, scale, cost = assign_levels_chain(pts[perm], sc[perm], PROFILE)
    np.testing.assert_array_equal(lev, np.asarray(expected)[perm])
    assert scale == pytest.approx(40.0, rel=0.15)  # grid step of the scale search is ~5 %
    assert np.isfinite(cost)


def test_level_estimates_anchor_a_chain_with_a_c7_peak():
    """C7 above T1 and L5 missing: by spacing alone the chain may start at C7; the network's level guesses
    (here off by up to 0.4 level) keep T1 at T1 and leave C7 out."""
    c7 = SPINE[0] - (SPINE[1] - SPINE[0]) * 0.9
    pts = np.vstack([c7, SPINE[:16]])
    sc = np.full(17, 0.9)
    est = np.r_[-1.0, np.arange(16) + 0.4 * np.sin(np.arange(16))]
    lev, _, _ = assign_levels_chain(pts, sc, PROFILE, level_estimates=est)
    assert lev.tolist() == [-1] + list(range(16))
    with pytest.raises(ValueError, match="level estimates"):
        assign_levels_chain(pts, sc, PROFILE, level_estimates=est[:3])


def test_assign_levels_chain_edge_cases():
    lev, scale, cost = assign_levels_chain(np.zeros((0, 2)), np.zeros(0), PROFILE)
    assert lev.shape == (0,) and np.isnan(scale) and cost == pytest.approx(2.0 * 17)
    lev, _, _ = assign_levels_chain(SPINE[:1], [0.9], PROFILE)
    assert lev.tolist() == [0]
    lev, _, _ = assign_levels_chain(SPINE[:1], [0.9], PROFILE, level_estimates=[6.2])
    assert lev.tolist() == [6]
    with pytest.raises(ValueError, match="scores"):
        assign_levels_chain(SPINE, np.ones(3), PROFILE)
    with pytest.raises(ValueError, match="profile"):
        assign_levels_chain(SPINE, np.ones(17), -PROFILE)


def test_spacing_profile_is_scale_free_and_skips_missing():
    d = np.hypot(*np.diff(SPINE, axis=0).T)
    expected = d / np.median(d)
    expected = expected / expected.mean()
    np.testing.assert_allclose(spacing_profile([SPINE, SPINE * 2.5]), expected, rtol=1e-9)  # scale-free
    b = SPINE * 2.5
    b[4] = np.nan  # T5 missing: its two gaps (3 and 4) come from the first film alone
    db = np.hypot(*np.diff(b, axis=0).T)
    rb = db / np.nanmedian(db)
    ra = d / np.median(d)
    hand = np.where(np.isfinite(rb), (ra + np.nan_to_num(rb)) / 2, ra)
    np.testing.assert_allclose(spacing_profile([SPINE, b]), hand / hand.mean(), rtol=1e-9)
    with pytest.raises(ValueError, match="no film"):
        spacing_profile([np.full((17, 2), np.nan)])


def test_spacing_profile_leaves_out_films_out_of_level_order():
    """An AASCE-style label error (the L5 points above T1) would stretch the mean L4-L5 step; the film is left out."""
    noisy = SPINE.copy()
    noisy[16] = SPINE[0] - [0.0, 40.0]  # "L5" annotated one step above T1
    assert centres_in_level_order(SPINE) and not centres_in_level_order(noisy)
    np.testing.assert_allclose(spacing_profile([SPINE, noisy]), spacing_profile([SPINE]), rtol=1e-12)
    with pytest.raises(ValueError, match="level order"):
        spacing_profile([noisy])
    gap = SPINE.copy()
    gap[[3, 9]] = np.nan  # missing levels do not make a film out of order
    assert centres_in_level_order(gap)
    # the same film count in level_height_fractions: the noisy one changes nothing
    np.testing.assert_allclose(level_height_fractions([SPINE, noisy], [1000.0, 1000.0]),
                               level_height_fractions([SPINE], [1000.0]), rtol=1e-12)


def test_complete_chain_interpolates_and_extrapolates_and_flags():
    c = SPINE.copy()
    c[[0, 1, 7, 16]] = np.nan
    filled, inferred = complete_chain(c, PROFILE)
    assert inferred.tolist() == [k in (0, 1, 7, 16) for k in range(17)]
    np.testing.assert_array_equal(filled[~inferred], SPINE[~inferred])  # seen levels untouched
    # interior: T8 between T7 and T9 at the profile's share of their distance (hand: t = P[6] / (P[6] + P[7]))
    t = PROFILE[6] / (PROFILE[6] + PROFILE[7])
    np.testing.assert_allclose(filled[7], SPINE[6] + t * (SPINE[8] - SPINE[6]))
    # ends: within a few px of the true curve (extrapolated straight along the end direction)
    assert np.abs(filled[[0, 1, 16]] - SPINE[[0, 1, 16]]).max() < 5.0
    none, inf_all = complete_chain(np.full((17, 2), np.nan), PROFILE)
    assert np.isnan(none).all() and inf_all.all()
    with pytest.raises(ValueError, match="centres"):
        complete_chain(np.zeros((5, 2)), PROFILE)


def _peaks_pred(points, h=128, w=64, sigma=1.5):
    """A (1 + 4, H, W) 'network output': logits of Gaussian peaks at ``points``, boxes 4 x 3 net px."""
    ys, xs = np.mgrid[0:h, 0:w]
    heat = np.zeros((h, w))
    for x, y in points:
        heat = np.maximum(heat, np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * sigma**2)))
    p = np.clip(heat, 1e-6, 1 - 1e-6)
    out = np.zeros((5, h, w))
    out[0] = np.log(p / (1 - p))
    out[1:] = np.array([2.0 / w, 1.5 / h, 2.0 / w, 1.5 / h])[:, None, None]
    return out


def test_decode_chain_labels_peaks_and_reads_boxes():
    pts = np.stack([SPINE[:, 0] / 4 + 5, SPINE[:, 1] / 6 + 3], -1)  # 17 peaks inside a 128 x 64 map
    keep = [k for k in ALL if k != 9]  # T10 missed by the "network"
    dec = decode_detections(_peaks_pred(pts[keep]), 0.2, method="chain", profile=PROFILE)
    assert dec["detected"].tolist() == [k != 9 for k in ALL]
    np.testing.assert_allclose(dec["centres_net_px"][keep], pts[keep], atol=0.35)  # sub-pixel refinement
    b = dec["boxes_net_px"][0]
    assert b[2] - b[0] == pytest.approx(4.0) and b[3] - b[1] == pytest.approx(3.0)
    with pytest.raises(ValueError, match="profile"):
        decode_detections(_peaks_pred(pts), 0.2, method="chain")
    with pytest.raises(ValueError, match="chain"):
        decode_detections(np.zeros((7, 8, 8)), 0.2, method="chain", profile=PROFILE)


def _item(h=192, w=64):
    """A tiny film: bright blobs at 5 vertebra centres on a dark background (kept-image item)."""
    cum = np.concatenate([[0.0], np.cumsum([1.0, 1.0, 1.1, 1.2])])
    c = np.stack([np.full(5, w / 2), 30 + 30 * cum], -1)
    ys, xs = np.mgrid[0:h, 0:w]
    img = np.zeros((h, w), np.float32)
    for x, y in c:
        img[(np.abs(xs - x) < 10) & (np.abs(ys - y) < 9)] = 1.0
    boxes = np.concatenate([c - [10, 9], c + [10, 9]], -1)
    return {"image": img[None], "centres_px": c, "boxes_px": boxes, "present": np.ones(5, bool), "shrink": (1.0, 1.0),
            "image_path": "synthetic"}


def test_chain_training_sample_target_is_one_channel_at_the_centres():
    it = _item()
    x, t, a = chain_training_sample(it, (96, 32), 1.5, None, level_channel=False)
    assert x.shape == (1, 96, 32) and t.shape == (6, 96, 32)
    # plain letterbox: 192 x 64 -> 96 x 32 is a factor 2; centre (32, 30) -> net (15.75, 14.75)
    inv = np.linalg.inv(a)
    c = it["centres_px"] @ inv[:2, :2].T + inv[:2, 2]
    np.testing.assert_allclose(c[0], [15.75, 14.75])
    assert t[0].max() == 1.0 and int((t[0] == 1.0).sum()) == 5
    assert t[5].sum() == 5 * 9  # box mask: 3 x 3 around each centre
    _, tl, _ = chain_training_sample(it, (96, 32), 1.5, None)
    assert tl.shape == (8, 96, 32) and tl[7].sum() == 5 * 9
    # net rows of the centres: (y - 0.5) / 2 - 0.25 + 0.5 rounded: 15, 30, 45 -> level k / (L - 1) = 0, 1/4, 1/2
    assert tl[1, 15, 16] == 0.0 and tl[1, 30, 16] == pytest.approx(0.25) and tl[1, 45, 16] == pytest.approx(0.5)
    bad = dict(it, centres_px=it["centres_px"][::-1].copy())  # levels running bottom to top: no level target
    assert chain_training_sample(bad, (96, 32), 1.5, None)[1][7].sum() == 0


def test_chain_detector_overfits_a_tiny_film():
    """A few hundred CPU steps are enough to find every vertebra of a fixed film at its level."""
    torch.manual_seed(0)
    it = _item()
    net = VertebraDetectorNet(2, features=(4, 4, 8, 8, 16, 4))  # heatmap + level channel
    losses = train_chain_detector([it], net, (96, 32), epochs=120, batch_size=1, learning_rate=1e-2, sigma_px=1.5,
                                  augment=False)
    assert losses[-1] < 0.5 * losses[0]
    prof = spacing_profile([it["centres_px"]])
    r = evaluate_chain_items(net, [it], (96, 32), prof)
    assert r["recall"] == 1.0 and r["images_all_found"] == 1.0


def test_level_height_fractions_and_the_position_guess():
    from monai_spine.codecs.chain import _level_from_y_frac

    a = np.stack([np.zeros(3), [10.0, 20.0, 40.0]], -1)  # film of height 100: fractions 0.1, 0.2, 0.4
    b = np.stack([np.zeros(3), [30.0, 50.0, 70.0]], -1)  # film of height 200: 0.15, 0.25, 0.35
    bad = np.stack([np.zeros(3), [50.0, 20.0, 60.0]], -1)  # out of order: left out
    ly = level_height_fractions([a, b, bad], [100, 200, 100])
    np.testing.assert_allclose(ly, [0.125, 0.225, 0.375])
    # interpolated inside, linear beyond the ends with the end spacings (0.1 and 0.15 per level)
    np.testing.assert_allclose(_level_from_y_frac(np.array([0.175, 0.025, 0.525]), ly), [0.5, -1.0, 3.0])
    with pytest.raises(ValueError, match="no film"):
        level_height_fractions([bad], [100])


def test_decode_chain_uses_the_height_on_the_film():
    """Peaks C7 (above T1) .. L4 with L5 unseen: spacing alone cannot tell; the height guess can."""
    pts = np.stack([SPINE[:, 0] / 4 + 5, SPINE[:, 1] / 6 + 3], -1)
    c7 = pts[0] - (pts[1] - pts[0])
    peaks = np.vstack([c7, pts[:16]])
    y_frac_map = (1 / 128, 0.0)  # net row v is at v / 128 of the film's height
    ly = pts[:, 1] / 128
    dec = decode_detections(_peaks_pred(peaks), 0.2, method="chain", profile=PROFILE, level_y_frac=ly,
                            y_frac_map=y_frac_map, chain_kwargs={"position_weight": 1.0})
    assert dec["detected"].tolist() == [True] * 16 + [False]
    np.testing.assert_allclose(dec["centres_net_px"][:16], pts[:16], atol=0.35)


def test_decode_chain_peak_cost_second_pass_and_candidates():
    """``peak_cost`` gets every peak and the film's level spacing; a cost that says each peak is one level
    higher than the spacing alone finds moves the whole chain up; the peaks come back as candidates."""
    pts = np.stack([SPINE[:, 0] / 4 + 5, SPINE[:, 1] / 6 + 3], -1)
    keep = list(range(3, 17))  # T4-L5 seen
    plain = decode_detections(_peaks_pred(pts[keep]), 0.2, method="chain", profile=PROFILE)
    assert plain["detected"].tolist() == [k >= 3 for k in ALL]
    seen = {}

    def cost(points, spacing):
        seen["n"], seen["spacing"] = len(points), spacing
        c = np.full((len(points), 17), 100.0)
        for rank, i in enumerate(np.argsort(points[:, 1])):
            c[i, rank + 2] = 0.0  # T3 for the top peak, ..., L4 for the bottom one
        return c

    dec = decode_detections(_peaks_pred(pts[keep]), 0.2, method="chain", profile=PROFILE, peak_cost=cost)
    assert seen["n"] == len(keep) and seen["spacing"] > 0
    assert dec["candidates_net_px"].shape == (len(keep), 2) and dec["candidate_scores"].shape == (len(keep),)
    assert dec["detected"].tolist() == [2 <= k <= 15 for k in ALL]


@pytest.mark.parametrize("workers", [0, 2])
def test_chain_detector_training_is_reproducible_with_and_without_workers(workers):
    """The same seed gives the same augmented batches (each worker with its own generator) and losses."""
    items = [_item(), _item()]

    def run():
        torch.manual_seed(0)
        net = VertebraDetectorNet(2, features=(4, 4, 8, 8, 16, 4))
        return train_chain_detector(items, net, (96, 32), epochs=2, batch_size=1, seed=3, num_workers=workers), net

    (a, net), (b, _) = run(), run()
    assert a == b and len(a) == 2 and np.isfinite(a).all()
    assert next(net.parameters()).device.type == "cpu"


def test_chain_detector_refuses_an_unknown_device():
    with pytest.raises(ValueError, match="training device"):
        train_chain_detector([_item()], VertebraDetectorNet(2, features=(4, 4, 8, 8, 16, 4)), (96, 32), epochs=1,
                             device="gpu")
