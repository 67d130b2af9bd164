"""The spine-strip network: output layout, the level reading along the whole strip, bad input."""

import pytest
import torch

from monai_spine.networks.spine_strip import SpineStripNet


def test_output_layout_and_initial_heat():
    torch.manual_seed(0)
    net = SpineStripNet(features=(4, 4, 8, 8, 16, 4), embed=3, hidden=5, band_half_width=4, pool=4).eval()
    with torch.no_grad():
        y = net(torch.rand(2, 1, 64, 16))
    assert y.shape == (2, 2, 64, 16)
    assert torch.sigmoid(y[:, 0]).mean() < 0.05  # heat starts near the 1 % prior
    assert torch.equal(y[:, 1, :, 0], y[:, 1, :, 15])  # the level reading is one value per row


def test_level_reading_sees_the_whole_strip():
    """A change at the bottom of the strip moves the level reading at its top (the GRU runs both ways)."""
    torch.manual_seed(0)
    net = SpineStripNet(features=(4, 4, 8, 8, 16, 4), embed=3, hidden=5, band_half_width=4, pool=4).eval()
    x = torch.rand(1, 1, 128, 16)
    x2 = x.clone()
    x2[..., 110:, :] = 0.0
    with torch.no_grad():
        a, b = net(x)[0, 1, :8, 8], net(x2)[0, 1, :8, 8]
    assert not torch.allclose(a, b)


@pytest.mark.parametrize("kwargs, match", [({"features": (4, 4)}, "six ints"), ({"embed": 0}, "positive")])
def test_bad_sizes(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SpineStripNet(**kwargs)


def test_bad_input():
    with pytest.raises(ValueError, match=r"\(B, 1, R, W\)"):
        SpineStripNet(features=(4, 4, 8, 8, 16, 4))(torch.rand(1, 2, 64, 16))
