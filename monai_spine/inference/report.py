"""HTML report of keypoint predictions over a test set (``monai-spine report``).

:func:`report_cli` matches the prediction files ``<stem>.keypoints.json`` of one or more models
(written by :func:`monai_spine.inference.regressor.predict_cases`) to their annotations ``<stem>.json``
with :func:`monai_spine.uncertainty.calibration.collect_errors`, and writes to ``out``:

* ``violin_errors.png``: point errors per model, corners vs spinous process (BayeRegX figure 12);
* ``kde_sigma.png``: KDE (``scipy.stats.gaussian_kde``) of ``sigma_p`` for corners vs spinous process;
* ``error_vs_sigma.png``: 2D histogram (hexbin) of (error, ``sigma_p``) per model;
* ``cumulative_errors.png``: share of points with error <= x, per model;
* ``box_point_name.png`` / ``box_level.png``: box plots of the error per point name / vertebra level;
* ``box_class.png``: box plots of the error per uncertainty class (certain / moderately / highly
  uncertain / unknown) per model;
* ``referral.png``: mean error of the points kept against the share of the most uncertain points
  referred to a human, per model;
* ``bc_hist.png``: histogram of patch Bhattacharyya coefficients (only when given);
* ``crop_<model>_<certain|uncertain>_<i>.png``: crops of the prediction overlays around the most and
  least certain vertebrae (mean ``sigma_p`` of their points), or a list with links to the overlay
  PNGs when they cannot be read;
* ``index.html`` (written atomically) linking all of them, with a table of summary numbers, a table of
  the error per uncertainty class and one of the accuracy after referral (with Spearman and AUSE).

Uncertainty classes use, per model, the thresholds given (``thresholds=``, e.g. the ``thresholds.json``
that ``monai-spine calibrate`` wrote), else those recorded in the model's prediction files (what
prediction classed each point by), else the paper's; the report names the source. Referral ranks
points by ``sigma_p`` in mm when the errors are in mm, else in crop fractions
(:func:`monai_spine.uncertainty.quality.referral_curve`).

Errors are in mm (in px when the spacing of some case is unknown; the unit is written in every label).
Failed predictions (infinite errors) are counted in ``n_failed`` and left out of the means and plots.
With a ``tracking_uri`` the PNGs and ``index.html`` are logged as artifacts of a new MLflow run, the
summary numbers as metrics ``<model>.<name>`` and the uncertainty numbers of
:func:`uncertainty_numbers` as ``<model>.<key>`` (``class/<class>/mean_mm``,
``referral/refer_10pct/mean_mm``, ``spearman_rho``, ...).
"""

from __future__ import annotations

import argparse
import html
import math
import os
import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from monai_spine.data.annotation import atomic_write_text

__all__ = [
    "INDEX_FILE",
    "FIGURES",
    "POINT_TYPES",
    "summary_numbers",
    "detection_numbers",
    "uncertainty_numbers",
    "resolve_thresholds",
    "REFERRAL_FRACTIONS",
    "level_sort_key",
    "report_cli",
    "parse_model_dirs",
    "parse_thresholds_args",
    "add_report_arguments",
    "report_from_args",
]

#: file name of the HTML report
INDEX_FILE = "index.html"
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
#: shares of the most uncertain points referred to a human in the referral table (the figure uses a finer grid)
REFERRAL_FRACTIONS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5)
_REFERRAL_GRID = tuple(np.round(np.arange(0, 51) / 100, 2).tolist())
#: point types compared in the figures (as in :func:`collect_errors`)
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


def _mean(x: np.ndarray) -> float:
    x = _finite(x)
    return float(x.mean()) if x.size else float("nan")


def summary_numbers(points: Any) -> dict[str, float]:
    """Summary numbers of one model's :class:`~monai_spine.uncertainty.calibration.MatchedPoints`.

    Means and medians use the finite errors only (failed predictions are counted in ``n_failed``).

    Returns:
        ``n_points``, ``n_failed``, ``mean_error``, ``median_error``, ``mean_error_corner``,
        ``mean_error_spinous_process``, ``mean_sigma_frac``, ``frac_within_2`` (share of finite
        errors <= 2 in the error unit); NaN where nothing is counted.
    """
    e = np.asarray(points.errors, dtype=np.float64)
    fin = _finite(e)
    out = {
        "n_points": float(e.size),
        "n_failed": float(np.sum(np.isinf(e))),
        "mean_error": _mean(e),
        "median_error": float(np.median(fin)) if fin.size else float("nan"),
    }
    for t in POINT_TYPES:
        out[f"mean_error_{t}"] = _mean(e[points.point_types == t])
    out["mean_sigma_frac"] = _mean(points.sigma_frac)
    out["frac_within_2"] = float(np.mean(fin <= 2.0)) if fin.size else float("nan")
    return out


def resolve_thresholds(points: Any, given: Any = None) -> tuple[Any, str]:
    """Uncertainty-class thresholds for one model's points, and where they come from.

    Args:
        points: the model's :class:`~monai_spine.uncertainty.calibration.MatchedPoints` (its ``cases`` are
            the prediction files).
        given: a :class:`~monai_spine.uncertainty.classes.Thresholds`, its ``to_dict`` mapping, or the path
            of a thresholds JSON (``monai-spine calibrate``'s ``thresholds.json``); None: read the
            thresholds recorded in the prediction files for this point set (the regressor's
            ``thresholds``; the heatmap FCN's ``corner_thresholds``, or ``thresholds`` of a corners
            file), else use the paper's.

    Returns:
        ``(thresholds, source)``; ``source`` is a short sentence for the report.

    Raises:
        ValueError / KeyError: a malformed thresholds file or mapping (the message names it).
    """
    import json
    import warnings

    from monai_spine.uncertainty.classes import PAPER_THRESHOLDS, Thresholds

    if given is not None:
        if isinstance(given, Thresholds):
            return given, f"given ({given.source or 'no source recorded'})"
        if isinstance(given, Mapping):
            return Thresholds.from_dict(given, source="thresholds"), "given"
        return Thresholds.load(given), f"given ({os.fspath(given)})"
    from monai_spine.data.prediction import read_prediction

    recorded: dict[str, tuple[dict[str, Any], str]] = {}
    for case in dict.fromkeys(np.asarray(points.cases).tolist()):
        try:
            pred = read_prediction(case)
        except (OSError, ValueError):
            continue
        model = getattr(points, "model", None) or (pred.models[0] if pred.models else None)
        d = pred.corner_thresholds if model == "heatmap" else pred.thresholds
        if isinstance(d, dict):
            recorded.setdefault(json.dumps(d, sort_keys=True), (d, str(case)))
    if recorded:
        d, case = next(iter(recorded.values()))
        thr = Thresholds.from_dict(d, source=case)
        if len(recorded) > 1:
            warnings.warn(f"prediction files record {len(recorded)} different thresholds; the report uses those "
                          f"of {case} (give thresholds= to choose)", stacklevel=2)
            return thr, f"recorded in the prediction files ({len(recorded)} differ: those of {Path(case).name})"
        return thr, "recorded in the prediction files"
    return PAPER_THRESHOLDS, "the paper's (BayeRegX section 4): none given or recorded in the prediction files"


def _rank_units(points: Any) -> str:
    """``"mm"`` when the errors are in mm and sigma_p in mm is known, else ``"frac"``."""
    return "mm" if points.error_unit == "mm" and np.isfinite(points.sigma_mm).any() else "frac"


def uncertainty_numbers(points: Any, thresholds: Any,
                        referral_fractions: Sequence[float] = REFERRAL_FRACTIONS) -> dict[str, float]:
    """Error per uncertainty class, accuracy after referral, Spearman and AUSE of one model.

    :func:`monai_spine.uncertainty.quality.quality_report` on the model's points: classes with
    ``thresholds`` (in their units, per point type where they have a pair), ranking measures and
    referral on sigma_p in mm when the errors are in mm (else in crop fractions). Failed predictions
    (infinite errors) stay in their class (its mean is then infinite) and are left out of the ranking
    and referral.

    Returns:
        ``{key: float}`` with ``class/<class>/{count,share,mean_<u>,median_<u>,q90_<u>}``,
        ``referral/refer_<p>pct/{mean_<u>,sdr_2.0<u>}``, ``spearman_rho``, ``ause_<u>``, ... and the
        same per point type (prefixed ``<type>/``, no referral); ``<u>`` is the error unit.
    """
    from monai_spine.uncertainty.quality import quality_report

    return quality_report(points.errors, {"frac": points.sigma_frac, "mm": points.sigma_mm}, points.point_types,
                          thresholds=thresholds, primary_units=_rank_units(points), error_unit=points.error_unit,
                          referral_fractions=referral_fractions)


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
            from monai_spine.uncertainty.calibration import vouched_classes

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
    import json

    try:
        with open(pred_json, encoding="utf-8") as f:
            d = json.load(f)
    except (OSError, ValueError):
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


# ----------------------------------------------------------------------------------------------
# entry point
# ----------------------------------------------------------------------------------------------
def _load_bc(value: Any) -> np.ndarray:
    if isinstance(value, (str, os.PathLike)):
        p = Path(value)
        if p.suffix == ".npy":
            return np.load(p).astype(np.float64).ravel()
        if p.suffix == ".json":
            import json

            return np.asarray(json.loads(p.read_text(encoding="utf-8")), dtype=np.float64).ravel()
        return np.loadtxt(p, dtype=np.float64, ndmin=1).ravel()
    return np.asarray(value, dtype=np.float64).ravel()


#: summary columns that count things (shown as integers)
COUNT_COLUMNS = ("n_points", "n_failed", "missed_vertebrae")


def _column_title(col: str, unit: str) -> str:
    """Header of a summary column, with its unit: ``mean_error`` -> ``mean error (mm)``."""
    if col in COUNT_COLUMNS:
        return col.replace("n_", "", 1).replace("_", " ") if col.startswith("n_") else col.replace("_", " ")
    if col == "frac_within_2":
        return f"share within 2 {unit}"
    if col == "detection_recall":
        return "detection recall"
    if col == "mean_sigma_frac":
        return "mean sigma_p (crop fraction)"
    if col.startswith(("mean_error", "median_error")):
        return f"{col.replace('_', ' ')} ({unit})"
    return col.replace("_", " ")


def _fmt_cell(col: str, v: float) -> str:
    """A summary cell: counts as integers, the rest as :func:`_fmt`."""
    if col in COUNT_COLUMNS and math.isfinite(v):
        return str(int(round(v)))
    return _fmt(v)


def _fmt(v: float) -> str:
    if v == float("inf"):
        return "inf"  # a class holding a failed prediction
    return "n/a" if not math.isfinite(v) else f"{v:.3f}"


def _log_mlflow(tracking_uri: str, experiment: str, out: Path, files: Sequence[str],
                summaries: Mapping[str, Mapping[str, float]], unit: str) -> str:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        location = None
        if tracking_uri.startswith("sqlite:///"):  # keep artifacts beside the store, not in the cwd
            location = (Path(tracking_uri[len("sqlite:///"):]).parent / "mlartifacts").resolve().as_uri()
        exp_id = client.create_experiment(experiment, artifact_location=location)
    else:
        exp_id = exp.experiment_id
    run = client.create_run(exp_id, tags={"monai_spine.error_unit": unit})
    rid = run.info.run_id
    try:
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        metrics = []
        for m, s in summaries.items():
            safe = re.sub(r"[^A-Za-z0-9_./ -]", "_", m)
            metrics += [Metric(f"{safe}.{k}", float(v), ts, 0) for k, v in s.items() if math.isfinite(v)]
        for i in range(0, len(metrics), 1000):  # MLflow's batch limit
            client.log_batch(rid, metrics=metrics[i:i + 1000])
        for f in files:
            client.log_artifact(rid, str(out / f), artifact_path="report")
    except Exception:
        client.set_terminated(rid, status="FAILED")
        raise
    client.set_terminated(rid)
    return rid


def report_cli(
    pred_dirs: Mapping[str, str | os.PathLike],
    annotations: str | os.PathLike | Sequence[str | os.PathLike],
    out: str | os.PathLike,
    tracking_uri: str | None = None,
    experiment: str = "monai-spine-report",
    sigma_kind: str = "total",
    bhattacharyya: Mapping[str, Any] | None = None,
    n_samples: int = 3,
    thresholds: Any = None,
) -> Path:
    """Write the HTML report of several models' predictions on one test set.

    Args:
        pred_dirs: model name -> folder (or file list) of ``*.keypoints.json`` predictions.
        annotations: annotation files or dataset folders (matched by file stem).
        out: output folder (created); figures are PNG files next to ``index.html``.
        tracking_uri: MLflow tracking URI; when given, a run in ``experiment`` gets the figures and
            ``index.html`` as artifacts (under ``report/``) and the summary numbers as metrics.
        experiment: MLflow experiment name.
        sigma_kind: ``"total"``, ``"aleatoric"`` or ``"epistemic"`` sigma_p.
        bhattacharyya: optional model name -> patch Bhattacharyya coefficients (array-like, or a
            ``.npy`` / ``.json`` / text file); adds ``bc_hist.png``.
        n_samples: number of most / least certain vertebrae shown per model.
        thresholds: uncertainty-class thresholds: one for every model or a mapping model name -> one (a
            :class:`~monai_spine.uncertainty.classes.Thresholds`, its dict, or a thresholds JSON path);
            a model not given one uses those recorded in its prediction files, else the paper's
            (:func:`resolve_thresholds`).

    Returns:
        path of ``index.html``.

    Raises:
        ValueError: no model, a prediction file without annotation (from ``collect_errors``), or
            ``thresholds`` naming a model that is not reported.
    """
    from monai_spine.outputs import check_output_dir
    from monai_spine.uncertainty.calibration import collect_errors, prediction_models

    if not pred_dirs:
        raise ValueError("report_cli: pred_dirs names no model")
    out_dir = check_output_dir(out)
    pts = {}
    for m, d in pred_dirs.items():
        held = prediction_models(d)
        if len(held) > 1:  # predict --model both: each model is reported, none dropped
            for kind in held:
                pts[f"{m}/{kind}"] = collect_errors(d, annotations, sigma_kind=sigma_kind, model=kind)
        else:
            pts[str(m)] = collect_errors(d, annotations, sigma_kind=sigma_kind)
    units = {p.error_unit for p in pts.values()}
    if len(units) > 1:  # one model has a spacing for every case, another not
        raise ValueError(f"report_cli: models have errors in different units {sorted(units)}; "
                         "give every case a spacing or none")
    unit = units.pop()
    bc = {str(m): _load_bc(v) for m, v in (bhattacharyya or {}).items()} or None

    out_dir.mkdir(parents=True, exist_ok=True)  # only now: a refused input leaves no output folder behind
    per_model = _per_model_thresholds(thresholds, pts)
    thr = {m: resolve_thresholds(p, per_model.get(m)) for m, p in pts.items()}
    figs = _figures(pts, out_dir, unit, bc, {m: t for m, (t, _) in thr.items()})
    summaries = {m: {**summary_numbers(p), **{k: detection_numbers(p)[k] for k in ("detection_recall",
                                                                                   "missed_vertebrae")}}
                 for m, p in pts.items()}
    unc = {m: uncertainty_numbers(p, thr[m][0]) for m, p in pts.items()}
    if bc:
        for m, v in bc.items():
            summaries.setdefault(m, {})["mean_bc"] = _mean(v)

    cols = list(dict.fromkeys(k for s in summaries.values() for k in s))
    head = "".join(f"<th>{html.escape(_column_title(c, unit))}</th>" for c in cols)
    rows = "".join(
        f"<tr><td>{html.escape(m)}</td>"
        + "".join(f'<td class="{c}">{_fmt_cell(c, s.get(c, float("nan")))}</td>' for c in cols)
        + "</tr>"
        for m, s in summaries.items()
    )
    fig_html = "".join(
        f'<section><h3>{html.escape(t)}</h3><img src="{html.escape(f)}" alt="{html.escape(t)}"></section>'
        for t, f in figs
    )
    samples = "".join(_samples(m, p, out_dir, n_samples) for m, p in pts.items())
    text = (
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>monai-spine report</title>"
        "<style>body{font-family:sans-serif}table{border-collapse:collapse}td,th{border:1px solid #999;"
        "padding:2px 6px}img{max-width:100%}section img{max-width:min(100%,70em)}.crops figure{display:inline-block;margin:4px}"
        ".crops img{max-height:200px}</style></head><body>\n"
        f"<h1>monai-spine report</h1>\n<p>Errors in <b>{unit}</b>"
        + (" (pixel spacing unknown for some case)" if unit == "px" else "")
        + f"; sigma_p kind: {html.escape(sigma_kind)}. Means exclude failed predictions.</p>\n"
        f"<h2>Summary (errors in {unit})</h2>\n<table><tr><th>model</th>{head}</tr>{rows}</table>\n"
        + _detection_html(pts)
        + _uncertainty_html(pts, thr, unc, unit) +
        f"<h2>Figures</h2>\n{fig_html}\n<h2>Sample vertebrae</h2>\n{samples}\n</body></html>\n"
    )
    index = out_dir / INDEX_FILE
    atomic_write_text(index, text)
    if tracking_uri:
        files = [f for _, f in figs] + sorted(p.name for p in out_dir.glob("crop_*.png")) + [INDEX_FILE]
        _log_mlflow(tracking_uri, experiment, out_dir, files, {m: {**summaries[m], **unc[m]} for m in pts}, unit)
    return index


def detection_numbers(points: Any) -> dict[str, float]:
    """Vertebra detection of one model over its matched cases (:attr:`MatchedPoints.detection`).

    Returns:
        ``cases``, ``annotated_vertebrae``, ``found_vertebrae``, ``missed_vertebrae``,
        ``extra_vertebrae`` (predicted levels the annotation does not have), ``inferred_vertebrae``
        (placed along the spine, not seen: counted as missed) and ``detection_recall`` (found /
        annotated; NaN when nothing is annotated).
    """
    d = getattr(points, "detection", None) or {}
    return {
        "cases": float(d.get("num_cases", 0)),
        "annotated_vertebrae": float(d.get("annotated", 0)),
        "found_vertebrae": float(d.get("found", 0)),
        "missed_vertebrae": float(len(d.get("missed", []))),
        "extra_vertebrae": float(len(d.get("extra", []))),
        "inferred_vertebrae": float(len(d.get("inferred", []))),
        "detection_recall": float(d.get("recall", float("nan"))),
    }


def _detection_html(pts: Mapping[str, Any], max_listed: int = 20) -> str:
    """Table of vertebra detection per model, with the missed and extra vertebrae named."""
    rows = []
    for m, p in pts.items():
        n = detection_numbers(p)
        d = getattr(p, "detection", None) or {}

        def names(pairs: Sequence[Sequence[str]]) -> str:
            text = ", ".join(f"{Path(c).name.split('.')[0]} {lev}" for c, lev in pairs[:max_listed])
            more = len(pairs) - max_listed
            return html.escape(text + (f" and {more} more" if more > 0 else "")) or "none"

        recall = n["detection_recall"]
        rows.append(
            f"<tr><td>{html.escape(m)}</td><td class=\"cases\">{int(n['cases'])}</td>"
            f"<td class=\"annotated\">{int(n['annotated_vertebrae'])}</td>"
            f"<td class=\"found\">{int(n['found_vertebrae'])}</td>"
            f"<td class=\"recall\">{'n/a' if not math.isfinite(recall) else f'{100 * recall:.1f} %'}</td>"
            f"<td class=\"missed\">{int(n['missed_vertebrae'])}: {names(d.get('missed', []))}</td>"
            f"<td class=\"extra\">{int(n['extra_vertebrae'])}: {names(d.get('extra', []))}</td>"
            f"<td class=\"inferred\">{int(n['inferred_vertebrae'])}: {names(d.get('inferred', []))}</td></tr>"
        )
    return (
        "<h2>Vertebra detection</h2>\n<p>Over the annotated films that have a prediction file: annotated vertebrae "
        "(a level with a visible annotated point), those the model gave a point for, and the recall. Missed "
        "vertebrae have no error in the tables below; extra ones are levels the annotation does not have; "
        "inferred ones were placed along the spine without being seen (counted as missed, their points scored)."
        "</p>\n<table><tr><th>model</th><th>films</th><th>annotated</th><th>found</th><th>recall</th>"
        f"<th>missed</th><th>extra</th><th>inferred</th></tr>{''.join(rows)}</table>\n"
    )


def _per_model_thresholds(thresholds: Any, pts: Mapping[str, Any]) -> dict[str, Any]:
    """``thresholds`` argument of :func:`report_cli` as ``{model: given}``."""
    from monai_spine.uncertainty.classes import Thresholds

    if thresholds is None:
        return {}
    if isinstance(thresholds, Mapping) and not {"tau1", "tau2"} <= set(thresholds):
        unknown = sorted(set(map(str, thresholds)) - set(pts))
        if unknown:
            raise ValueError(f"report_cli: thresholds name model(s) {unknown} not in the report ({sorted(pts)})")
        return {str(k): v for k, v in thresholds.items()}
    if isinstance(thresholds, (Thresholds, Mapping, str, os.PathLike)):
        return {m: thresholds for m in pts}
    raise ValueError(f"report_cli: thresholds must be Thresholds, a dict, a path or a mapping per model, "
                     f"got {type(thresholds).__name__}")


def _pct_key(f: float) -> str:
    """``0.1`` -> ``"10pct"``: the referral share as in :func:`~monai_spine.uncertainty.quality.quality_report` keys."""
    return f"{100 * f:.10g}".replace(".", "_") + "pct"


def _uncertainty_html(pts: Mapping[str, Any], thr: Mapping[str, tuple[Any, str]],
                      unc: Mapping[str, Mapping[str, float]], unit: str) -> str:
    """Tables of the error per uncertainty class and of the accuracy after referral."""
    def cell(v: float, cls: str) -> str:
        text = str(int(v)) if cls.endswith("-count") and math.isfinite(v) else _fmt(v)
        return f'<td class="{cls}">{text}</td>'

    nan = float("nan")
    stats = ("count", "share", f"mean_{unit}", f"median_{unit}", f"q90_{unit}")
    from monai_spine.uncertainty.calibration import NO_CLASS_MESSAGE, calibration_failed, vouched_classes

    def pair(a: float, b: float, units: str) -> str:
        ok = vouched_classes(float(a), float(b))
        if not ok:
            return "no certain or moderately uncertain class"
        t1 = f"tau1 = {a:.4g} {units}" if "certain" in ok else "no certain class"
        t2 = f"tau2 = {b:.4g} {units}" if "moderately_uncertain" in ok else "no moderately uncertain class"
        return f"{t1}, {t2}"

    src = "".join(
        f"<li>{html.escape(m)}: "
        + (f'<b class="calibration-failed">{NO_CLASS_MESSAGE}</b>: every point is classed highly uncertain '
           "(the calibration found no admissible class); " if calibration_failed(t) else
           html.escape(pair(t.tau1, t.tau2, t.units)))
        + "".join(f"; {html.escape(k)}: {html.escape(pair(a, b, t.units))}" for k, (a, b) in t.per_point_type.items()
                  if not calibration_failed(t))
        + f"; {html.escape(how)}</li>"
        for m, (t, how) in thr.items()
    )
    class_rows = "".join(
        f'<tr><td>{html.escape(m)}</td><td>{name.replace("_", " ")}</td>'
        + "".join(cell(u.get(f"class/{name}/{k}", nan), f"class-{name}-{k}") for k in stats) + "</tr>"
        for m, u in unc.items() for _, name in _class_groups()
    )
    sdr = f"sdr_2.0{unit}"
    ref_head = "".join(f"<th>{100 * f:g} % referred: mean {unit} / within 2 {unit}</th>" for f in REFERRAL_FRACTIONS)
    ref_rows = "".join(
        f"<tr><td>{html.escape(m)}</td>"
        + "".join(
            f'<td class="refer-{k}">{_fmt(u.get(f"referral/refer_{k}/mean_{unit}", nan))}'
            f' / {_fmt(u.get(f"referral/refer_{k}/{sdr}", nan))}</td>'
            for k in (_pct_key(float(f)) for f in REFERRAL_FRACTIONS))
        + cell(u.get("spearman_rho", nan), "spearman_rho") + cell(u.get(f"ause_{unit}", nan), "ause") + "</tr>"
        for m, u in unc.items()
    )
    ranks = {m: _rank_units(p) for m, p in pts.items()}
    return (
        "<h2>Uncertainty classes</h2>\n"
        f"<p>Thresholds on sigma_p per model:</p><ul>{src}</ul>\n"
        f"<table><tr><th>model</th><th>class</th><th>points</th><th>share</th><th>mean error ({unit})</th>"
        f"<th>median error ({unit})</th><th>90th percentile ({unit})</th></tr>{class_rows}</table>\n"
        "<p>A class holding a failed prediction has an infinite mean (inf); <i>unknown</i>: sigma_p not finite "
        "in the thresholds' units.</p>\n"
        "<h2>Referral to a human</h2>\n"
        "<p>The given share of the most uncertain points (by sigma_p in "
        + ", ".join(f"{html.escape(m)}: {r}" for m, r in ranks.items())
        + ") is referred; the cells give the mean error of the points kept and the share of them within 2 "
        f"{unit}. Spearman: rank correlation of sigma_p with the error; AUSE: area between the sparsification "
        "curve and its oracle (Ilg et al. 2018), 0 is a perfect ranking.</p>\n"
        f"<table><tr><th>model</th>{ref_head}<th>Spearman</th><th>AUSE {unit}</th></tr>{ref_rows}</table>\n"
    )


# ----------------------------------------------------------------------------------------------
# command line
# ----------------------------------------------------------------------------------------------
def parse_model_dirs(items: Sequence[str], option: str = "--predictions") -> dict[str, str]:
    """``["name=folder", ...]`` (or a bare ``folder``, named after it) to ``{name: folder}``.

    Raises:
        ValueError: a name given twice or an empty name/folder (the message names ``option``).
    """
    out: dict[str, str] = {}
    for item in items:
        name, sep, folder = str(item).partition("=")
        if not sep:
            name, folder = Path(item).name or str(item), str(item)
        if not name or not folder:
            raise ValueError(f"{option}: expected NAME=FOLDER, got {item!r}")
        if name in out:
            raise ValueError(f"{option}: model name {name!r} given twice")
        out[name] = folder
    return out


def add_report_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the options of ``monai-spine report`` to ``parser`` (see :func:`report_from_args`)."""
    parser.add_argument("--predictions", nargs="+", required=True, metavar="NAME=FOLDER",
                        help="per model, a folder of *.keypoints.json predictions (a bare FOLDER is named after it)")
    parser.add_argument("--annotations", nargs="+", required=True, help="annotation files or dataset folders")
    parser.add_argument("--out", required=True, help="output folder of index.html and its PNG figures")
    parser.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (logs figures and numbers)")
    parser.add_argument("--experiment", default="monai-spine-report", help="MLflow experiment name")
    parser.add_argument("--sigma-kind", choices=("total", "aleatoric", "epistemic"), default="total")
    parser.add_argument("--bhattacharyya", nargs="+", default=None, metavar="NAME=FILE",
                        help="per model, patch Bhattacharyya coefficients (.npy, .json list or text file)")
    parser.add_argument("--n-samples", type=int, default=3, help="most / least certain vertebrae shown per model")
    parser.add_argument("--thresholds", nargs="+", default=None, metavar="[NAME=]FILE",
                        help="uncertainty-class thresholds JSON (monai-spine calibrate's thresholds.json): a bare FILE "
                             "for every model, NAME=FILE per model (default: those recorded in the predictions)")
    return parser


def parse_thresholds_args(items: Sequence[str] | None) -> Any:
    """``--thresholds`` values to :func:`report_cli`'s ``thresholds``: one bare ``FILE`` (every model) or
    ``NAME=FILE`` items (per model); None when not given.

    Raises:
        ValueError: a bare file mixed with others, or a malformed / repeated ``NAME=FILE``.
    """
    if not items:
        return None
    if len(items) == 1 and "=" not in items[0]:
        return items[0]
    if any("=" not in i for i in items):
        raise ValueError(f"--thresholds: give one FILE for every model or NAME=FILE items, got {list(items)}")
    return parse_model_dirs(items, "--thresholds")


def report_from_args(args: argparse.Namespace) -> int:
    """Run :func:`report_cli` with the options of :func:`add_report_arguments`; prints the index path, returns 0."""
    index = report_cli(
        parse_model_dirs(args.predictions),
        args.annotations,
        args.out,
        tracking_uri=args.tracking_uri,
        experiment=args.experiment,
        sigma_kind=args.sigma_kind,
        bhattacharyya=parse_model_dirs(args.bhattacharyya, "--bhattacharyya") if args.bhattacharyya else None,
        n_samples=args.n_samples,
        thresholds=parse_thresholds_args(getattr(args, "thresholds", None)),
    )
    print(index)
    return 0
