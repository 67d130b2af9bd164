"""Tests of monai_spine.evaluation.report_figures with hand-made numbers: the sigma_p the sigma figures show
(and their unit), the KDE data, the figures' display size and the crop box of the sample vertebrae.
The report built end to end (HTML, crops from the films) is tested in test_report.py."""

from __future__ import annotations

import numpy as np
import pytest

from monai_spine.evaluation.matching import MatchedPoints
from monai_spine.evaluation.report_figures import (
    DISPLAY_PX_PER_INCH,
    SAVE_DPI,
    crop_box,
    display_size,
    kde_curve,
    plotted_sigma,
    sigma_axis_label,
    sigma_kde_data,
)
from monai_spine.uncertainty.classes import Thresholds

NAN = float("nan")
TYPES = np.array(["corner"] * 4 + ["spinous_process"])
#: a regressor's sigma_p (both units), the corner FCN's (mm only; its spinous process has none) and the
#: corner FCN's on a film of unknown spacing (none in frac or mm: its px sigma is not in the matched points)
REGRESSOR = (np.array([0.01, 0.02, 0.03, 0.04, 0.05]), np.array([0.2, 0.4, 0.6, 0.8, 1.0]))
CORNER_FCN = (np.full(5, NAN), np.array([0.5, 0.7, 0.9, 1.1, NAN]))
CORNER_FCN_NO_SPACING = (np.full(5, NAN), np.full(5, NAN))


def _points(sigma_frac, sigma_mm, types=TYPES):
    n = len(types)
    return MatchedPoints(errors=np.linspace(0.1, 1.0, n), sigma_frac=np.asarray(sigma_frac, float),
                         sigma_mm=np.asarray(sigma_mm, float), point_types=np.asarray(types),
                         point_names=np.array(["AS"] * n), levels=np.array(["C3"] * n), cases=np.array(["a"] * n),
                         error_unit="mm")


@pytest.mark.parametrize("sigmas, thr_units, unit", [
    (REGRESSOR, "frac", "frac"),  # the thresholds' units: tau1 / tau2 on the same axis
    (REGRESSOR, "mm", "mm"),
    (REGRESSOR, None, "frac"),  # no thresholds: crop fraction first
    (CORNER_FCN, "mm", "mm"),
    (CORNER_FCN, "frac", "mm"),  # the paper's thresholds (frac) over the corner FCN: its mm, not an empty axis
    (CORNER_FCN, None, "mm"),
    (CORNER_FCN_NO_SPACING, "mm", "mm"),  # nothing finite anywhere: the thresholds' units, all NaN
    ((REGRESSOR[0], np.full(5, NAN)), "mm", "frac"),  # regressor, spacing unknown: its crop fractions
])
def test_plotted_sigma_picks_a_unit_the_model_has(sigmas, thr_units, unit):
    thr = None if thr_units is None else Thresholds(0.1, 0.2, units=thr_units)
    sigma, got = plotted_sigma(_points(*sigmas), thr)
    assert got == unit
    expected = sigmas[0] if unit == "frac" else sigmas[1]
    np.testing.assert_array_equal(sigma, expected)


@pytest.mark.parametrize("unit, label", [("frac", "sigma_p (crop fraction)"), ("mm", "sigma_p (mm)")])
def test_sigma_axis_label(unit, label):
    assert sigma_axis_label(unit) == label


@pytest.mark.parametrize("sigmas, thr_units, unit, corner, spinous", [
    (REGRESSOR, "frac", "frac", [0.01, 0.02, 0.03, 0.04], [0.05]),
    (REGRESSOR, "mm", "mm", [0.2, 0.4, 0.6, 0.8], [1.0]),
    (CORNER_FCN, "mm", "mm", [0.5, 0.7, 0.9, 1.1], []),  # the corner FCN: data in mm, no spinous process
    (CORNER_FCN, "frac", "mm", [0.5, 0.7, 0.9, 1.1], []),
    (CORNER_FCN_NO_SPACING, "mm", "mm", [], []),
])
def test_sigma_kde_data(sigmas, thr_units, unit, corner, spinous):
    got_unit, by_type = sigma_kde_data(_points(*sigmas), Thresholds(0.1, 0.2, units=thr_units))
    assert got_unit == unit and list(by_type) == ["corner", "spinous_process"]
    np.testing.assert_array_equal(by_type["corner"], corner)
    np.testing.assert_array_equal(by_type["spinous_process"], spinous)


@pytest.mark.parametrize("values", [[], [0.3], [0.3, 0.3, 0.3], [NAN, 0.3, np.inf]])
def test_kde_curve_needs_two_distinct_values(values):
    assert kde_curve(np.asarray(values, float)) is None


def test_kde_curve_by_hand():
    # values 0 and 1: Scott's factor 2 ** -0.2, kernel variance 0.5 * 2 ** -0.4 = 0.378929 (sd 0.615572);
    # the grid reaches 3 sd beyond both values; at 0.5 (the middle of 301 points) the density is
    # phi(0.5 / sd) / sd = exp(-0.5 * 0.812252 ** 2) / (sqrt(2 pi) * 0.615572) = 0.465980
    xs, density = kde_curve(np.array([0.0, 1.0]), n_grid=301)
    assert xs.shape == density.shape == (301,)
    assert xs[0] == pytest.approx(-3 * 0.615572, abs=1e-5) and xs[-1] == pytest.approx(1 + 3 * 0.615572, abs=1e-5)
    assert xs[150] == pytest.approx(0.5) and density[150] == pytest.approx(0.465980, abs=1e-5)


def _panels(tmp_path, monkeypatch, points, thr_units):
    """Run the report's figures for one model ``m``; return ``({file name: figure}, {file name: axes})``
    (the figures kept open, not saved)."""
    from monai_spine.evaluation import report_figures

    figs = {}

    def keep(fig, path):
        figs[path.name] = fig
        return path.name

    monkeypatch.setattr(report_figures, "_save", keep)
    report_figures._figures({"m": points}, tmp_path, "mm", None, {"m": Thresholds(0.6, 0.9, units=thr_units)})
    return figs, {name: fig.axes for name, fig in figs.items()}


def _close(figs):
    import matplotlib.pyplot as plt

    for fig in figs.values():
        plt.close(fig)


def _texts(ax):
    return [t.get_text() for t in ax.texts]


def _legend_texts(ax):
    return [t.get_text() for t in ax.get_legend().get_texts()]


def test_kde_panel_of_the_corner_fcn_has_its_mm_curve(tmp_path, monkeypatch):
    """The bug: the corner FCN's KDE panel was empty under a crop-fraction axis while the 2D histogram beside
    it showed its sigma_p in mm."""
    figs, axes = _panels(tmp_path, monkeypatch, _points(*CORNER_FCN), "mm")
    try:
        kde, hexbin = axes["kde_sigma.png"][0], axes["error_vs_sigma.png"][0]
        assert kde.get_xlabel() == "sigma_p (mm)" == hexbin.get_ylabel()
        curves = [ln for ln in kde.lines if ln.get_linestyle() == "-" and len(ln.get_xdata()) > 10]
        assert len(curves) == 1  # the corners' KDE (the corner FCN has no spinous process)
        x, y = curves[0].get_xdata(), curves[0].get_ydata()
        assert x.min() < 0.5 and x.max() > 1.1 and y.max() > 0.5  # over the mm values, a real density
        assert "spinous_process: no data" in _legend_texts(kde)
        rug = [ln for ln in kde.lines if ln.get_marker() == "|"]
        np.testing.assert_allclose(rug[0].get_xdata(), [0.5, 0.7, 0.9, 1.1])
    finally:
        _close(figs)


@pytest.mark.parametrize("sigma_mm, expected", [
    ([0.8, 0.8, 0.8, 0.8, NAN], "line"),  # one distinct value: a vertical line at it, not nothing
    ([0.8, NAN, NAN, NAN, NAN], "line"),
    ([NAN] * 5, "no data"),  # nothing finite (e.g. spacing unknown): said in the panel
])
def test_kde_panel_without_a_density(sigma_mm, expected, tmp_path, monkeypatch):
    figs, axes = _panels(tmp_path, monkeypatch, _points(np.full(5, NAN), sigma_mm), "mm")
    try:
        kde = axes["kde_sigma.png"][0]
        if expected == "line":
            vertical = [ln for ln in kde.lines if list(ln.get_xdata()) == [0.8, 0.8]]
            assert len(vertical) == 1
            assert "corner (n=" in kde.get_legend().get_texts()[0].get_text()
        else:
            assert any(t.startswith("no data") for t in _texts(kde))
            assert any(t.startswith("no data") for t in _texts(axes["error_vs_sigma.png"][0]))
        assert kde.get_xlabel() == "sigma_p (mm)"
    finally:
        _close(figs)


def test_hexbin_says_when_the_thresholds_are_in_another_unit(tmp_path, monkeypatch):
    figs, axes = _panels(tmp_path, monkeypatch, _points(*CORNER_FCN), "frac")
    try:
        hexbin = axes["error_vs_sigma.png"][0]
        assert hexbin.get_ylabel() == "sigma_p (mm)"
        assert "thresholds in frac: not drawn" in _legend_texts(hexbin)
        assert not [ln for ln in hexbin.lines if ln.get_linestyle() in ("--", ":")]  # no tau line on the mm axis
    finally:
        _close(figs)


@pytest.mark.parametrize("figsize, png_px, shown_px", [
    ((5, 3.5), (1000, 700), (500, 350)),  # SAVE_DPI 200, shown at 100 CSS px per inch
    ((8, 3.5), (1600, 700), (800, 350)),
])
def test_figures_are_shown_at_their_saved_size(figsize, png_px, shown_px, tmp_path):
    import cv2

    from monai_spine.evaluation.report_figures import _plt, _save

    assert (SAVE_DPI, DISPLAY_PX_PER_INCH) == (200, 100)
    fig, ax = _plt().subplots(figsize=figsize)
    ax.plot([0, 1], [0, 1])
    path = tmp_path / "f.png"
    _save(fig, path)
    h, w = cv2.imread(str(path)).shape[:2]
    assert (w, h) == png_px
    assert display_size(path) == shown_px


def test_display_size_names_a_file_that_is_no_png(tmp_path):
    bad = tmp_path / "x.png"
    bad.write_bytes(b"GIF89a" + bytes(30))
    with pytest.raises(ValueError, match="x.png"):
        display_size(bad)


@pytest.mark.parametrize("xy, shape_hw, box", [
    # extent 10 px, pad 0.6 * 10 = 6: x 20-30 -> 14..37 (exclusive), y 40-45 -> 34..52
    ([[20, 40], [30, 45]], (100, 100), (14, 34, 37, 52)),
    # near the top-left corner: clipped at 0
    ([[2, 3], [12, 8]], (100, 100), (0, 0, 19, 15)),
    # small extent counts as 8 px (pad 4.8), clipped at the far edges (W 52, H 50)
    ([[50, 48], [51, 49]], (50, 52), (45, 43, 52, 50)),
    # rows with a NaN are left out
    ([[20, 40], [np.nan, 0], [30, 45]], (100, 100), (14, 34, 37, 52)),
    ([[np.nan, np.nan]], (100, 100), None),
])
def test_crop_box_by_hand(xy, shape_hw, box):
    assert crop_box(np.asarray(xy, float), shape_hw) == box
