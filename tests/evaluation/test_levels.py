"""The one "right level" rule: a detected level's centre inside the annotated box of the same level."""

import numpy as np
import pytest

from monai_spine.evaluation.levels import matched_levels

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
