"""DICOM Structured Report (TID 1500 Measurement Report) of the keypoints, their uncertainty and the measurements.

Built with highdicom (installed in ``.venv-deploy`` only; this module is imported by the deploy
application's SR operator, never by ``import monai_spine``).

Content tree of the Comprehensive SR (SOP Class 1.2.840.10008.5.1.4.1.1.88.33; 2D SCOORD points
on a projection radiograph need no frame of reference, so the 2D Comprehensive SR is the fitting
IOD rather than Comprehensive 3D SR)::

    CONTAINER Imaging Measurement Report (DCM 126000)             TID 1500
      HAS CONCEPT MOD  Language, HAS OBS CONTEXT  Device observer "monai-spine" (UID, version)
      HAS CONCEPT MOD  Procedure reported = Imaging procedure (SCT 363679005)
      CONTAINS Image Library -> the source radiograph
      CONTAINS Imaging Measurements
        CONTAINS Measurement Group (TID 1410), one per keypoint:
          Tracking Identifier "C4-AS", Tracking Unique Identifier (UID)
          Finding = Vertebra (SCT 51282000), Finding Site = the level (SCT "C4 vertebra", ...)
          Image Region = SCOORD POINT (x_px + 0.5, y_px + 0.5)  SELECTED FROM  the source image (its SOP Instance UID)
          Keypoint (99MSPINE kp-name) = AS / PS / AI / PI / SP           (qualitative evaluation)
          Uncertainty class (99MSPINE unc-class) = certain / moderately_uncertain / highly_uncertain
          sigma_p total / aleatoric / epistemic (99MSPINE) = ... mm     (numeric, UCUM mm)
        CONTAINS Measurement Group (TID 1501), one per measured item:
          Tracking Identifier "segment C4-C5" (or "vertebra C4", "lordosis C3-C7", "cobb ...")
          e.g. angle_deg (99MSPINE) = 7.1 deg; translation_mm = 0.8 mm; translation_share = 0.05 {ratio}

When no vertebra was detected the report holds one TID 1501 group "spine" whose qualitative
evaluation Result (99MSPINE result) is "No vertebra detected" (99MSPINE no-vertebra).

Coordinates: DICOM SCOORD image coordinates put the top-left corner of the top-left pixel at
(0, 0), so a pixel centre is at (column + 0.5, row + 0.5); the project's keypoints put pixel
centres at integers (``monai_spine.data.keypoints``). :data:`SCOORD_OFFSET_PX` (0.5) is added
when writing. Measurement values are the point estimates of ``measurements.json`` (the Monte-Carlo
intervals stay in the JSON/CSV); measurements that could not be made (NaN / null) are left out.
Codes without a standard equivalent use the private coding scheme :data:`PRIVATE_SCHEME`,
declared in the Coding Scheme Identification Sequence.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = [
    "PRIVATE_SCHEME",
    "SCOORD_OFFSET_PX",
    "SR_SERIES_NUMBER",
    "UNIT_CODES",
    "build_measurement_report",
]

#: Private coding scheme designator of the monai-spine concepts.
PRIVATE_SCHEME = "99MSPINE"
#: Added to the project's pixel coordinates to get DICOM SCOORD image coordinates.
SCOORD_OFFSET_PX = 0.5
#: Series Number of the SR series.
SR_SERIES_NUMBER = 9901
#: measurement unit (``monai_spine.measure.io`` row ``unit``) -> UCUM (value, meaning).
UNIT_CODES: dict[str, tuple[str, str]] = {
    "mm": ("mm", "millimeter"),
    "deg": ("deg", "degree"),
    "fraction": ("{ratio}", "ratio"),
    "percent": ("%", "percent"),
    "probability": ("1", "no units"),
    "": ("1", "no units"),
}
_POINT_MEANINGS = {
    "AS": "anterior-superior corner",
    "PS": "posterior-superior corner",
    "AI": "anterior-inferior corner",
    "PI": "posterior-inferior corner",
    "SP": "spinous process tip",
}
_SIGMA_KINDS = ("total", "aleatoric", "epistemic")


def _private(value: str, meaning: str) -> Any:
    from pydicom.sr.coding import Code

    return Code(value, PRIVATE_SCHEME, meaning)


def _level_code(level: str) -> Any:
    """SCT code of a vertebra level (``C4`` -> "C4 vertebra"), a private code when pydicom has none."""
    from pydicom.sr.codedict import codes

    try:
        return getattr(codes.SCT, f"{level}Vertebra")
    except AttributeError:
        return _private(f"level-{level}", f"{level} vertebra")


def _ucum(unit: str) -> Any:
    from pydicom.sr.coding import Code

    value, meaning = UNIT_CODES[unit]
    return Code(value, "UCUM", meaning)


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))


def _point_groups(prediction: Mapping[str, Any], source: Any, algorithm: Any) -> list[Any]:
    import numpy as np
    from highdicom.sr import (
        FindingSite,
        GraphicTypeValues,
        ImageRegion,
        Measurement,
        PlanarROIMeasurementsAndQualitativeEvaluations,
        QualitativeEvaluation,
        SourceImageForRegion,
        TrackingIdentifier,
    )
    from pydicom.sr.codedict import codes
    from pydicom.uid import generate_uid

    kp_name = _private("kp-name", "Keypoint")
    unc_class = _private("unc-class", "Keypoint uncertainty class")
    groups = []
    for v in prediction.get("vertebrae", []):
        level = str(v["level"])
        for p in v.get("points", []):
            x, y = p.get("x_px"), p.get("y_px")
            if not (_finite(x) and _finite(y)):
                continue
            name = str(p.get("name", "?"))
            region = ImageRegion(
                graphic_type=GraphicTypeValues.POINT,
                graphic_data=np.array([[float(x) + SCOORD_OFFSET_PX, float(y) + SCOORD_OFFSET_PX]]),
                source_image=SourceImageForRegion(
                    referenced_sop_class_uid=str(source.SOPClassUID),
                    referenced_sop_instance_uid=str(source.SOPInstanceUID),
                ),
            )
            cls = str(p.get("uncertainty_class", "unknown"))
            evaluations = [
                QualitativeEvaluation(kp_name, _private(f"kp-{name}", _POINT_MEANINGS.get(name, name))),
                QualitativeEvaluation(unc_class, _private(f"unc-{cls}", cls.replace("_", " "))),
            ]
            measurements = [
                Measurement(
                    name=_private(f"sigma_p_{kind}", f"Predicted point uncertainty sigma_p ({kind})"),
                    value=float(p[f"sigma_p_{kind}_mm"]),
                    unit=_ucum("mm"),
                )
                for kind in _SIGMA_KINDS
                if _finite(p.get(f"sigma_p_{kind}_mm"))
            ]
            groups.append(
                PlanarROIMeasurementsAndQualitativeEvaluations(
                    tracking_identifier=TrackingIdentifier(uid=generate_uid(), identifier=f"{level}-{name}"),
                    referenced_region=region,
                    finding_type=codes.SCT.Vertebra,
                    finding_sites=[FindingSite(_level_code(level))],
                    algorithm_id=algorithm,
                    measurements=measurements or None,
                    qualitative_evaluations=evaluations,
                )
            )
    return groups


def _measurement_groups(rows: Sequence[Mapping[str, Any]], algorithm: Any) -> list[Any]:
    from highdicom.sr import Measurement, MeasurementsAndQualitativeEvaluations, TrackingIdentifier
    from pydicom.uid import generate_uid

    by_item: dict[tuple[str, str], list[Any]] = {}
    for row in rows:
        unit = str(row.get("unit") or "")
        if unit not in UNIT_CODES or not _finite(row.get("value")):
            continue  # not measured (NaN / null), or a pixel length / flag with no place in a mm report
        meas = Measurement(
            name=_private(str(row["measurement"]), str(row["measurement"]).replace("_", " ")),
            value=float(row["value"]),
            unit=_ucum(unit),
        )
        by_item.setdefault((str(row["group"]), str(row["item"])), []).append(meas)
    return [
        MeasurementsAndQualitativeEvaluations(
            tracking_identifier=TrackingIdentifier(uid=generate_uid(), identifier=f"{group} {item}"),
            algorithm_id=algorithm,
            measurements=meas,
        )
        for (group, item), meas in by_item.items()
    ]


def _nothing_found_group(algorithm: Any) -> Any:
    from highdicom.sr import MeasurementsAndQualitativeEvaluations, QualitativeEvaluation, TrackingIdentifier
    from pydicom.uid import generate_uid

    return MeasurementsAndQualitativeEvaluations(
        tracking_identifier=TrackingIdentifier(uid=generate_uid(), identifier="spine"),
        algorithm_id=algorithm,
        qualitative_evaluations=[
            QualitativeEvaluation(_private("result", "Result"), _private("no-vertebra", "No vertebra detected"))
        ],
    )


def build_measurement_report(
    source: Any,
    prediction: Mapping[str, Any],
    rows: Sequence[Mapping[str, Any]],
    *,
    sop_instance_uid: str | None = None,
    series_instance_uid: str | None = None,
    software_version: str | None = None,
) -> Any:
    """The TID 1500 Comprehensive SR of one radiograph's keypoints and measurements.

    Args:
        source: the source radiograph's pydicom dataset (patient and study are copied from it; every
            SCOORD point references its SOP Instance UID).
        prediction: the pipeline's JSON record (``vertebrae[i].points[j]`` with ``name``, ``x_px``,
            ``y_px``, ``uncertainty_class``, ``sigma_p_<kind>_mm``).
        rows: measurement rows (:func:`monai_spine.measure.io.results_to_rows`; keys ``group``,
            ``item``, ``measurement``, ``unit``, ``value``).
        sop_instance_uid, series_instance_uid: UIDs of the SR (new ones by default).
        software_version: recorded as the algorithm version (default ``monai_spine.__version__``).

    Returns:
        a :class:`highdicom.sr.ComprehensiveSR` (a pydicom ``Dataset``; ``save_as`` writes it).
    """
    from highdicom.sr import (
        AlgorithmIdentification,
        ComprehensiveSR,
        DeviceObserverIdentifyingAttributes,
        MeasurementReport,
        ObservationContext,
        ObserverContext,
    )
    from pydicom.dataset import Dataset
    from pydicom.sr.codedict import codes
    from pydicom.uid import generate_uid

    import monai_spine

    version = software_version or monai_spine.__version__
    algorithm = AlgorithmIdentification(name="monai-spine BayeRegX keypoints", version=version)
    observer = ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=DeviceObserverIdentifyingAttributes(
            uid=generate_uid(entropy_srcs=["monai-spine", version]), name="monai-spine", model_name=version
        ),
    )
    groups = _point_groups(prediction, source, algorithm) + _measurement_groups(rows, algorithm)
    if not groups:  # TID 1500 needs one group: say that nothing was found rather than write no report
        groups = [_nothing_found_group(algorithm)]
    report = MeasurementReport(
        observation_context=ObservationContext(observer_device_context=observer),
        procedure_reported=codes.SCT.ImagingProcedure,
        imaging_measurements=groups,
        title=codes.DCM.ImagingMeasurementReport,
        referenced_images=[source],
    )
    sr = ComprehensiveSR(
        evidence=[source],
        content=report,
        series_instance_uid=series_instance_uid or generate_uid(),
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=sop_instance_uid or generate_uid(),
        instance_number=1,
        manufacturer="monai-spine",
        is_complete=True,
        is_final=False,
        is_verified=False,
        series_description="monai-spine vertebra keypoints and measurements",
    )
    scheme = Dataset()
    scheme.CodingSchemeDesignator = PRIVATE_SCHEME
    scheme.CodingSchemeName = "monai-spine concepts"
    scheme.CodingSchemeResponsibleOrganization = "monai-spine project"
    sr.CodingSchemeIdentificationSequence = [scheme]
    sr.SoftwareVersions = version
    return sr
