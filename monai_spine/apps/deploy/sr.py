"""DICOM Structured Report (TID 1500 Measurement Report) of the keypoints, their uncertainty and the measurements.

Built with highdicom (installed in ``.venv-deploy`` only; this module is imported by the deploy
application's SR operator, never by ``import monai_spine``).

Content tree of the Comprehensive SR (SOP Class 1.2.840.10008.5.1.4.1.1.88.33; 2D SCOORD points
on a projection radiograph need no frame of reference, so the 2D Comprehensive SR is the fitting
IOD rather than Comprehensive 3D SR)::

    CONTAINER Imaging Measurement Report (DCM 126000)             TID 1500
      HAS CONCEPT MOD  Language
      HAS OBS CONTEXT  Device observer: installation-specific UID, name "monai-spine", manufacturer,
                       model name "monai-spine deploy <version>"
      HAS CONCEPT MOD  Procedure reported = Imaging procedure (SCT 363679005)
      CONTAINS Image Library -> the source radiograph
      CONTAINS Imaging Measurements
        CONTAINS Measurement Group (TID 1410), one per keypoint:
          Tracking Identifier "C4-AS", Tracking Unique Identifier (UID)
          Finding = Vertebra (SCT 51282000), Finding Site = the level (SCT "C4 vertebra", ...)
          Algorithm Name / Version / Parameters (model names and weight hashes)
          Image Region = SCOORD POINT (x_px + 0.5, y_px + 0.5)  SELECTED FROM  the source image
          Keypoint (99MSPINE kp-name) = kp-AS / kp-PS / kp-AI / kp-PI / kp-SP
          Keypoint uncertainty class (99MSPINE unc-class) = unc-certain / unc-moderate / unc-high
          Vertebra level source (99MSPINE level-source) = lvl-detected / lvl-inferred (when the
            prediction says; an inferred level was placed along the spine, not seen)
          sigma-p-total / sigma-p-aleat / sigma-p-epist (99MSPINE) = ... mm
        CONTAINS Measurement Group (TID 1501), one per measured item:
          Tracking Identifier "segment C4-C5" (or "vertebra C4", "lordosis C3-C7", "cobb main (T5-T11)")
          Finding Site = the disc level, vertebra or spine region (SCT); Source image = the radiograph
          Measurement (TID 300), e.g. seg-angle "Segmental angle" = 7.1 deg
            INFERRED FROM the source image
            HAS PROPERTIES (TID 310): Mean, Standard Deviation (TID 311, with a Population
              Description naming the Monte-Carlo propagation and the 95 % interval);
              +, range of upper measurement uncertainty = ci_high - value;
              -, range of lower measurement uncertainty = value - ci_low   (same unit as the value)

When no vertebra was detected the report holds one TID 1501 group "spine" whose qualitative
evaluation Result (99MSPINE result) is "No vertebra detected" (99MSPINE no-vertebra).

Patient and study come from the source image. Its Type 2 attributes (:data:`TYPE2_PATIENT_STUDY`)
may be absent in anonymised or exported films; they are written empty, as Type 2 allows, so the SR
stays valid. Coordinates: DICOM SCOORD image coordinates put the top-left corner of the top-left
pixel at (0, 0), so a pixel centre is at (column + 0.5, row + 0.5); the project's keypoints put
pixel centres at integers. :data:`SCOORD_OFFSET_PX` (0.5) is added when writing. Measurement values
are the point estimates of ``measurements.json``; measurements that could not be made (NaN / null)
are left out. Every code value fits the 16-character Code Value (no Long Code Values); standard
codes (SCT, DCM, UCUM) are used where one means the same thing, the private coding scheme
:data:`PRIVATE_SCHEME` (declared in the Coding Scheme Identification Sequence) otherwise.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = [
    "PRIVATE_SCHEME",
    "SCOORD_OFFSET_PX",
    "SR_SERIES_NUMBER",
    "UNIT_CODES",
    "MEASUREMENT_CODES",
    "UNCERTAINTY_CLASS_CODES",
    "TYPE2_PATIENT_STUDY",
    "MAX_CODE_VALUE_CHARS",
    "measurement_code",
    "evidence_dataset",
    "build_measurement_report",
]

#: Private coding scheme designator of the monai-spine concepts.
PRIVATE_SCHEME = "99MSPINE"
#: Added to the project's pixel coordinates to get DICOM SCOORD image coordinates.
SCOORD_OFFSET_PX = 0.5
#: Series Number of the SR series.
SR_SERIES_NUMBER = 9901
#: Longest Code Value (SH); longer values would need Long Code Value, which older viewers do not show.
MAX_CODE_VALUE_CHARS = 16
#: measurement unit (``monai_spine.measure.io`` row ``unit``) -> UCUM (value, meaning).
UNIT_CODES: dict[str, tuple[str, str]] = {
    "mm": ("mm", "millimeter"),
    "deg": ("deg", "degree"),
    "fraction": ("{ratio}", "ratio"),
    "percent": ("%", "percent"),
    "probability": ("1", "no units"),
    "": ("1", "no units"),
}
#: measurement name (``measurements.json`` key) -> (code value, scheme, meaning). The meaning never
#: repeats the unit (the unit is coded beside the value).
MEASUREMENT_CODES: dict[str, tuple[str, str, str]] = {
    "angle_deg": ("seg-angle", PRIVATE_SCHEME, "Segmental angle"),
    "translation_mm": ("seg-transl", PRIVATE_SCHEME, "Segmental translation"),
    "translation_share": ("seg-transl-frac", PRIVATE_SCHEME, "Segmental translation share"),
    "disc_height_anterior_mm": ("disc-h-ant", PRIVATE_SCHEME, "Anterior disc height"),
    "disc_height_posterior_mm": ("disc-h-post", PRIVATE_SCHEME, "Posterior disc height"),
    "body_depth_mm": ("body-depth", PRIVATE_SCHEME, "Vertebral body depth"),
    "lordosis_angle_deg": ("lordosis", PRIVATE_SCHEME, "Lordosis angle"),
    "cobb_main_deg": ("285285000", "SCT", "Cobb angle"),
    "cobb_proximal_deg": ("285285000", "SCT", "Cobb angle"),
    "cobb_distal_deg": ("285285000", "SCT", "Cobb angle"),
}
#: uncertainty class (``uncertainty_class`` of a point) -> (code value, meaning).
UNCERTAINTY_CLASS_CODES: dict[str, tuple[str, str]] = {
    "certain": ("unc-certain", "certain"),
    "moderately_uncertain": ("unc-moderate", "moderately uncertain"),
    "highly_uncertain": ("unc-high", "highly uncertain"),
}
#: Type 2 Patient / General Study attributes copied from the source: written empty when absent.
TYPE2_PATIENT_STUDY = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex",
    "StudyDate", "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber",
)
_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_POINT_MEANINGS = {
    "AS": "anterior-superior corner",
    "PS": "posterior-superior corner",
    "AI": "anterior-inferior corner",
    "PI": "posterior-inferior corner",
    "SP": "spinous process tip",
}
_SIGMA_CODES = {"total": "sigma-p-total", "aleatoric": "sigma-p-aleat", "epistemic": "sigma-p-epist"}
_UNIT_SUFFIX = re.compile(r"_(deg|mm|px|percent|frac)$")
_REGION_SITES = {"C": "CervicalSpine", "T": "ThoracicSpine", "L": "LumbarSpine"}


def _private(value: str, meaning: str) -> Any:
    from pydicom.sr.coding import Code

    if len(value) > MAX_CODE_VALUE_CHARS:
        raise ValueError(f"private code value {value!r} is longer than {MAX_CODE_VALUE_CHARS} characters")
    return Code(value, PRIVATE_SCHEME, meaning)


def measurement_code(name: str) -> tuple[str, str, str]:
    """``(code value, scheme, meaning)`` of a measurement name; unknown names get a short private code.

    Unknown names of at most 16 characters are their own code value; longer ones get
    ``m-<10 hex digits of their SHA-1>``. The meaning is the name without its unit suffix.
    """
    if name in MEASUREMENT_CODES:
        return MEASUREMENT_CODES[name]
    meaning = _UNIT_SUFFIX.sub("", name).replace("_", " ").strip() or name
    meaning = meaning[:1].upper() + meaning[1:]
    if len(name) <= MAX_CODE_VALUE_CHARS:
        return name, PRIVATE_SCHEME, meaning
    return f"m-{hashlib.sha1(name.encode()).hexdigest()[:10]}", PRIVATE_SCHEME, meaning


def _concept(name: str) -> Any:
    from pydicom.sr.coding import Code

    value, scheme, meaning = measurement_code(name)
    return Code(value, scheme, meaning)


def _level_code(level: str) -> Any:
    """SCT code of a vertebra level (``C4`` -> "C4 vertebra"), a private code when pydicom has none."""
    from pydicom.sr.codedict import codes

    try:
        return getattr(codes.SCT, f"{level}Vertebra")
    except AttributeError:
        return _private(f"level-{level}", f"{level} vertebra")


def _item_site(group: str, item: str) -> Any | None:
    """Finding site of a measured item: the disc level of a segment, the vertebra, else the spine region."""
    from pydicom.sr.codedict import codes

    levels = re.findall(r"\b([CTLS]\d{1,2})\b", item)
    if group == "segment" and len(levels) == 2:
        site = getattr(codes.SCT, f"LevelOf{levels[0]}{levels[1]}IntervertebralDisc", None)
        if site is not None:
            return site
    if group == "vertebra" and len(levels) == 1:
        return _level_code(levels[0])
    regions = {lev[0] for lev in levels}
    if len(regions) == 1 and regions <= set(_REGION_SITES):
        return getattr(codes.SCT, _REGION_SITES[regions.pop()])
    return codes.SCT.Spine if levels else None


def _ucum(unit: str) -> Any:
    from pydicom.sr.coding import Code

    value, meaning = UNIT_CODES[unit]
    return Code(value, "UCUM", meaning)


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))


def evidence_dataset(source: Any) -> tuple[Any, list[str]]:
    """A pixel-less copy of the source dataset with every Type 2 patient/study attribute present.

    Absent attributes of :data:`TYPE2_PATIENT_STUDY` are added empty; a ``PatientSex`` other than
    ``M``/``F``/``O`` and an unreadable ``PatientBirthDate``/``StudyDate``/``StudyTime`` are emptied.

    Returns:
        ``(dataset, notes)``: the copy (the source is not changed) and one note per attribute that
        was added or emptied.
    """
    from pydicom.dataset import Dataset
    from pydicom.valuerep import DA, TM

    ds = Dataset()
    for elem in source:
        if elem.keyword not in _PIXEL_KEYWORDS:
            ds.add(elem)
    notes = []
    for kw in TYPE2_PATIENT_STUDY:
        if kw not in ds:
            setattr(ds, kw, None)
            notes.append(f"source image has no {kw}: written empty (Type 2)")
    checks = {"PatientSex": lambda v: str(v) in ("M", "F", "O", ""), "PatientBirthDate": DA,
              "StudyDate": DA, "StudyTime": TM}
    for kw, check in checks.items():
        value = ds.get(kw)
        if value in (None, ""):
            continue
        try:
            ok = check(value) is not False
        except (ValueError, TypeError):
            ok = False
        if not ok:
            setattr(ds, kw, None)
            notes.append(f"source image has an invalid {kw} {str(value)!r}: written empty")
    return ds, notes


def _library_dataset(evidence: Any) -> Any:
    """The dataset for the Image Library entry: ``evidence``, or a copy highdicom can describe.

    highdicom writes the projection-radiography descriptors of TID 1603 (patient orientation, pixel
    spacing; optional rows of the template) from ``PatientOrientation`` and ``ImagerPixelSpacing``
    and fails when either is missing, which the application accepts (a film calibrated by
    ``PixelSpacing`` alone, an empty ``PatientOrientation``). Then the entry is written without
    those optional descriptors (modality from the SOP class, rows, columns), by handing highdicom a
    copy whose ``Modality`` does not mark it as projection radiography.
    """
    from pydicom.dataset import Dataset

    orientation = [str(v) for v in (evidence.get("PatientOrientation") or [])]
    spacing = evidence.get("ImagerPixelSpacing") or []
    if len(orientation) == 2 and all(orientation) and len(spacing) == 2:
        return evidence
    ds = Dataset()
    for elem in evidence:
        ds.add(elem)
    ds.Modality = "OT"  # only highdicom's descriptor choice reads it; the entry's modality comes from the SOP class
    return ds


def _source_for_region(source: Any) -> Any:
    from highdicom.sr import SourceImageForRegion

    return SourceImageForRegion(referenced_sop_class_uid=str(source.SOPClassUID),
                                referenced_sop_instance_uid=str(source.SOPInstanceUID))


def _point_groups(prediction: Mapping[str, Any], source: Any, algorithm: Any) -> list[Any]:
    import numpy as np
    from highdicom.sr import (
        FindingSite,
        GraphicTypeValues,
        ImageRegion,
        Measurement,
        PlanarROIMeasurementsAndQualitativeEvaluations,
        QualitativeEvaluation,
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
                source_image=_source_for_region(source),
            )
            cls = str(p.get("uncertainty_class", "unknown"))
            cls_value, cls_meaning = UNCERTAINTY_CLASS_CODES.get(cls, (f"unc-{cls}"[:16], cls.replace("_", " ")))
            evaluations = [
                QualitativeEvaluation(kp_name, _private(f"kp-{name}", _POINT_MEANINGS.get(name, name))),
                QualitativeEvaluation(unc_class, _private(cls_value, cls_meaning)),
            ]
            if "inferred" in v:  # the chain detector may place a level it did not see
                evaluations.append(QualitativeEvaluation(
                    _private("level-source", "Vertebra level source"),
                    _private("lvl-inferred", "inferred, not seen by the detector") if v["inferred"]
                    else _private("lvl-detected", "detected"),
                ))
            measurements = [
                Measurement(
                    name=_private(_SIGMA_CODES[kind], f"Predicted keypoint uncertainty sigma_p ({kind})"),
                    value=float(p[f"sigma_p_{kind}_mm"]),
                    unit=_ucum("mm"),
                )
                for kind in ("total", "aleatoric", "epistemic")
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


def _properties(row: Mapping[str, Any], unit: str, uncertainty: Mapping[str, Any] | None) -> Any | None:
    """TID 310 of a row with a Monte-Carlo summary: mean and SD (TID 311) and the interval as +/- ranges."""
    from highdicom.sr import (
        MeasurementProperties,
        MeasurementStatisticalProperties,
        NumContentItem,
        RelationshipTypeValues,
    )
    from pydicom.sr.codedict import codes
    from pydicom.sr.coding import Code

    value, mean, std, lo, hi = (row.get(k) for k in ("value", "mean", "std", "ci_low", "ci_high"))
    has_stats = _finite(mean) and _finite(std)
    has_ci = _finite(lo) and _finite(hi)
    if not (has_stats or has_ci):
        return None
    stats = None
    if has_stats:
        n = (uncertainty or {}).get("num_samples")
        ci = float((uncertainty or {}).get("ci", 0.95))
        desc = (f"Monte-Carlo propagation of the predicted keypoint uncertainty"
                f"{f' ({int(n)} samples)' if n else ''}")
        if has_ci:
            desc += f"; {ci * 100:g} % interval [{float(lo):.6g}, {float(hi):.6g}] {UNIT_CODES[unit][0]}"
        stats = MeasurementStatisticalProperties(
            values=[
                NumContentItem(name=codes.SCT.Mean, value=float(mean), unit=_ucum(unit),
                               relationship_type=RelationshipTypeValues.HAS_PROPERTIES),
                NumContentItem(name=codes.SCT.StandardDeviation, value=float(std), unit=_ucum(unit),
                               relationship_type=RelationshipTypeValues.HAS_PROPERTIES),
            ],
            description=desc,
        )
    props = MeasurementProperties(measurement_statistical_properties=stats)
    if has_ci:
        # the interval as ranges around the reported value (0 when the value lies outside its own interval)
        for code, meaning, width in (
            ("371886008", "+, range of upper measurement uncertainty", float(hi) - float(value)),
            ("371885007", "-, range of lower measurement uncertainty", float(value) - float(lo)),
        ):
            props.append(NumContentItem(name=Code(code, "SCT", meaning), value=max(0.0, width), unit=_ucum(unit),
                                        relationship_type=RelationshipTypeValues.HAS_PROPERTIES))
    return props


def _measurement_groups(rows: Sequence[Mapping[str, Any]], source: Any, algorithm: Any,
                        uncertainty: Mapping[str, Any] | None) -> list[Any]:
    from highdicom.sr import (
        FindingSite,
        Measurement,
        MeasurementsAndQualitativeEvaluations,
        SourceImageForMeasurement,
        SourceImageForMeasurementGroup,
        TrackingIdentifier,
    )
    from pydicom.uid import generate_uid

    image = dict(referenced_sop_class_uid=str(source.SOPClassUID),
                 referenced_sop_instance_uid=str(source.SOPInstanceUID))
    by_item: dict[tuple[str, str], list[Any]] = {}
    for row in rows:
        unit = str(row.get("unit") or "")
        if unit not in UNIT_CODES or not _finite(row.get("value")):
            continue  # not measured (NaN / null), or a pixel length / flag with no place in a mm report
        meas = Measurement(
            name=_concept(str(row["measurement"])),
            value=float(row["value"]),
            unit=_ucum(unit),
            properties=_properties(row, unit, uncertainty),
            referenced_images=[SourceImageForMeasurement(**image)],
        )
        by_item.setdefault((str(row["group"]), str(row["item"])), []).append(meas)
    groups = []
    for (group, item), meas in by_item.items():
        site = _item_site(group, item)
        groups.append(MeasurementsAndQualitativeEvaluations(
            tracking_identifier=TrackingIdentifier(uid=generate_uid(), identifier=f"{group} {item}"),
            algorithm_id=algorithm,
            finding_sites=None if site is None else [FindingSite(site)],
            measurements=meas,
            source_images=[SourceImageForMeasurementGroup(**image)],
        ))
    return groups


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


def _algorithm_version(version: str, models: Sequence[Mapping[str, Any]]) -> str:
    """``monai-spine <version>`` plus the first 12 hex digits of each model's weight hash."""
    parts = [f"monai-spine {version}"] + [f"{m['kind']} {str(m['sha256'])[:12]}" for m in models]
    return "; ".join(parts)


def build_measurement_report(
    source: Any,
    prediction: Mapping[str, Any],
    rows: Sequence[Mapping[str, Any]],
    *,
    models: Sequence[Mapping[str, Any]] = (),
    device_uid: str | None = None,
    uncertainty: Mapping[str, Any] | None = None,
    sop_instance_uid: str | None = None,
    series_instance_uid: str | None = None,
    software_version: str | None = None,
    notes: list[str] | None = None,
) -> Any:
    """The TID 1500 Comprehensive SR of one radiograph's keypoints and measurements.

    Args:
        source: the source radiograph's pydicom dataset (patient and study are copied from it, absent
            Type 2 attributes written empty; every SCOORD point and measurement references its SOP
            Instance UID).
        prediction: the pipeline's JSON record (``vertebrae[i].points[j]`` with ``name``, ``x_px``,
            ``y_px``, ``uncertainty_class``, ``sigma_p_<kind>_mm``).
        rows: measurement rows (:func:`monai_spine.measure.io.results_to_rows`; keys ``group``,
            ``item``, ``measurement``, ``unit``, ``value`` and, when known, ``mean``, ``std``,
            ``ci_low``, ``ci_high``).
        models: the models used, each ``{"kind", "name", "sha256"}``
            (:meth:`monai_spine.apps.deploy.models.ModelFolders.identities`): written as Algorithm
            Parameters, and their short hashes in the Algorithm Version.
        device_uid: Device Observer UID of this installation
            (:func:`monai_spine.apps.deploy.identity.device_observer_uid`; a random UID by default).
        uncertainty: the measurement case's ``uncertainty`` record (``num_samples``, ``ci``), for the
            description of the statistics.
        sop_instance_uid, series_instance_uid: UIDs of the SR (new ones by default).
        software_version: the package version (default ``monai_spine.__version__``).
        notes: when given, what was changed in the copied patient/study attributes is appended.

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

    evidence, changed = evidence_dataset(source)
    if notes is not None:
        notes.extend(changed)
    version = software_version or monai_spine.__version__
    models = list(models)
    algorithm = AlgorithmIdentification(
        name="monai-spine vertebra detector + BayeRegX keypoints",
        version=_algorithm_version(version, models),
        parameters=[f"{m['kind']} model {m['name']} sha256 {m['sha256']}" for m in models] or None,
    )
    observer = ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=DeviceObserverIdentifyingAttributes(
            uid=device_uid or generate_uid(), name="monai-spine", manufacturer_name="monai-spine project",
            model_name=f"monai-spine deploy {version}",
        ),
    )
    groups = (_point_groups(prediction, evidence, algorithm)
              + _measurement_groups(rows, evidence, algorithm, uncertainty))
    if not groups:  # TID 1500 needs one group: say that nothing was found rather than write no report
        groups = [_nothing_found_group(algorithm)]
    report = MeasurementReport(
        observation_context=ObservationContext(observer_device_context=observer),
        procedure_reported=codes.SCT.ImagingProcedure,
        imaging_measurements=groups,
        title=codes.DCM.ImagingMeasurementReport,
        referenced_images=[_library_dataset(evidence)],
    )
    sr = ComprehensiveSR(
        evidence=[evidence],
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
