"""Lateral motion-segment and lordosis measurements against hand-built geometry."""

from __future__ import annotations

import numpy as np
import pytest

from monai_spine.measure.lateral import (
    AI,
    AS,
    PI,
    PS,
    body_depth,
    disc_heights,
    lateral_layout,
    lateral_measurements,
    line_angle_deg,
    lordosis_angle_deg,
    motion_segments,
    sagittal_translation,
    segment_angle_deg,
    to_metric,
    wrap_deg,
)

C, S = np.cos(np.radians(10.0)), np.sin(np.radians(10.0))


def two_rectangles_mm() -> np.ndarray:
    """The issue's example, built by hand: lower body 15 x 10 mm, axis-aligned; upper body rotated
    by 10 degrees (lordotic) with its posterior-inferior corner 2 mm anterior and 4 mm above the
    lower posterior-superior corner."""
    lower = np.array([[0.0, 0.0], [15.0, 0.0], [0.0, 10.0], [15.0, 10.0], [27.0, 5.0]])
    pi_u = np.array([13.0, -4.0])
    ai_u = pi_u - 15.0 * np.array([C, S])  # inferior endplate descends 10 deg towards posterior
    up = np.array([S, -C])
    upper = np.array([ai_u + 10 * up, pi_u + 10 * up, ai_u, pi_u, pi_u + 5 * up + 12 * np.array([C, S])])
    return np.stack([upper, lower])


@pytest.mark.parametrize(
    "spacing, offset",
    [((0.1, 0.1), (0.0, 0.0)), ((0.1, 0.1), (500.0, 700.0)), ((0.1, 0.2), (300.0, 80.0)), ((0.25, 0.05), (0.0, 900.0))],
)
def test_two_rectangles_rotated_10deg_shifted_2mm(spacing, offset):
    mm = two_rectangles_mm()
    px = mm / np.asarray(spacing) + np.asarray(offset)
    vals, unit, layout = lateral_measurements(px, ["C4", "C5"], spacing)
    assert unit == "mm" and [s.name for s in layout.segments] == ["C4-C5"]
    np.testing.assert_allclose(vals["segment_angle_deg"], [10.0], atol=1e-9)
    np.testing.assert_allclose(vals["translation"], [2.0], atol=1e-9)
    np.testing.assert_allclose(vals["translation_share"], [2.0 / 15.0], atol=1e-12)
    # anterior: AI(upper) = (13 - 15 cos10, -4 - 15 sin10) to AS(lower) = (0, 0); posterior: (13, -4) to (15, 0)
    ant = np.hypot(13.0 - 15.0 * C, -4.0 - 15.0 * S)
    np.testing.assert_allclose(vals["disc_height_anterior"], [ant], atol=1e-9)
    np.testing.assert_allclose(vals["disc_height_posterior"], [np.sqrt(20.0)], atol=1e-9)
    np.testing.assert_allclose(vals["body_depth"], [15.0, 15.0], atol=1e-9)
    assert ant > np.sqrt(20.0)  # lordotic: the disc is taller anteriorly


def test_unknown_spacing_stays_in_pixels():
    mm = two_rectangles_mm()
    px = mm / 0.1
    vals, unit, _ = lateral_measurements(px, ["C4", "C5"], None)
    assert unit == "px"
    np.testing.assert_allclose(vals["segment_angle_deg"], [10.0], atol=1e-9)
    np.testing.assert_allclose(vals["translation"], [20.0], atol=1e-8)
    np.testing.assert_allclose(vals["translation_share"], [2.0 / 15.0], atol=1e-12)
    np.testing.assert_allclose(vals["disc_height_posterior"], [np.sqrt(20.0) * 10], atol=1e-8)


@pytest.mark.parametrize(
    "angles, translations, base_deg",
    [
        ([10.0], [2.0], 0.0),
        ([-6.0], [-1.5], 0.0),  # kyphotic segment, retrolisthesis
        ([0.0], [0.0], 30.0),  # a whole column rotated by 30 deg: no relative angle or shift
        ([4.0, -3.0, 7.5, 12.0], [0.5, -0.8, 3.0, 0.0], -20.0),
        ([25.0, -25.0], [6.0, -6.0], 45.0),
    ],
)
def test_chain_segment_angles_and_translations(lateral_chain, angles, translations, base_deg):
    mm = lateral_chain(angles, translations, base_deg=base_deg)
    spacing = (0.12, 0.15)
    px = mm / np.asarray(spacing)
    levels = ["C3", "C4", "C5", "C6", "C7"][: len(angles) + 1]
    vals, unit, _ = lateral_measurements(px, levels, spacing)
    np.testing.assert_allclose(vals["segment_angle_deg"], angles, atol=1e-9)
    np.testing.assert_allclose(vals["translation"], translations, atol=1e-9)
    np.testing.assert_allclose(vals["translation_share"], np.asarray(translations) / 15.0, atol=1e-12)
    np.testing.assert_allclose(vals["body_depth"], 15.0, atol=1e-9)


@pytest.mark.parametrize(
    "region, levels, angles, expected",
    [
        ("cervical", ["C3", "C4", "C5", "C6", "C7"], [5.0, 8.0, -3.0, 6.0], 16.0),
        ("lumbar", ["L1", "L2", "L3", "L4", "L5"], [6.0, 9.0, 12.0, 15.0], 42.0),
        ("lumbar", ["L1", "L2", "L3", "L4", "L5"], [-2.0, -3.0, -1.0, 0.5], -5.5),  # kyphotic
    ],
)
def test_lordosis_is_sum_of_segment_angles_for_rectangles(lateral_chain, region, levels, angles, expected):
    mm = lateral_chain(angles, [0.0] * len(angles), base_deg=12.0)
    vals, _, layout = lateral_measurements(mm, levels, (1.0, 1.0))
    assert [name for name, _, _ in layout.lordosis] == [f"{levels[0]}-{levels[-1]}"]
    np.testing.assert_allclose(vals["lordosis_deg"], [expected], atol=1e-9)
    np.testing.assert_allclose(lordosis_angle_deg(mm, 0, len(levels) - 1), expected, atol=1e-9)


def test_lordosis_includes_vertebral_wedging():
    # two vertebrae, no disc angle, but the upper body is a wedge: its superior endplate tilted by 7 deg
    pts = np.array(
        [
            [[0, 0], [15, 0], [0, 10], [15, 10], [20, 5]],
            [[0, 14], [15, 14], [0, 24], [15, 24], [20, 19]],
        ],
        float,
    )
    pts[0, PS] = [15.0, -15.0 * np.tan(np.radians(7.0))]  # posterior-superior corner raised
    pts[0, AS] = [0.0, 0.0]
    np.testing.assert_allclose(lordosis_angle_deg(pts, 0, 1), -7.0, atol=1e-9)  # kyphotic wedge


@pytest.mark.parametrize(
    "p_from, p_to, expected",
    [((0, 0), (10, 0), 0.0), ((0, 0), (10, -10), 45.0), ((0, 0), (10, 10), -45.0), ((5, 5), (5, -5), 90.0), ((0, 0), (-1, 0), 180.0)],
)
def test_line_angle_frame(p_from, p_to, expected):
    assert float(line_angle_deg(np.asarray(p_from, float), np.asarray(p_to, float))) == pytest.approx(expected)


@pytest.mark.parametrize("a, expected", [(190.0, -170.0), (-180.0, 180.0), (180.0, 180.0), (360.0, 0.0), (-190.0, 170.0)])
def test_wrap(a, expected):
    assert float(wrap_deg(a)) == pytest.approx(expected)


@pytest.mark.parametrize(
    "levels, expected",
    [
        (["C3", "C4", "C5"], ["C3-C4", "C4-C5"]),
        (["C3", "C4", "C6", "C7"], ["C3-C4", "C6-C7"]),
        (["L5"], []),
        (["C7", "T1"], ["C7-T1"]),
        (["X1", "C4", "C5"], ["C4-C5"]),
    ],
)
def test_motion_segments_need_adjacent_levels(levels, expected):
    assert [s.name for s in motion_segments(levels)] == expected


def test_non_adjacent_vertebrae_give_no_segment(lateral_chain):
    mm = lateral_chain([5.0, 6.0], [0.0, 1.0])
    vals, _, layout = lateral_measurements(mm, ["C3", "C4", "C6"], (1.0, 1.0))
    assert [s.name for s in layout.segments] == ["C3-C4"]
    np.testing.assert_allclose(vals["segment_angle_deg"], [5.0], atol=1e-9)


def test_hidden_points_make_dependent_measurements_nan():
    mm = two_rectangles_mm()
    vis = np.ones((2, 5), bool)
    vis[1, AS] = False  # lower anterior-superior corner missing
    vals, _, _ = lateral_measurements(mm, ["C4", "C5"], (1.0, 1.0), visible=vis)
    assert np.isnan(vals["segment_angle_deg"][0])
    assert np.isnan(vals["translation"][0]) and np.isnan(vals["disc_height_anterior"][0])
    assert vals["disc_height_posterior"][0] == pytest.approx(np.sqrt(20.0))


def test_leading_sample_axes_are_kept():
    mm = two_rectangles_mm()
    batch = np.stack([mm, mm + 1.0, mm * 2.0])
    vals, _, _ = lateral_measurements(batch, ["C4", "C5"], (1.0, 1.0))
    assert vals["segment_angle_deg"].shape == (3, 1) and vals["body_depth"].shape == (3, 2)
    np.testing.assert_allclose(vals["translation"][:, 0], [2.0, 2.0, 4.0], atol=1e-9)
    np.testing.assert_allclose(segment_angle_deg(batch), 10.0, atol=1e-9)
    np.testing.assert_allclose(sagittal_translation(batch)[:, 0], [2.0, 2.0, 4.0], atol=1e-9)
    np.testing.assert_allclose(body_depth(batch), [[15, 15], [15, 15], [30, 30]], atol=1e-9)
    assert disc_heights(batch)[0].shape == (3, 1)


@pytest.mark.parametrize(
    "kwargs, err",
    [
        ({"keypoints_px": np.zeros((2, 4, 2)), "levels": ["C3", "C4"]}, "shape"),
        ({"keypoints_px": np.zeros((2, 5, 2)), "levels": ["C3"]}, "levels"),
        ({"keypoints_px": np.zeros((2, 5, 2)), "levels": ["C3", "C4"], "spacing_mm": (0.1, 0.0)}, "spacing"),
        ({"keypoints_px": np.zeros((2, 5, 2)), "levels": ["C3", "C4"], "visible": np.ones((2, 4), bool)}, "mask"),
    ],
)
def test_bad_inputs_raise(kwargs, err):
    with pytest.raises(ValueError, match=err):
        lateral_measurements(**kwargs)


def test_layout_lordosis_spans():
    lay = lateral_layout(["C3", "C4", "C5", "C6", "C7"])
    assert [n for n, _, _ in lay.lordosis] == ["C3-C7"]
    assert lateral_layout(["C4", "C5", "C6"]).lordosis == []
    assert [n for n, _, _ in lateral_layout(["C4", "C5", "C6"], [("C4", "C6")]).lordosis] == ["C4-C6"]
    pts, unit = to_metric(np.ones((1, 5, 2)), None)
    assert unit == "px"
    with pytest.raises(IndexError):
        lordosis_angle_deg(np.zeros((3, 5, 2)), 2, 1)
    assert AI == 2 and PI == 3
