"""The MONAI Deploy App SDK application: DICOM folder in, keypoints + uncertainty + measurements + DICOM SR out.

:class:`SpineDeployApp` joins the SDK's DICOM loader and the operators of
:mod:`monai_spine.apps.deploy.operators` with ``add_flow``. It reads the SDK's usual arguments
(``-i`` input folder, ``-o`` output folder, ``-m`` models folder, ``-l`` log level, or the
``HOLOSCAN_INPUT_PATH`` / ``HOLOSCAN_OUTPUT_PATH`` / ``HOLOSCAN_MODEL_PATH`` variables of a MONAI
Application Package). Run it through ``python -m monai_spine.apps.deploy`` (see
:mod:`monai_spine.apps.deploy.__main__`), which adds the input pre-flight and the all-or-nothing
output folder; :func:`run_app` is the same from Python.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any, Sequence

from monai.deploy.conditions import CountCondition
from monai.deploy.core import Application
from monai.deploy.operators.dicom_data_loader_operator import DICOMDataLoaderOperator

from monai_spine.apps.deploy.models import resolve_models_dir
from monai_spine.apps.deploy.operators import (
    RadiographSelectorOperator,
    RunRecord,
    SpineInferenceOperator,
    SpineSRWriterOperator,
)

__all__ = ["SpineDeployApp", "run_app"]


class SpineDeployApp(Application):
    """Spine radiograph keypoints with uncertainty, clinical measurements and a DICOM SR.

    Args:
        *args, **kwargs: as :class:`monai.deploy.core.Application` (``argv`` carries ``-i/-o/-m``).
        record: where the operators report what they wrote (a fresh :class:`RunRecord` by default).
        device: torch device of the models.
        region: model-zoo region (None: the only one, else the radiograph's header decides).
    """

    name = "monai-spine-deploy"
    description = (
        "Vertebra keypoints with uncertainty, clinical measurements and a TID 1500 DICOM SR for spine radiographs"
    )

    def __init__(self, *args: Any, record: RunRecord | None = None, device: str = "cpu", region: str | None = None,
                 **kwargs: Any) -> None:
        self.record = record if record is not None else RunRecord()
        self.device = device
        self.region = region
        self._logger = logging.getLogger(f"{__name__}.{type(self).__name__}")
        super().__init__(*args, **kwargs)

    def compose(self) -> None:
        app_context = Application.init_app_context(self.argv)
        input_folder = Path(app_context.input_path)
        output_folder = Path(app_context.output_path)
        models_dir = resolve_models_dir(app_context.args.get("model"))
        self._logger.info(f"input {input_folder}, output {output_folder}, models {models_dir}")

        loader = DICOMDataLoaderOperator(
            self, CountCondition(self, 1), input_folder=input_folder, must_load=False, name="dicom_loader"
        )
        selector = RadiographSelectorOperator(self, input_folder=input_folder, record=self.record,
                                              name="radiograph_selector")
        inference = SpineInferenceOperator(self, models_dir=models_dir, output_folder=output_folder,
                                           record=self.record, device=self.device, region=self.region,
                                           name="spine_inference")
        writer = SpineSRWriterOperator(self, output_folder=output_folder, record=self.record, name="sr_writer")

        self.add_flow(loader, selector, {("dicom_study_list", "dicom_study_list")})
        self.add_flow(selector, inference, {("radiograph", "radiograph")})
        self.add_flow(inference, writer, {("result", "result")})


def run_app(input_dir: str | os.PathLike, output_dir: str | os.PathLike, models_dir: str | os.PathLike,
            log_level: str | None = None, device: str = "cpu", region: str | None = None) -> RunRecord:
    """Run :class:`SpineDeployApp` once, writing straight into ``output_dir`` (no staging, no pre-flight).

    Returns:
        the run's record; ``record.complete`` is False when the graph stopped early.

    Raises:
        whatever an operator raised (:class:`~monai_spine.apps.deploy.selection.DeployInputError`
        for unusable input).
    """
    # Holoscan's Application takes the interpreter's command line: [python, script, *args]; its
    # ``argv`` then drops the interpreter, and the SDK's parser drops the script.
    argv: Sequence[str] = [sys.executable, sys.argv[0] or "monai_spine.apps.deploy", "-i", str(input_dir),
                           "-o", str(output_dir), "-m", str(models_dir)]
    if log_level:
        argv = [*argv, "-l", log_level]
    record = RunRecord()
    app = SpineDeployApp(list(argv), record=record, device=device, region=region)
    app.run()
    return record
