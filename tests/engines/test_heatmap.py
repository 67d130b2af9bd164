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
    choose_prior_pull,
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


class _PullStub:
    """A corner predictor whose corners are the annotated ones shifted (+2, 0) px and whose prior mean is the
    annotated ones shifted (0, +2) px: with pull ``w`` every corner is ``(2 - 2w, 2w)`` px off, so the mean
    error is ``2 * sqrt((1 - w)^2 + w^2)``: 2 px at 0 and 1, sqrt(2) px at 0.5 (by hand)."""

    def __init__(self, truth_by_centre):
        from types import SimpleNamespace

        self.truth = truth_by_centre
        prior = SimpleNamespace(mean_px=lambda c, o, s, lev=None: self._truth(c) + [0.0, 2.0])
        self.spec = SimpleNamespace(prior=prior, corner_indices=(0, 1, 2, 3), size_ratio=1.0,
                                    postprocess={"prior_pull": 0.3})
        self.pulls_seen = []

    def _truth(self, c):
        return next(t for key, t in self.truth if np.allclose(key, c))

    def predict(self, image, centres, spacing_mm=None, source=None, levels=None):
        from types import SimpleNamespace

        self.pulls_seen.append(self.spec.postprocess["prior_pull"])
        c = np.asarray(centres, np.float64)
        return SimpleNamespace(corners_px=np.stack([self._truth(x) + [2.0, 0.0] for x in c]),
                               orientations_deg=np.zeros(len(c)), sizes_px=np.full(len(c), 30.0))


@pytest.fixture()
def pull_film(tmp_path):
    """``(case, corners (3, 4, 2), stub)``: one film of three rectangles on a PNG, and its :class:`_PullStub`."""
    kp = rect_keypoints(3)[:, :4].astype(np.float64)
    path = tmp_path / "film.png"
    cv2.imwrite(str(path), (np.arange(300 * 200) % 251).reshape(300, 200).astype(np.uint8))
    c = case(rect_keypoints(3), outlines=False)
    c.update(image=str(path), scheme="ap4")
    return c, kp, _PullStub([(k.mean(0), k) for k in kp])


def test_choose_prior_pull_by_hand(pull_film):
    """The stub's errors are known in closed form: 0.5 wins with sqrt(2) px; the predictor runs with no
    pull while being scored and gets its own pull back afterwards."""
    c, kp, stub = pull_film
    best, table = choose_prior_pull(stub, [c], grid=(0.0, 0.25, 0.5, 1.0))
    assert best == 0.5
    assert table["0.5"]["mean_px"] == pytest.approx(np.sqrt(2.0))
    assert table["0"]["mean_px"] == pytest.approx(2.0) and table["1"]["mean_px"] == pytest.approx(2.0)
    assert table["0.25"]["mean_px"] == pytest.approx(2.0 * np.hypot(0.75, 0.25))
    assert table["0.5"]["corners"] == 12.0
    assert stub.pulls_seen == [0.0] and stub.spec.postprocess["prior_pull"] == 0.3


def test_choose_prior_pull_at_detected_centres(pull_film):
    """With a detector, the predictor gets every detected centre and only the levels found inside their own
    annotated box are scored: C6 is not annotated, so 2 of 3 vertebrae (8 corners) count."""
    from types import SimpleNamespace

    c, kp, stub = pull_film
    seen = []

    def detect(image, spacing_mm, source):
        seen.append(np.shape(image))
        return SimpleNamespace(centres_px=kp.mean(1), levels=["C3", "C4", "C6"])

    best, table = choose_prior_pull(stub, [c], grid=(0.0, 0.5, 1.0), detector=SimpleNamespace(detect=detect))
    assert best == 0.5 and table["0.5"]["corners"] == 8
    assert table["0.5"]["mean_px"] == pytest.approx(np.sqrt(2.0))
    assert seen == [(1, 300, 200)]


@pytest.mark.parametrize("grid, prior, match", [((0.0, 1.5), True, "candidate"), ((), True, "candidate"),
                                                ((0.0, 0.5), False, "no prior")])
def test_choose_prior_pull_refuses(grid, prior, match):
    stub = _PullStub([])
    if not prior:
        stub.spec.prior = None
    with pytest.raises(ValueError, match=match):
        choose_prior_pull(stub, [], grid=grid)


def test_choose_prior_pull_needs_usable_films():
    stub = _PullStub([])
    with pytest.raises(ValueError, match="no case"):
        choose_prior_pull(stub, [case(rect_keypoints(1))], grid=(0.0, 0.5))
