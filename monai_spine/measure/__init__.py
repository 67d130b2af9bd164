"""monai_spine.measure."""
