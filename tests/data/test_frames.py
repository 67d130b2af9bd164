"""Vertebra frames from clicked centres and from annotations (monai_spine/data/frames.py)."""

import numpy as np
import pytest

from monai_spine.data.frames import annotation_frames, centre_frames

W, H = 40.0, 30.0  # rectangles: size 35, centres 50 px apart -> size ratio 0.7
OFFSETS = np.array([[-W / 2, -H / 2], [W / 2, -H / 2], [-W / 2, H / 2], [W / 2, H / 2]])


def rect_corners(n=4, x=100.0, y0=60.0, step=50.0):
    return np.stack([OFFSETS + [x, y0 + step * i] for i in range(n)])


@pytest.mark.parametrize("angle", [0.0, 20.0, -35.0])
def test_centre_frames_orientation_and_size(angle):
    a = np.radians(angle)
    axis = np.array([-np.sin(a), np.cos(a)])  # spine axis for endplate angle `angle`
    c = np.array([100.0, 50.0]) + np.arange(4)[:, None] * 50.0 * axis
    ang, size = centre_frames(c, 0.7)
    np.testing.assert_allclose(ang, angle, atol=1e-9)
    np.testing.assert_allclose(size, 35.0)


def test_centre_frames_level_gaps_and_errors():
    c = np.array([[0.0, 0.0], [0.0, 100.0], [0.0, 150.0]])
    _, size = centre_frames(c, 1.0, levels=["C3", "C5", "C6"])
    np.testing.assert_allclose(size, [50.0, 50.0, 50.0])
    _, size = centre_frames(c, 1.0)
    np.testing.assert_allclose(size, [100.0, 75.0, 50.0])
    with pytest.raises(ValueError, match="two"):
        centre_frames(c[:1], 0.7)
    with pytest.raises(ValueError, match="coincide"):
        centre_frames(np.array([[0.0, 0.0], [0.0, 0.0]]), 0.7)


def test_annotation_frames_use_corner_means_and_select():
    kp = rect_corners()
    rows, centres, ang, size = annotation_frames(kp, None, (0, 1, 2, 3), 0.7, select=np.array([1, 1, 0, 1], bool))
    np.testing.assert_array_equal(rows, [0, 1, 3])
    np.testing.assert_allclose(centres, kp[[0, 1, 3]].mean(1))
    np.testing.assert_allclose(size, [35.0, 52.5, 70.0])  # the gap between rows 1 and 3 is not known without levels
    _, _, _, size = annotation_frames(kp, None, (0, 1, 2, 3), 0.7, select=np.array([1, 1, 0, 1], bool),
                                      levels=["C3", "C4", "C5", "C6"])
    np.testing.assert_allclose(size, 35.0)
