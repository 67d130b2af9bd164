"""The level anchor's codec: a detector peak's level <-> a group class, and group probabilities -> level costs.

The "any vertebra" detector finds vertebra centres but not which level each is; the chain
assignment (:func:`~monai_spine.codecs.chain.assign_levels_chain`) names them by spacing and by
their height on the film, and shifts a whole chain by one level when a C7 or S1 peak sits at one end
or a double response sits in the middle. A small patch classifier (the *level anchor*,
:mod:`monai_spine.inference.level_anchor`) looks at each peak and says which *group* of levels it
shows: levels that look alike locally share a group (T2-T11), levels with a landmark of their own
keep one (T1: the first ribs; T12: the last ribs; L1: no ribs above the lumbar spine; L5: the
pelvis), and three more groups catch peaks that are no level of the region (above the first level,
below the last, or not a vertebra centre: a disc, a double response beside the spine).

Encoding: a level index ``0 .. L - 1`` (or :data:`ABOVE`, :data:`BELOW`, :data:`NOT_A_CENTRE`) ->
its group index. Decoding: ``(P, G)`` group probabilities -> ``(P, L)`` costs
``weight * min(-log p(group of level k), cap)`` added to the chain's node costs, so a peak that the
classifier puts outside the region is expensive at every level and is dropped, and a peak that shows
T12 pulls the chain so that it gets T12. Decoding the one-hot code of a level gives cost 0 at that
level's group and ``weight * cap`` elsewhere: the round trip (argmin of the cost lies in the level's
group) is tested.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["LevelGroups", "AP_LEVEL_GROUPS", "ABOVE", "BELOW", "NOT_A_CENTRE", "level_groups_for"]

#: pseudo-levels of peaks that are no level of the region
ABOVE, BELOW, NOT_A_CENTRE = -1, -2, -3
_SPECIAL = {ABOVE: "above", BELOW: "below", NOT_A_CENTRE: "not a centre"}


@dataclass(frozen=True)
class LevelGroups:
    """Groups of a region's levels that a patch classifier tells apart.

    Args:
        levels: the region's levels, top to bottom (``L``).
        groups: ``(name, [level names])`` per level group, covering every level once, top to bottom.

    The classes are the level groups followed by ``above``, ``below`` and ``not a centre``:
    ``G = len(groups) + 3``.
    """

    levels: tuple[str, ...]
    groups: tuple[tuple[str, tuple[str, ...]], ...]

    def __post_init__(self) -> None:
        seen = [lev for _, members in self.groups for lev in members]
        if sorted(seen) != sorted(self.levels) or len(seen) != len(set(seen)):
            raise ValueError(f"LevelGroups: the groups must cover the levels {list(self.levels)} once each, "
                             f"got {seen}")

    @property
    def class_names(self) -> list[str]:
        """Names of the ``G`` classes: the level groups, then ``above``, ``below``, ``not a centre``."""
        return [name for name, _ in self.groups] + [_SPECIAL[ABOVE], _SPECIAL[BELOW], _SPECIAL[NOT_A_CENTRE]]

    @property
    def num_classes(self) -> int:
        return len(self.groups) + 3

    @property
    def level_class(self) -> np.ndarray:
        """``(L,)`` class index of each level."""
        out = np.zeros(len(self.levels), dtype=np.int64)
        for g, (_, members) in enumerate(self.groups):
            for lev in members:
                out[self.levels.index(lev)] = g
        return out

    def encode(self, level: Any) -> np.ndarray:
        """Class index of each level index (``0 .. L - 1``, or :data:`ABOVE` / :data:`BELOW` / :data:`NOT_A_CENTRE`).

        Raises:
            ValueError: a level index out of range.
        """
        lev = np.asarray(level, dtype=np.int64)
        n = len(self.levels)
        bad = (lev >= n) | (lev < NOT_A_CENTRE)
        if np.any(bad):
            raise ValueError(f"LevelGroups.encode: level index {lev[bad].reshape(-1)[0]} outside -3 .. {n - 1}")
        lc = self.level_class
        g = len(self.groups)
        return np.where(lev >= 0, lc[np.clip(lev, 0, n - 1)],
                        np.where(lev == ABOVE, g, np.where(lev == BELOW, g + 1, g + 2)))

    def level_cost(self, probs: Any, weight: float = 1.0, cap: float = 4.6) -> np.ndarray:
        """``(P, L)`` chain node costs from ``(P, G)`` class probabilities: ``weight * min(-log p, cap)``.

        Args:
            probs: ``(P, G)`` probabilities (rows need not be normalised; they are).
            weight: cost per nat.
            cap: largest cost per peak and level, in nats (default ``log 100``).

        Raises:
            ValueError: ``probs`` is not ``(P, G)``.
        """
        p = np.asarray(probs, dtype=np.float64)
        if p.ndim != 2 or p.shape[1] != self.num_classes:
            raise ValueError(f"LevelGroups.level_cost: probs must be (P, {self.num_classes}), got shape {p.shape}")
        p = np.clip(p, 0.0, None)
        p = p / np.maximum(p.sum(1, keepdims=True), 1e-12)
        nll = np.minimum(-np.log(np.maximum(p, 1e-300)), float(cap))
        return float(weight) * nll[:, self.level_class]

    def to_dict(self) -> dict[str, Any]:
        return {"levels": list(self.levels), "groups": [[name, list(m)] for name, m in self.groups]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "LevelGroups":
        try:
            return cls(tuple(d["levels"]), tuple((str(n), tuple(m)) for n, m in d["groups"]))
        except KeyError as e:
            raise KeyError(f"LevelGroups: missing key {e.args[0]!r}") from None


#: AP T1-L5: the levels with a landmark of their own keep a group
AP_LEVEL_GROUPS = LevelGroups(
    levels=("T1", "T2", "T3", "T4", "T5", "T6", "T7", "T8", "T9", "T10", "T11", "T12", "L1", "L2", "L3", "L4", "L5"),
    groups=(("T1", ("T1",)), ("T2-T11", ("T2", "T3", "T4", "T5", "T6", "T7", "T8", "T9", "T10", "T11")),
            ("T12", ("T12",)), ("L1", ("L1",)), ("L2-L4", ("L2", "L3", "L4")), ("L5", ("L5",))),
)


def level_groups_for(levels: Sequence[str]) -> LevelGroups:
    """The shipped grouping of a region's levels (AP T1-L5), or every level its own group."""
    levs = tuple(str(v) for v in levels)
    if levs == AP_LEVEL_GROUPS.levels:
        return AP_LEVEL_GROUPS
    return LevelGroups(levs, tuple((lev, (lev,)) for lev in levs))
