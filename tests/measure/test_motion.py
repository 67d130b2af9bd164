"""Flexion-extension motion and instability flags against hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest

from monai_spine.measure.motion import (
    CERVICAL_THRESHOLDS,
    LUMBAR_THRESHOLDS,
    InstabilityThresholds,
    common_levels,
    get_thresholds,
    instability_flags,
    motion_values,
    relative_to_adjacent,
    segment_names,
)

CERVICAL = ["C3", "C4", "C5", "C6"]
LUMBAR = ["L1", "L2", "L3", "L4", "L5"]

CASES = [
    pytest.param(
        "cervical", CERVICAL, 15.0,
        # extension: lordotic, no translation; flexion: C4-C5 kinks and slides 4 mm
        [10.0, 12.0, 9.0], [0.0, 0.0, 0.0], [2.0, -12.0, 1.0], [1.0, 4.0, 0.5],
        # angular motion = ext - flex = [8, 24, 8]; relative to adjacent: [8-24, 24-8, 8-24] = [-16, 16, -16]
        [8.0, 24.0, 8.0], [1.0, 4.0, 0.5],
        # flags: translation > 3.5 mm; share > 20 % (4/15 = 26.7 %); no per-level angle table; relative > 11
        {"translation_mm": [0, 1, 0], "translation_share": [0, 1, 0], "angular_motion": [None] * 3,
         "relative_angular_motion": [0, 1, 0], "any": [0, 1, 0]},
        id="cervical-C4C5-unstable",
    ),
    pytest.param(
        "lumbar", LUMBAR, 40.0,
        [5.0, 6.0, 8.0, 10.0], [0.0, 0.0, 0.0, 0.0], [-5.0, -12.0, -6.0, -5.0], [1.0, 2.0, 5.0, 2.5],
        # angular motion [10, 18, 14, 15] vs 15/15/15/20: only L2-L3; translation > 4.5 mm only at L3-L4;
        # shares 1/40 .. 5/40 = 12.5 % all below 15 %
        [10.0, 18.0, 14.0, 15.0], [1.0, 2.0, 5.0, 2.5],
        {"translation_mm": [0, 0, 1, 0], "translation_share": [0, 0, 0, 0], "angular_motion": [0, 1, 0, 0],
         "relative_angular_motion": [None] * 4, "any": [0, 1, 1, 0]},
        id="lumbar-L2L3-angle-L3L4-translation",
    ),
    pytest.param(
        "lumbar", LUMBAR, 15.0,
        [5.0, 6.0, 8.0, 10.0], [0.0, 0.5, 0.0, -1.0], [4.0, 5.0, 7.0, -6.0], [2.5, 0.5, 0.0, 1.0],
        # small angular motion except L4-L5 = 16 (< 20); shares 2.5/15 = 16.7 % > 15 %, and 2/15 = 13.3 % at L4-L5
        [1.0, 1.0, 1.0, 16.0], [2.5, 0.0, 0.0, 2.0],
        {"translation_mm": [0, 0, 0, 0], "translation_share": [1, 0, 0, 0], "angular_motion": [0, 0, 0, 0],
         "relative_angular_motion": [None] * 4, "any": [1, 0, 0, 0]},
        id="lumbar-share-only",
    ),
]


def _as_flags(v):
    return [None if np.isnan(x) else int(x) for x in v]


@pytest.mark.parametrize(
    "region, levels, depth, ext_angles, ext_trans, flex_angles, flex_trans, exp_angular, exp_trans, exp_flags", CASES
)
def test_flexion_extension_flags(
    lateral_chain, region, levels, depth, ext_angles, ext_trans, flex_angles, flex_trans, exp_angular, exp_trans, exp_flags
):
    sp_f, sp_e = (0.1, 0.1), (0.15, 0.12)  # the two films need not share a spacing
    flex = lateral_chain(flex_angles, flex_trans, depth_mm=depth, base_deg=-10.0) / np.asarray(sp_f)
    ext = lateral_chain(ext_angles, ext_trans, depth_mm=depth, base_deg=15.0) / np.asarray(sp_e)
    vals, unit = motion_values(flex, ext, levels, sp_f, sp_e)
    assert unit == "mm"
    np.testing.assert_allclose(vals["angular_motion_deg"], exp_angular, atol=1e-9)
    np.testing.assert_allclose(vals["translational_motion"], exp_trans, atol=1e-9)
    np.testing.assert_allclose(vals["translational_motion_share"], np.asarray(exp_trans) / depth, atol=1e-12)
    names = segment_names(levels)
    flags = instability_flags(vals, unit, names, get_thresholds(region))
    for key, expected in exp_flags.items():
        assert _as_flags(flags[key]) == expected, key


def test_unknown_spacing_checks_share_only(lateral_chain):
    flex = lateral_chain([2.0, -12.0, 1.0], [1.0, 4.0, 0.5]) * 10
    ext = lateral_chain([10.0, 12.0, 9.0], [0.0, 0.0, 0.0]) * 10
    vals, unit = motion_values(flex, ext, CERVICAL, None, (0.1, 0.1))
    assert unit == "px"
    np.testing.assert_allclose(vals["translational_motion"], [10.0, 40.0, 5.0], atol=1e-8)
    flags = instability_flags(vals, unit, segment_names(CERVICAL), CERVICAL_THRESHOLDS)
    assert _as_flags(flags["translation_mm"]) == [None] * 3
    assert _as_flags(flags["translation_share"]) == [0, 1, 0]


@pytest.mark.parametrize(
    "values, names, expected",
    [
        ([8.0, 24.0, 8.0], ["C3-C4", "C4-C5", "C5-C6"], [-16.0, 16.0, -16.0]),
        ([-5.0, 3.0], ["C3-C4", "C4-C5"], [2.0, -2.0]),  # magnitudes
        ([7.0], ["C3-C4"], [np.nan]),
        ([7.0, 9.0], ["C3-C4", "C5-C6"], [np.nan, np.nan]),  # not adjacent
    ],
)
def test_relative_to_adjacent(values, names, expected):
    np.testing.assert_allclose(relative_to_adjacent(values, names), expected)


def test_threshold_tables_and_custom():
    assert get_thresholds("cervical") is CERVICAL_THRESHOLDS
    assert LUMBAR_THRESHOLDS.angular_motion_deg["L4-L5"] == 20.0 and LUMBAR_THRESHOLDS.translation_mm == 4.5
    assert CERVICAL_THRESHOLDS.translation_share == 0.20 and CERVICAL_THRESHOLDS.relative_angular_motion_deg == 11.0
    assert "White" in LUMBAR_THRESHOLDS.source and LUMBAR_THRESHOLDS.to_dict()["region"] == "lumbar"
    with pytest.raises(KeyError, match="known"):
        get_thresholds("ap")
    vals = {
        "angular_motion_deg": np.array([5.0]),
        "translational_motion": np.array([np.nan]),
        "translational_motion_share": np.array([0.3]),
    }
    thr = InstabilityThresholds("custom", translation_mm=1.0, translation_share=0.5, angular_motion_deg={"C3-C4": 4.0})
    flags = instability_flags(vals, "mm", ["C3-C4"], thr)
    assert _as_flags(flags["translation_mm"]) == [None]  # not measurable
    assert _as_flags(flags["translation_share"]) == [0] and _as_flags(flags["angular_motion"]) == [1]
    assert _as_flags(flags["any"]) == [1]
    none = instability_flags(vals, "mm", ["C3-C4"], InstabilityThresholds("none"))
    assert _as_flags(none["any"]) == [None]


def test_common_levels_matches_by_name():
    levs, ia, ib = common_levels(["C3", "C4", "C5", "C6"], ["C4", "C5", "C6", "C7"])
    assert levs == ["C4", "C5", "C6"] and ia == [1, 2, 3] and ib == [0, 1, 2]


def _docs_threshold_rows():
    """The instability table of docs/measurements.md as {(region, check): threshold text}."""
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "docs" / "measurements.md").read_text(encoding="utf-8")
    section = text[text.index("## 4. Flexion-extension"):text.index("## 5.")]
    rows, region = {}, None
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 5 or cells[0] in ("region", "---"):
            continue
        region = cells[0].split()[0] if cells[0] else region
        rows[(region, cells[1])] = cells[2]
    return rows


def test_docs_threshold_table_matches_code():
    import re

    rows = _docs_threshold_rows()

    def nums(key):
        return [float(x) for x in re.findall(r"\d+(?:\.\d+)?", rows[key])]

    for region, thr in (("cervical", CERVICAL_THRESHOLDS), ("lumbar", LUMBAR_THRESHOLDS)):
        assert nums((region, "translational motion")) == [thr.translation_mm]
        assert nums((region, "translational motion as share of body depth")) == [100 * thr.translation_share]
    assert nums(("cervical", "angular motion relative to adjacent segments")) == [
        CERVICAL_THRESHOLDS.relative_angular_motion_deg]
    assert CERVICAL_THRESHOLDS.angular_motion_deg == {}
    # "> 15 degrees at L1-L2, L2-L3, L3-L4; > 20 degrees at L4-L5; > 25 degrees at L5-S1"
    per_level = {}
    for part in rows[("lumbar", "angular motion")].split(";"):
        value = float(re.search(r">\s*(\d+(?:\.\d+)?)", part).group(1))
        per_level.update({seg: value for seg in re.findall(r"L\d-[LS]\d", part)})
    assert per_level == LUMBAR_THRESHOLDS.angular_motion_deg
    assert LUMBAR_THRESHOLDS.relative_angular_motion_deg is None
