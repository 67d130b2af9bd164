"""The spine of a synthetic lateral radiograph, drawn in millimetres from a seed.

Part of the generator :mod:`monai_spine.data.synthetic` (its first step): the anatomy tables, the
geometry of the column and the vertebra polygons. Nothing here knows about pixels.

* The column follows a circular arc (:class:`_Arc`, constant curvature) whose tangent turns by the
  random lordosis angle between the superior endplate of the first annotated vertebra and the inferior
  endplate of the last one. Lordosis is convex anteriorly; the patient faces image left, so anterior is
  smaller ``x``.
* Each vertebral body spans an arc interval (its height); its endplates are perpendicular to the arc
  there, which wedges bodies and discs naturally (anterior side taller). The four corners are
  ``AS, PS, AI, PI`` (anterior/posterior, superior/inferior). Each body is turned by a small random
  angle about its centre. The body outline is a closed polyline through the four corners with slightly
  concave endplates and walls; the rendered polygon is that outline, so the keypoints are the rendered
  corners.
* Posterior elements (pedicle, articular pillar / processes, lamina) and a spinous process pointing
  posteriorly-inferiorly whose tip is the keypoint ``SP`` (a vertex of its polygon).
* Unannotated neighbours (C2 with the dens and T1; T12 and the sacrum) are drawn too.

The names are private to the generator (``__all__`` is empty); :func:`_build_spine` draws from the
anatomy random stream only, in a fixed order, so the same seed gives the same column.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

__all__: list[str] = []

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


def _thick_polyline(points: np.ndarray, half_width: float) -> np.ndarray:
    """Polygon of a polyline widened by ``half_width`` on each side (mm or px)."""
    p = np.asarray(points, dtype=np.float64)
    d = np.gradient(p, axis=0)
    d /= np.maximum(np.hypot(d[:, 0], d[:, 1]), 1e-9)[:, None]
    nrm = np.stack([-d[:, 1], d[:, 0]], axis=1)
    return np.concatenate([p + half_width * nrm, (p - half_width * nrm)[::-1]], axis=0)


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
