"""Evaluation of the detector against annotations (monai_spine/evaluation/detector.py)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from monai_spine.data.annotation import SpineAnnotation, write_annotation
from monai_spine.engines.detector import detector_cases
from monai_spine.evaluation.detector import evaluate_detector

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
