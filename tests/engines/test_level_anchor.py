"""Training the level anchor: sample points of a film, the patch pool, and a classifier that learns."""

import numpy as np
import pytest
import torch

from monai_spine.codecs.level_groups import ABOVE, BELOW, NOT_A_CENTRE, level_groups_for
from monai_spine.data.datasets import ensure_synthetic, list_cases
from monai_spine.data.keypoints import get_region
from monai_spine.engines.level_anchor import (
    anchor_training_points,
    build_anchor_pool,
    edge_crop_rows,
    train_level_anchor,
)
from monai_spine.inference.level_anchor import LevelAnchor


def test_anchor_training_points_hand_computed():
    c = np.array([[10.0, 0.0], [10.0, 10.0], [10.0, 20.0], [10.0, 32.0], [10.0, 44.0]])  # spacings 10, 10, 12, 12
    pts, codes, spacing = anchor_training_points(c, lateral_frac=0.5)
    assert spacing == 11.0  # median of 10, 10, 12, 12
    assert list(codes[:5]) == [0, 1, 2, 3, 4]
    assert np.allclose(pts[5:7], [[10, -10], [10, -20]]) and list(codes[5:7]) == [ABOVE, ABOVE]
    assert np.allclose(pts[7:9], [[10, 56], [10, 68]]) and list(codes[7:9]) == [BELOW, BELOW]
    assert np.allclose(pts[9:13, 1], [5, 15, 26, 38]) and np.all(codes[9:13] == NOT_A_CENTRE)  # discs
    # beside the spine at levels 0 and 4, 0.5 spacings = 5.5 px left and right
    assert np.allclose(pts[13:], [[4.5, 0], [15.5, 0], [4.5, 44], [15.5, 44]]) and np.all(codes[13:] == NOT_A_CENTRE)


@pytest.mark.parametrize("centres", [np.full((5, 2), np.nan), np.array([[0.0, 0.0], [0.0, 10.0], [np.nan, np.nan]])])
def test_anchor_training_points_too_few_levels(centres):
    pts, codes, spacing = anchor_training_points(centres)
    assert pts.shape == (0, 2) and codes.shape == (0,) and np.isnan(spacing)


def test_anchor_training_points_bad_shape():
    with pytest.raises(ValueError, match=r"\(L, 2\)"):
        anchor_training_points(np.zeros((5, 3)))


@pytest.fixture(scope="module")
def films(tmp_path_factory):
    folder = ensure_synthetic(tmp_path_factory.mktemp("syn"), "cervical", n=3, seed=1, hard_case_rate=0.0, size=(512, 512))
    return list_cases(folder)["cases"]


def test_pool_shapes_and_labels(films):
    groups = level_groups_for(get_region("cervical").levels)
    x, y = build_anchor_pool(films[:1], groups, variants=2, patch_size=32, log=lambda m: None)
    assert x.shape[1:] == (1, 32, 32) and x.dtype == np.float16 and len(x) == len(y)
    assert len(x) % 2 == 0 and set(np.unique(y)) <= set(range(groups.num_classes))
    assert np.abs(x.astype(np.float32).mean(axis=(1, 2, 3))).max() < 1e-2  # standardised patches


class _Fixed:
    """A stand-in generator whose uniform draws are the low end, the high end, then the middle of each range."""

    def __init__(self, fracs):
        self.fracs = list(fracs)

    def uniform(self, lo, hi):
        return lo + self.fracs.pop(0) * (hi - lo)


@pytest.mark.parametrize(
    "height, fracs, expected",
    [
        # spacing 10: top edge 0.35-1.5 spacings above row 100, bottom 0.5-1.8 below row 300
        (1000, (0.0, 0.0), (96, 305)),  # floor(100 - 3.5), ceil(300 + 5)
        (1000, (1.0, 1.0), (85, 318)),
        (310, (0.5, 1.0), (90, 310)),  # the film ends at row 310: its own edge stays
        (1000, (0.5, 0.5), (90, 312)),  # floor(100 - 9.25) = 90, ceil(300 + 11.5) = 312
    ],
)
def test_edge_crop_rows_by_hand(height, fracs, expected):
    assert edge_crop_rows(height, 100.0, 300.0, 10.0, _Fixed(fracs)) == expected


def test_edge_crop_rows_refuses_a_bad_spacing():
    with pytest.raises(ValueError, match="positive spacing"):
        edge_crop_rows(100, 10.0, 50.0, 0.0, np.random.default_rng(0))


def test_pool_with_edge_crops_drops_points_beyond_the_new_edges(films):
    groups = level_groups_for(get_region("cervical").levels)
    x0, y0 = build_anchor_pool(films[:1], groups, variants=3, patch_size=32, log=lambda m: None)
    x1, y1 = build_anchor_pool(films[:1], groups, variants=3, patch_size=32, log=lambda m: None, edge_crop_prob=1.0)
    # every variant cropped: the points one and two spacings beyond the ends are mostly off the tighter film
    assert len(x1) < len(x0) and len(x1) == len(y1)
    assert np.sum(y1 == groups.encode(np.array([ABOVE]))[0]) < np.sum(y0 == groups.encode(np.array([ABOVE]))[0])
    # every level is still sampled in every variant (the crop keeps the first and last levels on the film)
    levels = groups.encode(np.arange(len(groups.levels)))
    assert np.sum(np.isin(y1, levels)) == np.sum(np.isin(y0, levels))
    # no crop asked for: the same pool as before, draw for draw
    x2, y2 = build_anchor_pool(films[:1], groups, variants=3, patch_size=32, log=lambda m: None, edge_crop_prob=0.0)
    np.testing.assert_array_equal(x2, x0)
    np.testing.assert_array_equal(y2, y0)


def test_level_anchor_learns_its_training_films(films, tmp_path):
    """A few hundred CPU steps: the classifier tells the sample classes of its films apart far above chance."""
    torch.manual_seed(0)
    levels = get_region("cervical").levels
    spec = train_level_anchor(tmp_path, films, films, levels, epochs=25, batch_size=32, learning_rate=3e-3,
                              variants=4, log=lambda m: None)
    labels = build_anchor_pool(films, spec.groups, 0, log=lambda m: None)[1]
    assert spec.meta["validation_accuracy"] > max(0.8, np.bincount(labels).max() / len(labels) + 0.2)
    anchor = LevelAnchor.from_dir(tmp_path)
    assert anchor.spec.groups.levels == tuple(levels)
    assert anchor.spec.meta["training_patches"] > 0
    from monai_spine.engines.level_anchor import class_recall

    recall = class_recall(anchor, films)
    assert set(recall) <= set(anchor.spec.groups.class_names) and "not a centre" in recall
    assert np.mean(list(recall.values())) > 0.5


def test_label_peaks_hand_computed():
    from monai_spine.engines.level_anchor import label_peaks

    boxes = np.array([[0, 0, 10, 10], [0, 12, 10, 22], [np.nan] * 4, [0, 36, 10, 46]], float)
    peaks = [[5, 5], [5, 17], [5, 11], [5, -4], [5, 50], [30, 17], [5, 40]]
    # in level 0, in level 1, the disc between 0 and 1, above, below, beside the spine, in level 3
    assert list(label_peaks(peaks, boxes)) == [0, 1, NOT_A_CENTRE, ABOVE, BELOW, NOT_A_CENTRE, 3]
    assert list(label_peaks(peaks[:2], np.full((4, 4), np.nan))) == [NOT_A_CENTRE, NOT_A_CENTRE]
