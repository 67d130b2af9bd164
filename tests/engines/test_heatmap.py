"""Tests of the heatmap engine pieces: data items, prior/size fitting and the run's parameters.

The corner errors, the validation handler and the predictor's evaluation are tested beside their
modules: ``tests/metrics/test_corners.py``, ``tests/handlers/test_corners.py``, ``tests/evaluation/test_corners.py``.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from monai_spine.data.annotation import SpineAnnotation, write_annotation
from monai_spine.engines.heatmap import (
    experiment_params,
    fit_corner_prior,
    fit_heatmap_model,
    fit_size_ratio,
    heatmap_cases,
    heatmap_datalists,
)
from corner_cases import (
    corner_prior as _prior,
    dot_image,
    heatmap_spec as _spec,
    LEVELS,
    OFFSETS,
    rect_keypoints,
)


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


def test_experiment_params_are_flat():
    spec = _spec(_prior())
    p = experiment_params("cervical", 3, 4, 1e-3, {"size": 64, "scales": [1.6, 2.0]}, 8, "", {"n": 8, "size": [256, 256]},
                          spec)
    assert p["patch_scales"] == "[1.6, 2.0]" and p["synthetic_size"] == "[256, 256]" and p["prior_vertebrae"] == 10
    assert all(isinstance(v, (str, int, float)) for v in p.values())
