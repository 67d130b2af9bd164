"""``monai-spine synth``, ``overlay`` and ``convert``: data in, data out (no model).

* ``synth`` writes synthetic lateral radiographs (:func:`monai_spine.data.synthetic.generate_dataset`);
* ``overlay`` draws a dataset's annotated keypoints (:func:`monai_spine.inference.overlay.overlay_dataset`);
* ``convert`` turns public dataset annotations into the project's keypoint JSON
  (:func:`monai_spine.data.convert.convert_dataset`, :func:`monai_spine.data.aasce.write_aasce_dataset`).

Each command parses its options here, calls the library function and prints a summary; the library
modules print nothing. Heavy modules are imported when a command runs, not when the parser is built.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import sys
import time
from pathlib import Path
from typing import Sequence

from monai_spine.cli._common import one_line

__all__ = ["register", "synth_cli", "convert_cli", "add_convert_arguments", "convert_from_args"]


def register(sub: "argparse._SubParsersAction") -> None:
    """Add ``synth``, ``overlay`` and ``convert`` to the ``monai-spine`` subcommands."""
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

    cv = sub.add_parser("convert", help="public dataset annotations (BUU-LSPINE, CSXA, AASCE) to the project's keypoint JSON")
    add_convert_arguments(cv)
    cv.set_defaults(func=convert_from_args)


def _cmd_synth(args: argparse.Namespace) -> int:
    return synth_cli(
        region=args.region,
        n=args.n,
        out=args.out,
        seed=args.seed,
        hard_case_rate=args.hard_case_rate,
        size=(args.size, args.size),
        overwrite=args.overwrite,
    )


def _cmd_overlay(args: argparse.Namespace) -> int:
    from monai_spine.inference.overlay import overlay_dataset

    failures: list[tuple[str, str]] = []
    written = overlay_dataset(args.dataset, args.out, limit=args.limit, failures=failures)
    for _, msg in failures:
        print(f"monai-spine overlay: failed: {one_line(msg)}", file=sys.stderr)
    print(f"wrote {len(written)} overlay pictures to {args.out}"
          + (f"; {len(failures)} failed (listed on stderr)" if failures else ""))
    return 1 if failures else 0


def synth_cli(
    region: str, n: int, out: str | os.PathLike, seed: int = 0, hard_case_rate: float = 0.0,
    size: int | Sequence[int] = 1024, workers: int = 1, overwrite: bool = False,
) -> int:
    """Body of ``monai-spine synth``: write a data set and print a one-line summary; returns 0.

    A folder that already holds a synthetic data set (``dataset.json`` or ``case_XXXX`` files) is
    refused, since a smaller new set would leave old cases beside a ``dataset.json`` that no longer
    lists them; with ``overwrite`` those files (only they) are removed first.

    Raises:
        FileExistsError: ``out`` holds cases and ``overwrite`` is False (nothing is written).
    """
    from monai_spine.data.synthetic import existing_cases, generate_dataset, parse_size

    outp = Path(out)
    old = existing_cases(outp)
    if old and not overwrite:
        raise FileExistsError(
            f"{outp} already holds a synthetic data set ({len(old)} file(s): dataset.json / case_XXXX); "
            "choose another --out, or pass --overwrite to replace those cases"
        )
    t0 = time.perf_counter()
    for p in old:
        p.unlink()
    paths = generate_dataset(out, region, n, seed, hard_case_rate=hard_case_rate, size=size, workers=workers)
    hw = parse_size(size)
    dt = time.perf_counter() - t0
    print(
        f"synth: wrote {len(paths)} {region} radiographs ({hw[1]}x{hw[0]} px, seed {seed}, "
        f"hard-case rate {hard_case_rate:g}) to {Path(out) / 'dataset.json'} in {dt:.1f} s"
        + (f" (replaced {len(old)} old file(s))" if old else "")
    )
    return 0


def convert_cli(
    paths: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    fmt: str = "buu-lspine",
    spacing: float | Sequence[float] | None = None,
    spacing_table: str | os.PathLike | None = None,
    spacing_sheet: str | None = None,
    spacing_key_column: str | None = None,
    spacing_value_column: str | None = None,
    spacing_unit: str = "mm_per_px",
    facing: str = "auto",
    view: str = "auto",
    overwrite: bool = True,
) -> int:
    """``monai-spine convert``: :func:`convert_dataset` plus a printed summary.

    Prints one summary line (stdout), then the failures (stderr), one per line, and a hint when
    spacing is unknown for some images. Option errors (bad spacing, unreadable spacing table,
    missing input path) are raised for the CLI to report.

    Returns:
        0 when every file found was converted, 1 when any failed or none was found.
    """
    from monai_spine.data.convert import convert_dataset

    if isinstance(spacing, (list, tuple)) and len(spacing) == 1:
        spacing = spacing[0]
    report = convert_dataset(
        paths, out, fmt=fmt, spacing=spacing, spacing_table=spacing_table, spacing_sheet=spacing_sheet,
        spacing_key_column=spacing_key_column, spacing_value_column=spacing_value_column,
        spacing_unit=spacing_unit, facing=facing, view=view, overwrite=overwrite,
    )
    print(report.summary(out))
    n = len(report.converted)
    if n and report.spacing_known < n:
        print(f"  spacing unknown for {n - report.spacing_known} image(s): errors stay in pixels "
              "(pass --spacing-table or --spacing)")
    if report.facing.get("default") or report.facing.get("conflict"):
        print("  some lateral images had weak or conflicting orientation cues: check their overlays, "
              "or force --facing left/right")
    if report.failed:
        print(f"failed ({len(report.failed)}):", file=sys.stderr)
        for src, msg in report.failed:
            print(f"  {src}: {msg}", file=sys.stderr)
    if not report.converted and not report.failed:
        print(f"convert: no {fmt} annotation found in {', '.join(map(str, paths))}", file=sys.stderr)
        return 1
    return 0 if not report.failed else 1


def add_convert_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the options of ``monai-spine convert`` to ``parser`` (names match :func:`convert_cli`)."""
    from monai_spine.data.convert import CONVERT_FORMATS, VIEWS
    from monai_spine.data.lateral_corners import FACINGS
    from monai_spine.data.spacing_table import SPACING_UNITS

    parser.add_argument("paths", nargs="+", help="annotation files or dataset folders (searched recursively)")
    parser.add_argument("--out", required=True, help="output folder for the monai-spine-keypoints JSON files")
    parser.add_argument("--format", dest="fmt", choices=CONVERT_FORMATS + ("aasce",), required=True,
                        help="dataset format")
    parser.add_argument("--split-seed", type=int, default=0, help="aasce: seed of the patient-wise split")
    parser.add_argument("--spacing", type=float, nargs="+", default=None, metavar="MM",
                        help="pixel spacing for every image, mm/pixel: one value, or sx sy")
    parser.add_argument("--spacing-table", default=None,
                        help="per-image spacing table: BUU-LSPINE report ('Pixel Spacing' sheet as CSV, or .xlsx "
                             "with openpyxl), CSXA pixel equivalents as CSV")
    parser.add_argument("--spacing-sheet", default=None, help="sheet of an .xlsx spacing table (default 'Pixel Spacing')")
    parser.add_argument("--spacing-key-column", default=None, help="header of the table's image/patient column")
    parser.add_argument("--spacing-value-column", default=None, help="header of the table's spacing column")
    parser.add_argument("--spacing-unit", choices=SPACING_UNITS, default="mm_per_px", help="unit of table values")
    parser.add_argument("--facing", choices=FACINGS, default="auto",
                        help="lateral views: side the patient faces (anterior side); auto decides per image")
    parser.add_argument("--view", choices=VIEWS, default="auto", help="BUU-LSPINE view (default: from the file name)")
    parser.add_argument("--no-overwrite", dest="overwrite", action="store_false",
                        help="keep existing output files (counted as skipped)")
    return parser


def convert_from_args(args: argparse.Namespace) -> int:
    """Run :func:`convert_cli` with the options parsed by :func:`add_convert_arguments`.

    Other attributes of ``args`` (``func``, ``command``...) are ignored, so the ``monai-spine`` parser
    can use ``set_defaults(func=convert_from_args)``.
    """
    if args.fmt == "aasce":
        from monai_spine.data.aasce import write_aasce_dataset
        from monai_spine.data.datasets import list_cases

        if len(args.paths) != 1:
            raise ValueError(f"--format aasce takes one dataset folder, got {len(args.paths)} paths")
        out = write_aasce_dataset(args.out, args.paths[0], seed=int(args.split_seed))
        index = list_cases(out)
        sizes = ", ".join(f"{len(index[s])} {s}" for s in ("training", "validation", "test"))
        fixed = json.loads((out / "dataset.json").read_text(encoding="utf-8"))["label_fixes"]["rotated_lists_put_back"]
        print(f"convert: wrote the AASCE set to {out} ({sizes}; split seed {args.split_seed}, by patient); "
              f"{len(fixed)} films had their vertebra list stored rotated by one (T1 last) and were put back in "
              f"level order (meta label_fix)")
        return 0
    names = inspect.signature(convert_cli).parameters
    return convert_cli(**{k: v for k, v in vars(args).items() if k in names})
