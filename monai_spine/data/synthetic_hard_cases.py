"""The hard cases of the synthetic radiographs: overlays, metal implants, low contrast, hidden points.

Part of the generator :mod:`monai_spine.data.synthetic`:

* Overlays are dense (``"bright"``) or collimated (``"dark"``) regions whose edge crosses the column
  perpendicular to it (:class:`_Overlay`): the shoulders below C7 in every cervical film (mild), and in
  an ``"occlusion"`` case the shoulders over C7, the pelvis over L5 or a collimator edge over L1 (strong).
* ``"implant"`` draws a fusion construct into a metal coverage layer: an anterior cervical plate and
  screws, or lumbar pedicle screws and rods, over 2-3 adjacent levels (:func:`_implant`).
* ``"low_contrast"`` weakens the bone and adds noise and blur (osteopenic bone).
* A keypoint under metal or under an overlay of strength >= 0.5 is hidden (:func:`_hidden_points`);
  :func:`_record_points` writes the hidden and near-metal points into the case's metadata.

Overlays and implants use the hard-case random stream, the mild shoulders the anatomy stream, each in a
fixed order, so that a normal case and a hard case of the same seed share their anatomy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from monai_spine.data.synthetic_anatomy import _Arc, _rot, _thick_polyline, _Vertebra
from monai_spine.data.synthetic_raster import _bilinear, _near_mask, _Placement, _polygon_patch, _smoothstep

if TYPE_CHECKING:
    from monai_spine.data.synthetic_image import _Exposure

__all__: list[str] = []


@dataclass(frozen=True)
class _Overlay:
    """A region of the film covered by something dense or cut off by the collimator.

    Its edge crosses the column at arc length ``s_edge`` (mm), perpendicular to it there, bent into a
    parabola of curvature ``curv`` (1/mm) about the offset ``u0`` (mm, posterior) when ``curv > 0``; the
    strength ramps from 0 to ``alpha`` over 4 mm across the edge, on the inferior side when ``sign`` is
    +1 and on the superior side when it is -1. ``mode`` is ``"bright"`` (shoulders, pelvis: the image
    goes towards a bright level) or ``"dark"`` (collimation: towards black).
    """

    mode: str
    alpha: float
    s_edge: float
    curv: float
    u0: float
    sign: int

    def strength_fn(self, arc: _Arc) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
        """The overlay strength in ``[0, alpha]`` at points ``(x, y)`` in mm (arrays that broadcast)."""
        alpha, s_edge, curv, u0, sign = self.alpha, self.s_edge, self.curv, self.u0, self.sign
        # the edge's straight frame keeps the 4 mm ramp the same width everywhere in the image
        e_pt, e_t, e_n = arc.point(s_edge), arc.tangent(s_edge), arc.normal(s_edge)

        def overlay_fn(x, y):
            dx, dy = x - e_pt[0], y - e_pt[1]
            along = dx * e_t[0] + dy * e_t[1]
            across = dx * e_n[0] + dy * e_n[1]
            return alpha * _smoothstep(sign * (along - curv * (across - u0) ** 2) / 4.0 + 0.5)

        return overlay_fn


def _shoulders(region: str, arc: _Arc, ann_verts: list[_Vertebra], rng_anat: np.random.Generator) -> _Overlay | None:
    """The mild dense overlay of the shoulders below C7 in every cervical film (None for lumbar).

    Draws 4 numbers from the anatomy stream for a cervical film, none for a lumbar one.
    """
    if region != "cervical":
        return None
    s_last = float(arc.to_us(*ann_verts[-1].corners[2])[1])
    sh_alpha = float(rng_anat.uniform(0.2, 0.45))
    sh_top = s_last + float(rng_anat.uniform(6.0, 25.0))
    sh_curv = float(rng_anat.uniform(0.002, 0.008))
    sh_u0 = float(rng_anat.uniform(-10.0, 30.0))
    return _Overlay("bright", sh_alpha, sh_top, sh_curv, sh_u0, +1)


def _hard_case(
    hard_case: str | None,
    region: str,
    arc: _Arc,
    ann_verts: list[_Vertebra],
    overlay: _Overlay | None,
    exposure: _Exposure,
    place: _Placement,
    shape: tuple[int, int],
    rng_hard: np.random.Generator,
) -> tuple[_Overlay | None, np.ndarray, dict[str, Any] | None]:
    """Apply a hard case: weaken the exposure, replace the overlay or draw an implant.

    Args:
        hard_case: None, ``"low_contrast"``, ``"occlusion"`` or ``"implant"`` (already resolved).
        region: ``"cervical"`` or ``"lumbar"``.
        arc: the column's arc (mm).
        ann_verts: the annotated vertebrae, top to bottom.
        overlay: the overlay of a normal film (the shoulders) or None.
        exposure: the drawn exposure; ``"low_contrast"`` changes it in place.
        place: spacing and position of the mm frame in the image.
        shape: (H, W) of the image.
        rng_hard: the hard-case random stream.

    Returns:
        ``(overlay, metal, hard_meta)``: the overlay to apply (or None), the (H, W) float32 metal
        coverage (zeros unless an implant) and the case's metadata (None for a normal case).
    """
    hard_meta: dict[str, Any] | None = None
    metal = np.zeros(shape, dtype=np.float32)
    if hard_case == "low_contrast":
        factor = float(rng_hard.uniform(0.3, 0.45))
        exposure.bone_contrast *= factor
        exposure.noise_sigma *= float(rng_hard.uniform(1.5, 2.2))
        exposure.blur_px += float(rng_hard.uniform(0.2, 0.6))
        hard_meta = {"type": "low_contrast", "bone_contrast_factor": round(factor, 4),
                     "levels": [v.level for v in ann_verts]}
    elif hard_case == "occlusion":
        if region == "cervical":
            c7 = ann_verts[-1]
            cs = [float(arc.to_us(*c)[1]) for c in c7.corners]
            top = min(cs[0], cs[1]) + float(rng_hard.uniform(-0.3, 0.45)) * (max(cs[2], cs[3]) - min(cs[0], cs[1]))
            overlay = _Overlay("bright", float(rng_hard.uniform(0.9, 0.97)), top,
                               float(rng_hard.uniform(0.0005, 0.003)), float(rng_hard.uniform(-10.0, 10.0)), +1)
            sub = "shoulder"
        else:
            if rng_hard.random() < 0.5:
                tv, sign, sub, mode, alpha = ann_verts[-1], +1, "pelvis", "bright", float(rng_hard.uniform(0.9, 0.96))
            else:
                tv, sign, sub, mode, alpha = ann_verts[0], -1, "collimation", "dark", 1.0
            cs = [float(arc.to_us(*c)[1]) for c in tv.corners]
            s_sup, s_inf = min(cs[0], cs[1]), max(cs[2], cs[3])
            frac = float(rng_hard.uniform(0.1, 0.6)) if sign > 0 else float(rng_hard.uniform(0.4, 0.9))
            overlay = _Overlay(mode, alpha, s_sup + frac * (s_inf - s_sup), 0.0, 0.0, sign)
        hard_meta = {"type": "occlusion", "subtype": sub}
    elif hard_case == "implant":
        hard_meta = {"type": "implant"}
        _implant(region, ann_verts, rng_hard, metal, place.to_px, hard_meta)
    return overlay, metal, hard_meta


def _hidden_points(
    kp: np.ndarray, overlay_fn: Callable | None, metal: np.ndarray, place: _Placement
) -> tuple[np.ndarray, np.ndarray | None]:
    """Which keypoints are hidden: under metal (coverage >= 0.5) or an overlay of strength >= 0.5.

    Args:
        kp: (N, K, 2) keypoints in (x, y) px.
        overlay_fn: the overlay strength at (x, y) mm, or None.
        metal: (H, W) metal coverage.
        place: spacing and position of the mm frame.

    Returns:
        ``(visible, strength_pts)``: (N, K) bool, and the (N * K,) overlay strength at the points (None
        without an overlay).
    """
    flat = kp.reshape(-1, 2)
    hidden = np.zeros(len(flat), dtype=bool)
    strength_pts = None
    if overlay_fn is not None:
        strength_pts = overlay_fn((flat[:, 0] - place.offset[0]) * place.sx, (flat[:, 1] - place.offset[1]) * place.sy)
        hidden |= strength_pts >= 0.5
    if metal.any():
        hidden |= _bilinear(metal, flat) >= 0.5
    return ~hidden.reshape(kp.shape[:2]), strength_pts


def _record_points(
    hard_meta: dict[str, Any],
    kp: np.ndarray,
    visible: np.ndarray,
    strength_pts: np.ndarray | None,
    metal: np.ndarray,
    levels: list[str],
    names: tuple[str, ...],
    mm_px: float,
) -> None:
    """Write the hidden points (``[level, point]`` pairs) into ``hard_meta``, with the occluded levels and
    the overlay strength at the points (occlusion) or the points within 3 mm of metal (implant)."""
    hard_meta["hidden_points"] = [[levels[i], names[j]] for i, j in zip(*np.nonzero(~visible))]
    if hard_meta["type"] == "occlusion":
        hard_meta["levels"] = sorted({p[0] for p in hard_meta["hidden_points"]}, key=levels.index)
        hard_meta["overlay_strength_at_points"] = np.round(strength_pts.reshape(visible.shape), 4).tolist()
    if hard_meta["type"] == "implant":
        near = _near_mask(metal, 3.0 / mm_px)
        nz = _bilinear(near, kp.reshape(-1, 2)).reshape(visible.shape) > 0.5
        hard_meta["affected_points"] = [[levels[i], names[j]] for i, j in zip(*np.nonzero(nz))]


def _implant(region: str, verts: list[_Vertebra], rng: np.random.Generator, metal: np.ndarray, to_px,
             meta: dict[str, Any]) -> None:
    """Draw a fusion construct into ``metal`` (coverage) over 2-3 adjacent vertebrae."""
    k = int(rng.integers(2, 4))
    i0 = int(rng.integers(0, len(verts) - k + 1))
    group = verts[i0:i0 + k]
    meta["levels"] = [v.level for v in group]
    polys: list[np.ndarray] = []
    if region == "cervical":
        meta["construct"] = "anterior plate and screws"
        line = []
        for j, v in enumerate(group):
            a_s, _, a_i, _ = v.corners
            ant = -v.frame[1]  # anterior direction
            f_top = 0.3 if j == 0 else 0.0
            f_bot = 0.75 if j == k - 1 else 1.0
            for f in np.linspace(f_top, f_bot, 4):
                line.append(a_s + f * (a_i - a_s) + 1.0 * ant)
        polys.append(_thick_polyline(np.array(line), 1.3))
        for j, v in enumerate(group):
            if 0 < j < k - 1 and rng.random() < 0.5:
                continue
            a_s, p_s, a_i, p_i = v.corners
            start = (a_s + a_i) / 2 + (0.1 if j == 0 else -0.1) * (a_i - a_s)
            ang = math.radians(float(rng.uniform(-12, 12)))
            d = _rot(v.frame[1], ang)
            end = start + 0.8 * v.depth * d
            polys.append(_thick_polyline(np.array([start - 1.5 * d, end]), 1.75))
    else:
        meta["construct"] = "pedicle screws and rod"
        heads = []
        for v in group:
            o, u, vv = v.frame
            head = o + 24.0 * u - 0.12 * v.wall_height * vv
            ang = math.radians(float(rng.uniform(-6, 6)))
            d = _rot(-u, ang)
            end = head + (24.0 + 0.75 * v.depth) * d
            polys.append(_thick_polyline(np.array([head, end]), 3.25))
            polys.append(_thick_polyline(np.array([head - 4.0 * d, head + 6.0 * d]), 6.0))
            heads.append(head)
        heads = np.array(heads)
        dv = heads[-1] - heads[0]
        dv /= np.hypot(*dv)
        rod = np.concatenate([[heads[0] - 8.0 * dv], heads, [heads[-1] + 8.0 * dv]])
        polys.append(_thick_polyline(rod, 2.75))
    for p in polys:
        res = _polygon_patch(to_px(p), metal.shape)
        if res is not None:
            sl, cov = res
            np.maximum(metal[sl], cov, out=metal[sl])
