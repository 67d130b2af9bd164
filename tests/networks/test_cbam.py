"""Tests of monai_spine.networks.cbam against hand-computed numbers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from monai_spine.networks.cbam import CBAM, ChannelAttention, SpatialAttention

# a 1 x 2 x 2 x 2 feature map: channel 0 and channel 1
F = np.array([[[1.0, 2.0], [3.0, 4.0]], [[-1.0, 0.5], [2.0, 0.0]]])
# channel MLP 2 -> 1 -> 2
W1, B1 = np.array([[0.5, -0.25]]), np.array([0.1])
W2, B2 = np.array([[1.0], [-2.0]]), np.array([0.2, 0.3])


def _sigmoid(v):
    return 1.0 / (1.0 + np.exp(-v))


def _mlp(v):
    return W2 @ np.maximum(W1 @ v + B1, 0.0) + B2


def _conv_same(maps, kernel):
    """Zero-padded 'same' cross-correlation of (2, H, W) maps with a (2, k, k) kernel, by loops."""
    c, h, w = maps.shape
    k = kernel.shape[-1]
    r = k // 2
    out = np.zeros((h, w))
    for y in range(h):
        for x in range(w):
            for ch in range(c):
                for dy in range(-r, r + 1):
                    for dx in range(-r, r + 1):
                        yy, xx = y + dy, x + dx
                        if 0 <= yy < h and 0 <= xx < w:
                            out[y, x] += kernel[ch, dy + r, dx + r] * maps[ch, yy, xx]
    return out


def _set_channel_mlp(att: ChannelAttention) -> None:
    with torch.no_grad():
        att.mlp[0].weight.copy_(torch.tensor(W1))
        att.mlp[0].bias.copy_(torch.tensor(B1))
        att.mlp[2].weight.copy_(torch.tensor(W2))
        att.mlp[2].bias.copy_(torch.tensor(B2))


def _kernel(k: int) -> np.ndarray:
    return np.linspace(-1.0, 1.0, 2 * k * k).reshape(2, k, k)


def _expected(paper_eq3: bool, k: int) -> np.ndarray:
    avg, mx = F.mean(axis=(1, 2)), F.max(axis=(1, 2))  # avg = (2.5, 0.375), max = (4, 2)
    if paper_eq3:
        mc = _sigmoid(_mlp(avg)) + _sigmoid(_mlp(mx))
    else:
        mc = _sigmoid(_mlp(avg) + _mlp(mx))
    f1 = mc[:, None, None] * F
    pooled = np.stack([f1.mean(axis=0), f1.max(axis=0)])
    ms = _sigmoid(_conv_same(pooled, _kernel(k)))
    return ms[None] * f1


def test_channel_mlp_by_hand():
    # avg = (2.5, 0.375): hidden = relu(1.25 - 0.09375 + 0.1) = 1.25625 -> (1.45625, -2.2125)
    np.testing.assert_allclose(_mlp(F.mean(axis=(1, 2))), [1.45625, -2.2125])


@pytest.mark.parametrize("paper_eq3", [False, True])
@pytest.mark.parametrize("k", [3, 7])
def test_cbam_matches_hand_computation(paper_eq3, k):
    cbam = CBAM(2, reduction=2, kernel_size=k, paper_eq3=paper_eq3).double()
    assert cbam.channel_attention.hidden == 1
    _set_channel_mlp(cbam.channel_attention)
    with torch.no_grad():
        cbam.spatial_attention.conv.weight.copy_(torch.tensor(_kernel(k))[None])
    out = cbam(torch.tensor(F)[None])
    np.testing.assert_allclose(out[0].detach().numpy(), _expected(paper_eq3, k), rtol=1e-12, atol=1e-12)


def test_channel_attention_ranges():
    x = torch.randn(3, 8, 5, 6)
    cbam_att = ChannelAttention(8, reduction=4)(x)
    paper_att = ChannelAttention(8, reduction=4, paper_eq3=True)(x)
    assert cbam_att.shape == (3, 8, 1, 1)
    assert torch.all((cbam_att > 0) & (cbam_att < 1))
    assert torch.all((paper_att > 0) & (paper_att < 2))


def test_spatial_attention_shape_and_range():
    att = SpatialAttention(7)(torch.randn(2, 4, 9, 11))
    assert att.shape == (2, 1, 9, 11)
    assert torch.all((att > 0) & (att < 1))


def test_cbam_shape_and_gradient():
    cbam = CBAM(16, reduction=4)
    x = torch.randn(2, 16, 7, 9, requires_grad=True)
    out = cbam(x)
    assert out.shape == x.shape
    out.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert all(p.grad is not None for p in cbam.parameters())


def test_hidden_size_never_zero():
    assert ChannelAttention(3, reduction=16).hidden == 1


@pytest.mark.parametrize(
    "make, x",
    [
        (lambda: ChannelAttention(4), torch.zeros(1, 3, 4, 4)),
        (lambda: ChannelAttention(4), torch.zeros(4, 4)),
        (lambda: SpatialAttention(7), torch.zeros(3, 4, 4)),
    ],
)
def test_bad_input_shapes_raise(make, x):
    with pytest.raises(ValueError, match="shape"):
        make()(x)


@pytest.mark.parametrize("kwargs", [{"kernel_size": 4}, {"kernel_size": 0}])
def test_bad_kernel_size(kwargs):
    with pytest.raises(ValueError, match="kernel_size"):
        SpatialAttention(**kwargs)
