"""The figures of the report (``monai-spine report``): PNG plots and crops of sample vertebrae.

:func:`_figures` writes the plots listed in :data:`FIGURES` (and ``bc_hist.png``) for
:func:`monai_spine.evaluation.report.report_cli`, which writes the HTML page linking them;
:func:`_samples` crops the prediction overlays around the most and least certain vertebrae. Also the
helpers both modules use: :data:`POINT_TYPES`, :func:`level_sort_key`, the uncertainty classes of
the points and the units the ranking uses.
"""

from __future__ import annotations

import html
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["FIGURES", "POINT_TYPES", "level_sort_key"]

#: file names of the figures always written
FIGURES = (
    "violin_errors.png",
    "kde_sigma.png",
    "error_vs_sigma.png",
    "cumulative_errors.png",
    "box_point_name.png",
    "box_level.png",
    "box_class.png",
    "referral.png",
)
#: shares referred in the referral figure (the table uses :data:`monai_spine.evaluation.report.REFERRAL_FRACTIONS`)
_REFERRAL_GRID = tuple(np.round(np.arange(0, 51) / 100, 2).tolist())
#: point types compared in the figures (as in :func:`monai_spine.evaluation.matching.collect_errors`)
POINT_TYPES = ("corner", "spinous_process")
_TYPE_COLOURS = {"corner": "#4c72b0", "spinous_process": "#dd8452"}
#: class names in figures (full names, on two lines)
_CLASS_TITLES = {"certain": "certain", "moderately_uncertain": "moderately\nuncertain",
                 "highly_uncertain": "highly\nuncertain", "unknown": "unknown"}


def level_sort_key(level: str) -> tuple[int, int, str]:
    """Anatomical order of a level name (C1..C7, T1..T12, L1..L5, S1...), unknown names last."""
    m = re.fullmatch(r"([CTLS])(\d+)", str(level))
    if not m:
        return (9, 0, str(level))
    return ("CTLS".index(m.group(1)), int(m.group(2)), "")


def _finite(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x[np.isfinite(x)]


def _rank_units(points: Any) -> str:
    """``"mm"`` when the errors are in mm and sigma_p in mm is known, else ``"frac"``."""
    return "mm" if points.error_unit == "mm" and np.isfinite(points.sigma_mm).any() else "frac"


def _classes(points: Any, thresholds: Any) -> np.ndarray:
    """Uncertainty class index of every point (per point type where the thresholds have a pair)."""
    from monai_spine.uncertainty.classes import classify

    s = points.sigma(thresholds.units)
    out = np.empty(s.shape, dtype=np.int64)
    for t in dict.fromkeys(points.point_types.tolist()):
        m = points.point_types == t
        out[m] = classify(s[m], *thresholds.for_point_type(str(t)))
    return out


def _class_groups() -> list[tuple[int, str]]:
    from monai_spine.uncertainty.classes import CLASS_NAMES, UNKNOWN

    return list(enumerate(CLASS_NAMES)) + [(UNKNOWN, "unknown")]


# ----------------------------------------------------------------------------------------------
# figures
# ----------------------------------------------------------------------------------------------
def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=150)  # sharp when the page widens it
    _plt().close(fig)
    return path.name


def _legend(ax: Any, **kw: Any) -> None:
    """A legend when something is labelled (no matplotlib warning for an empty panel)."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(**kw)


def _kde_line(ax: Any, values: np.ndarray, label: str, color: str) -> None:
    """Gaussian KDE of ``values``; a vertical line when the values are (nearly) all equal."""
    from scipy.stats import gaussian_kde

    v = _finite(values)
    if v.size == 0:
        return
    if v.size < 2 or np.ptp(v) <= 1e-12 * max(1.0, abs(float(v.mean()))):
        ax.axvline(float(v.mean()), color=color, label=f"{label} (n={v.size}, constant)")
        return
    try:
        kde = gaussian_kde(v)
    except np.linalg.LinAlgError:
        ax.axvline(float(v.mean()), color=color, label=f"{label} (n={v.size})")
        return
    pad = 3.0 * float(np.sqrt(kde.covariance[0, 0]))  # three kernel sds: the curve falls to zero at both ends
    xs = np.linspace(v.min() - pad, v.max() + pad, 300)
    ax.plot(xs, kde(xs), color=color, label=f"{label} (n={v.size})")
    ax.set_ylim(bottom=0)


def _violin(ax: Any, data: list[np.ndarray], positions: list[float], color: str) -> None:
    """Violins where a KDE is possible, a point marker otherwise."""
    ok = [i for i, d in enumerate(data) if d.size >= 2 and np.ptp(d) > 0]
    if ok:
        parts = ax.violinplot([data[i] for i in ok], positions=[positions[i] for i in ok], widths=0.35,
                              showmedians=True)
        for body in parts["bodies"]:
            body.set_facecolor(color)
            body.set_alpha(0.6)
    for i, d in enumerate(data):
        if i not in ok and d.size:
            ax.plot([positions[i]] * d.size, d, "o", color=color)


def _figures(
    pts: Mapping[str, Any], out: Path, unit: str, bc: Mapping[str, np.ndarray] | None,
    thresholds: Mapping[str, Any],
) -> list[tuple[str, str]]:
    """Write the figures; returns ``(title, file name)`` pairs."""
    plt = _plt()
    models = list(pts)
    figs: list[tuple[str, str]] = []

    # violin: errors per model, corners vs spinous process (BayeRegX fig. 12)
    fig, ax = plt.subplots(figsize=(max(4.0, 2.0 * len(models)), 4))
    for k, t in enumerate(POINT_TYPES):
        data = [_finite(p.errors[p.point_types == t]) for p in pts.values()]
        _violin(ax, data, [i + (k - 0.5) * 0.4 for i in range(len(models))], _TYPE_COLOURS[t])
        ax.plot([], [], color=_TYPE_COLOURS[t], lw=6, alpha=0.6, label=t)
    ax.set_xticks(range(len(models)), [m.replace("/", "/\n") for m in models])  # long folder/model names wrap
    ax.set_ylabel(f"point error ({unit})")
    ax.set_title("Point errors: corners vs spinous process")
    _legend(ax)
    figs.append(("Point errors per model (corners vs spinous process)", _save(fig, out / FIGURES[0])))

    # KDE of sigma_p per point type
    fig, axes = plt.subplots(1, len(models), figsize=(4 * len(models), 3.5), squeeze=False)
    for ax, (m, p) in zip(axes[0], pts.items()):
        su = "frac" if np.isfinite(p.sigma_frac).any() else "mm"  # the corner FCN has no crop-fraction sigma
        for t in POINT_TYPES:
            _kde_line(ax, p.sigma(su)[p.point_types == t], t, _TYPE_COLOURS[t])
        ax.set_xlabel(f"sigma_p ({'crop fraction' if su == 'frac' else su})")
        ax.set_ylabel("density")
        ax.set_title(m)
        _legend(ax, fontsize=7)
    figs.append(("KDE of sigma_p: corners vs spinous process", _save(fig, out / FIGURES[1])))

    # (error, sigma_p) 2D histogram
    fig, axes = plt.subplots(1, len(models), figsize=(4 * len(models), 3.5), squeeze=False)
    for ax, (m, p) in zip(axes[0], pts.items()):
        thr = thresholds.get(m)
        su = thr.units if thr is not None else "frac"
        sig = p.sigma(su)
        keep = np.isfinite(p.errors) & np.isfinite(sig)
        if keep.any():
            hb = ax.hexbin(p.errors[keep], sig[keep], gridsize=20, mincnt=1, cmap="viridis")
            fig.colorbar(hb, ax=ax, label="points")
        if thr is not None:
            from monai_spine.uncertainty.thresholds import vouched_classes

            ok = vouched_classes(float(thr.tau1), float(thr.tau2))
            for name, tau, style in (("tau1", thr.tau1, "--"), ("tau2", thr.tau2, ":")):
                if ("certain" if name == "tau1" else "moderately_uncertain") in ok:
                    ax.axhline(float(tau), color="#d62728", ls=style, lw=1.2, label=f"{name} = {tau:.3g} {su}")
            _legend(ax, fontsize=7, loc="upper right")
        ax.set_xlabel(f"error ({unit})")
        ax.set_ylabel(f"sigma_p ({'crop fraction' if su == 'frac' else su})")
        ax.set_title(m)
    figs.append(("Error vs sigma_p (2D histogram)", _save(fig, out / FIGURES[2])))

    # cumulative error curves
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for m, p in pts.items():
        e = np.sort(p.errors[~np.isnan(p.errors)])
        if e.size:
            fin = e[np.isfinite(e)]
            ax.step(fin, np.arange(1, fin.size + 1) / e.size, where="post", label=m)
    ax.set_xlabel(f"error ({unit})")
    ax.set_ylabel("share of points with error <= x")
    ax.set_ylim(0, 1.02)
    _legend(ax)
    figs.append(("Cumulative error curves", _save(fig, out / FIGURES[3])))

    # box plots per point name and per level
    for fname, attr, title, order in (
        (FIGURES[4], "point_names", "point name", None),
        (FIGURES[5], "levels", "vertebra level", level_sort_key),
    ):
        fig, axes = plt.subplots(len(models), 1, figsize=(6, 2.8 * len(models)), squeeze=False)
        for ax, (m, p) in zip(axes[:, 0], pts.items()):
            keys = list(dict.fromkeys(getattr(p, attr).tolist()))
            if order is not None:
                keys = sorted(keys, key=order)
            data = [_finite(p.errors[getattr(p, attr) == k]) for k in keys]
            ax.boxplot(data, tick_labels=keys) if _has_tick_labels() else ax.boxplot(data, labels=keys)
            ax.set_ylabel(f"error ({unit})")
            ax.set_title(f"{m}: error per {title}")
        figs.append((f"Errors per {title}", _save(fig, out / fname)))

    # box plots per uncertainty class
    groups = _class_groups()
    fig, axes = plt.subplots(1, len(models), figsize=(4.5 * len(models), 3.5), squeeze=False)
    for ax, (m, p) in zip(axes[0], pts.items()):
        cls = _classes(p, thresholds[m])
        data = [_finite(p.errors[cls == i]) for i, _ in groups]
        labels = [f"{_CLASS_TITLES.get(n, n)}\n(n={d.size})" for (_, n), d in zip(groups, data)]
        data = [d if d.size else np.array([np.nan]) for d in data]
        ax.boxplot(data, tick_labels=labels) if _has_tick_labels() else ax.boxplot(data, labels=labels)
        ax.set_ylabel(f"error ({unit})")
        ax.set_title(f"{m}: error per uncertainty class", fontsize=9)
    figs.append(("Errors per uncertainty class", _save(fig, out / FIGURES[6])))

    # accuracy against the share of points referred to a human
    from monai_spine.uncertainty.quality import referral_curve

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for m, p in pts.items():
        rc = referral_curve(p.errors, p.sigma(_rank_units(p)), _REFERRAL_GRID)
        axes[0].plot(100 * rc["fractions"], rc["mean_error"], label=m)
        axes[1].plot(100 * rc["fractions"], 100 * rc["sdr"], label=m)
    axes[0].set_ylabel(f"mean error of kept points ({unit})")
    axes[1].set_ylabel(f"kept points within 2 {unit} (%)")
    for ax in axes:
        ax.set_xlabel("most uncertain points referred (%)")
        _legend(ax, fontsize=7)
    figs.append(("Accuracy against the share of points referred to a human", _save(fig, out / FIGURES[7])))

    if bc:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for m, v in bc.items():
            v = _finite(v)
            if v.size:
                ax.hist(v, bins=20, alpha=0.5, label=f"{m} (n={v.size})")
        ax.set_xlabel("patch Bhattacharyya coefficient")
        ax.set_ylabel("patches")
        _legend(ax)
        figs.append(("Patch Bhattacharyya coefficients", _save(fig, out / "bc_hist.png")))
    return figs


def _has_tick_labels() -> bool:
    import matplotlib

    major, minor = (int(x) for x in matplotlib.__version__.split(".")[:2])
    return (major, minor) >= (3, 9)


# ----------------------------------------------------------------------------------------------
# most / least certain vertebrae
# ----------------------------------------------------------------------------------------------
def _vertebra_points(pred_json: str, level: str) -> np.ndarray | None:
    """``(K, 2)`` points of ``level`` in a prediction file (the regressor's, else the corner FCN's), or None."""
    from monai_spine.data.prediction import read_prediction

    try:
        pred = read_prediction(pred_json)
        points = pred.point_set().keypoints_px
    except (OSError, ValueError):
        return None
    for i, lev in enumerate(pred.levels):
        if lev == level:
            return np.asarray(points[i], float) if points[i].size else None
    return None
    for v in d.get("vertebrae", []):
        if v.get("level") == level:
            xy = [(p.get("x_px"), p.get("y_px")) for p in (v.get("points") or v.get("corners") or [])]
            arr = np.asarray([(np.nan if x is None else x, np.nan if y is None else y) for x, y in xy], float)
            return arr if arr.size else None
    return None


def _overlay_path(pred_json: str) -> Path:
    p = Path(pred_json)
    return p.with_name(p.name.removesuffix(".keypoints.json") + ".overlay.png")


def _samples(model: str, p: Any, out: Path, n: int) -> str:
    """HTML of crops (or links) around the ``n`` most and least certain vertebrae of one model."""
    keys: dict[tuple[str, str], list[float]] = {}
    su = "frac" if np.isfinite(p.sigma_frac).any() else "mm"  # the heatmap model has no crop-fraction sigma
    for c, lev, s in zip(p.cases, p.levels, p.sigma(su)):
        if np.isfinite(s):
            keys.setdefault((str(c), str(lev)), []).append(float(s))
    if not keys or n <= 0:
        return ""
    ranked = sorted(keys, key=lambda k: float(np.mean(keys[k])))
    parts = []
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", model)
    for kind, chosen in (("certain", ranked[:n]), ("uncertain", ranked[::-1][:n])):
        items = []
        for i, (case, lev) in enumerate(chosen):
            sig = float(np.mean(keys[(case, lev)]))
            ov = _overlay_path(case)
            caption = f"{html.escape(Path(case).name)} {html.escape(lev)}: mean sigma_p = {sig:.4f} {su}"
            crop = _crop(ov, _vertebra_points(case, lev), out / f"crop_{safe}_{kind}_{i}.png")
            if crop is not None:
                items.append(f'<figure><img src="{html.escape(crop)}" alt="{caption}"><figcaption>{caption}'
                             f"</figcaption></figure>")
            elif ov.is_file():
                rel = os.path.relpath(ov.resolve(), out.resolve())
                items.append(f'<li><a href="{html.escape(rel)}">{caption}</a></li>')
            else:
                items.append(f"<li>{caption} (no overlay)</li>")
        title = "Most certain" if kind == "certain" else "Least certain"
        figures = "".join(x for x in items if x.startswith("<figure"))
        lis = "".join(x for x in items if x.startswith("<li"))
        lis = f"<ul>{lis}</ul>" if lis else ""
        parts.append(f'<h4>{title} vertebrae</h4><div class="crops">{figures}</div>{lis}')
    return f"<h3>{html.escape(model)}</h3>" + "".join(parts)


def _crop(overlay: Path, xy: np.ndarray | None, dest: Path, margin: float = 0.6) -> str | None:
    """Crop ``overlay`` around the points ``xy`` (K, 2) with a margin of ``margin`` x their extent."""
    if xy is None or not overlay.is_file() or not np.isfinite(xy).any():
        return None
    import cv2

    img = cv2.imread(str(overlay), cv2.IMREAD_COLOR)
    if img is None:
        return None
    h, w = img.shape[:2]
    fin = xy[np.all(np.isfinite(xy), axis=1)]
    lo, hi = fin.min(0), fin.max(0)
    pad = margin * max(float(np.max(hi - lo)), 8.0)
    x0, y0 = (int(max(0, math.floor(v - pad))) for v in lo)
    x1, y1 = int(min(w, math.ceil(hi[0] + pad) + 1)), int(min(h, math.ceil(hi[1] + pad) + 1))
    if x1 <= x0 or y1 <= y0:
        return None
    if not cv2.imwrite(str(dest), img[y0:y1, x0:x1]):
        return None
    return dest.name
