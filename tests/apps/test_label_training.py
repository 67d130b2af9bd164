"""monai_spine.apps.label.lib.training: fine-tuning shows a model the crops it is fed at prediction."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch

from monai_spine.apps.label.lib.training import _crop_samples
from monai_spine.data.annotation import SpineAnnotation
from monai_spine.data.frames import FrameBoxes
from monai_spine.inference.regressor import KeypointPredictor
from monai_spine.transforms import VertebraCrop

SIZE = (32, 64)  # crop H x W


class _Net(torch.nn.Module):
    predicts_logvar = False

    def forward(self, x):
        return torch.zeros(x.shape[0], 5, 2)


def _label(tmp_path, angle_deg):
    """Three 30 x 12 px vertebrae (lateral5: 4 corners + a point 20 px behind) on a spine tilted by angle_deg."""
    cv2.imwrite(str(tmp_path / "f.png"), np.full((200, 200), 90, np.uint8))
    a = math.radians(angle_deg)
    e, t = np.array([math.cos(a), math.sin(a)]), np.array([-math.sin(a), math.cos(a)])
    local = np.array([[-15.0, -6.0], [15.0, -6.0], [-15.0, 6.0], [15.0, 6.0], [35.0, 0.0]])
    centres = np.array([90.0, 60.0]) + np.arange(3)[:, None] * 20.0 * t
    kp = centres[:, None] + local[..., :1] * e + local[..., 1:] * t
    ann = SpineAnnotation(["C3", "C4", "C5"], kp, np.ones((3, 5), bool), "cervical", "lateral5",
                          image=str(tmp_path / "f.png"))
    return ann, centres


@pytest.mark.parametrize("angle_deg", [0.0, 20.0])
def test_a_frame_model_is_fine_tuned_on_its_own_framing(tmp_path, angle_deg):
    ann, centres = _label(tmp_path, angle_deg)
    rule = FrameBoxes(2.5, 1.0, (0.5, 0.0))
    pred = KeypointPredictor(_Net(), scheme="lateral5", spatial_size=SIZE, box_rule=rule)
    _, y, skipped = _crop_samples([(str(tmp_path / "f.png"), ann)], SIZE, 4.0, 5, pred)
    assert not skipped
    boxes, angles = rule.boxes(centres, ann.levels)
    crop = VertebraCrop(spatial_size=SIZE, margin_mm=4.0)
    for i in range(3):
        want = crop.geometry(ann.keypoints_px[i], box_px=boxes[i], angle_rad=angles[i])["keypoints_frac"]
        np.testing.assert_allclose(y[i, :, :2].numpy(), want, atol=1e-5)
    # without a box rule: the keypoints' own box, as before
    _, y_plain, _ = _crop_samples([(str(tmp_path / "f.png"), ann)], SIZE, 4.0, 5, None)
    want = crop.geometry(ann.keypoints_px[0])["keypoints_frac"]
    np.testing.assert_allclose(y_plain[0, :, :2].numpy(), want, atol=1e-5)
