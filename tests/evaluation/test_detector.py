"""Evaluation of the detector against annotations (monai_spine/evaluation/detector.py): a trained
detector over annotated films, a ``chain`` network over the shrunk training films."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from monai_spine.codecs.chain import spacing_profile
from monai_spine.data.annotation import SpineAnnotation, write_annotation
from monai_spine.engines.detector import chain_training_sample, detector_cases
from monai_spine.evaluation.detector import evaluate_chain_items, evaluate_detector

CERVICAL = ["C3", "C4", "C5", "C6", "C7"]
SQUARE = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 8.0], [10.0, 8.0], [20.0, 4.0]])  # AS PS AI PI SP


def _annotation(tmp_path, name, levels, region="cervical", spacing=(0.5, 0.5), image="img.png"):
    n = len(levels)
    kp = np.stack([SQUARE + [50.0, 20.0 + 30.0 * i] for i in range(n)])
    ann = SpineAnnotation(levels=list(levels), keypoints_px=kp, visible=np.ones((n, 5), bool), region=region,
                          scheme="lateral5", image=str(tmp_path / image), image_size=(128, 200), spacing_mm=spacing,
                          spacing_source="sidecar" if spacing else "unknown")
    path = tmp_path / name
    write_annotation(ann, path)
    return str(path)


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


def _item(h=192, w=64):
    """A tiny film: bright blobs at 5 vertebra centres on a dark background (tests/engines/test_detector_chain.py)."""
    cum = np.concatenate([[0.0], np.cumsum([1.0, 1.0, 1.1, 1.2])])
    c = np.stack([np.full(5, w / 2), 30 + 30 * cum], -1)
    ys, xs = np.mgrid[0:h, 0:w]
    img = np.zeros((h, w), np.float32)
    for x, y in c:
        img[(np.abs(xs - x) < 10) & (np.abs(ys - y) < 9)] = 1.0
    boxes = np.concatenate([c - [10, 9], c + [10, 9]], -1)
    return {"image": img[None], "centres_px": c, "boxes_px": boxes, "present": np.ones(5, bool), "shrink": (1.0, 1.0),
            "image_path": "synthetic"}


class _Recorder(torch.nn.Module):
    """A 'network' that returns a fixed output and keeps the inputs it was given."""

    def __init__(self, out):
        super().__init__()
        self.out, self.inputs = torch.as_tensor(out, dtype=torch.float32), []

    def forward(self, x):
        self.inputs.append(x.clone())
        return self.out[None]


@pytest.mark.parametrize(
    "peaks, recall, penalised_px",
    [
        (5, 1.0, 0.0),
        # the bottom vertebra has no peak: missed, it counts as its box diagonal hypot(20, 18) over 5 vertebrae
        (4, 0.8, np.hypot(20.0, 18.0) / 5),
    ],
)
def test_evaluate_chain_items_sees_the_training_letterbox(peaks, recall, penalised_px):
    it = _item()
    shown = dict(it, present=np.arange(5) < peaks)
    x, t, _ = chain_training_sample(shown, (96, 32), 1.5, None, level_channel=False)
    heat = np.clip(t[0], 1e-4, 1 - 1e-4)
    net = _Recorder(np.concatenate([np.log(heat / (1 - heat))[None], t[1:5]]))  # the target's peaks as logits
    r = evaluate_chain_items(net, [it], (96, 32), spacing_profile([it["centres_px"]]))
    # the network sees exactly what chain_training_sample shows it without augmentation
    np.testing.assert_array_equal(net.inputs[0].numpy(), x[None])
    assert r["images"] == 1 and r["vertebrae"] == 5 and r["detections"] == peaks and r["spacing_known"] == 0.0
    assert r["recall"] == recall and r["precision"] == 1.0 and r["images_all_found"] == float(peaks == 5)
    assert r["centre_error_max_px"] < 0.01  # exact Gaussian peaks: sub-pixel decoding is exact
    assert r["penalised_error_px"] == pytest.approx(penalised_px, abs=0.01)
