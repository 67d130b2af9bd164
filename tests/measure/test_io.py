"""Reading prediction/annotation files, measuring them, and the JSON + CSV outputs of measure_files."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from monai_spine.data.annotation import AnnotationError, SpineAnnotation, write_annotation
from monai_spine.measure.cobb import cobb_angles
from monai_spine.measure.batch import measure_files
from monai_spine.measure.io import CSV_COLUMNS, MEASUREMENTS_FORMAT, read_keypoint_file

CERV = ["C3", "C4", "C5", "C6", "C7"]


def write_lateral_annotation(path, kp_px, levels, spacing=None, region="cervical"):
    ann = SpineAnnotation(
        levels=list(levels),
        keypoints_px=kp_px,
        visible=np.ones(kp_px.shape[:2], bool),
        region=region,
        scheme="lateral5",
        image="case.dcm",
        image_size=(2000, 2000),
        spacing_mm=spacing,
        spacing_source="PixelSpacing" if spacing is not None else "unknown",
    )
    write_annotation(ann, path)
    return path


def prediction_dict(kp_px, levels, spacing, sigma_p_mm=None, sigma_p_frac=0.01, scheme="lateral5"):
    """A prediction in the layout of KeypointPredictor.to_json."""
    names = ["AS", "PS", "AI", "PI", "SP"] if scheme == "lateral5" else ["TL", "TR", "BL", "BR"]
    verts = []
    for i, lev in enumerate(levels):
        pts = []
        for j, n in enumerate(names):
            x, y = kp_px[i, j]
            p = {
                "name": n,
                "x_px": float(x),
                "y_px": float(y),
                "x_mm": None if spacing is None else float(x * spacing[0]),
                "y_mm": None if spacing is None else float(y * spacing[1]),
                "uncertainty_class": "certain",
            }
            for kind in ("aleatoric", "epistemic", "total"):
                p[f"sigma_p_{kind}_frac"] = sigma_p_frac
                p[f"sigma_p_{kind}_mm"] = None if (spacing is None or sigma_p_mm is None) else sigma_p_mm
            pts.append(p)
        verts.append({"level": lev, "points": pts})
    return {
        "image": "case.dcm",
        "scheme": scheme,
        "spacing_mm": None if spacing is None else list(spacing),
        "spacing_source": "PixelSpacing" if spacing is not None else "unknown",
        "units_note": "mm values are null when the spacing is unknown; pixel values are always given",
        "thresholds": None,
        "mc_dropout_samples": 10,
        "vertebrae": verts,
    }


@pytest.fixture
def cervical_px(lateral_chain):
    return lateral_chain([10.0, 5.0, -3.0, 6.0], [2.0, 0.0, -1.0, 0.5]) / 0.1


def test_annotation_with_spacing_in_mm(tmp_path, cervical_px):
    f = write_lateral_annotation(tmp_path / "a.json", cervical_px, CERV, spacing=(0.1, 0.1))
    res = measure_files([f], tmp_path / "out", num_samples=0)
    case = res["cases"][0]
    assert case["kind"] == "annotation" and case["length_unit"] == "mm" and case["uncertainty"] is None
    segs = {s["level"]: s for s in case["segments"]}
    assert list(segs) == ["C3-C4", "C4-C5", "C5-C6", "C6-C7"]
    assert segs["C3-C4"]["angle_deg"]["value"] == pytest.approx(10.0)
    assert segs["C3-C4"]["translation_mm"]["value"] == pytest.approx(2.0)
    assert segs["C5-C6"]["translation_share"]["value"] == pytest.approx(-1.0 / 15.0)
    assert segs["C3-C4"]["disc_height_posterior_mm"]["value"] == pytest.approx(np.hypot(2.0, 4.0))
    assert segs["C3-C4"]["angle_deg"]["std"] is None
    assert case["lordosis"] == [{"span": "C3-C7", "angle_deg": pytest.approx({"value": 18.0, "mean": None, "std": None, "ci_low": None, "ci_high": None})}]
    # files: strict JSON equal to the result, CSV with one row per measurement
    on_disk = json.loads((tmp_path / "out" / "measurements.json").read_text())
    assert on_disk["format"] == MEASUREMENTS_FORMAT and on_disk["cases"][0]["segments"] == case["segments"]
    rows = list(csv.DictReader(open(tmp_path / "out" / "measurements.csv", encoding="utf-8")))
    assert tuple(rows[0]) == CSV_COLUMNS
    # 4 segments x 5 measurements + 5 body depths + 1 lordosis
    assert len(rows) == 4 * 5 + 5 + 1
    row = next(r for r in rows if r["item"] == "C3-C4" and r["measurement"] == "translation_mm")
    assert row["unit"] == "mm" and float(row["value"]) == pytest.approx(2.0) and row["std"] == ""
    assert {r["unit"] for r in rows} == {"deg", "mm", "fraction"}


def test_unknown_spacing_reports_pixels(tmp_path, cervical_px):
    f = write_lateral_annotation(tmp_path / "a.json", cervical_px, CERV, spacing=None)
    res = measure_files([f], tmp_path / "out", num_samples=0)
    case = res["cases"][0]
    seg = case["segments"][0]
    assert case["length_unit"] == "px" and "translation_mm" not in seg
    assert seg["translation_px"]["value"] == pytest.approx(20.0)
    assert seg["angle_deg"]["value"] == pytest.approx(10.0)
    assert any("pixels" in n for n in case["notes"])
    rows = list(csv.DictReader(open(tmp_path / "out" / "measurements.csv", encoding="utf-8")))
    assert "mm" not in {r["unit"] for r in rows} and "px" in {r["unit"] for r in rows}


def test_prediction_sigma_mm_is_propagated(tmp_path, cervical_px):
    sp = (0.1, 0.2)
    kp = cervical_px * np.array([1.0, 0.5])  # same anatomy at anisotropic spacing
    d = prediction_dict(kp, CERV, sp, sigma_p_mm=0.3)
    f = tmp_path / "p.keypoints.json"
    f.write_text(json.dumps(d))
    rec = read_keypoint_file(f)
    assert rec.kind == "prediction" and rec.region == "cervical" and rec.spacing_mm == sp
    np.testing.assert_allclose(rec.sigma_px[0, 0], [0.3 / np.sqrt(2) / 0.1, 0.3 / np.sqrt(2) / 0.2])
    res = measure_files([f], tmp_path / "out", num_samples=200, seed=1)
    case = res["cases"][0]
    assert case["uncertainty"]["num_samples"] == 200 and "sigma_p_total_mm" in case["uncertainty"]["sigma_source"]
    a = case["segments"][0]["angle_deg"]
    assert a["value"] == pytest.approx(10.0) and a["std"] > 0 and a["ci_low"] < a["value"] < a["ci_high"]
    # reproducible with the same seed
    again = measure_files([f], tmp_path / "out2", num_samples=200, seed=1)
    assert again["cases"][0]["segments"] == case["segments"]


def test_prediction_without_spacing_needs_sigma_px(tmp_path, cervical_px):
    f = tmp_path / "p.json"
    f.write_text(json.dumps(prediction_dict(cervical_px, CERV, None)))
    res = measure_files([f], tmp_path / "out", num_samples=50)
    case = res["cases"][0]
    assert case["uncertainty"] is None and any("crop fractions" in n for n in case["notes"])
    res = measure_files([f], tmp_path / "out", num_samples=50, sigma_px=1.0)
    case = res["cases"][0]
    assert case["uncertainty"]["sigma_source"].startswith("constant")
    assert case["segments"][0]["translation_px"]["std"] > 0


def test_flexion_extension_pair(tmp_path, lateral_chain):
    flex = lateral_chain([2.0, -12.0, 1.0], [1.0, 4.0, 0.5]) / 0.1
    ext = lateral_chain([10.0, 12.0, 9.0], [0.0, 0.0, 0.0]) / 0.1
    levels = ["C3", "C4", "C5", "C6"]
    ff = write_lateral_annotation(tmp_path / "flex.json", flex, levels, (0.1, 0.1))
    fe = write_lateral_annotation(tmp_path / "ext.json", ext, levels, (0.1, 0.1))
    res = measure_files([], tmp_path / "out", flexion=[ff], extension=[fe], num_samples=100, sigma_px=0.5)
    assert len(res["cases"]) == 2  # both views are also measured on their own
    mot = res["motion"][0]
    assert mot["region"] == "cervical" and mot["length_unit"] == "mm" and mot["thresholds"]["translation_mm"] == 3.5
    by = {s["level"]: s for s in mot["segments"]}
    assert by["C4-C5"]["angular_motion_deg"]["value"] == pytest.approx(24.0)
    assert by["C4-C5"]["translational_motion_mm"]["value"] == pytest.approx(4.0)
    assert by["C4-C5"]["flags"] == {
        "translation_mm": True,
        "translation_share": True,
        "angular_motion": None,
        "relative_angular_motion": True,
    }
    assert by["C4-C5"]["unstable"] is True and by["C3-C4"]["unstable"] is False
    p = by["C4-C5"]["exceed_probability"]
    assert p["relative_angular_motion"] == pytest.approx(1.0) and 0.0 <= p["translation_mm"] <= 1.0
    rows = list(csv.DictReader(open(tmp_path / "out" / "measurements.csv", encoding="utf-8")))
    flag_rows = [r for r in rows if r["group"] == "motion" and r["measurement"] == "flag_any"]
    assert [r["value"] for r in flag_rows] == ["0", "1", "0"]


def test_ap_annotation_cobb_and_smape(tmp_path, ap_spine):
    tilts = [2.0, -6.0, 12.0, 0, 0, 0, 0, 0, 0, -20.0, 0, 0, 0, 0, 0, 5.0, 0]
    kp = ap_spine(tilts, [(500.0 + 150 * np.sin(2 * np.pi * i / 16), 200.0 + 100 * i) for i in range(17)])
    ref = cobb_angles(kp, 3000.0).angles_deg
    levels = [f"T{i}" for i in range(1, 13)] + [f"L{i}" for i in range(1, 6)]
    ann = SpineAnnotation(
        levels=levels, keypoints_px=kp, visible=np.ones((17, 4), bool), region="ap", scheme="ap4",
        image_size=(1000, 3000), meta={"cobb_angles_deg": [float(a) for a in ref]},
    )
    write_annotation(ann, tmp_path / "ap.json")
    res = measure_files([tmp_path], tmp_path / "out", num_samples=20, sigma_px=0.0)
    case = res["cases"][0]
    assert case["view"] == "ap" and case["image_height_source"] == "image_size"
    assert case["cobb"]["case"] == "s_upper" and case["cobb"]["main"]["levels"] == ["T3", "T10"]
    assert case["cobb"]["main"]["angle_deg"]["value"] == pytest.approx(32.0, abs=1e-4)
    assert case["cobb"]["main"]["angle_deg"]["std"] == pytest.approx(0.0, abs=1e-9)
    assert res["cobb_summary"] == {"num_images": 1, "smape_percent": 0.0, "within_1deg_share": 1.0, "max_abs_error_deg": 0.0}


@pytest.mark.parametrize(
    "content, err",
    [
        ("not json", "not valid JSON"),
        (json.dumps({"hello": 1}), "neither"),
        (json.dumps({"scheme": "lateral7", "vertebrae": []}), "unknown keypoint scheme"),
        (json.dumps({"scheme": "lateral5", "vertebrae": [{"level": "C3", "points": [{"x_px": 1}]}]}), "expected 5 points"),
    ],
)
def test_bad_files_name_the_file(tmp_path, content, err):
    f = tmp_path / "bad.json"
    f.write_text(content)
    with pytest.raises(AnnotationError, match=err) as e:
        read_keypoint_file(f)
    assert "bad.json" in str(e.value)


def test_argument_errors(tmp_path, cervical_px):
    f = write_lateral_annotation(tmp_path / "a.json", cervical_px, CERV, spacing=(0.1, 0.1))
    with pytest.raises(ValueError, match="pairs"):
        measure_files([f], tmp_path / "out", flexion=[f], extension=[])
    with pytest.raises(FileNotFoundError):
        measure_files([tmp_path / "missing.json"], tmp_path / "out")
    with pytest.raises(ValueError, match="sigma_px"):
        measure_files([f], tmp_path / "out", sigma_px=-1.0)
    assert not (tmp_path / "out" / "measurements.json").exists()
