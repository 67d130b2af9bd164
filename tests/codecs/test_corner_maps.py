"""The corner-map codec: the encoder's maps, training patches, corners -> maps -> corners round trips,
a duck-typed prior, bad inputs.

Round trip: the corners of a column of rectangular vertebrae are encoded (:func:`corner_maps`) into the
maps of the patches the project samples around each vertebra (:func:`patch_params`, the grid the
training transforms and the predictor use), and decoded (:func:`accumulate_patches` into a canvas
per vertebra, :func:`localize_corners` per quadrant).

Tolerance, by hand. The decoder returns whole image pixels (canvas pixels at integer image
coordinates), so the best it can do is the pixel nearest to the corner: at most sqrt(2) / 2 = 0.71 px
away (half a pixel along each axis). The canvas is a sum of Gaussians centred on the corner, so its
highest pixel is the one nearest to the corner in the Gaussian's Mahalanobis distance. With
``sigma_along_frac * width == sigma_across_frac * height`` the Gaussian is isotropic in the image and
that is the Euclidean-nearest pixel: tolerance 0.71 px. With the default factors (0.1 of the width
along the endplate, 0.06 of the height across it) the Gaussian is elongated by
``r = (0.1 * 40) / (0.06 * 24) = 2.78``, and a pixel at most 0.71 px across the ellipse's axes can win
from up to ``0.71 * r = 1.96`` px along its major axis: tolerance 1.96 px.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from monai_spine.codecs.corner_maps import (
    accumulate_patches,
    corner_covariances,
    corner_maps,
    localize_corners,
    make_training_patches,
    quadrant_masks,
)
from monai_spine.data.patches import (
    UnknownSpacingWarning,
    map_points_to_patch,
    patch_affine,
    patch_footprint,
    patch_params,
    vertebra_geometry,
)

#: vertebra width and height (px) at scale 1, and the centre-to-centre step of the column
W, H, STEP = 40.0, 24.0, 40.0
#: the nearest-pixel bound (px)
HALF_DIAGONAL = np.sqrt(2.0) / 2.0
#: sigma factors giving an isotropic image Gaussian: 0.06 * 40 = 0.1 * 24 = 2.4 px at scale 1
ISOTROPIC = dict(sigma_along_frac=0.06, sigma_across_frac=0.1)
#: search radius (fraction of the size 32 px): the vertebra's own corners lie sqrt(20^2 + 12^2) / 32 =
#: 0.73 from its centre, the neighbours' nearest ones sqrt(20^2 + 28^2) / 32 = 1.08
RADIUS_FRAC = 0.9


def rect_corners(cx, cy, w, h, angle_deg):
    """(4, 2) corners TL, TR, BL, BR of a w x h rectangle turned by angle (image frame, y down)."""
    a = np.radians(angle_deg)
    r = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    local = np.array([[-w / 2, -h / 2], [w / 2, -h / 2], [-w / 2, h / 2], [w / 2, h / 2]])
    return local @ r.T + [cx, cy]


def spine(n=3, w=40.0, h=28.0, angle=0.0, x=100.0, y0=60.0, step=40.0, k=5):
    """(n, k, 2) keypoints of a column of rectangles (lateral5: SP point to the right)."""
    out = []
    for i in range(n):
        c = rect_corners(x, y0 + i * step, w, h, angle)
        if k == 5:
            c = np.vstack([c, c.mean(0) + [w, 0]])
        out.append(c)
    return np.asarray(out)


def column(n, angle_deg, scale, centre=(150.3, 140.6)):
    """(n, 4, 2) corners of ``n`` vertebrae turned by ``angle_deg``, stacked along the turned vertical;
    the centre is off the pixel grid so the corners are too."""
    a = np.radians(angle_deg)
    down = np.array([-np.sin(a), np.cos(a)])
    offsets = (np.arange(n) - (n - 1) / 2) * STEP * scale
    return np.stack([rect_corners(*(np.asarray(centre) + d * down), W * scale, H * scale, angle_deg) for d in offsets])


# ----------------------------------------------------------------------------- encoder
def _principal_angle(cov):
    evals, evecs = np.linalg.eigh(cov)
    v = evecs[:, -1]
    return np.degrees(np.arctan2(v[1], v[0])) % 180, evals[-1] / evals[0]


@pytest.mark.parametrize("tilt", [0.0, 20.0, -35.0])
def test_corner_covariance_axis_follows_tilt(tilt):
    cov = corner_covariances(rect_corners(0, 0, 50, 30, tilt)[None], 0.1, 0.06)[0]
    ang, ratio = _principal_angle(cov)
    assert ang == pytest.approx(tilt % 180, abs=1e-6) or ang == pytest.approx(tilt % 180 - 180, abs=1e-6)
    assert ratio == pytest.approx((0.1 * 50) ** 2 / (0.06 * 30) ** 2)


@pytest.mark.parametrize("tilt, patch_angle", [(20.0, 0.0), (20.0, 10.0), (-30.0, 0.0), (0.0, -15.0)])
def test_corner_map_peak_and_orientation(tilt, patch_angle):
    """A patch around one corner: the map peaks at the corner and spreads along the endplate."""
    corners = rect_corners(100.0, 100.0, 60.0, 40.0, tilt)
    kp = corners[None]
    tl = corners[0]
    side = 40.0
    a = patch_affine(tl[0], tl[1], side, patch_angle, 64)  # the other corners are >= 40 px away
    m = corner_maps(kp, None, a, 64, sigma_along_frac=0.1, sigma_across_frac=0.06)
    assert m.dtype == np.float32 and m.shape == (64, 64)
    assert m.sum() == pytest.approx(1.0, abs=1e-5) and m.min() >= 0
    v, u = np.unravel_index(np.argmax(m), m.shape)
    q = map_points_to_patch(tl, a)
    assert np.hypot(u - q[0], v - q[1]) <= 1.0
    uu, vv = np.meshgrid(np.arange(64.0), np.arange(64.0))
    du, dv = uu - q[0], vv - q[1]
    cov = np.array([[np.sum(m * du * du), np.sum(m * du * dv)], [np.sum(m * du * dv), np.sum(m * dv * dv)]])
    ang, ratio = _principal_angle(cov)
    expected = (tilt - patch_angle) % 180
    diff = min(abs(ang - expected), 180 - abs(ang - expected))
    assert diff < 2.0
    assert ratio > 2.0  # clearly elongated along the endplate


def test_corner_map_only_visible_corners_inside():
    corners = rect_corners(32.0, 32.0, 30.0, 20.0, 0.0)
    a = patch_affine(31.5, 31.5, 64, 0, 64)  # identity: patch px = image px
    vis = np.array([[False, True, True, True]])
    m = corner_maps(corners[None], vis, a, 64)
    for k, c in enumerate(corners):
        local = m[int(c[1]) - 2 : int(c[1]) + 3, int(c[0]) - 2 : int(c[0]) + 3].sum()
        assert (local < 1e-6) if k == 0 else (local > 0.1)
    assert m.sum() == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("empty, value", [("uniform", 1 / 64**2), ("zeros", 0.0)])
def test_corner_map_empty_patch(empty, value):
    kp = spine(2)
    far = patch_affine(900, 900, 50, 0, 64)
    m = corner_maps(kp, None, far, 64, empty=empty)
    assert np.allclose(m, value) and np.all(np.isfinite(m))


def test_corner_map_includes_neighbouring_vertebrae():
    kp = spine(3, step=40)
    g = vertebra_geometry(kp[:, :4])
    a = patch_affine(*g.centre[1], 120.0, 0.0, 64)  # covers the whole middle vertebra and adjacent endplates
    m = corner_maps(kp, None, a, 64)
    inside = 0
    for c in kp[:, :4].reshape(-1, 2):
        q = map_points_to_patch(c, a)
        if np.all((q >= 0) & (q <= 63)):
            inside += 1
            iu, iv = int(round(q[0])), int(round(q[1]))
            assert m[iv, iu] > 0.5 * m.max() / 2  # a blob at every inside corner
    assert inside == 12  # 4 of the middle vertebra + 4 of each neighbour


@pytest.mark.parametrize("scheme, k", [("lateral5", 5), ("ap4", 4)])
def test_make_training_patches(scheme, k):
    kp = spine(3, w=40, h=28, angle=8.0, x=120, y0=80, step=40, k=k)
    vis = np.ones(kp.shape[:2], bool)
    vis[2, :] = False  # an unannotated vertebra still gets patches when its coordinates are finite
    kp[1] = np.nan  # no coordinates: no patches for vertebra 1
    rng = np.random.default_rng(0)
    img = rng.normal(size=(220, 240)).astype(np.float32)
    out = make_training_patches(img, kp, vis, (0.2, 0.2), scheme=scheme, grid=(2, 0.1), scales=(2.0,), rotations_deg=(0.0, 5.0))
    n = 2 * 2 * 1 * 2
    assert out.patches.shape == (2 * n, 64, 64) and out.targets.shape == (2 * n, 64, 64)
    assert out.affines.shape == (2 * n, 3, 3)
    assert list(out.vertebra_index) == [0] * n + [2] * n
    assert np.allclose(out.targets.reshape(2 * n, -1).sum(1), 1, atol=1e-5)
    assert np.allclose(out.patches.mean((1, 2)), 0, atol=1e-4)
    # patch sides: scale 2 x size (34 px) and aligned with the vertebra (8 deg)
    fp = patch_footprint(out.affines[0])
    assert np.linalg.norm(fp[1] - fp[0]) == pytest.approx(68.0)
    # vertebra 0 is visible: its corners get mass; vertebra 2 is not: its patches are uniform or
    # hold only vertebra 0's corners
    q = map_points_to_patch(kp[0, 0], out.affines[0])
    v, u = int(round(q[1])), int(round(q[0]))
    assert out.targets[0, v, u] > 10 / 64**2


def test_make_training_patches_unknown_spacing_warns_and_empty():
    kp = spine(1)
    img = np.zeros((200, 200), np.float32)
    with pytest.warns(UnknownSpacingWarning):
        out = make_training_patches(img, kp, None, None, grid=(1, 0.0), scales=(2.0,), rotations_deg=(0.0,))
    assert out.patches.shape == (1, 64, 64)
    assert np.linalg.norm(np.diff(patch_footprint(out.affines[0])[:2], axis=0)) == pytest.approx(2 * 34.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        none = make_training_patches(img, np.full((1, 5, 2), np.nan), None, (1.0, 1.0))
    assert none.patches.shape == (0, 64, 64) and none.affines.shape == (0, 3, 3)
    with pytest.raises(ValueError, match="expected 5 points"):
        make_training_patches(img, np.zeros((1, 4, 2)), None, (1.0, 1.0), scheme="lateral5")


# ----------------------------------------------------------------------------- round trips
def round_trip(corners, out_size, prior=None, visible=None, **sigmas):
    """Encode ``corners (N, 4, 2)`` into the patch maps of every vertebra, decode each vertebra's corners.

    Returns ``(corners_px (N, 4, 2), sigma_px (N, 4), used_prior (N, 4))`` and the geometry."""
    g = vertebra_geometry(corners)
    affines, owner = patch_params(g.centre, g.angle_deg, g.size, out_size=out_size)
    maps = np.stack([corner_maps(corners, visible, a, out_size, **sigmas) for a in affines])
    out = []
    for v in range(len(corners)):
        sel = owner == v
        fp = np.concatenate([patch_footprint(a, out_size) for a in affines[sel]])
        x0, y0 = np.floor(fp.min(axis=0)).astype(int) - 1
        x1, y1 = np.ceil(fp.max(axis=0)).astype(int) + 2
        canvas = accumulate_patches(maps[sel], affines[sel], (x0, y0), (y1 - y0, x1 - x0))
        out.append(localize_corners(canvas, g.centre[v], g.angle_deg[v], prior, g.size[v], (x0, y0),
                                    max_radius_frac=RADIUS_FRAC))
    return tuple(np.stack(x) for x in zip(*out)), g


ROUND_TRIP_CASES = [
    # (angle_deg, scale, out_size, vertebrae)
    (0.0, 1.0, 64, 1),
    (15.0, 1.0, 64, 3),
    (-30.0, 0.5, 32, 3),  # small vertebrae (20 x 12 px), patches of 26-38 px resampled to 32
    (37.0, 2.5, 64, 3),  # large vertebrae (100 x 60 px), patches of 128-192 px shrunk to 64
    (90.0, 2.5, 32, 1),
    (180.0, 0.5, 64, 3),  # upside down: the quadrants turn with the vertebra
]


@pytest.mark.parametrize("angle, scale, out_size, n", ROUND_TRIP_CASES)
def test_round_trip_isotropic_recovers_the_nearest_pixel(angle, scale, out_size, n):
    corners = column(n, angle, scale)
    (found, sigma, used), _ = round_trip(corners, out_size, **ISOTROPIC)
    err = np.linalg.norm(found - corners, axis=-1)
    assert err.max() <= HALF_DIAGONAL
    assert not used.any()
    # sigma_px: the target's own std s = 2.4 * scale, measured within a window of 0.2 * size = 2.67 s,
    # which keeps sqrt(1 - 3.56 e^-3.56 / (1 - e^-3.56)) = 0.947 of it; the pixel boxes (1/12 px^2 of the
    # canvas, 1/12 of a patch pixel^2) and the bilinear warp (1/6 of a patch pixel^2) widen it
    s = 2.4 * scale
    patch_px = 2.4 * (W + H) / 2 * scale / out_size  # the largest patch pixel in image px (scale 2.4)
    hi = np.sqrt(s**2 + 1 / 12 + patch_px**2 * (1 / 12 + 1 / 6))
    assert np.all(sigma >= 0.94 * s) and np.all(sigma <= hi)


@pytest.mark.parametrize("angle, scale, out_size, n", ROUND_TRIP_CASES)
def test_round_trip_default_sigmas_within_the_elongated_bound(angle, scale, out_size, n):
    corners = column(n, angle, scale)
    (found, _, used), _ = round_trip(corners, out_size)  # sigma_along_frac=0.1, sigma_across_frac=0.06
    ratio = (0.1 * W) / (0.06 * H)
    assert np.linalg.norm(found - corners, axis=-1).max() <= HALF_DIAGONAL * ratio
    assert not used.any()


class OffsetPrior:
    """A prior with the methods the decoder reads (no import of monai_spine.inference): every corner of
    a ``W x H`` rectangle, its mean shifted by ``shift_px`` in the vertebra frame, std ``sd_frac * size``."""

    def __init__(self, shift_px, size_px, sd_frac=0.1):
        q = rect_corners(0.0, 0.0, W, H, 0.0) + shift_px
        self.mean = q / size_px
        self.cov = np.tile(sd_frac**2 * np.eye(2), (4, 1, 1))

    def params(self, level=None):
        return self.mean, self.cov

    def mean_px(self, centre_px, orientation_deg, size_px, level=None):
        a = np.radians(orientation_deg)
        r = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
        return self.mean * size_px @ r.T + np.asarray(centre_px)

    def sigma_px(self, size_px, level=None):
        return np.sqrt(np.trace(self.cov, axis1=1, axis2=2) / 2.0) * size_px


def test_round_trip_with_a_duck_typed_prior_and_an_invisible_corner():
    """The prior picks each peak but the ascent ends on the map's own maximum, 3-4 px from the prior mean;
    a corner that is not visible gets no Gaussian, so the decoder falls back to the prior mean."""
    corners = column(3, 12.0, 1.0)
    prior = OffsetPrior(shift_px=(3.0, -2.0), size_px=(W + H) / 2)
    visible = np.ones((3, 4), bool)
    visible[1, 2] = False  # the middle vertebra's bottom-left corner
    (found, sigma, used), g = round_trip(corners, 64, prior=prior, visible=visible, **ISOTROPIC)
    assert used[1, 2] and used.sum() == 1
    np.testing.assert_allclose(found[1, 2], prior.mean_px(g.centre[1], g.angle_deg[1], g.size[1])[2])
    assert sigma[1, 2] == pytest.approx(0.1 * g.size[1])
    err = np.linalg.norm(found - corners, axis=-1)
    assert np.all(err[~used] <= HALF_DIAGONAL)


@pytest.mark.parametrize("angle", [0.0, 30.0, -120.0])
def test_quadrants_hold_their_corners(angle):
    corners = rect_corners(40.0, 35.0, W, H, angle)
    masks = quadrant_masks((80, 90), (40.0, 35.0), angle)
    for k, (x, y) in enumerate(np.round(corners).astype(int)):
        assert masks[:, y, x].tolist() == [j == k for j in range(4)]


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: corner_maps(np.zeros((1, 4, 2)), None, np.eye(3), 8, corner_indices=(0, 1, 2)), "corner_indices"),
        (lambda: corner_maps(np.zeros((1, 5, 2)), None, np.eye(3), 8, corner_indices=(0, 1, 2, 5)), "corner_indices"),
        (lambda: corner_maps(np.zeros((1, 4, 2)), None, np.eye(3), 8, empty="nan"), "empty"),
        (lambda: corner_maps(np.zeros((1, 4, 2)), None, np.eye(2), 8), "affine"),
        (lambda: accumulate_patches(np.zeros((2, 8, 8)), np.stack([np.eye(3)] * 3), (0, 0), (10, 10)), "affines"),
        (lambda: localize_corners(np.zeros((2, 8, 8)), (4.0, 4.0), 0.0, None), "accumulated_map"),
        (lambda: localize_corners(np.zeros((8, 8)), (4.0, 4.0), 0.0, None, size_px=0.0), "size_px"),
    ],
)
def test_bad_inputs_raise_naming_the_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call()
