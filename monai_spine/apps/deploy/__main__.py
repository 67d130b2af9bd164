"""``python -m monai_spine.apps.deploy -i IN -o OUT [-m MODELS]``: run the spine MONAI Deploy application once.

Steps:

1. **Pre-flight** (pydicom and JSON only, before Holoscan / torch are loaded, so bad input fails in
   a second): the input folder must hold a usable spine radiograph with decodable pixel data
   (:func:`monai_spine.apps.deploy.selection.select_from_folder`); the models folder a detector
   and a regressor in one of the layouts of :func:`monai_spine.apps.deploy.models.locate_models`
   (zoo, kind folders, legacy, or where the MAP packager puts them), with specs of one region;
   ``$MONAI_SPINE_DEVICE_UID``, when set, a DICOM UID.
2. The SDK application (:class:`monai_spine.apps.deploy.app.SpineDeployApp`) runs with its output
   pointed at a hidden staging folder (inside ``OUT`` when it exists, e.g. a mounted volume, else
   beside it; :mod:`monai_spine.apps.deploy.staging`); the same checks run again inside the graph.
3. Only when the last operator has written the SR are the files moved into ``OUT``
   (:class:`~monai_spine.apps.deploy.staging.StagedOutput`); otherwise the staging folder is removed
   and ``OUT`` is left as it was (absent if it did not exist).

Exit status: 0 done; 2 unusable input or models (one line on stderr, starting
``monai-spine deploy: error:``, naming the folder and the problem); 1 any other failure.
Defaults follow the SDK: ``HOLOSCAN_INPUT_PATH``, ``HOLOSCAN_OUTPUT_PATH``; the models folder as in
:func:`monai_spine.apps.deploy.models.resolve_models_dir`; the zoo region from ``--region`` /
``MONAI_SPINE_DEPLOY_REGION``. ``MONAI_SPINE_DEPLOY_PREFLIGHT=0`` skips
step 1 (tests use it to exercise the in-graph checks).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Sequence

__all__ = ["main", "build_parser", "PROG", "EXIT_BAD_INPUT", "EXIT_FAILED"]

PROG = "monai-spine deploy"
#: exit status for an unusable input folder or models folder
EXIT_BAD_INPUT = 2
#: exit status for any other failure
EXIT_FAILED = 1


def build_parser() -> argparse.ArgumentParser:
    """The command line (the SDK's ``-i/-o/-m/-l`` plus ``--device``)."""
    p = argparse.ArgumentParser(
        prog="python -m monai_spine.apps.deploy",
        description="Spine radiograph (DICOM DX/CR) -> vertebra keypoints with uncertainty, measurements, DICOM SR.",
    )
    p.add_argument("-i", "--input", default=os.environ.get("HOLOSCAN_INPUT_PATH", "input"),
                   help="folder of DICOM files (default $HOLOSCAN_INPUT_PATH or ./input)")
    p.add_argument("-o", "--output", default=os.environ.get("HOLOSCAN_OUTPUT_PATH", "output"),
                   help="output folder, created when missing (default $HOLOSCAN_OUTPUT_PATH or ./output)")
    p.add_argument("-m", "--model", "--models", dest="model", default=None,
                   help="models folder (default $MONAI_SPINE_DEPLOY_MODELS, $HOLOSCAN_MODEL_PATH, else the model zoo, "
                        "$MONAI_SPINE_MODELS or bundle/models)")
    p.add_argument("--region", default=os.environ.get("MONAI_SPINE_DEPLOY_REGION") or None,
                   choices=["ap", "cervical", "lumbar"],
                   help="model-zoo region when the models folder has several (default $MONAI_SPINE_DEPLOY_REGION, "
                        "else the only one, else the radiograph's BodyPartExamined / ViewPosition)")
    p.add_argument("-l", "--log-level", dest="log_level", type=str.upper, default="WARN",
                   choices=["DEBUG", "INFO", "WARN", "ERROR", "CRITICAL"],
                   help="SDK / Holoscan log level (default WARN)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    return p


def _error(message: str) -> None:
    print(f"{PROG}: error: {' '.join(str(message).split())}", file=sys.stderr, flush=True)


def _preflight(input_dir: Path, models_dir: Path, region: str | None) -> None:
    from monai_spine.apps.deploy.identity import device_observer_uid
    from monai_spine.apps.deploy.models import check_specs, locate_models, read_deploy_config, region_from_header
    from monai_spine.apps.deploy.selection import DeployInputError, select_from_folder

    selected = select_from_folder(input_dir)
    try:
        folders = locate_models(models_dir, region=region, prefer=region_from_header(selected.dataset))
        read_deploy_config(folders.config_dir)
        check_specs(folders)
        device_observer_uid()
    except (FileNotFoundError, ValueError) as e:
        raise DeployInputError(str(e)) from None


def main(argv: Sequence[str] | None = None) -> int:
    """Run the application once; returns the exit status (see the module docstring)."""
    args = build_parser().parse_args(argv)
    from monai_spine.apps.deploy.models import resolve_models_dir
    from monai_spine.apps.deploy.selection import DeployInputError
    from monai_spine.apps.deploy.staging import StagedOutput

    input_dir = Path(args.input).absolute()
    models_dir = resolve_models_dir(args.model).absolute()
    if os.environ.get("MONAI_SPINE_DEPLOY_PREFLIGHT", "1") != "0":
        try:
            _preflight(input_dir, models_dir, args.region)
        except DeployInputError as e:
            _error(str(e))
            return EXIT_BAD_INPUT
    elif not input_dir.is_dir():  # the SDK's own argument check would print a usage text instead
        _error(f"input folder {input_dir} does not exist or is not a directory")
        return EXIT_BAD_INPUT
    try:
        staged = StagedOutput(args.output)
    except OSError as e:
        _error(str(e))
        return EXIT_FAILED
    os.environ.setdefault("HOLOSCAN_LOG_LEVEL", "WARN" if args.log_level == "WARN" else args.log_level)
    committed = False
    try:
        from monai_spine.apps.deploy.app import run_app

        record = run_app(input_dir, staged.path, models_dir, log_level=args.log_level, device=args.device,
                         region=args.region)
        if not record.complete:
            _error(f"the application stopped before writing all its outputs; nothing written to {staged.out_dir}")
            return EXIT_FAILED
        files = staged.commit()
        committed = True
    except DeployInputError as e:
        _error(str(e))
        return EXIT_BAD_INPUT
    except FileNotFoundError as e:  # a models file vanished after the pre-flight, or the pre-flight was skipped
        _error(str(e))
        return EXIT_BAD_INPUT
    except Exception as e:  # noqa: BLE001 - one line for the user; the SDK has logged the trace
        _error(f"{type(e).__name__}: {e}")
        return EXIT_FAILED
    finally:
        if not committed:
            staged.discard()
    s = record.summary
    print(f"{PROG}: {s.get('vertebrae', 0)} vertebrae, {s.get('points', 0)} keypoints, "
          f"{s.get('measurements', 0)} measurements from SOP Instance {s.get('source_sop_instance_uid')}")
    for note in record.notes:
        print(f"{PROG}: note: {note}")
    for f in files:
        print(f"{PROG}: wrote {f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
