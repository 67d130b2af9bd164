"""Detector engine pieces: centres and per-image items, the loss, decoding, matching, metrics and the handler."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch
from ignite.engine import Engine
from monai.data import list_data_collate

from monai_spine.data.annotation import SpineAnnotation, write_annotation
from monai_spine.codecs.detection import decode_detections, vertebra_centres_px
from monai_spine.engines.detector import (
    DetectionAccumulator,
    DetectionErrorHandler,
    DetectionLoss,
    box_iou,
    detector_cases,
    detector_datalists,
    evaluate_detector,
    experiment_params,
    match_detections,
)
from monai_spine.transforms.detection import CentreHeatmapTarget, letterbox_affine, points_to_image_px

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


# ---------------------------------------------------------------------------------------------- loss


def test_loss_hand_computed_at_zero_logits():
    # one level channel of 2 x 2 with one positive, all logits 0 (p = 1/2): every pixel costs 1/4 * log 2,
    # 4 pixels / 1 positive = log 2; box: predicted 0, target 0.1 at one masked pixel: L1 = 0.1, weight 5
    pred = torch.zeros(1, 5, 2, 2)
    target = torch.zeros(1, 6, 2, 2)
    target[0, 0, 0, 1] = 1.0
    target[0, 1:5, 0, 1] = 0.1
    target[0, 5, 0, 1] = 1.0
    assert DetectionLoss(size_weight=5.0)(pred, target).item() == pytest.approx(math.log(2) + 0.5, rel=1e-6)
    assert DetectionLoss(size_weight=0.0, heatmap="mse")(pred, target).item() == pytest.approx(1.0, rel=1e-6)


def test_loss_is_near_zero_for_a_confident_correct_prediction_and_has_gradients():
    y = torch.as_tensor(CentreHeatmapTarget((16, 16), 1.5)(np.array([[5.0, 6.0], [10.0, 12.0]]),
                                                            np.array([[2, 3, 8, 9], [7, 9, 13, 15]], float)))[None]
    logits = torch.where(y[:, :2] >= 1, 20.0, -20.0)
    good = torch.cat([logits, y[:, 2:6]], 1)
    loss = DetectionLoss()
    assert loss(good, y).item() < 1e-3
    bad = torch.zeros_like(good, requires_grad=True)
    value = loss(bad, y)
    value.backward()
    assert value.item() > 1.0 and torch.isfinite(bad.grad).all() and bad.grad.abs().sum() > 0


def test_loss_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="L\\+5"):
        DetectionLoss()(torch.zeros(1, 7, 4, 4), torch.zeros(1, 7, 4, 4))
    with pytest.raises(ValueError, match="heatmap"):
        DetectionLoss(heatmap="l2")


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


# ---------------------------------------------------------------------------------------------- matching and metrics


def test_box_iou_hand_computed():
    np.testing.assert_allclose(box_iou(np.array([[0, 0, 2, 2], [0, 0, 1, 1]]), np.array([[1, 1, 3, 3], [2, 2, 3, 3]])),
                               [1 / 7, 0.0])


GT_C = np.array([[11.0, 10.0], [11.0, 30.0], [np.nan, np.nan], [11.0, 70.0]])
GT_B = np.array([[6.0, 5.0, 16.0, 15.0], [6.0, 25.0, 16.0, 35.0], [np.nan] * 4, [6.0, 65.0, 16.0, 75.0]])
PRESENT = np.array([True, True, False, True])
PRED_C = np.array([[10.0, 10.0], [11.0, 37.0], [11.0, 50.0], [11.0, 70.0]])
SCORES = np.array([0.9, 0.9, 0.8, 0.1])


def test_match_detections_hand_computed():
    # level 0 found (1 px off), level 1 detected outside its box (7 px off), level 2 not annotated but
    # detected (false positive), level 3 below the threshold (missed)
    m = match_detections(PRED_C, SCORES, GT_C, GT_B, PRESENT, (0.5, 0.25), score_threshold=0.3, pred_boxes_px=GT_B)
    np.testing.assert_array_equal(m["found"], [True, False, False, False])
    np.testing.assert_array_equal(m["mislocated"], [False, True, False, False])
    np.testing.assert_array_equal(m["false_positive"], [False, False, True, False])
    assert m["unit"] == "mm"
    np.testing.assert_allclose(m["error_mm"][:2], [0.5, 7 * 0.25])
    np.testing.assert_allclose(m["error_px"][:2], [1.0, 7.0])
    assert np.isnan(m["error_mm"][3])
    np.testing.assert_allclose(m["diag_mm"][[0, 1, 3]], math.hypot(5.0, 2.5))
    np.testing.assert_allclose(m["iou"][:2], [1.0, 1.0])
    # within a radius of 2 mm, level 1 (1.75 mm off) counts as found too
    r = match_detections(PRED_C, SCORES, GT_C, GT_B, PRESENT, (0.5, 0.25), 0.3, match_radius=2.0)
    np.testing.assert_array_equal(r["found"], [True, True, False, False])
    # unknown spacing: pixels
    u = match_detections(PRED_C, SCORES, GT_C, GT_B, PRESENT, (np.nan, np.nan), 0.3)
    assert u["unit"] == "px" and np.all(np.isnan(u["error_mm"]))


def test_a_neighbours_centre_inside_an_overlapping_box_is_not_a_find():
    # boxes reach 12 px below their centres (spinous process); level 0 predicted 1 px from level 1's centre
    gt_c = np.array([[10.0, 10.0], [10.0, 20.0]])
    gt_b = np.array([[5.0, 5.0, 15.0, 22.0], [5.0, 15.0, 15.0, 32.0]])
    pred = np.array([[10.0, 19.0], [10.0, 20.0]])
    m = match_detections(pred, np.ones(2), gt_c, gt_b, np.ones(2, bool), (0.1, 0.1), 0.2, match_radius=5.0)
    np.testing.assert_array_equal(m["found"], [False, True])
    np.testing.assert_array_equal(m["mislocated"], [True, False])


def test_match_detections_rejects_wrong_shapes():
    with pytest.raises(ValueError, match="gt_boxes_px"):
        match_detections(PRED_C, SCORES, GT_C, GT_B[:, :2], PRESENT)


def test_accumulator_summary_hand_computed():
    acc = DetectionAccumulator(["C3", "C4", "C5", "C6"])
    acc.add(0, match_detections(PRED_C, SCORES, GT_C, GT_B, PRESENT, (0.5, 0.25), 0.3, pred_boxes_px=GT_B))
    acc.add(1, match_detections(GT_C, np.ones(4), GT_C, GT_B, PRESENT, (0.5, 0.25), 0.3, pred_boxes_px=GT_B))
    s = acc.summary()
    diag = math.hypot(5.0, 2.5)
    assert s["images"] == 2 and s["vertebrae"] == 6 and s["detections"] == 6
    assert s["recall"] == pytest.approx(4 / 6) and s["precision"] == pytest.approx(4 / 6)
    assert s["false_positives_per_image"] == pytest.approx(0.5) and s["mislocated"] == 1
    assert s["centre_error_mean_mm"] == pytest.approx(0.5 / 4) and s["centre_error_max_mm"] == pytest.approx(0.5)
    assert s["penalised_error_mm"] == pytest.approx((0.5 + 2 * diag) / 6)
    assert s["images_all_found"] == 0.5 and s["images_exact"] == 0.5 and s["box_iou_mean"] == pytest.approx(1.0)
    assert s["recall/C3"] == 1.0 and s["recall/C4"] == 0.5 and math.isnan(s["recall/C5"]) and s["recall/C6"] == 0.5
    assert s["spacing_known"] == 1.0
    # one image without spacing turns the whole summary into pixels
    acc.add(2, match_detections(GT_C, np.ones(4), GT_C, GT_B, PRESENT, None, 0.3))
    s = acc.summary()
    assert s["spacing_known"] == 0.0 and "penalised_error_px" in s and "penalised_error_mm" not in s
    assert s["centre_error_max_px"] == pytest.approx(1.0)


# ---------------------------------------------------------------------------------------------- the handler


def _batch_and_output(swap: bool = False):
    """Two 64 x 64 samples whose network output is the logit of their own target (levels swapped on request)."""
    a = letterbox_affine((128, 128), (64, 64))  # 2 image px per net px, centred
    t = CentreHeatmapTarget((64, 64), 1.5)
    samples, preds = [], []
    for k in range(2):
        c_net = np.array([[20.0 + k, 10.0], [21.0, 22.0], [22.0, 34.0], [23.0, 46.0], [24.0, 58.0]])
        b_net = np.concatenate([c_net - [4.0, 3.0], c_net + [6.0, 3.0]], 1)
        y = t(c_net, b_net)
        hm = np.clip(y[:5], 1e-4, 1 - 1e-4)
        if swap:
            hm = hm[[1, 0, 2, 3, 4]]
        preds.append(np.concatenate([np.log(hm / (1 - hm)), y[5:9]]))
        samples.append({
            "det_to_image": a, "centres_px": points_to_image_px(c_net, a).astype(np.float32),
            "boxes_px": np.concatenate([points_to_image_px(b_net[:, :2], a), points_to_image_px(b_net[:, 2:], a)], 1),
            "present": np.array([True] * 5), "spacing_mm": np.array([0.2, 0.2], np.float32), "image_id": k,
        })
    return list_data_collate(samples), {"pred": torch.as_tensor(np.stack(preds), dtype=torch.float32)}


@pytest.mark.parametrize(
    "method, swap, recall",
    [("sequence", False, 1.0), ("argmax", False, 1.0), ("argmax", True, 0.6), ("sequence", True, 0.6)],
)
def test_handler_decodes_maps_back_and_writes_metrics(method, swap, recall):
    batch, out = _batch_and_output(swap)
    engine = Engine(lambda e, b: out)
    handler = DetectionErrorHandler(CERVICAL, score_threshold=0.2, decode_method=method)
    handler.attach(engine, "val_detection_error")
    engine.run([batch], max_epochs=1)
    m = engine.state.metrics
    assert m["val_recall"] == pytest.approx(recall)
    assert m["val_images"] == 2 and m["val_vertebrae"] == 10 and m["val_spacing_known"] == 1.0
    if recall == 1.0:
        assert m["val_centre_error_max_mm"] < 0.05  # exact Gaussians: sub-pixel decoding is exact
        assert m["val_detection_error"] == pytest.approx(m["val_penalised_error_mm"])
        assert m["val_box_iou_mean"] == pytest.approx(1.0, abs=1e-3)
    else:
        # a confidently swapped C3/C4 pair: vertebrae found under each other's label are misses (argmax); the
        # order-preserving assignment cannot put C4 above C3, so it keeps C3 where the network is sure and drops C4
        assert m["val_recall/C3"] == 0.0 and m["val_recall/C4"] == 0.0 and m["val_recall/C5"] == 1.0
        assert m["val_detection_error"] > 1.0


def test_handler_reads_decollated_batches_and_names_missing_keys():
    batch, out = _batch_and_output()
    handler = DetectionErrorHandler(CERVICAL)
    handler.reset()
    per_sample = [{k: v[i] for k, v in batch.items()} for i in range(2)]
    handler.update((per_sample, [{"pred": out["pred"][i]} for i in range(2)]))
    assert handler.compute() < 0.05
    with pytest.raises(KeyError, match="det_to_image"):
        handler.update(({k: v for k, v in batch.items() if k != "det_to_image"}, out))
    with pytest.raises(ValueError, match="levels"):
        DetectionErrorHandler(CERVICAL[:4]).update((batch, out))


# ---------------------------------------------------------------------------------------------- evaluation


class _StubDetector:
    levels = tuple(CERVICAL)
    score_threshold = 0.2

    def __init__(self, centres, scores):
        self.centres, self.scores, self.calls = centres, scores, []

    def predict_levels(self, image, spacing_mm, score_threshold=None):
        self.calls.append((image.shape, spacing_mm, score_threshold))
        boxes = np.concatenate([self.centres - 5.0, self.centres + 5.0], 1)
        return {"centres_px": self.centres, "scores": self.scores, "boxes_px": boxes, "detected": self.scores >= 0.2}


def test_evaluate_detector_reads_images_with_their_spacing(tmp_path):
    cv2.imwrite(str(tmp_path / "img.png"), np.zeros((200, 128), np.uint8))
    case = detector_cases([_annotation(tmp_path, "a.json", CERVICAL)], "cervical")[0]
    pred = case["centres_px"].astype(np.float64) + [1.0, 0.0]
    det = _StubDetector(pred, np.array([0.9, 0.9, 0.9, 0.9, 0.1]))
    summary, acc, rows = evaluate_detector(det, [case])
    assert det.calls[0][0] == (1, 200, 128) and det.calls[0][1] == (0.5, 0.5) and det.calls[0][2] == 0.2
    assert summary["recall"] == pytest.approx(0.8) and summary["centre_error_mean_mm"] == pytest.approx(0.5)
    assert rows[0]["found"] == CERVICAL[:4] and rows[0]["missed"] == ["C7"] and rows[0]["false_positive"] == []
    assert acc.unit == "mm"


def test_experiment_params_are_flat_strings_and_numbers():
    synthetic = {"n": 8, "size": [256, 256]}
    p = experiment_params("lumbar", 3, 2, 1e-3, [64, 64], [4, 4, 8, 8, 16, 4], 1.5, 0.2, "", synthetic)
    assert p["levels"] == "L1,L2,L3,L4,L5" and p["spatial_size_hw"] == "64x64" and p["features"] == "4,4,8,8,16,4"
    assert p["synthetic_size"] == "[256, 256]" and p["decode_method"] == "sequence"
    assert all(isinstance(v, (str, int, float)) for v in p.values())
