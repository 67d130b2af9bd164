"""Deterministic synthetic lateral spine radiographs (C3-C7 and L1-L5) with exact keypoints.

The default data of monai-spine: every image is drawn from a seed, in millimetres, and rasterised at a
recorded pixel spacing, so that the keypoints are known exactly and distances can be checked in mm.
:func:`generate_radiograph` draws one film, :func:`generate_dataset` writes a seeded data set of DICOM
DX files and annotations.

Geometry (all in mm, then mapped to pixels with ``x_px = x_mm / sx + ox``, ``y_px = y_mm / sy + oy``):
the column follows a circular arc turned by the random lordosis angle; each vertebral body is a bowed
polygon through its four corners ``AS, PS, AI, PI`` (the rendered polygon is the outline, so the
keypoints are the rendered corners), with posterior elements and a spinous process whose tip is the
keypoint ``SP``; unannotated neighbours (C2 with the dens and T1; T12 and the sacrum) are drawn too.

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

This module holds the recipe (:func:`generate_radiograph`: placement, the steps in order, the
annotation) and the data set writer; the steps live by job in :mod:`~monai_spine.data.synthetic_anatomy`
(the spine in mm), :mod:`~monai_spine.data.synthetic_image` (soft tissue, bone, detector, noise),
:mod:`~monai_spine.data.synthetic_hard_cases` (overlays, implants, hidden points),
:mod:`~monai_spine.data.synthetic_raster` (polygon coverage, smooth fields) and
:mod:`~monai_spine.data.synthetic_dicom` (the DICOM DX writer).
"""

from __future__ import annotations

import hashlib
import json
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
from monai_spine.data.synthetic_anatomy import _ANATOMY, _build_spine, _Vertebra
from monai_spine.data.synthetic_dicom import write_dx_dicom
from monai_spine.data.synthetic_hard_cases import _hard_case, _hidden_points, _record_points, _shoulders
from monai_spine.data.synthetic_image import (
    _add_metal,
    _add_noise_and_quantise,
    _apply_overlay,
    _coarse_grid,
    _detector_image,
    _draw_exposure,
    _Exposure,
    _render_bones,
    _soft_tissue,
)
from monai_spine.data.synthetic_raster import _Placement, _smooth_noise

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
    # separate streams, so that a hard case keeps the anatomy of the same seed's normal case
    ss = np.random.SeedSequence([seed, GENERATOR_VERSION, SYNTH_REGIONS.index(region)])
    rng_anat, rng_app, rng_hard, rng_noise = (np.random.default_rng(c) for c in ss.spawn(4))
    hard_case = _resolve_hard_case(hard_case, rng_hard)

    # the spine in mm, and where it lies in the image
    verts, arc, geo_params = _build_spine(region, rng_anat)
    ann_verts = [v for v in verts if v.annotated]
    place = _place(region, ann_verts, (h, w), spacing_mm, rng_anat)

    # layers: soft tissue, bone, texture and exposure, overlays and metal
    grid = _coarse_grid(arc, place, (h, w))
    soft, other_bones, meta_soft = _soft_tissue(region, arc, ann_verts, grid, place, rng_anat, rng_app)
    bone, body_index, posterior_index = _render_bones(verts, other_bones, place, (h, w), rng_app)
    tex = _smooth_noise(rng_app, (h, w), 0.5 / place.mm_px)  # trabecular texture
    exposure = _draw_exposure(rng_app)
    overlay = _shoulders(region, arc, ann_verts, rng_anat)
    overlay, metal, hard_meta = _hard_case(hard_case, region, arc, ann_verts, overlay, exposure, place, (h, w),
                                           rng_hard)

    # image formation: detector, metal, overlay, noise, 12 bits
    img = _detector_image(bone, tex, soft, exposure, rng_app)
    img = _add_metal(img, metal, exposure.blur_px, place.mm_px, rng_hard)
    overlay_fn, mode = (overlay.strength_fn(arc), overlay.mode) if overlay is not None else (None, "")
    strength = _apply_overlay(img, overlay_fn, mode, grid, place.mm_px, rng_hard)
    image = _add_noise_and_quantise(img, exposure.noise_sigma, _BITS_STORED, rng_noise)

    # annotation: keypoints, what the hard case hides, parameters
    kp, boxes, outlines = _keypoints_px(ann_verts, place, (h, w))
    visible, strength_pts = _hidden_points(kp, overlay_fn, metal, place)
    levels = [v.level for v in ann_verts]
    if hard_meta is not None:
        names = get_region(region).scheme.point_names
        _record_points(hard_meta, kp, visible, strength_pts, metal, levels, names, place.mm_px)
    meta = _meta(region, seed, hard_meta, geo_params, place, (h, w), exposure, meta_soft)
    ann = SpineAnnotation(
        levels=levels,
        keypoints_px=kp,
        visible=visible,
        region=region,
        scheme="lateral5",
        image=None,
        image_size=(w, h),
        spacing_mm=(place.sx, place.sy),
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


def _resolve_hard_case(hard_case: str | None, rng_hard: np.random.Generator) -> str | None:
    """The hard case to draw: ``"auto"`` picks one of :data:`HARD_CASES` (the hard-case stream's first draw)."""
    if hard_case == "auto":
        return str(rng_hard.choice(HARD_CASES))
    if hard_case is not None and hard_case not in HARD_CASES:
        raise ValueError(f"hard_case must be None, 'auto' or one of {HARD_CASES}, got {hard_case!r}")
    return hard_case


def _place(
    region: str,
    ann_verts: list[_Vertebra],
    shape: tuple[int, int],
    spacing_mm: float | Sequence[float] | None,
    rng_anat: np.random.Generator,
) -> _Placement:
    """Choose the pixel spacing (unless given) and the position of the annotated column in the image.

    The drawn spacing makes the column fill a random fraction of the image height (``fill_frac`` of the
    region), at most 80 % of its width, possibly 4 % anisotropic; the column is placed at random inside a
    margin of 4 % of the shorter side (at least 4 px). Draws 3-4 numbers and the 2 of the position from
    the anatomy stream, whether or not the spacing is given.

    Raises:
        ValueError: a given spacing that is not positive, or at which the column does not fit.
    """
    h, w = shape
    an = _ANATOMY[region]
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
    return _Placement(spacing, offset)


def _keypoints_px(
    ann_verts: list[_Vertebra], place: _Placement, shape: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """The annotation's geometry in px: ``(keypoints (N, 5, 2), boxes (N, 4) x0 y0 x1 y1, outlines)``.

    Keypoints are the body corners AS, PS, AI, PI and the spinous-process tip; a box holds all of a
    vertebra's polygons, clipped to the image (pixel edges at -0.5 and W - 0.5).
    """
    h, w = shape
    to_px = place.to_px
    kp = np.zeros((len(ann_verts), 5, 2))
    outlines, boxes = [], np.zeros((len(ann_verts), 4))
    for i, v in enumerate(ann_verts):
        kp[i, :4] = to_px(v.corners)
        kp[i, 4] = to_px(v.sp_tip)
        outlines.append(to_px(v.outline))
        pts = to_px(v.all_points())
        boxes[i] = [max(pts[:, 0].min(), -0.5), max(pts[:, 1].min(), -0.5),
                    min(pts[:, 0].max(), w - 0.5), min(pts[:, 1].max(), h - 0.5)]
    return kp, boxes, outlines


def _meta(
    region: str,
    seed: int,
    hard_meta: dict[str, Any] | None,
    geo_params: dict[str, Any],
    place: _Placement,
    shape: tuple[int, int],
    exposure: _Exposure,
    meta_soft: dict[str, Any],
) -> dict[str, Any]:
    """The annotation's ``meta``: generator, seed, region, hard case and the drawn parameters."""
    h, w = shape
    sx, sy, offset = place.sx, place.sy, place.offset
    return {
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
            "bone_contrast": round(exposure.bone_contrast, 4),
            "noise_sigma": round(exposure.noise_sigma, 5),
            "blur_sigma_px": round(exposure.blur_px, 4),
            "gamma": round(exposure.gamma, 4),
            "mu": round(exposure.mu, 4),
            "heel": round(exposure.heel, 4),
            "view_position": "LL" if (seed % 2 == 0) else "RL",
            **meta_soft,
        },
    }


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
