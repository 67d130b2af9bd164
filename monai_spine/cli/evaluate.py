"""``monai-spine report`` and ``calibrate``: predictions checked against annotations.

* ``report`` writes an HTML report (and an MLflow run) of predictions over a test set
  (:func:`monai_spine.evaluation.report.report_cli`);
* ``calibrate`` fits the uncertainty thresholds (tau1, tau2) and conformal radii on validation
  predictions and writes them beside the model
  (:func:`monai_spine.evaluation.calibration.calibrate_from_predictions`).

This module parses their options and prints; the work is done in :mod:`monai_spine.evaluation`,
imported lazily so ``monai-spine --help`` stays fast.
"""

from __future__ import annotations

import argparse
import inspect
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from monai_spine.uncertainty.classes import THRESHOLD_UNITS
from monai_spine.uncertainty.conformal import SCORES
from monai_spine.uncertainty.thresholds import (
    DEFAULT_BOUNDS,
    DEFAULT_CONFIDENCE,
    DEFAULT_MIN_COUNT,
    DEFAULT_QUANTILE,
    NO_CLASS_MESSAGE,
    vouched_classes,
)

__all__ = [
    "register",
    "add_report_arguments",
    "parse_model_dirs",
    "parse_thresholds_args",
    "report_from_args",
    "add_calibrate_arguments",
    "calibrate_cli",
    "calibrate_from_args",
]


def register(sub: "argparse._SubParsersAction") -> None:
    """Add ``report`` and ``calibrate`` to the ``monai-spine`` subcommands."""
    rp = sub.add_parser("report", help="HTML report (and MLflow run) of predictions over a test set")
    add_report_arguments(rp)
    rp.set_defaults(func=report_from_args)

    c = sub.add_parser("calibrate", help="fit uncertainty thresholds (tau1, tau2) and conformal radii on validation predictions")
    add_calibrate_arguments(c)
    c.set_defaults(func=calibrate_from_args)


# ----------------------------------------------------------------------------------------------
# report
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
    """``--thresholds`` values to :func:`~monai_spine.evaluation.report.report_cli`'s ``thresholds``: one bare ``FILE`` (every model) or
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
    """Run :func:`~monai_spine.evaluation.report.report_cli` with the options of :func:`add_report_arguments`;
    prints the index path, returns 0."""
    from monai_spine.evaluation.report import report_cli

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


# ----------------------------------------------------------------------------------------------
# calibrate
# ----------------------------------------------------------------------------------------------
def add_calibrate_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the options of ``monai-spine calibrate`` to ``parser`` (names match :func:`calibrate_cli`)."""
    parser.add_argument(
        "--predictions", nargs="+", required=True,
        help="validation prediction files or folders (*.keypoints.json from the bundle's inference.json)",
    )
    parser.add_argument("--annotations", nargs="+", required=True, help="annotation files or dataset folders")
    parser.add_argument(
        "--models-dir", "--ckpt-dir", dest="models_dir", required=True,
        help="the bundle's models folder (beside model.pt): thresholds.json and conformal.json go there",
    )
    parser.add_argument("--sigma-units", choices=THRESHOLD_UNITS, default=None,
                        help="units of sigma_p thresholds (default: frac for the regressor, mm for the heatmap model)")
    parser.add_argument("--sigma-kind", choices=("total", "aleatoric", "epistemic"), default="total")
    parser.add_argument("--bounds", nargs=2, type=float, default=list(DEFAULT_BOUNDS), metavar=("B1", "B2"),
                        help="error bounds of the certain / moderate classes (mm; px if spacing unknown)")
    parser.add_argument("--quantile", type=float, default=DEFAULT_QUANTILE,
                        help="share of a class that must err at most its bound")
    parser.add_argument("--min-count", type=int, default=DEFAULT_MIN_COUNT, help="smallest class to fit on")
    parser.add_argument("--confidence", type=float, default=DEFAULT_CONFIDENCE,
                        help="one-sided confidence that a class meets its quantile (Clopper-Pearson); 0 = off")
    parser.add_argument("--no-per-point-type", dest="per_point_type", action="store_false",
                        help="one threshold pair / q_hat for all point types")
    parser.add_argument("--alpha", type=float, default=0.1, help="conformal miscoverage (radius covers 1 - alpha)")
    parser.add_argument("--score", choices=SCORES, default="normalized", help="conformal nonconformity score")
    parser.add_argument("--conformal-sigma-units", choices=THRESHOLD_UNITS, default=None,
                        help="sigma_p units of the conformal score (default: --sigma-units)")
    parser.add_argument("--model", choices=("regressor", "heatmap"), default=None,
                        help="which points of predictions holding both (predict --model both); default: the "
                             "regressor's, said on stderr")
    return parser


def calibrate_cli(
    predictions: Sequence[str],
    annotations: Sequence[str],
    models_dir: str,
    sigma_units: str | None = None,
    sigma_kind: str = "total",
    bounds: Sequence[float] = DEFAULT_BOUNDS,
    quantile: float = DEFAULT_QUANTILE,
    min_count: int = DEFAULT_MIN_COUNT,
    confidence: float | None = DEFAULT_CONFIDENCE,
    per_point_type: bool = True,
    alpha: float = 0.1,
    score: str = "normalized",
    conformal_sigma_units: str | None = None,
    model: str | None = None,
) -> int:
    """``monai-spine calibrate``: :func:`~monai_spine.evaluation.calibration.calibrate_from_predictions` plus a
    printed summary.

    Typical use: predict the validation split with the bundle
    (``inference.json`` with ``--infer_split validation --output_dir runs/val_pred``), then
    ``monai-spine calibrate --predictions runs/val_pred --annotations <dataset> --models-dir <ckpt_dir>``;
    later inference runs pick ``thresholds.json`` up from ``ckpt_dir``.

    Returns:
        0; 1 when no certain or moderate class could be vouched for (:func:`~monai_spine.uncertainty.thresholds.calibration_failed`; said
        in words on stderr, the files are still written and their source says so). Other errors
        propagate as exceptions, reported by the CLI.
    """
    from monai_spine.evaluation.calibration import calibrate_from_predictions
    from monai_spine.evaluation.matching import prediction_models

    if model is None:
        held = prediction_models(predictions)
        if len(held) > 1:
            print(f"monai-spine calibrate: note: the predictions hold {' and '.join(held)} points; calibrating the "
                  f"{held[0]}'s (pass --model {held[1]} for the other)", file=sys.stderr)
    s = calibrate_from_predictions(
        predictions,
        annotations,
        models_dir,
        model=model,
        sigma_units=sigma_units,
        sigma_kind=sigma_kind,
        bounds=tuple(bounds),
        quantile=quantile,
        min_count=min_count,
        confidence=confidence or None,  # 0 switches the confidence bound off
        per_point_type=per_point_type,
        alpha=alpha,
        score=score,
        conformal_sigma_units=conformal_sigma_units,
    )
    unit = s["error_unit"]
    t = s["thresholds"]
    print(f"calibrated on {s['num_points']} points of {s['num_cases']} cases (errors in {unit}, sigma_p {sigma_kind})")
    print(f"  thresholds ({t['units']}): {_pair_text(t['tau1'], t['tau2'])}")
    for ptype, (t1, t2) in t["per_point_type"].items():
        print(f"    {ptype}: {_pair_text(t1, t2)}")
    for name, sel in s["selections"].items():
        c = sel["counts"]
        notes = [f"no admissible tau{i}" for i, fb in ((1, sel["fallback_tau1"]), (2, sel["fallback_tau2"])) if fb]
        print(f"    {name}: certain/moderate/high = {c['certain']}/{c['moderately_uncertain']}/{c['highly_uncertain']}"
              + (f" ({', '.join(notes)})" if notes else ""))
    c = s["conformal"]
    q = "inf" if c["q_hat"] is None else f"{c['q_hat']:.4g}"
    print(f"  conformal ({c['score']}, alpha {c['alpha']:g}): q_hat={q}")
    for name, path in s["files"].items():
        print(f"  {name}: {path}")
    if s["failed"]:
        print(f"monai-spine calibrate: failed: {s['message']}; every point would be classed highly uncertain "
              f"(the files say so in their source). More or better validation predictions, a lower --min-count "
              f"or looser --bounds / --quantile may find a class.", file=sys.stderr)
        return 1
    return 0


def _pair_text(tau1: float, tau2: float) -> str:
    """``tau1=.. tau2=..`` in words where a class was not admissible (never ``tau2=4.9e-324``)."""
    ok = vouched_classes(float(tau1), float(tau2))
    a = f"tau1={tau1:.6g}" if "certain" in ok else "tau1=0 (no certain class)"
    b = f"tau2={tau2:.6g}" if "moderately_uncertain" in ok else "no moderately uncertain class"
    return f"{a} {b}" if ok else f"{NO_CLASS_MESSAGE} ({a}, {b})"


def calibrate_from_args(args: argparse.Namespace) -> int:
    """Run :func:`calibrate_cli` with the options parsed by :func:`add_calibrate_arguments`.

    Other attributes of ``args`` (``func``, ``command``...) are ignored, so the ``monai-spine`` parser
    can use ``set_defaults(func=calibrate_from_args)``.
    """
    names = inspect.signature(calibrate_cli).parameters
    return calibrate_cli(**{k: v for k, v in vars(args).items() if k in names})
