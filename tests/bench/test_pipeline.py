"""Tests of the end-to-end pipeline benchmark's metric and table assembly (hand-made numbers, no training)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

import monai_spine.bench.pipeline as bp
from monai_spine.bench.pipeline import ModelEval, PipelineBenchSettings, format_table, model_metrics
from monai_spine.uncertainty.conformal import ConformalCalibrator


def _eval(errors, sigma, ids, found=3, annotated=4, seconds=(1.0, 3.0)):
    e = np.asarray(errors, float)
    return ModelEval("m", e, np.asarray(sigma, float), np.asarray(ids), np.full(e.shape, "corner", dtype=object),
                     found, annotated, np.asarray(seconds))


def test_model_metrics_hand_computed():
    # image 0: errors 1, 3 (mean 2.0, not < 2); image 1: 0.5, 1.5 (mean 1.0)
    ev = _eval([1.0, 3.0, 0.5, 1.5], [1.0, 2.0, 0.5, 3.0], [0, 0, 1, 1])
    cal = ConformalCalibrator(alpha=0.1, q_hat=1.0)  # radius = sigma
    r = model_metrics(ev, cal)
    assert r["mean"] == pytest.approx(1.5)
    assert r["median"] == pytest.approx(1.25)
    assert r["scans_below_2"] == pytest.approx(0.5)
    assert r["sdr_2"] == pytest.approx(0.75)
    assert r["fit_failure_3"] == pytest.approx(0.0)  # 3.0 is not > 3
    # ranks sigma 2,3,1,4 vs errors 2,4,1,3: sum d^2 = 2, rho = 1 - 6*2/(4*15)
    assert r["spearman"] == pytest.approx(0.8)
    assert r["ause"] > 0
    assert r["coverage"] == pytest.approx(0.75)  # 3 > 2 is the only miss
    assert r["mean_radius"] == pytest.approx(1.625)
    assert r["nominal"] == pytest.approx(0.9)
    assert r["recall"] == pytest.approx(0.75)
    assert r["s_per_image"] == pytest.approx(2.0)
    assert r["count"] == 4


@pytest.mark.parametrize("sigma, ause_zero", [([1.0, 4.0, 2.0, 3.0], True), ([4.0, 1.0, 3.0, 2.0], False)])
def test_model_metrics_ause(sigma, ause_zero):
    r = model_metrics(_eval([1.0, 4.0, 2.0, 3.0], sigma, [0, 0, 1, 1]))
    assert (r["ause"] == pytest.approx(0.0, abs=1e-12)) is ause_zero
    assert np.isnan(r["coverage"])  # no calibrator


def test_model_metrics_shape_mismatch():
    with pytest.raises(ValueError, match="differ in shape"):
        model_metrics(_eval([1.0, 2.0], [1.0], [0, 0]))


def test_format_table_cells():
    ev = _eval([1.0, 3.0, 0.5, 1.5], [1.0, 2.0, 0.5, 3.0], [0, 0, 1, 1])
    rows = [model_metrics(ev, ConformalCalibrator(alpha=0.1, q_hat=1.0)), model_metrics(_eval([], [], [], 0, 0, ()))]
    table = format_table(rows).splitlines()
    assert len(table) == 4 and table[0].startswith("| model | detection recall | mean mm")
    assert "| 75.0 % (3/4) | 1.50 | 1.25 | 50.0 % | 75.0 % | 0.0 % | +0.800 |" in table[2]
    assert "75.0 % (nominal 90 %) | 1.62 | 2.00 |" in table[2]
    assert table[3].count("—") >= 10
    with pytest.raises(ValueError):
        format_table([])


def test_format_table_infinite_radius():
    # 4 calibration points cannot give a 90 % quantile: q_hat = inf, every radius infinite
    row = model_metrics(_eval([1.0, 2.0], [1.0, 1.0], [0, 0]), ConformalCalibrator(alpha=0.1))
    assert row["coverage"] == pytest.approx(1.0) and row["mean_radius"] == float("inf")
    assert "| ∞ |" in format_table([row])


def test_evaluate_pipeline_matches_by_level(monkeypatch):
    # two annotated levels; the detector finds C3 at its place, puts C4 outside C4's box, and adds a C5 not annotated
    kp = np.zeros((2, 5, 2))
    kp[0] = [[10, 10], [20, 10], [10, 20], [20, 20], [25, 15]]
    kp[1] = kp[0] + [0, 30]
    ann = SimpleNamespace(levels=["C3", "C4"], visible=np.ones((2, 5), bool), keypoints_px=kp,
                          boxes_px=np.array([[8, 8, 27, 22], [8, 38, 27, 52]], float), scheme="lateral5", image="x.png")
    ann.visible[0, 4] = False  # the spinous process of C3 is not counted
    monkeypatch.setattr(bp, "_read", lambda label: (ann, None, None))
    pts = [{"x_px": x + 1.0, "y_px": y, "sigma_p_total_mm": 0.5} for x, y in kp[0]]  # 1 px off in x
    corners = [{"x_px": x, "y_px": y + 2.0, "sigma_mm": 1.0} for x, y in kp[0][:4]]  # 2 px off in y
    result = {"spacing_mm": [0.5, 0.25], "vertebrae": [
        {"level": "C3", "centre_px": [15.0, 15.0], "points": pts, "corners": corners},
        {"level": "C4", "centre_px": [100.0, 100.0], "points": pts, "corners": corners},
        {"level": "C5", "centre_px": [15.0, 75.0], "points": pts, "corners": corners},
    ]}
    pipe = SimpleNamespace(predict_file=lambda *a, **k: SimpleNamespace(result=result))
    ev = bp.evaluate_pipeline(pipe, ["a.json"], "unused", "regressor", "cervical", "reg")
    assert (ev.found, ev.annotated) == (1, 2)
    np.testing.assert_allclose(ev.errors, [0.5] * 4)  # 1 px * 0.5 mm; SP invisible
    assert list(ev.point_types) == ["corner"] * 4 and ev.seconds.shape == (1,)
    ev = bp.evaluate_pipeline(pipe, ["a.json"], "unused", "heatmap", "cervical", "hm")
    np.testing.assert_allclose(ev.errors, [0.5] * 4)  # 2 px * 0.25 mm
    np.testing.assert_allclose(ev.sigma, [1.0] * 4)


@pytest.mark.parametrize("kwargs", [{"n": 2}, {"epochs_heatmap": 0}, {"alpha": 1.0}])
def test_settings_validation(kwargs):
    with pytest.raises(ValueError):
        PipelineBenchSettings(**kwargs)


def test_settings_share_one_data_set():
    s = PipelineBenchSettings(n=12, size=256)
    assert s.regressor_settings().data_overrides() == s.data_overrides()


def test_uncertainty_classes_and_referral_by_hand():
    from monai_spine.bench.pipeline import ModelEval, format_uncertainty_table, model_metrics
    from monai_spine.uncertainty.classes import Thresholds

    # 10 points, sigma 0.1 .. 1.0 mm, error = 10 * sigma (the most uncertain point errs most)
    sigma = np.arange(1, 11) / 10.0
    ev = ModelEval("m", errors=10 * sigma, sigma=sigma, image_ids=np.zeros(10, int),
                   point_types=np.array(["corner"] * 10, dtype=object), found=2, annotated=2, seconds=[0.5])
    row = model_metrics(ev, thresholds=Thresholds(0.35, 0.75, "mm"))
    # certain: sigma 0.1-0.3 -> errors 1, 2, 3 (mean 2); moderate: 0.4-0.7 -> 4..7 (5.5); high: 0.8-1.0 (9)
    assert row["classes"]["certain"] == {"count": 3.0, "mean": 2.0}
    assert row["classes"]["moderately_uncertain"] == {"count": 4.0, "mean": 5.5}
    assert row["classes"]["highly_uncertain"] == {"count": 3.0, "mean": 9.0}
    # referring the 10 % / 20 % most uncertain drops the 10 / the 9 and 10: means 5.0 and 4.5
    assert row["referral_mean"]["10"] == pytest.approx(5.0) and row["referral_mean"]["20"] == pytest.approx(4.5)
    table = format_uncertainty_table([row])
    assert "| m | 3 / 2.00 | 4 / 5.50 | 3 / 9.00 | 5.00 | 4.50 |" in table


def _one_vertebra_case():
    """One annotated C3 (lateral5, SP invisible) and a result JSON whose points are 1 px (x) off."""
    kp = np.array([[[10, 10], [20, 10], [10, 20], [20, 20], [25, 15]]], float)
    ann = SimpleNamespace(levels=["C3"], visible=np.array([[True] * 4 + [False]]), keypoints_px=kp,
                          boxes_px=np.array([[8, 8, 27, 22]], float), scheme="lateral5", image="x.png")
    pts = [{"x_px": x + 1.0, "y_px": y, "sigma_p_total_mm": 0.5} for x, y in kp[0]]
    corners = [{"x_px": x, "y_px": y + 2.0, "sigma_mm": 1.0} for x, y in kp[0][:4]]
    result = {"spacing_mm": [0.5, 0.25],
              "vertebrae": [{"level": "C3", "centre_px": [15.0, 15.0], "points": pts, "corners": corners}]}
    return ann, result


def test_predict_split_in_memory_uses_predict_image(monkeypatch):
    # out_dir None (the calibration split): predict_image on the image read once, nothing written
    ann, result = _one_vertebra_case()
    img = SimpleNamespace(channel_first=lambda: np.zeros((1, 4, 4), np.float32), spacing_mm=(0.5, 0.25),
                          spacing_source="sidecar")
    monkeypatch.setattr(bp, "_read", lambda label: (ann, None, img))
    calls = []

    def predict_image(image, sp, source, name=None):
        calls.append((image.shape, sp, source, name))
        return result, {}

    def predict_file(*a, **k):
        raise AssertionError("the calibration split must not write outputs")

    pipe = SimpleNamespace(predict_image=predict_image, predict_file=predict_file)
    records, seconds = bp.predict_split(pipe, ["a.json", "b.json"], None)
    assert len(records) == 2 and seconds.shape == (2,)
    assert calls[0] == ((1, 4, 4), (0.5, 0.25), "sidecar", "x.png")
    ev = bp.evaluate_pipeline(pipe, ["a.json"], None, "heatmap", "cervical", "hm")
    np.testing.assert_allclose(ev.errors, [0.5] * 4)  # 2 px * 0.25 mm
    assert (ev.found, ev.annotated) == (1, 1)


@pytest.mark.parametrize("model, errors, sigma", [
    ("regressor", [0.5] * 4, [0.5] * 4),  # 1 px * 0.5 mm; sigma_p_total_mm
    ("heatmap", [0.5] * 4, [1.0] * 4),  # 2 px * 0.25 mm; corner sigma_mm
])
def test_collect_points_models(model, errors, sigma):
    ann, result = _one_vertebra_case()
    ev = bp.collect_points([(ann, result), (ann, result)], model, "cervical", "m", seconds=[1.0, 2.0])
    np.testing.assert_allclose(ev.errors, errors * 2)
    np.testing.assert_allclose(ev.sigma, sigma * 2)
    assert list(ev.image_ids) == [0] * 4 + [1] * 4
    assert (ev.found, ev.annotated) == (2, 2) and ev.seconds.tolist() == [1.0, 2.0]


def test_collect_points_rejects():
    ann, result = _one_vertebra_case()
    with pytest.raises(ValueError, match="model must be"):
        bp.collect_points([(ann, result)], "both", "cervical", "m")
    with pytest.raises(ValueError, match="spacing unknown"):
        bp.collect_points([(ann, {**result, "spacing_mm": None})], "heatmap", "cervical", "m")


def _calibration_points(scale=1.0):
    # 200 corner points, sigma 0.01 .. 2.0 mm, error = scale * sigma: a perfectly ranked, proportional sigma
    sigma = np.arange(1, 201) / 100.0
    return scale * sigma, sigma, np.full(sigma.shape, "corner", dtype=object)


def test_fit_calibration_and_transfer_row():
    e, s, t = _calibration_points()
    cal = bp.fit_calibration(e, s, t, alpha=0.1)
    assert cal["n"] == 200 and cal["mean"] == pytest.approx(np.mean(e))
    assert cal["conformal"].q_hat == pytest.approx(1.0)  # every normalised score is 1
    thr = cal["thresholds"]
    # the rule's q90: below tau1 = 1.6 mm the errors run 0.01..1.59, their 90 % quantile is about 1.44 <= 1.5
    assert thr.units == "mm" and thr.tau1 == pytest.approx(1.6) and thr.tau2 == pytest.approx(2.0)
    # test points whose sigma runs 2 mm above the validation one (detected vs true centres): all highly
    # uncertain although their errors are those of the validation points, and the radii (2 mm wider) cover all
    ev = ModelEval("hm", e, s + 2.0, np.zeros(200, int), t, 1, 1, np.ones(1))
    row = bp.calibration_row(ev, "heatmap", "annotation", cal)
    assert row["classes"]["highly_uncertain"]["count"] == 200 and row["classes"]["certain"]["count"] == 0
    assert row["coverage"] == pytest.approx(1.0) and row["mean_radius"] == pytest.approx(np.mean(s) + 2.0)
    # the same test points under a calibration made on the same kind of predictions keep the rule
    row = bp.calibration_row(ModelEval("hm", e, s, np.zeros(200, int), t, 1, 1, np.ones(1)), "heatmap",
                             "detected", cal)
    assert row["classes"]["certain"]["count"] > 0 and row["coverage"] == pytest.approx(1.0)
    table = bp.format_calibration_table([row]).splitlines()
    assert table[0].startswith("| model | calibrated on (validation) | validation points (mean mm) | tau1 / tau2 mm")
    assert table[2].startswith("| hm | detected boxes / centres | 200 (1.00) | ")
    assert "100.0 % (nominal 90 %)" in table[2]
    with pytest.raises(ValueError, match="source must be"):
        bp.calibration_row(ev, "heatmap", "oracle", cal)


def test_fit_calibration_without_usable_points():
    cal = bp.fit_calibration([float("inf")], [float("nan")], ["corner"], alpha=0.1)
    assert cal["thresholds"] is None and cal["conformal"] is None and np.isnan(cal["mean"])
    row = bp.calibration_row(_eval([1.0], [1.0], [0]), "heatmap", "detected", cal)
    assert row["thresholds"] is None and row["classes"] == {} and np.isnan(row["coverage"])
    assert "| — | — | — | — | — | — |" in bp.format_calibration_table([row])


@pytest.mark.parametrize("thr, text", [
    ({"tau1": 0.5, "tau2": 1.25, "per_point_type": {}}, "0.50 / 1.25"),
    ({"tau1": 0.5, "tau2": 1.25, "per_point_type": {"corner": [0.5, 1.25]}}, "0.50 / 1.25"),
    ({"tau1": 0.5, "tau2": 1.25, "per_point_type": {"corner": [0.5, 1.0], "spinous_process": [0.0, 2.0]}},
     "corner: 0.50 / 1.00; spinous_process: 0.00 / 2.00"),
    ({"tau1": 1.3021553494806044, "tau2": 1.3021553494806046, "per_point_type": {}}, "1.30 / = tau1"),
    ({"tau1": 0.0, "tau2": 5e-324, "per_point_type": {}}, "0.00 / = tau1"),
    (None, "—"),
])
def test_taus_text(thr, text):
    assert bp._taus(thr) == text


def test_settings_calibration_source():
    assert PipelineBenchSettings().calibrate_on == "detected"
    assert "ground-truth boxes" in PipelineBenchSettings(calibrate_on="annotation").describe()
    with pytest.raises(ValueError, match="calibrate_on"):
        PipelineBenchSettings(calibrate_on="oracle")


def test_json_safe_makes_strict_json():
    import json

    from monai_spine.bench.pipeline import json_safe

    v = {"a": np.float32(1.5), "b": [np.int64(3), float("nan"), (float("inf"), 2)], "c": "x"}
    assert json.dumps(json_safe(v), allow_nan=False) == '{"a": 1.5, "b": [3, null, [null, 2]], "c": "x"}'
