"""``monai-spine report`` and ``calibrate``: predictions checked against annotations.

* ``report`` writes an HTML report (and an MLflow run) of predictions over a test set;
* ``calibrate`` fits the uncertainty thresholds (tau1, tau2) and conformal radii on validation
  predictions and writes them beside the model.
"""

from __future__ import annotations

import argparse

__all__ = ["register"]


def register(sub: "argparse._SubParsersAction") -> None:
    """Add ``report`` and ``calibrate`` to the ``monai-spine`` subcommands."""
    from monai_spine.inference.report import add_report_arguments
    from monai_spine.uncertainty.calibration import add_calibrate_arguments

    rp = sub.add_parser("report", help="HTML report (and MLflow run) of predictions over a test set")
    add_report_arguments(rp)
    rp.set_defaults(func=_cmd_report)

    c = sub.add_parser("calibrate", help="fit uncertainty thresholds (tau1, tau2) and conformal radii on validation predictions")
    add_calibrate_arguments(c)
    c.set_defaults(func=_cmd_calibrate)


def _cmd_report(args: argparse.Namespace) -> int:
    from monai_spine.inference.report import report_from_args

    return report_from_args(args)


def _cmd_calibrate(args: argparse.Namespace) -> int:
    from monai_spine.uncertainty.calibration import calibrate_from_args

    return calibrate_from_args(args)
