"""Write a 2D image as a DICOM DX (Digital X-Ray, For Presentation) file with pixel spacing.

The synthetic data set (:func:`monai_spine.data.synthetic.generate_dataset`) writes its radiographs
with :func:`write_dx_dicom`; tests and the apps use it to make DICOM inputs from any 12- or 16-bit
image. The file is explicit VR little endian, MONOCHROME2, with ``PixelSpacing`` and
``ImagerPixelSpacing`` in DICOM order (row spacing first) and UIDs that can be derived from strings,
so that a seeded image gives a byte-identical file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

__all__ = ["DX_FOR_PRESENTATION_SOP_CLASS", "write_dx_dicom"]

#: SOP Class UID of Digital X-Ray Image Storage - For Presentation
DX_FOR_PRESENTATION_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.1.1"


def _ds_str(v: float) -> str:
    """A DICOM decimal string (DS, at most 16 characters) for ``v``."""
    s = f"{float(v):.10g}"
    if len(s) > 16:
        s = f"{float(v):.8g}"
    return s


def write_dx_dicom(
    path: str | os.PathLike,
    array_uint16: np.ndarray,
    spacing_mm: Sequence[float] | None,
    *,
    imager_spacing_mm: Sequence[float] | None | str = "same",
    bits_stored: int = 12,
    uid_entropy: Sequence[str] | None = None,
    patient_id: str = "ANONYMOUS",
    patient_name: str = "SYNTHETIC^SPINE",
    body_part: str = "",
    view_position: str = "",
    patient_orientation: Sequence[str] = ("P", "F"),
    series_description: str = "",
    study_date: str = "20250101",
    manufacturer: str = "monai-spine synthetic",
    instance_number: int = 1,
    window: tuple[float, float] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write a 2D image as a DICOM DX (For Presentation) file, explicit VR little endian.

    Args:
        path: output file (written atomically: a temporary file renamed over it).
        array_uint16: (H, W) unsigned integer image, values below ``2**bits_stored``; MONOCHROME2.
        spacing_mm: ``(sx, sy)`` mm per pixel (x = columns, then y = rows) written as
            ``PixelSpacing = [sy, sx]`` (DICOM order: row spacing, column spacing); None omits it.
        imager_spacing_mm: ``(sx, sy)`` for ``ImagerPixelSpacing``; ``"same"`` copies ``spacing_mm``,
            None omits it.
        bits_stored: 12 or 16.
        uid_entropy: strings that determine the Study, Series and SOP Instance UIDs
            (``pydicom.uid.generate_uid(entropy_srcs=...)``); None makes random UIDs.
        patient_id, patient_name, body_part, view_position, patient_orientation, series_description,
        study_date, manufacturer, instance_number: written as the DICOM attributes of those names
            (``body_part`` is ``BodyPartExamined``; ``patient_orientation`` is (row direction, column
            direction), ``("P", "F")`` for a lateral view with the patient facing left).
        window: (centre, width) for ``WindowCenter`` / ``WindowWidth``; default the full stored range.
        extra: further attributes by keyword (e.g. ``{"PatientSex": "O"}``).

    Returns:
        The path written.

    Raises:
        ValueError: the array is not 2D, not integer, or out of the stored range; bad spacing.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, generate_uid

    path = Path(path)
    arr = np.asarray(array_uint16)
    if arr.ndim != 2:
        raise ValueError(f"{path}: expected a 2D (H, W) image, got shape {arr.shape}")
    if bits_stored not in (12, 16):
        raise ValueError(f"{path}: bits_stored must be 12 or 16, got {bits_stored}")
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{path}: expected an unsigned integer image, got dtype {arr.dtype}")
    if arr.size and (int(arr.min()) < 0 or int(arr.max()) >= (1 << bits_stored)):
        raise ValueError(f"{path}: values must be in [0, {(1 << bits_stored) - 1}] for {bits_stored} bits stored")
    arr = np.ascontiguousarray(arr.astype("<u2"))

    def _pair(sp: Sequence[float], what: str) -> list[str]:
        v = np.asarray(sp, dtype=np.float64).reshape(-1)
        if v.shape != (2,) or not np.all(np.isfinite(v)) or np.any(v <= 0):
            raise ValueError(f"{path}: {what} must be two positive numbers (sx, sy), got {sp!r}")
        return [_ds_str(v[1]), _ds_str(v[0])]  # DICOM: [row spacing (y), column spacing (x)]

    if uid_entropy is not None:
        ent = [str(e) for e in uid_entropy]
        study_uid = generate_uid(entropy_srcs=ent + ["study"])
        series_uid = generate_uid(entropy_srcs=ent + ["series"])
        sop_uid = generate_uid(entropy_srcs=ent + ["instance"])
    else:
        study_uid, series_uid, sop_uid = generate_uid(), generate_uid(), generate_uid()

    fm = FileMetaDataset()
    fm.MediaStorageSOPClassUID = DX_FOR_PRESENTATION_SOP_CLASS
    fm.MediaStorageSOPInstanceUID = sop_uid
    fm.TransferSyntaxUID = ExplicitVRLittleEndian
    fm.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID

    ds = Dataset()
    ds.file_meta = fm
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["DERIVED", "PRIMARY"]
    ds.SOPClassUID = DX_FOR_PRESENTATION_SOP_CLASS
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = study_date
    ds.SeriesDate = study_date
    ds.ContentDate = study_date
    ds.StudyTime = "120000"
    ds.SeriesTime = "120000"
    ds.ContentTime = "120000"
    ds.AccessionNumber = ""
    ds.Modality = "DX"
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.Manufacturer = manufacturer
    ds.ReferringPhysicianName = ""
    ds.SeriesDescription = series_description
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.BodyPartExamined = body_part
    ds.ViewPosition = view_position
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.InstanceNumber = int(instance_number)
    ds.PatientOrientation = list(patient_orientation)
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = int(arr.shape[0]), int(arr.shape[1])
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    ds.PixelIntensityRelationship = "LOG"
    ds.PixelIntensityRelationshipSign = 1
    ds.RescaleIntercept = "0"
    ds.RescaleSlope = "1"
    ds.RescaleType = "US"
    ds.PresentationLUTShape = "IDENTITY"
    if spacing_mm is not None:
        ds.PixelSpacing = _pair(spacing_mm, "spacing_mm")
    if isinstance(imager_spacing_mm, str):
        if imager_spacing_mm != "same":
            raise ValueError(f"{path}: imager_spacing_mm must be (sx, sy), None or 'same'")
        imager_spacing_mm = spacing_mm
    if imager_spacing_mm is not None:
        ds.ImagerPixelSpacing = _pair(imager_spacing_mm, "imager_spacing_mm")
        ds.EstimatedRadiographicMagnificationFactor = "1.0"
    centre, width = window if window is not None else ((1 << bits_stored) / 2, float(1 << bits_stored))
    ds.WindowCenter = _ds_str(centre)
    ds.WindowWidth = _ds_str(width)
    for key, value in (extra or {}).items():
        setattr(ds, key, value)
    ds.PixelData = arr.tobytes()
    ds["PixelData"].VR = "OW"

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        ds.save_as(tmp, enforce_file_format=True)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path
