"""The vertebra detector's codec: level centres and boxes <-> centre heatmaps (CenterNet style).

Encoders turn annotated centres and boxes (net pixels, see :mod:`transforms.detection`) into the
network's training target; decoders turn a network output back into centres, boxes and scores.
Inference (:class:`~monai_spine.inference.detector.VertebraDetector`) and training
(:mod:`monai_spine.engines.detector`) both use this module, so prediction imports no training code.

Pairs:

* :func:`encode_centre_heatmaps` <-> :func:`decode_detections` (``"sequence"`` or ``"argmax"``): one
  Gaussian heatmap per level, ``(L + 5, H, W)`` target (L heatmaps, four box distances in fractions of
  the net size, a box mask) against an ``(L + 4, H, W)`` network output. The Gaussian is scaled so the
  pixel nearest the centre is exactly 1; its log is a paraboloid, so the decoder's three-point
  parabola fit on the log-heatmap recovers a centre to sub-pixel precision.
* :func:`encode_chain_target` <-> :func:`decode_detections` (``"chain"``): one "any vertebra" heatmap
  (the maximum of the level heatmaps), optionally a level channel (``level / (L - 1)``), the box
  channels and masks; the decoder labels the peaks with levels by their spacing along the spine
  (:func:`~monai_spine.codecs.chain.assign_levels_chain` against
  :func:`~monai_spine.codecs.chain.spacing_profile`, anchored by the level channel and
  :func:`~monai_spine.codecs.chain.level_height_fractions`), and
  :func:`~monai_spine.codecs.chain.complete_chain` places the levels it did not find.
* :func:`vertebra_centres_px`: the vertebral-body centre of each annotated vertebra, from its
  keypoints, outline or box (image pixels): where the encoders' centres come from.

Points are ``(x, y)`` pixels with pixel centres at integer coordinates; boxes ``(x0, y0, x1, y1)``;
absent levels have NaN centres and boxes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from monai_spine.codecs._arrays import _np
from monai_spine.codecs.chain import _level_from_y_frac, assign_levels_chain
from monai_spine.data.keypoints import get_scheme

__all__ = [
    "NUM_BOX_CHANNELS",
    "TARGET_EXTRA_CHANNELS",
    "vertebra_centres_px",
    "encode_centre_heatmaps",
    "encode_chain_target",
    "decode_detections",
]

#: channels of a network output after the heatmaps: left, top, right, bottom distances (fractions of the
#: input W, H, W, H); :class:`~monai_spine.networks.detector.VertebraDetectorNet` is built to this format
NUM_BOX_CHANNELS = 4
#: channels of a target after the L heatmaps: left, top, right, bottom, box mask
TARGET_EXTRA_CHANNELS = NUM_BOX_CHANNELS + 1


# ---------------------------------------------------------------------------------------------- encoding
def vertebra_centres_px(
    keypoints_px: np.ndarray,
    visible: np.ndarray,
    scheme: str,
    outlines_px: Sequence[np.ndarray] | None = None,
    boxes_px: np.ndarray | None = None,
) -> np.ndarray:
    """Vertebral-body centre of each vertebra, ``(N, 2)`` image pixels (NaN when nothing is known).

    The first that applies: the mean of the four body corners when all four are visible; the centre
    of the bounding box of the body outline; the mean of the visible corners when at least two are
    visible; the centre of ``boxes_px``.

    Args:
        keypoints_px: ``(N, K, 2)``; visible: ``(N, K)``; scheme: keypoint scheme name (its corner
            indices); outlines_px: N body outlines ``(M_i, 2)`` (empty or None: none); boxes_px: ``(N, 4)``.
    """
    kp = np.asarray(keypoints_px, dtype=np.float64)
    vis = np.asarray(visible, dtype=bool) & np.all(np.isfinite(kp), axis=-1)
    idx = list(get_scheme(scheme).corner_indices)
    out = np.full((kp.shape[0], 2), np.nan)
    for i in range(kp.shape[0]):
        cv = vis[i, idx]
        corners = kp[i, idx]
        if cv.all():
            out[i] = corners.mean(0)
            continue
        if outlines_px is not None and i < len(outlines_px) and len(outlines_px[i]):
            o = np.asarray(outlines_px[i], dtype=np.float64)
            o = o[np.all(np.isfinite(o), axis=-1)]
            if len(o):
                out[i] = 0.5 * (o.min(0) + o.max(0))
                continue
        if cv.sum() >= 2:
            out[i] = corners[cv].mean(0)
            continue
        if boxes_px is not None and np.all(np.isfinite(boxes_px[i])):
            b = np.asarray(boxes_px[i], dtype=np.float64)
            out[i] = [(b[0] + b[2]) / 2, (b[1] + b[3]) / 2]
    return out


def _centre_window(cx: float, cy: float, h: int, w: int, r: int) -> tuple[int, int, tuple[slice, slice]] | None:
    """The pixel ``(px, py)`` nearest to a centre and the ``(2r + 1)^2`` window around it (clipped to the
    ``h x w`` frame), or None when the centre lies outside ``[-0.5, w - 0.5] x [-0.5, h - 0.5]``."""
    if not (-0.5 <= cx <= w - 0.5 and -0.5 <= cy <= h - 0.5):
        return None
    px = int(np.clip(np.floor(cx + 0.5), 0, w - 1))
    py = int(np.clip(np.floor(cy + 0.5), 0, h - 1))
    return px, py, (slice(max(py - r, 0), py + r + 1), slice(max(px - r, 0), px + r + 1))


def encode_centre_heatmaps(
    centres_net_px: Any,
    boxes_net_px: Any = None,
    present: Any = None,
    spatial_size: Sequence[int] = (256, 256),
    sigma_px: float = 2.0,
    box_radius_px: int = 1,
) -> np.ndarray:
    """Centres and boxes in net pixels to the ``(L + 5, H, W)`` float32 per-level training target.

    Channels ``0 .. L-1``: one Gaussian per present level, ``exp(-d^2 / 2 sigma^2)`` around the
    continuous centre, scaled so that the pixel nearest to the centre is exactly 1; ``L .. L+3``: the
    box as distances from the centre to its left, top, right and bottom edges, in fractions of
    ``W``, ``H``, ``W``, ``H``, written in a ``(2r + 1)^2`` window around the centre pixel; ``L + 4``: 1
    in those windows, else 0. A level is left empty (all-zero channel, no box) when it is absent, its
    centre is not finite, or its centre lies outside the net frame ``[-0.5, W - 0.5] x [-0.5, H - 0.5]``.
    Decoded by :func:`decode_detections` (with ``apply_sigmoid=False`` for the target itself).

    Args:
        centres_net_px: ``(L, 2)`` level centres, net pixels (NaN: absent).
        boxes_net_px: ``(L, 4)`` boxes, net pixels (None: no box targets, mask 0).
        present: ``(L,)`` bool (None: the finite centres).
        spatial_size: ``(H, W)`` of the network input.
        sigma_px: Gaussian sigma of the centre peaks, net pixels.
        box_radius_px: half-size ``r`` of the box window (0: the centre pixel only).

    Raises:
        ValueError: a shape does not match, ``sigma_px <= 0`` or ``box_radius_px < 0``.
    """
    h, w = (int(v) for v in spatial_size)
    if not float(sigma_px) > 0:
        raise ValueError(f"sigma_px must be positive, got {sigma_px}")
    if int(box_radius_px) < 0:
        raise ValueError(f"box_radius_px must be >= 0, got {box_radius_px}")
    c = np.asarray(_np(centres_net_px), dtype=np.float64)
    if c.ndim != 2 or c.shape[-1] != 2:
        raise ValueError(f"centres_net_px must have shape (L, 2), got {c.shape}")
    n_lev = c.shape[0]
    boxes = None
    if boxes_net_px is not None:
        boxes = np.asarray(_np(boxes_net_px), dtype=np.float64)
        if boxes.shape != (n_lev, 4):
            raise ValueError(f"boxes_net_px must have shape ({n_lev}, 4), got {boxes.shape}")
    ok = np.all(np.isfinite(c), axis=-1)
    if present is not None:
        pres = np.asarray(_np(present), dtype=bool).reshape(-1)
        if pres.shape != (n_lev,):
            raise ValueError(f"present must have shape ({n_lev},), got {pres.shape}")
        ok &= pres
    out = np.zeros((n_lev + TARGET_EXTRA_CHANNELS, h, w), dtype=np.float32)
    xs, ys = np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64)
    two_s2 = 2.0 * float(sigma_px) ** 2
    r = int(box_radius_px)
    for lev in np.nonzero(ok)[0]:
        cx, cy = c[lev]
        win = _centre_window(cx, cy, h, w, r)
        if win is None:
            continue
        px, py, sl = win
        # separable Gaussian, normalised so the nearest pixel is exactly 1
        gx = np.exp(-((xs - cx) ** 2 - (px - cx) ** 2) / two_s2)
        gy = np.exp(-((ys - cy) ** 2 - (py - cy) ** 2) / two_s2)
        out[lev] = np.minimum(np.outer(gy, gx), 1.0)
        out[lev, py, px] = 1.0
        if boxes is None or not np.all(np.isfinite(boxes[lev])):
            continue
        x0, y0, x1, y1 = boxes[lev]
        ltrb = np.array([(cx - x0) / w, (cy - y0) / h, (x1 - cx) / w, (y1 - cy) / h], dtype=np.float32)
        out[n_lev : n_lev + 4, sl[0], sl[1]] = ltrb[:, None, None]
        out[n_lev + 4, sl[0], sl[1]] = 1.0
    return out


def encode_chain_target(
    centres_net_px: Any,
    boxes_net_px: Any = None,
    present: Any = None,
    spatial_size: Sequence[int] = (256, 256),
    sigma_px: float = 2.0,
    box_radius_px: int = 1,
    level_channel: bool = True,
    levels_in_order: bool | None = None,
) -> np.ndarray:
    """Centres and boxes in net pixels to the single-heatmap target of the ``chain`` detector.

    Channel 0 is the maximum of the :func:`encode_centre_heatmaps` level heatmaps ("any vertebra").
    With ``level_channel``, channel 1 holds ``level / (L - 1)`` in the ``(2r + 1)^2`` window around each
    present centre inside the net frame and the last channel marks those windows (none when
    ``levels_in_order`` is False: a mislabelled film teaches no level); then the four box channels and
    the box mask. Decoded by :func:`decode_detections` with ``method="chain"``.

    Args:
        centres_net_px, boxes_net_px, present, spatial_size, sigma_px, box_radius_px: see
            :func:`encode_centre_heatmaps`.
        level_channel: add the level target and its mask.
        levels_in_order: whether the film's present centres run top to bottom in level order
            (None: judged from the net-pixel ``y`` of the present finite centres).

    Returns:
        float32 ``(1 + 5, H, W)`` without the level channel, ``(2 + 5 + 1, H, W)`` with it.

    Raises:
        ValueError: see :func:`encode_centre_heatmaps`.
    """
    hn, wn = (int(v) for v in spatial_size)
    c = np.asarray(_np(centres_net_px), dtype=np.float64)
    t = encode_centre_heatmaps(c, boxes_net_px, present, (hn, wn), sigma_px, box_radius_px)
    n_lev = c.shape[0]
    heat = t[:n_lev].max(0, keepdims=True)
    if not level_channel:
        return np.concatenate([heat, t[n_lev:]], 0).astype(np.float32)
    lvl = np.zeros((2, hn, wn), dtype=np.float32)  # level / (L - 1), its mask
    pres = np.all(np.isfinite(c), -1)
    if present is not None:
        pres &= np.asarray(_np(present), dtype=bool).reshape(-1)
    if levels_in_order is None:
        levels_in_order = bool(pres.sum() >= 1 and np.all(np.diff(c[pres, 1]) > 0))
    if levels_in_order:
        r = int(box_radius_px)
        for k in np.flatnonzero(pres):
            win = _centre_window(*c[k], hn, wn, r)
            if win is None:
                continue
            sl = win[2]
            lvl[0][sl] = k / max(n_lev - 1, 1)
            lvl[1][sl] = 1.0
    return np.concatenate([heat, lvl[:1], t[n_lev:], lvl[1:]], 0).astype(np.float32)


# ---------------------------------------------------------------------------------------------- decoding
def _parabola_offset(lm: float, l0: float, lp: float) -> float:
    """Vertex of the parabola through (-1, lm), (0, l0), (1, lp), clipped to [-0.5, 0.5] (0 if not a maximum)."""
    den = lm - 2.0 * l0 + lp
    if not (np.isfinite(den) and den < 0):
        return 0.0
    return float(np.clip(0.5 * (lm - lp) / den, -0.5, 0.5))


def _refine(heat: np.ndarray, x: int, y: int) -> tuple[float, float]:
    """Sub-pixel peak of ``heat`` (H, W) near pixel (x, y): parabola on the log values along x and y."""
    h, w = heat.shape
    fx, fy = float(x), float(y)
    if 0 < x < w - 1:
        fx += _parabola_offset(*np.log(np.maximum(heat[y, x - 1 : x + 2], 1e-12)))
    if 0 < y < h - 1:
        fy += _parabola_offset(*np.log(np.maximum(heat[y - 1 : y + 2, x], 1e-12)))
    return fx, fy


def _local_maxima(heat: np.ndarray, radius: int, threshold: float, max_count: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixels of ``heat`` (H, W) that are the maximum of their ``(2r+1)^2`` window and ``>= threshold``,
    strongest first, at most ``max_count``; returns ``(xs, ys)``."""
    from scipy.ndimage import maximum_filter

    peak = (heat == maximum_filter(heat, size=2 * radius + 1, mode="constant", cval=-np.inf)) & (heat >= threshold)
    ys, xs = np.nonzero(peak)
    order = np.argsort(-heat[ys, xs], kind="stable")[:max_count]
    return xs[order], ys[order]


def _monotone_assignment(weights: np.ndarray, gap_penalty: float = 0.5) -> list[tuple[int, int]]:
    """Pairs ``(level, candidate)`` strictly increasing in both that maximise the summed ``weights`` minus
    ``gap_penalty`` for every level or candidate skipped *between* two pairs.

    Skips before the first and after the last pair are free (the image may show unannotated
    neighbours above and below, and need not show every level), but inside the sequence, vertebrae
    are contiguous: leaving out a candidate (a double peak, a false blob) or a level (a vertebra the
    network missed) costs ``gap_penalty``. ``0`` allows any order-preserving pairing; a large value
    forces consecutive levels on consecutive candidates. Dynamic programming in ``O(L n)``.

    Args:
        weights: ``(L, n)`` score of level ``l`` at candidate ``i`` (candidates ordered top to bottom).
        gap_penalty: cost of one interior skip (in the unit of the weights).
    """
    n_lev, n = weights.shape
    if n_lev == 0 or n == 0:
        return []
    lam = float(gap_penalty)
    score = np.full((n_lev, n), -np.inf)
    back = np.full((n_lev, n, 2), -1, dtype=np.int64)  # previous pair of the best chain ending at (l, i)
    best = np.full((n_lev, n), -np.inf)  # max over l' <= l, i' <= i of score[l', i'] + lam * (l' + i')
    best_at = np.zeros((n_lev, n, 2), dtype=np.int64)
    for lev in range(n_lev):
        for i in range(n):
            gain, prev = 0.0, (-1, -1)
            if lev > 0 and i > 0:
                chained = best[lev - 1, i - 1] - lam * (lev + i - 2)
                if chained > gain:
                    gain, prev = chained, tuple(best_at[lev - 1, i - 1])
            score[lev, i] = weights[lev, i] + gain
            back[lev, i] = prev
            cands = [(score[lev, i] + lam * (lev + i), (lev, i))]
            if lev > 0:
                cands.append((best[lev - 1, i], tuple(best_at[lev - 1, i])))
            if i > 0:
                cands.append((best[lev, i - 1], tuple(best_at[lev, i - 1])))
            val, at = max(cands, key=lambda c: c[0])
            best[lev, i], best_at[lev, i] = val, at
    lev, i = np.unravel_index(int(np.argmax(score)), score.shape)
    if score[lev, i] <= 0:
        return []
    pairs: list[tuple[int, int]] = []
    while lev >= 0 and i >= 0:
        pairs.append((int(lev), int(i)))
        lev, i = back[lev, i]
    return pairs[::-1]


def _decode_chain(p: np.ndarray, score_threshold: float, apply_sigmoid: bool, refine: bool, nms_radius_px: int,
                  candidate_fraction: float, profile: Any, chain_kwargs: Mapping[str, Any] | None,
                  level_y_frac: Any = None, y_frac_map: Sequence[float] | None = None,
                  peak_cost: Callable[[np.ndarray, float], np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """The ``chain`` method of :func:`decode_detections` (``p``: ``(1 + 4, H, W)`` float64)."""
    if profile is None:
        raise ValueError("decode_detections: method 'chain' needs the spacing profile (L - 1,)")
    if p.shape[0] not in (1 + NUM_BOX_CHANNELS, 2 + NUM_BOX_CHANNELS):
        raise ValueError(f"decode_detections: method 'chain' expects (1 + 4, H, W) or (2 + 4, H, W), got shape {p.shape}")
    prof = np.asarray(_np(profile), dtype=np.float64).reshape(-1)
    n_lev = prof.size + 1
    h, w = p.shape[1:]
    heat = p[0]
    if apply_sigmoid:
        heat = 1.0 / (1.0 + np.exp(-np.clip(heat, -60, 60)))
    level_map = None
    if p.shape[0] == 2 + NUM_BOX_CHANNELS:  # channel 1: the level position, logit of level / (L - 1)
        level_map = (n_lev - 1) / (1.0 + np.exp(-np.clip(p[1], -60, 60)))
        p = np.concatenate([p[:1], p[2:]], 0)
    xs, ys = _local_maxima(heat, int(nms_radius_px), float(candidate_fraction) * float(score_threshold),
                           max_count=2 * n_lev + 4)
    pts = np.array([_refine(heat, x, y) if refine else (x, y) for x, y in zip(xs, ys)], dtype=np.float64)
    sc = heat[ys, xs] if xs.size else np.zeros(0)
    kw = dict(chain_kwargs or {})
    guesses, weights = [], []
    w_ch, w_pos = float(kw.pop("channel_weight", 1.0)), float(kw.pop("position_weight", 1.0))
    if level_map is not None and xs.size and w_ch > 0:
        guesses.append(level_map[ys, xs])
        weights.append(w_ch)
    if level_y_frac is not None and y_frac_map is not None and xs.size and w_pos > 0:
        a, b = (float(v) for v in y_frac_map)
        guesses.append(_level_from_y_frac(a * pts.reshape(-1, 2)[:, 1] + b, level_y_frac))
        weights.append(w_pos)
    est = np.stack(guesses, -1) if guesses else None
    lev, scale, _ = assign_levels_chain(pts.reshape(-1, 2), sc, prof, level_estimates=est,
                                        level_weight=weights if guesses else 1.0, **kw)
    if peak_cost is not None and xs.size >= 2 and np.isfinite(scale):
        # second pass: the level anchor sees each peak at the film's level spacing found by the first
        cost = peak_cost(pts.reshape(-1, 2), float(scale) * float(np.median(prof)))
        lev, scale, _ = assign_levels_chain(pts.reshape(-1, 2), sc, prof, level_estimates=est,
                                            level_weight=weights if guesses else 1.0, level_cost=cost, **kw)
    scores = np.zeros(n_lev)
    centres = np.full((n_lev, 2), np.nan)
    boxes = np.full((n_lev, 4), np.nan)
    for i in np.flatnonzero(lev >= 0):
        if sc[i] < score_threshold:
            continue
        k = lev[i]
        scores[k], centres[k] = sc[i], pts[i]
        ltrb = np.maximum(p[1:, ys[i], xs[i]], 0.0) * np.array([w, h, w, h], dtype=np.float64)
        boxes[k] = np.concatenate([pts[i] - ltrb[:2], pts[i] + ltrb[2:]])
    detected = np.all(np.isfinite(centres), -1)
    return {"scores": scores, "centres_net_px": centres, "boxes_net_px": boxes, "detected": detected,
            "scale": np.asarray(scale), "candidates_net_px": pts.reshape(-1, 2), "candidate_scores": sc}


def decode_detections(
    pred: Any,
    score_threshold: float = 0.2,
    apply_sigmoid: bool = True,
    refine: bool = True,
    method: str = "sequence",
    nms_radius_px: int = 2,
    gap_penalty: float = 0.5,
    candidate_fraction: float = 0.5,
    profile: Any = None,
    chain_kwargs: Mapping[str, Any] | None = None,
    level_y_frac: Any = None,
    y_frac_map: Sequence[float] | None = None,
    peak_cost: Callable[[np.ndarray, float], np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """Level centres, boxes and scores from one network output.

    A third method, ``"chain"``, decodes a network with a single "any vertebra" heatmap channel
    (``pred`` ``(1 + 4, H, W)``, or ``(2 + 4, H, W)`` with a level channel: the logit of
    ``level / (L - 1)`` read at each peak, :class:`~monai_spine.losses.detection.ChainDetectionLoss`): the peaks of that channel
    (local maxima as for ``sequence``, scores ``>= candidate_fraction * score_threshold``) get levels by
    :func:`assign_levels_chain` from their spacing along the spine against ``profile`` (``(L - 1,)``,
    required; ``chain_kwargs`` go to :func:`assign_levels_chain`) and the level channel's estimates;
    the result has ``L = len(profile) + 1`` rows, a ``scale`` entry (net pixels per profile unit) and
    the peaks that took part (``candidates_net_px`` ``(P, 2)``, ``candidate_scores`` ``(P,)``).
    With ``level_y_frac`` (``(L,)``: the mean height of each level's centre as a fraction of the film's
    height on the training films) and ``y_frac_map`` (``(a, b)``: a net row ``v`` is at ``a * v + b`` of
    the film's height) each peak also gets the level its height on the film suggests (interpolated,
    extrapolated linearly beyond the ends). ``chain_kwargs`` may weigh the two guesses with
    ``channel_weight`` and ``position_weight`` (defaults 1 and 1); the rest goes to
    :func:`assign_levels_chain`. With ``peak_cost`` (``f(points_net_px (P, 2), spacing_net_px) -> (P, L)``,
    e.g. the level anchor of :mod:`monai_spine.inference.level_anchor`) the chain is assigned twice: the
    first pass gives the film's level spacing, the second adds ``f``'s costs to every (peak, level).

    Two methods:

    * ``"argmax"``: each level independently at the argmax of its own channel (score: its peak
      probability; detected when ``>= score_threshold``). Every level gets a centre, detected or not.
    * ``"sequence"`` (default): the candidate vertebrae are the local maxima (``(2r+1)^2`` window,
      ``r = nms_radius_px``) of the maximum over the level channels with a value ``>=
      candidate_fraction * score_threshold`` (the value is the score: how sure the network is that a
      vertebra is there; weak candidates take part in the assignment, so that one faint vertebra
      does not shift the levels of the others, but a level is detected only where its score reaches
      ``score_threshold``); ordered top to bottom (``y``,
      as levels run in every radiograph of the project), they get levels by the order-preserving
      assignment that maximises the summed probability of the assigned level at each vertebra, less
      ``gap_penalty`` per level or vertebra skipped inside the sequence (:func:`_monotone_assignment`).
      So two levels never share a vertebra, contiguous vertebrae get contiguous levels, and a level
      the network confuses with its neighbour still lands in the right place in the sequence; a
      vertebra of an unannotated neighbour (C2, T1, T12, S1) that the network also marks is left out
      at either end when the probabilities say it does not fit. Levels without a vertebra are not
      detected (NaN centre and box, score 0).

    Args:
        pred: ``(L + 4, H, W)`` network output (heatmap logits or, with ``apply_sigmoid=False``,
            probabilities; then box distances in fractions of W, H, W, H), numpy or torch.
        score_threshold: least peak probability of a detection.
        apply_sigmoid: turn the heatmap channels from logits into probabilities first.
        refine: sub-pixel refinement of each peak by a three-point parabola on the log-heatmap along x
            and y (exact for a Gaussian peak; offsets clipped to half a pixel; none at the border);
            the level's own channel for ``argmax``, the channel maximum for ``sequence``.
        method: ``"sequence"`` or ``"argmax"``.
        nms_radius_px: window half-size of the local maxima (``sequence``).
        gap_penalty: cost of a level or vertebra skipped inside the sequence (``sequence``).
        candidate_fraction: candidates need ``candidate_fraction * score_threshold`` (``sequence``).

    Returns:
        dict of numpy arrays in **net pixels**: ``scores`` ``(L,)``, ``centres_net_px`` ``(L, 2)``
        ``(x, y)``, ``boxes_net_px`` ``(L, 4)`` ``(x0, y0, x1, y1)`` (distances clamped at 0),
        ``detected`` ``(L,)`` bool.
    """
    if method not in ("sequence", "argmax", "chain"):
        raise ValueError(f"decode method must be 'sequence', 'argmax' or 'chain', got {method!r}")
    p = _np(pred).astype(np.float64)
    if p.ndim != 3 or p.shape[0] <= NUM_BOX_CHANNELS:
        raise ValueError(f"decode_detections: expected (L + 4, H, W), got shape {p.shape}")
    if method == "chain":
        return _decode_chain(p, score_threshold, apply_sigmoid, refine, nms_radius_px, candidate_fraction, profile,
                             chain_kwargs, level_y_frac, y_frac_map, peak_cost)
    n_lev = p.shape[0] - NUM_BOX_CHANNELS
    h, w = p.shape[1:]
    hm = p[:n_lev]
    if apply_sigmoid:
        hm = 1.0 / (1.0 + np.exp(-np.clip(hm, -60, 60)))
    scores = np.zeros(n_lev)
    centres = np.full((n_lev, 2), np.nan)
    pix = np.full((n_lev, 2), -1, dtype=np.int64)  # (x, y) pixel of each level's peak, -1: none
    if method == "argmax":
        flat = hm.reshape(n_lev, -1)
        arg = flat.argmax(1)
        ys, xs = np.divmod(arg, w)
        scores = flat[np.arange(n_lev), arg]
        pix = np.stack([xs, ys], -1)
        for lev in range(n_lev):
            centres[lev] = _refine(hm[lev], xs[lev], ys[lev]) if refine else (xs[lev], ys[lev])
        detected = scores >= score_threshold
    else:
        heat = hm.max(0)
        xs, ys = _local_maxima(heat, int(nms_radius_px), float(candidate_fraction) * float(score_threshold),
                               max_count=2 * n_lev + 4)
        order = np.argsort(ys, kind="stable")  # top to bottom
        xs, ys = xs[order], ys[order]
        for lev, i in _monotone_assignment(hm[:, ys, xs], gap_penalty):
            if heat[ys[i], xs[i]] < score_threshold:
                continue
            scores[lev] = heat[ys[i], xs[i]]
            pix[lev] = (xs[i], ys[i])
            centres[lev] = _refine(heat, xs[i], ys[i]) if refine else (xs[i], ys[i])
        detected = pix[:, 0] >= 0
    boxes = np.full((n_lev, 4), np.nan)
    ok = pix[:, 0] >= 0
    if ok.any():
        ltrb = np.maximum(p[n_lev:, pix[ok, 1], pix[ok, 0]].T, 0.0) * np.array([w, h, w, h], dtype=np.float64)
        c = centres[ok]
        boxes[ok] = np.concatenate([c - ltrb[:, :2], c + ltrb[:, 2:]], -1)
    return {"scores": scores, "centres_net_px": centres, "boxes_net_px": boxes, "detected": detected}
