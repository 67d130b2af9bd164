"""The bundle's regressor recipe learns: it overfits a small fixed set far below the mean shape.

A learning test, not a timing test: the recipe of ``bundle/configs/train.json`` (codec targets,
warm-up + cosine, cached crops with batch augmentation) on a few tiny synthetic radiographs, a few
hundred optimisation steps, must bring the training-crop error to a fraction of the mean shape's.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.slow

BUNDLE = Path(__file__).resolve().parents[2] / "bundle"


def _parser(tmp_path, variant, **extra):
    from monai.bundle import ConfigParser

    p = ConfigParser()
    p.read_config(str(BUNDLE / "configs" / "train.json"))
    p.update(
        {
            "bundle_root": str(BUNDLE),
            "ckpt_dir": str(tmp_path / "models"),
            "mlflow_dir": str(tmp_path / "mlruns"),
            "variant": variant,
            "network_width": 0.125,
            "fc_features": 64,
            "dropout": 0.0,
            "spatial_size": [64, 128],
            "batch_size": 8,
            "epochs": 150,
            "val_interval": 1000,
            "warmup_steps": 30,
            "flip_prob": 0.0,
            "max_cases": 4,
            "synthetic#n": 12,
            "synthetic#size": [256, 256],
            "synthetic#hard_case_rate": 0.0,
            "train#handler#mlflow#_disabled_": True,
            "validate#handler#mlflow#_disabled_": True,
            "validate#items": "$@datalists['training']",
            "show_progress": False,
            **extra,
        }
    )
    return p


def _crop_errors_px(net, data, spatial_size):
    """Per-point error of the network on prepared crops, in crop pixels."""
    from monai_spine.transforms.keypoints import frac_to_px_like

    h, w = spatial_size
    net.eval()
    with torch.no_grad():
        x = torch.stack([torch.as_tensor(d["image"]) for d in data])
        pred = net(x)[..., :2].numpy()
    gt = np.stack([np.asarray(d["keypoints_frac"]) for d in data])
    vis = np.stack([np.asarray(d["visible"], bool) for d in data])
    err = np.linalg.norm(frac_to_px_like(pred, (w, h)) - frac_to_px_like(gt, (w, h)), axis=-1)
    return err[vis]


@pytest.mark.parametrize("variant", ["baseline", "cbam", "bayecbam"])
def test_recipe_overfits_a_small_set_far_below_the_mean_shape(tmp_path, variant):
    torch.manual_seed(0)
    p = _parser(tmp_path, variant)
    p.get_parsed_content("initialize")  # seeds, the spec file, the optional initial checkpoint
    trainer = p.get_parsed_content("train#trainer")
    net = p.get_parsed_content("network_def")
    steps = 150 * len(p.get_parsed_content("train#dataloader"))
    assert 200 <= steps <= 600  # "a few hundred CPU steps"
    data = p.get_parsed_content("validate#dataset").data  # the training films' crops, validation geometry
    mean_shape = _crop_errors_px(_MeanShape(net.codec), data, (64, 128))
    trainer.run()
    err = _crop_errors_px(net, data, (64, 128))
    # the mean shape errs several crop pixels; the trained network a small fraction of that
    assert mean_shape.mean() > 2.0
    assert err.mean() < 0.4 * mean_shape.mean(), (err.mean(), mean_shape.mean())
    # the checkpoint folder describes itself
    assert (tmp_path / "models" / "regressor_model.json").is_file()


class _MeanShape(torch.nn.Module):
    """A 'network' that always answers the codec's mean shape (the no-network reference)."""

    def __init__(self, codec):
        super().__init__()
        self.codec = codec

    def forward(self, x):
        return self.codec.mean_frac.expand(x.shape[0], -1, -1)
