"""Cobb angles by the AASCE rule: hand-built spines, the S-shape test, SMAPE, and the AASCE reference set."""

from __future__ import annotations

import numpy as np
import pytest

from monai_spine.measure.cobb import (
    cobb_angles,
    cobb_angles_deg,
    endplate_midpoints,
    is_s_shaped,
    smape,
    spine_height_proxy,
    tilt_angle_matrix_deg,
    tilt_vectors,
)

N = 17
#: tilts (deg) of the 17 vertebrae: the largest pair is (2, 9) = 12 - (-20) = 32 deg
TILTS = [2.0, -6.0, 12.0, 0, 0, 0, 0, 0, 0, -20.0, 0, 0, 0, 0, 0, 5.0, 0]
CY = [200.0 + 100.0 * i for i in range(N)]
# the C curve's chord slants left so that the tilted top vertebra's own endplate midpoints stay on
# the bulge's side of it (the AASCE S-test looks at every endplate midpoint)
C_SHAPE_X = [500.0 + 150.0 * np.sin(np.pi * i / (N - 1)) - 30.0 * i for i in range(N)]
S_SHAPE_X = [500.0 + 150.0 * np.sin(2 * np.pi * i / (N - 1)) for i in range(N)]


@pytest.mark.parametrize(
    "xs, height, case, expected, pairs",
    [
        # not S: second = top vertebra vs 2 (|2 - 12|), third = bottom vertebra vs 9 (|0 + 20|)
        (C_SHAPE_X, 3000.0, "non_s", [32.0, 10.0, 20.0], ((2, 9), (0, 2), (9, 16))),
        # S, main curve in the upper half (bottom-midpoint y of 2 and 9: 415 + 1115 < 3000):
        # second = max over 0..2 against 2 (|12 + 6| = 18 at 1), third = max over 9..16 against 9 (|-20 - 5| = 25 at 15)
        (S_SHAPE_X, 3000.0, "s_upper", [32.0, 18.0, 25.0], ((2, 9), (1, 2), (9, 15))),
        # S, main curve in the lower half (1530 >= 1200): second as above (end vertebra 1),
        # third = max over 0..1 against 1 (|-6 - 2| = 8 at 0)
        (S_SHAPE_X, 1200.0, "s_lower", [32.0, 18.0, 8.0], ((2, 9), (1, 2), (0, 1))),
    ],
)
def test_hand_built_spines(ap_spine, xs, height, case, expected, pairs):
    kp = ap_spine(TILTS, list(zip(xs, CY)))
    res = cobb_angles(kp, height)
    assert res.case == case
    assert res.is_s == (case != "non_s")
    np.testing.assert_allclose(res.angles_deg, expected, atol=1e-4)  # cosines are rounded to 1e-8
    assert res.pairs == pairs
    d = res.to_dict([f"V{i}" for i in range(N)])
    assert d["main"]["levels"] == ["V2", "V9"] and d["main"]["angle_deg"] == pytest.approx(32.0, abs=1e-4)


def test_scale_invariance(ap_spine):
    kp = ap_spine(TILTS, list(zip(S_SHAPE_X, CY)))
    a = cobb_angles(kp, 3000.0).angles_deg
    b = cobb_angles(kp * 2.5, 7500.0).angles_deg
    np.testing.assert_allclose(a, b, atol=1e-4)


@pytest.mark.parametrize(
    "points, expected",
    [
        ([[0, 0], [1, 2], [2, 4], [3, 6], [4, 8]], False),  # straight line: no deviation either side
        ([[0, 0], [3, 2], [4, 4], [3, 6], [0, 8]], True),  # vertical chord (x_1 == x_end): NaN, as MATLAB
        ([[0, 0], [3, 2], [4, 4], [3, 6], [1, 8]], False),  # C: all on one side of the chord
        ([[0, 0], [3, 2], [0, 4], [-3, 6], [-2, 7], [1, 8]], True),  # S: both sides
    ],
)
def test_s_shape_rule(points, expected):
    assert is_s_shaped(np.asarray(points, float)) is expected


def test_geometry_helpers(ap_spine):
    kp = ap_spine([0.0, 30.0], [(100.0, 100.0), (100.0, 200.0)])
    v = tilt_vectors(kp)
    np.testing.assert_allclose(v[0], [40.0, 0.0], atol=1e-9)
    np.testing.assert_allclose(tilt_angle_matrix_deg(v), [[0, 30], [30, 0]], atol=1e-4)
    mid = endplate_midpoints(kp)
    assert mid.shape == (4, 2)
    np.testing.assert_allclose(mid[0], [100.0, 85.0], atol=1e-9)
    np.testing.assert_allclose(mid[1], [100.0, 115.0], atol=1e-9)
    assert spine_height_proxy(kp) == pytest.approx(kp[..., 1].min() + kp[..., 1].max())


def test_batched_and_missing_vertebra(ap_spine):
    kp = ap_spine(TILTS, list(zip(C_SHAPE_X, CY)))
    batch = np.stack([kp, kp + 3.0])
    out = cobb_angles_deg(batch, 3000.0)
    assert out.shape == (2, 3)
    np.testing.assert_allclose(out[0], out[1], atol=1e-6)
    hidden = kp.copy()
    hidden[9] = np.nan  # the lower end vertebra of the main curve is missing
    res = cobb_angles(hidden, 3000.0)
    assert 9 not in res.used and len(res.used) == N - 1
    # remaining tilts: max pair is 12 - (-6) = 18 between vertebrae 1 and 2
    assert res.angles_deg[0] == pytest.approx(18.0, abs=1e-4) and res.pairs[0] == (1, 2)
    with pytest.raises(ValueError, match="at least 2"):
        cobb_angles(np.full((3, 4, 2), np.nan), 100.0)
    assert np.all(np.isnan(cobb_angles_deg(np.full((2, 3, 4, 2), np.nan), 100.0)))


@pytest.mark.parametrize(
    "pred, ref, expected",
    [
        ([10.0, 5.0, 5.0], [12.0, 5.0, 3.0], 10.0),  # (2 + 0 + 2) / (22 + 10 + 8)
        ([[10.0, 5.0, 5.0], [20.0, 10.0, 10.0]], [[12.0, 5.0, 3.0], [20.0, 10.0, 10.0]], 5.0),  # mean over images
        ([0.0, 0.0, 0.0], [0.0, 0.0, 0.0], 0.0),
        ([30.0, 0.0, 0.0], [0.0, 0.0, 10.0], 100.0),
    ],
)
def test_smape(pred, ref, expected):
    assert smape(pred, ref) == pytest.approx(expected)


def test_smape_shape_mismatch():
    with pytest.raises(ValueError, match="shape"):
        smape(np.zeros((2, 3)), np.zeros((3, 3)))


@pytest.mark.parametrize(
    "use_mat, tol_deg, min_within_001",
    [
        # from the .mat pixel points the file is reproduced for every image (max error ~0.005 deg)
        (True, 0.01, 481),
        # landmarks.csv holds x/W, y/H to limited precision: a few images differ by up to ~0.014 deg
        (False, 0.05, 470),
    ],
)
def test_aasce_reference_angles_are_reproduced(shared_data, use_mat, tol_deg, min_within_001):
    from monai_spine.data.aasce import read_aasce

    try:
        # angles.csv was computed from the files' vertebra order, the 18 lists stored rotated by one included
        ds = read_aasce(shared_data, use_mat=use_mat, fix_order=False)
    except FileNotFoundError as e:
        pytest.skip(f"AASCE data absent: {e}")
    assert len(ds) == 481
    ref = ds.cobb_angles_deg
    pred = np.asarray([cobb_angles(a.keypoints_px, a.image_size[1]).angles_deg for a in ds])
    err = np.abs(pred - ref)
    assert err.max() < tol_deg
    assert int(np.sum(err.max(axis=1) < 0.01)) >= min_within_001
    assert float(np.mean(np.all(err <= 1.0, axis=1))) == 1.0
    assert smape(pred, ref) < 0.01  # percent


def test_aasce_reference_angles_of_rotated_lists_follow_the_stored_order(shared_data):
    """The dataset's angles of 17 of the 18 rotated lists differ from the rule on the put-back order (up to 24 deg)."""
    from monai_spine.data.aasce import read_aasce

    try:
        ds = read_aasce(shared_data, use_mat=True)
    except FileNotFoundError as e:
        pytest.skip(f"AASCE data absent: {e}")
    pred = np.asarray([cobb_angles(a.keypoints_px, a.image_size[1]).angles_deg for a in ds])
    off = np.abs(pred - ds.cobb_angles_deg).max(axis=1) > 0.01
    fixed = np.array([bool(a.meta["label_fix"]) for a in ds])
    assert fixed.sum() == 18 and off.sum() == 17 and not (off & ~fixed).any()
    assert 20.0 < np.abs(pred - ds.cobb_angles_deg)[off].max() < 30.0
