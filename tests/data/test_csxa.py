"""Tests of the CSXA (labelme JSON) reader on hand-made fixtures that follow the published format."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
from PIL import Image

from monai_spine.data.annotation import AnnotationError, read_annotation, write_annotation
from monai_spine.data.csxa import (
    CSXA_POINT_NAMES,
    CsxaError,
    csxa_points_to_endplates,
    decide_cervical_facing,
    read_csxa,
    read_labelme_points,
)

W, H = 240, 320


def points_facing_left() -> np.ndarray:
    """(23, 2) CSXA points of a lordotic neck, anterior on the image left, in the published order.

    C2 centroid at (90, 40); C2 bottom corners (80, 70) / (120, 70); C3-C7 bodies 40 px deep and 24 px
    tall with discs 8 px tall in front and 4 px at the back (lordosis: the front is taller).
    """
    pts = [[90.0, 40.0], [80.0, 70.0], [120.0, 70.0]]
    ya, yp = 78.0, 74.0
    for _ in range(5):
        pts += [[80.0, ya], [120.0, yp], [80.0, ya + 24], [120.0, yp + 24]]
        ya, yp = ya + 24 + 8, yp + 24 + 4
    return np.asarray(pts)


def mirror(points: np.ndarray) -> np.ndarray:
    """The same neck on a mirrored image, re-listed left corner first as the format says."""
    m = points.copy()
    m[:, 0] = W - 1 - m[:, 0]
    m[1:3] = m[[2, 1]]
    v = m[3:].reshape(5, 4, 2)
    v[:] = v[:, [1, 0, 3, 2]]
    return m


def labelme(points, labels=None, extra_shapes=(), size=(W, H), image_path="img.png", **top):
    shapes = [
        {"label": str(i + 1) if labels is None else labels[i], "points": [[float(x), float(y)]],
         "group_id": None, "shape_type": "point", "flags": {}}
        for i, (x, y) in enumerate(points)
    ]
    d = {"version": "5.2.1", "flags": {}, "shapes": shapes + list(extra_shapes), "imagePath": image_path,
         "imageData": None, "imageHeight": size[1], "imageWidth": size[0]}
    d.update(top)
    return d


def write_case(folder, stem, d, image=True, size=(W, H)):
    folder.mkdir(parents=True, exist_ok=True)
    p = folder / f"{stem}.json"
    p.write_text(json.dumps(d), encoding="utf-8")
    if image:
        Image.new("L", size, 100).save(folder / (d.get("imagePath") or f"{stem}.png"))
    return p


def test_point_names_follow_the_published_order():
    assert len(CSXA_POINT_NAMES) == 23
    assert CSXA_POINT_NAMES[:7] == ("C2_centroid", "C2_BL", "C2_BR", "C3_TL", "C3_TR", "C3_BL", "C3_BR")
    assert CSXA_POINT_NAMES[-1] == "C7_BR"


@pytest.mark.parametrize("how", ["numbers_shuffled", "zero_based", "names", "order"])
def test_read_labelme_points_matching(tmp_path, how):
    pts = points_facing_left()
    order = list(range(23))
    if how == "numbers_shuffled":
        random.Random(0).shuffle(order)
        labels = [str(i + 1) for i in order]
    elif how == "zero_based":
        labels = [str(i) for i in order]
    elif how == "names":
        labels = [n.lower() for n in CSXA_POINT_NAMES]
    else:
        labels = ["point"] * 23
    d = labelme(pts[order], labels=labels)
    p = write_case(tmp_path, "a", d, image=False)
    got, info = read_labelme_points(p)
    np.testing.assert_allclose(got, pts)
    assert info["matched_by"] == {"numbers_shuffled": "number", "zero_based": "number", "names": "name"}.get(how, how)
    assert info["image_size"] == (W, H) and info["image_path"] == "img.png"


def test_missing_numbered_point_is_invisible(tmp_path):
    pts = points_facing_left()
    keep = [i for i in range(23) if i != 7]  # C4 top-left
    d = labelme(pts[keep], labels=[str(i + 1) for i in keep])
    ann = read_csxa(write_case(tmp_path, "a", d))
    assert ann.visible[1].tolist() == [False, True, True, True, False]  # C4: AS missing; SP never
    assert "missing_points: C4_TL" in ann.meta["label_notes"]


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda pts: labelme(pts[:22], labels=["p"] * 22), "22 point shapes, expected 23"),
        (lambda pts: labelme(pts, labels=[str(i + 1) for i in range(5)] + ["1"] + [str(i + 1) for i in range(6, 23)]),
         "more than once"),
        (lambda pts: labelme(pts, labels=[str(i + 1) for i in range(22)] + ["40"]), "neither 0 nor 23"),
        (lambda pts: labelme(pts, labels=[str(i) for i in range(22)] + ["40"]), "outside 1..23"),
        (lambda pts: labelme(pts[:2], labels=["0", "23"]), "both 0 and 23"),
        (lambda pts: {"shapes": "nope"}, "not a labelme file"),
        (lambda pts: [1, 2], "not a labelme file"),
        (lambda pts: {"shapes": [{"label": "1", "points": [["a", 2]], "shape_type": "point"}]}, "not \\[x, y\\]"),
        (lambda pts: {"shapes": [{"label": "1"}]}, "no 'points' list"),
        (lambda pts: labelme(pts, size=("w", 3)), "not integers"),
    ],
)
def test_read_labelme_points_errors(tmp_path, make, match):
    p = tmp_path / "bad.json"
    p.write_text(json.dumps(make(points_facing_left())))
    with pytest.raises(CsxaError, match=match) as e:
        read_labelme_points(p)
    assert str(p) in str(e.value)


def test_not_json_is_an_error(tmp_path):
    p = tmp_path / "bad.json"
    p.write_bytes(b"\x00\xff{")
    with pytest.raises(CsxaError, match="not valid JSON"):
        read_labelme_points(p)


def test_non_point_shapes_are_ignored(tmp_path):
    ruler = {"label": "ruler", "points": [[5, 5], [5, 105]], "shape_type": "line"}
    d = labelme(points_facing_left(), labels=["p"] * 23, extra_shapes=[ruler])
    _, info = read_labelme_points(write_case(tmp_path, "a", d, image=False))
    assert info["ignored_shapes"] == ["ruler"] and info["matched_by"] == "order"


def test_facing_left_mapping(tmp_path):
    pts = points_facing_left()
    ann = read_csxa(write_case(tmp_path, "a", labelme(pts)))
    assert (ann.region, ann.scheme, ann.levels) == ("cervical", "lateral5", ["C3", "C4", "C5", "C6", "C7"])
    assert ann.meta["facing"] == "left" and ann.meta["facing_evidence"]["decided_by"] == "cues"
    np.testing.assert_allclose(ann.keypoints_px[0, :4], [[80, 78], [120, 74], [80, 102], [120, 98]])
    assert ann.visible[:, :4].all() and not ann.visible[:, 4].any()
    assert ann.meta["extra_points_px"]["C2"] == {"centroid": [90.0, 40.0], "AI": [80.0, 70.0], "PI": [120.0, 70.0]}
    assert ann.image_size == (W, H) and ann.spacing_mm is None and ann.spacing_source == "unknown"


def test_facing_right_is_the_mirror(tmp_path):
    pts = points_facing_left()
    left = read_csxa(write_case(tmp_path / "l", "a", labelme(pts)))
    right = read_csxa(write_case(tmp_path / "r", "a", labelme(mirror(pts))))
    assert right.meta["facing"] == "right"
    expected = left.keypoints_px[:, :4].copy()
    expected[..., 0] = W - 1 - expected[..., 0]
    np.testing.assert_allclose(right.keypoints_px[:, :4], expected)
    assert right.meta["extra_points_px"]["C2"]["AI"] == [W - 1 - 80.0, 70.0]


def test_decide_cervical_facing_hand_computed():
    pts = points_facing_left()
    c2, c2b, tops, bots = csxa_points_to_endplates(pts)
    facing, ev = decide_cervical_facing(c2, c2b, tops, bots)
    # lordosis: C2 inferior (y 70 / 70) to C7 inferior: left 78 + 4*32 + 24 = 230, right 74 + 4*28 + 24 = 210
    # -> ((230 - 70) - (210 - 70)) / 40 = 0.5; SVA: C7 top mid x 100 - C2 x 90 = 10 / 40 = 0.25
    assert facing == "left"
    assert ev["cues"]["lordosis"] == pytest.approx(0.5) and ev["cues"]["c2_c7_sva"] == pytest.approx(0.25)
    assert decide_cervical_facing(c2, c2b, tops, bots, facing="right")[0] == "right"


def test_swapped_pair_is_put_back(tmp_path):
    pts = points_facing_left()
    pts[[3, 4]] = pts[[4, 3]]  # C3 top corners listed right first
    ann = read_csxa(write_case(tmp_path, "a", labelme(pts)))
    np.testing.assert_allclose(ann.keypoints_px[0, :2], [[80, 78], [120, 74]])
    assert "left_right_swapped: C3 superior" in ann.meta["label_notes"]


def test_image_size_mismatch_and_missing_image(tmp_path):
    p = write_case(tmp_path / "a", "a", labelme(points_facing_left(), size=(W + 1, H)))
    with pytest.raises(CsxaError, match="differ from the image"):
        read_csxa(p)
    q = write_case(tmp_path / "b", "b", labelme(points_facing_left(), image_path="gone.png"), image=False)
    with pytest.raises(FileNotFoundError, match="image not found"):
        read_csxa(q)


def test_image_found_by_stem_when_image_path_is_stale(tmp_path):
    d = labelme(points_facing_left(), image_path="C:\\old\\place\\other.png")
    p = write_case(tmp_path, "case7", d, image=False)
    Image.new("L", (W, H)).save(tmp_path / "case7.png")
    assert read_csxa(p).image.endswith("case7.png")


def test_points_off_the_image(tmp_path):
    pts = points_facing_left()
    pts[22] = [W + 30, H + 30]  # C7 bottom-right off the image: ignored by the orientation cues too
    ann = read_csxa(write_case(tmp_path / "a", "a", labelme(pts)))
    assert ann.meta["facing"] == "left" and not ann.visible[4, 3] and ann.visible[4, 2]
    small = labelme(points_facing_left(), size=(60, 60))
    with pytest.raises(AnnotationError, match="outside"):
        read_csxa(write_case(tmp_path / "b", "b", small, size=(60, 60)))


@pytest.mark.parametrize(
    "kwargs, top, expected, where",
    [
        ({}, {"pixel_equivalent": 0.12}, (0.12, 0.12), "labelme JSON key 'pixel_equivalent'"),
        ({"spacing_unit": "px_per_mm"}, {"pixelEquivalent": "8"}, (0.125, 0.125), "labelme JSON key 'pixelEquivalent'"),
        ({"spacing_table": {"a": (0.2, 0.2)}, "spacing_table_name": "t.csv"}, {"pixel_equivalent": 0.12}, (0.2, 0.2),
         "spacing table t.csv"),
        ({"spacing_table": {"img": (0.3, 0.3)}}, {}, (0.3, 0.3), "spacing table"),  # by image stem
        ({"spacing_mm": 0.1, "spacing_table": {"a": (0.2, 0.2)}}, {}, (0.1, 0.1), "given by the user"),
    ],
)
def test_spacing_precedence(tmp_path, kwargs, top, expected, where):
    ann = read_csxa(write_case(tmp_path, "a", labelme(points_facing_left(), **top)), **kwargs)
    assert ann.spacing_mm == pytest.approx(expected) and ann.spacing_source == "sidecar"
    assert ann.meta["spacing_from"] == where


def test_bad_spacing_in_json_is_an_error(tmp_path):
    p = write_case(tmp_path, "a", labelme(points_facing_left(), pixel_equivalent=9.0))
    with pytest.raises(AnnotationError, match="pixel_equivalent"):
        read_csxa(p)


def test_json_round_trip(tmp_path):
    ann = read_csxa(write_case(tmp_path, "a", labelme(points_facing_left())))
    write_annotation(ann, tmp_path / "out" / "a.json")
    back = read_annotation(tmp_path / "out" / "a.json")
    np.testing.assert_allclose(back.keypoints_px[back.visible], ann.keypoints_px[ann.visible])
    assert back.image == ann.image and back.spacing_mm is None and back.meta["facing"] == "left"


# ----------------------------------------------------------------------------------------------
# random input: only the documented exceptions come out (issue #9)
# ----------------------------------------------------------------------------------------------
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=5),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=4),
    max_leaves=12,
)
_shape = st.fixed_dictionaries(
    {"label": _json_values, "points": _json_values | st.lists(st.lists(_json_values, max_size=3), max_size=2)},
    optional={"shape_type": st.sampled_from(["point", "line", "polygon"]) | _json_values},
)
_labelme_like = st.fixed_dictionaries(
    {"shapes": st.lists(_shape, max_size=6) | _json_values},
    optional={"imageWidth": _json_values, "imageHeight": _json_values, "imagePath": _json_values,
              "pixel_equivalent": _json_values},
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(doc=_labelme_like | _json_values)
def test_random_json_gives_only_documented_errors(tmp_path, doc):
    p = tmp_path / "r.json"
    p.write_text(json.dumps(doc))
    try:
        read_labelme_points(p)
    except AnnotationError:
        pass


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=200))
def test_random_bytes_give_only_documented_errors(tmp_path, data):
    p = tmp_path / "r.json"
    p.write_bytes(data)
    with pytest.raises(AnnotationError):
        read_labelme_points(p)
