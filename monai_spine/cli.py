"""The ``monai-spine`` command: one entry point, one subcommand per job.

Subcommands import their heavy modules lazily so ``monai-spine --help`` stays fast. Errors that a
user can fix (a bad file, a missing spacing) are printed as one line, without a traceback, and the
command exits non-zero.

Exit status: 0 success; 1 a batch command (``predict``, ``measure``) finished but some files failed
(each is listed, one line per file, and the others were processed); 2 a user error stopped the
command (bad argument, missing or unreadable file: one line on stderr naming it); 3 an unexpected
internal error (one line; set ``MONAI_SPINE_DEBUG=1`` to see the traceback); 130 interrupted.
Warnings (a rejected spacing, a colour image converted) are printed as one line each on stderr.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from typing import Sequence

__all__ = ["main", "build_parser", "package_version", "DEBUG_ENV"]

#: Environment variable: when set (non-empty, not "0"), unexpected errors show their traceback.
DEBUG_ENV = "MONAI_SPINE_DEBUG"


def _cmd_synth(args: argparse.Namespace) -> int:
    from monai_spine.data.synthetic import synth_cli

    synth_cli(
        region=args.region,
        n=args.n,
        out=args.out,
        seed=args.seed,
        hard_case_rate=args.hard_case_rate,
        size=(args.size, args.size),
        overwrite=args.overwrite,
    )
    return 0


def _cmd_overlay(args: argparse.Namespace) -> int:
    from monai_spine.inference.overlay import overlay_dataset

    failures: list[tuple[str, str]] = []
    written = overlay_dataset(args.dataset, args.out, limit=args.limit, failures=failures)
    for _, msg in failures:
        print(f"monai-spine overlay: failed: {_one_line(msg)}", file=sys.stderr)
    print(f"wrote {len(written)} overlay pictures to {args.out}"
          + (f"; {len(failures)} failed (listed on stderr)" if failures else ""))
    return 1 if failures else 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from monai_spine.engines.demo import run_demo

    return run_demo(out=args.out, epochs=args.epochs, n=args.n, variant=args.variant, seed=args.seed)


def _cmd_measure(args: argparse.Namespace) -> int:
    from monai_spine.measure.io import measure_cli

    res = measure_cli(
        args.paths,
        args.out,
        flexion=args.flexion,
        extension=args.extension,
        num_samples=args.num_samples,
        seed=args.seed,
        sigma_px=args.sigma_px,
        sigma_kind=args.sigma_kind,
    )
    failures = res.get("failures", []) if res is not None else []
    for case in res.get("cases", []) if res is not None else []:
        for w in case.get("warnings") or []:
            print(f"monai-spine measure: warning: {case['source']}: {_one_line(w)}", file=sys.stderr)
    for fail in failures:
        print(f"monai-spine measure: failed: {_one_line(fail['error'])}", file=sys.stderr)
    print(f"measured {len(res['cases']) if res else 0} file(s) into {args.out}"
          + (f"; {len(failures)} failed (listed on stderr)" if failures else ""))
    return 0 if res is not None and not failures else 1


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
    from monai_spine.inference.pipeline import predict_cli

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


def _cmd_report(args: argparse.Namespace) -> int:
    from monai_spine.inference.report import report_from_args

    return report_from_args(args)


def _cmd_convert(args: argparse.Namespace) -> int:
    from monai_spine.data.convert import convert_from_args

    return convert_from_args(args)


def _cmd_calibrate(args: argparse.Namespace) -> int:
    from monai_spine.uncertainty.calibration import calibrate_from_args

    return calibrate_from_args(args)


def package_version() -> str:
    """The installed ``monai-spine`` version (package metadata), else the source tree's ``__version__``."""
    try:
        from importlib.metadata import PackageNotFoundError, version

        return version("monai-spine")
    except PackageNotFoundError:
        from monai_spine import __version__

        return __version__


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``monai-spine`` (exposed for tests and docs)."""
    p = argparse.ArgumentParser(prog="monai-spine", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("synth", help="generate synthetic lateral radiographs (DICOM DX + annotations)")
    s.add_argument("--region", choices=("cervical", "lumbar"), default="cervical")
    s.add_argument("--n", type=int, default=10, help="number of radiographs")
    s.add_argument("--out", required=True, help="output folder")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--hard-case-rate", type=float, default=0.0, help="share of images with a hard case")
    s.add_argument("--size", type=int, default=1024, help="image width = height in pixels")
    s.add_argument("--overwrite", action="store_true",
                   help="replace the synthetic cases (and dataset.json) already in --out (refused otherwise)")
    s.set_defaults(func=_cmd_synth)

    o = sub.add_parser("overlay", help="draw the annotated keypoints of a dataset folder as PNG overlays")
    o.add_argument("dataset", help="dataset folder (annotations in the project's JSON format)")
    o.add_argument("--out", required=True)
    o.add_argument("--limit", type=int, default=None, help="at most this many images")
    o.set_defaults(func=_cmd_overlay)

    m = sub.add_parser("measure", help="clinical measurements (angles, translations, discs, Cobb) with uncertainty")
    m.add_argument("paths", nargs="*", help="prediction (*.keypoints.json) or annotation JSON files")
    m.add_argument("--out", required=True, help="output folder (measurements.json, measurements.csv)")
    m.add_argument("--flexion", action="append", default=[], help="flexion radiograph keypoints (pair with --extension)")
    m.add_argument("--extension", action="append", default=[], help="extension radiograph keypoints")
    m.add_argument("--num-samples", type=int, default=500, help="samples of the point distributions")
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--sigma-px", type=float, default=None, help="point sigma in pixels when files carry none")
    m.add_argument("--sigma-kind", choices=("total", "aleatoric", "epistemic"), default="total")
    m.set_defaults(func=_cmd_measure)

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

    rp = sub.add_parser("report", help="HTML report (and MLflow run) of predictions over a test set")
    from monai_spine.inference.report import add_report_arguments

    add_report_arguments(rp)
    rp.set_defaults(func=_cmd_report)

    c = sub.add_parser("calibrate", help="fit uncertainty thresholds (tau1, tau2) and conformal radii on validation predictions")
    from monai_spine.uncertainty.calibration import add_calibrate_arguments

    add_calibrate_arguments(c)
    c.set_defaults(func=_cmd_calibrate)

    cv = sub.add_parser("convert", help="public dataset annotations (BUU-LSPINE, CSXA, AASCE) to the project's keypoint JSON")
    from monai_spine.data.convert import add_convert_arguments

    add_convert_arguments(cv)
    cv.set_defaults(func=_cmd_convert)

    d = sub.add_parser("demo", help="the main job on the embedded synthetic data (README)")
    d.add_argument("--out", default="runs/demo", help="output folder")
    d.add_argument("--epochs", type=int, default=None, help="training epochs (default: the demo's)")
    d.add_argument("--n", type=int, default=None, help="synthetic radiographs to generate")
    d.add_argument("--variant", default="bayecbam", choices=("baseline", "cbam", "bayecbam"))
    d.add_argument("--seed", type=int, default=0)
    d.set_defaults(func=_cmd_demo)
    return p


def _model_folders(items: Sequence[str] | None) -> list[str]:
    """The folders of ``NAME=FOLDER`` (or bare ``FOLDER``) items."""
    return [str(i).partition("=")[2] or str(i) for i in items or []]


def _preflight(args: argparse.Namespace) -> None:
    """Check the output and the inputs of a command before it reads a film or loads a model.

    Raises:
        FileNotFoundError: an input path does not exist (all of them are named).
        ValueError / PermissionError: the output folder (file, for ``corners``) cannot be written.
    """
    from monai_spine.outputs import check_inputs_exist, check_output_dir, check_output_file

    cmd = args.command
    inputs = {
        "predict": lambda: list(args.paths),
        "corners": lambda: [args.image],
        "overlay": lambda: [args.dataset],
        "measure": lambda: list(args.paths) + list(args.flexion) + list(args.extension),
        "report": lambda: _model_folders(args.predictions) + list(args.annotations),
        "calibrate": lambda: list(args.predictions) + list(args.annotations),
    }
    if cmd in inputs:
        check_inputs_exist(inputs[cmd](), "input")
    if cmd == "corners":
        if args.out:
            check_output_file(args.out)
    elif cmd == "calibrate":
        check_output_dir(args.models_dir, "--models-dir")
    elif getattr(args, "out", None):
        check_output_dir(args.out)


def _one_line(msg: object) -> str:
    """``msg`` as a single line (newlines and runs of spaces collapsed)."""
    return " ".join(str(msg).split())


def _debug() -> bool:
    return os.environ.get(DEBUG_ENV, "") not in ("", "0")


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``monai-spine``; returns the exit status (see the module docstring)."""
    args = build_parser().parse_args(argv)
    prog = f"monai-spine {args.command}"

    def show_warning(message, category, filename, lineno, file=None, line=None):  # one line, no source code
        print(f"{prog}: warning: {_one_line(message)}", file=sys.stderr)

    old_show = warnings.showwarning
    warnings.showwarning = show_warning
    try:
        _preflight(args)
        return int(args.func(args) or 0)
    except (ValueError, KeyError, OSError) as e:  # includes XrayReadError, AnnotationError, FileNotFoundError
        if _debug():
            raise
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"{prog}: error: {_one_line(msg)}", file=sys.stderr)
        return 2
    except MemoryError as e:
        if _debug():
            raise
        print(f"{prog}: error: out of memory ({_one_line(e) or 'MemoryError'})", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a bug, not a user error: still no traceback unless asked for
        if _debug():
            raise
        print(f"{prog}: internal error: {type(e).__name__}: {_one_line(e)} (set {DEBUG_ENV}=1 for the traceback)",
              file=sys.stderr)
        return 3
    finally:
        warnings.showwarning = old_show


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
