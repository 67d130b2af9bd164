"""Encoders and decoders of training targets, each pair in one class with a round-trip test.

* :class:`~monai_spine.codecs.regression.KeypointRegressionCodec`: crop fractions of the regressor's
  keypoints <-> standardised coordinates centred on the training mean shape.
"""

from monai_spine.codecs.regression import KeypointRegressionCodec, fit_regression_codec

__all__ = ["KeypointRegressionCodec", "fit_regression_codec"]
