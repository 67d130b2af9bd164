"""Tests of monai_spine.transforms.intensity: CLAHE keeps the intensity range, enhances contrast, is random as told."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.data import MetaTensor

from monai_spine.transforms import CLAHE, CLAHEd, RandCLAHEd, clahe
from monai_spine.transforms.intensity import scale_film_intensities


def _two_level_image(h: int = 32, w: int = 32) -> np.ndarray:
    """Left half a dim ramp in [0, 0.1], right half a bright ramp in [0.9, 1.0]; (1, H, W) float32."""
    ramp = np.linspace(0.0, 0.1, h, dtype=np.float32)[:, None] * np.ones((1, w // 2), np.float32)
    return np.concatenate([ramp, ramp + 0.9], axis=1)[None]


@pytest.mark.parametrize(
    "shape, dtype, bits, lo, hi",
    [
        ((1, 32, 24), np.float32, 8, -3.0, 5.0),
        ((2, 20, 40), np.float64, 16, 100.0, 4095.0),
        ((17, 9), np.float32, 8, 0.0, 1.0),
        ((1, 5, 3), np.uint16, 8, 0.0, 1000.0),  # image smaller than the tile grid
    ],
)
def test_clahe_keeps_range_shape_and_dtype(shape, dtype, bits, lo, hi):
    rng = np.random.default_rng(0)
    img = (lo + (hi - lo) * rng.random(shape)).astype(dtype)
    out = clahe(img, clip_limit=2.0, tile_grid_size=(4, 4), bits=bits)
    assert out.shape == img.shape
    assert out.dtype == (np.float32 if dtype == np.uint16 else dtype)
    chans = out.reshape((-1,) + shape[-2:])
    ins = img.reshape((-1,) + shape[-2:]).astype(np.float64)
    for c in range(chans.shape[0]):
        np.testing.assert_allclose(chans[c].min(), ins[c].min(), rtol=1e-6, atol=1e-4)
        np.testing.assert_allclose(chans[c].max(), ins[c].max(), rtol=1e-6, atol=1e-4)


@pytest.mark.parametrize("value", [0.0, 7.5, -1.0])
@pytest.mark.parametrize("as_tensor", [False, True])
def test_constant_image_is_returned_unchanged(value, as_tensor):
    img = np.full((1, 16, 16), value, dtype=np.float32)
    x = torch.as_tensor(img) if as_tensor else img
    out = CLAHE()(x)
    assert type(out) is type(x)
    np.testing.assert_array_equal(np.asarray(out), img)


def test_clahe_enhances_a_dim_region():
    img = _two_level_image()
    out = CLAHE(clip_limit=4.0, tile_grid_size=(2, 2))(img)
    left_in, left_out = img[0, :, :16], out[0, :, :16]
    # the dim half occupies a tenth of the range; CLAHE spreads it out
    assert left_out.std() > 2.0 * left_in.std()
    assert out.min() == pytest.approx(0.0, abs=1e-6) and out.max() == pytest.approx(1.0, abs=1e-6)


def test_clip_limit_changes_the_result_with_8_bits():
    rng = np.random.default_rng(1)
    img = rng.normal(size=(1, 64, 64)).astype(np.float32).cumsum(axis=2)
    a = clahe(img, clip_limit=1.5, tile_grid_size=(2, 2))
    b = clahe(img, clip_limit=6.0, tile_grid_size=(2, 2))
    assert np.abs(a - b).mean() > 1e-3 * (img.max() - img.min())


def test_torch_and_metatensor_in_same_type_out():
    img = _two_level_image()
    t = torch.as_tensor(img, dtype=torch.float64)
    out_t = CLAHE(tile_grid_size=2)(t)
    assert isinstance(out_t, torch.Tensor) and out_t.dtype == torch.float64
    np.testing.assert_allclose(out_t.numpy(), clahe(img.astype(np.float64), 2.0, 2), atol=1e-6)
    mt = MetaTensor(torch.as_tensor(img), meta={"filename_or_obj": "x.dcm"})
    out_m = CLAHE(tile_grid_size=2)(mt)
    assert isinstance(out_m, MetaTensor) and out_m.meta["filename_or_obj"] == "x.dcm"


@pytest.mark.parametrize(
    "kwargs",
    [{"bits": 12}, {"tile_grid_size": 0}, {"tile_grid_size": (2, 2, 2)}],
)
def test_bad_arguments_raise(kwargs):
    with pytest.raises(ValueError):
        CLAHE(**kwargs)


def test_rand_clahe_bad_range_raises():
    with pytest.raises(ValueError):
        RandCLAHEd(keys="image", clip_limit=(4.0, 1.0))


def test_clahed_keys_and_missing_keys():
    img = _two_level_image()
    d = {"image": img, "label": img.copy()}
    out = CLAHEd(keys="image", tile_grid_size=2)(d)
    np.testing.assert_allclose(out["image"], clahe(img, 2.0, 2))
    np.testing.assert_array_equal(out["label"], img)  # untouched
    with pytest.raises(KeyError):
        CLAHEd(keys=["image", "other"])(d)
    assert "other" not in CLAHEd(keys=["image", "other"], allow_missing_keys=True)(d)


def test_rand_clahe_prob_zero_is_identity_and_prob_one_shares_the_draw():
    img = _two_level_image()
    d = {"image": img, "image2": img.copy()}
    out0 = RandCLAHEd(keys=["image", "image2"], prob=0.0)(d)
    np.testing.assert_array_equal(out0["image"], img)
    t = RandCLAHEd(keys=["image", "image2"], prob=1.0, clip_limit=(1.0, 8.0), tile_grid_size=2).set_random_state(3)
    out1 = t(d)
    assert 1.0 <= t._clip_limit <= 8.0
    np.testing.assert_array_equal(out1["image"], out1["image2"])  # one clip limit for all keys
    np.testing.assert_allclose(out1["image"], clahe(img, t._clip_limit, 2))
    # same seed, same draw
    t2 = RandCLAHEd(keys=["image", "image2"], prob=1.0, clip_limit=(1.0, 8.0), tile_grid_size=2).set_random_state(3)
    t2(d)
    assert t2._clip_limit == t._clip_limit


def test_bundle_config_instantiates():
    parser = ConfigParser(
        {"t": {"_target_": "monai_spine.transforms.RandCLAHEd", "keys": ["image"], "prob": 1.0, "clip_limit": [2.0, 3.0],
               "tile_grid_size": [2, 2]}}
    )
    t = parser.get_parsed_content("t")
    assert isinstance(t, RandCLAHEd) and t.clip_limit_range == (2.0, 3.0) and t.clahe.tile_grid_size == (2, 2)
    out = t({"image": _two_level_image()})
    assert out["image"].shape == (1, 32, 32)


def test_scale_film_intensities_by_hand():
    img = np.arange(201, dtype=np.float32).reshape(1, 1, 201)
    out = scale_film_intensities(img, (0.0, 100.0))
    assert out.shape == (1, 201) and out[0, 0] == 0.0 and out[0, -1] == 1.0 and out[0, 100] == pytest.approx(0.5)
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        scale_film_intensities(np.zeros((2, 3, 4)))
