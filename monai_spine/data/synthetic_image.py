"""From the drawn spine to pixels: the layers of a synthetic radiograph and the detector.

Part of the generator :mod:`monai_spine.data.synthetic`, in the order it runs:

* Soft tissue (:func:`_soft_tissue`): the neck with the airway and the angle of the mandible, or the
  abdomen with back muscles, the iliac crests and bowel gas; smooth, so drawn on a coarse grid
  (:class:`_CoarseGrid`) and upsampled.
* Bone (:func:`_render_bones`): anti-aliased cortical, cancellous and posterior-element densities of
  every vertebra, with index maps of the annotated bodies and posterior elements.
* Exposure (:class:`_Exposure`) and the detector (:func:`_detector_image`): trabecular texture, bone
  contrast, attenuation ``1 - exp(-mu * A)``, Gaussian blur, windowing, gamma and the heel-effect
  gradient; then metal (:func:`_add_metal`) and an overlay (:func:`_apply_overlay`) if any.
* Signal-dependent noise and quantisation to 12 bits, MONOCHROME2, bone bright
  (:func:`_add_noise_and_quantise`).

Each step draws from the random stream it is given, in a fixed order (the appearance stream for soft
tissue texture, bone densities, exposure and windowing; the anatomy stream for soft-tissue anatomy; the
hard-case stream for metal and overlays; the noise stream for the noise).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import cv2
import numpy as np

from monai_spine.data.synthetic_anatomy import _Arc, _thick_polyline, _Vertebra
from monai_spine.data.synthetic_raster import (
    _add_poly,
    _body_profile,
    _coverage_in,
    _Placement,
    _smooth_noise,
    _smoothstep,
    _soft_ellipse,
    _window,
)

__all__: list[str] = []


@dataclass(frozen=True)
class _CoarseGrid:
    """The grid of ``f x f`` pixel blocks on which the smooth layers are drawn before upsampling.

    Coarse pixel ``j`` has its centre at full-resolution ``x = (j + 0.5) f - 0.5``.

    Attributes:
        f: block side in px.
        shape: (lh, lw) coarse size; ``full_shape``: (H, W) of the image.
        xs_mm, ys_mm: (lw,) and (lh,) float32 x and y in mm of the coarse pixel centres.
        u_map, s_map: (lh, lw) curvilinear coordinates (mm) about the column's arc: posterior offset and
            arc length.
        u_skin: (lh, lw) posterior offset about the flatter arc the skin lines follow.
    """

    f: int
    shape: tuple[int, int]
    full_shape: tuple[int, int]
    xs_mm: np.ndarray
    ys_mm: np.ndarray
    u_map: np.ndarray
    s_map: np.ndarray
    u_skin: np.ndarray

    def upsample(self, a: np.ndarray) -> np.ndarray:
        """A (lh, lw) layer bilinearly upsampled to (H, W) float32."""
        f, (lh, lw), (h, w) = self.f, self.shape, self.full_shape
        if f == 1:
            return np.ascontiguousarray(a, dtype=np.float32)
        big = cv2.resize(a.astype(np.float32), (lw * f, lh * f), interpolation=cv2.INTER_LINEAR)
        return np.ascontiguousarray(big[:h, :w])


def _coarse_grid(arc: _Arc, place: _Placement, shape: tuple[int, int]) -> _CoarseGrid:
    """The coarse grid of an (H, W) image: blocks of about 1/256 of the shorter side."""
    h, w = shape
    sx, sy, offset = place.sx, place.sy, place.offset
    f = max(1, int(round(min(h, w) / 256)))
    lh, lw = -(-h // f), -(-w // f)
    xs_mm = (((np.arange(lw) + 0.5) * f - 0.5 - offset[0]) * sx).astype(np.float32)
    ys_mm = (((np.arange(lh) + 0.5) * f - 0.5 - offset[1]) * sy).astype(np.float32)
    u_map, s_map = arc.to_us(xs_mm[None, :], ys_mm[:, None])
    # skin lines follow a flatter curve than the column
    skin_arc = _Arc(kappa=0.35 * arc.kappa, alpha_m=arc.alpha_m, s_mid=arc.s_mid)
    u_skin, _ = skin_arc.to_us(xs_mm[None, :], ys_mm[:, None])
    return _CoarseGrid(f, (lh, lw), (h, w), xs_mm, ys_mm, u_map, s_map, u_skin)


# ----------------------------------------------------------------------------------------------------
# soft tissue
# ----------------------------------------------------------------------------------------------------


def _soft_tissue(
    region: str,
    arc: _Arc,
    ann_verts: list[_Vertebra],
    grid: _CoarseGrid,
    place: _Placement,
    rng_anat: np.random.Generator,
    rng_app: np.random.Generator,
) -> tuple[np.ndarray, list[np.ndarray], dict[str, Any]]:
    """The soft-tissue thickness layer and the unannotated bones drawn with it.

    Returns:
        ``(soft, other_bones, meta_soft)``: (H, W) float32 relative thickness (>= 0), polygons in mm of
        unannotated bones (the mandible), and the parameters recorded in the annotation.
    """
    lh, lw = grid.shape
    soft = np.zeros((lh, lw), dtype=np.float32)
    d_mean = float(np.mean([v.depth for v in ann_verts]))
    sp_u = max(float(arc.to_us(*v.sp_tip)[0]) for v in ann_verts)
    s_first = float(arc.to_us(*ann_verts[0].corners[0])[1])
    s_last = float(arc.to_us(*ann_verts[-1].corners[2])[1])
    other_bones: list[np.ndarray] = []  # unannotated bones (mm polygons)
    if region == "cervical":
        meta_soft = _neck(soft, other_bones, arc, grid, d_mean, sp_u, s_first, s_last, rng_anat)
    else:
        meta_soft = _abdomen(soft, arc, ann_verts, grid, place, d_mean, sp_u, s_first, s_last, rng_anat)
    soft *= 1.0 + 0.07 * _smooth_noise(rng_app, (lh, lw), 25.0 / place.mm_px / grid.f)
    np.maximum(soft, 0.0, out=soft)
    return grid.upsample(soft), other_bones, meta_soft


def _neck(
    soft: np.ndarray,
    other_bones: list[np.ndarray],
    arc: _Arc,
    grid: _CoarseGrid,
    d_mean: float,
    sp_u: float,
    s_first: float,
    s_last: float,
    rng_anat: np.random.Generator,
) -> dict[str, Any]:
    """Add the neck (and its airway) to the coarse ``soft`` layer; the mandible goes to ``other_bones``."""
    u_map, s_map, u_skin = grid.u_map, grid.s_map, grid.u_skin
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
    return {"neck_mm": [round(u_ant, 3), round(u_post, 3)], "airway_width_mm": round(aw, 3)}


def _abdomen(
    soft: np.ndarray,
    arc: _Arc,
    ann_verts: list[_Vertebra],
    grid: _CoarseGrid,
    place: _Placement,
    d_mean: float,
    sp_u: float,
    s_first: float,
    s_last: float,
    rng_anat: np.random.Generator,
) -> dict[str, Any]:
    """Add the abdomen, back muscles, iliac crests and bowel gas to the coarse ``soft`` layer."""
    u_map, s_map, u_skin, f = grid.u_map, grid.s_map, grid.u_skin, grid.f
    mm_px, to_px = place.mm_px, place.to_px
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
    return {"body_mm": [round(u_ant, 3), round(u_post, 3)], "iliac_crest_s_mm": round(ic_s, 3)}


# ----------------------------------------------------------------------------------------------------
# bone
# ----------------------------------------------------------------------------------------------------


def _render_bones(
    verts: list[_Vertebra],
    other_bones: list[np.ndarray],
    place: _Placement,
    shape: tuple[int, int],
    rng_app: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rasterise the bone density and the index maps of the annotated vertebrae.

    Returns:
        ``(bone, body_index, posterior_index)``: (H, W) float32 density (cortical body, cancellous
        inside, posterior elements outside the body; unannotated bones at 0.8 of the cortex), and (H, W)
        int16 indices of the annotated vertebra covering at least half of a pixel with its body or its
        posterior elements (-1 elsewhere; overlapping posterior elements keep the upper vertebra).
    """
    h, w = shape
    to_px = place.to_px
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
    return bone, body_index, posterior_index


# ----------------------------------------------------------------------------------------------------
# exposure, detector, noise
# ----------------------------------------------------------------------------------------------------


@dataclass
class _Exposure:
    """The drawn imaging parameters (a ``"low_contrast"`` hard case changes the first three).

    Attributes:
        bone_contrast: factor on the bone density.
        noise_sigma: noise standard deviation at full signal (fraction of the range).
        blur_px: Gaussian blur sigma in px.
        gamma: display gamma.
        mu: attenuation coefficient of the detector response ``1 - exp(-mu A)``.
        heel: relative brightness gradient across the image width (heel effect).
    """

    bone_contrast: float
    noise_sigma: float
    blur_px: float
    gamma: float
    mu: float
    heel: float


def _draw_exposure(rng_app: np.random.Generator) -> _Exposure:
    """Draw the imaging parameters from the appearance stream (6 numbers, in field order)."""
    bone_contrast = float(rng_app.uniform(0.85, 1.15))
    noise_sigma = float(rng_app.uniform(0.012, 0.03))
    blur_px = float(rng_app.uniform(0.4, 1.1))
    gamma = float(rng_app.uniform(0.8, 1.3))
    mu = float(rng_app.uniform(1.0, 1.4))
    heel = float(rng_app.uniform(-0.08, 0.08))
    return _Exposure(bone_contrast, noise_sigma, blur_px, gamma, mu, heel)


def _detector_image(
    bone: np.ndarray, tex: np.ndarray, soft: np.ndarray, exposure: _Exposure, rng_app: np.random.Generator
) -> np.ndarray:
    """Attenuation to a windowed image in [0, 1] (before metal, overlay and noise).

    ``A = bone * contrast * (1 + 0.18 tex) + soft``; the detector gives ``1 - exp(-mu A)`` (bone
    bright), blurred, windowed between the 1st and 99.7th percentiles widened by a random margin, raised
    to ``gamma`` and multiplied by the heel gradient. ``tex`` (unit-std texture) is changed in place.

    Returns:
        (H, W) float32.
    """
    h, w = bone.shape
    tex *= 0.18 * exposure.bone_contrast
    tex += exposure.bone_contrast
    att = bone * tex  # bone attenuation with trabecular texture
    att += soft
    att *= -exposure.mu
    img = cv2.exp(att)
    np.subtract(1.0, img, out=img)  # detector response 1 - exp(-mu A), bone bright
    img = cv2.GaussianBlur(img, (0, 0), sigmaX=exposure.blur_px, borderType=cv2.BORDER_REFLECT)
    p_lo, p_hi = np.percentile(img[:: max(1, h // 128), :: max(1, w // 128)], [1.0, 99.7])
    lo = p_lo - float(rng_app.uniform(0.0, 0.05))
    hi = p_hi + float(rng_app.uniform(0.0, 0.05))
    img -= lo
    img *= 1.0 / max(hi - lo, 1e-3)
    np.maximum(img, 0.0, out=img)
    np.minimum(img, 1.0, out=img)
    img = cv2.pow(img, exposure.gamma)
    img *= (1.0 + exposure.heel * (np.arange(w, dtype=np.float32) / w - 0.5))[None, :]
    return img


def _add_metal(
    img: np.ndarray, metal: np.ndarray, blur_px: float, mm_px: float, rng_hard: np.random.Generator
) -> np.ndarray:
    """Metal over the image: near-white under the (blurred) coverage with a dark halo; ``img`` if none."""
    if not metal.any():
        return img
    m = cv2.GaussianBlur(metal, (0, 0), sigmaX=max(0.5, blur_px))
    halo = np.maximum(cv2.GaussianBlur(metal, (0, 0), sigmaX=3.0 / mm_px) - m, 0.0)
    return img * (1.0 - m) + m * float(rng_hard.uniform(0.96, 1.0)) - 0.15 * halo


def _apply_overlay(
    img: np.ndarray,
    overlay_fn: Callable | None,
    mode: str,
    grid: _CoarseGrid,
    mm_px: float,
    rng_hard: np.random.Generator,
) -> np.ndarray:
    """Blend ``img`` in place towards the overlay's level by its strength.

    The level is bright (0.82-0.92) for a ``"bright"`` overlay and near black for a ``"dark"`` one, with
    a little smooth variation.

    Returns:
        (H, W) float32 overlay strength in [0, 1] (zeros without an overlay).
    """
    if overlay_fn is None:
        return np.zeros(grid.full_shape, dtype=np.float32)
    strength = grid.upsample(overlay_fn(grid.xs_mm[None, :], grid.ys_mm[:, None]))
    level = float(rng_hard.uniform(0.82, 0.92)) if mode == "bright" else float(rng_hard.uniform(0.0, 0.04))
    level = level + 0.03 * grid.upsample(_smooth_noise(rng_hard, grid.shape, 15.0 / mm_px / grid.f))
    img -= level
    img *= 1.0 - strength
    img += level
    return strength


def _add_noise_and_quantise(
    img: np.ndarray, noise_sigma: float, bits_stored: int, rng_noise: np.random.Generator
) -> np.ndarray:
    """Add signal-dependent noise ``sigma * sqrt(0.15 + 0.85 I)`` and quantise to ``bits_stored`` bits.

    Returns:
        (H, W) uint16 in ``[0, 2**bits_stored - 1]``, rounded half up (``img`` is changed in place).
    """
    h, w = img.shape
    sig = np.maximum(img, 0.0)
    np.minimum(sig, 1.0, out=sig)
    sig *= 0.85 * noise_sigma**2
    sig += 0.15 * noise_sigma**2
    np.sqrt(sig, out=sig)
    sig *= rng_noise.standard_normal((h, w), dtype=np.float32)
    img += sig
    maxv = (1 << bits_stored) - 1
    img *= maxv
    img += 0.5
    np.maximum(img, 0.0, out=img)
    np.minimum(img, maxv, out=img)
    return img.astype(np.uint16)  # round half up
