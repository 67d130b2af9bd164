"""The level anchor at inference: patches around peaks, its spec file, loading, and the detector's use of it."""

import numpy as np
import pytest
import torch

from monai_spine.codecs.level_groups import AP_LEVEL_GROUPS, level_groups_for
from monai_spine.inference.level_anchor import ANCHOR_SPEC_FILE, LevelAnchor, LevelAnchorSpec, anchor_patches


def test_anchor_patches_centre_and_standardisation():
    img = np.zeros((200, 100), np.float32)
    img[95:106, 45:56] = 1.0  # a bright 11 x 11 square at (50, 100)
    x = anchor_patches(img, [[50.0, 100.0], [50.0, 30.0]], spacing_px=10.0, side_spacings=4.0, patch_size=20)
    assert x.shape == (2, 1, 20, 20) and x.dtype == np.float32
    centre = x[0, 0, 7:13, 7:13].mean()
    assert centre > x[0, 0].mean() + 1.0  # the square is in the middle of the first patch
    assert abs(x[0].mean()) < 1e-5 and x[0].std() == pytest.approx(1.0, abs=1e-3)
    assert np.allclose(x[1], 0.0)  # a flat patch stays flat (all zeros)


@pytest.mark.parametrize("spacing", [0.0, -3.0, float("nan")])
def test_anchor_patches_bad_spacing(spacing):
    with pytest.raises(ValueError, match="spacing_px"):
        anchor_patches(np.zeros((10, 10)), [[5, 5]], spacing)


def test_anchor_patches_bad_image():
    with pytest.raises(ValueError, match=r"shape \(2, 3, 4\)"):
        anchor_patches(np.zeros((2, 3, 4)), [[1, 1]], 5.0)


def test_spec_round_trip_and_errors(tmp_path):
    spec = LevelAnchorSpec(AP_LEVEL_GROUPS, patch_size=32, side_spacings=5.0, weight=0.5, meta={"a": 1})
    path = spec.save(tmp_path)
    assert path.name == ANCHOR_SPEC_FILE
    back = LevelAnchorSpec.load(tmp_path)
    assert back.to_dict() == spec.to_dict()
    with pytest.raises(ValueError, match="not a level anchor spec"):
        LevelAnchorSpec.from_dict({"format": "monai-spine-detector"}, "x.json")
    d = spec.to_dict()
    del d["patch_size"]
    with pytest.raises(KeyError, match="patch_size"):
        LevelAnchorSpec.from_dict(d, "x.json")


def test_from_dir_checks_the_weights(tmp_path):
    spec = LevelAnchorSpec(level_groups_for(["C3", "C4", "C5"]), patch_size=16, channels=(4, 8), strides=(2, 2))
    spec.save(tmp_path)
    assert LevelAnchor.exists(tmp_path)
    with pytest.raises(FileNotFoundError, match="level_anchor.pt"):
        LevelAnchor.from_dir(tmp_path)
    other = LevelAnchorSpec(level_groups_for(["C3", "C4"]), patch_size=16, channels=(4, 8), strides=(2, 2))
    torch.save(other.build_network().state_dict(), tmp_path / spec.checkpoint_file)
    with pytest.raises(ValueError, match="do not match"):
        LevelAnchor.from_dir(tmp_path)
    torch.save(spec.build_network().state_dict(), tmp_path / spec.checkpoint_file)
    anchor = LevelAnchor.from_dir(tmp_path)
    img = np.random.default_rng(0).random((64, 64)).astype(np.float32)
    p = anchor.probabilities(img, [[20, 20], [40, 40]], 8.0)
    assert p.shape == (2, 6) and np.allclose(p.sum(1), 1.0)
    assert anchor.level_cost(img, [[20, 20]], 8.0).shape == (1, 3)
    assert anchor.probabilities(img, np.zeros((0, 2)), 8.0).shape == (0, 6)


def test_detector_refuses_an_anchor_of_other_levels(tmp_path):
    from monai_spine.inference.detector import DetectorSpec, VertebraDetector

    spec = DetectorSpec(region="cervical", spatial_size=(64, 32), features=(4, 4, 8, 8, 16, 4))
    anchor = LevelAnchor(LevelAnchorSpec(AP_LEVEL_GROUPS, patch_size=16, channels=(4,), strides=(2,)).build_network(),
                         LevelAnchorSpec(AP_LEVEL_GROUPS, patch_size=16, channels=(4,), strides=(2,)))
    with pytest.raises(ValueError, match="level anchor's levels"):
        VertebraDetector(spec.build_network(), spec, anchor=anchor)


def test_anchor_patches_one_channel_per_side_and_spec_round_trip(tmp_path):
    img = np.zeros((200, 100), np.float32)
    img[95:106, 45:56] = 1.0
    x = anchor_patches(img, [[50.0, 100.0]], spacing_px=10.0, side_spacings=(2.0, 8.0), patch_size=16)
    assert x.shape == (1, 2, 16, 16)
    # the square (1.1 spacings wide) fills more of the small patch than of the large one
    assert (x[0, 0] > 0).mean() > (x[0, 1] > 0).mean()
    spec = LevelAnchorSpec(AP_LEVEL_GROUPS, patch_size=16, side_spacings=(2.0, 8.0), channels=(4,), strides=(2,))
    spec.save(tmp_path)
    back = LevelAnchorSpec.load(tmp_path)
    assert back.side_spacings == (2.0, 8.0)
    assert back.build_network()(torch.zeros(1, 2, 16, 16)).shape == (1, 9)
    with pytest.raises(ValueError, match="side_spacings"):
        anchor_patches(img, [[50.0, 100.0]], 10.0, side_spacings=(4.0, 0.0))
