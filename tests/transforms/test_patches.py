"""Tests of the patch-sampling transforms of the probabilistic spatial regressor (transforms/patches.py)."""

from __future__ import annotations

import numpy as np
import pytest
from monai.data import list_data_collate

from monai_spine.data.patches import map_points_to_image
from monai_spine.transforms.patches import CornerPatches, CornerPatchesd, RandCornerPatches, RandCornerPatchesd

W, H = 40.0, 30.0  # rectangle "vertebrae": size (W + H) / 2 = 35, centres 50 px apart -> size ratio 0.7
RATIO = 0.7


def rect_keypoints(n=4, x=100.0, y0=60.0, step=50.0, k=5):
    """(n, k, 2) lateral5-like keypoints: corners TL, TR, BL, BR of upright W x H rectangles (+ a 5th point)."""
    kp = np.zeros((n, k, 2))
    for i in range(n):
        cx, cy = x, y0 + step * i
        kp[i, :4] = [[cx - W / 2, cy - H / 2], [cx + W / 2, cy - H / 2], [cx - W / 2, cy + H / 2], [cx + W / 2, cy + H / 2]]
        if k > 4:
            kp[i, 4] = [cx + W, cy]
    return kp


def image(h=300, w=200, seed=0):
    return np.random.default_rng(seed).normal(100.0, 10.0, (1, h, w)).astype(np.float32)


SMALL = dict(out_size=32, grid=(1, 0.0), scales=(2.0,), rotations_deg=(0.0,))


def test_one_patch_per_vertebra_is_centred_on_it_with_side_twice_the_size():
    kp = rect_keypoints()
    out = CornerPatches(RATIO, **SMALL)(image(), kp)
    assert out["patches"].shape == (4, 1, 32, 32) and out["targets"].shape == (4, 1, 32, 32)
    assert out["affines"].shape == (4, 3, 3)
    np.testing.assert_array_equal(out["rows"], [0, 1, 2, 3])
    centres = kp[:, :4].mean(1)
    np.testing.assert_allclose(out["centres_px"], centres)
    np.testing.assert_allclose(out["sizes_px"], 35.0)  # 0.7 x 50
    np.testing.assert_allclose(out["orientations_deg"], 0.0, atol=1e-9)
    for a, c in zip(out["affines"], centres):
        np.testing.assert_allclose(map_points_to_image(np.array([15.5, 15.5]), a), c)  # patch centre -> vertebra centre
        np.testing.assert_allclose(np.linalg.det(a[:2, :2]), (70.0 / 32) ** 2)  # side 2 x 35 px over 32 px
    np.testing.assert_allclose(out["targets"].sum(axis=(1, 2, 3)), 1.0, rtol=1e-5)
    np.testing.assert_allclose(out["patches"].mean(axis=(1, 2, 3)), 0.0, atol=1e-4)  # z-scored
    np.testing.assert_allclose(out["patches"].std(axis=(1, 2, 3)), 1.0, atol=1e-3)


def test_target_peaks_lie_on_the_annotated_corners():
    kp = rect_keypoints(n=2)
    out = CornerPatches(RATIO, out_size=64, grid=(1, 0.0), scales=(1.6,), rotations_deg=(0.0,),
                        sigma_along_frac=0.05, sigma_across_frac=0.05)(image(), kp)
    t = out["targets"][0, 0]
    # the four strongest local maxima of vertebra 0's map are its corners (neighbours lie outside a 1.6 x patch)
    peaks = []
    work = t.copy()
    for _ in range(4):
        v, u = np.unravel_index(np.argmax(work), work.shape)
        peaks.append(map_points_to_image(np.array([u, v], float), out["affines"][0]))
        work[max(v - 5, 0) : v + 6, max(u - 5, 0) : u + 6] = 0
    d = np.min(np.linalg.norm(np.asarray(peaks)[:, None] - kp[0, :4][None], axis=-1), axis=1)
    assert np.all(d <= 1.0)


@pytest.mark.parametrize(
    "grid, scales, rotations, expected",
    [((1, 0.0), (2.0,), (0.0,), 4), ((3, 0.15), (1.6, 2.0, 2.4), (-10.0, 0.0, 10.0), 4 * 81), ((2, 0.1), (2.0,), (0.0, 5.0), 4 * 8)],
)
def test_regular_grid_patch_count(grid, scales, rotations, expected):
    out = CornerPatches(RATIO, out_size=16, grid=grid, scales=scales, rotations_deg=rotations).params(rect_keypoints())
    assert len(out["affines"]) == expected == len(out["rows"])


@pytest.mark.parametrize(
    "select, hide, rows",
    [
        (None, None, [0, 1, 2, 3]),
        ([True, False, True, True], None, [0, 2, 3]),
        (None, (1, 3), [0, 2, 3]),  # vertebra 1 lacks a visible corner
        (None, (2, 4), [0, 1, 2, 3]),  # the 5th point does not matter
    ],
)
def test_patches_only_around_selected_vertebrae_with_four_corners(select, hide, rows):
    kp = rect_keypoints()
    vis = np.ones(kp.shape[:2], bool)
    if hide is not None:
        vis[hide] = False
    out = CornerPatches(RATIO, **SMALL).params(kp, vis, None if select is None else np.array(select))
    np.testing.assert_array_equal(out["rows"], rows)


def test_single_vertebra_uses_its_own_corner_geometry():
    kp = rect_keypoints(n=1)
    out = CornerPatches(RATIO, **SMALL).params(kp)
    np.testing.assert_allclose(out["sizes_px"], [35.0])  # (40 + 30) / 2, not from a centre distance


def test_level_gap_halves_the_centre_distance():
    kp = rect_keypoints(n=2, step=100.0)  # C3 and C5: one vertebra between them
    out = CornerPatches(RATIO, **SMALL).params(kp, levels=["C3", "C5"])
    np.testing.assert_allclose(out["sizes_px"], 35.0)


def test_random_patches_count_reproducibility_and_jitter():
    kp = rect_keypoints()
    t = RandCornerPatches(RATIO, num_samples=10, out_size=16, grid=(3, 0.15), scales=(1.6, 2.0, 2.4),
                          rotations_deg=(-10.0, 0.0, 10.0))
    t.set_random_state(3)
    a = t(image(), kp)
    t.set_random_state(3)
    b = t(image(), kp)
    c = t(image(), kp)
    assert a["patches"].shape == (10, 1, 16, 16)
    np.testing.assert_array_equal(a["affines"], b["affines"])
    assert not np.allclose(a["affines"], c["affines"])
    regular = CornerPatches(RATIO, out_size=16).params(kp)["affines"]
    # jittered patches are off the regular grid; without jitter they are a subset of it
    assert not any(np.allclose(x, r) for x in a["affines"] for r in regular)
    nj = RandCornerPatches(RATIO, num_samples=10, jitter=False, out_size=16)
    nj.set_random_state(0)
    for x in nj.params(kp)["affines"]:
        assert any(np.allclose(x, r) for r in regular)


def test_random_patches_all_when_fewer_than_num_samples():
    t = RandCornerPatches(RATIO, num_samples=100, **SMALL)
    assert len(t(image(), rect_keypoints())["affines"]) == 4


def test_dict_version_returns_patch_dicts_with_geometry_and_copies():
    kp = rect_keypoints()
    img = image()
    d = {"image": img, "mask": img.copy(), "keypoints_px": kp, "visible": np.ones((4, 5), bool),
         "select": np.array([True, True, False, True]), "levels": ["C3", "C4", "C5", "C6"], "image_id": 7,
         "spacing_mm": np.array([0.5, 0.5], np.float32), "image_size": np.array([200, 300])}
    out = CornerPatchesd(keys=["image", "mask"], size_ratio=RATIO, **SMALL)(d)
    assert len(out) == 3
    for p in out:
        assert set(p) == {"image", "mask", "label", "patch_affine", "vertebra", "centre_px", "orientation_deg",
                          "size_px", "image_id", "spacing_mm", "image_size"}
        np.testing.assert_array_equal(p["image"], p["mask"])  # one geometry for every key
        assert p["image"].shape == (1, 32, 32) and p["image_id"] == 7
    assert [p["vertebra"] for p in out] == [0, 1, 3]
    batch = list_data_collate([out, out])
    assert tuple(batch["image"].shape) == (6, 1, 32, 32) and tuple(batch["patch_affine"].shape) == (6, 3, 3)


def test_dict_version_missing_keys():
    d = {"image": image(), "keypoints_px": rect_keypoints()}
    with pytest.raises(KeyError, match="mask"):
        CornerPatchesd(keys=["image", "mask"], size_ratio=RATIO, **SMALL)(d)
    out = CornerPatchesd(keys=["image", "mask"], size_ratio=RATIO, allow_missing_keys=True, label_key=None, **SMALL)(d)
    assert "mask" not in out[0] and "label" not in out[0] and "image_id" not in out[0]
    with pytest.raises(KeyError, match="keypoints_px"):
        CornerPatchesd(size_ratio=RATIO, **SMALL)({"image": image()})


def test_rand_dict_version_shares_one_randomize_and_is_seeded():
    d = {"image": image(), "other": image(seed=1), "keypoints_px": rect_keypoints()}
    t = RandCornerPatchesd(keys=["image", "other"], size_ratio=RATIO, num_samples=6, out_size=16)
    t.set_random_state(5)
    a = t(d)
    t.set_random_state(5)
    b = t(d)
    assert len(a) == 6
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x["patch_affine"], y["patch_affine"])
    # both keys were cut with the same affine: re-cutting "other" with image's affine gives the same patch
    ref = CornerPatches(RATIO, out_size=16).extract(d["other"], np.stack([p["patch_affine"] for p in a]))
    np.testing.assert_allclose(np.stack([p["other"] for p in a]), ref)


@pytest.mark.parametrize("kwargs", [{"size_ratio": 0.0}, {"size_ratio": 0.7, "grid": (3,)}])
def test_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        CornerPatches(**kwargs)
    with pytest.raises(ValueError):
        RandCornerPatches(0.7, num_samples=0)
