"""MONAI Deploy App SDK operators of the spine application (this module imports the SDK).

The graph (:class:`~monai_spine.apps.deploy.app.SpineDeployApp`)::

    DICOMDataLoaderOperator --dicom_study_list--> RadiographSelectorOperator --radiograph-->
        SpineInferenceOperator --result--> SpineSRWriterOperator

* the SDK's :class:`DICOMDataLoaderOperator` reads every DICOM instance of the input folder;
* :class:`RadiographSelectorOperator` picks the spine radiograph
  (:func:`monai_spine.apps.deploy.selection.select_radiograph`) or raises
  :class:`~monai_spine.apps.deploy.selection.DeployInputError` naming the folder and what it found;
* :class:`SpineInferenceOperator` runs detector + BayeRegX regressor + measurements
  (:func:`monai_spine.apps.deploy.processing.predict_and_measure`) and writes the JSON, overlay and
  measurement files;
* :class:`SpineSRWriterOperator` writes the DICOM SR (:mod:`monai_spine.apps.deploy.sr`) and
  records the run as complete in the shared :class:`RunRecord`.

Every operator writes into the output folder it is given; the command line
(:mod:`monai_spine.apps.deploy.__main__`) gives them a staging folder and moves its content into
the real output folder only when the record says the run completed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from monai.deploy.core import Fragment, Operator, OperatorSpec

__all__ = [
    "RunRecord",
    "RadiographSelectorOperator",
    "SpineInferenceOperator",
    "SpineSRWriterOperator",
]


@dataclass
class RunRecord:
    """Shared between the application and its operators: what the run produced.

    Attributes:
        files: output kind -> path (in the operators' output folder).
        notes: log lines about the input (skipped series, ...).
        complete: set by the last operator once every output is written.
        summary: a few numbers for the command line (points, measurements, SOP Instance UIDs).
        models: ``[{"kind", "name", "sha256"}]`` of the models used (written into the SR).
    """

    files: dict[str, str] = field(default_factory=dict)
    models: list[dict[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    complete: bool = False
    summary: dict[str, Any] = field(default_factory=dict)


class RadiographSelectorOperator(Operator):
    """Selects the single-frame DX/CR spine radiograph (with a pixel spacing) from the loaded studies.

    Named input:
        dicom_study_list: list of :class:`monai.deploy.core.domain.DICOMStudy` (the SDK loader's output).

    Named output:
        radiograph: a :class:`~monai_spine.apps.deploy.selection.SelectedImage`.

    Args:
        fragment: the application.
        input_folder: the folder the studies came from (named in messages, and used to count the
            files that were not DICOM).
        record: the run's :class:`RunRecord` (selection notes go there).
    """

    def __init__(self, fragment: Fragment, *args: Any, input_folder: Path, record: RunRecord, **kwargs: Any) -> None:
        self._logger = logging.getLogger(f"{__name__}.{type(self).__name__}")
        self.input_folder = Path(input_folder)
        self.record = record
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input("dicom_study_list")
        spec.output("radiograph")

    def compute(self, op_input: Any, op_output: Any, context: Any) -> None:
        from monai_spine.apps.deploy.selection import DeployInputError, is_hidden, list_files, select_radiograph

        studies = op_input.receive("dicom_study_list") or []
        datasets = [
            sop.get_native_sop_instance()
            for study in studies
            for series in study.get_all_series()
            for sop in series.get_sop_instances()
        ]
        # the SDK loader reads hidden folders too; the pre-flight (list_files) does not: agree with it
        datasets = [ds for ds in datasets
                    if not getattr(ds, "filename", "") or not is_hidden(ds.filename, self.input_folder)]
        files = list_files(self.input_folder)
        loaded = {str(Path(getattr(ds, "filename", "") or "").resolve()) for ds in datasets}
        skipped = sum(1 for f in files if str(f.resolve()) not in loaded)
        if not datasets:
            found = f"{len(files)} file(s), none of them DICOM" if files else "it is empty"
            raise DeployInputError(f"no DICOM file in input folder {self.input_folder}: {found}")
        selected = select_radiograph(datasets, self.input_folder, skipped_files=skipped)
        for note in selected.notes:
            self._logger.info(note)
        self.record.notes.extend(selected.notes)
        self._logger.info(
            f"selected {selected.path or selected.sop_instance_uid} (SOP Instance {selected.sop_instance_uid}, "
            f"spacing {selected.spacing_mm} mm from {selected.spacing_source})"
        )
        op_output.emit(selected, "radiograph")


class SpineInferenceOperator(Operator):
    """Detector + BayeRegX keypoints with uncertainty + measurements on the selected radiograph.

    Named input:
        radiograph: a :class:`~monai_spine.apps.deploy.selection.SelectedImage`.

    Named output:
        result: ``(SelectedImage, DeployResult)``.

    Args:
        fragment: the application.
        models_dir: the models folder (:mod:`monai_spine.apps.deploy.models`); loaded on first use.
        output_folder: where the JSON, overlay and measurement files are written.
        record: the run's :class:`RunRecord` (the models' names and weight hashes go to ``record.models``).
        device: torch device (``cpu``).
        region: model-zoo region (None: the only one, else the radiograph's header decides).
    """

    def __init__(self, fragment: Fragment, *args: Any, models_dir: Path, output_folder: Path, record: RunRecord,
                 device: str = "cpu", region: str | None = None, **kwargs: Any) -> None:
        self._logger = logging.getLogger(f"{__name__}.{type(self).__name__}")
        self.models_dir = Path(models_dir)
        self.output_folder = Path(output_folder)
        self.record = record
        self.device = device
        self.region = region
        self._pipeline: Any = None
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input("radiograph")
        spec.output("result")

    def compute(self, op_input: Any, op_output: Any, context: Any) -> None:
        from monai_spine.apps.deploy.models import (
            build_pipeline,
            locate_models,
            region_from_header,
            threshold_warnings,
        )
        from monai_spine.apps.deploy.processing import predict_and_measure
        from monai_spine.apps.deploy.selection import DeployInputError

        selected = op_input.receive("radiograph")
        if self._pipeline is None:
            folders = locate_models(self.models_dir, region=self.region, prefer=region_from_header(selected.dataset))
            self._logger.info(f"loading models from {self.models_dir} ({folders.layout} layout)")
            self.record.models = folders.identities()
            try:
                self._pipeline = build_pipeline(folders, device=self.device, overlays=True)
            except (ValueError, FileNotFoundError) as e:  # unusable models: exit 2, one line naming the file
                raise DeployInputError(f"models folder {self.models_dir}: {' '.join(str(e).split())}") from None
            self.record.notes.extend(threshold_warnings(self._pipeline.regressor.thresholds))
        self.output_folder.mkdir(parents=True, exist_ok=True)
        result = predict_and_measure(selected, self._pipeline, self.output_folder)
        self.record.files.update(result.files)
        self.record.notes.extend(result.notes)
        n_points = sum(len(v.get("points", [])) for v in result.prediction.get("vertebrae", []))
        self.record.summary.update(
            vertebrae=len(result.prediction.get("vertebrae", [])), points=n_points,
            measurements=sum(1 for r in result.rows if r.get("value") is not None),
            source_sop_instance_uid=selected.sop_instance_uid,
        )
        op_output.emit((selected, result), "result")


class SpineSRWriterOperator(Operator):
    """Writes the TID 1500 DICOM SR ``<stem>.sr.dcm``, the overlay as a Secondary Capture
    ``<stem>.overlay.sc.dcm`` (:mod:`monai_spine.apps.deploy.capture`), and marks the run complete.

    Named input:
        result: ``(SelectedImage, DeployResult)`` from :class:`SpineInferenceOperator`.

    Args:
        fragment: the application.
        output_folder: where the SR is written.
        record: the run's :class:`RunRecord` (``complete`` is set here, last).
    """

    def __init__(self, fragment: Fragment, *args: Any, output_folder: Path, record: RunRecord, **kwargs: Any) -> None:
        self._logger = logging.getLogger(f"{__name__}.{type(self).__name__}")
        self.output_folder = Path(output_folder)
        self.record = record
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input("result")

    def compute(self, op_input: Any, op_output: Any, context: Any) -> None:
        from monai_spine.apps.deploy.identity import device_observer_uid
        from monai_spine.apps.deploy.sr import build_measurement_report

        selected, result = op_input.receive("result")
        device_uid, uid_source = device_observer_uid()
        self._logger.info(f"device observer UID {device_uid} from {uid_source}")
        cases = result.measurements.get("cases") or [{}]
        notes: list[str] = []
        sr = build_measurement_report(selected.dataset, result.prediction, result.rows, models=self.record.models,
                                      device_uid=device_uid, uncertainty=cases[0].get("uncertainty"), notes=notes)
        self.record.notes.extend(notes)
        self.record.summary["device_uid"] = device_uid
        path = self.output_folder / f"{result.stem}.sr.dcm"
        tmp = path.with_name(f".{path.name}.tmp")
        sr.save_as(tmp, enforce_file_format=True)
        tmp.replace(path)
        self.record.files["sr"] = str(path)
        overlay = result.files.get("overlay")
        if overlay:  # the same picture for viewers that show no SR
            from monai_spine.apps.deploy.capture import build_overlay_capture

            sc = build_overlay_capture(selected.dataset, overlay)
            sc_path = self.output_folder / f"{result.stem}.overlay.sc.dcm"
            sc_tmp = sc_path.with_name(f".{sc_path.name}.tmp")
            sc.save_as(sc_tmp, enforce_file_format=True)
            sc_tmp.replace(sc_path)
            self.record.files["overlay_sc"] = str(sc_path)
        self.record.summary["sr_sop_instance_uid"] = str(sr.SOPInstanceUID)
        self._logger.info(f"wrote {path}")
        self.record.complete = True
