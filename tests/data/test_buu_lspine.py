"""Tests of the BUU-LSPINE reader on hand-made fixtures that follow the published format.

The shared helpers have their own tests: tests/data/test_lateral_corners.py, tests/data/test_spacing_table.py.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from monai_spine.data.annotation import AnnotationError, read_annotation, write_annotation
from monai_spine.data.buu_lspine import (
    BuuLspineError,
    buu_view_of,
    decide_lumbar_facing,
    parse_buu_name,
    read_buu_csv,
    read_buu_lspine,
)

W, H = 300, 420


def lateral_rows_facing_left() -> np.ndarray:
    """(11, 4) rows x1, y1, x2, y2 of a lordotic lumbar spine, anterior on the image left.

    Bodies are 60 px deep and 40 px tall; discs are 14 px tall in front and 8 px at the back, so the
    front of the column is taller; the S1 superior endplate drops 24 px towards the front.
    """
    rows = []
    ya, yp = 30.0, 30.0  # anterior (left, x=100) and posterior (right, x=160) heights
    for _ in range(5):
        rows.append([100.0, ya, 160.0, yp])
        ya, yp = ya + 40, yp + 40
        rows.append([100.0, ya, 160.0, yp])
        ya, yp = ya + 14, yp + 8
    rows.append([100.0, ya + 24, 160.0, ya])  # S1 superior: anterior corner lower
    return np.asarray(rows)


def ap_rows() -> np.ndarray:
    """(10, 4) rows of an AP lumbar spine: L1..L5, superior then inferior endplates."""
    rows = []
    y = 40.0
    for j in range(5):
        rows.append([110.0 - j, y, 190.0 + j, y + 2])
        rows.append([111.0 - j, y + 45, 189.0 + j, y + 46])
        y += 60
    return np.asarray(rows)


def mirror_rows(rows: np.ndarray) -> np.ndarray:
    """The same spine on a horizontally mirrored image (x -> W - 1 - x), left corner first again."""
    m = rows.copy()
    m[:, 0], m[:, 2] = W - 1 - rows[:, 2], W - 1 - rows[:, 0]
    m[:, 1], m[:, 3] = rows[:, 3], rows[:, 1]
    return m


def write_case(folder, stem, rows, labels=None, header=False, image=True, size=(W, H)):
    """Write ``<stem>.csv`` (x1,y1,x2,y2,label rows) and a grey ``<stem>.jpg`` into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["x1,y1,x2,y2,label"] if header else []
    for i, r in enumerate(rows):
        lab = 0 if labels is None else labels[i]
        lines.append(",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in r) + f",{lab}")
    csv_path = folder / f"{stem}.csv"
    csv_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    if image:
        Image.new("L", size, 128).save(folder / f"{stem}.jpg")
    return csv_path


# ----------------------------------------------------------------------------------------------
# names and views
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "stem, expected",
    [
        ("0001-F-037Y0", {"patient": "0001", "sex": "F", "age_years": 37, "view": "AP", "patient_key": "0001-F-037Y"}),
        ("3729-M-067Y1", {"patient": "3729", "sex": "M", "age_years": 67, "view": "LA", "patient_key": "3729-M-067Y"}),
        ("0001-F-037Y2", None),
        ("case_01", None),
    ],
)
def test_parse_buu_name(stem, expected):
    assert parse_buu_name(stem) == expected


@pytest.mark.parametrize(
    "rel, view, expected",
    [
        ("LA/0001-F-037Y1.csv", "auto", "LA"),
        ("AP/0001-F-037Y0.csv", "auto", "AP"),
        ("x/0001-F-037Y1.csv", "auto", "LA"),  # name decides
        ("LA/renamed.csv", "auto", "LA"),  # folder decides
        ("x/renamed.csv", "lateral", "LA"),
        ("x/renamed.csv", "ap", "AP"),
    ],
)
def test_buu_view_of(tmp_path, rel, view, expected):
    assert buu_view_of(tmp_path / rel, view) == expected


@pytest.mark.parametrize("rel, match", [("x/renamed.csv", "cannot tell"), ("AP/0001-F-037Y1.csv", "folder")])
def test_buu_view_of_errors(tmp_path, rel, match):
    with pytest.raises(BuuLspineError, match=match):
        buu_view_of(tmp_path / rel)


# ----------------------------------------------------------------------------------------------
# CSV
# ----------------------------------------------------------------------------------------------
def test_read_buu_csv_values_and_optional_header(tmp_path):
    rows = ap_rows()
    a = write_case(tmp_path / "a", "0001-F-037Y0", rows, labels=[0, 0, 1, 0, 0, 0, 0, 0, 2, 0], image=False)
    b = write_case(tmp_path / "b", "0001-F-037Y0", rows, header=True, image=False)
    pts, present, labels = read_buu_csv(a, 10)
    assert pts.shape == (10, 2, 2) and present.all()
    np.testing.assert_allclose(pts[0], [[110, 40], [190, 42]])
    assert labels == [0, 0, 1, 0, 0, 0, 0, 0, 2, 0]
    np.testing.assert_allclose(read_buu_csv(b, 10)[0], pts)


def test_missing_endplate_row_is_invisible(tmp_path):
    rows = lateral_rows_facing_left()
    rows[3] = 0.0  # L2 inferior endplate missing
    p = write_case(tmp_path / "LA", "0001-F-037Y1", rows)
    pts, present, _ = read_buu_csv(p, 11)
    assert not present[3] and np.isnan(pts[3]).all()
    ann = read_buu_lspine(p)
    assert ann.visible[1].tolist() == [True, True, False, False, False]  # L2: AI, PI missing; SP never
    assert any("L2 inferior" in n for n in ann.meta["label_notes"])


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda lines: lines[:-1], "10 endplate rows, expected 11"),
        (lambda lines: lines + ["1,2,3,4,0"], "12 endplate rows"),
        (lambda lines: [lines[0].replace("100", "abc", 1)] + lines[1:], "row 1 is not numeric"),
        (lambda lines: [lines[0].rsplit(",", 1)[0]] + lines[1:], "row 1 has 4 values"),
        (lambda lines: [lines[0].rsplit(",", 1)[0] + ",0.5"] + lines[1:], "not an integer"),
        (lambda lines: [lines[0].replace("100", "nan", 1)] + lines[1:], "non-finite"),
    ],
)
def test_read_buu_csv_errors_name_file_and_row(tmp_path, edit, match):
    p = write_case(tmp_path / "LA", "0001-F-037Y1", lateral_rows_facing_left(), image=False)
    lines = p.read_text().splitlines()
    p.write_text("\n".join(edit(lines)) + "\n")
    with pytest.raises(BuuLspineError, match=match) as e:
        read_buu_csv(p, 11)
    assert str(p) in str(e.value)


def test_superior_below_inferior_is_an_error(tmp_path):
    rows = lateral_rows_facing_left()
    rows[[0, 1]] = rows[[1, 0]]
    p = write_case(tmp_path / "LA", "0001-F-037Y1", rows)
    with pytest.raises(BuuLspineError, match="L1 superior endplate"):
        read_buu_lspine(p)


def test_missing_image_is_file_not_found(tmp_path):
    p = write_case(tmp_path / "LA", "0001-F-037Y1", lateral_rows_facing_left(), image=False)
    with pytest.raises(FileNotFoundError, match="0001-F-037Y1"):
        read_buu_lspine(p)


# ----------------------------------------------------------------------------------------------
# mapping onto the schemes
# ----------------------------------------------------------------------------------------------
def test_lateral_facing_left_mapping(tmp_path):
    rows = lateral_rows_facing_left()
    ann = read_buu_lspine(write_case(tmp_path / "LA", "0001-F-037Y1", rows, labels=[0] * 10 + [3]))
    assert (ann.region, ann.scheme, ann.levels) == ("lumbar", "lateral5", ["L1", "L2", "L3", "L4", "L5"])
    assert ann.image_size == (W, H)
    assert ann.meta["facing"] == "left" and ann.meta["facing_evidence"]["decided_by"] == "cues"
    # L1: AS = superior left, PS = superior right, AI = inferior left, PI = inferior right
    np.testing.assert_allclose(ann.keypoints_px[0, :4], [[100, 30], [160, 30], [100, 70], [160, 70]])
    assert ann.visible[:, :4].all() and not ann.visible[:, 4].any()  # SP never annotated
    s1 = ann.meta["extra_points_px"]["S1"]
    assert s1["AS"] == [100.0, rows[10, 1]] and s1["PS"] == [160.0, rows[10, 3]]
    assert ann.meta["row_labels"][-1] == 3
    assert (ann.meta["patient"], ann.meta["sex"], ann.meta["age_years"]) == ("0001", "F", 37)


def test_lateral_facing_right_is_the_mirror(tmp_path):
    rows = lateral_rows_facing_left()
    left = read_buu_lspine(write_case(tmp_path / "a" / "LA", "0001-F-037Y1", rows))
    right = read_buu_lspine(write_case(tmp_path / "b" / "LA", "0001-F-037Y1", mirror_rows(rows)))
    assert right.meta["facing"] == "right"
    expected = left.keypoints_px.copy()
    expected[..., 0] = W - 1 - expected[..., 0]
    np.testing.assert_allclose(right.keypoints_px[:, :4], expected[:, :4])
    assert right.meta["extra_points_px"]["S1"]["AS"] == [W - 1 - 100.0, rows[10, 1]]


def test_forced_facing_overrides_the_cues(tmp_path):
    p = write_case(tmp_path / "LA", "0001-F-037Y1", lateral_rows_facing_left())
    ann = read_buu_lspine(p, facing="right")
    assert ann.meta["facing"] == "right" and ann.meta["facing_evidence"]["decided_by"] == "user"
    np.testing.assert_allclose(ann.keypoints_px[0, 0], [160, 30])  # AS now on the right


def test_swapped_corners_are_put_back_and_noted(tmp_path):
    rows = lateral_rows_facing_left()
    rows[2] = rows[2][[2, 3, 0, 1]]
    ann = read_buu_lspine(write_case(tmp_path / "LA", "0001-F-037Y1", rows))
    np.testing.assert_allclose(ann.keypoints_px[1, :2], [[100, 84], [160, 78]])
    assert "left_right_swapped: row 3" in ann.meta["label_notes"]


def test_ap_mapping(tmp_path):
    rows = ap_rows()
    ann = read_buu_lspine(write_case(tmp_path / "AP", "0001-F-037Y0", rows))
    assert (ann.region, ann.scheme, ann.levels) == ("ap", "ap4", ["L1", "L2", "L3", "L4", "L5"])
    np.testing.assert_allclose(ann.keypoints_px[2], [[108, 160], [192, 162], [109, 205], [191, 206]])
    assert ann.visible.all() and "facing" not in ann.meta


def test_points_outside_image(tmp_path):
    rows = lateral_rows_facing_left()
    rows[9, 1] = H + 50  # L5 inferior left corner below the image
    ann = read_buu_lspine(write_case(tmp_path / "a" / "LA", "0001-F-037Y1", rows))
    assert not ann.visible[4, 2] and ann.visible[4, 3]
    assert any(n.startswith("point_outside_image: L5 AI") for n in ann.meta["label_notes"])
    with pytest.raises(AnnotationError, match="outside the 100x80 image"):
        read_buu_lspine(write_case(tmp_path / "b" / "LA", "0001-F-037Y1", lateral_rows_facing_left(), size=(100, 80)))


def test_json_round_trip(tmp_path):
    p = write_case(tmp_path / "LA", "0001-F-037Y1", lateral_rows_facing_left())
    ann = read_buu_lspine(p, spacing_mm=0.14)
    write_annotation(ann, tmp_path / "out" / "a.json")
    back = read_annotation(tmp_path / "out" / "a.json")
    np.testing.assert_allclose(back.keypoints_px[back.visible], ann.keypoints_px[ann.visible])
    assert back.visible.tolist() == ann.visible.tolist()
    assert back.image == ann.image and back.spacing_mm == (0.14, 0.14)
    assert back.meta["extra_points_px"] == ann.meta["extra_points_px"]


# ----------------------------------------------------------------------------------------------
# facing of a lateral lumbar view
# ----------------------------------------------------------------------------------------------
def test_decide_lumbar_facing_hand_computed():
    ep = np.full((11, 2, 2), np.nan)
    ep[0] = [[0, 0], [40, 0]]  # L1 superior, level
    ep[10] = [[0, 100], [40, 80]]  # S1 superior: left 20 px lower
    facing, ev = decide_lumbar_facing(ep)
    # lordosis: (100 - 80) / 40 = 0.5; sacral slope: (100 - 80) / 40 = 0.5
    assert facing == "left"
    assert ev["cues"] == {"lordosis": pytest.approx(0.5), "sacral_slope": pytest.approx(0.5)}
    assert ev["score"] == pytest.approx(1.0)


# ----------------------------------------------------------------------------------------------
# spacing (the tables: tests/data/test_spacing_table.py)
# ----------------------------------------------------------------------------------------------
def test_spacing_in_annotation(tmp_path):
    p = write_case(tmp_path / "LA", "0001-F-037Y1", lateral_rows_facing_left())
    unknown = read_buu_lspine(p)
    assert unknown.spacing_mm is None and unknown.spacing_source == "unknown" and "spacing_from" not in unknown.meta
    table = {"0001-f-037y": (0.14, 0.14)}
    ann = read_buu_lspine(p, spacing_table=table, spacing_table_name="report.csv")
    assert ann.spacing_mm == (0.14, 0.14) and ann.spacing_source == "sidecar"
    assert ann.meta["spacing_from"] == "spacing table report.csv"
    forced = read_buu_lspine(p, spacing_mm=(0.1, 0.2), spacing_table=table)
    assert forced.spacing_mm == (0.1, 0.2) and forced.meta["spacing_from"] == "given by the user"


# ----------------------------------------------------------------------------------------------
# random input: only the documented exceptions come out (issue #9)
# ----------------------------------------------------------------------------------------------
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_cell = st.sampled_from(["", "0", "1.5", "-3", "nan", "inf", "x", "1e400", "[0.1, 0.2]", "\x00", "\"", "0.14"])
_csv_text = st.lists(st.lists(_cell, max_size=6).map(",".join), max_size=12).map("\n".join)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=200) | _csv_text.map(lambda t: t.encode("utf-8")), num_rows=st.sampled_from([None, 10, 11]))
def test_random_csv_gives_only_documented_errors(tmp_path, data, num_rows):
    p = tmp_path / "r.csv"
    p.write_bytes(data)
    try:
        pts, present, labels = read_buu_csv(p, num_rows)
    except AnnotationError:
        return
    assert pts.shape == (len(labels), 2, 2) and present.shape == (len(labels),)
    assert np.isfinite(pts[present]).all()
