"""Detector engine pieces: centres and per-image items, decoding and the run's parameters.

The loss, metrics, handler and evaluation are tested beside their modules: ``tests/losses/test_detection.py``,
``tests/metrics/test_detection.py``, ``tests/handlers/test_detection.py``, ``tests/evaluation/test_detector.py``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from monai.data import list_data_collate

from monai_spine.data.annotation import SpineAnnotation, write_annotation
from monai_spine.codecs.detection import decode_detections, vertebra_centres_px
from monai_spine.engines.detector import detector_cases, detector_datalists, experiment_params
from monai_spine.transforms.detection import letterbox_affine, points_to_image_px


CERVICAL = ["C3", "C4", "C5", "C6", "C7"]


def _gauss_map(h: int, w: int, peaks: list[tuple[float, float, float]], sigma: float = 1.5) -> np.ndarray:
    """A heatmap with Gaussian peaks ``(x, y, height)`` (maximum where they overlap)."""
    ys, xs = np.mgrid[0:h, 0:w]
    out = np.zeros((h, w))
    for x, y, a in peaks:
        out = np.maximum(out, a * np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * sigma**2)))
    return out


def _pred(maps: list[np.ndarray], ltrb: tuple[float, float, float, float] = (0.1, 0.05, 0.2, 0.1)) -> np.ndarray:
    h, w = maps[0].shape
    box = np.broadcast_to(np.asarray(ltrb, dtype=np.float64)[:, None, None], (4, h, w))
    return np.concatenate([np.stack(maps), box])


# ---------------------------------------------------------------------------------------------- centres and cases

SQUARE = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 8.0], [10.0, 8.0], [20.0, 4.0]])  # AS PS AI PI SP


@pytest.mark.parametrize(
    "visible, outline, box, expected",
    [
        ([1, 1, 1, 1, 1], None, None, (5.0, 4.0)),  # mean of the four corners (SP not used)
        ([1, 1, 1, 0, 1], [[2.0, 1.0], [12.0, 1.0], [12.0, 9.0]], None, (7.0, 5.0)),  # outline box centre
        ([1, 1, 1, 0, 1], None, None, (10.0 / 3, 8.0 / 3)),  # mean of the three visible corners
        ([1, 0, 0, 0, 1], None, [0.0, 0.0, 30.0, 10.0], (15.0, 5.0)),  # box centre
        ([0, 0, 0, 0, 0], None, None, (math.nan, math.nan)),
    ],
)
def test_vertebra_centres_fallback_chain(visible, outline, box, expected):
    out = vertebra_centres_px(
        SQUARE[None], np.array([visible], dtype=bool), "lateral5",
        None if outline is None else [np.array(outline)], None if box is None else np.array([box]),
    )
    np.testing.assert_allclose(out[0], expected)


def _annotation(tmp_path, name, levels, region="cervical", spacing=(0.5, 0.5), image="img.png"):
    n = len(levels)
    kp = np.stack([SQUARE + [50.0, 20.0 + 30.0 * i] for i in range(n)])
    ann = SpineAnnotation(levels=list(levels), keypoints_px=kp, visible=np.ones((n, 5), bool), region=region,
                          scheme="lateral5", image=str(tmp_path / image), image_size=(128, 200), spacing_mm=spacing,
                          spacing_source="sidecar" if spacing else "unknown")
    path = tmp_path / name
    write_annotation(ann, path)
    return str(path)


def test_detector_cases_put_each_level_in_its_row(tmp_path):
    a = _annotation(tmp_path, "a.json", ["C4", "C5", "C7"])
    b = _annotation(tmp_path, "b.json", ["L1", "L2"], region="lumbar")
    items = detector_cases([a, b], "cervical", image_id_offset=10)
    assert len(items) == 1
    it = items[0]
    assert it["image_id"] == 10 and it["label_path"] == a and it["image"].endswith("img.png")
    np.testing.assert_array_equal(it["present"], [False, True, True, False, True])
    assert it["boxes_px"].shape == (5, 4) and it["centres_px"].shape == (5, 2)
    assert np.all(np.isnan(it["boxes_px"][0])) and np.all(np.isnan(it["centres_px"][3]))
    # C4 = first vertebra: corners at x 50..60, y 20..28; box around all points incl. SP at x 70
    np.testing.assert_allclose(it["centres_px"][1], [55.0, 24.0])
    np.testing.assert_allclose(it["boxes_px"][1], [50.0, 20.0, 70.0, 28.0])
    np.testing.assert_allclose(it["sidecar_spacing_mm"], [0.5, 0.5])
    # fixed shapes: items of different images collate into one batch
    batch = list_data_collate([it, detector_cases([_annotation(tmp_path, "c.json", CERVICAL)], "cervical")[0]])
    assert tuple(batch["boxes_px"].shape) == (2, 5, 4) and batch["present"].dtype == torch.bool


def test_detector_datalists_number_images_across_splits(tmp_path):
    paths = [_annotation(tmp_path, f"{i}.json", CERVICAL) for i in range(4)]
    dl = detector_datalists({"training": paths[:2], "validation": paths[2:3], "test": paths[3:]}, "cervical")
    assert [it["image_id"] for s in ("training", "validation", "test") for it in dl[s]] == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="training split"):
        detector_datalists({"training": [], "validation": paths}, "cervical")


# ---------------------------------------------------------------------------------------------- decoding


@pytest.mark.parametrize("method", ["argmax", "sequence"])
def test_decode_recovers_known_subpixel_peaks(method):
    h, w = 40, 32
    centres = [(10.3, 6.6), (12.8, 15.2), (14.5, 24.9)]
    maps = [_gauss_map(h, w, [(x, y, a)]) for (x, y), a in zip(centres, (0.9, 0.8, 0.7))]
    dec = decode_detections(_pred(maps), score_threshold=0.5, apply_sigmoid=False, method=method)
    np.testing.assert_allclose(dec["centres_net_px"], centres, atol=1e-6)
    # the score is the map at the peak pixel: a * exp(-d^2 / (2 sigma^2)), d from the nearest pixel
    d2 = [(x - round(x)) ** 2 + (y - round(y)) ** 2 for x, y in centres]
    np.testing.assert_allclose(dec["scores"], np.array([0.9, 0.8, 0.7]) * np.exp(-np.array(d2) / 4.5), rtol=1e-9)
    assert dec["detected"].all()
    # box: distances (0.1, 0.05, 0.2, 0.1) of (W, H, W, H) = (3.2, 2, 6.4, 4) px around the centre
    np.testing.assert_allclose(dec["boxes_net_px"][0], [10.3 - 3.2, 6.6 - 2.0, 10.3 + 6.4, 6.6 + 4.0], atol=1e-6)


def test_decode_logits_thresholds_and_border_peaks():
    h, w = 20, 20
    maps = [_gauss_map(h, w, [(0.0, 5.0, 0.9)]), _gauss_map(h, w, [(10.0, 15.0, 0.1)])]
    logits = np.log(np.clip(np.stack(maps), 1e-6, 1 - 1e-6) / (1 - np.clip(np.stack(maps), 1e-6, 1 - 1e-6)))
    pred = np.concatenate([logits, np.zeros((4, h, w))])
    dec = decode_detections(torch.as_tensor(pred), score_threshold=0.2, method="argmax")
    np.testing.assert_allclose(dec["centres_net_px"], [[0.0, 5.0], [10.0, 15.0]], atol=1e-6)  # border: no x refinement
    np.testing.assert_array_equal(dec["detected"], [True, False])
    seq = decode_detections(torch.as_tensor(pred), score_threshold=0.2)
    np.testing.assert_array_equal(seq["detected"], [True, False])
    assert np.all(np.isnan(seq["centres_net_px"][1])) and seq["scores"][1] == 0.0
    with pytest.raises(ValueError, match="L \\+ 4"):
        decode_detections(np.zeros((4, 8, 8)))
    with pytest.raises(ValueError, match="method"):
        decode_detections(pred, method="nms")


def test_sequence_decoding_separates_levels_that_share_a_vertebra():
    # three vertebrae at y = 10, 20, 30 and an unannotated one above (y = 2): levels 0 and 1 both peak on
    # the first vertebra; level 1 is only second-best on the second one; level 0 is weak on the neighbour above
    h, w = 40, 32
    v = [(16.0, 2.0), (16.0, 10.0), (16.0, 20.0), (16.0, 30.0)]
    maps = [
        _gauss_map(h, w, [(*v[0], 0.4), (*v[1], 0.9), (*v[2], 0.5)]),
        _gauss_map(h, w, [(*v[1], 0.8), (*v[2], 0.6)]),
        _gauss_map(h, w, [(*v[3], 0.7)]),
    ]
    argmax = decode_detections(_pred(maps), 0.2, apply_sigmoid=False, method="argmax")
    np.testing.assert_allclose(argmax["centres_net_px"][:2], [v[1], v[1]], atol=1e-6)  # both on one vertebra
    seq = decode_detections(_pred(maps), 0.2, apply_sigmoid=False)
    np.testing.assert_allclose(seq["centres_net_px"], [v[1], v[2], v[3]], atol=1e-6)
    np.testing.assert_allclose(seq["scores"], [0.9, 0.6, 0.7], atol=1e-6)  # the vertebra's peak (max over levels)


def test_sequence_decoding_keeps_contiguous_levels_when_a_level_prefers_the_neighbour():
    # level 0 fires more on the unannotated vertebra above (0.5) than on its own (0.3): free pairing would skip
    # the own vertebra, the gap penalty keeps the levels contiguous; with gap_penalty 0 the skip wins
    h, w = 40, 32
    v = [(16.0, 2.0), (16.0, 12.0), (16.0, 24.0)]
    maps = [_gauss_map(h, w, [(*v[0], 0.5), (*v[1], 0.3)]), _gauss_map(h, w, [(*v[2], 0.8)])]
    seq = decode_detections(_pred(maps), 0.2, apply_sigmoid=False)
    np.testing.assert_allclose(seq["centres_net_px"], [v[1], v[2]], atol=1e-6)
    free = decode_detections(_pred(maps), 0.2, apply_sigmoid=False, gap_penalty=0.0)
    np.testing.assert_allclose(free["centres_net_px"], [v[0], v[2]], atol=1e-6)


def test_decoded_centres_map_back_through_the_affine_hand_computed():
    a = letterbox_affine((200, 100), (64, 64))  # x = 3.125 u + 1.0625, y = 3.125 v - 48.9375
    maps = [_gauss_map(64, 64, [(10.3, 20.7, 0.9)]), _gauss_map(64, 64, [(40.0, 30.0, 0.8)])]
    dec = decode_detections(_pred(maps), 0.5, apply_sigmoid=False)
    expected = [[33.25, 15.75], [126.0625, 44.8125]]
    np.testing.assert_allclose(points_to_image_px(dec["centres_net_px"], a), expected, atol=1e-5)


def test_experiment_params_are_flat_strings_and_numbers():
    synthetic = {"n": 8, "size": [256, 256]}
    p = experiment_params("lumbar", 3, 2, 1e-3, [64, 64], [4, 4, 8, 8, 16, 4], 1.5, 0.2, "", synthetic)
    assert p["levels"] == "L1,L2,L3,L4,L5" and p["spatial_size_hw"] == "64x64" and p["features"] == "4,4,8,8,16,4"
    assert p["synthetic_size"] == "[256, 256]" and p["decode_method"] == "sequence"
    assert all(isinstance(v, (str, int, float)) for v in p.values())
