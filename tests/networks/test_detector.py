"""The level-heatmap detector network (MONAI BasicUNet, 2D)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from monai_spine.losses.detection import DetectionLoss
from monai_spine.networks.detector import NUM_BOX_CHANNELS, VertebraDetectorNet
from monai_spine.transforms.detection import CentreHeatmapTarget

TINY = (4, 4, 8, 8, 16, 4)


@pytest.mark.parametrize("levels, shape", [(5, (2, 1, 64, 64)), (17, (1, 1, 32, 48))])
def test_output_has_a_heatmap_per_level_and_four_box_channels(levels, shape):
    net = VertebraDetectorNet(levels, features=TINY)
    out = net(torch.rand(*shape))
    assert tuple(out.shape) == (shape[0], levels + NUM_BOX_CHANNELS, *shape[2:])


def test_heatmaps_start_at_the_prior_probability():
    torch.manual_seed(0)
    net = VertebraDetectorNet(5, features=TINY, prior_prob=0.01)
    bias = net.unet.final_conv.bias.detach()
    np.testing.assert_allclose(bias[:5].numpy(), np.log(0.01 / 0.99), rtol=1e-6)
    with torch.no_grad():
        p = torch.sigmoid(net(torch.rand(2, 1, 32, 32))[:, :5])
    assert p.mean().item() < 0.05


@pytest.mark.parametrize(
    "kwargs, match",
    [({"num_levels": 0}, "num_levels"), ({"num_levels": 5, "features": (4, 4, 8)}, "six"),
     ({"num_levels": 5, "prior_prob": 1.0}, "prior_prob")],
)
def test_bad_arguments_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        VertebraDetectorNet(**kwargs)


def test_input_size_must_be_divisible_by_16():
    with pytest.raises(ValueError, match="divisible by 16"):
        VertebraDetectorNet(5, features=TINY)(torch.rand(1, 1, 40, 64))


@pytest.fixture
def one_thread():
    """Training steps on one thread: on a shared CPU, more threads than free cores only spin."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_training_steps_lower_the_detection_loss(one_thread):
    torch.manual_seed(0)
    net = VertebraDetectorNet(2, features=TINY)
    x = torch.zeros(2, 1, 32, 32)
    x[:, :, 6:12, 10:18] = 1.0
    x[:, :, 20:26, 12:20] = 1.0
    y = torch.as_tensor(CentreHeatmapTarget((32, 32), 1.5)(np.array([[13.5, 8.5], [15.5, 22.5]]),
                                                            np.array([[10, 6, 18, 12], [12, 20, 20, 26]], float)))
    y = y[None].repeat(2, 1, 1, 1)
    loss_fn, opt = DetectionLoss(), torch.optim.Adam(net.parameters(), 1e-2)
    first = loss_fn(net(x), y).item()
    for _ in range(15):
        loss = loss_fn(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss_fn(net(x), y).item() < 0.7 * first
