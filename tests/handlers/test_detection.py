"""The detector's evaluator metric (monai_spine/handlers/detection.py): decoding, matching, engine metrics."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ignite.engine import Engine
from monai.data import list_data_collate

from monai_spine.handlers.detection import DetectionErrorHandler
from monai_spine.transforms.detection import CentreHeatmapTarget, letterbox_affine, points_to_image_px

CERVICAL = ["C3", "C4", "C5", "C6", "C7"]


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
