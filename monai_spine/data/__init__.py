"""Keypoint data model, file formats, image readers and synthetic data."""

from __future__ import annotations

from monai_spine.data.annotation import (
    AnnotationError,
    SpineAnnotation,
    atomic_write_text,
    read_annotation,
    write_annotation,
)
from monai_spine.data.keypoints import (
    REGIONS,
    SCHEMES,
    SPACING_SOURCES,
    KeypointScheme,
    Region,
    flip_permutation,
    frac_to_px,
    get_region,
    get_scheme,
    mm_to_px,
    px_to_frac,
    px_to_mm,
    validate_keypoints,
)
