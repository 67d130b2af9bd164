"""Tests of the Al Arif et al. post-processing: background removal, back-projection, prior, quadrant maxima."""

from __future__ import annotations

import json

import numpy as np
import pytest

from monai_spine.codecs.corner_maps import accumulate_patches, corner_maps, localize_corners, quadrant_masks
from monai_spine.data.patches import patch_affine, sample_patch_params, vertebra_geometry
from monai_spine.inference.corners import (
    CornerPrior,
    corners_from_patches,
    remove_background,
    sigma_px_to_mm,
)


def rect_corners(cx, cy, w, h, angle_deg):
    a = np.radians(angle_deg)
    r = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    local = np.array([[-w / 2, -h / 2], [w / 2, -h / 2], [-w / 2, h / 2], [w / 2, h / 2]])
    return local @ r.T + [cx, cy]


def gaussian(shape, centre, sigma, height=1.0):
    ys, xs = np.mgrid[0 : shape[0], 0 : shape[1]]
    return height * np.exp(-((xs - centre[0]) ** 2 + (ys - centre[1]) ** 2) / (2 * sigma**2))


@pytest.fixture(scope="module")
def prior():
    """Prior fitted on rectangles 40 x 20 px (size 30) with some jitter of their shape."""
    rng = np.random.default_rng(1)
    kps = [rect_corners(rng.uniform(50, 150), rng.uniform(50, 150), 40 + rng.normal(0, 2), 20 + rng.normal(0, 1), rng.normal(0, 10))
           for _ in range(40)]
    return CornerPrior.fit(np.asarray(kps)[:, :, :])


# ----------------------------------------------------------------------------- background removal
def _network_like_map(seed=0):
    """Residual background ~1e-4 with noise, near-zero border, two peaks."""
    rng = np.random.default_rng(seed)
    m = 1e-4 + 1e-5 * rng.standard_normal((64, 64))
    m[:2, :] = m[-2:, :] = m[:, :2] = m[:, -2:] = 1e-6
    m += gaussian((64, 64), (20, 30), 2.0, 3e-3) + gaussian((64, 64), (45, 30), 2.0, 2e-3)
    m = m - m.min()
    return m / m.sum()


@pytest.mark.parametrize("method", ["mode", "otsu"])
def test_remove_background(method):
    m = _network_like_map()
    out = remove_background(m, method=method)
    assert out.max() == pytest.approx(1.0)
    assert np.unravel_index(np.argmax(out), out.shape) == (30, 20)
    far = np.ones_like(m, bool)
    far[20:41, 10:56] = False
    assert np.all(out[far] == 0)  # background and border removed
    assert out[30, 45] > 0.3  # the second peak survives


def test_remove_background_sum_flat_and_batch():
    m = _network_like_map()
    assert remove_background(m, renormalize="sum").sum() == pytest.approx(1.0)
    assert np.all(remove_background(np.full((8, 8), 1 / 64)) == 0)
    batch = remove_background(np.stack([m, m]))
    assert batch.shape == (2, 64, 64) and np.allclose(batch[0], batch[1])
    with pytest.raises(ValueError):
        remove_background(m, method="bogus")


# ----------------------------------------------------------------------------- back to the image
@pytest.mark.parametrize("angle, side", [(0.0, 64.0), (30.0, 128.0), (-75.0, 48.0)])
def test_accumulate_patches_lands_on_image_pixels(angle, side):
    m = np.zeros((64, 64), np.float32)
    u, v = 40, 22
    m[v - 1 : v + 2, u - 1 : u + 2] = 1.0  # a 3x3 block so the back-warped peak is well defined
    a = patch_affine(100.0, 90.0, side, angle, 64)
    target = a[:2, :2] @ [u, v] + a[:2, 2]
    canvas = accumulate_patches(m[None], a[None], (20, 10), (180, 180))
    i, j = np.unravel_index(np.argmax(canvas), canvas.shape)
    assert np.hypot(j + 20 - target[0], i + 10 - target[1]) <= 1.5 * max(side / 64, 1.0)  # on the plateau
    ys, xs = np.mgrid[0:180, 0:180]
    centroid = np.array([np.sum(canvas * xs) + 20 * canvas.sum(), np.sum(canvas * ys) + 10 * canvas.sum()]) / canvas.sum()
    assert np.allclose(centroid, target, atol=0.3)


def test_accumulate_patches_density_preserves_mass():
    m = gaussian((64, 64), (30, 33), 6.0)
    m /= m.sum()
    affs = np.stack([patch_affine(100, 100, s, a, 64) for s, a in [(96, 0), (128, 20), (80, -40)]])
    canvas = accumulate_patches(np.stack([m, m, m]), affs, (0, 0), (200, 200), density=True)
    assert canvas.sum() == pytest.approx(3.0, rel=0.02)


# ----------------------------------------------------------------------------- quadrants
@pytest.mark.parametrize("angle", [0.0, 20.0, -35.0, 90.0])
def test_quadrant_masks_follow_orientation(angle):
    shape, centre = (61, 61), (30.0, 30.0)
    masks = quadrant_masks(shape, centre, angle)
    assert masks.shape == (4, 61, 61)
    assert np.all(masks.sum(0) == 1)  # a partition
    pts = rect_corners(30, 30, 30, 20, angle)  # TL, TR, BL, BR of a vertebra turned by angle
    for k, p in enumerate(pts):
        x, y = int(round(p[0])), int(round(p[1]))
        assert masks[k, y, x]


# ----------------------------------------------------------------------------- localisation
def _handmade_map(shape=(101, 101), corners=((30, 35), (70, 35), (30, 65), (70, 65)), heights=(1, 0.8, 0.9, 0.7)):
    acc = np.zeros(shape)
    for c, h in zip(corners, heights):
        acc += gaussian(shape, c, 2.0, h)
    return acc


def test_quadrant_maxima_without_prior():
    acc = _handmade_map()
    acc += gaussian(acc.shape, (10, 10), 2.0, 0.5)  # weaker distractor in the top-left quadrant
    res = localize_corners(acc, (50.0, 50.0), 0.0, None)
    assert np.allclose(res.corners_px, [(30, 35), (70, 35), (30, 65), (70, 65)])
    assert not res.used_prior.any()
    assert np.all(res.sigma_px > 0.5)


def test_quadrant_maxima_with_canvas_origin_and_rotation():
    corners = rect_corners(200.0, 300.0, 40.0, 30.0, 25.0)
    origin = (160, 260)
    acc = _handmade_map((81, 81), corners=[tuple(c - origin) for c in corners])
    res = localize_corners(acc, (200.0, 300.0), 25.0, None, origin_px=origin)
    assert np.all(np.linalg.norm(res.corners_px - corners, axis=1) <= 0.75)


def test_sigma_measures_spread():
    acc = gaussian((101, 101), (30, 30), 3.0)
    res = localize_corners(acc, (50.0, 50.0), 0.0, None, size_px=60.0, window_frac=0.3, min_mass_frac=0.0)
    assert res.corners_px[0] == pytest.approx([30, 30])
    # window of 18 px = 6 sigma: the full spread plus the pixel box
    assert res.sigma_px[0] == pytest.approx(np.sqrt(9 + 1 / 12), rel=0.02)


def test_prior_weighting_prefers_plausible_peak(prior):
    centre, size = np.array([100.0, 100.0]), 30.0
    mean = prior.mean_px(centre, 0.0, size)
    acc = np.zeros((201, 201))
    for c in mean:
        acc += gaussian(acc.shape, c, 1.5)
    # a higher peak in the TL quadrant but far from where a TL corner can be
    acc += gaussian(acc.shape, (60, 60), 1.5, 1.5)
    plain = localize_corners(acc, centre, 0.0, prior, 30.0, weight_by_prior=False, prior_radius=np.inf)
    assert np.allclose(plain.corners_px[0], (60, 60))
    weighted = localize_corners(acc, centre, 0.0, prior, 30.0)
    assert np.all(np.linalg.norm(weighted.corners_px - mean, axis=1) <= 1.0)


def test_refine_climbs_to_the_evidence_peak(prior):
    """A broad peak 4 px off the prior mean: the weighted maximum is pulled towards the mean, the ascent is not."""
    centre, size = np.array([100.0, 100.0]), 30.0
    mean = prior.mean_px(centre, 0.0, size)
    peaks = np.round(mean + [-4.0, 0.0])
    acc = np.zeros((201, 201))
    for c in peaks:
        acc += gaussian(acc.shape, c, 5.0)
    climbed = localize_corners(acc, centre, 0.0, prior, size)
    assert np.allclose(climbed.corners_px, peaks)
    pulled = localize_corners(acc, centre, 0.0, prior, size, refine=False)
    assert np.all(np.linalg.norm(pulled.corners_px - peaks, axis=1) >= 1.0)
    assert np.all(np.linalg.norm(pulled.corners_px - mean, axis=1) < 4.0)


def test_empty_quadrant_falls_back_to_prior(prior):
    centre, size = (100.0, 100.0), 30.0
    mean = prior.mean_px(centre, 10.0, size)
    acc = np.zeros((201, 201))
    for k in (0, 1, 3):  # the bottom-left corner is missing (occlusion / implant)
        acc += gaussian(acc.shape, mean[k] + [1.0, -1.0], 1.5)
    res = localize_corners(acc, centre, 10.0, prior, size, prior_scale=4.0)  # a broad prior: trust the map
    assert list(res.used_prior) == [False, False, True, False]
    assert np.allclose(res.corners_px[2], mean[2])
    assert res.sigma_px[2] == pytest.approx(4.0 * prior.sigma_px(size)[2])
    assert np.all(np.linalg.norm(res.corners_px[[0, 1, 3]] - (mean[[0, 1, 3]] + [1, -1]), axis=1) <= 1.0)
    # without a prior the missing corner is NaN
    res2 = localize_corners(acc, centre, 10.0, None, size)
    assert np.all(np.isnan(res2.corners_px[2])) and not res2.used_prior.any()
    # an all-zero map: every corner from the prior
    assert localize_corners(np.zeros((50, 50)), centre, 0.0, prior, size).used_prior.all()


@pytest.mark.parametrize("pull", [0.0, 0.25, 0.5, 1.0])
def test_prior_pull_moves_found_corners_toward_the_prior_mean(prior, pull):
    """Peaks 6 px off the prior mean: each found corner lands ``pull`` of the way to the mean, the map's
    spread (sigma) is the one without a pull, and a corner that fell back to the prior stays at the mean."""
    centre, size = np.array([100.0, 100.0]), 30.0
    mean = prior.mean_px(centre, 0.0, size)
    peaks = np.round(mean + [6.0, 0.0])
    acc = np.zeros((201, 201))
    for k in (0, 1, 3):  # the bottom-left corner has no evidence: prior fallback
        acc += gaussian(acc.shape, peaks[k], 2.0)
    base = localize_corners(acc, centre, 0.0, prior, size, prior_scale=4.0)
    res = localize_corners(acc, centre, 0.0, prior, size, prior_scale=4.0, prior_pull=pull)
    assert list(res.used_prior) == [False, False, True, False]
    np.testing.assert_allclose(base.corners_px[[0, 1, 3]], peaks[[0, 1, 3]])
    np.testing.assert_allclose(res.corners_px[[0, 1, 3]], peaks[[0, 1, 3]] + pull * (mean[[0, 1, 3]] - peaks[[0, 1, 3]]))
    gap = np.linalg.norm(peaks[[0, 1, 3]] - mean[[0, 1, 3]], axis=1)  # about 6 px (peaks on whole pixels)
    np.testing.assert_allclose(np.linalg.norm(res.corners_px[[0, 1, 3]] - mean[[0, 1, 3]], axis=1), (1 - pull) * gap)
    np.testing.assert_allclose(res.corners_px[2], mean[2])
    np.testing.assert_allclose(res.sigma_px, base.sigma_px)


@pytest.mark.parametrize("pull", [-0.1, 1.5, np.nan])
def test_prior_pull_outside_zero_one_is_refused(prior, pull):
    with pytest.raises(ValueError, match="prior_pull"):
        localize_corners(np.ones((50, 50)), (25.0, 25.0), 0.0, prior, 30.0, prior_pull=pull)


def test_prior_pull_without_prior_changes_nothing():
    acc = _handmade_map()
    a = localize_corners(acc, (50.0, 50.0), 0.0, None)
    b = localize_corners(acc, (50.0, 50.0), 0.0, None, prior_pull=0.5)
    np.testing.assert_array_equal(a.corners_px, b.corners_px)


# ----------------------------------------------------------------------------- prior
def test_prior_fit_exact_shape():
    kps = np.stack([rect_corners(x, y, 40.0, 20.0, a) for x, y, a in [(10, 10, 0), (50, 80, 30), (0, 0, -20), (5, 9, 90), (3, 3, 12)]])
    p = CornerPrior.fit(kps, reg=1e-6)
    assert np.allclose(p.mean, np.array([[-20, -10], [20, -10], [-20, 10], [20, 10]]) / 30.0)
    assert np.allclose(p.cov, 1e-6 * np.eye(2))
    assert p.count == 5
    assert np.allclose(p.mean_px((100, 50), 90.0, 30.0)[0], [110, 30])  # (-20,-10) turned 90 deg: (10, -20)


def test_prior_density_integrates_to_one(prior):
    ys, xs = np.mgrid[0:200, 0:200]
    pts = np.stack([xs, ys], -1).astype(float)
    d = prior.density(pts, (100.0, 100.0), 15.0, 30.0)
    assert d.shape == (200, 200, 4)
    assert np.allclose(d.sum(axis=(0, 1)), 1.0, atol=5e-3)  # a narrow prior: sampling error
    assert prior.density(pts, (100.0, 100.0), 15.0, 30.0, corner=2).shape == (200, 200)


def test_prior_levels_save_load(tmp_path):
    rng = np.random.default_rng(0)
    kps = np.stack([rect_corners(0, 0, 40 + rng.normal(), 20 + 10 * (i % 2) + rng.normal(), 0) for i in range(12)])
    levels = ["C3" if i % 2 == 0 else "C4" for i in range(12)]
    p = CornerPrior.fit([kps[:6], kps[6:]], None, levels=[levels[:6], levels[6:]], min_count=5)
    assert set(p.levels) == {"C3", "C4"}
    assert p.params("C4")[0][0, 1] < p.params("C3")[0][0, 1]  # taller vertebrae: superior corners further up
    assert p.params("C9")[0] is p.mean
    path = tmp_path / "prior.json"
    p.save(path)
    q = CornerPrior.load(path)
    assert np.allclose(q.mean, p.mean) and np.allclose(q.cov, p.cov) and q.count == 12
    assert np.allclose(q.params("C4")[1], p.params("C4")[1])
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(ValueError, match="bad.json"):
        CornerPrior.load(bad)


def test_prior_fit_levels_must_match():
    kps = np.stack([rect_corners(0, 0, 40, 20, 0)] * 6)
    with pytest.raises(ValueError, match="one name per vertebra"):
        CornerPrior.fit([kps], None, levels=["C3"] * 6)  # flat names for a list of arrays


def test_prior_fit_needs_enough_vertebrae():
    with pytest.raises(ValueError, match="usable vertebrae"):
        CornerPrior.fit(np.stack([rect_corners(0, 0, 4, 2, 0)] * 3))


# ----------------------------------------------------------------------------- whole pipeline
def test_corners_from_patches_recovers_corners():
    rng = np.random.default_rng(2)
    prior = CornerPrior.fit(np.stack([rect_corners(0, 0, 40 + rng.normal(0, 2), 24 + rng.normal(0, 2), 0) for _ in range(30)]))
    corners = np.stack([rect_corners(120.0, 80.0 + 38 * i, 40.0, 24.0, 6.0) for i in range(3)])
    g = vertebra_geometry(corners)
    maps, affs, owner = [], [], []
    for v in (0, 2):  # vertebra 1 has no patches
        for cx, cy, side, ang in sample_patch_params(g.centre[v], g.size[v] * 0.5, (0.5, 0.5), grid=(2, 0.1), scales=(2.0,), rotations_deg=(-5.0, 5.0), orientation_deg=g.angle_deg[v]):
            a = patch_affine(cx, cy, side, ang, 64)
            maps.append(corner_maps(corners, None, a, 64))  # perfect predictions
            affs.append(a)
            owner.append(v)
    res = corners_from_patches(np.stack(maps), np.stack(affs), np.array(owner), g.centre, g.angle_deg, g.size,
                               prior, spacing_mm=(0.5, 0.5), return_canvases=True, image_shape=(240, 260))
    assert res.corners_px.shape == (3, 4, 2) and res.sigma_px.shape == (3, 4)
    for v in (0, 2):
        assert np.all(np.linalg.norm(res.corners_px[v] - corners[v], axis=1) <= 1.0)
        assert not res.used_prior[v].any()
    assert res.used_prior[1].all()
    assert np.allclose(res.corners_px[1], prior.mean_px(g.centre[1], g.angle_deg[1], g.size[1]))
    assert np.allclose(res.sigma_mm, res.sigma_px * 0.5)
    assert res.canvases[1] is None and res.canvases[0][0].ndim == 2
    # density accumulation gives the same corners
    res2 = corners_from_patches(np.stack(maps), np.stack(affs), np.array(owner), g.centre, g.angle_deg, g.size, prior, renormalize="sum")
    assert np.allclose(res2.corners_px[[0, 2]], res.corners_px[[0, 2]], atol=1.0)
    assert res2.sigma_mm is None


def test_corners_from_patches_validates():
    with pytest.raises(ValueError, match="vertebra_index"):
        corners_from_patches(np.zeros((2, 64, 64)), np.stack([np.eye(3)] * 2), np.array([0, 5]), np.zeros((2, 2)), 0.0, 10.0, None)


def test_sigma_px_to_mm():
    assert sigma_px_to_mm(np.array([2.0]), None) is None
    assert sigma_px_to_mm(np.array([2.0]), (0.1, 0.1))[0] == pytest.approx(0.2)
    assert sigma_px_to_mm(np.array([1.0]), (0.1, 0.3))[0] == pytest.approx(np.sqrt(0.05))


def test_perfect_maps_on_real_aasce_geometry(shared_data):
    """Real AP labels: target maps used as predictions must give back the annotated corners."""
    sio = pytest.importorskip("scipy.io")
    labels = shared_data / "aasce-train" / "labels"
    names = [n.strip() for n in (labels / "filenames.csv").read_text().splitlines() if n.strip()]
    if len(names) < 21:
        pytest.skip("AASCE labels incomplete")
    kps = [sio.loadmat(str(labels / f"{n}.mat"))["p2"].reshape(17, 4, 2) for n in names[:21]]
    prior = CornerPrior.fit(kps[1:])
    kp = kps[0]
    g = vertebra_geometry(kp)
    maps, affs, owner = [], [], []
    for v in range(17):
        for cx, cy, side, ang in sample_patch_params(g.centre[v], g.size[v], (1.0, 1.0), grid=(2, 0.15), scales=(2.0,),
                                                     rotations_deg=(0.0,), orientation_deg=g.angle_deg[v]):
            a = patch_affine(cx, cy, side, ang, 64)
            maps.append(corner_maps(kp, None, a, 64))
            affs.append(a)
            owner.append(v)
    res = corners_from_patches(np.stack(maps), np.stack(affs), np.array(owner), g.centre, g.angle_deg, g.size, prior)
    err = np.linalg.norm(res.corners_px - kp, axis=-1)
    assert not res.used_prior.any()
    assert np.median(err / g.size[:, None]) < 0.01 and err.max() < 0.05 * g.size.max()


# ----------------------------------------------------------------------------- equivalence with the references
# The vectorised steps must give the results of the original one-map / one-patch / whole-canvas
# implementations kept in ``corner_reference.py`` (corners within 1e-4 px, maps and
# sigma within 1e-5 relative; in practice they agree to the last bit).
from corner_reference import (  # noqa: E402
    _accumulate_patches_reference,
    _corners_from_patches_reference,
    _localize_corners_reference,
    _remove_background_reference,
)

from monai_spine.inference.corners import _histograms  # noqa: E402


def _map_stack(seed=0, n=6, s=32):
    """Network-like maps plus the awkward ones: flat, all zero, NaN/inf, values exactly on bin edges, a lone spike."""
    rng = np.random.default_rng(seed)
    maps = []
    for i in range(n):
        m = 1e-4 + 1e-5 * rng.standard_normal((s, s))
        m += gaussian((s, s), rng.uniform(4, s - 4, 2), rng.uniform(1, 3), rng.uniform(1e-3, 4e-3))
        maps.append(m / m.sum())
    flat = np.full((s, s), 1.0 / s**2)
    zeros = np.zeros((s, s))
    bad = maps[0].copy()
    bad[3, 4], bad[7, 1], bad[0, 0] = np.nan, np.inf, -np.inf
    on_edges = rng.integers(0, 65, (s, s)) / 64.0  # many values exactly on the 64 bin edges
    spike = np.zeros((s, s))
    spike[5, 9] = 1.0
    tiny_range = 1e-4 + 1e-13 * rng.standard_normal((s, s))  # |min| >> max - min
    return np.stack(maps + [flat, zeros, bad, on_edges, spike, tiny_range])


@pytest.mark.parametrize(
    "rows",
    [
        np.arange(65, dtype=float)[None] / 64.0,  # every value on an edge, the maximum in the last bin
        np.array([[0.0, 1.0, 1.0 - 1e-16, 0.5, 0.5 + 1e-16, 1e-300]]),
        1e-4 + 1e-12 * np.random.default_rng(3).standard_normal((4, 200)),
        np.round(np.random.default_rng(4).standard_normal((5, 300)) * 64) / 64 - 5.0,
        np.random.default_rng(5).integers(-3, 300, (3, 500)).astype(float),
    ],
)
@pytest.mark.parametrize("bins", [1, 7, 64])
def test_histograms_equal_numpy(rows, bins):
    hist, edges = _histograms(rows, bins, rows.min(axis=1), rows.max(axis=1))
    for r, h, e in zip(rows, hist, edges):
        h2, e2 = np.histogram(r, bins=bins)
        assert np.array_equal(h, h2) and np.array_equal(e, e2)


@pytest.mark.parametrize(
    "lo, hi, bins",
    [(-0.9433606577090741, 5.248951945955339, 64), (6.79823544571424e-05, 0.0005188713817397802, 10),
     (0.24780556387826858, 5.7507194661692065, 64), (1e-4, 1e-4 + 3e-9, 64)],
)
def test_histograms_values_ulps_from_edges(lo, hi, bins):
    """Values 1-3 ulps either side of every edge: where the scaled index alone puts some in the wrong bin."""
    edges = np.linspace(lo, hi, bins + 1)
    vals = [lo, hi]
    for e in edges[1:-1]:
        for direction in (-np.inf, np.inf):
            x = e
            for _ in range(3):
                x = np.nextafter(x, direction)
                vals.append(x)
    row = np.array(vals)[None]
    naive = ((row - lo) / (hi - lo) * bins).astype(int).clip(0, bins - 1)
    assert np.any(naive != np.searchsorted(edges, row, side="right").clip(1, bins) - 1) or lo == 1e-4
    hist, e2 = _histograms(row, bins, row.min(axis=1), row.max(axis=1))
    h_np, e_np = np.histogram(row[0], bins=bins)
    assert np.array_equal(hist[0], h_np) and np.array_equal(e2[0], e_np)


@pytest.mark.parametrize("method", ["mode", "otsu", "none"])
@pytest.mark.parametrize("renormalize", ["max", "sum", "none"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_remove_background_matches_reference(method, renormalize, dtype):
    maps = _map_stack().astype(dtype)
    with np.errstate(invalid="ignore", over="ignore"):
        ref = _remove_background_reference(maps, method=method, renormalize=renormalize)
    new = remove_background(maps, method=method, renormalize=renormalize)
    assert new.dtype == np.float64 and new.shape == maps.shape
    np.testing.assert_allclose(new, ref, rtol=1e-12, atol=1e-14 * np.abs(ref).max())
    assert np.all(new[6:8] == 0)  # the flat and the all-zero map
    # one map on its own gives what it gives in the stack
    np.testing.assert_array_equal(remove_background(maps[3], method=method, renormalize=renormalize), new[3])


def test_remove_background_blocks_and_empty_stack(monkeypatch):
    import monai_spine.inference.corners as corners_mod

    maps = _map_stack(seed=1, n=9)
    whole = remove_background(maps, tail_frac=0.2, bins=32)
    monkeypatch.setattr(corners_mod, "_BLOCK_MAPS", 4)  # maps split across blocks
    np.testing.assert_array_equal(remove_background(maps, tail_frac=0.2, bins=32), whole)
    np.testing.assert_allclose(whole, _remove_background_reference(maps, tail_frac=0.2, bins=32), rtol=1e-12, atol=0)
    assert remove_background(np.zeros((0, 8, 8))).shape == (0, 8, 8)
    with pytest.raises(ValueError, match="bogus"):
        remove_background(maps, renormalize="bogus")


def _patch_set(angle, centre=(60.0, 50.0), sides=(40.0, 64.0, 100.0), rots=(-10.0, 0.0, 10.0), seed=0, s=32):
    rng = np.random.default_rng(seed)
    affs, maps = [], []
    for side in sides:
        for rot in rots:
            cx, cy = np.asarray(centre) + rng.uniform(-4, 4, 2)
            affs.append(patch_affine(cx, cy, side, angle + rot, s))
            m = gaussian((s, s), rng.uniform(6, s - 6, 2), 2.0) + gaussian((s, s), rng.uniform(6, s - 6, 2), 3.0, 0.5)
            maps.append(m / m.max())
    return np.stack(maps), np.stack(affs)


@pytest.mark.parametrize(
    "angle, centre, origin, shape",
    [
        (0.0, (60.0, 50.0), (0, 0), (120, 130)),
        (23.0, (60.0, 50.0), (-15, 5), (110, 140)),  # negative origin
        (-65.0, (10.0, 8.0), (0, 0), (80, 90)),  # patches hang over the canvas's top-left border
        (90.0, (118.0, 95.0), (0, 0), (100, 120)),  # ... and over its bottom-right border
        (180.0, (300.0, 300.0), (0, 0), (50, 50)),  # entirely outside the canvas: all zero
        (7.5, (40.3, 41.7), (12, 9), (1, 1)),  # a one-pixel canvas
    ],
)
@pytest.mark.parametrize("density", [False, True])
def test_accumulate_patches_matches_reference(angle, centre, origin, shape, density):
    maps, affs = _patch_set(angle, centre)
    ref = _accumulate_patches_reference(maps, affs, origin, shape, density=density)
    new = accumulate_patches(maps, affs, origin, shape, density=density)
    assert new.shape == tuple(shape) and new.dtype == np.float64
    np.testing.assert_allclose(new, ref, rtol=1e-12, atol=1e-12 * max(np.abs(ref).max(), 1e-300))
    if centre == (300.0, 300.0):
        assert np.all(new == 0)
    assert accumulate_patches(maps[:0], affs[:0], origin, shape).shape == tuple(shape)


def _correlated_prior():
    """A narrow prior with strongly correlated, rotated covariances (the ellipse boxes must hold them)."""
    mean = np.array([[-20, -10], [20, -10], [-20, 10], [20, 10]]) / 30.0
    base = np.array([[4e-3, 3.5e-3], [3.5e-3, 4e-3]])
    cov = np.stack([base, base * [[1, -1], [-1, 1]], 0.5 * base * [[1, -1], [-1, 1]], 2 * base])
    return CornerPrior(mean, cov, 10, levels={"L1": (mean * 1.1, cov * 0.5, 10)})


def _noisy_vertebra_map(shape, origin, centre, angle, size, seed, missing=()):
    """Corner blobs of a rectangle, neighbours' corners above and below, noise; some corners left out."""
    rng = np.random.default_rng(seed)
    acc = 0.02 * rng.random(shape)
    ys, xs = np.mgrid[0 : shape[0], 0 : shape[1]]
    for dy, h in ((0.0, 1.0), (-1.25, 0.7), (1.25, 0.7)):
        a = np.radians(angle)
        c = np.asarray(centre) + dy * size * np.array([-np.sin(a), np.cos(a)])
        for k, p in enumerate(rect_corners(c[0], c[1], size * 40 / 30, size * 20 / 30, angle)):
            if dy == 0.0 and k in missing:
                continue
            p = p + rng.normal(0, 1.5, 2) - origin
            acc += h * rng.uniform(0.6, 1.0) * np.exp(-((xs - p[0]) ** 2 + (ys - p[1]) ** 2) / (2 * rng.uniform(1.5, 4) ** 2))
    return acc


LOCALIZE_CASES = [
    # (angle, centre, origin, shape, prior, kwargs)
    (0.0, (100.0, 90.0), (40, 30), (121, 141), "fitted", {}),
    (17.0, (100.0, 90.0), (40, 30), (121, 141), "fitted", {}),
    (-40.0, (63.3, 71.8), (0, 0), (150, 130), "fitted", {"prior_scale": 2.0}),
    (90.0, (100.0, 90.0), (40, 30), (121, 141), "correlated", {}),
    (180.0, (100.0, 90.0), (40, 30), (121, 141), "correlated", {"level": "L1", "prior_radius": 2.0}),
    (12.0, (45.0, 40.0), (40, 30), (80, 90), "fitted", {}),  # vertebra at the canvas (image) border
    (-8.0, (35.0, 28.0), (40, 30), (80, 90), "correlated", {}),  # centre outside the canvas: prior means far off
    (25.0, (100.0, 90.0), (40, 30), (121, 141), "fitted", {"weight_by_prior": False}),
    (25.0, (100.0, 90.0), (40, 30), (121, 141), "fitted", {"prior_radius": np.inf}),
    (25.0, (100.0, 90.0), (40, 30), (121, 141), "fitted", {"max_radius_frac": 0.8, "refine": False}),
    (25.0, (100.0, 90.0), (40, 30), (121, 141), "fitted", {"prior_scale": 0.02, "prior_radius": np.inf}),  # weights underflow
    (25.0, (100.0, 90.0), (40, 30), (121, 141), "correlated", {"min_mass_frac": 0.0, "prior_radius": 0.3}),  # empty regions
    (-30.0, (100.0, 90.0), (40.5, 30.25), (121, 141), None, {}),  # no prior, fractional origin
    (-30.0, (100.0, 90.0), (40, 30), (121, 141), None, {"max_radius_frac": 0.9, "window_frac": 0.1}),
    (5.0, (100.0, 90.0), (40, 30), (121, 141), "no size", {}),  # a prior but no size: no prior term, whole-quadrant window
]


@pytest.mark.parametrize("angle, centre, origin, shape, prior_kind, kwargs", LOCALIZE_CASES)
@pytest.mark.parametrize("missing", [(), (2,)])
def test_localize_corners_matches_reference(prior, angle, centre, origin, shape, prior_kind, kwargs, missing):
    size = 30.0
    pr = {"fitted": prior, "correlated": _correlated_prior(), None: None, "no size": prior}[prior_kind]
    sz = None if prior_kind == "no size" else size
    acc = _noisy_vertebra_map(shape, np.asarray(origin), centre, angle, size, seed=int(angle) % 7, missing=missing)
    ref = _localize_corners_reference(acc, centre, angle, pr, sz, origin, **kwargs)
    new = localize_corners(acc, centre, angle, pr, sz, origin, **kwargs)
    np.testing.assert_array_equal(new.used_prior, ref.used_prior)
    np.testing.assert_allclose(new.corners_px, ref.corners_px, rtol=0, atol=1e-4)  # NaN where NaN
    np.testing.assert_allclose(new.sigma_px, ref.sigma_px, rtol=1e-5)


@pytest.mark.parametrize(
    "prior_kind, angle, kwargs",
    [
        ("fitted", 20.0, {"weight_by_prior": False, "refine": False}),
        ("correlated", -35.0, {"weight_by_prior": False, "refine": False, "prior_radius": 2.5}),
        ("correlated", 60.0, {"refine": False}),
        ("fitted", 0.0, {"refine": False, "max_radius_frac": 0.7, "prior_radius": np.inf}),
    ],
)
def test_localize_corners_matches_reference_on_the_region_rim(prior, prior_kind, angle, kwargs):
    """A map that grows away from the centre: each corner's maximum sits on the rim of its search region
    (prior ellipse or radius limit), so a region box that cut the ellipse short would move it."""
    pr = prior if prior_kind == "fitted" else _correlated_prior()
    ys, xs = np.mgrid[0:121, 0:141]
    acc = np.exp(0.25 * np.hypot(xs + 40 - 100.0, ys + 30 - 90.0))
    ref = _localize_corners_reference(acc, (100.0, 90.0), angle, pr, 30.0, (40, 30), **kwargs)
    new = localize_corners(acc, (100.0, 90.0), angle, pr, 30.0, (40, 30), **kwargs)
    assert not ref.used_prior.any()
    np.testing.assert_allclose(new.corners_px, ref.corners_px, rtol=0, atol=1e-4)
    np.testing.assert_allclose(new.sigma_px, ref.sigma_px, rtol=1e-5)


@pytest.mark.parametrize("centre, prior_scale", [((20.0, 15.0), 0.3), ((30.0, 200.0), 0.15), ((150.0, 60.0), 0.05)])
def test_localize_corners_prior_weight_normalised_over_the_whole_canvas(centre, prior_scale):
    """Prior means off the canvas and a narrow prior: the weights are exp(-m2/2) over their minimum on the
    whole canvas (on its border here), where a tiny weight ratio decides between overflow and underflow."""
    pr = _correlated_prior()
    acc = _noisy_vertebra_map((90, 100), np.array([40, 30]), (85.0, 70.0), 10.0, 30.0, seed=3)
    kw = dict(prior_scale=prior_scale, prior_radius=np.inf, min_mass_frac=0.0)
    ref = _localize_corners_reference(acc, centre, 10.0, pr, 30.0, (40, 30), **kw)
    new = localize_corners(acc, centre, 10.0, pr, 30.0, (40, 30), **kw)
    np.testing.assert_allclose(new.corners_px, ref.corners_px, rtol=0, atol=1e-4)
    np.testing.assert_allclose(new.sigma_px, ref.sigma_px, rtol=1e-5)


@pytest.mark.parametrize("prior_kind", ["fitted", None])
def test_localize_corners_matches_reference_on_background_maps(prior, prior_kind):
    """All-background maps: zero, negative, NaN, a single pixel; and a map that is one constant value."""
    pr = prior if prior_kind else None
    maps = [np.zeros((60, 70)), -np.ones((60, 70)), np.full((60, 70), np.nan), np.full((60, 70), 0.3)]
    one = np.zeros((60, 70))
    one[20, 25] = 1.0
    maps.append(one)
    for acc in maps:
        ref = _localize_corners_reference(acc, (100.0, 80.0), 10.0, pr, 30.0, (65, 50))
        new = localize_corners(acc, (100.0, 80.0), 10.0, pr, 30.0, (65, 50))
        np.testing.assert_array_equal(new.used_prior, ref.used_prior)
        np.testing.assert_allclose(new.corners_px, ref.corners_px, rtol=0, atol=1e-4)
        np.testing.assert_allclose(new.sigma_px, ref.sigma_px, rtol=1e-5)


def _synthetic_radiograph(angle_step=6.0, n=4, border=False):
    corners = np.stack([rect_corners(120.0 - 25 * border, 70.0 + 38 * i, 40.0, 24.0, angle_step * (i - 1)) for i in range(n)])
    g = vertebra_geometry(corners)
    rng = np.random.default_rng(5)
    maps, affs, owner = [], [], []
    for v in range(n - 1):  # the last vertebra has no patches
        for cx, cy, side, ang in sample_patch_params(g.centre[v], g.size[v] * 0.5, (0.5, 0.5), grid=(2, 0.1),
                                                     scales=(1.6, 2.4), rotations_deg=(-10.0, 10.0), orientation_deg=g.angle_deg[v]):
            a = patch_affine(cx, cy, side, ang, 32)
            m = corner_maps(corners, None, a, 32).astype(np.float64)
            maps.append((0.7 * m + 2e-4 + 2e-5 * rng.standard_normal(m.shape)).astype(np.float32))  # residual background
            affs.append(a)
            owner.append(v)
    return corners, g, np.stack(maps), np.stack(affs), np.array(owner)


@pytest.mark.parametrize(
    "background, renormalize, border, extra",
    [
        ("mode", "max", False, {}),
        ("otsu", "max", True, {}),  # the vertebrae's canvases clipped by the image's left border
        ("mode", "sum", True, {"prior_scale": 1.5}),
        ("none", "max", False, {"weight_by_prior": False, "levels": ["C3", "C4", "C5", "C6"]}),
    ],
)
def test_corners_from_patches_matches_reference(prior, background, renormalize, border, extra):
    corners, g, maps, affs, owner = _synthetic_radiograph(border=border)
    kw = dict(background=background, renormalize=renormalize, image_shape=(220, 150) if border else None,
              return_canvases=True, spacing_mm=(0.2, 0.3), **extra)
    ref = _corners_from_patches_reference(maps, affs, owner, g.centre, g.angle_deg, g.size, prior, **kw)
    new = corners_from_patches(maps, affs, owner, g.centre, g.angle_deg, g.size, prior, **kw)
    np.testing.assert_array_equal(new.used_prior, ref.used_prior)
    np.testing.assert_allclose(new.corners_px, ref.corners_px, rtol=0, atol=1e-4)
    np.testing.assert_allclose(new.sigma_px, ref.sigma_px, rtol=1e-5)
    np.testing.assert_allclose(new.sigma_mm, ref.sigma_mm, rtol=1e-5)
    assert new.used_prior[-1].all() and new.canvases[-1] is None and ref.canvases[-1] is None
    for (cn, on), (cr, orr) in zip(new.canvases[:-1], ref.canvases[:-1]):
        assert on == orr and cn.shape == cr.shape
        np.testing.assert_allclose(cn, cr, rtol=0, atol=1e-5 * cr.max())
    assert np.all(np.linalg.norm(new.corners_px[:-1] - corners[:-1], axis=-1) <= 2.0)  # and the corners are found
