"""``monai-spine measure``: clinical measurements with uncertainty from keypoint files.

The measuring is :func:`monai_spine.measure.batch.measure_files` (angles, translations, discs, Cobb;
``measurements.json`` and ``.csv``); this module parses the options and prints the warnings, the
failures (one line each, on stderr) and a summary.
"""

from __future__ import annotations

import argparse
import sys

from monai_spine.cli._common import one_line

__all__ = ["register"]


def register(sub: "argparse._SubParsersAction") -> None:
    """Add ``measure`` to the ``monai-spine`` subcommands."""
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


def _cmd_measure(args: argparse.Namespace) -> int:
    from monai_spine.measure.batch import measure_files

    res = measure_files(
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
            print(f"monai-spine measure: warning: {case['source']}: {one_line(w)}", file=sys.stderr)
    for fail in failures:
        print(f"monai-spine measure: failed: {one_line(fail['error'])}", file=sys.stderr)
    print(f"measured {len(res['cases']) if res else 0} file(s) into {args.out}"
          + (f"; {len(failures)} failed (listed on stderr)" if failures else ""))
    return 0 if res is not None and not failures else 1
