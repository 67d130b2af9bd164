from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from monai_spine.data.annotation import AnnotationError, SpineAnnotation
from monai_spine.data.slicer import (
    MONAI_SPINE_KEY,
    SLICER_MARKUPS_SCHEMA,
    annotation_to_markups,
    markups_to_annotation,
    parse_point_label,
    point_label,
    read_slicer_markups,
    read_slicer_point_fields,
    write_slicer_markups,
)


def _cervical(spacing=(0.5, 0.25), source="PixelSpacing"):
    rng = np.random.default_rng(1)
    kp = rng.uniform(0, 500, size=(5, 5, 2))
    vis = np.ones((5, 5), bool)
    vis[1, 4] = False  # occluded, best guess kept
    vis[4, 4] = False
    kp[4, 4] = np.nan  # missing, no guess
    return SpineAnnotation(
        levels=["C3", "C4", "C5", "C6", "C7"],
        keypoints_px=kp,
        visible=vis,
        region="cervical",
        scheme="lateral5",
        image="/data/case 1.dcm",
        image_size=(512, 640),
        spacing_mm=spacing,
        spacing_source=source if spacing is not None else "unknown",
        meta={"case": 1, "note": "ünïcode"},
    )


def _strict_loads(text):
    def bad(c):
        raise ValueError(f"non-standard JSON constant {c}")

    return json.loads(text, parse_constant=bad)


def _assert_same(a, b):
    assert a.levels == b.levels
    assert (a.region, a.scheme) == (b.region, b.scheme)
    np.testing.assert_array_equal(a.visible, b.visible)
    np.testing.assert_allclose(a.keypoints_px, b.keypoints_px, rtol=0, atol=1e-6)  # NaN == NaN here
    assert a.image == b.image and a.image_size == b.image_size
    assert a.spacing_mm == b.spacing_mm and a.spacing_source == b.spacing_source
    assert a.meta == b.meta


@pytest.mark.parametrize("spacing", [(0.5, 0.25), (0.139, 0.139), None])
def test_round_trip_is_identity(tmp_path, spacing):
    ann = _cervical(spacing)
    path = tmp_path / "case.mkp.json"
    write_slicer_markups(ann, path)
    back = read_slicer_markups(path)
    _assert_same(ann, back)
    _strict_loads(path.read_text())  # valid JSON: no NaN written


def test_positions_are_millimetres_in_lps(tmp_path):
    ann = SpineAnnotation(
        levels=["T1"],
        keypoints_px=[[[10, 20], [30, 20], [10, 40], [30, 40]]],
        visible=[[True, True, True, False]],
        region="ap",
        scheme="ap4",
        spacing_mm=(0.5, 0.25),
        spacing_source="PixelSpacing",
    )
    d = annotation_to_markups(ann)
    assert d["@schema"] == SLICER_MARKUPS_SCHEMA
    (m,) = d["markups"]
    assert (m["type"], m["coordinateSystem"], m["coordinateUnits"]) == ("Fiducial", "LPS", "mm")
    cps = m["controlPoints"]
    assert [c["label"] for c in cps] == ["T1-TL", "T1-TR", "T1-BL", "T1-BR"]
    # hand-computed: (10 * 0.5, 20 * 0.25, 0), (30 * 0.5, 40 * 0.25, 0)
    assert cps[0]["position"] == [5.0, 5.0, 0.0]
    assert cps[3]["position"] == [15.0, 10.0, 0.0]
    assert [c["positionStatus"] for c in cps] == ["defined", "defined", "defined", "missing"]
    assert m["description"] == ""
    assert m[MONAI_SPINE_KEY]["units"] == "mm"


def test_unknown_spacing_writes_pixels_flagged_or_refuses():
    ann = _cervical(spacing=None)
    m = annotation_to_markups(ann)["markups"][0]
    assert m["controlPoints"][0]["position"][:2] == pytest.approx(ann.keypoints_px[0, 0].tolist())
    assert "spacing unknown" in m["description"] and "pixels" in m["description"]
    assert m[MONAI_SPINE_KEY]["units"] == "px" and m[MONAI_SPINE_KEY]["spacing_mm"] is None
    with pytest.raises(ValueError, match="spacing is unknown"):
        annotation_to_markups(ann, on_unknown_spacing="raise")
    with pytest.raises(ValueError, match="on_unknown_spacing"):
        annotation_to_markups(ann, on_unknown_spacing="guess")


def test_invisible_point_keeps_finite_guess_and_omits_nan(tmp_path):
    ann = _cervical()
    cps = annotation_to_markups(ann)["markups"][0]["controlPoints"]
    by_label = {c["label"]: c for c in cps}
    assert by_label["C4-SP"]["positionStatus"] == "missing" and "position" in by_label["C4-SP"]
    assert by_label["C7-SP"]["positionStatus"] == "missing" and "position" not in by_label["C7-SP"]


@pytest.mark.parametrize(
    "label, expected",
    [
        ("C4-AS", ("C4", "AS")),
        ("c4-as", ("C4", "AS")),
        (" T12 - BR ", ("T12", "BR")),
        ("L5-SP", ("L5", "SP")),
    ],
)
def test_parse_point_label(label, expected):
    assert parse_point_label(label) == expected
    assert point_label(*expected) == f"{expected[0]}-{expected[1]}"


@pytest.mark.parametrize(
    "label, match",
    [
        ("F-1", "is not '<level>-<point>'"),
        ("C4AS", "is not"),
        ("C4-AS-2", "is not"),
        ("X9-AS", "unknown vertebra level"),
        ("", "is not"),
    ],
)
def test_parse_point_label_rejects(label, match):
    with pytest.raises(ValueError, match=match):
        parse_point_label(label)


def _plain_markups(points, cs="LPS", units="mm"):
    """A Slicer-made file: no monaiSpine block."""
    return {
        "@schema": SLICER_MARKUPS_SCHEMA,
        "markups": [
            {"type": "Line", "controlPoints": []},
            {"type": "Fiducial", "coordinateSystem": cs, "coordinateUnits": units, "controlPoints": points},
        ],
    }


def test_plain_slicer_file_with_missing_points_and_explicit_spacing():
    d = _plain_markups(
        [
            {"label": "L2-AS", "position": [10.0, 20.0, 0.0], "positionStatus": "defined"},
            {"label": "L1-PI", "position": [4.0, 8.0, 0.0]},  # no status + position -> defined
            {"label": "L1-SP", "positionStatus": "undefined"},
            {"label": "L2-PS", "position": [1.0, 1.0, 0.0], "positionStatus": "preview"},
        ]
    )
    ann = markups_to_annotation(d, spacing_mm=(0.5, 2.0))
    assert ann.levels == ["L1", "L2"]  # sorted top to bottom
    assert (ann.region, ann.scheme) == ("lumbar", "lateral5")
    assert ann.spacing_mm == (0.5, 2.0) and ann.spacing_source == "sidecar"
    np.testing.assert_allclose(ann.keypoints_px[1, 0], [20.0, 10.0])  # (10 / 0.5, 20 / 2)
    np.testing.assert_allclose(ann.keypoints_px[0, 3], [8.0, 4.0])
    expected_vis = np.zeros((2, 5), bool)
    expected_vis[1, 0] = expected_vis[0, 3] = True
    np.testing.assert_array_equal(ann.visible, expected_vis)
    assert np.isnan(ann.keypoints_px[0, 0]).all()  # never listed
    np.testing.assert_allclose(ann.keypoints_px[1, 1], [2.0, 0.5])  # preview position kept, invisible


@pytest.mark.parametrize(
    "cs, units, position, expected_px",
    [
        ("LPS", "mm", [10.0, 20.0, 0.0], [20.0, 80.0]),
        ("RAS", "mm", [-10.0, -20.0, 0.0], [20.0, 80.0]),
        ("LPS", "um", [10000.0, 20000.0, 0.0], [20.0, 80.0]),
        ("LPS", ["mm", "UCUM", "millimeter"], [10.0, 20.0, 0.0], [20.0, 80.0]),
    ],
)
def test_coordinate_systems_and_units(cs, units, position, expected_px):
    d = _plain_markups([{"label": "T1-TL", "position": position, "positionStatus": "defined"}], cs, units)
    ann = markups_to_annotation(d, spacing_mm=(0.5, 0.25))
    assert (ann.region, ann.scheme) == ("ap", "ap4")
    np.testing.assert_allclose(ann.keypoints_px[0, 0], expected_px)


def test_spacing_none_reads_positions_as_pixels():
    d = _plain_markups([{"label": "C3-AS", "position": [7.0, 9.0, 0.0]}])
    ann = markups_to_annotation(d, spacing_mm=None)
    assert ann.spacing_mm is None and ann.spacing_source == "unknown"
    assert ann.region == "cervical"
    np.testing.assert_allclose(ann.keypoints_px[0, 0], [7.0, 9.0])


def _cp(label, position=(1, 2, 0), status=None):
    cp = {"label": label}
    if position is not None:
        cp["position"] = list(position)
    if status is not None:
        cp["positionStatus"] = status
    return cp


_PX = {"spacing_mm": None}


@pytest.mark.parametrize(
    "points, kwargs, match",
    [
        ([_cp("C3-AS")], {}, "no 'monaiSpine' block"),
        ([_cp("F-1")], _PX, r"controlPoints\[0\].*'F-1'"),
        ([_cp("C3-AS"), _cp("c3-as")], _PX, r"controlPoints\[1\].*repeats controlPoints\[0\]"),
        ([_cp("C3-AS", None, "defined")], _PX, "defined point without"),
        ([_cp("C3-AS", (1, 2), "defined")], _PX, "without a 3-number"),
        ([_cp("C3-AS", status="placed")], _PX, "unknown positionStatus"),
        ([_cp("C3-TL"), _cp("C3-AS")], _PX, "cannot tell the keypoint scheme"),
        ([_cp("C3-AS"), _cp("L1-AS")], _PX, "cannot tell the region"),
        ([_cp("C3-AS")], {"spacing_mm": (0.0, 1.0)}, "two positive numbers"),
        ([_cp("C3-AS")], {"spacing_mm": None, "markup_index": 1}, "markup_index 1"),
        ([_cp("C3-TL")], {"spacing_mm": None, "scheme": "lateral5"}, r"\['TL'\] are not in scheme"),
    ],
)
def test_reader_errors_name_the_problem(points, kwargs, match):
    with pytest.raises(AnnotationError, match=match):
        markups_to_annotation(_plain_markups(points), source="f.mkp.json", **kwargs)


def test_reader_can_skip_unknown_labels():
    d = _plain_markups([{"label": "F-1", "position": [1, 2, 0]}, {"label": "C5-SP", "position": [3, 4, 0]}])
    ann = markups_to_annotation(d, spacing_mm=None, ignore_unknown_labels=True)
    assert ann.levels == ["C5"]
    np.testing.assert_allclose(ann.keypoints_px[0, 4], [3, 4])


@pytest.mark.parametrize(
    "d, match",
    [
        ({"markups": {}}, "not a Slicer markups file"),
        ([], "not a Slicer markups file"),
        ({"markups": [{"type": "Fiducial", "coordinateSystem": "XYZ"}]}, "coordinateSystem"),
        ({"markups": [{"type": "Fiducial", "coordinateUnits": "cm"}]}, "coordinateUnits"),
    ],
)
def test_reader_rejects_bad_files(d, match):
    with pytest.raises(AnnotationError, match=match):
        markups_to_annotation(d, spacing_mm=None)


def test_read_invalid_json_names_the_file(tmp_path):
    p = tmp_path / "bad.mkp.json"
    p.write_text("{nope")
    with pytest.raises(AnnotationError, match="bad.mkp.json: not valid JSON"):
        read_slicer_markups(p)


def test_point_fields_round_trip(tmp_path):
    ann = _cervical()
    sigma = np.arange(25, dtype=np.float32).reshape(5, 5) / 10
    desc = [
        [f"sigma_px={sigma[i, j]:.1f};class={'high' if sigma[i, j] > 1 else 'low'}" for j in range(5)] for i in range(5)
    ]
    custom = np.empty((5, 5), dtype=object)
    custom[0, 0] = {"sigma_px": [1.0, 2.0]}
    path = tmp_path / "f.mkp.json"
    write_slicer_markups(ann, path, point_fields={"description": desc, "sigmaPx": sigma, "extra": custom})
    d = _strict_loads(path.read_text())
    cp0 = d["markups"][0]["controlPoints"][1]
    assert cp0["description"] == "sigma_px=0.1;class=low" and cp0["sigmaPx"] == pytest.approx(0.1)
    assert "extra" not in cp0
    got = read_slicer_point_fields(path, fields=("description", "sigmaPx", "extra", "absent"))
    assert got["description"].tolist() == desc
    np.testing.assert_allclose(got["sigmaPx"].astype(float), sigma, rtol=1e-6)
    assert got["extra"][0, 0] == {"sigma_px": [1.0, 2.0]} and got["extra"][0, 1] is None
    assert (got["absent"] == None).all()  # noqa: E711


@pytest.mark.parametrize(
    "fields, match",
    [
        ({"position": np.zeros((5, 5))}, "reserved"),
        ({"label": [["x"] * 5] * 5}, "reserved"),
        ({"description": [["x"] * 5] * 4}, r"expected \(N, K\) = \(5, 5\)"),
        ({"description": np.array(["x"] * 5)}, r"expected \(N, K\)"),
        ({"description": "x"}, r"expected \(N, K\)"),
    ],
)
def test_point_fields_rejected(fields, match):
    with pytest.raises(ValueError, match=match):
        annotation_to_markups(_cervical(), point_fields=fields)


def test_nan_in_meta_refused_naming_the_file(tmp_path):
    ann = _cervical()
    ann.meta["bad"] = float("nan")
    with pytest.raises(ValueError, match="x.mkp.json: cannot write"):
        write_slicer_markups(ann, tmp_path / "x.mkp.json")
    assert not (tmp_path / "x.mkp.json").exists()


def test_output_validates_against_markups_schema_subset():
    """The fields we write, checked against the constraints of markups-schema-v1.0.3 (plus
    Slicer's 'missing' status, which Slicer writes although the schema enum predates it)."""
    jsonschema = pytest.importorskip("jsonschema")
    num3 = {"type": "array", "items": {"type": "number"}, "minItems": 3, "maxItems": 3}
    schema = {
        "type": "object",
        "required": ["@schema", "markups"],
        "properties": {
            "@schema": {"type": "string"},
            "markups": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["type"],
                    "properties": {
                        "type": {"enum": ["Fiducial", "Line", "Angle", "Curve", "ClosedCurve", "Plane", "ROI"]},
                        "name": {"type": "string"},
                        "coordinateSystem": {"enum": ["LPS", "RAS"]},
                        "coordinateUnits": {"enum": ["mm", "um"]},
                        "locked": {"type": "boolean"},
                        "fixedNumberOfControlPoints": {"type": "boolean"},
                        "labelFormat": {"type": "string"},
                        "controlPoints": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "properties": {
                                    "id": {"type": "string"},
                                    "label": {"type": "string"},
                                    "description": {"type": "string"},
                                    "associatedNodeID": {"type": "string"},
                                    "position": num3,
                                    "selected": {"type": "boolean"},
                                    "locked": {"type": "boolean"},
                                    "visibility": {"type": "boolean"},
                                    "positionStatus": {"enum": ["undefined", "preview", "defined", "missing"]},
                                },
                            },
                        },
                        "display": {
                            "type": "object",
                            "properties": {
                                "visibility": {"type": "boolean"},
                                "pointLabelsVisibility": {"type": "boolean"},
                            },
                        },
                    },
                },
            },
        },
    }
    jsonschema.validate(annotation_to_markups(_cervical()), schema)
    jsonschema.validate(annotation_to_markups(_cervical(None)), schema)


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 5),
    sx=st.floats(0.01, 2.0),
    sy=st.floats(0.01, 2.0),
    seed=st.integers(0, 2**16),
)
def test_round_trip_property(n, sx, sy, seed):
    rng = np.random.default_rng(seed)
    kp = rng.uniform(-0.5, 3000, size=(n, 4, 2))
    vis = rng.random((n, 4)) > 0.2
    levels = ["T1", "T2", "T3", "T4", "T5"][:n]
    ann = SpineAnnotation(levels, kp, vis, "ap", "ap4", spacing_mm=(sx, sy), spacing_source="ImagerPixelSpacing")
    text = json.dumps(annotation_to_markups(ann), allow_nan=False)
    _assert_same(ann, markups_to_annotation(json.loads(text)))
