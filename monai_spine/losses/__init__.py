"""monai_spine.losses."""
