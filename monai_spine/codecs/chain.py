"""Levels along the spine: which detector peak is which vertebra, and where the unseen levels lie.

The "any vertebra" detector (:func:`~monai_spine.codecs.detection.decode_detections`, method
``"chain"``) finds vertebra centres without names. This module names them and completes the spine:

* :func:`spacing_profile` and :func:`level_height_fractions` measure, on the training films, the
  expected distance between consecutive levels and each level's height on the film;
* :func:`assign_levels_chain` gives the peaks levels by dynamic programming along the spine against
  that profile (with optional per-peak level guesses and level costs, e.g. the level anchor of
  :mod:`monai_spine.inference.level_anchor`);
* :func:`complete_chain` places the levels no peak was given (interpolated between found levels,
  extrapolated beyond them), flagged as inferred.

Points are ``(x, y)`` pixels; absent levels have NaN centres.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from monai_spine.codecs._arrays import _np

__all__ = ["centres_in_level_order", "spacing_profile", "level_height_fractions", "assign_levels_chain", "complete_chain",
           "spacing_profile_array"]


def centres_in_level_order(centres_px: Any) -> bool:
    """Whether a film's present level centres ``(L, 2)`` (NaN: absent) run strictly down the film in level order.

    Annotations that fail this are label noise (6 of the 481 AASCE films after the reader's order fix,
    :func:`monai_spine.data.aasce.fix_rotated_levels`; 24 in the files as they are), and statistics
    learned from annotated films leave them out.
    """
    y = np.asarray(centres_px, dtype=np.float64)[:, 1]
    return not np.any(np.diff(y[np.isfinite(y)]) <= 0)


def spacing_profile(centres_px: Sequence[np.ndarray]) -> np.ndarray:
    """Mean relative distance between consecutive levels, ``(L - 1,)``, normalised to mean 1.

    Args:
        centres_px: per radiograph an ``(L, 2)`` array of level centres (NaN: absent). Each film with
            a pair of consecutive present levels contributes the pair's distance divided by the film's
            median consecutive distance, so the profile is free of the film's scale. Films whose centres
            are not in level order down the film (:func:`centres_in_level_order`) are left out: one such
            AASCE film has an L4-L5 "distance" of the whole spine, and the twelve training films of the
            split (before the reader's order fix) had stretched the mean L4-L5 step by a quarter.

    Raises:
        ValueError: fewer than two levels, or no film with two consecutive present levels.
    """
    rows = [np.asarray(c, dtype=np.float64) for c in centres_px]
    if not rows or rows[0].ndim != 2 or rows[0].shape[0] < 2 or rows[0].shape[1] != 2:
        raise ValueError(f"spacing_profile: expected (L, 2) centre arrays with L >= 2, got {len(rows)} arrays")
    n_lev = rows[0].shape[0]
    acc = np.zeros(n_lev - 1)
    cnt = np.zeros(n_lev - 1)
    for c in rows:
        if c.shape != (n_lev, 2):
            raise ValueError(f"spacing_profile: every array must be ({n_lev}, 2), got {c.shape}")
        d = np.hypot(*(c[1:] - c[:-1]).T)
        ok = np.isfinite(d) & (d > 0)
        if not ok.any() or not centres_in_level_order(c):
            continue
        acc[ok] += d[ok] / np.median(d[ok])
        cnt[ok] += 1
    if not cnt.any():
        raise ValueError("spacing_profile: no film with two consecutive present levels in level order")
    prof = np.where(cnt > 0, acc / np.maximum(cnt, 1), np.nan)
    prof = np.where(np.isfinite(prof), prof, np.nanmean(prof))
    return prof / prof.mean()


def level_height_fractions(centres_px: Sequence[np.ndarray], heights_px: Sequence[float]) -> np.ndarray:
    """Mean height of each level's centre as a fraction of its film's height, ``(L,)``.

    Only films whose present centres run top to bottom in level order count (a mislabelled film would
    blur the table). Used by the ``chain`` decoding to guess a peak's level from its height on the film,
    which holds for films cropped alike (the AASCE films: about 0.45 level of spread); NaN rows are
    filled by linear interpolation.

    Raises:
        ValueError: no usable film, or mismatched lengths.
    """
    if len(centres_px) != len(heights_px):
        raise ValueError(f"level_height_fractions: {len(centres_px)} centre arrays but {len(heights_px)} heights")
    rows = []
    for c, h in zip(centres_px, heights_px):
        y = np.asarray(c, dtype=np.float64)[:, 1] / float(h)
        if np.isfinite(y).sum() >= 2 and centres_in_level_order(c):
            rows.append(y)
    if not rows:
        raise ValueError("level_height_fractions: no film with its levels in top-to-bottom order")
    m = np.nanmean(np.stack(rows), 0)
    k = np.arange(m.size)
    fin = np.isfinite(m)
    return np.interp(k, k[fin], m[fin])


def spacing_profile_array(profile: Any, where: str) -> np.ndarray:
    """``(L - 1,)`` float64 spacing profile (expected step per level pair), checked positive and finite.

    Raises:
        ValueError: an empty profile, or a step that is not positive and finite (``where`` names the caller).
    """
    prof = np.asarray(profile, dtype=np.float64).reshape(-1)
    if prof.size < 1 or not np.all(np.isfinite(prof)) or np.any(prof <= 0):
        raise ValueError(f"{where}: profile must be positive and finite, got {prof}")
    return prof


def assign_levels_chain(
    points_px: Any,
    scores: Any,
    profile: Any,
    gap_penalty: float = 2.0,
    end_gap_penalty: float | None = None,
    drop_penalty: float = 3.0,
    spacing_sigma: float = 0.2,
    max_skip: int = 3,
    num_scales: int = 41,
    scale_range: tuple[float, float] = (0.4, 2.5),
    level_estimates: Any = None,
    level_weight: Any = 1.0,
    level_cap: float = 3.0,
    level_cost: Any = None,
) -> tuple[np.ndarray, float, float]:
    """Levels for a chain of "any vertebra" peaks: which peak is which level, by spacing along the spine.

    The peaks, ordered top to bottom, get levels by the order-preserving assignment of least cost:

    * ``drop_penalty * score`` for every peak left out (an extra peak: a double response, a rib, the
      sacrum), so confident peaks are kept;
    * ``gap_penalty`` for every level skipped between two assigned ones (a vertebra the network
      missed) and ``end_gap_penalty`` for every level left out above the first or below the last
      (a film cut at the top or bottom; default ``gap_penalty``);
    * between consecutive assigned peaks ``i < j`` with levels ``a < b``,
      ``0.5 * (log(d_ij / (s * sum(profile[a:b]))) / spacing_sigma) ** 2``: the distance between the
      peaks against the expected distance of the two levels at the film's scale ``s`` (pixels per
      profile unit). The scale is not known: every scale of a geometric grid over ``scale_range`` times
      the median distance between neighbouring peaks is tried and the cheapest kept. The profile's
      shape (vertebrae grow from T1 to L5) is what places a chain cut at one end;
    * with ``level_estimates`` (``(P,)`` or ``(P, M)``: M guesses of each peak's level, in level units, NaN:
      none; e.g. the network's level channel, the peak's height on the film), the sum over the guesses
      of ``level_weight[m] * min(|estimate - level|, level_cap)`` per assigned peak: the anchor that keeps
      a chain with a C7 or S1 peak at one end from shifting by a level;
    * with ``level_cost`` (``(P, L)``), that cost of giving peak ``p`` level ``k`` (e.g. ``-log`` of a
      classifier's probability of the level's group at the peak, see :mod:`monai_spine.networks.anchor`).

    Dynamic programming over (peak, level) with at most ``max_skip`` levels and peaks skipped per step.

    Args:
        points_px: ``(P, 2)`` ``(x, y)`` peak positions (any pixel unit; order does not matter).
        scores: ``(P,)`` peak scores in [0, 1].
        profile: ``(L - 1,)`` expected distance between consecutive levels (see :func:`spacing_profile`).

    Returns:
        ``(levels, scale, cost)``: ``(P,)`` int level index of each peak in the input order (-1: left out),
        the chosen scale (pixels per profile unit; NaN with fewer than two peaks) and the total cost.

    Raises:
        ValueError: shapes do not match, or the profile is not positive.
    """
    pts = np.asarray(_np(points_px), dtype=np.float64).reshape(-1, 2)
    sc = np.asarray(_np(scores), dtype=np.float64).reshape(-1)
    prof = spacing_profile_array(_np(profile), "assign_levels_chain")
    if sc.shape[0] != pts.shape[0]:
        raise ValueError(f"assign_levels_chain: {pts.shape[0]} points but {sc.shape[0]} scores")
    n_lev, n_pts = prof.size + 1, pts.shape[0]
    out = np.full(n_pts, -1, dtype=np.int64)
    end_gap = float(gap_penalty if end_gap_penalty is None else end_gap_penalty)
    if n_pts == 0:
        return out, float("nan"), end_gap * n_lev
    order = np.argsort(pts[:, 1], kind="stable")
    p, s = pts[order], sc[order]
    node = np.zeros((n_pts, n_lev))
    if level_estimates is not None:
        est = np.asarray(_np(level_estimates), dtype=np.float64)
        est = est.reshape(est.shape[0] if est.ndim else 0, -1)
        if est.shape[0] != n_pts:
            raise ValueError(f"assign_levels_chain: {n_pts} points but {est.shape[0]} level estimates")
        wts = np.broadcast_to(np.asarray(level_weight, dtype=np.float64).reshape(-1), (est.shape[1],))
        diff = np.minimum(np.abs(est[order][:, None, :] - np.arange(n_lev)[None, :, None]), float(level_cap))
        node = (np.where(np.isfinite(diff), diff, 0.0) * wts[None, None, :]).sum(-1)
    if level_cost is not None:
        lc = np.asarray(_np(level_cost), dtype=np.float64)
        if lc.shape != (n_pts, n_lev):
            raise ValueError(f"assign_levels_chain: level_cost must be ({n_pts}, {n_lev}), got {lc.shape}")
        node = node + np.where(np.isfinite(lc), lc, 0.0)[order]
    drop = float(drop_penalty) * np.clip(s, 0.0, None)
    drop_cum = np.concatenate([[0.0], np.cumsum(drop)])  # drop of peaks [i, j) = drop_cum[j] - drop_cum[i]
    if n_pts == 1:
        # one peak: every level costs the same end gaps; the level estimate decides (else the first level)
        k = int(np.argmin(node[0]))
        out[order[0]] = k
        return out, float("nan"), end_gap * (n_lev - 1) + float(node[0, k])
    cum = np.concatenate([[0.0], np.cumsum(prof)])
    dist = np.hypot(p[:, None, 0] - p[None, :, 0], p[:, None, 1] - p[None, :, 1])  # (P, P)
    base = float(np.median(np.diag(dist, 1))) / float(np.median(prof))
    if not base > 0:
        base = 1.0
    w = 0.5 / float(spacing_sigma) ** 2
    ms = max(1, int(max_skip))
    scales = base * np.geomspace(scale_range[0], scale_range[1], int(num_scales))  # (S,)
    n_s = scales.size
    levels = np.arange(n_lev)
    # cost[:, i, k]: cheapest chain (per scale) whose last assigned pair is (peak i, level k)
    cost = np.empty((n_s, n_pts, n_lev))
    back_i = np.full((n_s, n_pts, n_lev), -1, dtype=np.int64)
    back_k = np.full((n_s, n_pts, n_lev), -1, dtype=np.int64)
    for i in range(n_pts):
        best = np.broadcast_to(drop_cum[i] + end_gap * levels, (n_s, n_lev)).copy()  # start the chain here
        bi = np.full((n_s, n_lev), -1, dtype=np.int64)
        bk = np.full((n_s, n_lev), -1, dtype=np.int64)
        for ip in range(max(0, i - ms - 1), i):
            skipped = drop_cum[i] - drop_cum[ip + 1]
            for dk in range(1, min(ms + 1, n_lev - 1) + 1):
                ks = levels[dk:]
                expected = scales[:, None] * (cum[ks] - cum[ks - dk])[None, :]  # (S, L - dk)
                c = (cost[:, ip, ks - dk] + skipped + gap_penalty * (dk - 1)
                     + w * np.log(max(dist[ip, i], 1e-9) / expected) ** 2)
                better = c < best[:, ks]
                best[:, ks] = np.where(better, c, best[:, ks])
                bi[:, ks] = np.where(better, ip, bi[:, ks])
                bk[:, ks] = np.where(better, ks - dk, bk[:, ks])
        cost[:, i], back_i[:, i], back_k[:, i] = best + node[i][None, :], bi, bk
    tail = (drop_cum[-1] - drop_cum[1:])[:, None] + end_gap * (n_lev - 1 - levels)[None, :]  # (P, L)
    total = cost + tail[None]
    si, i, k = np.unravel_index(int(np.argmin(total)), total.shape)
    best_total, best_scale = float(total[si, i, k]), float(scales[si])
    best_path = []
    while i >= 0:
        best_path.append((int(i), int(k)))
        i, k = back_i[si, i, k], back_k[si, i, k]
    for i, k in best_path or []:
        out[order[i]] = k
    return out, best_scale, best_total


def complete_chain(centres_px: Any, profile: Any, scale: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Fill the levels without a centre along the spine: ``(centres (L, 2), inferred (L,))``.

    A missing level between two found ones is placed between them at the profile's share of their
    distance; levels above the first or below the last found one are extrapolated along the direction
    of the two nearest found levels (straight down with one found level), at ``scale`` pixels per profile
    unit (default: the scale of the found levels). With no found level nothing can be placed (all NaN).

    Args:
        centres_px: ``(L, 2)`` level centres, NaN where missing.
        profile: ``(L - 1,)`` expected distance between consecutive levels.
        scale: pixels per profile unit (used with a single found level; None: estimated).

    Raises:
        ValueError: shapes do not match.
    """
    c = np.asarray(_np(centres_px), dtype=np.float64).copy()
    prof = np.asarray(_np(profile), dtype=np.float64).reshape(-1)
    if c.ndim != 2 or c.shape != (prof.size + 1, 2):
        raise ValueError(f"complete_chain: centres must be ({prof.size + 1}, 2) for a profile of {prof.size}, "
                         f"got {c.shape}")
    known = np.all(np.isfinite(c), -1)
    inferred = ~known
    idx = np.flatnonzero(known)
    if idx.size == 0:
        return c, inferred
    cum = np.concatenate([[0.0], np.cumsum(prof)])
    if idx.size >= 2:
        d = np.hypot(*(c[idx[1:]] - c[idx[:-1]]).T)
        est = float(np.median(d / (cum[idx[1:]] - cum[idx[:-1]])))
    else:
        est = float("nan")
    s = est if scale is None or not np.isfinite(scale) else float(scale)
    if not np.isfinite(s):
        s = est
    for a, b in zip(idx[:-1], idx[1:]):
        for k in range(a + 1, b):
            t = (cum[k] - cum[a]) / (cum[b] - cum[a])
            c[k] = c[a] + t * (c[b] - c[a])

    def _direction(i0: int, i1: int) -> np.ndarray:
        v = c[i1] - c[i0]
        n = np.hypot(*v)
        return v / n if n > 0 else np.array([0.0, 1.0])

    if not np.isfinite(s):
        return c, inferred
    first, last = idx[0], idx[-1]
    up = _direction(idx[0], idx[1]) if idx.size >= 2 else np.array([0.0, 1.0])
    down = _direction(idx[-2], idx[-1]) if idx.size >= 2 else np.array([0.0, 1.0])
    for k in range(first - 1, -1, -1):
        c[k] = c[first] - up * s * (cum[first] - cum[k])
    for k in range(last + 1, c.shape[0]):
        c[k] = c[last] + down * s * (cum[k] - cum[last])
    return c, inferred


def _level_from_y_frac(y_frac: np.ndarray, level_y_frac: np.ndarray) -> np.ndarray:
    """Level (fractional) at each film height fraction: interpolated in ``level_y_frac``, linear beyond the ends."""
    ly = np.asarray(level_y_frac, dtype=np.float64).reshape(-1)
    k = np.arange(ly.size, dtype=np.float64)
    y = np.asarray(y_frac, dtype=np.float64)
    out = np.interp(y, ly, k)
    lo, hi = y < ly[0], y > ly[-1]
    out[lo] = (y[lo] - ly[0]) / (ly[1] - ly[0])
    out[hi] = k[-1] + (y[hi] - ly[-1]) / (ly[-1] - ly[-2])
    return out
