"""Deterministic synthetic lateral spine radiographs (C3-C7 and L1-L5) with exact keypoints.

The default data of monai-spine: every image is drawn from a seed, in millimetres, and rasterised at a
recorded pixel spacing, so that the keypoints are known exactly and distances can be checked in mm.

Geometry (all in mm, then mapped to pixels with ``x_px = x_mm / sx + ox``, ``y_px = y_mm / sy + oy``):

* The column follows a circular arc (constant curvature) whose tangent turns by the random lordosis
  angle between the superior endplate of the first annotated vertebra and the inferior endplate of the
  last one. Lordosis is convex anteriorly; the patient faces image left, so anterior is smaller ``x``.
* Each vertebral body spans an arc interval (its height); its endplates are perpendicular to the arc
  there, which wedges bodies and discs naturally (anterior side taller). The four corners are
  ``AS, PS, AI, PI`` (anterior/posterior, superior/inferior). Each body is turned by a small random
  angle about its centre. The body outline is a closed polyline through the four corners with slightly
  concave endplates and walls; the **rendered polygon is that outline**, so the keypoints are the
  rendered corners.
* Posterior elements (pedicle, articular pillar / processes, lamina) and a spinous process pointing
  posteriorly-inferiorly whose tip is the keypoint ``SP`` (a vertex of the rendered polygon).
* Unannotated neighbours (C2 with the dens and T1; T12 and the sacrum) are drawn too.

Appearance: soft tissue (neck with airway and shoulders; abdomen with bowel gas, back muscles and the
iliac crests), trabecular texture, cortical rims, a detector response ``1 - exp(-mu * A)``, Gaussian blur,
windowing and gamma, heel-effect gradient and signal-dependent noise, quantised to 12 bits,
MONOCHROME2 (bone bright).

Hard cases (``hard_case``): ``"implant"`` (anterior cervical plate and screws, or lumbar pedicle screws
and rods), ``"low_contrast"`` (osteopenic bone, more noise) and ``"occlusion"`` (shoulders over C7, the
pelvis over L5, or a collimator edge over L1). A point under metal or under an occluding overlay of
strength >= 0.5 is marked ``visible=False``; the annotation's ``meta["hard_case"]`` names the case,
the affected levels, the hidden points and the points near metal.

Random streams are separate (anatomy, appearance, hard case, noise), so the same seed with and without a
hard case gives the same anatomy and keypoints.
"""

from __future__ import annotations

import hashlib
import json
import math
import multiprocessing
import os
import re
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np

from monai_spine.data.annotation import SpineAnnotation, atomic_write_text, write_annotation
from monai_spine.data.keypoints import get_region
from monai_spine.data.synthetic_dicom import write_dx_dicom

__all__ = [
    "GENERATOR_VERSION",
    "SYNTH_REGIONS",
    "HARD_CASES",
    "generate_radiograph",
    "generate_dataset",
    "existing_cases",
    "parse_size",
    "polygon_coverage",
]

GENERATOR_VERSION = 1
#: regions the generator can draw
SYNTH_REGIONS = ("cervical", "lumbar")
#: hard-case kinds, chosen at random when ``hard_case="auto"``
HARD_CASES = ("implant", "low_contrast", "occlusion")

_BITS_STORED = 12
_SUPERSAMPLE = 4
_SHIFT = 8  # fixed-point bits for cv2.fillPoly

# ----------------------------------------------------------------------------------------------------
# anatomy tables (adult means, mm; each image scales them by a patient factor and per-level jitter)
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _RegionAnatomy:
    levels: tuple[str, ...]
    above: str
    below: str
    depth_mm: dict[str, float]  # anteroposterior depth of the body
    height_mm: dict[str, float]  # craniocaudal height of the body
    disc_below_mm: dict[str, float]  # disc height below each level
    sp_len_mm: dict[str, float]  # posterior wall (middle) to spinous-process tip
    sp_angle_deg: dict[str, float]  # spinous process direction, degrees below the posterior direction
    lordosis_deg: tuple[float, float]
    scale: tuple[float, float]
    cortex_mm: float
    endplate_bow_mm: tuple[float, float]
    wall_bow_mm: tuple[float, float]
    jitter_deg: float
    fill_frac: tuple[float, float]  # annotated column height / image height


_ANATOMY: dict[str, _RegionAnatomy] = {
    "cervical": _RegionAnatomy(
        levels=("C3", "C4", "C5", "C6", "C7"),
        above="C2",
        below="T1",
        depth_mm={"C2": 16.0, "C3": 15.4, "C4": 15.7, "C5": 16.1, "C6": 16.7, "C7": 17.2, "T1": 18.5},
        height_mm={"C2": 15.0, "C3": 13.6, "C4": 13.6, "C5": 13.8, "C6": 13.9, "C7": 14.6, "T1": 15.5},
        disc_below_mm={"C2": 4.6, "C3": 5.0, "C4": 5.3, "C5": 5.6, "C6": 5.3, "C7": 4.6},
        sp_len_mm={"C2": 36.0, "C3": 30.0, "C4": 31.0, "C5": 33.0, "C6": 38.0, "C7": 46.0, "T1": 50.0},
        sp_angle_deg={"C2": 25.0, "C3": 32.0, "C4": 32.0, "C5": 30.0, "C6": 25.0, "C7": 18.0, "T1": 15.0},
        lordosis_deg=(5.0, 40.0),
        scale=(0.9, 1.1),
        cortex_mm=0.8,
        endplate_bow_mm=(0.2, 0.7),
        wall_bow_mm=(0.2, 0.7),
        jitter_deg=2.5,
        fill_frac=(0.55, 0.72),
    ),
    "lumbar": _RegionAnatomy(
        levels=("L1", "L2", "L3", "L4", "L5"),
        above="T12",
        below="S1",
        depth_mm={"T12": 35.0, "L1": 38.0, "L2": 39.5, "L3": 41.0, "L4": 42.0, "L5": 43.0, "S1": 44.0},
        height_mm={"T12": 23.5, "L1": 25.5, "L2": 26.5, "L3": 27.0, "L4": 27.0, "L5": 26.5},
        disc_below_mm={"T12": 7.5, "L1": 8.5, "L2": 9.5, "L3": 10.5, "L4": 11.0, "L5": 11.0},
        sp_len_mm={"T12": 50.0, "L1": 55.0, "L2": 58.0, "L3": 60.0, "L4": 58.0, "L5": 50.0},
        sp_angle_deg={"T12": 25.0, "L1": 12.0, "L2": 10.0, "L3": 10.0, "L4": 12.0, "L5": 18.0},
        lordosis_deg=(25.0, 55.0),
        scale=(0.92, 1.08),
        cortex_mm=1.2,
        endplate_bow_mm=(0.6, 1.8),
        wall_bow_mm=(0.6, 1.6),
        jitter_deg=2.0,
        fill_frac=(0.72, 0.84),
    ),
}

# posterior-element polygons in the posterior-wall frame: (u mm, scaled by the patient factor;
# v as a fraction of the posterior wall height), u posterior, v inferior, origin mid posterior wall
_CERVICAL_PEDICLE = ((-0.5, -0.28), (6.0, -0.24), (6.0, 0.12), (-0.5, 0.08))
_LUMBAR_PARTS = (
    ((-0.8, -0.36), (15.0, -0.34), (15.0, 0.12), (-0.8, 0.10)),  # pedicle
    ((11.0, -0.30), (14.0, -0.68), (21.0, -0.72), (23.0, -0.25)),  # superior articular process
    ((11.0, -0.35), (25.0, -0.30), (29.0, 0.40), (15.0, 0.35)),  # pars / lamina
    ((17.0, 0.20), (27.0, 0.25), (28.0, 0.82), (21.0, 0.86)),  # inferior articular process
)


# ----------------------------------------------------------------------------------------------------
# geometry
# ----------------------------------------------------------------------------------------------------


def _rot(v: np.ndarray, ang: float) -> np.ndarray:
    c, s = math.cos(ang), math.sin(ang)
    v = np.asarray(v, dtype=np.float64)
    return np.stack([c * v[..., 0] - s * v[..., 1], s * v[..., 0] + c * v[..., 1]], axis=-1)


@dataclass(frozen=True)
class _Arc:
    """Circular arc ``p(s)`` (mm), tangent angle ``alpha(s) = alpha_m + kappa (s - s_mid)`` from +y toward +x.

    Tangent ``t = (sin a, cos a)`` points inferior, normal ``n = (cos a, -sin a)`` points posterior;
    ``p(s_mid) = (0, 0)``. ``kappa > 0`` is lordosis (centre of curvature posterior).
    """

    kappa: float
    alpha_m: float
    s_mid: float

    def alpha(self, s: float) -> float:
        return self.alpha_m + self.kappa * (s - self.s_mid)

    def point(self, s: float) -> np.ndarray:
        a, am, k = self.alpha(s), self.alpha_m, self.kappa
        return np.array([(math.cos(am) - math.cos(a)) / k, (math.sin(a) - math.sin(am)) / k])

    def tangent(self, s: float) -> np.ndarray:
        a = self.alpha(s)
        return np.array([math.sin(a), math.cos(a)])

    def normal(self, s: float) -> np.ndarray:
        a = self.alpha(s)
        return np.array([math.cos(a), -math.sin(a)])

    def to_us(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Curvilinear coordinates of points (mm): ``u`` posterior offset from the arc, ``s`` arc length."""
        k, am = self.kappa, self.alpha_m
        cx, cy = math.cos(am) / k, -math.sin(am) / k
        vx, vy = x - cx, y - cy
        r = np.sqrt(vx * vx + vy * vy)
        u = 1.0 / k - r
        s = self.s_mid + (np.arctan2(vy, -vx) - am) / k
        return u, s


@dataclass
class _Vertebra:
    level: str
    annotated: bool
    outline: np.ndarray  # (M, 2) mm, closed, corners at ``corner_idx``
    corner_idx: tuple[int, int, int, int]
    inner: np.ndarray  # cancellous part (M, 2) mm
    posterior: list[np.ndarray] = field(default_factory=list)  # polygons (mm)
    extra_bone: list[np.ndarray] = field(default_factory=list)  # e.g. the dens (mm)
    sp_tip: np.ndarray | None = None  # (2,) mm
    sp_dir: np.ndarray | None = None  # unit vector of the spinous process
    frame: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None  # origin, u (posterior), v (inferior)
    wall_height: float = 0.0
    depth: float = 0.0
    height: float = 0.0

    @property
    def corners(self) -> np.ndarray:
        return self.outline[list(self.corner_idx)]

    def all_points(self) -> np.ndarray:
        parts = [self.outline] + list(self.posterior) + list(self.extra_bone)
        return np.concatenate(parts, axis=0)


def _bowed_edge(p: np.ndarray, q: np.ndarray, bow: float, centre: np.ndarray, k: int) -> np.ndarray:
    """``k`` points from ``p`` (included) towards ``q`` (excluded), bowed by ``bow`` mm towards ``centre``."""
    tau = np.arange(k) / k
    d = q - p
    m = np.array([-d[1], d[0]]) / max(np.hypot(*d), 1e-9)
    if np.dot(m, centre - (p + q) / 2) < 0:
        m = -m
    return p[None] + tau[:, None] * d[None] + (bow * 4.0 * tau * (1.0 - tau))[:, None] * m[None]


def _body_outline(corners: np.ndarray, bows: Sequence[float], k: int = 8) -> np.ndarray:
    """Closed outline AS -> PS -> PI -> AI through the corners (AS, PS, AI, PI), bowed edges; (4k, 2)."""
    a_s, p_s, a_i, p_i = corners
    c = corners.mean(0)
    edges = [(a_s, p_s), (p_s, p_i), (p_i, a_i), (a_i, a_s)]
    return np.concatenate([_bowed_edge(p, q, b, c, k) for (p, q), b in zip(edges, bows)], axis=0)


def _shrink(poly: np.ndarray, centre: np.ndarray, u_axis: np.ndarray, fu: float, fv: float) -> np.ndarray:
    v_axis = np.array([-u_axis[1], u_axis[0]])
    d = poly - centre
    du, dv = d @ u_axis, d @ v_axis
    return centre + (du * fu)[:, None] * u_axis + (dv * fv)[:, None] * v_axis


def _posterior_frame(ps: np.ndarray, pi: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    o = (ps + pi) / 2
    hw = float(np.hypot(*(pi - ps)))
    v = (pi - ps) / hw
    u = np.array([v[1], -v[0]])
    return o, u, v, hw


def _to_xy(o: np.ndarray, u: np.ndarray, v: np.ndarray, uv: np.ndarray) -> np.ndarray:
    uv = np.asarray(uv, dtype=np.float64)
    return o + uv[..., :1] * u + uv[..., 1:2] * v


def _spinous(
    o: np.ndarray, u: np.ndarray, v: np.ndarray, base_uv: tuple[float, float], hb: float, sp_len: float,
    sp_angle: float, taper: tuple[float, float, float, float],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lamina + spinous process polygon ending in a pointed tip (the keypoint); returns (poly, tip, dir)."""
    tip = o + sp_len * (math.cos(sp_angle) * u + math.sin(sp_angle) * v)
    base = _to_xy(o, u, v, np.array(base_uv))
    d = tip - base
    d = d / np.hypot(*d)
    perp = np.array([-d[1], d[0]])
    if np.dot(perp, v) < 0:
        perp = -perp  # perp points inferior
    back_sup, half_sup, back_inf, half_inf = taper
    poly = np.stack([
        base - hb / 2 * perp,
        tip - back_sup * d - half_sup * perp,
        tip,
        tip - back_inf * d + half_inf * perp,
        base + hb / 2 * perp,
    ])
    return poly, tip, d


def _build_spine(region: str, rng: np.random.Generator) -> tuple[list[_Vertebra], _Arc, dict[str, Any]]:
    """Draw the column in mm (origin at the middle of the annotated span)."""
    an = _ANATOMY[region]
    g = float(rng.uniform(*an.scale))
    lordosis = float(rng.uniform(*an.lordosis_deg))
    tilt = float(rng.uniform(-8.0, 8.0))
    seq = [an.above, *an.levels, an.below]

    heights, depths, discs = {}, {}, {}
    for lev in seq:
        depths[lev] = an.depth_mm[lev] * g * float(rng.uniform(0.95, 1.05))
        if lev in an.height_mm:
            heights[lev] = an.height_mm[lev] * g * float(rng.uniform(0.95, 1.05))
        if lev in an.disc_below_mm:
            discs[lev] = an.disc_below_mm[lev] * g * float(rng.uniform(0.85, 1.15))
    # arc-length layout
    s_top: dict[str, float] = {}
    s = 0.0
    for lev in seq:
        s_top[lev] = s
        if lev in heights:
            s += heights[lev] + discs.get(lev, 0.0)
    first, last = an.levels[0], an.levels[-1]
    s0, s1 = s_top[first], s_top[last] + heights[last]
    kappa = math.radians(lordosis) / (s1 - s0)
    arc = _Arc(kappa=kappa, alpha_m=math.radians(tilt), s_mid=(s0 + s1) / 2)

    verts: list[_Vertebra] = []
    for lev in seq:
        if lev == "S1":
            verts.append(_sacrum(arc, s_top[lev], depths[lev], g, rng))
            continue
        h, dep = heights[lev], depths[lev]
        st, sb = s_top[lev], s_top[lev] + h
        d_sup = dep * float(rng.uniform(0.97, 1.03))
        d_inf = dep * float(rng.uniform(0.97, 1.03))
        pt, pb = arc.point(st), arc.point(sb)
        nt, nb = arc.normal(st), arc.normal(sb)
        corners = np.stack([pt - d_sup / 2 * nt, pt + d_sup / 2 * nt, pb - d_inf / 2 * nb, pb + d_inf / 2 * nb])
        centre = corners.mean(0)
        jit = math.radians(float(rng.uniform(-an.jitter_deg, an.jitter_deg)))
        corners = centre + _rot(corners - centre, jit)
        bows = (
            float(rng.uniform(*an.endplate_bow_mm)),
            float(rng.uniform(0.0, 0.3)) * g,
            float(rng.uniform(*an.endplate_bow_mm)),
            float(rng.uniform(*an.wall_bow_mm)),
        )
        outline = _body_outline(corners, bows)
        u_axis = _rot(arc.normal((st + sb) / 2), jit)
        cx = an.cortex_mm * g
        inner = _shrink(outline, centre, u_axis, 1 - 2 * cx / dep, 1 - 2 * cx / h)
        vert = _Vertebra(lev, lev in an.levels, outline, (0, 8, 24, 16), inner, depth=dep, height=h)
        o, u, v, hw = _posterior_frame(corners[1], corners[3])
        vert.frame, vert.wall_height = (o, u, v), hw
        sp_len = an.sp_len_mm[lev] * g * float(rng.uniform(0.92, 1.08))
        sp_ang = math.radians(an.sp_angle_deg[lev] + float(rng.uniform(-7.0, 7.0)))
        if region == "cervical":
            _cervical_posterior(vert, g, sp_len, sp_ang, rng)
            if lev == "C2":
                _add_dens(vert, corners, g, rng)
        else:
            _lumbar_posterior(vert, g, sp_len, sp_ang, rng)
        verts.append(vert)
    params = {"patient_scale": round(g, 6), "lordosis_deg": round(lordosis, 4), "tilt_deg": round(tilt, 4)}
    return verts, arc, params


def _cervical_posterior(vert: _Vertebra, g: float, sp_len: float, sp_ang: float, rng: np.random.Generator) -> None:
    o, u, v = vert.frame
    hw = vert.wall_height
    ped = np.array([(a * g, b * hw) for a, b in _CERVICAL_PEDICLE])
    wp = 11.0 * g * float(rng.uniform(0.9, 1.1))
    slope = float(rng.uniform(0.45, 0.8))  # facet slope (down posteriorly)
    u0 = 5.0 * g
    top, bot = -0.62 * hw, 0.48 * hw
    pillar = np.array([(u0, top), (u0 + wp, top + wp * slope), (u0 + wp, bot + wp * slope), (u0, bot)])
    vert.posterior = [_to_xy(o, u, v, ped), _to_xy(o, u, v, pillar)]
    base = (u0 + 0.55 * wp, -0.05 * hw + 0.55 * wp * slope)
    sp_len = max(sp_len, base[0] + 8.0 * g)
    poly, tip, d = _spinous(o, u, v, base, 0.55 * hw, sp_len, sp_ang, (2.2 * g, 1.7 * g, 2.2 * g, 1.7 * g))
    vert.posterior.append(poly)
    vert.sp_tip, vert.sp_dir = tip, d


def _lumbar_posterior(vert: _Vertebra, g: float, sp_len: float, sp_ang: float, rng: np.random.Generator) -> None:
    o, u, v = vert.frame
    hw = vert.wall_height
    for part in _LUMBAR_PARTS:
        jit = rng.uniform(-0.8, 0.8, size=(len(part), 2)) * np.array([g, 0.02 * hw])
        uv = np.array([(a * g, b * hw) for a, b in part]) + jit
        vert.posterior.append(_to_xy(o, u, v, uv))
    base = (26.0 * g, 0.05 * hw)
    hb = 0.65 * hw
    poly, tip, d = _spinous(o, u, v, base, hb, sp_len, sp_ang, (6.0 * g, 0.28 * hb, 5.0 * g, 0.22 * hb))
    vert.posterior.append(poly)
    vert.sp_tip, vert.sp_dir = tip, d


def _add_dens(vert: _Vertebra, corners: np.ndarray, g: float, rng: np.random.Generator) -> None:
    """The odontoid process on top of C2 (a tapered column, slightly posterior)."""
    a_s, p_s = corners[0], corners[1]
    o = (a_s + p_s) / 2
    u = (p_s - a_s) / np.hypot(*(p_s - a_s))
    v = np.array([-u[1], u[0]])
    if v[1] > 0:
        v = -v  # v points up here
    h = 14.0 * g * float(rng.uniform(0.9, 1.1))
    uv = np.array([(-4.0, 1.0), (-3.0, h - 3), (-1.0, h), (2.5, h), (4.5, h - 3), (5.5, 1.0)]) * np.array([g, 1.0])
    uv[:, 0] += 1.0 * g
    vert.extra_bone.append(o + uv[:, :1] * u + uv[:, 1:2] * v)


def _sacrum(arc: _Arc, s_top: float, depth: float, g: float, rng: np.random.Generator) -> _Vertebra:
    """S1 and the sacrum below it, turned further into lordosis (sacral slope)."""
    beta = math.radians(float(rng.uniform(8.0, 18.0)))
    e = arc.point(s_top)
    a = arc.alpha(s_top) + beta
    t = np.array([math.sin(a), math.cos(a)])
    n = np.array([math.cos(a), -math.sin(a)])
    d2 = depth / 2
    uv = np.array([
        (-d2, 0.0), (d2, 0.0), (d2 + 2.0 * g, 28.0 * g), (d2 + 8.0 * g, 70.0 * g), (d2 - 2.0 * g, 110.0 * g),
        (-d2 + 25.0 * g, 112.0 * g), (-d2 + 20.0 * g, 70.0 * g), (-d2 + 2.0 * g, 30.0 * g),
    ])
    outline = e + uv[:, :1] * n + uv[:, 1:2] * t
    centre = outline.mean(0)
    inner = _shrink(outline, centre, n, 0.9, 0.95)
    vert = _Vertebra("S1", False, outline, (0, 1, 7, 2), inner)
    crest = np.array(
        [(d2 + 1.0, 8.0 * g), (d2 + 22.0 * g, 16.0 * g), (d2 + 26.0 * g, 60.0 * g), (d2 + 8.0 * g, 85.0 * g)]
    )
    vert.posterior.append(e + crest[:, :1] * n + crest[:, 1:2] * t)
    return vert


# ----------------------------------------------------------------------------------------------------
# rasterisation
# ----------------------------------------------------------------------------------------------------


def _window(points_px: np.ndarray, shape: tuple[int, int]) -> tuple[int, int, int, int] | None:
    """Pixel window ``(y0, y1, x0, x1)`` holding ``points_px`` (with a 1 px border), clipped to ``shape``."""
    h, w = shape
    x0 = max(int(math.floor(points_px[:, 0].min())) - 1, 0)
    x1 = min(int(math.ceil(points_px[:, 0].max())) + 2, w)
    y0 = max(int(math.floor(points_px[:, 1].min())) - 1, 0)
    y1 = min(int(math.ceil(points_px[:, 1].max())) + 2, h)
    if x1 <= x0 or y1 <= y0:
        return None
    return y0, y1, x0, x1


def _coverage_in(poly_px: np.ndarray, win: tuple[int, int, int, int], supersample: int = _SUPERSAMPLE) -> np.ndarray:
    """Area coverage (float32) of a polygon on the pixels of window ``(y0, y1, x0, x1)``, by supersampling.

    Only the polygon's own bounding box (within the window) is supersampled.
    """
    y0, y1, x0, x1 = win
    out = np.zeros((y1 - y0, x1 - x0), dtype=np.float32)
    poly_px = np.asarray(poly_px, dtype=np.float64)
    own = _window(poly_px, (y1, x1))
    if own is None:
        return out
    py0, py1, px0, px1 = max(own[0], y0), own[1], max(own[2], x0), own[3]
    if py1 <= py0 or px1 <= px0:
        return out
    ss = supersample
    buf = np.zeros(((py1 - py0) * ss, (px1 - px0) * ss), dtype=np.float32)
    # pixel (c, r) covers [c - 0.5, c + 0.5]; sub-pixel j of it has its centre at c - 0.5 + (j + 0.5) / ss
    sub = (poly_px - np.array([px0, py0]) + 0.5) * ss - 0.5
    pts = np.round(sub * (1 << _SHIFT)).astype(np.int32).reshape(-1, 1, 2)
    cv2.fillPoly(buf, [pts], 1.0, lineType=cv2.LINE_8, shift=_SHIFT)
    if ss > 1:
        buf = cv2.resize(buf, (px1 - px0, py1 - py0), interpolation=cv2.INTER_AREA)
    out[py0 - y0:py1 - y0, px0 - x0:px1 - x0] = buf
    return out


def _polygon_patch(
    poly_px: np.ndarray, shape: tuple[int, int], supersample: int = _SUPERSAMPLE
) -> tuple[tuple[slice, slice], np.ndarray] | None:
    """Area coverage of a polygon on the pixels of its bounding box: ``((rows, cols), coverage)``."""
    poly_px = np.asarray(poly_px, dtype=np.float64)
    win = _window(poly_px, shape)
    if win is None:
        return None
    return (slice(win[0], win[1]), slice(win[2], win[3])), _coverage_in(poly_px, win, supersample)


def polygon_coverage(poly_px: np.ndarray, shape: tuple[int, int], supersample: int = _SUPERSAMPLE) -> np.ndarray:
    """Anti-aliased mask of a polygon: the fraction of each pixel it covers.

    Args:
        poly_px: (M, 2) vertices in (x, y) pixels (pixel centres at integers).
        shape: (H, W) of the output.
        supersample: sub-pixels per pixel along each axis (coverage steps of ``1 / supersample**2``;
            edges are exact to about ``0.5 / supersample`` px).

    Returns:
        (H, W) float32 in [0, 1].
    """
    out = np.zeros(shape, dtype=np.float32)
    res = _polygon_patch(poly_px, shape, supersample)
    if res is not None:
        sl, cov = res
        out[sl] = cov
    return out


def _add_poly(layer: np.ndarray, poly_px: np.ndarray, value: float) -> tuple[tuple[slice, slice], np.ndarray] | None:
    res = _polygon_patch(poly_px, layer.shape)
    if res is not None:
        sl, cov = res
        layer[sl] += value * cov
    return res


def _thick_polyline(points: np.ndarray, half_width: float) -> np.ndarray:
    """Polygon of a polyline widened by ``half_width`` on each side (mm or px)."""
    p = np.asarray(points, dtype=np.float64)
    d = np.gradient(p, axis=0)
    d /= np.maximum(np.hypot(d[:, 0], d[:, 1]), 1e-9)[:, None]
    nrm = np.stack([-d[:, 1], d[:, 0]], axis=1)
    return np.concatenate([p + half_width * nrm, (p - half_width * nrm)[::-1]], axis=0)


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma_px: float) -> np.ndarray:
    """Zero-mean, unit-std Gaussian random field with correlation length ``sigma_px`` (float32)."""
    h, w = shape
    down = max(1, int(sigma_px // 2))
    hs, ws = h // down + 2, w // down + 2
    f = rng.standard_normal((hs, ws), dtype=np.float32)
    f = cv2.GaussianBlur(f, (0, 0), sigmaX=max(sigma_px / down, 0.3), borderType=cv2.BORDER_REFLECT)
    f -= f.mean()
    f /= max(float(f.std()), 1e-6)
    if down > 1:
        f = cv2.resize(f, (ws * down, hs * down), interpolation=cv2.INTER_LINEAR)
    return np.ascontiguousarray(f[:h, :w])


def _body_profile(u: np.ndarray, centre: float, half_width: float, edge_mm: float = 1.5) -> np.ndarray:
    """Relative thickness ``sqrt(1 - q^2)`` of an elliptic cross-section, skin edges softened over ``edge_mm``."""
    z = 1.0 - ((u - centre) / half_width) ** 2
    delta = 2.0 * edge_mm / half_width
    return np.sqrt(0.5 * (z + np.sqrt(z * z + delta * delta)))


def _soft_ellipse(layer: np.ndarray, cx: float, cy: float, ax: float, ay: float, ang: float, value: float) -> None:
    """Add ``value`` times a soft-edged ellipse (px) to ``layer`` on its bounding box."""
    h, w = layer.shape
    r = max(ax, ay) * 1.3
    x0, x1 = max(int(cx - r), 0), min(int(cx + r) + 1, w)
    y0, y1 = max(int(cy - r), 0), min(int(cy + r) + 1, h)
    if x1 <= x0 or y1 <= y0:
        return
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    dx, dy = xx - cx, yy - cy
    c, s = math.cos(ang), math.sin(ang)
    q = ((c * dx + s * dy) / ax) ** 2 + ((-s * dx + c * dy) / ay) ** 2
    layer[y0:y1, x0:x1] += value * (1.0 - _smoothstep((q - 0.6) / 0.8))


def _bilinear(img: np.ndarray, pts_px: np.ndarray) -> np.ndarray:
    h, w = img.shape
    x = np.clip(pts_px[:, 0], 0, w - 1)
    y = np.clip(pts_px[:, 1], 0, h - 1)
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    x1, y1 = np.minimum(x0 + 1, w - 1), np.minimum(y0 + 1, h - 1)
    fx, fy = x - x0, y - y0
    return (
        img[y0, x0] * (1 - fx) * (1 - fy) + img[y0, x1] * fx * (1 - fy) + img[y1, x0] * (1 - fx) * fy
        + img[y1, x1] * fx * fy
    )


# ----------------------------------------------------------------------------------------------------
# the generator
# ----------------------------------------------------------------------------------------------------


def parse_size(size: int | Sequence[int]) -> tuple[int, int]:
    """``(H, W)`` in px from one side or a pair; ValueError below 64 px."""
    if isinstance(size, (int, np.integer)):
        hw = (int(size), int(size))
    else:
        hw = tuple(int(s) for s in size)
    if len(hw) != 2 or min(hw) < 64:
        raise ValueError(f"size must be an int or (H, W) of at least 64 pixels, got {size!r}")
    return hw  # type: ignore[return-value]


def _check_region(region: str) -> None:
    if region not in SYNTH_REGIONS:
        raise ValueError(f"synthetic region must be one of {SYNTH_REGIONS}, got {region!r}")


def _round_sig(v: float, digits: int = 6) -> float:
    return float(f"{v:.{digits}g}")


def generate_radiograph(
    region: str,
    seed: int,
    size: int | Sequence[int] = (1024, 1024),
    hard_case: str | None = None,
    spacing_mm: float | Sequence[float] | None = None,
    return_layers: bool = False,
) -> tuple[np.ndarray, SpineAnnotation] | tuple[np.ndarray, SpineAnnotation, dict[str, np.ndarray]]:
    """Draw one lateral radiograph and its keypoints.

    Args:
        region: ``"cervical"`` (C3-C7) or ``"lumbar"`` (L1-L5).
        seed: non-negative integer; the same seed gives bit-identical pixels and annotation.
        size: image size, an int or ``(H, W)`` (array order).
        hard_case: None (a normal case), ``"auto"`` (one of :data:`HARD_CASES` drawn from the seed) or a
            name in :data:`HARD_CASES`.
        spacing_mm: pixel spacing, a number or ``(sx, sy)`` in mm; None draws one so that the annotated
            column fills 55-72 % (cervical) or 72-84 % (lumbar) of the image height (about 0.11-0.16 mm
            cervical and 0.21-0.27 mm lumbar at 1024 px), isotropic or slightly anisotropic (up to 4 %).
            Rounded to 6 significant digits, recorded exactly.
        return_layers: also return a dictionary of the layers the image was made of.

    Returns:
        ``(image, annotation)`` or ``(image, annotation, layers)``: image is (H, W) uint16 with values in
        ``[0, 4095]`` (12 bits, bone bright); annotation is a :class:`SpineAnnotation` (scheme
        ``lateral5``, spacing source ``PixelSpacing``, boxes and body outlines, ``image=None``); layers hold
        (H, W) arrays: ``bone`` (bone density before texture and contrast), ``body_index`` (int16, index of the annotated
        vertebra whose body covers at least half of the pixel, -1 elsewhere), ``posterior_index`` (same for
        the posterior elements; where two overlap, the upper vertebra), ``metal`` (coverage) and ``occlusion``
        (overlay strength in [0, 1]).

    Raises:
        ValueError: unknown region or hard case, negative seed, too small a size, or a given spacing at
            which the column does not fit the image.
    """
    _check_region(region)
    if int(seed) < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    seed = int(seed)
    h, w = parse_size(size)
    ss = np.random.SeedSequence([seed, GENERATOR_VERSION, SYNTH_REGIONS.index(region)])
    rng_anat, rng_app, rng_hard, rng_noise = (np.random.default_rng(c) for c in ss.spawn(4))

    if hard_case == "auto":
        hard_case = str(rng_hard.choice(HARD_CASES))
    elif hard_case is not None and hard_case not in HARD_CASES:
        raise ValueError(f"hard_case must be None, 'auto' or one of {HARD_CASES}, got {hard_case!r}")

    an = _ANATOMY[region]
    verts, arc, geo_params = _build_spine(region, rng_anat)
    ann_verts = [v for v in verts if v.annotated]

    # ---- spacing and placement -------------------------------------------------------------------
    pts_ann = np.concatenate([v.all_points() for v in ann_verts], axis=0)
    lo_mm, hi_mm = pts_ann.min(0), pts_ann.max(0)
    ext_mm = hi_mm - lo_mm
    fill = float(rng_anat.uniform(*an.fill_frac))
    aniso = float(rng_anat.uniform(-0.04, 0.04)) if rng_anat.random() < 0.3 else 0.0
    margin = max(4.0, 0.04 * min(h, w))
    if spacing_mm is None:
        s_base = max(ext_mm[1] / (fill * h), ext_mm[0] / (0.8 * w))
        sx, sy = _round_sig(s_base * (1.0 + aniso)), _round_sig(s_base)
        sx = max(sx, _round_sig(ext_mm[0] / (w - 2 * margin - 1) * 1.001))
        sy = max(sy, _round_sig(ext_mm[1] / (h - 2 * margin - 1) * 1.001))
    else:
        sp = np.broadcast_to(np.asarray(spacing_mm, dtype=np.float64).reshape(-1), (2,))
        if not np.all(np.isfinite(sp)) or np.any(sp <= 0):
            raise ValueError(f"spacing_mm must be positive, got {spacing_mm!r}")
        sx, sy = _round_sig(float(sp[0])), _round_sig(float(sp[1]))
    spacing = np.array([sx, sy])
    ext_px = ext_mm / spacing
    room = np.array([w, h]) - 1 - 2 * margin - ext_px
    if np.any(room < 0):
        raise ValueError(
            f"{region} column ({ext_mm[0]:.0f} x {ext_mm[1]:.0f} mm) does not fit a {w}x{h} image at spacing "
            f"{(sx, sy)} mm"
        )
    offset = margin + rng_anat.uniform(0.0, 1.0, size=2) * room - lo_mm / spacing  # px of the mm origin

    def to_px(p_mm: np.ndarray) -> np.ndarray:
        return np.asarray(p_mm) / spacing + offset

    # smooth layers (soft tissue, overlays) are computed on a coarse grid of f x f pixel blocks and
    # upsampled; coarse pixel j has its centre at full-resolution x = (j + 0.5) f - 0.5
    f = max(1, int(round(min(h, w) / 256)))
    lh, lw = -(-h // f), -(-w // f)
    xs_mm = (((np.arange(lw) + 0.5) * f - 0.5 - offset[0]) * sx).astype(np.float32)
    ys_mm = (((np.arange(lh) + 0.5) * f - 0.5 - offset[1]) * sy).astype(np.float32)
    u_map, s_map = arc.to_us(xs_mm[None, :], ys_mm[:, None])
    # skin lines follow a flatter curve than the column
    skin_arc = _Arc(kappa=0.35 * arc.kappa, alpha_m=arc.alpha_m, s_mid=arc.s_mid)
    u_skin, _ = skin_arc.to_us(xs_mm[None, :], ys_mm[:, None])

    def upsample(a: np.ndarray) -> np.ndarray:
        if f == 1:
            return np.ascontiguousarray(a, dtype=np.float32)
        big = cv2.resize(a.astype(np.float32), (lw * f, lh * f), interpolation=cv2.INTER_LINEAR)
        return np.ascontiguousarray(big[:h, :w])

    # ---- soft tissue ---------------------------------------------------------------------------------
    mm_px = float(np.mean(spacing))
    soft = np.zeros((lh, lw), dtype=np.float32)
    d_mean = float(np.mean([v.depth for v in ann_verts]))
    sp_u = max(float(arc.to_us(*v.sp_tip)[0]) for v in ann_verts)
    s_first = float(arc.to_us(*ann_verts[0].corners[0])[1])
    s_last = float(arc.to_us(*ann_verts[-1].corners[2])[1])
    meta_soft: dict[str, Any] = {}
    other_bones: list[np.ndarray] = []  # unannotated bones (mm polygons)
    if region == "cervical":
        if rng_anat.random() < 0.7:  # angle of the mandible, in front of C2, above C3
            s_ang = s_first - float(rng_anat.uniform(3.0, 20.0))
            u_ang = -(d_mean / 2) - float(rng_anat.uniform(10.0, 22.0))
            us = [(u_ang + 6.0, s_ang - 40.0), (u_ang + 3.0, s_ang - 15.0), (u_ang, s_ang),
                  (u_ang - 15.0, s_ang + 4.0), (u_ang - 60.0, s_ang + 6.0)]
            line = np.array([arc.point(sv) + uv * arc.normal(sv) for uv, sv in us])
            other_bones.append(_thick_polyline(line, float(rng_anat.uniform(3.0, 4.5))))
        u_ant = -(d_mean / 2 + float(rng_anat.uniform(40.0, 60.0)))
        u_post = sp_u + float(rng_anat.uniform(15.0, 40.0))
        tau = float(rng_anat.uniform(0.45, 0.6))
        uc, a = (u_ant + u_post) / 2, (u_post - u_ant) / 2
        soft += tau * _body_profile(u_skin, uc, a)
        # prevertebral soft tissue thickens at C5-C7 (oesophagus); airway in front of it
        pv = 4.0 + 9.0 * _smoothstep((s_map - (s_first + 0.3 * (s_last - s_first))) / (0.5 * (s_last - s_first)))
        u_air1 = -(d_mean / 2) - pv
        aw = float(rng_anat.uniform(11.0, 17.0))
        band = _smoothstep((u_air1 - u_map) / 2.5) * _smoothstep((u_map - (u_air1 - aw)) / 2.5)
        soft -= float(rng_anat.uniform(0.45, 0.6)) * tau * band
        meta_soft = {"neck_mm": [round(u_ant, 3), round(u_post, 3)], "airway_width_mm": round(aw, 3)}
    else:
        u_ant = -(d_mean / 2 + float(rng_anat.uniform(130.0, 190.0)))
        u_post = sp_u + float(rng_anat.uniform(20.0, 70.0))
        tau = float(rng_anat.uniform(0.85, 1.1))
        uc, a = (u_ant + u_post) / 2, (u_post - u_ant) / 2
        soft += tau * _body_profile(u_skin, uc, a)
        # paraspinal muscles
        soft += 0.08 * _smoothstep((u_map - d_mean / 2 - 5.0) / 10.0) * _smoothstep((sp_u + 10.0 - u_map) / 10.0)
        # iliac crests (two overlapping ilia) over L5 / S1, with a faint cortical rim
        l5 = ann_verts[-1]
        s_l5 = float(arc.to_us(*l5.outline.mean(0))[1])
        ic_s = s_l5 + float(rng_anat.uniform(35.0, 55.0))
        ic_u = float(rng_anat.uniform(0.0, 25.0))
        for _ in range(2):
            da, ds_ = float(rng_anat.uniform(-6, 6)), float(rng_anat.uniform(-5, 5))
            q = np.sqrt(((u_map - ic_u - da) / 62.0) ** 2 + ((s_map - ic_s - ds_) / 50.0) ** 2)
            soft += 0.07 * (1.0 - _smoothstep((q - 0.97) / 0.05))
            soft += 0.05 * np.exp(-(((q - 1.0) * 50.0 / 1.5) ** 2)) * (s_map < ic_s)
        # bowel gas anterior to the spine
        for _ in range(int(rng_anat.integers(3, 9))):
            gu = float(rng_anat.uniform(u_ant + 20.0, -d_mean / 2 - 5.0))
            gs = float(rng_anat.uniform(s_first - 30.0, s_last + 30.0))
            cpx = (to_px(arc.point(gs) + gu * arc.normal(gs)) + 0.5) / f - 0.5
            ax_mm, ay_mm = float(rng_anat.uniform(6, 25)), float(rng_anat.uniform(5, 15))
            _soft_ellipse(soft, cpx[0], cpx[1], ax_mm / mm_px / f, ay_mm / mm_px / f,
                          float(rng_anat.uniform(0, math.pi)), -float(rng_anat.uniform(0.1, 0.3)))
        meta_soft = {"body_mm": [round(u_ant, 3), round(u_post, 3)], "iliac_crest_s_mm": round(ic_s, 3)}
    soft *= 1.0 + 0.07 * _smooth_noise(rng_app, (lh, lw), 25.0 / mm_px / f)
    np.maximum(soft, 0.0, out=soft)
    soft = upsample(soft)

    # ---- bones ------------------------------------------------------------------------------------
    bone = np.zeros((h, w), dtype=np.float32)
    body_index = np.full((h, w), -1, dtype=np.int16)
    posterior_index = np.full((h, w), -1, dtype=np.int16)
    rho_cort = float(rng_app.uniform(0.8, 1.0))
    rho_canc = rho_cort * float(rng_app.uniform(0.5, 0.65))
    rho_post = rho_cort * float(rng_app.uniform(0.6, 0.8))
    ann_i = 0
    for vert in verts:
        outline_px = to_px(vert.outline)
        win = _window(to_px(vert.all_points()), (h, w))
        if win is None:
            ann_i += int(vert.annotated)
            continue
        sl = (slice(win[0], win[1]), slice(win[2], win[3]))
        body = _coverage_in(outline_px, win)
        for extra in vert.extra_bone:
            body = np.maximum(body, _coverage_in(to_px(extra), win))
        inner = _coverage_in(to_px(vert.inner), win)
        post = np.zeros_like(body)
        for poly in vert.posterior:  # one bone: union of its parts, outside the body
            np.maximum(post, _coverage_in(to_px(poly), win), out=post)
        post *= 1.0 - body
        bone[sl] += rho_cort * body + (rho_canc - rho_cort) * inner + rho_post * post
        if vert.annotated:
            body_index[sl][_coverage_in(outline_px, win) >= 0.5] = ann_i
            pi_win = posterior_index[sl]
            pi_win[(post >= 0.5) & (pi_win < 0)] = ann_i  # overlaps keep the upper vertebra
            ann_i += 1
    for poly in other_bones:
        _add_poly(bone, to_px(poly), 0.8 * rho_cort)
    tex = _smooth_noise(rng_app, (h, w), 0.5 / mm_px)
    bone_contrast = float(rng_app.uniform(0.85, 1.15))
    noise_sigma = float(rng_app.uniform(0.012, 0.03))
    blur_px = float(rng_app.uniform(0.4, 1.1))
    gamma = float(rng_app.uniform(0.8, 1.3))
    mu = float(rng_app.uniform(1.0, 1.4))
    heel = float(rng_app.uniform(-0.08, 0.08))

    # ---- hard case parameters -------------------------------------------------------------------------
    hard_meta: dict[str, Any] | None = None
    metal = np.zeros((h, w), dtype=np.float32)
    overlay_fn = None
    if region == "cervical":
        # shoulders: a mild dense overlay below C7 in a normal case
        sh_alpha = float(rng_anat.uniform(0.2, 0.45))
        sh_top = s_last + float(rng_anat.uniform(6.0, 25.0))
        sh_curv = float(rng_anat.uniform(0.002, 0.008))
        sh_u0 = float(rng_anat.uniform(-10.0, 30.0))
        overlay = ("bright", sh_alpha, sh_top, sh_curv, sh_u0, +1)
    else:
        overlay = None
    if hard_case == "low_contrast":
        factor = float(rng_hard.uniform(0.3, 0.45))
        bone_contrast *= factor
        noise_sigma *= float(rng_hard.uniform(1.5, 2.2))
        blur_px += float(rng_hard.uniform(0.2, 0.6))
        hard_meta = {"type": "low_contrast", "bone_contrast_factor": round(factor, 4),
                     "levels": list(an.levels)}
    elif hard_case == "occlusion":
        if region == "cervical":
            c7 = ann_verts[-1]
            cs = [float(arc.to_us(*c)[1]) for c in c7.corners]
            top = min(cs[0], cs[1]) + float(rng_hard.uniform(-0.3, 0.45)) * (max(cs[2], cs[3]) - min(cs[0], cs[1]))
            overlay = ("bright", float(rng_hard.uniform(0.9, 0.97)), top, float(rng_hard.uniform(0.0005, 0.003)),
                       float(rng_hard.uniform(-10.0, 10.0)), +1)
            sub = "shoulder"
        else:
            if rng_hard.random() < 0.5:
                tv, sign, sub, mode, alpha = ann_verts[-1], +1, "pelvis", "bright", float(rng_hard.uniform(0.9, 0.96))
            else:
                tv, sign, sub, mode, alpha = ann_verts[0], -1, "collimation", "dark", 1.0
            cs = [float(arc.to_us(*c)[1]) for c in tv.corners]
            s_sup, s_inf = min(cs[0], cs[1]), max(cs[2], cs[3])
            frac = float(rng_hard.uniform(0.1, 0.6)) if sign > 0 else float(rng_hard.uniform(0.4, 0.9))
            overlay = (mode, alpha, s_sup + frac * (s_inf - s_sup), 0.0, 0.0, sign)
        hard_meta = {"type": "occlusion", "subtype": sub}
    elif hard_case == "implant":
        hard_meta = {"type": "implant"}
        _implant(region, ann_verts, rng_hard, metal, to_px, hard_meta)

    # ---- image formation --------------------------------------------------------------------------
    tex *= 0.18 * bone_contrast
    tex += bone_contrast
    att = bone * tex  # bone attenuation with trabecular texture
    att += soft
    att *= -mu
    img = cv2.exp(att)
    np.subtract(1.0, img, out=img)  # detector response 1 - exp(-mu A), bone bright
    img = cv2.GaussianBlur(img, (0, 0), sigmaX=blur_px, borderType=cv2.BORDER_REFLECT)
    p_lo, p_hi = np.percentile(img[:: max(1, h // 128), :: max(1, w // 128)], [1.0, 99.7])
    lo = p_lo - float(rng_app.uniform(0.0, 0.05))
    hi = p_hi + float(rng_app.uniform(0.0, 0.05))
    img -= lo
    img *= 1.0 / max(hi - lo, 1e-3)
    np.maximum(img, 0.0, out=img)
    np.minimum(img, 1.0, out=img)
    img = cv2.pow(img, gamma)
    img *= (1.0 + heel * (np.arange(w, dtype=np.float32) / w - 0.5))[None, :]
    if metal.any():
        m = cv2.GaussianBlur(metal, (0, 0), sigmaX=max(0.5, blur_px))
        halo = np.maximum(cv2.GaussianBlur(metal, (0, 0), sigmaX=3.0 / mm_px) - m, 0.0)
        img = img * (1.0 - m) + m * float(rng_hard.uniform(0.96, 1.0)) - 0.15 * halo
    strength = np.zeros((h, w), dtype=np.float32)
    if overlay is not None:
        mode, alpha, s_edge, curv, u0, sign = overlay
        # the edge crosses the column at arc length s_edge, perpendicular to it there (a parabola when
        # curv > 0); its straight frame keeps the 4 mm ramp the same width everywhere in the image
        e_pt, e_t, e_n = arc.point(s_edge), arc.tangent(s_edge), arc.normal(s_edge)

        def overlay_fn(x, y):  # noqa: E306 - strength of the overlay at (x, y) mm
            dx, dy = x - e_pt[0], y - e_pt[1]
            along = dx * e_t[0] + dy * e_t[1]
            across = dx * e_n[0] + dy * e_n[1]
            return alpha * _smoothstep(sign * (along - curv * (across - u0) ** 2) / 4.0 + 0.5)

        strength = upsample(overlay_fn(xs_mm[None, :], ys_mm[:, None]))
        level = float(rng_hard.uniform(0.82, 0.92)) if mode == "bright" else float(rng_hard.uniform(0.0, 0.04))
        level = level + 0.03 * upsample(_smooth_noise(rng_hard, (lh, lw), 15.0 / mm_px / f))
        img -= level
        img *= 1.0 - strength
        img += level
    # signal-dependent noise: sigma * sqrt(0.15 + 0.85 I)
    sig = np.maximum(img, 0.0)
    np.minimum(sig, 1.0, out=sig)
    sig *= 0.85 * noise_sigma**2
    sig += 0.15 * noise_sigma**2
    np.sqrt(sig, out=sig)
    sig *= rng_noise.standard_normal((h, w), dtype=np.float32)
    img += sig
    maxv = (1 << _BITS_STORED) - 1
    img *= maxv
    img += 0.5
    np.maximum(img, 0.0, out=img)
    np.minimum(img, maxv, out=img)
    image = img.astype(np.uint16)  # round half up

    # ---- annotation -----------------------------------------------------------------------------------
    kp = np.zeros((len(ann_verts), 5, 2))
    outlines, boxes = [], np.zeros((len(ann_verts), 4))
    for i, v in enumerate(ann_verts):
        kp[i, :4] = to_px(v.corners)
        kp[i, 4] = to_px(v.sp_tip)
        outlines.append(to_px(v.outline))
        pts = to_px(v.all_points())
        boxes[i] = [max(pts[:, 0].min(), -0.5), max(pts[:, 1].min(), -0.5),
                    min(pts[:, 0].max(), w - 0.5), min(pts[:, 1].max(), h - 0.5)]
    visible = np.ones(kp.shape[:2], dtype=bool)
    flat = kp.reshape(-1, 2)
    hidden = np.zeros(len(flat), dtype=bool)
    if overlay_fn is not None:
        strength_pts = overlay_fn((flat[:, 0] - offset[0]) * sx, (flat[:, 1] - offset[1]) * sy)
        hidden |= strength_pts >= 0.5
    if metal.any():
        hidden |= _bilinear(metal, flat) >= 0.5
    visible = ~hidden.reshape(visible.shape)
    names = get_region(region).scheme.point_names
    levels = list(an.levels)
    if hard_meta is not None:
        hard_meta["hidden_points"] = [[levels[i], names[j]] for i, j in zip(*np.nonzero(~visible))]
        if hard_meta["type"] == "occlusion":
            hard_meta["levels"] = sorted({p[0] for p in hard_meta["hidden_points"]}, key=levels.index)
            hard_meta["overlay_strength_at_points"] = np.round(strength_pts.reshape(visible.shape), 4).tolist()
        if hard_meta["type"] == "implant":
            near = _near_mask(metal, 3.0 / mm_px)
            nz = _bilinear(near, flat).reshape(visible.shape) > 0.5
            hard_meta["affected_points"] = [[levels[i], names[j]] for i, j in zip(*np.nonzero(nz))]
    meta = {
        "generator": "monai_spine.data.synthetic",
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "region": region,
        "hard_case": hard_meta,
        "params": {
            **geo_params,
            "spacing_mm": [sx, sy],
            "fov_mm": [round(w * sx, 3), round(h * sy, 3)],
            "origin_px": [round(float(offset[0]), 4), round(float(offset[1]), 4)],
            "bone_contrast": round(bone_contrast, 4),
            "noise_sigma": round(noise_sigma, 5),
            "blur_sigma_px": round(blur_px, 4),
            "gamma": round(gamma, 4),
            "mu": round(mu, 4),
            "heel": round(heel, 4),
            "view_position": "LL" if (seed % 2 == 0) else "RL",
            **meta_soft,
        },
    }
    ann = SpineAnnotation(
        levels=levels,
        keypoints_px=kp,
        visible=visible,
        region=region,
        scheme="lateral5",
        image=None,
        image_size=(w, h),
        spacing_mm=(sx, sy),
        spacing_source="PixelSpacing",
        boxes_px=boxes,
        outlines_px=outlines,
        meta=meta,
    )
    if return_layers:
        layers = {"bone": bone, "body_index": body_index, "posterior_index": posterior_index, "metal": metal,
                  "occlusion": strength}
        return image, ann, layers
    return image, ann


def _near_mask(metal: np.ndarray, radius_px: float) -> np.ndarray:
    """1 where a pixel is within ``radius_px`` of metal (coverage >= 0.5), else 0 (float32)."""
    inv = (metal < 0.5).astype(np.uint8)
    dist = cv2.distanceTransform(inv, cv2.DIST_L2, 5)
    return (dist <= radius_px).astype(np.float32)


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


# ----------------------------------------------------------------------------------------------------
# data sets and CLI
# ----------------------------------------------------------------------------------------------------


def _worker_init() -> None:
    cv2.setNumThreads(1)  # one process per core already


def _case_seed(seed: int, index: int) -> int:
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1, dtype=np.uint32)[0])


def _case_is_hard(seed: int, index: int, rate: float) -> bool:
    if rate <= 0:
        return False
    if rate >= 1:
        return True
    u = np.random.default_rng(np.random.SeedSequence([int(seed), int(index), 7])).random()
    return bool(u < rate)


def _write_case(args: tuple[str, str, int, int, float, tuple[int, int]]) -> tuple[str, str]:
    out_dir, region, seed, index, rate, size = args
    out = Path(out_dir)
    case_seed = _case_seed(seed, index)
    hard = "auto" if _case_is_hard(seed, index, rate) else None
    image, ann = generate_radiograph(region, case_seed, size=size, hard_case=hard)
    name = f"case_{index:04d}"
    dcm = out / f"{name}.dcm"
    label = out / f"{name}.json"
    pid = "SYN" + hashlib.sha1(f"{region}:{case_seed}".encode()).hexdigest()[:10].upper()
    write_dx_dicom(
        dcm, image, ann.spacing_mm,
        uid_entropy=["monai-spine-synthetic", str(GENERATOR_VERSION), region, str(case_seed)],
        patient_id=pid,
        body_part="CSPINE" if region == "cervical" else "LSPINE",
        view_position=ann.meta["params"]["view_position"],
        series_description=f"synthetic lateral {region} spine",
        instance_number=index + 1,
    )
    ann.image = str(dcm.resolve())
    ann.meta["dataset_seed"] = int(seed)
    ann.meta["index"] = int(index)
    write_annotation(ann, label)
    return dcm.name, label.name


def generate_dataset(
    out_dir: str | os.PathLike,
    region: str,
    n: int,
    seed: int,
    hard_case_rate: float = 0.0,
    size: int | Sequence[int] = (1024, 1024),
    workers: int = 1,
) -> list[Path]:
    """Write ``n`` synthetic cases and a ``dataset.json`` index to ``out_dir``.

    Each case ``i`` gets ``case_XXXX.dcm`` (DICOM DX) and ``case_XXXX.json`` (annotation); its seed is
    derived from ``(seed, i)``, so the files do not depend on ``workers`` and a larger ``n`` extends a
    smaller one. ``dataset.json`` holds ``{"format": "monai-spine-synthetic-dataset", "region", "generator":
    {...parameters}, "data": [{"image": "case_0000.dcm", "label": "case_0000.json"}, ...]}`` with paths
    relative to ``out_dir``.

    Args:
        out_dir: output folder (created).
        region: ``cervical`` or ``lumbar``.
        n: number of cases (>= 0).
        seed: data set seed (>= 0).
        hard_case_rate: probability in [0, 1] that a case is a hard case (its kind drawn at random).
        size: image size, an int or (H, W).
        workers: processes to use (1: in this process).

    Returns:
        The annotation JSON paths, in case order (each names its DICOM image).
    """
    _check_region(region)
    hw = parse_size(size)
    if int(n) < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if not 0.0 <= float(hard_case_rate) <= 1.0:
        raise ValueError(f"hard_case_rate must be in [0, 1], got {hard_case_rate}")
    if int(seed) < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(str(out), region, int(seed), i, float(hard_case_rate), hw) for i in range(int(n))]
    if workers > 1 and len(jobs) > 1:
        # spawn, not fork: the caller may hold threads (torch, OpenCV) that a fork would copy mid-flight
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=int(workers), mp_context=ctx, initializer=_worker_init) as ex:
            names = list(ex.map(_write_case, jobs, chunksize=max(1, len(jobs) // (4 * workers))))
    else:
        names = [_write_case(j) for j in jobs]
    index = {
        "format": "monai-spine-synthetic-dataset",
        "version": 1,
        "region": region,
        "scheme": "lateral5",
        "generator": {
            "module": "monai_spine.data.synthetic",
            "generator_version": GENERATOR_VERSION,
            "seed": int(seed),
            "n": int(n),
            "hard_case_rate": float(hard_case_rate),
            "size": list(hw),
        },
        "data": [{"image": d, "label": j} for d, j in names],
    }
    atomic_write_text(out / "dataset.json", json.dumps(index, indent=1))
    return [out / j for _, j in names]


def existing_cases(out: Path) -> list[Path]:
    """The synthetic data set files already in ``out``: ``dataset.json`` and ``case_<digits>.dcm/.json``."""
    if not out.is_dir():
        return []
    own = [p for p in out.iterdir() if p.is_file() and re.fullmatch(r"case_\d+\.(dcm|json)", p.name)]
    index = out / "dataset.json"
    return sorted(own) + ([index] if index.is_file() else [])
