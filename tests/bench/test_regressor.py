"""The regressor benchmark's pieces: table, Spearman, evaluation with a fake predictor, bundle wiring."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from monai_spine.bench.regressor import (
    BenchSettings,
    SpearmanResult,
    _spearman_result,
    VariantResult,
    evaluate_predictor,
    format_header,
    format_table,
    variant_result,
)
from monai_spine.data.annotation import SpineAnnotation, write_annotation
from monai_spine.data.keypoints import get_scheme

BUNDLE = Path(__file__).resolve().parents[2] / "bundle"
NAN = float("nan")


# ----------------------------------------------------------------------------------------------
# table
# ----------------------------------------------------------------------------------------------
def _result(variant, mean, median, scans, sdr, fail, seconds, rho, unit="mm"):
    summary = {f"mean_{unit}": mean, f"median_{unit}": median, f"scans_below_2.0{unit}": scans,
               f"sdr_2.0{unit}": sdr, f"fit_failure_3.0{unit}": fail, "count": 10.0}
    return VariantResult(variant, unit, summary, {k: SpearmanResult(v, 0.01, 10) for k, v in rho.items()}, seconds)


def test_format_table_rows_from_hand_made_numbers():
    table = format_table([
        _result("baseline", 2.345, 1.5, 0.25, 0.6, 0.125, 301.4, {"epistemic": 0.1234}),
        _result("bayecbam", 1.0, 0.999, 1.0, 0.95, 0.0, 299.6,
                {"total": 0.5, "aleatoric": -0.25, "epistemic": NAN}),
    ])
    lines = table.splitlines()
    assert lines[0] == ("| variant | mean mm | median mm | scans mean < 2 mm | SDR@2mm | fit failure > 3 mm | train s "
                        "| Spearman σp total | Spearman σp aleatoric | Spearman σp epistemic |")
    assert lines[1] == "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    assert lines[2] == "| baseline | 2.35 | 1.50 | 25.0 % | 60.0 % | 12.5 % | 301 | — | — | +0.123 |"
    assert lines[3] == "| bayecbam | 1.00 | 1.00 | 100.0 % | 95.0 % | 0.0 % | 300 | +0.500 | -0.250 | — |"
    assert len(lines) == 4


def test_format_table_in_pixels_and_refuses_mixed_units():
    px = _result("cbam", 4.0, 3.0, 0.0, 0.5, 0.5, 10.0, {}, unit="px")
    assert "| mean px |" in format_table([px]) and "| cbam | 4.00 | 3.00 | 0.0 % | 50.0 % | 50.0 % | 10 |" in format_table([px])
    with pytest.raises(ValueError, match="mix units"):
        format_table([px, _result("baseline", 1, 1, 1, 1, 0, 1, {})])
    with pytest.raises(ValueError):
        format_table([])


def test_format_header_names_command_threads_cores_and_settings():
    s = BenchSettings(n=8, size=256, epochs=1, width=0.125)
    text = format_header(s, ["python", "scripts/bench_regressor.py", "--n", "8", "--out", "a b"], 2, 4, 3, 1, 60)
    lines = text.splitlines()
    assert lines[0] == "command: `python scripts/bench_regressor.py --n 8 --out 'a b'`"
    assert lines[1] == "torch threads: 2, CPU cores: 4"
    assert "n=8 synthetic images 256x256 px" in lines[2] and "epochs=1" in lines[2] and "width=0.125" in lines[2]
    assert lines[3] == "test split: 3 images (1 generator hard cases), 60 visible points"


# ----------------------------------------------------------------------------------------------
# Spearman
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "sigma, errors, rho, n",
    [
        # ranks 1 3 2 4 vs 1 2 3 4: sum d^2 = 2, rho = 1 - 6 * 2 / (4 * 15) = 0.8
        ([0.1, 0.3, 0.2, 0.4], [1.0, 2.0, 3.0, 4.0], 0.8, 4),
        ([[0.1, 0.3], [0.2, 0.4]], [[1.0, 2.0], [3.0, 4.0]], 0.8, 4),
        # the invisible point (NaN error) and a NaN sigma are left out: as the first case
        ([0.1, 0.3, 9.0, 0.2, NAN, 0.4], [1.0, 2.0, NAN, 3.0, 5.0, 4.0], 0.8, 4),
        ([4.0, 3.0, 2.0, 1.0], [1.0, 2.0, 3.0, 4.0], -1.0, 4),
        ([0.0, 0.0, 0.0, 0.0], [1.0, 2.0, 3.0, 4.0], NAN, 4),  # constant (Baseline's aleatoric): undefined
        ([0.1, 0.2], [1.0, 2.0], NAN, 2),  # too few points
    ],
)
def test_spearman_hand_computed(sigma, errors, rho, n):
    # the bench's rho is uncertainty.quality.spearman (errors first), wrapped as a SpearmanResult
    res = _spearman_result(errors, sigma)
    assert res.n == n
    if math.isnan(rho):
        assert math.isnan(res.rho) and math.isnan(res.pvalue)
    else:
        assert res.rho == pytest.approx(rho) and 0.0 <= res.pvalue <= 1.0


def test_spearman_shape_mismatch():
    with pytest.raises(ValueError, match="shape"):
        _spearman_result(np.zeros((2, 5)), np.zeros((5, 2)))


# ----------------------------------------------------------------------------------------------
# evaluation with a fake predictor on hand-made annotated PNGs
# ----------------------------------------------------------------------------------------------
SPACING = (0.5, 0.25)  # anisotropic: an x offset of dx pixels is an error of 0.5 * dx mm
# per image: level -> x offsets (px) of the 5 predicted points; C2 is not a cervical level of the region
CASES = [
    {"C2": [9, 9, 9, 9, 9], "C3": [1, 2, 3, 4, 5], "C4": [6, 7, 8, 9, 10]},
    {"C5": [0.5, 1.5, 100.0, 2.5, 3.5]},  # third point invisible (hard case: implant)
]


class FakePredictor:
    """Returns each image's ground truth shifted by the CASES offsets, sigma a function of the error."""

    def __init__(self, truths):
        self.scheme = get_scheme("lateral5")
        self.truths = list(truths)
        self.calls = []

    def predict(self, image, boxes_px, spacing_mm, spacing_source="unknown"):
        kp, dx = self.truths.pop(0)
        self.calls.append((image.shape, np.asarray(boxes_px).shape, spacing_mm, spacing_source))
        pred = kp.copy()
        pred[..., 0] += dx
        err_mm = dx * SPACING[0]
        sig = {"aleatoric": 2.0 * err_mm, "epistemic": 10.0 - err_mm, "total": np.full_like(err_mm, 0.3)}
        return SimpleNamespace(keypoints_px=pred, sigma_mm=sig, sigma_frac={k: v / 100.0 for k, v in sig.items()})


def _write_cases(root: Path, spacing):
    import cv2

    labels, truths = [], []
    rng = np.random.default_rng(0)
    for i, case in enumerate(CASES):
        cv2.imwrite(str(root / f"img{i}.png"), np.full((128, 96), 80, np.uint8))
        levels = list(case)
        kp = rng.integers(20, 70, size=(len(levels), 5, 2)).astype(float)  # exact offsets: 2.0 mm stays 2.0
        vis = np.ones((len(levels), 5), bool)
        meta = {}
        if i == 1:
            vis[0, 2] = False
            meta = {"hard_case": {"type": "implant"}}
        ann = SpineAnnotation(levels=levels, keypoints_px=kp, visible=vis, region="cervical", scheme="lateral5",
                              image=str(root / f"img{i}.png"), image_size=(96, 128), spacing_mm=spacing,
                              spacing_source="sidecar" if spacing else "unknown", meta=meta)
        write_annotation(ann, root / f"img{i}.json")
        labels.append(str(root / f"img{i}.json"))
        keep = [j for j, lev in enumerate(levels) if lev != "C2"]
        truths.append((kp[keep], np.asarray([case[levels[j]] for j in keep], float)))
    return labels, truths


def test_evaluate_predictor_errors_ids_and_statistics(tmp_path):
    labels, truths = _write_cases(tmp_path, SPACING)
    fake = FakePredictor(truths)
    arrays = evaluate_predictor(fake, labels, "cervical")
    # C2 left out: 2 vertebrae of image 0, 1 of image 1; the spacing reaches the predictor
    assert [c[1] for c in fake.calls] == [(2, 4), (1, 4)]
    assert fake.calls[0][0] == (1, 128, 96) and fake.calls[0][2] == SPACING and fake.calls[0][3] == "sidecar"
    assert arrays.unit == "mm" and arrays.errors.shape == (3, 5)
    np.testing.assert_allclose(arrays.errors[0], [0.5, 1.0, 1.5, 2.0, 2.5])
    np.testing.assert_allclose(arrays.errors[1], [3.0, 3.5, 4.0, 4.5, 5.0])
    np.testing.assert_allclose(arrays.errors[2], [0.25, 0.75, NAN, 1.25, 1.75])
    assert arrays.image_ids.tolist() == [0, 0, 1] and arrays.hard.tolist() == [False, False, True]
    assert arrays.num_images == 2 and arrays.num_hard_images == 1
    assert arrays.point_types == ("corner",) * 4 + ("spinous_process",)

    res = variant_result(arrays, "bayecbam", train_seconds=12.0)
    s = res.summary
    assert s["count"] == 14
    assert s["mean_mm"] == pytest.approx(31.5 / 14)
    assert s["median_mm"] == pytest.approx(1.875)  # 7th and 8th of 14 sorted: 1.75, 2.0
    assert s["sdr_2.0mm"] == pytest.approx(8 / 14)  # errors <= 2 mm
    assert s["fit_failure_3.0mm"] == pytest.approx(4 / 14)  # 3.5, 4, 4.5, 5
    assert s["scans_below_2.0mm"] == pytest.approx(0.5)  # image 0 mean 2.75 mm, image 1 mean 1.0 mm
    assert s["spinous_process/mean_mm"] == pytest.approx((2.5 + 5.0 + 1.75) / 3)
    assert res.hard_summary["mean_mm"] == pytest.approx(1.0) and res.hard_summary["count"] == 4
    assert res.spearman["aleatoric"].rho == pytest.approx(1.0) and res.spearman["aleatoric"].n == 14
    assert res.spearman["epistemic"].rho == pytest.approx(-1.0)
    assert math.isnan(res.spearman["total"].rho)  # constant sigma
    assert res.train_seconds == 12.0
    row = format_table([res]).splitlines()[2]
    assert row == "| bayecbam | 2.25 | 1.88 | 50.0 % | 57.1 % | 28.6 % | 12 | — | +1.000 | -1.000 |"
    d = res.to_dict()
    assert d["spearman"]["total"]["rho"] is None and d["summary"]["count"] == 14


def test_evaluate_predictor_unknown_spacing_reports_pixels_and_fractions(tmp_path):
    labels, truths = _write_cases(tmp_path, None)
    arrays = evaluate_predictor(FakePredictor(truths), labels, "cervical")
    assert arrays.unit == "px"
    np.testing.assert_allclose(arrays.errors[0], [1, 2, 3, 4, 5])  # pixels, never labelled mm
    np.testing.assert_allclose(arrays.sigma["aleatoric"][0], 2.0 * np.array([0.5, 1.0, 1.5, 2.0, 2.5]) / 100.0)
    res = variant_result(arrays, "cbam", kinds=("epistemic",))
    assert "mean_px" in res.summary and set(res.spearman) == {"epistemic"}


def test_evaluate_predictor_without_vertebrae_of_the_region(tmp_path):
    labels, truths = _write_cases(tmp_path, SPACING)
    with pytest.raises(ValueError, match="no lumbar vertebra"):
        evaluate_predictor(FakePredictor(truths), labels, "lumbar")


# ----------------------------------------------------------------------------------------------
# bundle wiring: overrides, the predictor built from them, the shared split
# ----------------------------------------------------------------------------------------------
def test_settings_validation():
    with pytest.raises(ValueError):
        BenchSettings(n=2)
    with pytest.raises(ValueError):
        BenchSettings(hard_case_rate=1.5)
    with pytest.raises(KeyError):
        BenchSettings().bundle_overrides("alexnet", "/tmp/x", BUNDLE)


def test_bundle_predictor_matches_the_training_network_and_validation_crop(tmp_path):
    import torch

    from monai_spine.bench.regressor import bundle_parser, bundle_predictor, split_labels
    from monai_spine.networks.regressor import build_regressor

    s = BenchSettings(n=6, size=256, width=0.125, fc_features=16, crop=(64, 128), mc_samples=3, hard_case_rate=0.5)
    ov_base = s.bundle_overrides("baseline", tmp_path / "baseline", BUNDLE)
    ov_bayes = s.bundle_overrides("bayecbam", tmp_path / "bayecbam", BUNDLE)
    # only the variant and the output folders differ between variants: same data, same budget
    differ = {k for k in ov_base if ov_base[k] != ov_bayes[k]}
    assert differ == {"variant", "ckpt_dir", "mlflow_dir", "output_dir"}
    assert ov_base["synthetic#hard_case_rate"] == 0.5 and ov_base["spatial_size"] == [64, 128]
    parser = bundle_parser(ov_bayes, BUNDLE)
    val_margin = parser.get_parsed_content("validate#crop_transforms#0#margin_mm")
    assert val_margin == pytest.approx(2.0 + 4.0 / 2)

    # a checkpoint of the network the training would build loads strictly into the predictor's
    net = build_regressor("bayecbam", 5, width=0.125, fc_features=16)
    (tmp_path / "bayecbam" / "models").mkdir(parents=True)
    torch.save(net.state_dict(), tmp_path / "bayecbam" / "models" / "model.pt")
    pred = bundle_predictor(s, "bayecbam", tmp_path / "bayecbam", BUNDLE)
    assert pred.crop_transform.transforms[0].cropper.margin_mm == pytest.approx(val_margin)
    assert pred.spatial_size == (64, 128) and pred.num_samples == 3 and pred.network.predicts_logvar
    for k, v in net.state_dict().items():
        torch.testing.assert_close(pred.network.state_dict()[k], v)

    test = split_labels(s, BUNDLE)
    assert len(test) == 1 and Path(test[0]).is_file()
    assert split_labels(s, BUNDLE) == test  # the same seeded split every time


def test_seed_table_mean_and_95_ci_hand_computed():
    from monai_spine.bench.regressor import SpearmanResult, VariantResult, format_seed_table

    def res(mean, rho):
        return VariantResult("bayecbam", "mm", {"mean_mm": mean, "scans_below_2.0mm": 1.0, "fit_failure_3.0mm": 0.0},
                             {"total": SpearmanResult(rho, 0.01, 100)})

    table = format_seed_table([[res(0.5, 0.4)], [res(0.7, 0.6)]])
    # mean 0.6, sd 0.1414, t(0.975, 1) = 12.706: half-width 12.706 * 0.1414 / sqrt(2) = 1.271
    row = table.splitlines()[2]
    assert "0.600 ± 1.271" in row and "+0.500 ± +1.271" in row and "100.0 ± 0.0 %" in row and row.endswith("| 2 |")


def test_uncertainty_table_classes_percentiles_and_coverage():
    from monai_spine.bench.regressor import EvalArrays, uncertainty_table

    errors = np.array([[0.5, 1.0, np.nan], [2.0, 4.0, 1.5]])
    classes = np.array([[0, 0, 0], [1, 2, 1]])
    sigma = np.array([[0.4, 0.9, 1.0], [1.8, 3.5, 1.4]])
    radius = np.array([[1.0, 1.0, 1.0], [1.0, 5.0, 2.0]])
    arr = EvalArrays(errors, {"total": sigma}, np.array([0, 1]), np.zeros(2, bool), "mm", ("a", "b", "c"), 2, 0,
                     classes=classes, conformal_radius=radius, conformal_unit="mm")
    t = uncertainty_table(arr, bins=2)
    # certain: errors 0.5, 1.0 (the NaN is invisible) -> mean 0.75, p90 0.95; moderate: 2.0, 1.5
    assert "| certain | 2 | 0.75 | 0.95 |" in t and "| moderately uncertain | 2 | 1.75 | 1.95 |" in t
    assert "| highly uncertain | 1 | 4.00 | 4.00 |" in t
    # covered: 0.5<=1, 1.0<=1, 2.0>1 (miss), 4.0<=5, 1.5<=2 -> 4 of 5
    assert "80.0 % of 5 points" in t
