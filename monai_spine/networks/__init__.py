"""monai_spine.networks."""
