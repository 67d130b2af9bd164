"""monai_spine.engines."""
