"""``monai-spine predict`` and ``corners``: keypoints from films, fully automatic or from clicks.

* ``predict`` runs :class:`~monai_spine.inference.pipeline.SpinePipeline` (detector, then regressor
  and/or corner FCN) on every film and writes one ``<stem>.keypoints.json`` (with markups and an
  overlay) per film; a film in which nothing can be found gets no outputs and is listed as
  ``nothing found in <file>: <why>`` on stderr (exit 1);
* ``corners`` runs the corner FCN (:class:`~monai_spine.inference.heatmap.CornerPredictor`) from
  clicked vertebra centres.

Models are loaded when a command runs, never when the parser is built.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence, TextIO

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from monai_spine.inference.pipeline import SpinePipeline

__all__ = ["register", "predict_cli", "corners_cli"]


def register(sub: "argparse._SubParsersAction") -> None:
    """Add ``predict`` and ``corners`` to the ``monai-spine`` subcommands."""
    r = sub.add_parser("predict", help="whole-radiograph keypoints with uncertainty (detector + regressor/heatmap)")
    r.add_argument("paths", nargs="+", help="radiographs (DICOM, PNG/JPEG, NIfTI, NRRD) or folders")
    r.add_argument("--out", required=True, help="output folder")
    r.add_argument("--model", choices=("regressor", "heatmap", "both"), default=None,
                   help="default: what the region ships in bundle/models/<region>/ (both, else the one there is)")
    r.add_argument("--detector-dir", default=None,
                   help="detector folder (model.pt, detector_model.json; default bundle/models/<region>/detector)")
    r.add_argument("--checkpoint", default=None, help="regressor weights (default bundle/models/model.pt)")
    r.add_argument("--variant", choices=("baseline", "cbam", "bayecbam"), default="bayecbam")
    r.add_argument("--region", default=None, choices=("ap", "cervical", "lumbar"),
                   help="region of the shipped models (default: ap, else the first region with a shipped detector)")
    r.add_argument("--width", type=float, default=1.0, help="regressor network_width as trained")
    r.add_argument("--fc-features", type=int, default=1024)
    r.add_argument("--spatial-size", type=int, nargs=2, default=[224, 448], metavar=("H", "W"))
    r.add_argument("--margin-mm", type=float, default=4.0)
    r.add_argument("--mc-samples", type=int, default=10)
    r.add_argument("--thresholds", default=None, help="thresholds JSON (default: thresholds.json beside the checkpoint)")
    r.add_argument("--heatmap-dir", default=None, help="heatmap model folder (default bundle/models/<region>/heatmap)")
    r.add_argument("--spacing", default=None, help='pixel spacing "sx,sy" in mm for every image')
    r.add_argument("--flip-tta", action="store_true", help="also predict the mirrored crop and average (labels swapped back)")
    r.add_argument("--conformal", default=None, help="conformal.json (default: beside the checkpoint, when present)")
    r.add_argument("--no-overlay", action="store_true")
    r.add_argument("--no-progress", action="store_true")
    r.add_argument("--device", default="cpu")
    r.set_defaults(func=_cmd_predict)

    k = sub.add_parser("corners", help="semi-automatic corners from clicked vertebra centres (Al Arif FCN)")
    k.add_argument("image", help="radiograph (DICOM, PNG/JPEG, NIfTI, NRRD)")
    k.add_argument("--centres", required=True, help='clicked vertebra centres in pixels: "x1,y1;x2,y2;..." (two or more)')
    k.add_argument("--ckpt-dir", default=None, help="folder with model.pt, corner_prior.json, heatmap_model.json")
    k.add_argument("--checkpoint", default=None, help="model weights (default: <ckpt-dir>/model.pt)")
    k.add_argument("--prior", default=None, help="corner prior JSON (default: <ckpt-dir>/corner_prior.json)")
    k.add_argument("--out", default=None, help="output JSON (default: ./<image>.corners.json)")
    k.add_argument("--levels", default=None, help='level names of the centres, e.g. "C3,C4,C5"')
    k.add_argument("--spacing", default=None, help='pixel spacing "sx,sy" in mm when the file has none')
    k.add_argument("--device", default="cpu")
    k.add_argument("--json", action="store_true", help="print JSON instead of a table")
    k.set_defaults(func=_cmd_corners)


def _cmd_corners(args: argparse.Namespace) -> int:
    corners_cli(
        args.image,
        args.centres,
        ckpt_dir=args.ckpt_dir,
        checkpoint=args.checkpoint,
        prior=args.prior,
        out=args.out,
        levels=args.levels,
        spacing_mm=args.spacing,
        device=args.device,
        print_format="json" if args.json else "table",
    )
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    sp = None if args.spacing is None else [float(v) for v in args.spacing.split(",")]
    return predict_cli(
        args.paths,
        args.out,
        model=args.model,
        detector_dir=args.detector_dir,
        regressor_checkpoint=args.checkpoint,
        variant=args.variant,
        region=args.region,
        width=args.width,
        fc_features=args.fc_features,
        spatial_size=tuple(args.spatial_size),
        margin_mm=args.margin_mm,
        mc_samples=args.mc_samples,
        thresholds=args.thresholds,
        heatmap_dir=args.heatmap_dir,
        spacing_mm=sp,
        overlays=not args.no_overlay,
        device=args.device,
        progress=not args.no_progress,
        flip_tta=args.flip_tta,
        conformal=args.conformal,
    )


def predict_cli(
    paths: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    model: str | None = None,
    detector_dir: str | os.PathLike | None = None,
    regressor_checkpoint: str | os.PathLike | None = None,
    variant: str = "bayecbam",
    region: str | None = None,
    width: float = 1.0,
    fc_features: int = 1024,
    spatial_size: Sequence[int] = (224, 448),
    margin_mm: float = 4.0,
    mc_samples: int = 10,
    thresholds: str | os.PathLike | None = None,
    heatmap_dir: str | os.PathLike | None = None,
    spacing_mm: Sequence[float] | None = None,
    overlays: bool = True,
    device: str = "cpu",
    progress: bool = True,
    stream: TextIO | None = None,
    pipeline: "SpinePipeline | None" = None,
    flip_tta: bool = False,
    conformal: str | os.PathLike | None = None,
) -> int:
    """``monai-spine predict PATH... --out DIR``: predict every radiograph and write its outputs.

    Args:
        paths: image files and/or folders (searched recursively for :data:`IMAGE_EXTENSIONS`).
        out: output folder.
        model: ``"regressor"`` (BayeRegX keypoints), ``"heatmap"`` (Al Arif corners from the detected
            centres), ``"both"``, or None: what the region's shipped models allow (:func:`~monai_spine.inference.model_zoo.resolve_models`).
        detector_dir: detector checkpoint folder (default: the region's shipped detector, see
            :func:`~monai_spine.inference.model_zoo.resolve_models`).
        regressor_checkpoint: regressor weights (default :func:`~monai_spine.inference.model_zoo.default_regressor_checkpoint`).
        variant, width, fc_features: regressor network (as trained: ``variant``, ``network_width``,
            ``fc_features`` of the bundle).
        region: ``ap``, ``cervical`` or ``lumbar``: picks the shipped models (default: the first region
            with a shipped detector, :data:`~monai_spine.inference.model_zoo.DEFAULT_REGION_ORDER`); every model used must describe it.
        spatial_size: regressor crop ``(H, W)``.
        margin_mm: crop margin (the bundle's ``margin_mm + rand_pad_mm / 2``).
        mc_samples: MC-dropout passes T.
        thresholds: thresholds JSON (default ``thresholds.json`` beside the checkpoint, else the paper's).
        heatmap_dir: heatmap model folder (default :func:`monai_spine.inference.heatmap.default_ckpt_dir`).
        spacing_mm: ``(sx, sy)`` overriding every image's spacing.
        overlays: write overlay PNGs.
        device: torch device.
        progress: show a tqdm progress bar (on stderr) when there is more than one file.
        stream: where to print the summary (default stdout; failures also go there).
        pipeline: a ready pipeline (tests); the model arguments are then ignored.
        flip_tta: regressor flip test-time augmentation (average with the horizontally flipped crop).
        conformal: conformal calibration JSON giving each point an error radius (default
            ``conformal.json`` beside the checkpoint, else no radius).

    Returns:
        Exit status: 0 when every file was predicted, 1 when any failed or gave no result (they are
        listed on stderr, ``nothing found in <file>: <why>`` for a film with no contrast or no
        vertebra seen; none of their outputs is written), 2 when no input file was found.

    Raises:
        ValueError: unknown ``model``; FileNotFoundError: a model file is missing.
    """
    from monai_spine.inference.model_zoo import resolve_models
    from monai_spine.inference.pipeline import MODELS, build_pipeline, expand_inputs, output_stem

    stream = stream or sys.stdout
    if model is not None and model not in MODELS:
        raise ValueError(f"--model must be one of {MODELS}, got {model!r}")
    if pipeline is None:
        chosen = resolve_models(region, model, detector_dir, regressor_checkpoint, heatmap_dir)
        model = chosen["model"]
        pipeline = build_pipeline(model, chosen["detector_dir"], regressor_checkpoint, variant, chosen["region"], width,
                                   fc_features, spatial_size, margin_mm, mc_samples, thresholds, chosen["heatmap_dir"],
                                   overlays, device, flip_tta=flip_tta, conformal=conformal,
                                   regressor_dir=chosen["regressor_dir"])
    out_dir = Path(out)
    files = expand_inputs(paths, exclude=out_dir)
    if not files:
        print(f"monai-spine predict: no image found in {', '.join(map(str, paths)) or '(no paths)'}", file=stream)
        return 2
    from monai_spine.outputs import NothingFoundError

    stems: dict[str, int] = {}
    failures: list[tuple[str, str]] = []
    nothing: list[str] = []
    done = 0
    it: Any = files
    if progress and len(files) > 1:
        from tqdm.auto import tqdm

        it = tqdm(files, desc="predict", unit="image", file=sys.stderr)
    for f in it:
        stem = output_stem(f)
        if stem in stems:  # same name from two folders or formats: keep both
            stems[stem] += 1
            stem = f"{stem}-{stems[stem]}"
        else:
            stems[stem] = 0
        try:
            pipeline.predict_file(f, out_dir, stem=stem, spacing_mm=spacing_mm, require_found=True)
            done += 1
        except NothingFoundError as e:  # no result, not an error: said plainly, nothing written
            nothing.append(str(e))
        except Exception as e:  # go on with the next file; every failure is listed at the end
            failures.append((str(f), f"{type(e).__name__}: {e}"))
    print(f"predicted {done} of {len(files)} radiograph(s) into {out_dir}"
          + (f"; nothing found in {len(nothing)} (listed on stderr)" if nothing else ""), file=stream)
    for msg in nothing:
        print(f"monai-spine predict: {msg}", file=sys.stderr)
    if failures:
        print(f"{len(failures)} failed:", file=sys.stderr)  # failures go to stderr, as in measure / convert
        for f, msg in failures:
            print(f"  {f}: {msg}", file=sys.stderr)
    return 1 if failures or nothing else 0


def _format_table(result: dict[str, Any]) -> str:
    mm = result["spacing_mm"] is not None
    head = f"{'vertebra':<9}{'corner':<7}{'x_px':>9}{'y_px':>9}{'sigma_px':>10}"
    head += f"{'x_mm':>9}{'y_mm':>9}{'sigma_mm':>10}" if mm else ""
    lines = [head]

    def f(v: Any, w: int, p: int = 1) -> str:
        return f"{v:>{w}.{p}f}" if v is not None else f"{'-':>{w}}"

    for v in result["vertebrae"]:
        name = v["level"] or f"#{v['index'] + 1}"
        for c in v["corners"]:
            row = f"{name:<9}{c['name']:<7}{f(c['x_px'], 9)}{f(c['y_px'], 9)}{f(c['sigma_px'], 10, 2)}"
            if mm:
                row += f"{f(c['x_mm'], 9, 2)}{f(c['y_mm'], 9, 2)}{f(c['sigma_mm'], 10, 2)}"
            if c["from_prior"]:
                row += "  (prior)"
            lines.append(row)
    if not mm:
        lines.append("pixel spacing unknown: no mm values (give --spacing SX,SY or a spacing sidecar)")
    return "\n".join(lines)


def corners_cli(
    image: str | os.PathLike,
    centres: str | np.ndarray | Sequence[Sequence[float]],
    ckpt_dir: str | os.PathLike | None = None,
    checkpoint: str | os.PathLike | None = None,
    prior: str | os.PathLike | None = None,
    out: str | os.PathLike | None = None,
    levels: str | Sequence[str] | None = None,
    spacing_mm: Sequence[float] | None = None,
    device: str = "cpu",
    print_format: str = "table",
    stream: TextIO | None = None,
) -> dict[str, Any]:
    """``monai-spine corners IMAGE --centres "x1,y1;x2,y2;..."``: print and write the corners with sigma.

    Args:
        image: the radiograph (DICOM, PNG/JPEG/TIFF, NIfTI, NRRD; spacing from its header or
            ``<image>.spacing.json``, see :func:`monai_spine.data.readers.read_xray`).
        centres: clicked vertebra centres, ``"x1,y1;x2,y2;..."`` (px) or a ``(V, 2)`` array, ``V >= 2``.
        ckpt_dir: folder of the trained model (``model.pt``, ``corner_prior.json``,
            ``heatmap_model.json``); default :func:`~monai_spine.inference.heatmap.default_ckpt_dir`.
        checkpoint: weights to use instead of ``ckpt_dir/model.pt``.
        prior: corner prior JSON to use instead of the stored one.
        out: JSON file to write (default ``<image name>.corners.json`` in the current folder).
        levels: level names per centre, ``"C3,C4,C5"`` or a list (optional).
        spacing_mm: ``(sx, sy)`` (or ``"sx,sy"``) overriding the image's spacing (recorded as ``"sidecar"``).
        device: torch device.
        print_format: ``"table"`` (human-readable) or ``"json"`` (the written JSON).
        stream: where to print (default stdout).

    Returns:
        The JSON result (format ``monai-spine-corners``), which also records the output path under ``"output"``.

    Raises:
        FileNotFoundError: the image or a model file is missing.
        ValueError: malformed centres, levels or spacing.
        monai_spine.outputs.NothingFoundError: a constant image (1 x 1 included): ``nothing found in
            <image>``, before the model loads; nothing written (``monai-spine corners`` exits 2).
    """
    from monai_spine.data.annotation import atomic_write_text
    from monai_spine.data.keypoints import level_order
    from monai_spine.data.readers import read_xray
    from monai_spine.inference.heatmap import CornerPredictor, default_ckpt_dir, parse_centres

    if print_format not in ("table", "json"):
        raise ValueError(f"print_format must be 'table' or 'json', got {print_format!r}")
    c = parse_centres(centres) if isinstance(centres, str) else np.asarray(centres, dtype=np.float64).reshape(-1, 2)
    if isinstance(spacing_mm, str):
        try:
            spacing_mm = [float(v) for v in spacing_mm.replace(" ", "").split(",")]
        except ValueError:
            raise ValueError(f"--spacing: {spacing_mm!r} is not 'sx,sy' (mm per pixel)") from None
    lv = None
    if levels is not None:
        lv = [s.strip() for s in levels.split(",") if s.strip()] if isinstance(levels, str) else [str(s) for s in levels]
        if len(lv) != len(c):
            raise ValueError(f"--levels: {len(lv)} levels for {len(c)} centres")
        for lev in lv:
            level_order(lev)  # KeyError naming an unknown level
    path = Path(image)
    if not path.is_file():
        raise FileNotFoundError(f"image {path} does not exist")
    from monai_spine.data.readers import XrayWarning
    from monai_spine.outputs import check_film_has_contrast

    with warnings.catch_warnings():  # the reader's "constant image" warning: said once, as the error below
        warnings.filterwarnings("ignore", message=r".*constant image", category=XrayWarning)
        img = read_xray(path, spacing_mm=spacing_mm)
    check_film_has_contrast(img.array, path)  # a blank film gets no corners (not the prior's, with small sigma)
    h, w = img.array.shape
    if np.any(c[:, 0] < 0) or np.any(c[:, 0] > w - 1) or np.any(c[:, 1] < 0) or np.any(c[:, 1] > h - 1):
        raise ValueError(f"--centres: a centre lies outside the {w}x{h} image {path}")
    predictor = CornerPredictor.from_ckpt_dir(ckpt_dir or default_ckpt_dir(), checkpoint=checkpoint, prior=prior,
                                              device=device)
    pred = predictor.predict(img.array, c, img.spacing_mm, img.spacing_source, levels=lv)
    result = predictor.to_json(pred, image=str(path))
    out_path = Path(out) if out else Path.cwd() / f"{path.name}.corners.json"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_path, predictor.dumps(result))
    stream = stream or sys.stdout
    if print_format == "json":
        print(predictor.dumps(result), file=stream)
    else:
        print(_format_table(result), file=stream)
        print(f"wrote {out_path}", file=stream)
    return {**result, "output": str(out_path)}
