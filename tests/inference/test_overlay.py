"""Overlay pictures: legend from the layers' colours, scale bar in mm, legend placed away from the points."""

from __future__ import annotations

import numpy as np
import pytest

from monai_spine.inference.overlay import draw_legend, draw_scale_bar, legend_entries, write_overlay
from monai_spine.uncertainty.classes import class_colours

KP = np.array([[[10.0, 10.0], [20.0, 10.0], [10.0, 20.0], [20.0, 20.0], [30.0, 15.0]]])


@pytest.mark.parametrize("layers, expected", [
    ([dict(keypoints_px=KP, colors_rgb=(0, 255, 0))], ["ground truth"]),
    ([dict(keypoints_px=KP, colors_rgb=class_colours(np.array([[0, 0, 2, 2, -1]])))],
     ["prediction: certain", "prediction: highly uncertain", "prediction: uncertainty unknown"]),
    ([dict(keypoints_px=KP[:, :4], colors_rgb=(0, 255, 255), labels=["C5?"])],
     ["heatmap corners", "C5? : level inferred, not seen"]),
    ([dict(keypoints_px=KP, colors_rgb=class_colours(np.zeros((1, 5), int)), radii_px=np.full((1, 5), 3.0))],
     ["prediction: certain", "ring: conformal radius"]),
    # a point without coordinates adds no colour; an unknown colour is not named
    ([dict(keypoints_px=np.array([[[np.nan, np.nan]]]), colors_rgb=(0, 255, 0)),
      dict(keypoints_px=KP, colors_rgb=(1, 2, 3))], []),
])
def test_legend_names_the_colours_the_layers_use(layers, expected):
    assert [t for t, _ in legend_entries(layers)] == expected


def test_scale_bar_is_a_round_number_of_mm():
    canvas = np.zeros((200, 400, 3), np.uint8)
    draw_scale_bar(canvas, (0.25, 0.25))  # a fifth of 400 px = 20 mm -> 80 px
    row = canvas[200 - 10, :, 0]
    assert row[10:86].min() == 255 and row[92:].max() < 255
    assert draw_scale_bar(np.zeros((50, 50, 3), np.uint8), (float("nan"), 1.0)).max() == 0  # no spacing, no bar


def test_legend_goes_to_the_corner_without_points():
    canvas = np.full((300, 300, 3), 200, np.uint8)
    points = np.array([[280.0, 10.0], [290.0, 20.0]])  # top right taken
    draw_legend(canvas, [("ground truth", (0, 255, 0))], avoid_px=points)
    assert canvas[6, 6].max() < 200 and (canvas[6, 294] == 200).all()


def test_write_overlay_is_a_png_with_legend(tmp_path):
    img = np.random.default_rng(0).random((120, 160)).astype(np.float32)
    out = tmp_path / "o.png"
    write_overlay(out, img, [dict(keypoints_px=KP + 60, colors_rgb=(0, 255, 0), labels=["C3"])], spacing_mm=(0.5, 0.5))
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and not list(tmp_path.glob(".*"))


def _legend_corner(png):
    """Which corner the legend darkened: 'tl', 'tr', 'bl' or 'br' (the film is white elsewhere)."""
    import cv2

    a = cv2.imread(str(png))[..., 0]
    h, w = a.shape
    spots = {"tl": a[6, 5], "tr": a[6, w - 5], "bl": a[h - 6, 5], "br": a[h - 6, w - 5]}  # inside a legend box only
    return [k for k, v in spots.items() if v < 150]


TOPS = [[10.0, 10.0], [25.0, 10.0], [40.0, 10.0], [260.0, 10.0], [275.0, 10.0], [290.0, 10.0]]


@pytest.mark.parametrize("spacing, points, expected", [
    # a level name runs from the points (x 150-170) into the top right: the legend goes top left
    (None, [[150.0, 10.0], [170.0, 20.0]], ["tl"]),
    # three points top left, three top right, one bottom right: bottom left holds the scale bar (two
    # points' worth), so bottom right; without a scale bar bottom left is free
    ((0.5, 0.5), TOPS + [[290.0, 290.0]], ["br"]),
    (None, TOPS + [[290.0, 290.0]], ["bl"]),
])
def test_legend_keeps_clear_of_points_level_names_and_scale_bar(tmp_path, spacing, points, expected):
    img = np.ones((300, 300), np.float32)
    img[-3:] = 0.0  # 1 % dark pixels: the window maps the rest to white
    kp = np.asarray(points)[None]
    layer = dict(keypoints_px=kp, colors_rgb=(0, 255, 0), labels=["C7 (level name)"], connect=False)
    write_overlay(tmp_path / "o.png", img, [layer], spacing_mm=spacing)
    assert _legend_corner(tmp_path / "o.png") == expected


def test_ring_text_names_the_coverage():
    layers = [dict(keypoints_px=KP, colors_rgb=(0, 255, 255), radii_px=np.full((1, 5), 4.0))]
    assert legend_entries(layers, ring_text="ring: conformal radius (90 % coverage)")[-1] == (
        "ring: conformal radius (90 % coverage)", "ring")
