"""Batch augmentation of cached crops: keypoints move with the image, flips swap labels."""

import numpy as np
import pytest
import torch

from monai_spine.transforms.batch import RandZoomFlipKeypointsBatch, RandZoomFlipKeypointsBatchd

H, W = 64, 128


def _dot_images(kp_frac):
    """One bright Gaussian blob per sample at the first keypoint (edge-based fractions)."""
    b = kp_frac.shape[0]
    yy, xx = torch.meshgrid(torch.arange(H) + 0.5, torch.arange(W) + 0.5, indexing="ij")
    cx, cy = kp_frac[:, 0, 0] * W, kp_frac[:, 0, 1] * H
    return torch.exp(-((xx - cx.view(b, 1, 1)) ** 2 + (yy - cy.view(b, 1, 1)) ** 2) / 4.0)[:, None]


def _peak_frac(img):
    b = img.shape[0]
    flat = img.view(b, -1).argmax(1)
    y, x = flat // W, flat % W
    return torch.stack([(x + 0.5) / W, (y + 0.5) / H], -1)


@pytest.mark.parametrize("min_scale,flip_prob", [(1.0, 0.0), (0.7, 0.0), (0.7, 1.0), (0.9, 0.5)])
def test_keypoints_follow_the_image(min_scale, flip_prob):
    torch.manual_seed(0)
    kp = 0.35 + 0.3 * torch.rand(8, 2, 2)  # inside the central part that every window keeps
    aug = RandZoomFlipKeypointsBatch(min_scale, flip_prob, flip_perm=[1, 0])
    aug.set_random_state(3)
    img, kp_out, _ = aug(_dot_images(kp), kp)
    flipped = torch.as_tensor(aug._params["flip"])
    # the blob was drawn at point 0; after a flip it is labelled point 1
    expected = torch.where(flipped[:, None], kp_out[:, 1], kp_out[:, 0])
    assert torch.all((_peak_frac(img) - expected).abs() <= torch.tensor([1.0 / W, 1.0 / H]) + 1e-6)


def test_no_zoom_no_flip_is_identity():
    x = torch.rand(4, 1, H, W)
    kp = torch.rand(4, 5, 2)
    out, kp_out, _ = RandZoomFlipKeypointsBatch(1.0, 0.0)(x, kp)
    torch.testing.assert_close(out, x, atol=1e-5, rtol=0)
    torch.testing.assert_close(kp_out, kp)


def test_window_always_keeps_the_centre():
    aug = RandZoomFlipKeypointsBatch(0.6).set_random_state(0)
    aug.randomize(1000)
    s, o = aug._params["scale"], aug._params["origin"]
    a = 0.2
    assert np.all(o <= a + 1e-12) and np.all(o + s[:, None] >= 1 - a - 1e-12) and np.all(s >= 0.6)


def test_dict_wrapper_permutes_visibility_and_uses_alternative():
    label = torch.tensor([[[0.4, 0.5, 1.0], [0.6, 0.5, 0.0]]])
    d = {"image": torch.zeros(1, 1, H, W), "image_clahe": torch.ones(1, 1, H, W), "label": label}
    t = RandZoomFlipKeypointsBatchd(min_scale=1.0, flip_prob=1.0, flip_perm=[1, 0], alt_prob=1.0)
    out = t(d)
    assert "image_clahe" not in out and out["image"].mean() > 0.99
    # flipped: x -> 1 - x, then the two points swap (visibility with them)
    torch.testing.assert_close(out["label"], torch.tensor([[[0.4, 0.5, 0.0], [0.6, 0.5, 1.0]]]))


@pytest.mark.parametrize("kw,match", [({"min_scale": 0.0}, "min_scale"), ({"flip_prob": 0.5}, "flip_perm"), ({"alt_prob": 2}, "alt_prob")])
def test_bad_arguments(kw, match):
    with pytest.raises(ValueError, match=match):
        RandZoomFlipKeypointsBatch(**kw)
