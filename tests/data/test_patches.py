"""Tests of vertebra geometry, patch sampling and patch resampling (monai_spine.data.patches); the corner
target maps are tested with their codec (tests/codecs/test_corner_maps.py)."""

from __future__ import annotations

import numpy as np
import pytest

from monai_spine.data.patches import (
    UnknownSpacingWarning,
    extract_patch,
    map_points_to_image,
    map_points_to_patch,
    normalize_patch,
    orientation_from_centres,
    patch_affine,
    patch_footprint,
    sample_patch_params,
    vertebra_geometry,
)


def rect_corners(cx, cy, w, h, angle_deg):
    """(4, 2) corners TL, TR, BL, BR of a w x h rectangle turned by angle (image frame, y down)."""
    a = np.radians(angle_deg)
    r = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    local = np.array([[-w / 2, -h / 2], [w / 2, -h / 2], [-w / 2, h / 2], [w / 2, h / 2]])
    return local @ r.T + [cx, cy]


@pytest.mark.parametrize("angle", [0.0, 30.0, -17.5, 90.0])
def test_vertebra_geometry_hand(angle):
    g = vertebra_geometry(rect_corners(10.0, 20.0, 40.0, 20.0, angle))
    assert np.allclose(g.centre, [10, 20])
    assert g.width == pytest.approx(40) and g.height == pytest.approx(20) and g.size == pytest.approx(30)
    assert g.angle_deg == pytest.approx(angle)


def test_vertebra_geometry_batch_and_nan():
    c = np.stack([rect_corners(0, 0, 10, 6, 5), np.full((4, 2), np.nan)])
    g = vertebra_geometry(c)
    assert g.width.shape == (2,) and g.width[0] == pytest.approx(10) and np.isnan(g.width[1])
    with pytest.raises(ValueError, match=r"\(\.\.\., 4, 2\)"):
        vertebra_geometry(np.zeros((3, 2)))


@pytest.mark.parametrize(
    "centres, angle",
    [
        ([[0, 0], [0, 10], [0, 20]], 0.0),  # vertical spine: upright vertebrae
        ([[0, 0], [10, 10], [20, 20]], -45.0),  # spine going down-right: endplate direction (1, -1)
    ],
)
def test_orientation_from_centres(centres, angle):
    ang, dist = orientation_from_centres(np.asarray(centres, float))
    assert np.allclose(ang, angle)
    assert np.allclose(dist, np.linalg.norm(np.subtract(centres[1], centres[0])))


@pytest.mark.parametrize("cx, cy, side, angle, size", [(50.0, 40.0, 64.0, 0.0, 64), (10.5, 7.0, 30.0, 33.0, 64), (0, 0, 100, -90, 32)])
def test_patch_affine_geometry_and_round_trip(cx, cy, side, angle, size):
    a = patch_affine(cx, cy, side, angle, size)
    c0 = (size - 1) / 2
    assert np.allclose(map_points_to_image([c0, c0], a), [cx, cy])
    fp = patch_footprint(a, size)
    assert np.linalg.norm(fp[1] - fp[0]) == pytest.approx(side)  # top edge spans side_px
    u_dir = (fp[1] - fp[0]) / side
    assert np.allclose(u_dir, [np.cos(np.radians(angle)), np.sin(np.radians(angle))])
    pts = np.random.default_rng(0).uniform(-5, 70, (7, 2))
    assert np.allclose(map_points_to_patch(map_points_to_image(pts, a), a), pts)


@pytest.mark.parametrize(
    "mark, side, angle",
    [
        ((57, 41), 64.0, 0.0),  # identity scale: exact
        ((57, 41), 64.0, 90.0),
        ((30, 70), 64.0, 180.0),
        ((44, 52), 64.0, 30.0),  # rotated: nearest patch pixel within sqrt(2)/2
        ((44, 52), 32.0, -25.0),  # upsampled 2x
    ],
)
def test_marked_pixel_maps_back(mark, side, angle):
    img = np.zeros((100, 120), np.float32)
    img[mark[1], mark[0]] = 1.0
    a = patch_affine(50.5, 50.5, side, angle, 64)  # even patch: centre (31.5, 31.5) on a pixel corner
    patch = extract_patch(img, a, 64)
    v, u = np.unravel_index(np.argmax(patch), patch.shape)
    back = map_points_to_image([u, v], a)
    s = side / 64
    assert np.linalg.norm(back - mark) <= np.sqrt(2) / 2 * s + 1e-6
    assert np.allclose(map_points_to_patch(mark, a), [u, v], atol=np.sqrt(2) / 2 + 1e-6)
    if angle % 90 == 0 and side == 64:
        assert np.allclose(back, mark) and patch.max() == pytest.approx(1.0)


@pytest.mark.parametrize("antialias", [False, True])
@pytest.mark.parametrize("side, angle", [(64.0, 0.0), (160.0, 17.0), (40.0, -60.0)])
def test_patch_samples_the_affine_positions(side, angle, antialias):
    """On coordinate ramps image[y, x] = x (and = y) the patch must equal the affine-mapped coordinates."""
    h, w = 300, 320
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    a = patch_affine(150.0, 140.0, side, angle, 64)
    uu, vv = np.meshgrid(np.arange(64.0), np.arange(64.0))
    expected = map_points_to_image(np.stack([uu, vv], -1), a)
    assert np.allclose(extract_patch(xs, a, 64, antialias=antialias), expected[..., 0], atol=2e-3)
    assert np.allclose(extract_patch(ys[None], a, 64, antialias=antialias), expected[..., 1], atol=2e-3)


def test_extract_patch_outside_image_and_errors():
    img = np.ones((20, 20), np.float32)
    far = patch_affine(500, 500, 100, 0)
    assert np.all(extract_patch(img, far, 64, fill=-1.0) == -1.0)
    assert np.all(extract_patch(img, far, 64, antialias=False, fill=-1.0) == -1.0)
    with pytest.raises(ValueError, match="border"):
        extract_patch(img, far, 64, border="wrap")
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        extract_patch(np.ones((2, 5, 5)), far)


def test_normalize_patch():
    p = normalize_patch(np.arange(16.0).reshape(4, 4))
    assert p.mean() == pytest.approx(0, abs=1e-6) and p.std() == pytest.approx(1, abs=1e-5)
    assert np.all(normalize_patch(np.full((4, 4), 3.0)) == 0)


def test_sample_patch_params_spacing_aware():
    p = sample_patch_params((100.0, 200.0), 20.0, (0.5, 0.5), grid=(3, 0.25), scales=(1.5, 2.0), rotations_deg=(-10, 0, 10), orientation_deg=5.0)
    assert p.shape == (3 * 3 * 2 * 3, 4)
    size_px = 40.0  # 20 mm / 0.5 mm/px
    assert set(np.round(p[:, 2], 6)) == {1.5 * size_px, 2.0 * size_px}
    assert set(np.round(p[:, 3], 6)) == {-5.0, 5.0, 15.0}
    assert np.allclose(p[:, :2].mean(0), [100, 200])
    offsets = np.unique(np.round(np.linalg.norm(p[:, :2] - [100, 200], axis=1), 6))
    assert np.allclose(offsets, [0, 0.25 * size_px, np.sqrt(2) * 0.25 * size_px])
    # the same anatomy at half the pixel size gives twice the pixels
    p2 = sample_patch_params((100.0, 200.0), 20.0, (0.25, 0.25), grid=(3, 0.25), scales=(1.5, 2.0))
    assert np.allclose(np.unique(p2[:, 2]), [120, 160])


def test_sample_patch_params_anisotropic_and_unknown_spacing():
    p = sample_patch_params((0.0, 0.0), 10.0, (0.5, 2.0), grid=(1, 0.0), scales=(1.0,), rotations_deg=(0,))
    assert p[0, 2] == pytest.approx(10.0)  # geometric mean spacing 1.0
    with pytest.warns(UnknownSpacingWarning):
        q = sample_patch_params((0.0, 0.0), 30.0, None, grid=(1, 0.0), scales=(2.0,), rotations_deg=(0,))
    assert q[0, 2] == pytest.approx(60.0)  # size read as px


def test_sample_patch_params_random_jitter():
    kw = dict(grid=(3, 0.2), scales=(1.5, 2.5), rotations_deg=(-10, 10))
    base = sample_patch_params((50.0, 50.0), 20.0, (1.0, 1.0), **kw)
    r1 = sample_patch_params((50.0, 50.0), 20.0, (1.0, 1.0), rng=np.random.default_rng(3), **kw)
    r2 = sample_patch_params((50.0, 50.0), 20.0, (1.0, 1.0), rng=np.random.default_rng(3), **kw)
    assert np.array_equal(r1, r2) and not np.allclose(r1, base)
    assert np.all(np.abs(r1[:, :2] - base[:, :2]) <= 0.5 * 0.2 * 20 + 1e-9)
    assert np.all(np.abs(r1[:, 2] - base[:, 2]) <= 0.5 * 20 + 1e-9)
    assert np.all(np.abs(r1[:, 3] - base[:, 3]) <= 10 + 1e-9)


@pytest.mark.parametrize("bad", [dict(vertebra_size_mm=0.0), dict(spacing_mm=(0.0, 1.0)), dict(centre_px=(np.nan, 1.0)), dict(grid=(0, 0.1))])
def test_sample_patch_params_errors(bad):
    kw = dict(centre_px=(1.0, 1.0), vertebra_size_mm=10.0, spacing_mm=(1.0, 1.0))
    kw.update(bad)
    with pytest.raises(ValueError):
        sample_patch_params(**kw)
