"""Encoders and decoders of training targets, each pair with a round-trip test.

* :class:`~monai_spine.codecs.regression.KeypointRegressionCodec`: crop fractions of the regressor's
  keypoints <-> standardised coordinates centred on the training mean shape.
* :mod:`~monai_spine.codecs.detection`: the vertebra detector's level centres and boxes <-> centre
  heatmaps (:func:`~monai_spine.codecs.detection.encode_centre_heatmaps` /
  :func:`~monai_spine.codecs.detection.encode_chain_target` <->
  :func:`~monai_spine.codecs.detection.decode_detections`).
* :mod:`~monai_spine.codecs.chain`: the "any vertebra" peaks' levels along the spine
  (:func:`~monai_spine.codecs.chain.assign_levels_chain`) and the unseen levels placed between and
  beyond them (:func:`~monai_spine.codecs.chain.complete_chain`).
* :class:`~monai_spine.codecs.level_groups.LevelGroups`: a peak's level <-> the level anchor's group
  class, and group probabilities -> the chain's level costs.
* :mod:`~monai_spine.codecs.corner_maps`: the corner FCN's vertebra corners <-> patch corner maps
  (:func:`~monai_spine.codecs.corner_maps.corner_maps` <->
  :func:`~monai_spine.codecs.corner_maps.accumulate_patches` and
  :func:`~monai_spine.codecs.corner_maps.localize_corners`). The package exports the module, not its
  functions: a function ``corner_maps`` here would hide the module ``corner_maps``.
"""

from monai_spine.codecs import corner_maps
from monai_spine.codecs.chain import assign_levels_chain, complete_chain, level_height_fractions, spacing_profile
from monai_spine.codecs.detection import (
    decode_detections,
    encode_centre_heatmaps,
    encode_chain_target,
    vertebra_centres_px,
)
from monai_spine.codecs.level_groups import LevelGroups
from monai_spine.codecs.regression import KeypointRegressionCodec, fit_regression_codec

__all__ = [
    "KeypointRegressionCodec",
    "fit_regression_codec",
    "encode_centre_heatmaps",
    "encode_chain_target",
    "decode_detections",
    "spacing_profile",
    "level_height_fractions",
    "assign_levels_chain",
    "complete_chain",
    "vertebra_centres_px",
    "LevelGroups",
    "corner_maps",
]
