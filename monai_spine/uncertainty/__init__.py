"""Keypoint uncertainty: MC dropout, the uncertainty classes and the statistics fitted on them.

:mod:`.mc_dropout` (epistemic sigma), :mod:`.classes` (tau1 / tau2 classes, ``Thresholds``),
:mod:`.thresholds` (the BayeRegX threshold rule), :mod:`.conformal` (split-conformal radii) and
:mod:`.quality` (ranking, sparsification, coverage, referral). Statistics on arrays: matching
prediction files to annotations, calibration runs and the report are :mod:`monai_spine.evaluation`.
"""
