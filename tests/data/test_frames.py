"""Vertebra frames from clicked centres and from annotations (monai_spine/data/frames.py)."""

import numpy as np
import pytest

from monai_spine.data.frames import FrameBoxes, annotation_frames, centre_frames

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


@pytest.mark.parametrize("case", ["last above", "last far below", "middle upside"])
def test_centre_frames_ignore_a_centre_out_of_order(case):
    """A centre clicked or labelled out of order (AASCE film 49 A: its L5 at L1's height) must not turn or
    blow up its neighbours' frames; the vertebrae away from it keep their frames exactly."""
    c = np.c_[np.full(17, 100.0), 40.0 + 50.0 * np.arange(17)]
    if case == "last above":
        c[16, 1] = c[12, 1] + 10.0
    elif case == "last far below":
        c[16, 1] = c[15, 1] + 400.0
    else:
        c[8, 1] = c[2, 1] - 5.0
    ang, size = centre_frames(c, 0.7)
    np.testing.assert_allclose(ang, 0.0, atol=1e-9)  # every frame upright, as the spine is
    bad = 8 if case == "middle upside" else 16
    far = [i for i in range(17) if abs(i - bad) > 1]
    np.testing.assert_allclose(size[far], 35.0)  # 0.7 x 50 px, as without the outlier
    assert size.max() <= 35.0 + 1e-9  # no frame takes the outlier's step as its size


def test_centre_frames_trust_a_bent_but_ordered_spine():
    """A curve with spacings from 0.7 to 1.5 of the median is no outlier: the frames are the plain ones."""
    from monai_spine.data.patches import orientation_from_centres

    t = np.cumsum(np.r_[0.0, np.linspace(35.0, 75.0, 16)])
    c = np.c_[100.0 + 30.0 * np.sin(t / 200.0), 40.0 + t]
    ang, size = centre_frames(c, 1.0)
    np.testing.assert_allclose(ang, orientation_from_centres(c)[0])
    np.testing.assert_allclose(size, orientation_from_centres(c)[1])


def test_annotation_frames_use_corner_means_and_select():
    kp = rect_corners()
    rows, centres, ang, size = annotation_frames(kp, None, (0, 1, 2, 3), 0.7, select=np.array([1, 1, 0, 1], bool))
    np.testing.assert_array_equal(rows, [0, 1, 3])
    np.testing.assert_allclose(centres, kp[[0, 1, 3]].mean(1))
    np.testing.assert_allclose(size, [35.0, 52.5, 70.0])  # the gap between rows 1 and 3 is not known without levels
    _, _, _, size = annotation_frames(kp, None, (0, 1, 2, 3), 0.7, select=np.array([1, 1, 0, 1], bool),
                                      levels=["C3", "C4", "C5", "C6"])
    np.testing.assert_allclose(size, 35.0)


# --- FrameBoxes: turned crop boxes from centres -------------------------------------------------

def _rect_spine(angle_deg: float, n: int = 4, spacing: float = 20.0, w: float = 30.0, h: float = 18.0):
    """``n`` w x h rectangles (ap4 corners TL, TR, BL, BR) centred on a straight spine whose endplates
    run at ``angle_deg``; returns (centres (n, 2), corners (n, 4, 2))."""
    a = np.radians(angle_deg)
    e = np.array([np.cos(a), np.sin(a)])  # along the endplates
    t = np.array([-np.sin(a), np.cos(a)])  # along the spine, downwards
    centres = np.array([100.0, 50.0]) + np.arange(n)[:, None] * spacing * t
    local = np.array([[-w / 2, -h / 2], [w / 2, -h / 2], [-w / 2, h / 2], [w / 2, h / 2]])
    corners = centres[:, None] + local[..., :1] * e + local[..., 1:] * t
    return centres, corners


def test_frame_boxes_upright_spine_hand_computed():
    # centres 20 px apart on x = 50: width 1.5 x 20 = 30, height 0.9 x 20 = 18, no turn
    boxes, angles = FrameBoxes(1.5, 0.9).boxes(np.array([[50.0, 10.0], [50.0, 30.0], [50.0, 50.0]]))
    np.testing.assert_allclose(boxes, [[35, 1, 65, 19], [35, 21, 65, 39], [35, 41, 65, 59]])
    np.testing.assert_allclose(angles, 0.0, atol=1e-12)


@pytest.mark.parametrize("angle_deg", [0.0, 17.0, -40.0])
def test_frame_boxes_fit_then_box_frames_the_corners_exactly(angle_deg):
    from monai_spine.data.annotation import SpineAnnotation
    from monai_spine.transforms import VertebraCrop

    centres, corners = _rect_spine(angle_deg)
    ann = SpineAnnotation(["T1", "T2", "T3", "T4"], corners, np.ones((4, 4), bool), "ap", "ap4")
    rule = FrameBoxes.fit([ann, ann])
    assert (rule.width_ratio, rule.height_ratio) == pytest.approx((1.5, 0.9))
    boxes, angles = rule.boxes(centres)
    np.testing.assert_allclose(np.degrees(angles), angle_deg, atol=1e-9)
    # the rule's box is the corners' own box in their frame: the same crop either way
    crop = VertebraCrop(spatial_size=(16, 32), margin_frac=0.1)
    for i in range(4):
        from_box = crop.geometry(box_px=boxes[i], angle_rad=angles[i])["crop_to_image"]
        from_points = crop.geometry(corners[i], angle_rad=angles[i])["crop_to_image"]
        np.testing.assert_allclose(from_box, from_points, atol=1e-9)


def test_frame_boxes_errors():
    with pytest.raises(ValueError, match="ratios must be positive"):
        FrameBoxes(0.0, 1.0)
    with pytest.raises(ValueError, match="at least two vertebra centres"):
        FrameBoxes(1.0, 1.0).boxes(np.array([[1.0, 2.0]]))
    with pytest.raises(ValueError, match="no film with two vertebrae"):
        FrameBoxes.fit([])


def test_frame_boxes_offset_follows_a_point_behind_the_body():
    # a fifth point 25 px behind each body's centre along the endplates (a lateral spinous process):
    # keypoints span -15..25 along e -> width 40 (ratio 2.0), box centre 5 px along e (offset 0.25)
    from monai_spine.data.annotation import SpineAnnotation

    centres, corners = _rect_spine(25.0)
    a = np.radians(25.0)
    sp = centres + 25.0 * np.array([np.cos(a), np.sin(a)])
    kp = np.concatenate([corners, sp[:, None]], 1)  # lateral5: AS, PS, AI, PI, SP
    ann = SpineAnnotation(["L1", "L2", "L3", "L4"], kp, np.ones((4, 5), bool), "lumbar", "lateral5")
    rule = FrameBoxes.fit([ann])
    assert rule.width_ratio == pytest.approx(2.0) and rule.height_ratio == pytest.approx(0.9)
    assert rule.offset_ratio == pytest.approx((0.25, 0.0))
    boxes, angles = rule.boxes(centres)
    np.testing.assert_allclose(0.5 * (boxes[:, :2] + boxes[:, 2:]), centres + 5.0 * np.array([np.cos(a), np.sin(a)]))
    assert FrameBoxes.from_dict(rule.to_dict()) == rule
    with pytest.raises(ValueError, match="box_rule"):
        FrameBoxes.from_dict({"kind": "spacing", "width_ratio": 1.0})
    with pytest.raises(ValueError, match="offset_ratio"):
        FrameBoxes(1.0, 1.0, (0.1,))


def test_frame_coords_and_turned_box_by_hand():
    from monai_spine.data.frames import frame_coords, turned_box_px

    # a quarter turn: u = y, v = -x; the points (0, 0), (2, 0), (0, 6) span u 0..6, v -2..0 -> centre
    # (u, v) = (3, -1), back in the image (x, y) = (1, 3), half extents (3, 1) along the turned axes
    pts = np.array([[0.0, 0.0], [2.0, 0.0], [0.0, 6.0], [np.nan, np.nan]])
    np.testing.assert_allclose(frame_coords(pts[:3], np.pi / 2), [[0, 0], [0, -2], [6, 0]], atol=1e-12)
    np.testing.assert_allclose(turned_box_px(pts, np.pi / 2), [-2.0, 2.0, 4.0, 4.0], atol=1e-12)
    np.testing.assert_allclose(turned_box_px(pts[None], np.zeros(1)), [[0.0, 0.0, 2.0, 6.0]])  # no turn: min/max
