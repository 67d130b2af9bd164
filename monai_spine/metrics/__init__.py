"""monai_spine.metrics."""
