"""Evaluation of a keypoint predictor against annotations: per-point errors and sigmas, and the
mean-shape reference predictor (no training).

* :class:`EvalArrays`, :func:`evaluate_predictor`: per-point errors and sigmas of a predictor over
  annotated images.
* :class:`MeanShapePredictor`: every vertebra gets the mean training shape in its crop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

__all__ = ["SIGMA_KINDS", "EvalArrays", "evaluate_predictor", "MeanShapePredictor"]

#: the uncertainty kinds of a prediction (BayeCBAM has all three; Baseline/CBAM only the epistemic one)
SIGMA_KINDS = ("total", "aleatoric", "epistemic")


@dataclass
class EvalArrays:
    """Per-point results of a predictor over a set of annotated images.

    Attributes:
        errors: (N, K) point errors in ``unit`` (NaN: invisible point, not counted).
        sigma: kind -> (N, K) point uncertainty ``sigma_p`` in ``unit`` (in crop fractions when the
            unit is px), for the kinds the predictor reports.
        image_ids: (N,) index of each vertebra's image in the label list.
        hard: (N,) whether the vertebra's image is a generator hard case.
        unit: ``"mm"`` (spacing of every image known) or ``"px"``.
        point_types: the K point types of the scheme.
        num_images: images evaluated.
        num_hard_images: of which hard cases.
    """

    errors: np.ndarray
    sigma: dict[str, np.ndarray]
    image_ids: np.ndarray
    hard: np.ndarray
    unit: str
    point_types: tuple[str, ...]
    num_images: int
    num_hard_images: int
    num_annotated: int = 0
    num_found: int = 0
    classes: np.ndarray | None = None
    conformal_radius: np.ndarray | None = None
    conformal_unit: str | None = None


def evaluate_predictor(
    predictor: Any, label_paths: Sequence[str], region: str = "cervical", detector: Any = None
) -> EvalArrays:
    """Predict every annotated vertebra of ``label_paths`` and measure the point errors.

    Vertebrae are those of ``region``'s levels with at least one visible point (as in the bundle's
    datalists), boxed by the annotation's ``box_px`` (else its keypoints' extent), as in
    :func:`monai_spine.inference.regressor.predict_cases`. Errors come from
    :func:`~monai_spine.metrics.keypoint_error.keypoint_errors` with each image's spacing.

    Args:
        predictor: an object with ``predict(image (1, H, W), boxes_px (N, 4), spacing_mm, spacing_source)``
            returning a :class:`~monai_spine.inference.regressor.KeypointPrediction`-like object
            (``keypoints_px`` (N, K, 2), ``sigma_mm`` and ``sigma_frac``: kind -> (N, K)) and a
            ``scheme`` with ``point_types``.
        label_paths: annotation files (each names its image).
        region: region whose levels are evaluated.
        detector: a :class:`~monai_spine.inference.detector.VertebraDetector`: the boxes then come
            from it (the vertebra detected at the annotated level; levels it only inferred, or did
            not find, are missed and counted in ``num_annotated - num_found``), not from the
            annotation.

    Returns:
        :class:`EvalArrays`.

    Raises:
        ValueError: no vertebra of ``region`` in ``label_paths``.
    """
    from monai_spine.data.annotation import read_annotation
    from monai_spine.data.keypoints import get_region
    from monai_spine.data.readers import read_xray
    from monai_spine.metrics.keypoint_error import keypoint_errors

    levels = get_region(region).levels
    rows_mm, rows_px, ids, hard = [], [], [], []
    sig_mm: dict[str, list[np.ndarray]] = {}
    sig_frac: dict[str, list[np.ndarray]] = {}
    all_known = True
    num_hard = 0
    num_annotated = num_found = 0
    cls_rows: list[np.ndarray] = []
    rad_rows: list[np.ndarray] = []
    conf_unit = None
    for i, label in enumerate(label_paths):
        ann = read_annotation(label)
        keep = [j for j, lev in enumerate(ann.levels) if lev in levels and ann.visible[j].any()]
        if ann.region != region or not keep:
            continue
        is_hard = bool((ann.meta or {}).get("hard_case"))
        num_hard += int(is_hard)
        override = ann.spacing_override_mm
        img = read_xray(ann.image, spacing_mm=override)
        boxes = ann.boxes_px if ann.boxes_px is not None else ann.boxes_from_keypoints()
        # a model trained in boxes made from centres (a box rule) gets them around these centres
        framed = getattr(predictor, "box_rule", None) is not None
        angles = np.zeros(len(ann.levels)) if framed else None
        if framed and detector is None:
            boxes, angles = predictor.annotation_boxes(ann)
        num_annotated += len(keep)
        if detector is not None:
            det = detector.detect(img.channel_first(), img.spacing_mm, img.spacing_source)
            inferred = np.zeros(len(det.levels), bool) if det.inferred is None else np.asarray(det.inferred, bool)
            det_boxes, det_angles = np.asarray(det.boxes_px, np.float64), np.zeros(len(det.levels))
            if framed:
                det_boxes, det_angles = predictor.vertebra_boxes(det.boxes_px, det.centres_px, det.levels)
            seen = {lev: k for k, lev in enumerate(det.levels) if not inferred[k]}
            keep = [j for j in keep if ann.levels[j] in seen]
            if not keep:
                continue
            boxes = np.asarray(boxes, np.float64).copy()
            for j in keep:
                boxes[j] = det_boxes[seen[ann.levels[j]]]
                if framed:
                    angles[j] = det_angles[seen[ann.levels[j]]]
        num_found += len(keep)
        turned = {"angles_rad": angles[keep]} if framed else {}  # a predictor without a box rule needs no angles
        pred = predictor.predict(img.channel_first(), boxes[keep], img.spacing_mm, img.spacing_source, **turned)
        n = len(keep)
        pred_px = np.asarray(pred.keypoints_px, np.float64).reshape(n, -1, 2)
        gt_px, vis = ann.keypoints_px[keep], ann.visible[keep]
        rows_px.append(np.asarray(keypoint_errors(pred_px, gt_px, vis, None)[0], np.float64))
        if img.spacing_mm is None:
            all_known = False
        else:
            sp = np.tile(np.asarray(img.spacing_mm, np.float64), (n, 1))
            rows_mm.append(np.asarray(keypoint_errors(pred_px, gt_px, vis, sp)[0], np.float64))
        for kind in SIGMA_KINDS:
            if kind in pred.sigma_mm:
                sig_mm.setdefault(kind, []).append(np.asarray(pred.sigma_mm[kind], np.float64).reshape(n, -1))
            if kind in pred.sigma_frac:
                sig_frac.setdefault(kind, []).append(np.asarray(pred.sigma_frac[kind], np.float64).reshape(n, -1))
        ids += [i] * n
        hard += [is_hard] * n
        cls_rows.append(np.asarray(getattr(pred, "classes", np.full((n, pred_px.shape[1]), -1))).reshape(n, -1))
        rad = getattr(pred, "conformal_radius", None)
        rad_rows.append(np.full((n, pred_px.shape[1]), np.nan) if rad is None else np.asarray(rad, np.float64).reshape(n, -1))
        conf_unit = getattr(pred, "conformal_unit", None) or conf_unit
    if not rows_px:
        raise ValueError(f"no {region} vertebra to evaluate in {len(label_paths)} annotation file(s)")
    # every error in mm when every image has a spacing, else every error in pixels: never a mix
    unit = "mm" if all_known else "px"
    errors = np.concatenate(rows_mm if all_known else rows_px)
    sigma = {k: np.concatenate(v) for k, v in (sig_mm if all_known else sig_frac).items()}
    return EvalArrays(
        errors=errors,
        sigma=sigma,
        image_ids=np.asarray(ids, dtype=np.int64),
        hard=np.asarray(hard, dtype=bool),
        unit=unit,
        point_types=tuple(predictor.scheme.point_types),
        num_images=len(set(ids)),
        num_hard_images=num_hard,
        num_annotated=num_annotated,
        num_found=num_found,
        classes=np.concatenate(cls_rows),
        conformal_radius=np.concatenate(rad_rows),
        conformal_unit=conf_unit,
    )


class MeanShapePredictor:
    """A reference without a network: every vertebra gets the mean training shape in its crop.

    The crop is the bundle's validation crop (same margin and size), so this row shows what the box
    alone gives away; a network that does not beat it has learned nothing about the image. A predictor
    with a box rule (crops in the spine's frame around centres) lends it that rule: the mean shape is
    then the mean in those crops, placed in them.
    """

    predicts_logvar = False

    def __init__(self, predictor: Any, train_labels: Sequence[str], region: str = "cervical") -> None:
        from monai_spine.data.annotation import read_annotation
        from monai_spine.data.keypoints import get_region
        from monai_spine.data.readers import read_xray

        self.crop_transform = predictor.crop_transform
        self.spatial_size = predictor.spatial_size
        self.scheme = predictor.scheme
        self.network = self
        self._predictor = predictor
        fracs = []
        levels = get_region(region).levels
        for label in train_labels:
            ann = read_annotation(label)
            img = read_xray(ann.image)
            boxes = ann.boxes_px if ann.boxes_px is not None else ann.boxes_from_keypoints()
            angles = np.zeros(len(ann.levels))
            if self.box_rule is not None:
                boxes, angles = self.annotation_boxes(ann)
            for i, lev in enumerate(ann.levels):
                if lev not in levels:
                    continue
                d = self.crop_transform({"image": img.channel_first(), "box_px": boxes[i].astype(np.float32),
                                         "keypoints_px": ann.keypoints_px[i].astype(np.float32),
                                         "visible": ann.visible[i], "spacing_mm": img.spacing_array,
                                         "box_angle_rad": float(angles[i])})
                f = np.asarray(d["keypoints_frac"], dtype=np.float64)
                f[~ann.visible[i]] = np.nan
                fracs.append(f)
        self.mean_frac = np.nanmean(np.stack(fracs), axis=0)

    @property
    def box_rule(self) -> Any:
        """The wrapped predictor's box rule (None without one)."""
        return getattr(self._predictor, "box_rule", None)

    def vertebra_boxes(self, boxes_px: Any, centres_px: Any = None, levels: Any = None) -> Any:
        """The wrapped predictor's :meth:`~monai_spine.inference.regressor.KeypointPredictor.vertebra_boxes`
        (called only when it has a :attr:`box_rule`)."""
        return self._predictor.vertebra_boxes(boxes_px, centres_px, levels)

    def annotation_boxes(self, ann: Any) -> Any:
        """The wrapped predictor's :meth:`~monai_spine.inference.regressor.KeypointPredictor.annotation_boxes`
        (called only when it has a :attr:`box_rule`)."""
        return self._predictor.annotation_boxes(ann)

    def predict(self, image: Any, boxes_px: Any, spacing_mm: Any, spacing_source: str = "unknown",
                angles_rad: Any = None) -> Any:
        from monai_spine.inference.regressor import KeypointPrediction
        from monai_spine.transforms.keypoints import frac_to_image_px

        sp = np.full(2, np.nan, np.float32) if spacing_mm is None else np.asarray(spacing_mm, np.float32)
        boxes = np.asarray(boxes_px, dtype=np.float64).reshape(-1, 4)
        angles = np.zeros(len(boxes)) if angles_rad is None else np.asarray(angles_rad, np.float64).reshape(-1)
        aff = np.stack([np.asarray(self.crop_transform({"image": image, "box_px": b.astype(np.float32),
                                                        "spacing_mm": sp, "box_angle_rad": float(a)})["crop_to_image"])
                        for b, a in zip(boxes, angles)])
        kp = frac_to_image_px(np.broadcast_to(self.mean_frac, (len(boxes),) + self.mean_frac.shape), aff,
                              self.spatial_size)
        nan = np.full(kp.shape[:2], np.nan)
        kinds = ("aleatoric", "epistemic", "total")
        return KeypointPrediction(np.asarray(kp), {k: nan for k in kinds}, {k: nan for k in kinds},
                                  np.full(kp.shape[:2], -1), aff, None if spacing_mm is None else tuple(spacing_mm),
                                  spacing_source)
