"""monai_spine.handlers."""
