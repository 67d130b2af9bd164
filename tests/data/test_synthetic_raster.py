"""Polygon coverage and the mm-to-pixel placement of the synthetic generator."""

from __future__ import annotations

import numpy as np
import pytest

from monai_spine.data.synthetic_raster import _Placement, polygon_coverage


def test_polygon_coverage_of_a_square_is_its_area():
    # square from x, y = 10.0 to 20.0 in pixel-edge coordinates: 100 px area, edges at half pixels
    sq = np.array([[9.5, 9.5], [19.5, 9.5], [19.5, 19.5], [9.5, 19.5]])
    cov = polygon_coverage(sq, (32, 32))
    assert cov.sum() == pytest.approx(100.0, abs=6.0)
    assert cov[15, 15] == 1.0 and cov[5, 5] == 0.0 and cov[15, 25] == 0.0


@pytest.mark.parametrize(
    "spacing, offset, p_mm, expected_px, mm_px",
    [
        # x_px = x_mm / sx + ox, y_px = y_mm / sy + oy
        ((0.2, 0.25), (10.0, 20.0), (1.0, 2.0), (15.0, 28.0), 0.225),
        ((0.5, 0.5), (0.0, 0.0), (-3.0, 4.5), (-6.0, 9.0), 0.5),
        ((0.1, 0.4), (-2.5, 7.0), (0.0, 0.0), (-2.5, 7.0), 0.25),
    ],
)
def test_placement_maps_mm_to_pixels(spacing, offset, p_mm, expected_px, mm_px):
    place = _Placement(np.array(spacing), np.array(offset))
    np.testing.assert_allclose(place.to_px(np.array([p_mm, p_mm])), [expected_px, expected_px], atol=1e-12)
    assert (place.sx, place.sy) == spacing and place.mm_px == pytest.approx(mm_px, abs=1e-12)
