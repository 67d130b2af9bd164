"""monai_spine.uncertainty."""
