"""Outputs that chain: predict (regressor, heatmap, both) and corners -> measure -> report -> calibrate.

Tiny untrained networks built here (no shipped weights); the vertebra detector is a stand-in that
returns the annotation's boxes, one vertebra fewer on the first film, so that detection recall has a
hand-computed value.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from monai_spine.cli import main
from monai_spine.data.annotation import read_annotation
from monai_spine.data.prediction import CORNERS_FORMAT, PREDICTION_FORMAT, PredictionError, read_prediction
from monai_spine.data.readers import read_xray
from monai_spine.data.synthetic import generate_dataset
from monai_spine.inference.detector import Detections
from monai_spine.inference.heatmap import CornerPredictor, HeatmapModelSpec
from monai_spine.cli.predict import predict_cli
from monai_spine.inference.pipeline import SpinePipeline
from monai_spine.inference.regressor import KeypointPredictor
from monai_spine.networks.regressor import build_regressor

N_CASES = 2
DROPPED = 1  # vertebrae the stand-in detector misses on the first film


class AnnotationDetector:
    """Returns each film's annotated boxes and levels (found by the film's pixels), the last dropped on film 0."""

    def __init__(self, labels):
        self.by_film = {}
        for i, lab in enumerate(labels):
            ann = read_annotation(lab)
            key = read_xray(ann.image).channel_first().astype(np.float32).tobytes()
            keep = len(ann.levels) - (DROPPED if i == 0 else 0)
            self.by_film[key] = (list(ann.levels[:keep]), ann.boxes_from_keypoints()[:keep])

    def detect(self, image, spacing_mm=None, spacing_source=None):
        levels, boxes = self.by_film[np.asarray(image, np.float32).tobytes()]
        centres = np.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2], 1)
        return Detections(levels, centres, boxes.copy(), np.full(len(levels), 0.9), spacing_mm,
                          spacing_source or "unknown")


def _heatmap_spec():
    from monai_spine.inference.heatmap import CornerPrior

    offs = np.array([[-0.5, -0.4], [0.5, -0.4], [-0.5, 0.4], [0.5, 0.4]])
    return HeatmapModelSpec(size_ratio=0.7, out_size=32, grid=(1, 0.1), scales=(2.0,), rotations_deg=(0.0,),
                            network={"width": 2}, prior=CornerPrior(offs, np.stack([np.eye(2) * 0.01] * 4), count=5))


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """Synthetic films and the predictions of the three --model choices (tiny untrained networks)."""
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("chain")
    labels = generate_dataset(root / "data", "cervical", N_CASES, seed=4, size=256)
    det = AnnotationDetector(labels)
    reg = KeypointPredictor(build_regressor("bayecbam", 5, width=0.125, fc_features=16, spatial_size=(64, 64)),
                            scheme="lateral5", spatial_size=(64, 64), margin_mm=4.0, num_samples=2)
    spec = _heatmap_spec()
    hm = CornerPredictor(spec.build_network(), spec)
    hm_dir = root / "hm"
    spec.save(hm_dir)
    torch.save(hm.network.state_dict(), hm_dir / "model.pt")
    images = [str(read_annotation(lab).image) for lab in labels]
    outs = {}
    for model, r, c in (("regressor", reg, None), ("heatmap", None, hm), ("both", reg, hm)):
        out = root / f"pred-{model}"
        rc = predict_cli(images, out, pipeline=SpinePipeline(det, r, c, overlays=False), progress=False)
        assert rc == 0
        outs[model] = out
    return {"root": root, "labels": labels, "data": root / "data", "hm_dir": hm_dir, **outs}


def _annotated(labels):
    return sum(int(np.any(read_annotation(lab).visible, axis=1).sum()) for lab in labels)


@pytest.mark.parametrize("model, expected_models, points_per_vertebra", [
    ("regressor", ["regressor"], 5),
    ("heatmap", ["heatmap"], 4),
    ("both", ["regressor", "heatmap"], 5),
])
def test_one_reader_reads_every_predict_model(chain, model, expected_models, points_per_vertebra):
    f = sorted(chain[model].glob("*.keypoints.json"))[0]
    pred = read_prediction(f)
    assert pred.format == PREDICTION_FORMAT and pred.version == 1 and pred.models == expected_models
    first = pred.point_set()
    assert int(first.found.sum()) == points_per_vertebra * len(pred.levels)
    if "heatmap" in pred.models:  # the spinous process is no corner: not predicted, not "missing"
        assert not pred.points["heatmap"].predicted[:, 4].any() and not pred.points["heatmap"].missing.any()
        assert np.isfinite(pred.points["heatmap"].sigma_p_px["total"][:, :4]).all()


@pytest.mark.parametrize("model, n_cases", [("regressor", N_CASES), ("heatmap", N_CASES), ("both", 2 * N_CASES)])
def test_measure_accepts_every_predict_model(chain, model, n_cases, tmp_path, capsys):
    assert main(["measure", str(chain[model]), "--out", str(tmp_path), "--num-samples", "5"]) == 0
    res = json.loads((tmp_path / "measurements.json").read_text())
    assert len(res["cases"]) == n_cases and not res["failures"]
    models = sorted(c["model"] for c in res["cases"])
    assert models == sorted({"regressor": ["regressor"] * 2, "heatmap": ["heatmap"] * 2,
                             "both": ["heatmap", "heatmap", "regressor", "regressor"]}[model])
    csv_text = (tmp_path / "measurements.csv").read_text()
    assert ("[heatmap]" in csv_text) == (model != "regressor")


def test_measure_reads_corners_output(chain, tmp_path):
    ann = read_annotation(chain["labels"][1])
    centres = ";".join(f"{x:.1f},{y:.1f}" for x, y in np.nanmean(ann.keypoints_px[:, :4], axis=1))
    out_json = tmp_path / "c.corners.json"
    assert main(["corners", str(ann.image), "--centres", centres, "--ckpt-dir", str(chain["hm_dir"]),
                 "--levels", ",".join(ann.levels), "--out", str(out_json)]) == 0
    pred = read_prediction(out_json)
    assert pred.format == CORNERS_FORMAT and pred.models == ["heatmap"] and pred.levels == list(ann.levels)
    assert main(["measure", str(out_json), "--out", str(tmp_path / "m"), "--num-samples", "0"]) == 0
    res = json.loads((tmp_path / "m" / "measurements.json").read_text())
    assert res["cases"][0]["model"] == "heatmap" and res["cases"][0]["levels"] == list(ann.levels)
    # corners' default file name <image name>.corners.json is matched to the annotation <stem>.json by report
    folder = tmp_path / "corners"
    folder.mkdir()
    out_json.rename(folder / "case_0001.dcm.corners.json")
    assert main(["report", "--predictions", f"clicked={folder}", "--annotations", str(chain["data"]),
                 "--out", str(tmp_path / "r")]) == 0
    text = (tmp_path / "r" / "index.html").read_text()
    assert _cell(text, "clicked", "n_points") == str(4 * len(ann.levels)) and _cell(text, "clicked", "cases") == "1"


def _cell(text, model, cls):
    m = re.search(rf"<tr><td>{re.escape(model)}</td>.*?<td class=\"{cls}\">([^<]*)</td>", text)
    assert m, (model, cls)
    return m.group(1)


def test_report_of_both_models_keeps_the_corners_and_shows_recall(chain, tmp_path):
    out = tmp_path / "report"
    assert main(["report", "--predictions", f"reg={chain['regressor']}", f"both={chain['both']}",
                 "--annotations", str(chain["data"]), "--out", str(out)]) == 0
    text = (out / "index.html").read_text()
    annotated = _annotated(chain["labels"])
    for model in ("reg", "both/regressor", "both/heatmap"):  # the --model both folder gives two rows
        assert _cell(text, model, "annotated") == str(annotated)
        assert _cell(text, model, "found") == str(annotated - DROPPED)
        assert _cell(text, model, "recall") == f"{100 * (annotated - DROPPED) / annotated:.1f} %"
        assert _cell(text, model, "missed").startswith(f"{DROPPED}: case_0000 C")


def test_calibrate_reads_heatmap_predictions(chain, tmp_path, capsys):
    # no --sigma-units: the heatmap model has no crop-fraction sigma, so mm is chosen
    rc = main(["calibrate", "--predictions", str(chain["heatmap"]), "--annotations", str(chain["data"]),
               "--models-dir", str(tmp_path / "m"), "--min-count", "1"])
    out = capsys.readouterr()
    assert "calibrated on" in out.out and "thresholds (mm)" in out.out and (tmp_path / "m" / "conformal.json").is_file()
    assert rc in (0, 1)  # 1: no admissible class on untrained networks (tested in test_calibration)


def test_report_refuses_predictions_of_another_film(chain, tmp_path, capsys):
    other = tmp_path / "other"
    generate_dataset(other, "cervical", N_CASES, seed=4, size=256)  # same cases, another folder
    out = tmp_path / "report"
    code = main(["report", "--predictions", str(chain["regressor"]), "--annotations", str(other), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "predicted on" in err and str(other) in err and err.count("\n") == 1
    assert not out.exists()  # no partial output


def test_prediction_reader_refuses_unknown_versions_and_bad_fields(chain, tmp_path):
    src = json.loads(sorted(chain["both"].glob("*.keypoints.json"))[0].read_text())
    cases = {
        "version": ({**src, "version": 2}, "version 2 is not supported"),
        "format": ({**src, "format": "monai-spine-other"}, "is not a prediction"),
        "corner name": ({**src, "vertebrae": [{**src["vertebrae"][0], "corners": [
            {**c, "name": "XX"} for c in src["vertebrae"][0]["corners"]]}]}, "corner needs a 'name'"),
        "x string": ({**src, "vertebrae": [{**src["vertebrae"][0], "points": [
            {**p, "x_px": "1"} for p in src["vertebrae"][0]["points"]]}]}, "x_px: expected a number"),
    }
    for name, (doc, msg) in cases.items():
        f = tmp_path / f"{name}.keypoints.json"
        f.write_text(json.dumps(doc))
        with pytest.raises(PredictionError, match=msg):
            read_prediction(f)


def test_report_says_when_the_thresholds_vouch_for_no_class(chain, tmp_path):
    from monai_spine.uncertainty.classes import Thresholds

    thr = tmp_path / "thresholds.json"
    Thresholds(0.0, float(np.nextafter(0.0, np.inf)), source="failed run").save(thr)
    out = tmp_path / "report"
    assert main(["report", "--predictions", str(chain["regressor"]), "--annotations", str(chain["data"]),
                 "--out", str(out), "--thresholds", str(thr)]) == 0
    text = (out / "index.html").read_text()
    assert '<b class="calibration-failed">no certain or moderate class can be vouched for</b>' in text
    assert "e-324" not in text and "tau2 =" not in text


@pytest.mark.parametrize("change, message", [
    ({"spacing_mm": [0.5, 0.5]}, "pixel spacing [0.5, 0.5] mm differs"),
    ({"image_size": [1, 1]}, "image size [1, 1] differs"),
    ({"image": "/elsewhere/case_0000.dcm"}, "predicted on /elsewhere/case_0000.dcm"),
])
def test_report_refuses_a_prediction_whose_film_differs(chain, tmp_path, capsys, change, message):
    pred_dir = tmp_path / "pred"
    pred_dir.mkdir()
    for f in chain["regressor"].glob("*.keypoints.json"):
        d = json.loads(f.read_text())
        if f.name.startswith("case_0000"):
            d.update(change)
        (pred_dir / f.name).write_text(json.dumps(d))
    out = tmp_path / "report"
    code = main(["report", "--predictions", str(pred_dir), "--annotations", str(chain["data"]), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "case_0000.keypoints.json" in err and err.count("\n") == 1
    assert not out.exists()


def test_calibrate_of_both_models_says_which_it_calibrates(chain, tmp_path, capsys):
    argv = ["calibrate", "--predictions", str(chain["both"]), "--annotations", str(chain["data"]),
            "--sigma-units", "mm", "--min-count", "1"]
    main(argv + ["--models-dir", str(tmp_path / "a")])
    err = capsys.readouterr().err
    assert "hold regressor and heatmap points; calibrating the regressor's (pass --model heatmap" in err
    main(argv + ["--models-dir", str(tmp_path / "b"), "--model", "heatmap"])
    assert "calibrating" not in capsys.readouterr().err
    rep = json.loads((tmp_path / "b" / "calibration_report.json").read_text())
    assert rep["num_points"] == 4 * (_annotated(chain["labels"]) - DROPPED)  # corners only, no spinous process


def test_inferred_vertebrae_count_as_missed_in_the_recall(chain, tmp_path):
    pred_dir = tmp_path / "pred"
    pred_dir.mkdir()
    for f in chain["regressor"].glob("*.keypoints.json"):
        d = json.loads(f.read_text())
        for v in d["vertebrae"]:
            v["inferred"] = f.name.startswith("case_0001") and v["level"] == "C4"
        (pred_dir / f.name).write_text(json.dumps(d))
    assert read_prediction(pred_dir / "case_0001.keypoints.json").inferred.tolist() == [False, True, False, False,
                                                                                         False]
    out = tmp_path / "report"
    assert main(["report", "--predictions", f"m={pred_dir}", "--annotations", str(chain["data"]),
                 "--out", str(out)]) == 0
    text = (out / "index.html").read_text()
    annotated = _annotated(chain["labels"])
    assert _cell(text, "m", "found") == str(annotated - DROPPED - 1)
    assert _cell(text, "m", "inferred") == "1: case_0001 C4"
    assert _cell(text, "m", "missed").startswith(f"{DROPPED + 1}: ")


def test_the_fcns_own_calibration_classes_its_corners_in_both_files(chain, tmp_path):
    """predict --model both records the FCN's thresholds (mm) beside the regressor's (frac); each point set
    is classed, read back and reported by its own."""
    from monai_spine.evaluation.matching import collect_errors
    from monai_spine.evaluation.report import resolve_thresholds
    from monai_spine.uncertainty.classes import Thresholds
    from monai_spine.uncertainty.conformal import ConformalCalibrator

    hm = CornerPredictor.from_ckpt_dir(chain["hm_dir"], thresholds=Thresholds(1e-6, 1e6, units="mm"),
                                       conformal=ConformalCalibrator(alpha=0.1, q_hat=2.0, sigma_units="mm"))
    reg = KeypointPredictor(build_regressor("bayecbam", 5, width=0.125, fc_features=16, spatial_size=(64, 64)),
                            scheme="lateral5", spatial_size=(64, 64), margin_mm=4.0, num_samples=2)
    images = [str(read_annotation(lab).image) for lab in chain["labels"]]
    out = tmp_path / "pred"
    assert predict_cli(images, out, pipeline=SpinePipeline(AnnotationDetector(chain["labels"]), reg, hm,
                                                           overlays=False), progress=False) == 0
    pred = read_prediction(sorted(out.glob("*.keypoints.json"))[1])
    assert pred.corner_thresholds["units"] == "mm" and pred.thresholds["units"] == "frac"
    hp = pred.points["heatmap"]
    assert set(hp.classes[:, :4].ravel()) == {"moderately_uncertain"}  # every sigma lies between 1e-6 and 1e6 mm
    np.testing.assert_allclose(hp.conformal_radius[:, :4], 2.0 * hp.sigma_p_mm["total"][:, :4])
    assert hp.conformal_unit == "mm"
    thr_hm, _ = resolve_thresholds(collect_errors(out, chain["data"], model="heatmap"))
    thr_reg, _ = resolve_thresholds(collect_errors(out, chain["data"], model="regressor"))
    assert (thr_hm.units, thr_hm.tau2) == ("mm", 1e6) and thr_reg.units == "frac"
