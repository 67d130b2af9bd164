"""Segmental motion between a flexion and an extension radiograph, flagged against instability thresholds.

Per motion segment (levels matched by name between the two views), from the lateral measurements
of :mod:`monai_spine.measure.lateral`:

* ``angular_motion_deg = angle_extension - angle_flexion`` (segmental angle, lordosis positive):
  the sagittal rotation between the two films; positive in the normal direction (a segment is
  more lordotic in extension).
* ``translational_motion = translation_flexion - translation_extension`` (mm, or px when a view's
  spacing is unknown; anterolisthesis positive): positive when the upper vertebra moves anteriorly
  from extension to flexion.
* ``translational_motion_share = share_flexion - share_extension``: the same as a fraction of the
  lower vertebra's body depth, each view normalised by its own depth, so it does not depend on
  the pixel spacing or the radiographic magnification.

Flags compare the magnitude of each motion with an :class:`InstabilityThresholds` table (strictly
greater than the threshold). The default tables and the sources of their numbers are in
``docs/measurements.md``; they are not a diagnosis.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np

from monai_spine.measure.lateral import lateral_measurements, motion_segments

__all__ = [
    "InstabilityThresholds",
    "CERVICAL_THRESHOLDS",
    "LUMBAR_THRESHOLDS",
    "DEFAULT_THRESHOLDS",
    "get_thresholds",
    "common_levels",
    "motion_values",
    "relative_to_adjacent",
    "instability_flags",
    "segment_names",
]


@dataclass(frozen=True)
class InstabilityThresholds:
    """Thresholds above which a segment's flexion-extension motion is flagged.

    Attributes:
        region: ``cervical`` or ``lumbar``.
        translation_mm: translational motion in mm (None: not checked).
        translation_share: translational motion as a fraction of the lower body's depth (None: not checked).
        angular_motion_deg: absolute angular motion per segment name (``"L4-L5"``); a segment not in
            the table is not checked. Empty: not checked.
        relative_angular_motion_deg: angular motion exceeding that of *every* adjacent segment by
            more than this (None: not checked).
        source: where the numbers come from (short citation).
    """

    region: str
    translation_mm: float | None = None
    translation_share: float | None = None
    angular_motion_deg: dict[str, float] = field(default_factory=dict)
    relative_angular_motion_deg: float | None = None
    source: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready copy."""
        return asdict(self)


#: White & Panjabi, lower cervical spine (C2-T1) checklist, quoted second-hand; see docs/measurements.md
CERVICAL_THRESHOLDS = InstabilityThresholds(
    region="cervical",
    translation_mm=3.5,
    translation_share=0.20,
    angular_motion_deg={},
    relative_angular_motion_deg=11.0,
    source=(
        "White AA, Johnson RM, Panjabi MM, Southwick WO. Biomechanical analysis of clinical stability in the "
        "cervical spine. Clin Orthop 1975;109:85-96; White & Panjabi, Clinical Biomechanics of the Spine, "
        "2nd ed. 1990 (lower cervical checklist): translation > 3.5 mm or > 20% of the body's sagittal "
        "diameter, angulation > 11 deg more than at an adjacent level. Not checked against the primary text."
    ),
)

#: White & Panjabi, lumbar spine checklist (flexion-extension films), quoted second-hand; see docs/measurements.md
LUMBAR_THRESHOLDS = InstabilityThresholds(
    region="lumbar",
    translation_mm=4.5,
    translation_share=0.15,
    angular_motion_deg={"L1-L2": 15.0, "L2-L3": 15.0, "L3-L4": 15.0, "L4-L5": 20.0, "L5-S1": 25.0},
    relative_angular_motion_deg=None,
    source=(
        "White & Panjabi, Clinical Biomechanics of the Spine, 2nd ed. 1990 (lumbar checklist, flexion-"
        "extension radiographs): translation > 4.5 mm or > 15% of the body's sagittal diameter; rotation "
        "> 15 deg at L1-L2, L2-L3, L3-L4, > 20 deg at L4-L5, > 25 deg at L5-S1, as commonly quoted (another "
        "quoted form: > 15 deg at L1-L4, > 20 deg at L5-S1). Not checked against the primary text."
    ),
)

#: the checks of :func:`instability_flags` (besides ``any``)
_FLAG_KEYS = ("translation_mm", "translation_share", "angular_motion", "relative_angular_motion")

DEFAULT_THRESHOLDS: dict[str, InstabilityThresholds] = {"cervical": CERVICAL_THRESHOLDS, "lumbar": LUMBAR_THRESHOLDS}


def get_thresholds(region: str) -> InstabilityThresholds:
    """Default thresholds of ``region``; ``KeyError`` naming the known regions otherwise."""
    try:
        return DEFAULT_THRESHOLDS[region]
    except KeyError:
        known = sorted(DEFAULT_THRESHOLDS)
        raise KeyError(f"no instability thresholds for region {region!r}; known: {known}") from None


def common_levels(levels_a: Sequence[str], levels_b: Sequence[str]) -> tuple[list[str], list[int], list[int]]:
    """Levels present in both views, in the order of ``levels_a``, with their row indices in each."""
    idx_b = {str(lev): i for i, lev in enumerate(levels_b)}
    levs, ia, ib = [], [], []
    for i, lev in enumerate(levels_a):
        if str(lev) in idx_b:
            levs.append(str(lev))
            ia.append(i)
            ib.append(idx_b[str(lev)])
    return levs, ia, ib


def motion_values(
    flexion_px: Any,
    extension_px: Any,
    levels: Sequence[str],
    spacing_flexion_mm: Sequence[float] | None = None,
    spacing_extension_mm: Sequence[float] | None = None,
    visible_flexion: Any = None,
    visible_extension: Any = None,
) -> tuple[dict[str, np.ndarray], str]:
    """Per-segment values of both views and their differences (vectorised over leading axes).

    Args:
        flexion_px, extension_px: (..., N, 5, 2) pixels of the same ``levels`` in both views.
        levels: N level names.
        spacing_flexion_mm, spacing_extension_mm: (sx, sy) or None per view.
        visible_flexion, visible_extension: (N, 5) masks or None.

    Returns:
        ``(values, unit)``: (..., M) arrays ``angle_flexion_deg``, ``angle_extension_deg``,
        ``angular_motion_deg``, ``translation_flexion``, ``translation_extension``,
        ``translational_motion`` (in ``unit``), ``share_flexion``, ``share_extension``,
        ``translational_motion_share``. ``unit`` is ``"mm"`` when both spacings are known, else
        ``"px"`` (both views then measured in their own pixels: only meaningful when the two
        films share a pixel size and magnification; the share is always meaningful).
    """
    both_mm = spacing_flexion_mm is not None and spacing_extension_mm is not None
    sf = spacing_flexion_mm if both_mm else None
    se = spacing_extension_mm if both_mm else None
    vf, unit, _ = lateral_measurements(flexion_px, levels, sf, visible_flexion, lordosis_levels=[])
    ve, _, _ = lateral_measurements(extension_px, levels, se, visible_extension, lordosis_levels=[])
    out = {
        "angle_flexion_deg": vf["segment_angle_deg"],
        "angle_extension_deg": ve["segment_angle_deg"],
        "angular_motion_deg": ve["segment_angle_deg"] - vf["segment_angle_deg"],
        "translation_flexion": vf["translation"],
        "translation_extension": ve["translation"],
        "translational_motion": vf["translation"] - ve["translation"],
        "share_flexion": vf["translation_share"],
        "share_extension": ve["translation_share"],
        "translational_motion_share": vf["translation_share"] - ve["translation_share"],
    }
    return out, unit


def relative_to_adjacent(values: Any, segment_names: Sequence[str]) -> np.ndarray:
    """How much each segment's magnitude exceeds the largest magnitude of its adjacent segments.

    Args:
        values: (..., M) per-segment values (e.g. angular motion), in segment order.
        segment_names: M names ``"C3-C4"``; segments are adjacent when they share a vertebra.

    Returns:
        (..., M) ``|v_i| - max_j |v_j|`` over the adjacent segments ``j``; NaN without a neighbour.
    """
    v = np.abs(np.asarray(values, dtype=np.float64))
    m = len(segment_names)
    if v.shape[-1] != m:
        raise ValueError(f"{v.shape[-1]} values for {m} segments")
    out = np.full(v.shape, np.nan)
    for i, name in enumerate(segment_names):
        up, lo = name.split("-")
        nbrs = [
            j
            for j, other in enumerate(segment_names)
            if j != i and (other.split("-")[1] == up or other.split("-")[0] == lo)
        ]
        if nbrs:
            out[..., i] = v[..., i] - np.max(v[..., nbrs], axis=-1)
    return out


def instability_flags(
    values: dict[str, np.ndarray], unit: str, segment_names: Sequence[str], thresholds: InstabilityThresholds
) -> dict[str, np.ndarray]:
    """Threshold checks of :func:`motion_values` output (vectorised over leading axes).

    Returns:
        dict of (..., M) float arrays, 1.0 (exceeded), 0.0 (not exceeded) or NaN (not checked /
        not measurable), keys ``translation_mm``, ``translation_share``, ``angular_motion``,
        ``relative_angular_motion``, and ``any`` (1 when any check is 1, 0 when all checked ones
        are 0, NaN when none could be checked). Averaging these over Monte-Carlo samples gives the
        probability of exceeding each threshold.
    """
    shape = np.shape(values["angular_motion_deg"])

    def check(v: Any, thr: float | None) -> np.ndarray:
        if thr is None:
            return np.full(shape, np.nan)
        a = np.abs(np.asarray(v, dtype=np.float64))
        with np.errstate(invalid="ignore"):
            return np.where(np.isfinite(a), (a > thr).astype(np.float64), np.nan)

    flags = {
        "translation_mm": check(values["translational_motion"], thresholds.translation_mm if unit == "mm" else None),
        "translation_share": check(values["translational_motion_share"], thresholds.translation_share),
    }
    ang = np.full(shape, np.nan)
    am = np.asarray(values["angular_motion_deg"], dtype=np.float64)
    for i, name in enumerate(segment_names):
        thr = thresholds.angular_motion_deg.get(name)
        if thr is not None:
            ang[..., i] = check(am[..., i], thr)
    flags["angular_motion"] = ang
    if thresholds.relative_angular_motion_deg is None:
        flags["relative_angular_motion"] = np.full(shape, np.nan)
    else:
        rel = relative_to_adjacent(am, segment_names)
        with np.errstate(invalid="ignore"):
            flags["relative_angular_motion"] = np.where(
                np.isfinite(rel), (rel > thresholds.relative_angular_motion_deg).astype(np.float64), np.nan
            )
    stack = np.stack([flags[k] for k in _FLAG_KEYS])
    checked = np.isfinite(stack)
    anyv = np.where(checked.any(axis=0), np.nanmax(np.where(checked, stack, -1.0), axis=0), np.nan)
    flags["any"] = np.where(anyv < 0, np.nan, anyv)
    return flags


def segment_names(levels: Sequence[str]) -> list[str]:
    """Names of the motion segments of ``levels``."""
    return [s.name for s in motion_segments(levels)]
