"""Evaluation of predictions against annotations (no training).

* :mod:`.predictor`: per-point errors and sigmas of a predictor over annotated images
  (:func:`~.predictor.evaluate_predictor`) and the mean-shape reference (:class:`~.predictor.MeanShapePredictor`).
* :mod:`.bundle`: the bundle's configs as one parser (:func:`~.bundle.bundle_parser`).
* :mod:`.detector`: a trained vertebra detector over annotated radiographs
  (:func:`~.detector.evaluate_detector`; :func:`~.detector.evaluate_chain_items` for a ``chain`` network).
* :mod:`.corners`: the semi-automatic corner predictor over annotated images with the ground-truth
  centres (:func:`~.corners.evaluate_corner_model`).
* :mod:`.matching`: prediction files matched to their annotations, every visible point's error and
  sigma (:func:`~.matching.collect_errors`, :class:`~.matching.MatchedPoints`).
* :mod:`.calibration`: thresholds and conformal radii fitted on validation predictions and written
  beside the model (:func:`~.calibration.calibrate_from_predictions`, ``monai-spine calibrate``).
* :mod:`.report`: the HTML report (and MLflow run) of predictions over a test set
  (:func:`~.report.report_cli`, ``monai-spine report``); its figures are :mod:`.report_figures`.

The statistics they apply (threshold rule, conformal radii, quality measures) are
:mod:`monai_spine.uncertainty`, which reads no prediction file; the commands' options are parsed in
:mod:`monai_spine.cli.evaluate`. Used by the benchmarks (:mod:`monai_spine.bench`), by the demo and
ship commands (:mod:`monai_spine.engines`) and by the ``report`` and ``calibrate`` commands.
Prediction code (:mod:`monai_spine.inference`) never imports it.
"""
