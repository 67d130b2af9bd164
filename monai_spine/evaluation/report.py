"""HTML report of keypoint predictions over a test set (``monai-spine report``).

:func:`report_cli` matches the prediction files ``<stem>.keypoints.json`` of one or more models
(written by :func:`monai_spine.inference.regressor.predict_cases`) to their annotations ``<stem>.json``
with :func:`monai_spine.evaluation.matching.collect_errors`, and writes to ``out``:

* ``violin_errors.png``: point errors per model, corners vs spinous process (BayeRegX figure 12);
* ``kde_sigma.png``: KDE (``scipy.stats.gaussian_kde``) of ``sigma_p`` for corners vs spinous process,
  in the ``sigma_p`` and unit of ``error_vs_sigma.png`` (:func:`~monai_spine.evaluation.report_figures.plotted_sigma`);
* ``error_vs_sigma.png``: 2D histogram (hexbin) of (error, ``sigma_p``) per model;
* ``cumulative_errors.png``: share of points with error <= x, per model;
* ``box_point_name.png`` / ``box_level.png``: box plots of the error per point name / vertebra level;
* ``box_class.png``: box plots of the error per uncertainty class (certain / moderately / highly
  uncertain / unknown) per model;
* ``referral.png``: mean error of the points kept against the share of the most uncertain points
  referred to a human, per model;
* ``bc_hist.png``: histogram of patch Bhattacharyya coefficients (only when given);
* ``crop_<model>_<certain|uncertain>_<i>.png``: crops around the most and least certain vertebrae
  (mean ``sigma_p`` of their points), cut from the film with the overlay's points drawn but not its
  legend or scale bar, or a list with links to the overlay PNGs when the film cannot be read;
* ``index.html`` (written atomically) linking all of them (each figure shown at its saved size,
  :func:`~monai_spine.evaluation.report_figures.figure_html`), with a table of summary numbers, a table of
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
from monai_spine.evaluation.report_figures import (
    POINT_TYPES,
    _class_groups,
    _figures,
    _finite,
    figure_html,
    _rank_units,
    _samples,
)

__all__ = [
    "INDEX_FILE",
    "summary_numbers",
    "detection_numbers",
    "uncertainty_numbers",
    "resolve_thresholds",
    "REFERRAL_FRACTIONS",
    "report_cli",
]

#: file name of the HTML report
INDEX_FILE = "index.html"
#: shares of the most uncertain points referred to a human in the referral table (the figure uses a finer grid)
REFERRAL_FRACTIONS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5)


def _mean(x: np.ndarray) -> float:
    x = _finite(x)
    return float(x.mean()) if x.size else float("nan")


def summary_numbers(points: Any) -> dict[str, float]:
    """Summary numbers of one model's :class:`~monai_spine.evaluation.matching.MatchedPoints`.

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
        points: the model's :class:`~monai_spine.evaluation.matching.MatchedPoints` (its ``cases`` are
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
    from monai_spine.evaluation.matching import collect_errors, prediction_models

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
    fig_html = "".join(figure_html(t, f, out_dir) for t, f in figs)  # shown at their saved size, never stretched
    samples = "".join(_samples(m, p, out_dir, n_samples) for m, p in pts.items())
    text = (
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>monai-spine report</title>"
        "<style>body{font-family:sans-serif}table{border-collapse:collapse}td,th{border:1px solid #999;"
        "padding:2px 6px}img{max-width:100%;height:auto}section img{max-width:min(100%,70em)}.crops figure{display:inline-block;margin:4px}"
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
    from monai_spine.uncertainty.thresholds import NO_CLASS_MESSAGE, calibration_failed, vouched_classes

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
