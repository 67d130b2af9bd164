"""Encoders and decoders of training targets, each pair with a round-trip test.

* :class:`~monai_spine.codecs.regression.KeypointRegressionCodec`: crop fractions of the regressor's
  keypoints <-> standardised coordinates centred on the training mean shape.
* :mod:`~monai_spine.codecs.detection`: the vertebra detector's level centres and boxes <-> centre
  heatmaps (:func:`~monai_spine.codecs.detection.encode_centre_heatmaps` /
  :func:`~monai_spine.codecs.detection.encode_chain_target` <->
  :func:`~monai_spine.codecs.detection.decode_detections`).
"""

from monai_spine.codecs.detection import (
    assign_levels_chain,
    complete_chain,
    decode_detections,
    encode_centre_heatmaps,
    encode_chain_target,
    level_height_fractions,
    spacing_profile,
    vertebra_centres_px,
)
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
]
