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
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence, TextIO

if TYPE_CHECKING:  # pragma: no cover
    from monai_spine.inference.pipeline import SpinePipeline

__all__ = ["register", "predict_cli"]


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
    from monai_spine.inference.heatmap import corners_cli

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
            centres), ``"both"``, or None: what the region's shipped models allow (:func:`~monai_spine.inference.pipeline.resolve_models`).
        detector_dir: detector checkpoint folder (default: the region's shipped detector, see
            :func:`~monai_spine.inference.pipeline.resolve_models`).
        regressor_checkpoint: regressor weights (default :func:`default_regressor_checkpoint`).
        variant, width, fc_features: regressor network (as trained: ``variant``, ``network_width``,
            ``fc_features`` of the bundle).
        region: ``ap``, ``cervical`` or ``lumbar``: picks the shipped models (default: the first region
            with a shipped detector, :data:`DEFAULT_REGION_ORDER`); every model used must describe it.
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
    from monai_spine.inference.pipeline import MODELS, build_pipeline, expand_inputs, output_stem, resolve_models

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
