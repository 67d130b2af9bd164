"""The one "right level" rule: a detected level's centre inside the annotated box of the same level."""

import numpy as np
import pytest

from monai_spine.data.datasets import ensure_synthetic, list_cases
from monai_spine.data.keypoints import get_region
from monai_spine.evaluation.levels import matched_levels, right_level_rate

BOXES = np.array([[0, 0, 10, 10], [0, 12, 10, 22], [0, 24, 10, 34]], float)
LEVELS = ["L1", "L2", "L3"]


@pytest.mark.parametrize("det_levels,centres,rows,expected", [
    (["L1", "L2", "L3"], [[5, 5], [5, 17], [5, 29]], None, [(0, 0), (1, 1), (2, 2)]),
    # one level up: every centre lies in the box of the level below its name
    (["L2", "L3"], [[5, 5], [5, 17]], None, []),
    # edges count; a level the annotation lacks is skipped
    (["L1", "L4", "L3"], [[10, 0], [5, 40], [5, 35]], None, [(0, 0)]),
    # only the rows asked for
    (["L1", "L2"], [[5, 5], [5, 17]], [1], [(1, 1)]),
    ([], np.zeros((0, 2)), None, []),
])
def test_matched_levels(det_levels, centres, rows, expected):
    assert matched_levels(det_levels, centres, LEVELS, BOXES, rows) == expected


@pytest.fixture(scope="module")
def films(tmp_path_factory):
    folder = ensure_synthetic(tmp_path_factory.mktemp("syn"), "cervical", n=2, seed=1, hard_case_rate=0.0, size=(512, 512))
    return list_cases(folder)["cases"]


class _StubDetector:
    """detect() returns the annotated centres with the levels shifted by ``shift``."""

    def __init__(self, centres_by_film, levels, shift):
        self.levels, self._c, self._shift, self._n = tuple(levels), centres_by_film, shift, 0

    def detect(self, image, spacing, source):
        from types import SimpleNamespace

        c = self._c[self._n]
        self._n += 1
        levs = list(self.levels)
        named = [(levs[k + self._shift], c[k]) for k in range(len(levs)) if 0 <= k + self._shift < len(levs)]
        return SimpleNamespace(levels=[n for n, _ in named], centres_px=np.array([p for _, p in named]))


@pytest.mark.parametrize("shift,expected", [(0, 1.0), (1, 0.0)])
def test_right_level_rate_on_a_stub_detector(films, shift, expected):
    from monai_spine.codecs.detection import vertebra_centres_px
    from monai_spine.data.annotation import read_annotation

    levels = get_region("cervical").levels
    cs = []
    for f in films[:2]:
        ann = read_annotation(f)
        c = vertebra_centres_px(ann.keypoints_px, ann.visible, ann.scheme, boxes_px=ann.boxes_px)
        cs.append(np.array([c[list(ann.levels).index(lev)] for lev in levels]))
    # one level up: every centre lies in its neighbour's box, not in the named level's
    assert right_level_rate(_StubDetector(cs, levels, shift), films[:2]) == pytest.approx(expected)


LEV5 = ["A", "B", "C", "D", "E"]
BOX5 = np.array([[0, 10 * k, 10, 10 * k + 8] for k in range(5)], float)  # level k's box: y 10k .. 10k + 8
CEN5 = np.c_[np.full(5, 5.0), 10.0 * np.arange(5) + 4]


@pytest.mark.parametrize("centres, det_levels, expected", [
    (CEN5, LEV5, (0, 0, 0)),                                              # every level right
    (CEN5 + [0, 10], LEV5, (4, 0, 1)),                                    # one level low: E lands below every box
    (CEN5 - [0, 10], LEV5, (4, 0, 1)),                                    # one level high
    (np.vstack([CEN5[:2], CEN5[3:4], CEN5[3:]]), LEV5, (0, 1, 0)),        # C placed on D: a run off by one
    (np.vstack([CEN5[:4], [[50.0, 44.0]]]), LEV5, (0, 0, 1)),             # E beside the spine
    (CEN5[:4], LEV5[:4], (0, 0, 1)),                                      # E not output at all
])
def test_level_misses_hand_built(centres, det_levels, expected):
    from monai_spine.evaluation.levels import MISS_KINDS, level_misses

    out = level_misses(det_levels, centres, LEV5, BOX5, LEV5)
    assert tuple(out[k] for k in MISS_KINDS) == expected
