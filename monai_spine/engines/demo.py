"""The README's main job: train the keypoint regressor from the bundle on the embedded synthetic data.

First the shipped cervical regressor (``bundle/models/cervical/regressor``) is evaluated on the
demo's test films beside the no-network reference (:func:`shipped_summary`); then:

Three bundle runs, in this process, exactly as a user would start them with
``python -m monai.bundle run ...`` from ``bundle/``:

1. ``training`` with ``configs/train.json`` (a laptop-sized override of the paper's settings);
2. ``inference.json`` on the validation split, then ``monai-spine calibrate`` on its predictions:
   tau1/tau2 (BayeRegX rule) and conformal radii, stored beside the model as ``thresholds.json``;
3. ``evaluate.json`` on the held-out test split (metrics CSV);
4. ``inference.json`` on the test split with the calibrated thresholds (keypoint JSON, Slicer
   markups, overlay pictures).

It then prints where the checkpoint, the metrics, the overlays and the MLflow store are, and the
command that opens the MLflow UI.
"""

from __future__ import annotations

import csv
import logging
import os
import time
from pathlib import Path
from typing import Any

__all__ = ["DEMO_OVERRIDES", "bundle_dir", "run_demo", "demo_overrides", "shipped_summary"]

#: the demo's overrides of train.json (whose defaults are the CPU recipe: 112 x 224 crops, width 0.25,
#: codec targets, warm-up + cosine, cached crops with batch augmentation): 1,500 optimisation steps
#: on 60 synthetic radiographs of 512 x 512 px, a few minutes on two CPU cores
DEMO_OVERRIDES: dict[str, Any] = {
    "epochs": 250,
    "val_interval": 25,
    "synthetic#n": 60,
    "synthetic#size": [512, 512],
    "show_progress": True,
    "train#handler#stats#iteration_log": False,  # the progress bar shows the loss; no log line per iteration
    # every synthetic patient faces image left: the paper's flip-with-label-swap augmentation (for real
    # sets with both orientations) only slows a run this short, so the demo switches it off
    "flip_prob": 0.0,
}


def bundle_dir() -> Path:
    """The repository's ``bundle/`` folder (configs, metadata)."""
    d = Path(__file__).resolve().parents[2] / "bundle"
    if not (d / "configs" / "train.json").is_file():
        raise FileNotFoundError(f"bundle configs not found under {d}: run from a source checkout")
    return d


def demo_overrides(
    out: Path, epochs: int | None, n: int | None, variant: str, seed: int, extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Bundle overrides of the demo, writing everything under ``out`` (``extra`` wins)."""
    ov = dict(DEMO_OVERRIDES)
    if epochs is not None:
        ov["epochs"] = int(epochs)
        ov["val_interval"] = max(1, int(epochs) // 10)
    if n is not None:
        ov["synthetic#n"] = int(n)
    ov.update(
        {
            "variant": variant,
            "seed": int(seed),
            "bundle_root": str(bundle_dir()),
            "ckpt_dir": str(out / "models"),
            "mlflow_dir": str(out / "mlruns"),
            "output_dir": str(out / "eval"),
        }
    )
    ov.update(extra or {})
    return ov


def _run(config_files: list[str], run_id: str, overrides: dict[str, Any]) -> None:
    from monai.bundle import run

    import re
    import warnings

    b = bundle_dir()
    cfg = [str(b / "configs" / c) for c in config_files]
    with warnings.catch_warnings():
        # MONAI warns on every config file that it may run code; these are the project's own configs,
        # shipped with the package (a user's own --config_file through monai.bundle still warns)
        warnings.filterwarnings("ignore", message=r"parsing config_file .*" + re.escape(str(b / "configs")))
        run(
            run_id=run_id,
            meta_file=str(b / "configs" / "metadata.json"),
            config_file=cfg if len(cfg) > 1 else cfg[0],
            logging_file=str(b / "configs" / "logging.conf"),
            **overrides,
        )


def _split_labels(overrides: dict[str, Any], split: str) -> list[str]:
    """Annotation paths of a split, resolved by the bundle itself (same data and seed as training)."""
    from monai.bundle import ConfigParser

    b = bundle_dir()
    parser = ConfigParser()
    parser.read_config(str(b / "configs" / "train.json"))
    parser.update({k: v for k, v in overrides.items() if not k.startswith("train#")})
    return list(parser.get_parsed_content("splits")[split])


def _keep_in_mlflow(overrides: dict[str, Any], out: Path, metrics_csv: Path) -> None:
    """The calibration files, the test metrics and three overlays, kept with the training run."""
    from monai_spine.engines.regressor import log_to_latest_run, sqlite_tracking_uri

    models = out / "models"
    files = [models / f for f in ("thresholds.json", "conformal.json", "calibration_report.json")] + [metrics_csv]
    files += sorted((out / "predictions").glob("*.overlay.png"))[:3]
    try:
        log_to_latest_run(sqlite_tracking_uri(overrides["mlflow_dir"]), "monai-spine-regressor", files, "results")
    except Exception as e:  # MLflow is a record, not the job: say so and go on
        print(f"  (could not add the results to the MLflow run: {e})")


def shipped_summary(overrides: dict[str, Any], log: Any = print) -> dict[str, float] | None:
    """Evaluate the shipped cervical regressor (``bundle/models/cervical/regressor``) on the demo's
    test split, beside the mean shape in the same crops, and print both; None when none ships.

    The shipped model was trained on synthetic films of another generator seed, so the demo's films
    are new to it.
    """
    from monai_spine.inference.model_zoo import find_model

    folder = find_model("cervical", "regressor")
    if folder is None:
        log("[monai-spine demo] no shipped cervical regressor in bundle/models: training only")
        return None
    from monai_spine.evaluation.predictor import MeanShapePredictor, evaluate_predictor
    from monai_spine.inference.regressor import KeypointPredictor
    from monai_spine.metrics.keypoint_error import summarize_errors

    predictor = KeypointPredictor.from_checkpoint(folder, num_samples=10)
    framing = "spine-frame boxes around the annotated centres" if predictor.box_rule is not None else "annotation boxes"
    test = _split_labels(overrides, "test")
    res = {}
    for name, p in (("shipped model", predictor),
                    ("mean shape", MeanShapePredictor(predictor, _split_labels(overrides, "training"), "cervical"))):
        arr = evaluate_predictor(p, test, "cervical")
        s = summarize_errors(arr.errors, image_ids=arr.image_ids, unit=arr.unit)
        res[name] = s
        u = arr.unit
        log(f"[monai-spine demo] {name:>13} on the demo's {arr.num_images} test films ({framing}): "
            f"mean {s[f'mean_{u}']:.2f} {u}, scans < 2 {u}: {100 * s[f'scans_below_2.0{u}']:.1f} %")
    log(f"[monai-spine demo] shipped model: {folder} (model card: {folder / 'README.md'})")
    return {k: v.get("mean_mm", float("nan")) for k, v in res.items()}


def run_demo(
    out: str | os.PathLike = "runs/demo",
    epochs: int | None = None,
    n: int | None = None,
    variant: str = "bayecbam",
    seed: int = 0,
    extra_overrides: dict[str, Any] | None = None,
) -> int:
    """Train, calibrate, evaluate and predict on the synthetic default; print where everything went.

    Args:
        out: output folder (models, MLflow store, metrics, predictions).
        epochs, n, variant, seed: the usual overrides.
        extra_overrides: further bundle overrides (tests use tiny settings).

    Returns:
        0 on success (exceptions propagate to the CLI, which reports them).
    """
    from monai_spine.evaluation.calibration import calibrate_from_predictions

    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    ov = demo_overrides(out, epochs, n, variant, seed, extra_overrides)
    shipped_summary(ov)
    t0 = time.time()
    print(f"[monai-spine demo] training {variant} on {ov['synthetic#n']} synthetic cervical radiographs, "
          f"{ov['epochs']} epochs (outputs in {out})", flush=True)
    _run(["train.json"], "training", ov)
    t_train = time.time() - t0
    logging.getLogger().setLevel(logging.WARNING)
    ev = dict(ov, show_progress=False)
    val_pred = out / "validation-predictions"
    _run(["train.json", "inference.json"], "run", dict(ev, output_dir=str(val_pred), infer_split="validation"))
    calib = calibrate_from_predictions(
        sorted(str(p) for p in val_pred.glob("*.keypoints.json")), _split_labels(ev, "validation"), out / "models",
        min_count=5,
    )
    _run(["train.json", "evaluate.json"], "run", ev)
    _run(["train.json", "inference.json"], "run", dict(ev, output_dir=str(out / "predictions")))
    metrics = {}
    metrics_csv = out / "eval" / "metrics.csv"
    _keep_in_mlflow(ev, out, metrics_csv)
    if metrics_csv.is_file():
        with open(metrics_csv) as f:
            metrics = {row[0]: float(row[1]) for row in csv.reader(f) if len(row) == 2}
    unit = "mm" if metrics.get("val_spacing_known", 1.0) == 1.0 else "px"
    store = out / "mlruns" / "mlruns.db"
    print("\n[monai-spine demo] done in %.0f s (training %.0f s)" % (time.time() - t0, t_train))
    if metrics:
        print(
            f"  test split: mean error {metrics.get(f'val_mean_{unit}', float('nan')):.2f} {unit}, "
            f"median {metrics.get(f'val_median_{unit}', float('nan')):.2f} {unit}, "
            f"scans with mean error < 2 mm: {100 * metrics.get('val_scans_below_2.0mm', float('nan')):.1f} %, "
            f"SDR@2mm {100 * metrics.get('val_sdr_2.0mm', float('nan')):.1f} %"
        )
    th = calib.get("thresholds", {}) if isinstance(calib, dict) else {}
    if isinstance(calib, dict) and calib.get("failed"):
        print(f"  uncertainty calibration: {calib.get('message', 'failed')}")
    elif th:
        print(f"  calibrated uncertainty thresholds (tau1, tau2) = ({th.get('tau1', float('nan')):.4g}, "
              f"{th.get('tau2', float('nan')):.4g}) {th.get('units', '')} -> {out / 'models' / 'thresholds.json'}")
    print(f"  checkpoint:   {out / 'models' / 'model.pt'}")
    print(f"  metrics:      {metrics_csv}")
    print(f"  predictions:  {out / 'predictions'} (*.keypoints.json, *.mrk.json, *.overlay.png)")
    print(f"  MLflow store: {store}")
    print(f"  view it:      .venv/bin/mlflow ui --backend-store-uri sqlite:///{store} --host 127.0.0.1 --port 5000")
    return 0
