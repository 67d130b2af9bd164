from __future__ import annotations

import numpy as np
import pytest

from monai_spine.data.keypoints import (
    REGIONS,
    SCHEMES,
    flip_permutation,
    frac_to_px,
    get_region,
    get_scheme,
    level_order,
    mm_to_px,
    px_to_frac,
    px_to_mm,
    validate_keypoints,
)


@pytest.mark.parametrize(
    "scheme, expected_perm",
    [("lateral5", [1, 0, 3, 2, 4]), ("ap4", [1, 0, 3, 2])],
)
def test_flip_permutation_swaps_pairs_and_is_an_involution(scheme, expected_perm):
    perm = get_scheme(scheme).flip_permutation
    np.testing.assert_array_equal(perm, expected_perm)
    np.testing.assert_array_equal(perm[perm], np.arange(len(perm)))


def test_flip_permutation_rejects_out_of_range_pair():
    with pytest.raises(ValueError, match="out of range"):
        flip_permutation(4, [(0, 4)])


@pytest.mark.parametrize(
    "points_px, size_wh, expected_frac",
    [
        ([[0.0, 0.0]], (10, 20), [[0.05, 0.025]]),  # first pixel centre
        ([[-0.5, -0.5]], (10, 20), [[0.0, 0.0]]),  # top-left edge
        ([[9.5, 19.5]], (10, 20), [[1.0, 1.0]]),  # bottom-right edge
        ([[4.5, 9.5]], (10, 20), [[0.5, 0.5]]),  # centre
    ],
)
def test_px_frac_hand_computed_and_round_trip(points_px, size_wh, expected_frac):
    frac = px_to_frac(np.array(points_px), size_wh)
    np.testing.assert_allclose(frac, expected_frac)
    np.testing.assert_allclose(frac_to_px(frac, size_wh), points_px, atol=1e-12)


def test_px_frac_on_torch_keeps_gradients():
    torch = pytest.importorskip("torch")
    p = torch.tensor([[3.0, 4.0]], requires_grad=True)
    f = px_to_frac(p, (10, 10))
    f.sum().backward()
    np.testing.assert_allclose(p.grad.numpy(), [[0.1, 0.1]])


@pytest.mark.parametrize(
    "spacing, points_px, expected_mm",
    [
        ((0.1, 0.1), [[10.0, 20.0]], [[1.0, 2.0]]),
        ((0.1, 0.2), [[10.0, 20.0]], [[1.0, 4.0]]),  # anisotropic: x by sx, y by sy
        ((0.15, 0.15), [[3.0, 4.0]], [[0.45, 0.6]]),
    ],
)
def test_px_mm_round_trip(spacing, points_px, expected_mm):
    mm = px_to_mm(points_px, spacing)
    np.testing.assert_allclose(mm, expected_mm)
    np.testing.assert_allclose(mm_to_px(mm, spacing), points_px)


@pytest.mark.parametrize("bad", [None, (0.0, 0.1), (-0.1, 0.1), (0.1,), (np.nan, 0.1)])
def test_mm_conversion_refuses_unknown_or_bad_spacing(bad):
    with pytest.raises(ValueError):
        px_to_mm([[1.0, 1.0]], bad)


def test_regions_levels_and_schemes():
    assert get_region("cervical").levels == ("C3", "C4", "C5", "C6", "C7")
    assert get_region("lumbar").levels == ("L1", "L2", "L3", "L4", "L5")
    assert len(get_region("ap").levels) == 17 and get_region("ap").levels[0] == "T1"
    assert REGIONS["ap"].scheme is SCHEMES["ap4"]
    assert SCHEMES["lateral5"].point_types.count("spinous_process") == 1
    assert level_order("C7") < level_order("T1") < level_order("L5")
    with pytest.raises(KeyError, match="unknown region"):
        get_region("thoracic")
    with pytest.raises(KeyError, match="X9"):
        level_order("X9")


def test_validate_keypoints_shapes_and_default_mask():
    kp = np.zeros((2, 5, 2))
    kp[1, 3] = np.nan
    pts, vis = validate_keypoints(kp)
    assert vis.shape == (2, 5) and not vis[1, 3] and vis.sum() == 9
    with pytest.raises(ValueError, match="case.json.*\\(N, K, 2\\)"):
        validate_keypoints(np.zeros((5, 2)), name="case.json")
    with pytest.raises(ValueError, match="expected 4 points"):
        validate_keypoints(kp, num_points=4)
    with pytest.raises(ValueError, match="mask shape"):
        validate_keypoints(kp, np.ones((2, 4), bool))
