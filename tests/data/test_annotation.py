from __future__ import annotations

import copy
import json
import os

import numpy as np
import pytest

from monai_spine.data.annotation import (
    FORMAT_NAME,
    FORMAT_VERSION,
    AnnotationError,
    SpineAnnotation,
    atomic_write_text,
    read_annotation,
    write_annotation,
)


def _ann(image=None, **kw):
    kp = np.array(
        [
            [[10.5, 20.25], [30.0, 21.0], [11.0, 40.0], [31.0, 41.0], [45.0, 30.0]],
            [[12.0, 50.0], [32.0, 51.0], [13.0, 70.0], [np.nan, np.nan], [47.0, 60.0]],
        ]
    )
    vis = np.array([[True, True, True, True, False], [True, True, True, False, True]])
    args = dict(
        levels=["C3", "C4"],
        keypoints_px=kp,
        visible=vis,
        region="cervical",
        scheme="lateral5",
        image=image,
        image_size=(64, 80),
        spacing_mm=(0.143, 0.15),
        spacing_source="ImagerPixelSpacing",
        boxes_px=np.array([[9.0, 19.0, 46.0, 42.0], [11.0, 49.0, 48.0, 71.0]]),
        outlines_px=[np.array([[10.0, 20.0], [30.5, 21.0], [31.0, 41.25]]), np.array([[12.0, 50.0], [32.0, 51.0]])],
        meta={"generator": {"seed": 3}, "hard": ["C4-PI"]},
    )
    args.update(kw)
    return SpineAnnotation(**args)


def _assert_same(a, b):
    assert a.levels == b.levels
    assert (a.region, a.scheme) == (b.region, b.scheme)
    np.testing.assert_array_equal(a.visible, b.visible)
    np.testing.assert_array_equal(a.keypoints_px, b.keypoints_px)  # NaN where NaN
    assert a.image == b.image and a.image_size == b.image_size
    assert a.spacing_mm == b.spacing_mm and a.spacing_source == b.spacing_source
    if a.boxes_px is None:
        assert b.boxes_px is None
    else:
        np.testing.assert_array_equal(a.boxes_px, b.boxes_px)
    if a.box_angles_rad is None:
        assert b.box_angles_rad is None
    else:
        np.testing.assert_array_equal(a.box_angles_rad, b.box_angles_rad)
    if a.outlines_px is None:
        assert b.outlines_px is None
    else:
        assert len(a.outlines_px) == len(b.outlines_px)
        for oa, ob in zip(a.outlines_px, b.outlines_px):
            np.testing.assert_array_equal(oa, ob)
    assert a.meta == b.meta


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"spacing_mm": None, "spacing_source": "unknown"},
        {"boxes_px": None, "outlines_px": None, "meta": {}},
        {"image_size": None},
        {"box_angles_rad": np.array([0.125, -0.3])},
    ],
)
def test_write_read_round_trip(tmp_path, kw):
    img = tmp_path / "images" / "case 1.png"
    ann = _ann(image=str(img), **kw)
    path = tmp_path / "ann" / "case 1.json"
    write_annotation(ann, path)
    d = json.loads(path.read_text())
    assert d["format"] == FORMAT_NAME and d["version"] == FORMAT_VERSION
    assert d["image"] == os.path.join("..", "images", "case 1.png")  # relative to the JSON's folder
    assert d["vertebrae"][1]["keypoints_px"][3] is None  # NaN -> null
    assert d["point_names"] == ["AS", "PS", "AI", "PI", "SP"]
    back = read_annotation(path)
    _assert_same(ann, back)


def test_round_trip_ap4_without_image(tmp_path):
    ann = SpineAnnotation(["T1", "T2"], np.arange(16.0).reshape(2, 4, 2), np.ones((2, 4), bool), "ap", "ap4")
    write_annotation(ann, tmp_path / "a.json")
    back = read_annotation(tmp_path / "a.json")
    _assert_same(ann, back)
    assert back.spacing_mm is None and back.spacing_source == "unknown"


def test_outlines_are_written_to_3_decimals(tmp_path):
    ann = _ann(outlines_px=[np.array([[1.23456, 2.0]]), np.array([[3.0, 4.00049]])])
    write_annotation(ann, tmp_path / "a.json")
    back = read_annotation(tmp_path / "a.json")
    np.testing.assert_array_equal(back.outlines_px[0], [[1.235, 2.0]])
    np.testing.assert_array_equal(back.outlines_px[1], [[3.0, 4.0]])


def test_null_points_are_invisible_whatever_visible_says():
    d = _ann().to_dict()
    d["vertebrae"][0]["keypoints_px"][1] = None
    d["vertebrae"][0]["visible"] = [True] * 5
    ann = SpineAnnotation.from_dict(d)
    assert ann.visible[0].tolist() == [True, False, True, True, True]
    assert np.isnan(ann.keypoints_px[0, 1]).all()
    # without 'visible', finite points are visible and null ones are not
    del d["vertebrae"][1]["visible"]
    ann = SpineAnnotation.from_dict(d)
    assert ann.visible[1].tolist() == [True, True, True, False, True]


def test_invisible_point_keeps_its_best_guess():
    d = _ann().to_dict()
    ann = SpineAnnotation.from_dict(d)
    assert not ann.visible[0, 4]
    np.testing.assert_array_equal(ann.keypoints_px[0, 4], [45.0, 30.0])


def _mutate(path_keys, value):
    d = _ann().to_dict()
    target = d
    for k in path_keys[:-1]:
        target = target[k]
    if value is _DELETE:
        del target[path_keys[-1]]
    else:
        target[path_keys[-1]] = value
    return d


_DELETE = object()


@pytest.mark.parametrize(
    "path_keys, value, match",
    [
        (["format"], "other", "'format' must be 'monai-spine-keypoints'"),
        (["format"], _DELETE, "'format' must be"),
        (["version"], 2, "unsupported version 2"),
        (["region"], _DELETE, "missing field 'region'"),
        (["scheme"], _DELETE, "missing field 'scheme'"),
        (["vertebrae"], _DELETE, "missing field 'vertebrae'"),
        (["vertebrae"], {"C3": []}, "'vertebrae' must be a list"),
        (["scheme"], "ap5", "unknown keypoint scheme 'ap5'"),
        (["region"], "thoracic", "unknown region 'thoracic'"),
        (["vertebrae", 0, "level"], _DELETE, r"vertebrae\[0\]: needs 'level' and 'keypoints_px'"),
        (["vertebrae", 1, "keypoints_px"], _DELETE, r"vertebrae\[1\]: needs"),
        (["vertebrae", 0, "level"], "C9", "unknown vertebra level 'C9'"),
        (["vertebrae", 1, "level"], "Th1", "unknown vertebra level 'Th1'"),
        (
            ["vertebrae", 0, "keypoints_px"],
            [[1, 2]] * 4,
            r"vertebrae\[0\] \(C3\): expected 5 points for scheme lateral5, got 4",
        ),
        (["vertebrae", 1, "keypoints_px"], [[1, 2]] * 6, r"vertebrae\[1\] \(C4\): expected 5 points .* got 6"),
        (["vertebrae", 0, "keypoints_px"], "points", r"expected 5 points .* got str"),
        (["vertebrae", 0, "keypoints_px", 2], [1], r"vertebrae\[0\]: point 2 is not \[x, y\]"),
        (["vertebrae", 0, "keypoints_px", 2], ["a", "b"], r"point 2 is not \[x, y\]"),
        (["vertebrae", 0, "visible"], [True] * 4, r"'visible' must be a list of 5 booleans"),
        (["spacing_source"], "guess", "spacing_source 'guess' not in"),
        (["spacing_mm"], None, "spacing_source is 'ImagerPixelSpacing' but spacing_mm is missing"),
        (["spacing_mm"], [0.1, 0.0], "spacing_mm must be two positive numbers"),
        (["spacing_mm"], [0.1], "spacing_mm must be two positive numbers"),
        (["spacing_mm"], 0.1, "f.json"),
    ],
)
def test_malformed_dict_raises_naming_source_and_field(path_keys, value, match):
    d = _mutate(path_keys, value)
    with pytest.raises(AnnotationError, match=match) as exc:
        SpineAnnotation.from_dict(d, source="f.json")
    assert "f.json" in str(exc.value) or "annotation" in str(exc.value)


def test_spacing_source_defaults_from_spacing():
    d = _ann().to_dict()
    del d["spacing_source"]
    assert SpineAnnotation.from_dict(d).spacing_source == "sidecar"
    d["spacing_mm"] = None
    assert SpineAnnotation.from_dict(d).spacing_source == "unknown"


def test_boxes_kept_only_when_every_vertebra_has_one():
    d = _ann().to_dict()
    del d["vertebrae"][1]["box_px"]
    del d["vertebrae"][0]["outline_px"]
    ann = SpineAnnotation.from_dict(d)
    assert ann.boxes_px is None and ann.outlines_px is None


def test_non_object_and_invalid_json(tmp_path):
    with pytest.raises(AnnotationError, match="f.json: expected a JSON object, got list"):
        SpineAnnotation.from_dict([], source="f.json")
    p = tmp_path / "bad.json"
    p.write_text("{")
    with pytest.raises(AnnotationError, match="bad.json: not valid JSON"):
        read_annotation(p)
    with pytest.raises(FileNotFoundError):
        read_annotation(tmp_path / "absent.json")


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"levels": ["C3"]}, "1 levels for 2 vertebrae"),
        ({"levels": ["C3", "X1"]}, "unknown vertebra level 'X1'"),
        ({"keypoints_px": np.zeros((2, 4, 2))}, "expected 5 points per vertebra"),
        ({"visible": np.ones((2, 4), bool)}, "visibility mask shape"),
        ({"boxes_px": np.zeros((2, 3))}, r"boxes_px shape \(2, 3\)"),
        ({"box_angles_rad": [0.1]}, r"box_angles_rad must be 2 finite numbers"),
        ({"box_angles_rad": [0.1, float("nan")]}, r"box_angles_rad must be 2 finite numbers"),
        ({"boxes_px": None, "box_angles_rad": [0.1, 0.2]}, "box_angles_rad given without boxes_px"),
        ({"spacing_mm": (0.1, float("nan"))}, "two positive numbers"),
        ({"spacing_mm": None, "spacing_source": "PixelSpacing"}, "spacing_mm is missing"),
    ],
)
def test_constructor_validates(kw, match):
    with pytest.raises((AnnotationError, ValueError), match=match):
        _ann(**kw)


def test_boxes_from_keypoints_hand_computed():
    ann = _ann(outlines_px=None)
    boxes = ann.boxes_from_keypoints()
    # C3 visible points: AS, PS, AI, PI (SP invisible)
    np.testing.assert_allclose(boxes[0], [10.5, 20.25, 31.0, 41.0])
    # C4 visible: AS, PS, AI, SP
    np.testing.assert_allclose(boxes[1], [12.0, 50.0, 47.0, 70.0])
    np.testing.assert_allclose(ann.boxes_from_keypoints(0.5)[1], [12.0 - 17.5, 50.0 - 10.0, 47.0 + 17.5, 70.0 + 10.0])


def test_keypoint_boxes_px_on_plain_arrays():
    """The function behind boxes_from_keypoints: an outline widens its box, a vertebra without a visible
    point gets a NaN row (hand-computed)."""
    from monai_spine.data.annotation import keypoint_boxes_px

    kp = np.array([[[0.0, 0.0], [4.0, 2.0]], [[9.0, 9.0], [7.0, 5.0]], [[1.0, 1.0], [2.0, 2.0]]])
    vis = np.array([[True, True], [True, False], [False, False]])
    outlines = [np.zeros((0, 2)), np.array([[10.0, 3.0]]), np.zeros((0, 2))]
    boxes = keypoint_boxes_px(kp, vis, outlines)
    np.testing.assert_allclose(boxes[:2], [[0.0, 0.0, 4.0, 2.0], [9.0, 3.0, 10.0, 9.0]])
    assert np.isnan(boxes[2]).all()
    np.testing.assert_allclose(keypoint_boxes_px(kp[:1], vis[:1], margin_frac=0.5)[0], [-2.0, -1.0, 6.0, 3.0])


def test_atomic_write_text_replaces_and_leaves_no_temp(tmp_path):
    p = tmp_path / "sub" / "x.json"
    atomic_write_text(p, "one")
    atomic_write_text(p, "two")
    assert p.read_text() == "two"
    assert sorted(os.listdir(p.parent)) == ["x.json"]


def test_write_failure_leaves_old_file(tmp_path):
    p = tmp_path / "a.json"
    write_annotation(_ann(), p)
    before = p.read_text()
    bad = _ann(meta={"x": object()})
    with pytest.raises(TypeError):
        write_annotation(bad, p)
    assert p.read_text() == before


def test_to_dict_does_not_alias_meta():
    ann = _ann()
    d = copy.deepcopy(ann.to_dict())
    d["meta"]["generator"]["seed"] = 99
    assert ann.meta["generator"]["seed"] == 3


# ---------------------------------------------------------------------------------------------
# Stricter validation: each of these was a defect once (numpy sizes, NaN in JSON, loose parsing).


def test_numpy_int_image_size_is_serialisable(tmp_path):
    ann = _ann(image_size=(np.int64(64), np.int64(80)))
    write_annotation(ann, tmp_path / "a.json")
    assert read_annotation(tmp_path / "a.json").image_size == (64, 80)


def test_written_file_is_strict_json(tmp_path):
    ann = _ann(outlines_px=None)
    ann.visible[1] = False  # no visible point and no outline -> NaN box for C4
    ann.boxes_px = ann.boxes_from_keypoints()
    assert np.isnan(ann.boxes_px[1]).all()
    write_annotation(ann, tmp_path / "a.json")

    def bad(c):
        raise ValueError(c)

    json.loads((tmp_path / "a.json").read_text(), parse_constant=bad)


@pytest.mark.parametrize("point", ["12", [1, 2, 3]])
def test_point_must_be_a_pair(point):
    d = _ann().to_dict()
    d["vertebrae"][0]["keypoints_px"][0] = point
    with pytest.raises(AnnotationError, match=r"point 0 is not \[x, y\]"):
        SpineAnnotation.from_dict(d, source="f.json")


def test_visible_flags_must_be_booleans():
    d = _ann().to_dict()
    d["vertebrae"][0]["visible"] = ["false"] * 5
    with pytest.raises(AnnotationError, match="booleans"):
        SpineAnnotation.from_dict(d, source="f.json")


def test_non_finite_points_are_never_visible():
    kp = np.zeros((1, 4, 2))
    kp[0, 0] = np.nan
    ann = SpineAnnotation(["T1"], kp, np.ones((1, 4), bool), "ap", "ap4")
    assert ann.visible.tolist() == [[False, True, True, True]]


@pytest.mark.parametrize("size", [[100], [100, -5]])
def test_image_size_is_validated(size):
    d = _ann().to_dict()
    d["image_size"] = size
    with pytest.raises(AnnotationError, match="image_size"):
        SpineAnnotation.from_dict(d, source="f.json")


def test_known_spacing_needs_a_source():
    with pytest.raises(AnnotationError, match="spacing_source"):
        _ann(spacing_source="unknown")


@pytest.mark.parametrize(
    "key, value", [("box_px", [1, 2, 3]), ("outline_px", [[1, 2, 3]]), ("outline_px", [1, 2, 3, 4])]
)
def test_malformed_box_or_outline_raises_annotation_error(key, value):
    d = _ann().to_dict()
    d["vertebrae"][0][key] = value
    with pytest.raises(AnnotationError, match=rf"f.json.*{key}"):
        SpineAnnotation.from_dict(d, source="f.json")


def test_duplicate_levels_rejected():
    with pytest.raises(AnnotationError, match="C3"):
        _ann(levels=["C3", "C3"])


@pytest.mark.parametrize("image, spacing, expected", [
    ("film.png", (0.2, 0.3), (0.2, 0.3)),  # a PNG has no spacing of its own: the annotation's is read with it
    ("film.dcm", (0.2, 0.3), None),  # the DICOM header is the source of truth
    ("FILM.DICOM", (0.2, 0.3), None),
    ("film.png", None, None),  # unknown stays unknown
    (None, (0.2, 0.3), None),  # no image to read
])
def test_spacing_override_is_the_annotations_spacing_except_for_dicom(image, spacing, expected):
    kw = {"spacing_mm": spacing, "spacing_source": "sidecar" if spacing else "unknown"}
    assert _ann(image=image, **kw).spacing_override_mm == expected


@pytest.mark.parametrize(
    "edit",
    [
        lambda d: d["vertebrae"][0].__setitem__("box_angle_rad", 0.2),  # only one vertebra has an angle
        lambda d: [v.__setitem__("box_angle_rad", "0.2") for v in d["vertebrae"]],  # not a number
        lambda d: [v.__setitem__("box_angle_rad", True) for v in d["vertebrae"]],
        lambda d: [(v.__setitem__("box_angle_rad", 0.1), v.pop("box_px")) for v in d["vertebrae"]],  # no box
    ],
)
def test_box_angles_need_a_number_and_a_box_on_every_vertebra(edit):
    d = _ann().to_dict()
    edit(d)
    with pytest.raises(AnnotationError, match="f.json: 'box_angle_rad'"):
        SpineAnnotation.from_dict(d, source="f.json")


def test_box_angle_is_written_per_vertebra_and_reaches_the_datalist(tmp_path):
    from monai_spine.data.datasets import vertebra_items

    ann = _ann(image=str(tmp_path / "a.png"), box_angles_rad=np.array([0.25, -0.5]))
    write_annotation(ann, tmp_path / "a.json")
    assert [v["box_angle_rad"] for v in json.loads((tmp_path / "a.json").read_text())["vertebrae"]] == [0.25, -0.5]
    assert [it["box_angle_rad"] for it in vertebra_items([tmp_path / "a.json"])] == [0.25, -0.5]
    write_annotation(_ann(image=str(tmp_path / "a.png")), tmp_path / "b.json")
    assert "box_angle_rad" not in json.loads((tmp_path / "b.json").read_text())["vertebrae"][0]
    assert [it["box_angle_rad"] for it in vertebra_items([tmp_path / "b.json"])] == [0.0, 0.0]
