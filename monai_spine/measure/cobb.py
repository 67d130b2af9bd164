"""Cobb angles of AP views (scheme ``ap4``) by the AASCE 2019 challenge rule, and its SMAPE metric.

The rule (reproduced from the challenge's MATLAB script that generated ``angles.csv`` of
SpineWeb dataset 16 / AASCE 2019, and its Python port ``cobb_evaluate.py`` in
yijingru/Vertebra-Landmark-Detection; see ``docs/measurements.md``):

1. Tilt vector of each vertebra: from the midpoint of its two left corners ``(TL + BL) / 2`` to
   the midpoint of its two right corners ``(TR + BR) / 2``.
2. Angle matrix ``A[i, j] = arccos(round(cos(v_i, v_j), 8))`` between all tilt vectors.
3. Main angle: the largest entry; ``pos2`` the upper and ``pos1[pos2]`` the lower vertebra of
   that pair (first occurrences, as MATLAB's ``max``).
4. S-shape test on the 2N midpoints of the top and bottom endplates ``(TL + TR) / 2``,
   ``(BL + BR) / 2``: with ``ll_i = (y_i - y_end) / (y_1 - y_end) - (x_i - x_end) / (x_1 - x_end)``
   for the first 2N - 2 midpoints (the deviation from the straight line joining the first and the
   last midpoint, in normalised coordinates), the spine is S-shaped when ``ll`` has both signs,
   i.e. ``sum(ll ll^T) != sum(|ll ll^T|)`` (exact comparison, NaN compares unequal, as in MATLAB).
5. Not S-shaped: second angle = ``A[0, pos2]`` (top vertebra vs the main curve's upper end vertebra),
   third angle = ``A[N-1, pos1[pos2]]`` (bottom vertebra vs its lower end vertebra).
6. S-shaped and the main curve in the upper half of the image
   (``y(bottom midpoint of pos2) + y(bottom midpoint of pos1[pos2]) < H``): second angle = the
   largest angle between ``pos2`` and the vertebrae above it (``0..pos2``), third angle = the largest
   angle between ``pos1[pos2]`` and the vertebrae below it (``pos1[pos2]..N-1``).
7. S-shaped, main curve in the lower half: second angle = the largest angle between ``pos2`` and the
   vertebrae above it (its end vertebra ``pos1_1``), third angle = the largest angle between
   ``pos1_1`` and the vertebrae above *that* (``0..pos1_1``): the curve above the second one.

The three angles are reported under the AASCE column names :data:`COBB_ANGLE_NAMES` (main,
proximal, distal); in case 7 the third one is a second proximal curve (see the docs).

The image height ``H`` matters only in case 6/7. Recomputing the AASCE training set from the
``.mat`` reference points reproduces ``angles.csv`` to < 0.005 degrees for all 481 images
(tests/measure/test_cobb.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from monai_spine.data.aasce import COBB_ANGLE_NAMES
from monai_spine.data.keypoints import get_scheme

__all__ = [
    "AP_SCHEME",
    "COBB_ANGLE_NAMES",
    "CobbResult",
    "tilt_vectors",
    "endplate_midpoints",
    "is_s_shaped",
    "tilt_angle_matrix_deg",
    "cobb_angles",
    "cobb_angles_deg",
    "smape",
    "spine_height_proxy",
]

#: scheme of AP views
AP_SCHEME = "ap4"
_TL, _TR, _BL, _BR = get_scheme(AP_SCHEME).corner_indices


@dataclass
class CobbResult:
    """The three Cobb angles of one AP image and the vertebrae that bound them.

    Attributes:
        angles_deg: (3,) main, proximal, distal (the AASCE column order).
        pairs: three (upper, lower) vertebra row indices of the ``keypoints`` passed in, one per angle.
        is_s: whether the spine was classified S-shaped.
        case: ``"non_s"``, ``"s_upper"`` (main curve in the upper half) or ``"s_lower"``.
        used: row indices of the vertebrae that entered the computation (those with a finite tilt).
    """

    angles_deg: np.ndarray
    pairs: tuple[tuple[int, int], tuple[int, int], tuple[int, int]]
    is_s: bool
    case: str
    used: tuple[int, ...]

    def to_dict(self, levels: Any = None) -> dict[str, Any]:
        """JSON-ready dict; with ``levels`` the pairs are also given as level names."""
        out: dict[str, Any] = {"case": self.case, "is_s_shaped": bool(self.is_s)}
        for name, a, (i, j) in zip(COBB_ANGLE_NAMES, self.angles_deg, self.pairs):
            d: dict[str, Any] = {"angle_deg": float(a) if np.isfinite(a) else None, "vertebrae": [int(i), int(j)]}
            if levels is not None:
                d["levels"] = [str(levels[i]), str(levels[j])]
            out[name] = d
        return out


def tilt_vectors(keypoints_px: Any) -> np.ndarray:
    """(..., N, 2) tilt vectors: midpoint of the right corners minus midpoint of the left corners."""
    kp = np.asarray(keypoints_px, dtype=np.float64)
    if kp.ndim < 3 or kp.shape[-2:] != (4, 2):
        raise ValueError(f"AP keypoints must have shape (..., N, 4, 2), got {kp.shape}")
    left = (kp[..., _TL, :] + kp[..., _BL, :]) / 2.0
    right = (kp[..., _TR, :] + kp[..., _BR, :]) / 2.0
    return right - left


def endplate_midpoints(keypoints_px: Any) -> np.ndarray:
    """(..., 2N, 2) midpoints of the top and bottom endplates, alternating top, bottom per vertebra."""
    kp = np.asarray(keypoints_px, dtype=np.float64)
    top = (kp[..., _TL, :] + kp[..., _TR, :]) / 2.0
    bot = (kp[..., _BL, :] + kp[..., _BR, :]) / 2.0
    return np.stack([top, bot], axis=-2).reshape(kp.shape[:-3] + (2 * kp.shape[-3], 2))


def is_s_shaped(midpoints: Any) -> bool:
    """The AASCE S-shape test on (M, 2) endplate midpoints (see the module docstring, step 4)."""
    p = np.asarray(midpoints, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != 2 or p.shape[0] < 3:
        raise ValueError(f"midpoints must have shape (M >= 3, 2), got {p.shape}")
    num = p.shape[0]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        ll = (p[: num - 2, 1] - p[-1, 1]) / (p[0, 1] - p[-1, 1]) - (p[: num - 2, 0] - p[-1, 0]) / (p[0, 0] - p[-1, 0])
        m = np.outer(ll, ll)
        a = m.sum()
        b = np.abs(m).sum()
    return not bool(a == b)


def tilt_angle_matrix_deg(tilts: Any) -> np.ndarray:
    """(..., N, N) angles in degrees between tilt vectors, cosines rounded to 8 decimals (as AASCE)."""
    v = np.asarray(tilts, dtype=np.float64)
    norm = np.linalg.norm(v, axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        cos = (v @ np.swapaxes(v, -1, -2)) / (norm[..., :, None] * norm[..., None, :])
    cos = np.clip(np.round(cos, 8), -1.0, 1.0)
    return np.degrees(np.arccos(cos))


def _first_argmax(a: np.ndarray) -> int:
    return int(np.argmax(a))


def cobb_angles(keypoints_px: Any, image_height_px: float) -> CobbResult:
    """The three AASCE Cobb angles of one AP image.

    Args:
        keypoints_px: (N, 4, 2) corners ``TL, TR, BL, BR`` per vertebra (top to bottom), pixels.
            Vertebrae with a non-finite tilt are left out (their row indices are not in ``used``).
        image_height_px: H, the image height in pixels (decides between cases 6 and 7; only
            pixel coordinates in the image's own frame give the challenge's result).

    Returns:
        :class:`CobbResult`.

    Raises:
        ValueError: fewer than 2 usable vertebrae or a bad shape.
    """
    kp = np.asarray(keypoints_px, dtype=np.float64)
    if kp.ndim != 3 or kp.shape[1:] != (4, 2):
        raise ValueError(f"AP keypoints must have shape (N, 4, 2), got {kp.shape}")
    tilts_all = tilt_vectors(kp)
    ok = np.all(np.isfinite(tilts_all), axis=-1) & (np.linalg.norm(np.nan_to_num(tilts_all), axis=-1) > 0)
    ok &= np.all(np.isfinite(kp[:, [_TL, _TR, _BL, _BR]]), axis=(-1, -2))
    used = np.flatnonzero(ok)
    if used.size < 2:
        raise ValueError(f"Cobb angles need at least 2 vertebrae with four finite corners, got {used.size}")
    sub = kp[used]
    ang = tilt_angle_matrix_deg(tilt_vectors(sub))
    n = len(used)
    maxt = ang.max(axis=0)
    pos1 = ang.argmax(axis=0)
    pos2 = _first_argmax(maxt)
    lo = int(pos1[pos2])
    main = float(maxt[pos2])
    mid = endplate_midpoints(sub)
    s_shape = is_s_shaped(mid)
    if not s_shape:
        second, third = float(ang[0, pos2]), float(ang[n - 1, lo])
        pairs = ((pos2, lo), (0, pos2), (lo, n - 1))
        case = "non_s"
    else:
        a1 = ang[pos2, : pos2 + 1]
        p11 = _first_argmax(a1)
        second = float(a1[p11])
        if mid[2 * pos2 + 1, 1] + mid[2 * lo + 1, 1] < float(image_height_px):
            a2 = ang[lo, lo:]
            p12 = lo + _first_argmax(a2)
            third = float(ang[lo, p12])
            pairs = ((pos2, lo), (p11, pos2), (lo, p12))
            case = "s_upper"
        else:
            a2 = ang[p11, : p11 + 1]
            p12 = _first_argmax(a2)
            third = float(a2[p12])
            pairs = ((pos2, lo), (p11, pos2), (p12, p11))
            case = "s_lower"
    mapped = tuple((int(used[min(i, j)]), int(used[max(i, j)])) for i, j in pairs)
    angles = np.asarray([main, second, third])
    return CobbResult(angles, mapped, s_shape, case, tuple(int(u) for u in used))  # type: ignore[arg-type]


def cobb_angles_deg(keypoints_px: Any, image_height_px: float) -> np.ndarray:
    """Cobb angles for any leading axes (e.g. Monte-Carlo samples): (..., N, 4, 2) -> (..., 3).

    Samples where the rule cannot be applied give NaN.
    """
    kp = np.asarray(keypoints_px, dtype=np.float64)
    if kp.ndim < 3 or kp.shape[-2:] != (4, 2):
        raise ValueError(f"AP keypoints must have shape (..., N, 4, 2), got {kp.shape}")
    flat = kp.reshape((-1,) + kp.shape[-3:])
    out = np.full((flat.shape[0], 3), np.nan)
    for i, k in enumerate(flat):
        try:
            out[i] = cobb_angles(k, image_height_px).angles_deg
        except ValueError:
            pass
    return out.reshape(kp.shape[:-3] + (3,))


def smape(predicted_deg: Any, reference_deg: Any) -> float:
    """The AASCE 2019 metric: symmetric mean absolute percentage error over images, in percent.

    ``SMAPE = 100 / M * sum_m [ sum_k |p_mk - r_mk| / sum_k (p_mk + r_mk) ]`` with ``k`` over the
    three angles of image ``m``. An image whose angles sum to 0 in both contributes 0.

    Args:
        predicted_deg, reference_deg: (M, 3) or (3,) angles in degrees (non-negative).

    Returns:
        SMAPE in percent (NaN for no images).
    """
    p = np.atleast_2d(np.asarray(predicted_deg, dtype=np.float64))
    r = np.atleast_2d(np.asarray(reference_deg, dtype=np.float64))
    if p.shape != r.shape:
        raise ValueError(f"predicted {p.shape} and reference {r.shape} angles differ in shape")
    if p.shape[0] == 0:
        return float("nan")
    num = np.abs(p - r).sum(axis=1)
    den = (p + r).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        per = np.where(den > 0, num / den, np.where(num > 0, np.nan, 0.0))
    return float(100.0 * per.mean())


def spine_height_proxy(keypoints_px: Any) -> float:
    """A stand-in for the image height when it is unknown: ``min(y) + max(y)`` of the corners, so
    that the rule's "upper half" test splits at the middle of the spine's vertical extent."""
    y = np.asarray(keypoints_px, dtype=np.float64)[..., 1]
    y = y[np.isfinite(y)]
    if y.size == 0:
        raise ValueError("no finite keypoint to estimate the spine's extent")
    return float(y.min() + y.max())
