"""Detector engine pieces: per-image items and the run's parameters.

The loss, metrics, handler and evaluation are tested beside their modules: ``tests/losses/test_detection.py``,
``tests/metrics/test_detection.py``, ``tests/handlers/test_detection.py``, ``tests/evaluation/test_detector.py``;
the decoder and the vertebra centres beside the codec, ``tests/codecs/test_detection.py``.
"""

from __future__ import annotations


import numpy as np
import pytest
import torch
from monai.data import list_data_collate

from monai_spine.data.annotation import SpineAnnotation, write_annotation
from monai_spine.engines.detector import detector_cases, detector_datalists, experiment_params


CERVICAL = ["C3", "C4", "C5", "C6", "C7"]


# ---------------------------------------------------------------------------------------------- centres and cases

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


def test_experiment_params_are_flat_strings_and_numbers():
    synthetic = {"n": 8, "size": [256, 256]}
    p = experiment_params("lumbar", 3, 2, 1e-3, [64, 64], [4, 4, 8, 8, 16, 4], 1.5, 0.2, "", synthetic)
    assert p["levels"] == "L1,L2,L3,L4,L5" and p["spatial_size_hw"] == "64x64" and p["features"] == "4,4,8,8,16,4"
    assert p["synthetic_size"] == "[256, 256]" and p["decode_method"] == "sequence"
    assert all(isinstance(v, (str, int, float)) for v in p.values())
