"""Tests of the heatmap engine pieces: data items, prior/size fitting, corner errors, the validation handler."""

from __future__ import annotations

from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch
from monai.data import list_data_collate

from monai_spine.data.annotation import SpineAnnotation, write_annotation
from monai_spine.engines.heatmap import (
    CornerErrorAccumulator,
    CornerErrorHandler,
    corner_errors,
    evaluate_corner_model,
    experiment_params,
    fit_corner_prior,
    fit_heatmap_model,
    fit_size_ratio,
    heatmap_cases,
    heatmap_datalists,
)
from monai_spine.inference.corners import CornerPrior
from monai_spine.inference.heatmap import CornerPredictor, HeatmapModelSpec
from monai_spine.networks.fcn import SpatialNormalization
from monai_spine.transforms.io import LoadXrayd
from monai_spine.transforms.patches import CornerPatchesd

W, H = 40.0, 30.0
OFFSETS = np.array([[-W / 2, -H / 2], [W / 2, -H / 2], [-W / 2, H / 2], [W / 2, H / 2]])
LEVELS = ["C3", "C4", "C5", "C6"]


def rect_keypoints(n=4, x=100.0, y0=60.0, step=50.0, jitter=None):
    kp = np.zeros((n, 5, 2))
    for i in range(n):
        c = np.array([x, y0 + step * i])
        kp[i, :4] = OFFSETS * (1.0 if jitter is None else jitter[i]) + c
        kp[i, 4] = c + [W, 0.0]
    return kp


def dot_image(points, shape=(300, 200), sigma=1.5):
    ys, xs = np.mgrid[0 : shape[0], 0 : shape[1]]
    img = np.zeros(shape)
    for x, y in np.asarray(points).reshape(-1, 2):
        img += np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * sigma**2))
    return img


class DotOracle(torch.nn.Module):
    def forward(self, x):
        return SpatialNormalization()(torch.relu(x - 2.0))


def case(kp, image_id=0, select=None, outlines=True):
    n = len(kp)
    return {
        "image": "unused", "keypoints_px": kp.astype(np.float32), "visible": np.ones(kp.shape[:2], bool),
        "levels": LEVELS[:n], "select": np.ones(n, bool) if select is None else np.asarray(select, bool),
        "outlines_px": [k[[0, 1, 3, 2]] for k in kp[:, :4]] if outlines else [np.zeros((0, 2))] * n,
        "image_id": image_id, "scheme": "lateral5",
    }


@pytest.fixture()
def written_case(tmp_path):
    """A PNG of dots at rectangle corners (one corner moved off the rectangle) and its annotation (spacing 0.5 mm)."""
    kp = rect_keypoints()
    kp[2, 3] += [1.5, 1.0]
    path = tmp_path / "img.png"
    cv2.imwrite(str(path), np.clip(200 * dot_image(kp[:, :4]), 0, 255).astype(np.uint8))
    ann = SpineAnnotation(levels=LEVELS, keypoints_px=kp, visible=np.ones((4, 5), bool), region="cervical",
                          scheme="lateral5", image=str(path), image_size=(200, 300), spacing_mm=(0.5, 0.5),
                          spacing_source="sidecar", outlines_px=[k[[0, 1, 3, 2]] for k in kp[:, :4]])
    label = tmp_path / "img.json"
    write_annotation(ann, label)
    return label, kp


# ----------------------------------------------------------------------------------------- data
def test_heatmap_cases_from_files(written_case, tmp_path):
    label, kp = written_case
    items = heatmap_cases([str(label)], region="cervical", image_id_offset=3)
    assert len(items) == 1
    it = items[0]
    assert it["image_id"] == 3 and it["levels"] == LEVELS and it["select"].tolist() == [True] * 4
    np.testing.assert_allclose(it["keypoints_px"], kp, atol=1e-3)
    np.testing.assert_allclose(it["sidecar_spacing_mm"], [0.5, 0.5])  # a PNG cannot carry its spacing
    assert len(it["outlines_px"]) == 4 and it["outlines_px"][0].shape == (4, 2)
    assert heatmap_cases([str(label)], region="lumbar") == []
    lists = heatmap_datalists({"training": [str(label)], "validation": [str(label)], "test": []}, "cervical")
    assert [c["image_id"] for c in lists["training"] + lists["validation"]] == [0, 1]
    with pytest.raises(ValueError, match="training split"):
        heatmap_datalists({"training": [], "validation": [str(label)]}, "cervical")


def test_synthetic_cases_select_the_region_levels():
    from monai_spine.data.datasets import bundle_splits

    splits = bundle_splits(None, "cervical", synthetic_n=4, synthetic_size=(256, 256), hard_case_rate=0.0)
    lists = heatmap_datalists(splits, "cervical")
    it = lists["training"][0]
    assert all(lev in ("C3", "C4", "C5", "C6", "C7") for lev, s in zip(it["levels"], it["select"]) if s)
    assert all(len(o) >= 4 for o in it["outlines_px"])  # the generator records body outlines
    ids = [c["image_id"] for v in lists.values() for c in v]
    assert len(ids) == len(set(ids))


# ----------------------------------------------------------------------------------------- fitting
def test_size_ratio_prior_and_spec_from_rectangles():
    rng = np.random.default_rng(0)
    cases = [case(rect_keypoints(jitter=1 + 0.02 * rng.standard_normal(4)), i) for i in range(4)]
    assert fit_size_ratio(cases) == pytest.approx(0.7, rel=0.03)
    assert fit_size_ratio([case(rect_keypoints())]) == pytest.approx(0.7)
    prior = fit_corner_prior(cases, min_count=4)
    np.testing.assert_allclose(prior.mean, OFFSETS / 35.0, atol=0.02)
    assert prior.count == 16 and sorted(prior.levels) == LEVELS
    spec = fit_heatmap_model(cases, "cervical", network_width=2, out_size=32, min_count=4, postprocess={"prior_scale": 2.0})
    assert spec.scheme == "lateral5" and spec.network == {"width": 2, "multipliers": [1, 2, 4, 8, 12]}
    assert spec.postprocess["prior_scale"] == 2.0 and spec.postprocess["background"] == "mode"
    assert spec.meta["prior_vertebrae"] == 16
    assert fit_heatmap_model(cases, "cervical", use_prior=False).prior is None
    with pytest.raises(ValueError, match="two usable"):
        fit_size_ratio([case(rect_keypoints(n=1))])


# ----------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "spacing, p2p_mm",
    [(None, None), ((0.5, 0.5), 2.5), ((1.0, 2.0), np.sqrt(73.0))],
)
def test_corner_errors_hand_computed(spacing, p2p_mm):
    gt = rect_keypoints(n=1)[:, :4]
    pred = gt.copy()
    pred[0, 0] += [3.0, 4.0]  # 5 px off
    pred[0, 1] = np.nan  # not found
    outline = [gt[0][[0, 1, 3, 2]]]
    vis = np.array([[True, True, True, False]])
    e = corner_errors(pred, gt, vis, outline, spacing)
    assert e["p2p_px"][0, 0] == pytest.approx(5.0) and e["p2p_px"][0, 2] == 0.0
    assert e["p2p_px"][0, 1] == np.inf and np.isnan(e["p2p_px"][0, 3])
    assert e["p2c_px"][0, 0] == pytest.approx(3.0)  # (+3, +4) inside the body: 3 px from the left, 4 from the top edge
    assert e["p2c_px"][0, 1] == np.inf and np.isnan(e["p2c_px"][0, 3])
    if spacing is None:
        assert e["p2p_mm"] is None and e["p2c_mm"] is None
    else:
        assert e["p2p_mm"][0, 0] == pytest.approx(p2p_mm)
        assert e["p2c_mm"][0, 0] == pytest.approx(min(3.0 * spacing[0], 4.0 * spacing[1]))
    no_outline = corner_errors(pred, gt, vis, [np.zeros((0, 2))], spacing)
    assert np.all(np.isnan(no_outline["p2c_px"]))


def test_accumulator_units_and_summary():
    gt = rect_keypoints(n=2)[:, :4]
    pred = gt + [0.0, 4.0]  # every corner 4 px low
    acc = CornerErrorAccumulator()
    acc.add(0, corner_errors(pred, gt, spacing_mm=(1.0, 1.0)), np.array([[True, False, False, False]] * 2),
            sigma_px=np.ones((2, 4)), spacing_mm=(1.0, 1.0))
    acc.add_bc(np.array([0.9, 0.7]))
    s = acc.summary()
    assert acc.unit == "mm" and s["spacing_known"] == 1.0
    assert s["p2p_mean_mm"] == pytest.approx(4.0) and s["p2p_fit_failure_3.0mm"] == 1.0 and s["p2p_count"] == 8
    assert s["bc_mean"] == pytest.approx(0.8) and s["prior_fallback"] == pytest.approx(0.25)
    assert s["p2c_count"] == 0 and np.isnan(s["p2c_mean_mm"])
    np.testing.assert_allclose(acc.sigmas(), 1.0)
    acc.add(1, corner_errors(pred, gt, spacing_mm=None))  # one image without spacing: everything in px
    s = acc.summary()
    assert acc.unit == "px" and s["spacing_known"] == 0.0 and "p2p_mean_px" in s and "p2p_mean_mm" not in s
    assert s["p2p_num_scans"] == 2


# ----------------------------------------------------------------------------------------- handler and evaluation
def _spec(prior):
    return HeatmapModelSpec(size_ratio=0.7, out_size=64, grid=(2, 0.1), scales=(2.0,), rotations_deg=(0.0,),
                            network={"width": 2}, prior=prior)


def _prior():
    return CornerPrior(OFFSETS / 35.0, np.stack([np.eye(2) * 0.05**2] * 4), count=10)


def _run_handler(handler, patches, maps, batch_size):
    engine = SimpleNamespace(state=SimpleNamespace(metrics={}, batch=None, output=None))
    handler._engine = engine
    handler.reset()
    for i in range(0, len(patches), batch_size):
        batch = list_data_collate(patches[i : i + batch_size])
        engine.state.batch = batch
        engine.state.output = {"pred": torch.as_tensor(maps[i : i + batch_size])}
        handler.iteration_completed(engine)
    return handler.compute(), engine.state.metrics


def test_handler_with_perfect_maps_recovers_corners_and_bc_one():
    kp = rect_keypoints()
    d = {**case(kp, image_id=5), "image": np.zeros((1, 300, 200), np.float32),
         "spacing_mm": np.array([0.5, 0.5], np.float32), "image_size": np.array([200, 300])}
    patches = CornerPatchesd(size_ratio=0.7, out_size=64, grid=(2, 0.1), scales=(2.0,), rotations_deg=(0.0,))(d)
    maps = np.stack([p["label"] for p in patches])  # the targets as predictions
    handler = CornerErrorHandler([case(kp, image_id=5)], _spec(_prior()), prefix="val_")
    value, metrics = _run_handler(handler, patches, maps, batch_size=5)  # batches cross vertebrae
    assert value == metrics["val_p2p_mean_mm"] and value < 0.5  # half a pixel
    assert metrics["val_bc_mean"] == pytest.approx(1.0, abs=2e-3) and metrics["val_bc_count"] == 16
    assert metrics["val_prior_fallback"] == 0.0 and metrics["val_spacing_known"] == 1.0
    assert metrics["val_p2c_mean_mm"] <= metrics["val_p2p_mean_mm"] + 1e-9
    with pytest.raises(KeyError, match="image_id 5"):
        _run_handler(CornerErrorHandler([case(kp, image_id=6)], _spec(_prior())), patches, maps, 16)


def test_validation_handler_and_predictor_evaluation_agree(written_case):
    label, kp = written_case
    cases = heatmap_cases([str(label)], region="cervical", image_id_offset=2)
    spec = _spec(_prior())
    predictor = CornerPredictor(DotOracle(), spec)
    summary, acc = evaluate_corner_model(predictor, cases)
    assert summary["images"] == 1 and summary["vertebrae"] == 4 and summary["p2p_count"] == 16
    assert summary["p2p_mean_mm"] < 0.4 and summary["p2p_max_mm"] < 0.6  # the moved corner is found too
    assert 0 < summary["bc_mean"] < 1 and summary["prior_fallback"] == 0.0
    # the bundle's validation path: LoadXrayd -> CornerPatchesd -> network -> handler
    d = LoadXrayd(keys="image")(cases[0])
    patches = CornerPatchesd(size_ratio=spec.size_ratio, out_size=64, grid=spec.grid, scales=spec.scales,
                             rotations_deg=spec.rotations_deg)(d)
    with torch.no_grad():
        maps = DotOracle()(torch.as_tensor(np.stack([p["image"] for p in patches]))).numpy()
    handler = CornerErrorHandler(cases, spec)
    value, metrics = _run_handler(handler, patches, maps, batch_size=16)
    assert value == pytest.approx(summary["p2p_mean_mm"], abs=1e-9)
    assert metrics["val_p2c_mean_mm"] == pytest.approx(summary["p2c_mean_mm"], abs=1e-9)
    assert metrics["val_bc_mean"] == pytest.approx(summary["bc_mean"], abs=1e-6)


def test_handler_needs_patch_geometry():
    handler = CornerErrorHandler([], _spec(None))
    engine = SimpleNamespace(state=SimpleNamespace(metrics={}, batch={"image": torch.zeros(1)},
                                                   output={"pred": torch.zeros(1, 1, 4, 4)}))
    with pytest.raises(KeyError, match="patch_affine"):
        handler.iteration_completed(engine)
    engine.state.output = {}
    with pytest.raises(KeyError, match="pred"):
        handler.iteration_completed(engine)


def test_experiment_params_are_flat():
    spec = _spec(_prior())
    p = experiment_params("cervical", 3, 4, 1e-3, {"size": 64, "scales": [1.6, 2.0]}, 8, "", {"n": 8, "size": [256, 256]},
                          spec)
    assert p["patch_scales"] == "[1.6, 2.0]" and p["synthetic_size"] == "[256, 256]" and p["prior_vertebrae"] == 10
    assert all(isinstance(v, (str, int, float)) for v in p.values())
