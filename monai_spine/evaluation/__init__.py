"""Evaluation of predictions against annotations (no training).

* :mod:`.predictor`: per-point errors and sigmas of a predictor over annotated images
  (:func:`~.predictor.evaluate_predictor`) and the mean-shape reference (:class:`~.predictor.MeanShapePredictor`).
* :mod:`.bundle`: the bundle's configs as one parser (:func:`~.bundle.bundle_parser`).

Used by the benchmarks (:mod:`monai_spine.bench`) and by the demo and ship commands
(:mod:`monai_spine.engines`). Prediction code (:mod:`monai_spine.inference`) never imports it.
"""
