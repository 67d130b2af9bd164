"""The figures of the report (``monai-spine report``): PNG plots and crops of sample vertebrae.

:func:`_figures` writes the plots listed in :data:`FIGURES` (and ``bc_hist.png``) for
:func:`monai_spine.evaluation.report.report_cli`, which writes the HTML page linking them with
:func:`figure_html`; :func:`_samples` crops pictures of the most and least certain vertebrae. Also the
helpers both modules use: :data:`POINT_TYPES`, :func:`level_sort_key`, the uncertainty classes of
the points and the units the ranking uses.

* The sigma figures (KDE and 2D histogram) show the same ``sigma_p`` in the same unit per model
  (:func:`plotted_sigma`; the KDE's data: :func:`sigma_kde_data`, :func:`kde_curve`).
* Figures are saved at :data:`SAVE_DPI` and shown at :data:`DISPLAY_PX_PER_INCH` CSS pixels per inch
  of figure (:func:`display_size`), so a browser never stretches them.
* Sample crops are cut from the film with the points drawn as in the overlay but without its legend
  and scale bar (:func:`film_picture`, :func:`crop_box`), so no legend shows in a crop.
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

__all__ = [
    "FIGURES",
    "POINT_TYPES",
    "SAVE_DPI",
    "DISPLAY_PX_PER_INCH",
    "level_sort_key",
    "plotted_sigma",
    "sigma_axis_label",
    "sigma_kde_data",
    "kde_curve",
    "display_size",
    "figure_html",
    "crop_box",
    "film_picture",
]

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
#: dots per inch of figure the PNGs are saved at (twice :data:`DISPLAY_PX_PER_INCH`: sharp on 2x screens)
SAVE_DPI = 200
#: CSS pixels per inch of figure the page shows them at (10 pt text about 14 CSS px tall)
DISPLAY_PX_PER_INCH = 100


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
    """Save ``fig`` as the PNG ``path`` at :data:`SAVE_DPI` (its size in inches kept) and close it."""
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=SAVE_DPI)
    _plt().close(fig)
    return path.name


def _png_size_px(path: Path) -> tuple[int, int]:
    """``(width, height)`` in pixels of the PNG ``path``, from its header.

    Raises:
        ValueError: ``path`` is no PNG file (the message names it).
    """
    with open(path, "rb") as f:
        head = f.read(24)
    if len(head) < 24 or head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        raise ValueError(f"{path}: not a PNG file")
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


def display_size(path: str | os.PathLike) -> tuple[int, int]:
    """``(width, height)`` in CSS pixels at which the page shows a figure saved by :func:`_figures`.

    The PNG's pixels over :data:`SAVE_DPI` give the figure's inches, shown at :data:`DISPLAY_PX_PER_INCH`:
    a 5 x 3.5 inch figure is a 1000 x 700 pixel PNG shown at 500 x 350 CSS pixels (two PNG pixels per
    CSS pixel, never stretched).

    Raises:
        ValueError: ``path`` is no PNG file.
    """
    w, h = _png_size_px(Path(path))
    scale = DISPLAY_PX_PER_INCH / SAVE_DPI
    return max(1, round(w * scale)), max(1, round(h * scale))


def figure_html(title: str, file_name: str, out_dir: str | os.PathLike) -> str:
    """HTML section of one figure: its title and an ``<img>`` with the width and height of :func:`display_size`
    (the page's CSS caps the width at the page's, the height follows)."""
    w, h = display_size(Path(out_dir) / file_name)
    t = html.escape(title)
    return f'<section><h3>{t}</h3><img src="{html.escape(file_name)}" width="{w}" height="{h}" alt="{t}"></section>'


def _legend(ax: Any, **kw: Any) -> None:
    """A legend when something is labelled (no matplotlib warning for an empty panel)."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(**kw)


def plotted_sigma(points: Any, thresholds: Any = None) -> tuple[np.ndarray, str]:
    """The ``sigma_p`` both sigma figures (KDE and 2D histogram) show for one model, and its unit.

    The thresholds' units when the points have a finite sigma_p in them (so that tau1 / tau2 can be
    drawn on the same axis), else crop fractions, else mm: the regressor has both, the corner FCN mm
    only (none when the pixel spacing is unknown: its px sigma is not in the matched points).

    Args:
        points: one model's :class:`~monai_spine.evaluation.matching.MatchedPoints` (``sigma(units)``).
        thresholds: the model's :class:`~monai_spine.uncertainty.classes.Thresholds` (``units``), or None.

    Returns:
        ``(sigma, unit)``: (n,) sigma_p of every point (NaN where unknown) and ``"frac"`` / ``"mm"``.
    """
    first = getattr(thresholds, "units", None)
    units = list(dict.fromkeys([u for u in (first, "frac", "mm") if u is not None]))
    for u in units:
        s = np.asarray(points.sigma(u), dtype=np.float64)
        if np.isfinite(s).any():
            return s, u
    return np.asarray(points.sigma(units[0]), dtype=np.float64), units[0]


def sigma_axis_label(unit: str) -> str:
    """Axis label of sigma_p in ``unit``: ``"sigma_p (crop fraction)"``, ``"sigma_p (mm)"``."""
    return f"sigma_p ({'crop fraction' if unit == 'frac' else unit})"


def sigma_kde_data(points: Any, thresholds: Any = None) -> tuple[str, dict[str, np.ndarray]]:
    """The data of one model's KDE panel: the unit and the finite sigma_p of each point type.

    Uses :func:`plotted_sigma`, so the KDE shows the values and unit of the 2D histogram beside it.

    Returns:
        ``(unit, {point type: (n_t,) finite sigma_p})`` for every type of :data:`POINT_TYPES` (empty
        where a type has none, e.g. the corner FCN's spinous process).
    """
    sigma, unit = plotted_sigma(points, thresholds)
    types = np.asarray(points.point_types)
    return unit, {t: _finite(sigma[types == t]) for t in POINT_TYPES}


def kde_curve(values: np.ndarray, n_grid: int = 300) -> tuple[np.ndarray, np.ndarray] | None:
    """Gaussian KDE (``scipy.stats.gaussian_kde``, Scott's bandwidth) of the finite ``values``.

    The grid reaches three kernel standard deviations beyond the smallest and largest value, so the
    curve falls to (nearly) zero at both ends.

    Args:
        values: (n,) numbers (non-finite ones are left out).
        n_grid: points of the grid.

    Returns:
        ``(xs, density)``, both (n_grid,), or None when fewer than 2 distinct finite values (no KDE).
    """
    from scipy.stats import gaussian_kde

    v = _finite(values)
    if v.size < 2 or np.ptp(v) <= 1e-12 * max(1.0, abs(float(v.mean()))):
        return None
    try:
        kde = gaussian_kde(v)
    except np.linalg.LinAlgError:
        return None
    pad = 3.0 * float(np.sqrt(kde.covariance[0, 0]))  # three kernel sds: the curve falls to zero at both ends
    xs = np.linspace(v.min() - pad, v.max() + pad, n_grid)
    return xs, kde(xs)


def _kde_line(ax: Any, values: np.ndarray, label: str, color: str) -> None:
    """:func:`kde_curve` of ``values`` and a rug of them; a vertical line at their mean when there is no KDE
    (fewer than 2 distinct values); nothing when no value is finite."""
    v = _finite(values)
    if v.size == 0:
        return
    curve = kde_curve(v)
    if curve is None:
        ax.axvline(float(v.mean()), color=color,
                   label=f"{label} (n={v.size}, {'one value' if v.size == 1 else 'constant'})")
    else:
        ax.plot(*curve, color=color, label=f"{label} (n={v.size})")
        ax.set_ylim(bottom=0)
    # rug: one tick per point at the bottom of the panel (x in data, y in axes fraction)
    ax.plot(v, np.full(v.size, 0.02), "|", color=color, ms=8, alpha=0.6, transform=ax.get_xaxis_transform())


def _no_data(ax: Any, text: str = "no data") -> None:
    """Say ``text`` in the middle of an empty panel."""
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", color="#555555")


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
        su, by_type = sigma_kde_data(p, thresholds.get(m))  # the values and unit of the 2D histogram
        for t, v in by_type.items():
            _kde_line(ax, v, t, _TYPE_COLOURS[t])
        empty = [t for t, v in by_type.items() if not v.size]
        if len(empty) == len(by_type):
            _no_data(ax, "no data: no finite sigma_p")
        for t in empty if len(empty) < len(by_type) else ():  # said in the legend, beside the other type's curve
            ax.plot([], [], color=_TYPE_COLOURS[t], ls="none", marker="|", label=f"{t}: no data")
        ax.set_xlabel(sigma_axis_label(su))
        ax.set_ylabel("density")
        ax.set_title(m)
        _legend(ax, fontsize=7)
    figs.append(("KDE of sigma_p: corners vs spinous process", _save(fig, out / FIGURES[1])))

    # (error, sigma_p) 2D histogram
    fig, axes = plt.subplots(1, len(models), figsize=(4 * len(models), 3.5), squeeze=False)
    for ax, (m, p) in zip(axes[0], pts.items()):
        thr = thresholds.get(m)
        sig, su = plotted_sigma(p, thr)
        keep = np.isfinite(p.errors) & np.isfinite(sig)
        if keep.any():
            hb = ax.hexbin(p.errors[keep], sig[keep], gridsize=20, mincnt=1, cmap="viridis")
            fig.colorbar(hb, ax=ax, label="points")
        else:
            _no_data(ax, "no data: no finite (error, sigma_p)")
        if thr is not None and thr.units != su:  # e.g. the paper's thresholds (frac) over the corner FCN (mm)
            ax.plot([], [], ls="none", label=f"thresholds in {thr.units}: not drawn")
            _legend(ax, fontsize=7, loc="upper right")
        elif thr is not None:
            from monai_spine.uncertainty.thresholds import vouched_classes

            ok = vouched_classes(float(thr.tau1), float(thr.tau2))
            for name, tau, style in (("tau1", thr.tau1, "--"), ("tau2", thr.tau2, ":")):
                if ("certain" if name == "tau1" else "moderately_uncertain") in ok:
                    ax.axhline(float(tau), color="#d62728", ls=style, lw=1.2, label=f"{name} = {tau:.3g} {su}")
            _legend(ax, fontsize=7, loc="upper right")
        ax.set_xlabel(f"error ({unit})")
        ax.set_ylabel(sigma_axis_label(su))
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


def _overlay_path(pred_json: str) -> Path:
    p = Path(pred_json)
    return p.with_name(p.name.removesuffix(".keypoints.json") + ".overlay.png")


def _film_path(pred_json: Path, image: Any) -> Path | None:
    """The film a prediction file names (``image``): as given when absolute, else against the current
    folder, then the prediction's folder; None when no such file exists."""
    if not isinstance(image, str) or not image:
        return None
    p = Path(image)
    cands = [p] if p.is_absolute() else [Path.cwd() / p, pred_json.parent / p]
    return next((c for c in cands if c.is_file()), None)


def film_picture(pred_json: str | os.PathLike) -> np.ndarray | None:
    """The film of a prediction file with its points drawn as in its overlay, without legend or scale bar.

    The film (the file's ``image``) is windowed as the overlay is
    (:func:`~monai_spine.inference.overlay.to_display_uint8`) and the layers the overlay draws
    (:func:`~monai_spine.inference.pipeline.overlay_layers`: points by class, conformal rings, level
    names) are drawn on it; the legend and the scale bar, which the overlay puts in the film's corners,
    are not, so a crop near a corner shows the film only.

    Args:
        pred_json: a prediction file (``*.keypoints.json`` / ``*.corners.json``).

    Returns:
        (H, W, 3) uint8 RGB picture, or None when the file or its film cannot be read.
    """
    import json
    import warnings

    from monai_spine.data.readers import read_xray
    from monai_spine.inference.overlay import draw_keypoints, to_display_uint8
    from monai_spine.inference.pipeline import overlay_layers

    path = Path(pred_json)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    film = _film_path(path, record.get("image")) if isinstance(record, dict) else None
    if film is None:
        return None
    try:
        with warnings.catch_warnings():  # spacing / colour notes of the reader: no concern of a picture
            warnings.simplefilter("ignore")
            img = read_xray(film)
        layers, _ = overlay_layers(record)
    except (OSError, ValueError, KeyError, TypeError):  # XrayReadError is a ValueError
        return None
    gray = to_display_uint8(img.array)
    canvas = np.ascontiguousarray(np.repeat(gray[..., None], 3, axis=-1))
    for layer in layers:
        draw_keypoints(canvas, **layer)
    return canvas


def crop_box(xy: np.ndarray, shape_hw: tuple[int, int], margin: float = 0.6) -> tuple[int, int, int, int] | None:
    """Pixel box around the points ``xy`` with a margin of ``margin`` x their extent, inside the picture.

    Args:
        xy: (K, 2) (x, y) pixels (rows with a NaN are left out).
        shape_hw: ``(H, W)`` of the picture.
        margin: padding on every side as a share of the points' larger extent (at least 8 px counted).

    Returns:
        ``(x0, y0, x1, y1)`` (x1, y1 exclusive), or None without a finite point or when the box is empty.
    """
    xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    fin = xy[np.all(np.isfinite(xy), axis=1)]
    if not fin.size:
        return None
    h, w = shape_hw
    lo, hi = fin.min(0), fin.max(0)
    pad = margin * max(float(np.max(hi - lo)), 8.0)
    x0, y0 = (int(max(0, math.floor(v - pad))) for v in lo)
    x1, y1 = int(min(w, math.ceil(hi[0] + pad) + 1)), int(min(h, math.ceil(hi[1] + pad) + 1))
    if x1 <= x0 or y1 <= y0:
        return None
    return x0, y0, x1, y1


def _samples(model: str, p: Any, out: Path, n: int) -> str:
    """HTML of crops (or links) around the ``n`` most and least certain vertebrae of one model.

    Crops are cut from :func:`film_picture` (no legend); a film that cannot be read gives a link to the
    overlay when there is one.
    """
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
    pictures: dict[str, np.ndarray | None] = {}  # one rendering per film
    for kind, chosen in (("certain", ranked[:n]), ("uncertain", ranked[::-1][:n])):
        items = []
        for i, (case, lev) in enumerate(chosen):
            sig = float(np.mean(keys[(case, lev)]))
            ov = _overlay_path(case)
            caption = f"{html.escape(Path(case).name)} {html.escape(lev)}: mean sigma_p = {sig:.4f} {su}"
            if case not in pictures:
                pictures[case] = film_picture(case)
            crop = _crop(pictures[case], _vertebra_points(case, lev), out / f"crop_{safe}_{kind}_{i}.png")
            if crop is not None:
                items.append(f'<figure><img src="{html.escape(crop)}" alt="{caption}"><figcaption>{caption}'
                             f"</figcaption></figure>")
            elif ov.is_file():
                rel = os.path.relpath(ov.resolve(), out.resolve())
                items.append(f'<li><a href="{html.escape(rel)}">{caption}</a> (film not readable: overlay)</li>')
            else:
                items.append(f"<li>{caption} (no film or overlay)</li>")
        title = "Most certain" if kind == "certain" else "Least certain"
        figures = "".join(x for x in items if x.startswith("<figure"))
        lis = "".join(x for x in items if x.startswith("<li"))
        lis = f"<ul>{lis}</ul>" if lis else ""
        parts.append(f'<h4>{title} vertebrae</h4><div class="crops">{figures}</div>{lis}')
    return f"<h3>{html.escape(model)}</h3>" + "".join(parts)


def _crop(picture: np.ndarray | None, xy: np.ndarray | None, dest: Path, margin: float = 0.6) -> str | None:
    """Write the :func:`crop_box` of ``picture`` (H, W, 3) RGB around the points ``xy`` (K, 2) as the PNG ``dest``.

    Returns:
        ``dest``'s file name, or None (no picture, no finite point, or the PNG not written).
    """
    if picture is None or xy is None:
        return None
    import cv2

    box = crop_box(xy, picture.shape[:2], margin)
    if box is None:
        return None
    x0, y0, x1, y1 = box
    if not cv2.imwrite(str(dest), cv2.cvtColor(np.ascontiguousarray(picture[y0:y1, x0:x1]), cv2.COLOR_RGB2BGR)):
        return None
    return dest.name
