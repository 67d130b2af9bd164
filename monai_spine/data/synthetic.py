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
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np

from monai_spine.data.annotation import SpineAnnotation, atomic_write_text, write_annotation
from monai_spine.data.keypoints import get_region
from monai_spine.data.synthetic_anatomy import _ANATOMY, _Arc, _build_spine, _rot, _thick_polyline, _Vertebra
from monai_spine.data.synthetic_dicom import write_dx_dicom
from monai_spine.data.synthetic_raster import (
    _add_poly,
    _bilinear,
    _body_profile,
    _coverage_in,
    _near_mask,
    _polygon_patch,
    _smooth_noise,
    _smoothstep,
    _soft_ellipse,
    _window,
)

__all__ = [
    "GENERATOR_VERSION",
    "SYNTH_REGIONS",
    "HARD_CASES",
    "generate_radiograph",
    "generate_dataset",
    "existing_cases",
    "parse_size",
]

GENERATOR_VERSION = 1
#: regions the generator can draw
SYNTH_REGIONS = ("cervical", "lumbar")
#: hard-case kinds, chosen at random when ``hard_case="auto"``
HARD_CASES = ("implant", "low_contrast", "occlusion")

_BITS_STORED = 12

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
