"""The level anchor's codec: level -> group class -> chain costs, and the chain's level_cost hook."""

import numpy as np
import pytest

from monai_spine.codecs.chain import assign_levels_chain
from monai_spine.codecs.level_groups import (ABOVE, AP_LEVEL_GROUPS, BELOW, NOT_A_CENTRE, LevelGroups,
                                             level_groups_for)

G = AP_LEVEL_GROUPS


@pytest.mark.parametrize("level,cls", [
    (0, 0), (1, 1), (10, 1), (11, 2), (12, 3), (13, 4), (15, 4), (16, 5), (ABOVE, 6), (BELOW, 7), (NOT_A_CENTRE, 8),
])
def test_encode(level, cls):
    assert int(G.encode(level)) == cls


@pytest.mark.parametrize("level", [17, -4])
def test_encode_out_of_range(level):
    with pytest.raises(ValueError, match="outside"):
        G.encode(level)


@pytest.mark.parametrize("level", list(range(17)))
def test_round_trip_one_hot_cost_is_zero_in_the_levels_group(level):
    """Decoding the one-hot code of a level: cost 0 on exactly the levels of its group, weight * cap elsewhere."""
    onehot = np.eye(G.num_classes)[G.encode([level])]
    cost = G.level_cost(onehot, weight=2.0, cap=3.0)[0]
    assert cost[level] == 0.0
    zero = np.flatnonzero(cost == 0.0)
    assert set(zero) == {k for k in range(17) if G.level_class[k] == G.level_class[level]}
    assert np.allclose(np.delete(cost, zero), 6.0)


def test_level_cost_hand_computed():
    p = np.zeros((1, G.num_classes))
    p[0, 2], p[0, 3] = 0.5, 0.25  # T12 0.5, L1 0.25, rest 0.25 on "not a centre"
    p[0, 8] = 0.25
    cost = G.level_cost(p, weight=1.0, cap=4.6)[0]
    assert cost[11] == pytest.approx(np.log(2))
    assert cost[12] == pytest.approx(np.log(4))
    assert cost[0] == pytest.approx(4.6)  # p = 0 -> capped


def test_level_cost_bad_shape():
    with pytest.raises(ValueError, match=r"\(P, 9\)"):
        G.level_cost(np.ones((2, 5)))


def test_groups_must_cover_levels():
    with pytest.raises(ValueError, match="cover"):
        LevelGroups(("A", "B"), (("A", ("A",)),))


def test_dict_round_trip_and_default_grouping():
    assert LevelGroups.from_dict(G.to_dict()) == G
    assert level_groups_for(G.levels) is G
    other = level_groups_for(["C3", "C4", "C5"])
    assert other.num_classes == 6 and list(other.level_class) == [0, 1, 2]


def test_assign_levels_chain_level_cost_moves_a_shifted_chain():
    """Five evenly spaced peaks, three levels: without a cost the chain may start anywhere; a cost that
    makes the first peak level 1 (and punishes level 0) shifts the chain to start there."""
    pts = np.array([[0.0, 10.0 * i] for i in range(3)])
    prof = np.ones(4)  # five levels, equal spacing
    lev0, _, _ = assign_levels_chain(pts, np.ones(3), prof, gap_penalty=1.0)
    assert list(lev0) == [0, 1, 2]  # ties broken towards the first levels
    cost = np.zeros((3, 5))
    cost[0, 0] = 10.0
    lev1, _, _ = assign_levels_chain(pts, np.ones(3), prof, gap_penalty=1.0, level_cost=cost)
    assert list(lev1) == [1, 2, 3]
    with pytest.raises(ValueError, match=r"level_cost must be \(3, 5\)"):
        assign_levels_chain(pts, np.ones(3), prof, level_cost=np.zeros((3, 4)))
