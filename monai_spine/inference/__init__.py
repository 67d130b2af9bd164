"""monai_spine.inference."""
