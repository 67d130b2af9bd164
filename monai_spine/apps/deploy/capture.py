"""The overlay as a DICOM Secondary Capture image, for viewers that show no Structured Report.

Built with highdicom (``.venv-deploy`` only). The overlay PNG the pipeline writes (the radiograph
with the keypoints coloured by uncertainty class, a legend and a scale bar) becomes an RGB
Secondary Capture Image (SOP Class 1.2.840.10008.5.1.4.1.1.7) in its own series of the source's
study, with the source's patient and study (absent Type 2 attributes written empty, as in the SR:
:func:`monai_spine.apps.deploy.sr.evidence_dataset`) and a Source Image Sequence naming the
radiograph. When the overlay has the radiograph's size its Pixel Spacing is the radiograph's
(``PixelSpacing`` when present, else none: an image-plane spacing is not claimed for a detector
spacing); the Derivation Description says that the pixels are a rendering, not measurements.
"""

from __future__ import annotations

import os
from typing import Any

__all__ = ["SC_SERIES_NUMBER", "build_overlay_capture"]

#: Series Number of the Secondary Capture series (the SR's is 9901).
SC_SERIES_NUMBER = 9902


def build_overlay_capture(source: Any, overlay_png: str | os.PathLike, *, software_version: str | None = None,
                          sop_instance_uid: str | None = None, series_instance_uid: str | None = None) -> Any:
    """A Secondary Capture dataset of the overlay PNG.

    Args:
        source: the radiograph's pydicom dataset.
        overlay_png: the overlay written by the pipeline (RGB, 8 bits).
        software_version: written as Software Versions (default ``monai_spine.__version__``).
        sop_instance_uid, series_instance_uid: UIDs (new ones by default).

    Returns:
        a :class:`highdicom.sc.SCImage` (``save_as`` writes it).

    Raises:
        ValueError: the PNG cannot be read (the message names it).
    """
    import cv2
    import numpy as np
    from highdicom.sc import SCImage
    from pydicom.dataset import Dataset
    from pydicom.uid import generate_uid

    import monai_spine
    from monai_spine.apps.deploy.sr import evidence_dataset

    bgr = cv2.imread(os.fspath(overlay_png), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError(f"{overlay_png}: not a readable PNG")
    rgb = np.ascontiguousarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    ev, _ = evidence_dataset(source)
    same_size = rgb.shape[:2] == (int(source.Rows), int(source.Columns))
    spacing = None
    if same_size and "PixelSpacing" in source and len(source.PixelSpacing) == 2:
        spacing = (float(source.PixelSpacing[0]), float(source.PixelSpacing[1]))
    orientation = tuple(str(v) for v in (source.get("PatientOrientation") or []))
    known_orientation = len(orientation) == 2 and all(orientation)
    sc = SCImage(
        pixel_array=rgb,
        photometric_interpretation="RGB",
        bits_allocated=8,
        coordinate_system="PATIENT",
        study_instance_uid=str(ev.StudyInstanceUID),
        series_instance_uid=series_instance_uid or generate_uid(),
        series_number=SC_SERIES_NUMBER,
        sop_instance_uid=sop_instance_uid or generate_uid(),
        instance_number=1,
        manufacturer="monai-spine",
        patient_id=ev.PatientID,
        patient_name=ev.PatientName,
        patient_birth_date=ev.PatientBirthDate or None,
        patient_sex=ev.PatientSex or None,
        accession_number=ev.AccessionNumber,
        study_id=ev.StudyID,
        study_date=ev.StudyDate or None,
        study_time=ev.StudyTime or None,
        referring_physician_name=ev.ReferringPhysicianName,
        pixel_spacing=spacing,
        # highdicom requires an orientation for patient coordinates; when the film gives none it is emptied below
        patient_orientation=orientation if known_orientation else ("P", "F"),
    )
    if not known_orientation:
        sc.PatientOrientation = None  # Type 2C: present and empty = unknown, never a guessed direction
    ref = Dataset()
    ref.ReferencedSOPClassUID = str(source.SOPClassUID)
    ref.ReferencedSOPInstanceUID = str(source.SOPInstanceUID)
    sc.SourceImageSequence = [ref]
    sc.DerivationDescription = ("monai-spine overlay: vertebra keypoints coloured by uncertainty class drawn on "
                                "the radiograph (a rendering for viewing; the values are in the SR)")
    # Laterality (General Series, Type 2C): the source's when it has one; absent for a named body part
    # (the spine is not paired); empty ("unknown") when the film does not say what it shows
    if source.get("BodyPartExamined"):
        sc.BodyPartExamined = str(source.BodyPartExamined)
    laterality = str(source.get("Laterality", "") or "")
    if laterality or not source.get("BodyPartExamined"):
        sc.Laterality = laterality
    sc.ImageType = ["DERIVED", "SECONDARY"]
    sc.SeriesDescription = "monai-spine keypoint overlay"
    sc.BurnedInAnnotation = "YES"
    sc.SoftwareVersions = software_version or monai_spine.__version__
    return sc
