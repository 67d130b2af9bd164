"""monai_spine.apps."""
