"""The spine strip: geometry round trips, the heatmap target, and the level decoding's hand-built cases."""

import numpy as np
import pytest

from monai_spine.codecs.spine_strip import SpineStrip, decode_strip_levels, encode_strip_heatmap

LEVELS = 17
PROFILE = np.ones(LEVELS - 1)


def _straight(n=5, x=100.0, y0=100.0, dy=40.0):
    return np.c_[np.full(n, x), y0 + dy * np.arange(n)]


def _curved(n=LEVELS, dy=30.0):
    y = 200.0 + dy * np.arange(n)
    return np.c_[300.0 + 60.0 * np.sin((y - 200.0) / 250.0), y]


def test_straight_strip_geometry_by_hand():
    # 5 centres 40 px apart: span 160 px, 2.5 steps (100 px) above and below -> 360 px over 361 rows: 1 px a row
    s = SpineStrip.from_centres(_straight(), rows=361, width=21, ext_levels=(2.5, 2.5), smooth_levels=0.6)
    assert s.step_px == pytest.approx(1.0)
    np.testing.assert_allclose(s.points_px[:, 0], 100.0, atol=1e-9)
    np.testing.assert_allclose(s.points_px[[0, 100, 360], 1], [0.0, 100.0, 360.0], atol=1e-6)
    # columns grow with x on a spine running down the film; column 10 is the middle
    np.testing.assert_allclose(s.to_image([[100.0, 10.0], [100.0, 15.0]]), [[100.0, 100.0], [105.0, 100.0]], atol=1e-9)


@pytest.mark.parametrize("centres", [_straight(), _curved()], ids=["straight", "curved"])
def test_strip_to_image_round_trip(centres):
    s = SpineStrip.from_centres(centres, rows=400, width=48)
    rc = np.c_[np.linspace(20, 380, 9), np.linspace(10, 38, 9)]
    np.testing.assert_allclose(s.to_strip(s.to_image(rc)), rc, atol=0.05)


def test_to_strip_keeps_nan_rows():
    s = SpineStrip.from_centres(_straight(), rows=100, width=16)
    out = s.to_strip([[np.nan, 1.0], [100.0, 200.0]])
    assert np.isnan(out[0]).all() and np.isfinite(out[1]).all()


def test_sample_reads_the_film_along_the_strip():
    film = np.tile(np.arange(400, dtype=np.float32), (500, 1))  # value = x
    s = SpineStrip.from_centres(_straight(), rows=361, width=21)
    strip = s.sample(film[None])
    assert strip.shape == (361, 21)
    np.testing.assert_allclose(strip[50:300, 10], 100.0, atol=1e-3)
    np.testing.assert_allclose(strip[50:300, 15], 105.0, atol=1e-3)


def test_sample_shrinks_a_fine_film_without_moving_it():
    film = np.tile(np.arange(2000, dtype=np.float32), (3000, 1))
    c = np.c_[np.full(5, 1000.0), 1000.0 + 200.0 * np.arange(5)]
    s = SpineStrip.from_centres(c, rows=101, width=21)  # 1800 px over 100 rows: 18 film px a row, shrunk 9x
    np.testing.assert_allclose(s.sample(film)[20:80, 10], 1000.0, atol=0.6)


@pytest.mark.parametrize("bad, match", [(np.zeros((1, 2)), "two finite"), (np.zeros((3, 3)), r"\(L, 2\)"),
                                         (np.array([[0.0, 0.0], [0.0, 0.0], [0.0, 5.0]]), "coincide")])
def test_from_centres_rejects(bad, match):
    with pytest.raises(ValueError, match=match):
        SpineStrip.from_centres(bad)


def test_encode_peak_and_gaussian_by_hand():
    t = encode_strip_heatmap([[10.0, 5.0], [np.nan, 1.0], [500.0, 5.0]], (40, 11), sigma_px=2.0)
    assert t.shape == (40, 11) and t[10, 5] == 1.0 and (t == 1.0).sum() == 1
    assert t[11, 5] == pytest.approx(np.exp(-1 / 8), rel=1e-6)
    assert t[10, 7] == pytest.approx(np.exp(-4 / 8), rel=1e-6)


def _film_strip_and_heat(centres, drop=(), extra_rows=(), rows=768, width=64):
    strip = SpineStrip.from_centres(centres, rows=rows, width=width)
    rc = strip.to_strip(centres)
    keep = [k for k in range(len(centres)) if k not in drop]
    pts = np.vstack([rc[keep], [[r, (width - 1) / 2] for r in extra_rows]]) if extra_rows else rc[keep]
    heat = encode_strip_heatmap(pts, strip.shape, 2.5) * 0.9
    return strip, rc, heat


@pytest.mark.parametrize("centres", [_straight(LEVELS, 300.0, 200.0, 30.0), _curved()], ids=["straight", "curved"])
def test_decode_finds_every_encoded_level(centres):
    strip, _, heat = _film_strip_and_heat(centres)
    out, scores = decode_strip_levels(heat, strip, PROFILE, spacing_px=30.0)
    np.testing.assert_allclose(out, centres, atol=0.6 * strip.step_px)
    np.testing.assert_allclose(scores, 0.9, atol=0.02)


def test_decode_places_a_missing_vertebra_between_its_neighbours():
    centres = _straight(LEVELS, 300.0, 200.0, 30.0)
    strip, _, heat = _film_strip_and_heat(centres, drop=(8,))
    out, scores = decode_strip_levels(heat, strip, PROFILE, spacing_px=30.0)
    assert abs(out[8, 1] - centres[8, 1]) < 0.25 * 30.0
    np.testing.assert_allclose(np.delete(out, 8, 0), np.delete(centres, 8, 0), atol=0.6 * strip.step_px)
    assert scores[8] < 0.1 < scores[7]


def test_decode_ignores_a_peak_on_a_disc():
    centres = _straight(LEVELS, 300.0, 200.0, 30.0)
    strip, rc, _ = _film_strip_and_heat(centres)
    _, _, heat = _film_strip_and_heat(centres, extra_rows=(0.5 * (rc[5, 0] + rc[6, 0]),))
    out, _ = decode_strip_levels(heat, strip, PROFILE, spacing_px=30.0)
    np.testing.assert_allclose(out, centres, atol=0.6 * strip.step_px)


def test_decode_film_cut_at_the_top_uses_the_height_prior():
    # the film starts at T3: the strip sees 15 peaks; the level heights on the film say where T3 is
    centres = _straight(LEVELS, 300.0, 10.0, 30.0)
    strip, _, heat = _film_strip_and_heat(centres, drop=(0, 1))
    height = 10.0 + 30.0 * 16 + 10.0
    y_frac = centres[:, 1] / height
    out, scores = decode_strip_levels(heat, strip, PROFILE, spacing_px=30.0, level_y_frac=y_frac,
                                      film_height_px=height)
    np.testing.assert_allclose(out[2:], centres[2:], atol=0.6 * strip.step_px)
    assert (scores[:2] < 0.1).all()


def test_decode_rejects_a_heat_of_another_shape():
    strip = SpineStrip.from_centres(_straight(), rows=100, width=16)
    with pytest.raises(ValueError, match=r"heat must be \(100, 16\)"):
        decode_strip_levels(np.zeros((100, 15)), strip, PROFILE, spacing_px=40.0)


def test_encode_levels_by_hand():
    from monai_spine.codecs.spine_strip import encode_strip_levels

    level, mask = encode_strip_levels([10.0, np.nan, 30.0, 40.0], 50)
    assert (mask == 1).all()
    # between levels 0 and 2 (rows 10, 30): 0.1 level a row; above with that slope, below with 0.1 as well
    np.testing.assert_allclose(level[[0, 10, 20, 30, 35, 40, 49]], [-1.0, 0.0, 1.0, 2.0, 2.5, 3.0, 3.9], atol=1e-6)
    level, mask = encode_strip_levels([10.0, np.nan, np.nan], 20)
    assert (mask == 0).all()
    with pytest.raises(ValueError, match="increase with the level"):
        encode_strip_levels([30.0, 10.0], 50)


def test_decode_level_reading_corrects_a_shifted_chain():
    """An extra peak (S1) below L5 and a faint T1: the heat alone slides the chain down a level, the
    network's level reading (one level per 30 px) puts it back."""
    centres = _straight(LEVELS, 300.0, 200.0, 30.0)
    strip, rc, _ = _film_strip_and_heat(centres)
    s1_row = rc[-1, 0] + (rc[-1, 0] - rc[-2, 0])
    _, _, heat = _film_strip_and_heat(centres, drop=(0,), extra_rows=(s1_row,))
    shifted, _ = decode_strip_levels(heat, strip, PROFILE, spacing_px=30.0)
    assert np.allclose(shifted[0], centres[1], atol=2.0)  # T1 placed on T2: the whole chain one level down
    from monai_spine.codecs.spine_strip import encode_strip_levels

    level, _ = encode_strip_levels(rc[:, 0], strip.rows)
    # a level off by one everywhere costs 17 x 2 = 34, more than T1 without a peak (3 x -ln 1e-3 = 20.7)
    out, _ = decode_strip_levels(heat, strip, PROFILE, spacing_px=30.0, level_rows=level, level_weight=2.0)
    np.testing.assert_allclose(out[1:], centres[1:], atol=0.6 * strip.step_px)
    assert abs(out[0, 1] - centres[0, 1]) < 0.25 * 30.0
