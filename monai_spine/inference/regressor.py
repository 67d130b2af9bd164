"""Keypoints with uncertainty for the vertebrae of one radiograph, from the BayeRegX regressor.

:class:`KeypointPredictor` takes a full radiograph, its spacing and one box per vertebra (from a
detector, or built from annotations), crops each vertebra exactly as the bundle's validation
pipeline does, runs the network with batched MC dropout (the convolutional trunk once, the head
``T`` times), and maps the points back to the radiograph's pixels.

Options:

* **flip test-time augmentation** (``flip_tta=True``): each crop is also predicted flipped along
  its width. With edge-based fractions ``frac = (x + 0.5) / W`` a horizontal flip maps
  ``x_frac -> 1 - x_frac``, and the network labels the flipped crop's points in flipped order, so
  the flipped prediction is mapped back by ``x_frac' = 1 - x_frac`` and then the scheme's
  ``flip_permutation`` (``back[:, j] = mapped[:, perm[j]]``; the per-axis variances are permuted
  the same way, a sign change leaves them unchanged). The two predictions ``m1`` (original) and
  ``m2`` (flipped back) are averaged: ``mean = (m1 + m2) / 2``; the aleatoric variance is the mean
  of the two aleatoric variances, the epistemic variance is the mean of the two epistemic
  variances **plus** the variance between the two means ``((m1 - m2) / 2) ** 2`` (per axis; the
  disagreement of the two views is model uncertainty), and total = aleatoric + epistemic as always
  (law of total variance over the equally weighted mixture of the two views).
* **conformal radii** (``conformal=`` a fitted
  :class:`~monai_spine.uncertainty.conformal.ConformalCalibrator`, see :func:`load_conformal`):
  each point gets the split-conformal radius ``r = q_hat(point type) * sigma_p`` (normalized
  score; ``q_hat`` for the absolute score) from the total ``sigma_p`` in the calibrator's
  ``sigma_units``; the radius is in the calibrator's ``error_unit`` (``mm``, or radiograph ``px``
  when it was fitted without spacing) and covers the error with probability ``>= 1 - alpha``.

Why one module: it is one predictor, :class:`KeypointPredictor`, with the spec and weights it loads.
Its test-time steps (MC dropout, flip TTA, crop re-cuts in the detector's boxes, conformal radii,
uncertainty classes) act in order on one prediction and share its crop geometry; spread over
modules, each step would need the others' intermediate arrays.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from monai_spine.data.keypoints import get_scheme, px_to_mm
from monai_spine.uncertainty.classes import PAPER_THRESHOLDS, Thresholds
from monai_spine.uncertainty.mc_dropout import (
    MCDropoutResult,
    mc_dropout_predict,
    mc_dropout_reference,
    sigma_frac_to_mm,
)
from monai_spine.transforms.crop import VertebraCropd
from monai_spine.transforms.keypoints import frac_to_image_px

__all__ = [
    "RegressorSpec",
    "SPEC_FILE",
    "spec_refine_passes",
    "spec_box_rule",
    "KeypointPrediction",
    "KeypointPredictor",
    "default_crop_transform",
    "predict_cases",
    "flip_back",
    "combine_flip_tta",
    "load_conformal",
    "load_regressor_weights",
]


#: the regressor's spec file, beside ``model.pt`` (see :mod:`monai_spine.inference.model_zoo`)
SPEC_FILE = "regressor_model.json"
#: ``format`` entry of the spec file
SPEC_FORMAT = "monai-spine-regressor"


@dataclass
class RegressorSpec:
    """Everything besides the weights that a trained regressor needs at inference time.

    The bundle's :class:`~monai_spine.engines.checkpoints.BestModelSaver` writes it as
    ``regressor_model.json`` beside ``model.pt``; :meth:`KeypointPredictor.from_checkpoint` builds
    the network from it. The target codec lives in the weights (its buffers), so it is not repeated.

    Attributes:
        region: ``cervical``, ``lumbar`` or ``ap`` (gives the levels and the keypoint scheme).
        variant: ``baseline``, ``cbam`` or ``bayecbam``.
        spatial_size: ``(H, W)`` crop the network sees, pixels.
        width: channel multiplier of the AlexNet trunk.
        fc_features: hidden fully-connected width.
        dropout: head dropout probability (MC dropout uses it at inference).
        batch_norm: batch norm after each convolution.
        cbam_unit_gain: CBAM attention maps scaled to average 1 at initialisation (the recipe's).
        margin_mm: crop margin around a vertebra box, mm (px fraction when the spacing is unknown:
            see :class:`monai_spine.transforms.crop.VertebraCrop`).
        intensity_percentiles: ``(lower, upper)`` percentiles of each crop scaled to 0 and 1.
        refine_passes: after the first prediction in the given boxes, crops re-cut this many times
            around the box of the previous pass's keypoints (the framing the network was trained on:
            a detector's boxes frame vertebrae differently from the annotation boxes); 0: the given
            boxes only.
        box_rule: how a vertebra is framed from vertebra centres, as the model was trained:
            None: in the given boxes (annotation boxes in training, the detector's at prediction);
            ``{"kind": "frame", ...}``: :class:`~monai_spine.data.frames.FrameBoxes` around the
            centres, turned into the spine's frame (:meth:`KeypointPredictor.vertebra_boxes`).
        meta: free-form record (training command, data, licence, test metrics).
    """

    region: str = "cervical"
    variant: str = "bayecbam"
    spatial_size: tuple[int, int] = (224, 448)
    width: float = 1.0
    fc_features: int = 1024
    dropout: float = 0.5
    batch_norm: bool = False
    cbam_unit_gain: bool = False
    margin_mm: float = 4.0
    intensity_percentiles: tuple[float, float] = (0.5, 99.5)
    refine_passes: int = 0
    box_rule: dict[str, Any] | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from monai_spine.data.keypoints import get_region
        from monai_spine.networks.regressor import REGRESSOR_VARIANTS

        get_region(self.region)
        if str(self.variant).lower() not in REGRESSOR_VARIANTS:
            raise ValueError(f"unknown regressor variant {self.variant!r}; known: {sorted(REGRESSOR_VARIANTS)}")
        self.variant = str(self.variant).lower()
        size = tuple(int(v) for v in np.ravel(self.spatial_size))
        if len(size) != 2 or min(size) < 63:
            raise ValueError(f"spatial_size must be (H, W) with both >= 63, got {self.spatial_size!r}")
        self.spatial_size = size  # type: ignore[assignment]
        self.width = float(self.width)
        self.fc_features = int(self.fc_features)
        self.dropout = float(self.dropout)
        self.batch_norm = bool(self.batch_norm)
        self.cbam_unit_gain = bool(self.cbam_unit_gain)
        self.margin_mm = float(self.margin_mm)
        self.intensity_percentiles = tuple(float(v) for v in self.intensity_percentiles)  # type: ignore[assignment]
        self.refine_passes = int(self.refine_passes)
        if self.refine_passes < 0:
            raise ValueError(f"refine_passes must be >= 0, got {self.refine_passes}")
        if self.box_rule is not None:
            from monai_spine.data.frames import FrameBoxes

            self.box_rule = FrameBoxes.from_dict(self.box_rule).to_dict()

    @property
    def scheme(self) -> str:
        """The keypoint scheme name of the region."""
        from monai_spine.data.keypoints import get_region

        return get_region(self.region).scheme.name

    @property
    def num_points(self) -> int:
        """K."""
        from monai_spine.data.keypoints import get_region

        return get_region(self.region).scheme.num_points

    def build_network(self) -> torch.nn.Module:
        """The untrained network of this spec (identity codec until weights are loaded)."""
        from monai_spine.networks.regressor import build_regressor

        return build_regressor(
            self.variant,
            self.num_points,
            width=self.width,
            fc_features=self.fc_features,
            dropout=self.dropout,
            batch_norm=self.batch_norm,
            spatial_size=self.spatial_size,
            cbam_unit_gain=self.cbam_unit_gain,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready record, with ``format`` and ``version``."""
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["spatial_size"] = list(self.spatial_size)
        d["intensity_percentiles"] = list(self.intensity_percentiles)
        return {"format": SPEC_FORMAT, "version": 1, **d}

    def save(self, folder: str | os.PathLike) -> Path:
        """Write ``folder/regressor_model.json`` atomically."""
        from monai_spine.data.annotation import atomic_write_text

        path = Path(folder) / SPEC_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(self.to_dict(), indent=1, allow_nan=False) + "\n")
        return path

    @classmethod
    def load(cls, folder: str | os.PathLike) -> "RegressorSpec":
        """Read the spec of a model folder (or a spec file).

        Raises:
            FileNotFoundError: no spec file.
            ValueError: not a regressor spec, or bad values (the message names the file).
        """
        from monai_spine.inference.model_zoo import read_spec

        p = Path(folder)
        d = read_spec(p, "regressor")
        f = p if p.suffix.lower() == ".json" else p / SPEC_FILE
        if d.get("format") != SPEC_FORMAT:
            raise ValueError(f"{f}: not a regressor spec (format {d.get('format')!r}, expected {SPEC_FORMAT!r})")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(d) - known - {"format", "version"})
        if unknown:
            raise ValueError(f"{f}: unknown spec keys {unknown}")
        try:
            return cls(**{k: v for k, v in d.items() if k in known})
        except (TypeError, ValueError, KeyError) as e:
            raise ValueError(f"{f}: {e}") from None


def _keypoint_boxes(keypoints_px: np.ndarray, angles_rad: np.ndarray | None = None) -> np.ndarray:
    """(N, 4) ``x0, y0, x1, y1`` boxes around each vertebra's (N, K, 2) keypoints (px), as the
    annotation boxes the regressor was trained on frame a vertebra (without its body outline).

    With (N,) ``angles_rad`` each box is the keypoints' min/max along its vertebra's turned axes,
    written as the box before its turn about its centre (the ``box_angle_rad`` convention)."""
    kp = np.asarray(keypoints_px, np.float64)
    if angles_rad is None:
        return np.concatenate([np.nanmin(kp, axis=1), np.nanmax(kp, axis=1)], axis=-1)
    from monai_spine.data.frames import turned_box_px

    return turned_box_px(kp, angles_rad)


def load_regressor_weights(network: torch.nn.Module, checkpoint: str | os.PathLike) -> torch.nn.Module:
    """Load ``checkpoint`` (a bare state dict or ``{"model": ...}``) into ``network``, weights only.

    Raises:
        FileNotFoundError: no checkpoint.
        ValueError: the weights do not fit the network, in one line naming the file and the first
            mismatching tensors (not PyTorch's page-long message).
    """
    from monai_spine.inference.model_zoo import load_strict_weights

    return load_strict_weights(network, checkpoint)


def load_conformal(path: str | os.PathLike | None) -> Any:
    """Conformal calibration stored with the model (``conformal.json``), or None when absent.

    Args:
        path: a file written by :meth:`~monai_spine.uncertainty.conformal.ConformalCalibrator.save`,
            or None.

    Returns:
        the :class:`~monai_spine.uncertainty.conformal.ConformalCalibrator`, or None when ``path``
        is None/empty or the file does not exist (a malformed file raises ``ValueError`` naming it).
    """
    from monai_spine.uncertainty.conformal import ConformalCalibrator

    if path and Path(path).is_file():
        return ConformalCalibrator.load(path)
    return None


def spec_refine_passes(folder: str | os.PathLike | None) -> int:
    """The crop re-cuts a model folder's spec asks for (:attr:`RegressorSpec.refine_passes`), 0 without a spec.

    The bundle's ``inference.json`` predicts new films with it, as ``monai-spine predict`` does.
    """
    if folder and (Path(folder) / SPEC_FILE).is_file():
        return RegressorSpec.load(folder).refine_passes
    return 0


def spec_box_rule(folder: str | os.PathLike | None) -> dict[str, Any] | None:
    """The box rule a model folder's spec names (:attr:`RegressorSpec.box_rule`), None without one or a spec.

    The bundle's ``inference.json`` frames vertebrae with it, as ``monai-spine predict`` does.
    """
    if folder and (Path(folder) / SPEC_FILE).is_file():
        return RegressorSpec.load(folder).box_rule
    return None


def flip_back(points: np.ndarray | torch.Tensor, perm: Sequence[int], is_mean: bool = True) -> Any:
    """Map a prediction on the horizontally flipped crop back to the original crop.

    Args:
        points: ``(..., K, 2)`` (x, y) fractions (``is_mean``) or per-axis variances.
        perm: the scheme's ``flip_permutation`` (``flipped[:, j] = original[:, perm[j]]``; an
            involution, so it also maps back).
        is_mean: fractions (x becomes ``1 - x``) rather than variances (unchanged by the sign flip).

    Returns:
        same type and shape: point ``j`` of the result is point ``perm[j]`` of the input, x mirrored.
    """
    idx = [int(i) for i in perm]
    out = points[..., idx, :]
    if is_mean:
        out = out.clone() if isinstance(out, torch.Tensor) else np.array(out, copy=True)
        out[..., 0] = 1.0 - out[..., 0]
    return out


def combine_flip_tta(res: MCDropoutResult, res_flipped: MCDropoutResult, perm: Sequence[int]) -> MCDropoutResult:
    """Average a prediction and the prediction on the flipped crop (see the module docstring).

    Args:
        res: MC-dropout result on the crops.
        res_flipped: MC-dropout result on the crops flipped along W (points in flipped order).
        perm: the scheme's ``flip_permutation``.

    Returns:
        result with ``mean = (m1 + m2) / 2``, aleatoric ``(a1 + a2) / 2`` and epistemic
        ``(e1 + e2) / 2 + ((m1 - m2) / 2) ** 2`` (squared fractions, per axis); ``num_samples`` is
        the number of forward passes per view.
    """
    m1 = res.mean_frac
    m2 = flip_back(res_flipped.mean_frac, perm, is_mean=True)
    a2 = flip_back(res_flipped.aleatoric_var_frac, perm, is_mean=False)
    e2 = flip_back(res_flipped.epistemic_var_frac, perm, is_mean=False)
    between = ((m1 - m2) / 2) ** 2
    return MCDropoutResult(
        mean_frac=(m1 + m2) / 2,
        epistemic_var_frac=(res.epistemic_var_frac + e2) / 2 + between,
        aleatoric_var_frac=(res.aleatoric_var_frac + a2) / 2,
        num_samples=res.num_samples,
    )


def default_crop_transform(spatial_size: Sequence[int] = (224, 448), margin_mm: float = 4.0) -> Callable[[dict], dict]:
    """The validation crop of the bundle: spacing-aware crop, then 0.5-99.5 percentile scaling to [0, 1]."""
    from monai.transforms import Compose, ScaleIntensityRangePercentilesd

    return Compose(
        [
            VertebraCropd(keys="image", spatial_size=spatial_size, margin_mm=margin_mm),
            ScaleIntensityRangePercentilesd(keys="image", lower=0.5, upper=99.5, b_min=0.0, b_max=1.0, clip=True),
        ]
    )


@dataclass
class KeypointPrediction:
    """Predicted keypoints of the N vertebrae of one radiograph.

    Attributes:
        keypoints_px: (N, K, 2) (x, y) pixels of the radiograph.
        sigma_frac: dict kind -> (N, K) point uncertainty sigma_p in crop fractions, for kinds
            ``aleatoric``, ``epistemic``, ``total``.
        sigma_mm: same kinds, in mm (NaN where the spacing is unknown).
        classes: (N, K) uncertainty class (0 certain, 1 moderate, 2 high, -1 unknown) from the total
            sigma_p and the predictor's thresholds.
        crop_to_image: (N, 3, 3) crop-to-image affines.
        spacing_mm: (sx, sy) or None.
        spacing_source: where the spacing came from.
        conformal_radius: (N, K) split-conformal error radius in ``conformal_unit`` (NaN where the
            sigma is not usable, e.g. mm sigma with unknown spacing; inf when ``q_hat`` is), or None
            without a calibrator.
        conformal_unit: ``"mm"`` or ``"px"`` (radiograph pixels), or None.
    """

    keypoints_px: np.ndarray
    sigma_frac: dict[str, np.ndarray]
    sigma_mm: dict[str, np.ndarray]
    classes: np.ndarray
    crop_to_image: np.ndarray
    spacing_mm: tuple[float, float] | None
    spacing_source: str = "unknown"
    meta: dict[str, Any] = field(default_factory=dict)
    conformal_radius: np.ndarray | None = None
    conformal_unit: str | None = None

    @property
    def keypoints_mm(self) -> np.ndarray | None:
        """(N, K, 2) in mm from the image origin, or None when the spacing is unknown."""
        return None if self.spacing_mm is None else px_to_mm(self.keypoints_px, self.spacing_mm)


class KeypointPredictor:
    """Predict vertebra keypoints and their uncertainty on whole radiographs.

    Args:
        network: a regressor of :mod:`monai_spine.networks.regressor` (weights loaded).
        scheme: keypoint scheme name (``lateral5`` or ``ap4``).
        spatial_size: crop size (H, W) the network was trained on.
        margin_mm: crop margin around each box, as in the bundle's validation crop.
        num_samples: T, MC-dropout passes (1: no epistemic uncertainty).
        thresholds: tau1/tau2 for the uncertainty classes (default: the paper's, in fractions).
        crop_transform: dict -> dict transform producing ``image`` crops and ``crop_to_image``;
            default :func:`default_crop_transform`.
        device: torch device.
        seed: seed of the dropout masks, so a prediction is reproducible.
        flip_tta: also predict each crop flipped along W and average (module docstring).
        conformal: a fitted :class:`~monai_spine.uncertainty.conformal.ConformalCalibrator` giving
            each point an error radius (from the total ``sigma_p``), or None.
        reference: run the plain reference instead of the batched MC dropout: one crop at a time,
            ``T`` full passes one by one (:func:`~monai_spine.uncertainty.mc_dropout.mc_dropout_reference`;
            for speed comparisons: same distribution, other dropout masks).
        refine_passes: re-cut each crop around the previous pass's keypoints this many times
            (:attr:`RegressorSpec.refine_passes`); the uncertainty is the last pass's.
        box_rule: :class:`~monai_spine.data.frames.FrameBoxes` (or its dict) when the model was
            trained in boxes made from vertebra centres (:attr:`RegressorSpec.box_rule`), else None.
    """

    def __init__(
        self,
        network: torch.nn.Module,
        scheme: str = "lateral5",
        spatial_size: Sequence[int] = (224, 448),
        margin_mm: float = 4.0,
        num_samples: int = 10,
        thresholds: Thresholds | None = None,
        crop_transform: Callable[[dict], dict] | None = None,
        device: str | torch.device = "cpu",
        seed: int | None = 0,
        flip_tta: bool = False,
        conformal: Any | None = None,
        reference: bool = False,
        refine_passes: int = 0,
        box_rule: Any = None,
    ) -> None:
        from monai_spine.data.frames import FrameBoxes

        self.reference = bool(reference)
        self.box_rule = FrameBoxes.from_dict(box_rule) if isinstance(box_rule, dict) else box_rule
        if self.box_rule is not None and not isinstance(self.box_rule, FrameBoxes):
            raise ValueError(f"box_rule must be FrameBoxes, its dict or None, got {type(box_rule).__name__}")
        if int(refine_passes) < 0:
            raise ValueError(f"refine_passes must be >= 0, got {refine_passes}")
        self.refine_passes = int(refine_passes)
        self.network = network.to(device).eval()
        self.scheme = get_scheme(scheme)
        self.spatial_size = (int(spatial_size[0]), int(spatial_size[1]))
        self.num_samples = int(num_samples)
        self.thresholds = thresholds or PAPER_THRESHOLDS
        self.crop_transform = crop_transform or default_crop_transform(self.spatial_size, margin_mm)
        self.device = torch.device(device)
        self.seed = seed
        self.flip_tta = bool(flip_tta)
        if conformal is not None and not callable(getattr(conformal, "radii", None)):
            raise ValueError(
                f"conformal must be a fitted ConformalCalibrator or None, got {type(conformal).__name__}"
            )
        self.conformal = conformal
        #: the model folder's :class:`RegressorSpec` when built by :meth:`from_checkpoint` from one
        self.spec: RegressorSpec | None = None

    @classmethod
    def from_checkpoint(
        cls,
        checkpoint: str | os.PathLike,
        variant: str = "bayecbam",
        region: str = "cervical",
        network_kwargs: dict | None = None,
        **kwargs: Any,
    ) -> KeypointPredictor:
        """A predictor from a model folder (``model.pt`` + ``regressor_model.json``) or a checkpoint file.

        With a spec (the folder's, or the one beside a ``model.pt`` given directly) the network's
        sizes, the crop size and margin come from it; ``variant``, ``region`` and
        ``network_kwargs`` are then only checked against it. Without a spec (a bare checkpoint of an
        older run) they build the network as before. The folder's ``thresholds.json`` and
        ``conformal.json`` are used unless ``thresholds``/``conformal`` are passed.

        Raises:
            FileNotFoundError: no checkpoint.
            ValueError: the weights do not fit the spec, or the spec contradicts the arguments
                (one line naming the file).
        """
        from monai_spine.data.keypoints import get_region
        from monai_spine.networks.regressor import build_regressor

        path = Path(checkpoint)
        folder = path if path.is_dir() else path.parent
        ckpt = path / "model.pt" if path.is_dir() else path
        if (folder / SPEC_FILE).is_file():
            spec = RegressorSpec.load(folder)
            if network_kwargs:
                bad = {k: v for k, v in network_kwargs.items() if getattr(spec, k, v) != v and k != "spatial_size"}
                if bad:
                    raise ValueError(f"{folder / SPEC_FILE}: the model was trained with other settings than {bad}")
            net = load_regressor_weights(spec.build_network(), ckpt)
            kwargs.setdefault("spatial_size", spec.spatial_size)
            kwargs.setdefault("margin_mm", spec.margin_mm)
            kwargs.setdefault("refine_passes", spec.refine_passes)
            kwargs.setdefault("box_rule", spec.box_rule)
            if tuple(int(v) for v in kwargs["spatial_size"]) != spec.spatial_size:
                raise ValueError(f"{folder / SPEC_FILE}: trained on {spec.spatial_size} crops, asked for {tuple(kwargs['spatial_size'])}")
            if "thresholds" not in kwargs and (folder / "thresholds.json").is_file():
                from monai_spine.uncertainty.classes import Thresholds

                kwargs["thresholds"] = Thresholds.load(folder / "thresholds.json")
            if "conformal" not in kwargs and (folder / "conformal.json").is_file():
                kwargs["conformal"] = load_conformal(folder / "conformal.json")
            predictor = cls(net, scheme=spec.scheme, **kwargs)
            predictor.spec = spec
            return predictor
        if path.is_dir():
            raise FileNotFoundError(f"{path}: a regressor model folder holds model.pt and {SPEC_FILE}")
        scheme = get_region(region).scheme
        net_kw = dict(network_kwargs or {})
        if "spatial_size" in kwargs:
            net_kw.setdefault("spatial_size", kwargs["spatial_size"])
        net = load_regressor_weights(build_regressor(variant, scheme.num_points, **net_kw), ckpt)
        return cls(net, scheme=scheme.name, **kwargs)

    def vertebra_boxes(self, boxes_px: np.ndarray, centres_px: np.ndarray | None = None,
                       levels: Sequence[str] | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """The crops to cut for N vertebrae, as the model was trained to see them.

        Without a :attr:`box_rule` (or without centres) the given boxes. With one, the rule's boxes in
        the spine's frame around the finite centres (taken top to bottom: by level with ``levels``,
        else by y); a vertebra without a finite centre, or every one when fewer than two have one,
        keeps its given box, axis-aligned.

        Args:
            boxes_px: (N, 4) ``x0, y0, x1, y1`` boxes (a detector's, or an annotation's).
            centres_px: (N, 2) vertebra centres, pixels (NaN: unknown), or None.
            levels: N level names, or None.

        Returns:
            ``(boxes_px (N, 4), angles_rad (N,) or None)`` for :meth:`predict`.

        Raises:
            ValueError: centres or levels that do not match the boxes in number.
        """
        boxes = np.array(boxes_px, dtype=np.float64).reshape(-1, 4)
        if self.box_rule is None or centres_px is None:
            return boxes, None
        c = np.asarray(centres_px, dtype=np.float64).reshape(-1, 2)
        if len(c) != len(boxes) or (levels is not None and len(levels) != len(boxes)):
            raise ValueError(f"vertebra_boxes: {len(boxes)} boxes, {len(c)} centres, "
                             f"{'no' if levels is None else len(levels)} levels")
        angles = np.zeros(len(boxes))
        ok = np.flatnonzero(np.all(np.isfinite(c), axis=1))
        if len(ok) < 2:
            return boxes, angles
        if levels is not None:
            from monai_spine.data.keypoints import level_order

            order = ok[np.argsort([level_order(str(levels[i])) for i in ok], kind="stable")]
        else:
            order = ok[np.argsort(c[ok, 1], kind="stable")]
        boxes[order], angles[order] = self.box_rule.boxes(c[order], None if levels is None else
                                                          [str(levels[i]) for i in order])
        return boxes, angles

    def annotation_boxes(self, ann: Any) -> tuple[np.ndarray, np.ndarray | None]:
        """The crops to cut for all N vertebrae of an annotation, as the model was trained to see them.

        Its boxes (``boxes_px``, else the keypoints' extent); with a :attr:`box_rule`, the rule's boxes
        around its annotated centres (:func:`~monai_spine.codecs.detection.vertebra_centres_px`,
        :meth:`vertebra_boxes`).

        Returns:
            ``(boxes_px (N, 4), angles_rad (N,) or None)`` for :meth:`predict`.
        """
        boxes = ann.boxes_px if ann.boxes_px is not None else ann.boxes_from_keypoints()
        if self.box_rule is None:
            return np.array(boxes, dtype=np.float64).reshape(-1, 4), None
        from monai_spine.codecs.detection import vertebra_centres_px

        return self.vertebra_boxes(boxes, vertebra_centres_px(ann.keypoints_px, ann.visible, ann.scheme), ann.levels)

    @torch.inference_mode()
    def predict(
        self, image: np.ndarray, boxes_px: np.ndarray, spacing_mm: Sequence[float] | None, spacing_source: str = "unknown",
        refine_passes: int | None = None, angles_rad: np.ndarray | None = None,
    ) -> KeypointPrediction:
        """Keypoints of every boxed vertebra.

        Args:
            image: (1, H, W) or (H, W) radiograph.
            boxes_px: (N, 4) ``x0, y0, x1, y1`` boxes in image pixels.
            spacing_mm: (sx, sy) or None when unknown.
            spacing_source: where the spacing came from (recorded in the result).
            refine_passes: crop re-cuts for these boxes (None: :attr:`refine_passes`); 0 for boxes that
                already have the annotation framing the model learnt (annotation boxes), where re-cutting
                around imperfect points only drifts.
            angles_rad: (N,) turn of each box about its centre, radians (crops in the vertebra's own
                frame, for a model trained on such crops; re-cuts keep each vertebra's angle); None:
                axis-aligned boxes.
        """
        passes = self.refine_passes if refine_passes is None else int(refine_passes)
        if passes < 0:
            raise ValueError(f"refine_passes must be >= 0, got {refine_passes}")
        img = np.asarray(image, dtype=np.float32)
        if img.ndim == 2:
            img = img[None]
        if img.ndim != 3 or img.shape[0] != 1:
            raise ValueError(f"image must be (1, H, W) or (H, W), got shape {img.shape}")
        boxes = np.asarray(boxes_px, dtype=np.float64).reshape(-1, 4)
        angles = None
        if angles_rad is not None:
            angles = np.asarray(angles_rad, dtype=np.float64).reshape(-1)
            if angles.shape != (len(boxes),):
                raise ValueError(f"angles_rad: expected {len(boxes)} angles (one per box), got shape {angles.shape}")
        sp = np.full(2, np.nan, np.float32) if spacing_mm is None else np.asarray(spacing_mm, np.float32)
        res, aff, crop_sp = self._run(img, boxes, sp, angles)
        for _ in range(passes if len(boxes) else 0):
            kp = frac_to_image_px(res.mean_frac.cpu().numpy().astype(np.float64), aff, self.spatial_size)
            res, aff, crop_sp = self._run(img, _keypoint_boxes(kp, angles), sp, angles)
        return self._result(res, aff, crop_sp, len(boxes), spacing_mm, spacing_source, passes)

    def _run(self, img: np.ndarray, boxes: np.ndarray, sp: np.ndarray,
             angles: np.ndarray | None = None) -> tuple[Any, np.ndarray, list[np.ndarray]]:
        """Crops of ``boxes`` (N, 4) (turned by ``angles`` (N,) radians, if given) through the network:
        (MC result, (N, 3, 3) crop->image affines, crop spacings)."""
        crops, affines, crop_sp = [], [], []
        for i, box in enumerate(boxes):
            item = {"image": img, "box_px": box.astype(np.float32), "spacing_mm": sp}
            if angles is not None:
                item["box_angle_rad"] = float(angles[i])
            d = self.crop_transform(item)
            crops.append(torch.as_tensor(np.asarray(d["image"]), dtype=torch.float32))
            affines.append(np.asarray(d["crop_to_image"], dtype=np.float64))
            crop_sp.append(np.asarray(d["crop_spacing_mm"], dtype=np.float64))
        if not crops:
            return None, np.zeros((0, 3, 3)), []
        x = torch.stack(crops).to(self.device)
        gen_state = torch.random.get_rng_state()
        if self.seed is not None:
            torch.manual_seed(self.seed)
        try:
            mc = mc_dropout_reference if self.reference else mc_dropout_predict
            res = mc(self.network, x, num_samples=self.num_samples)
            if self.flip_tta:
                res_f = mc(self.network, torch.flip(x, dims=(-1,)), num_samples=self.num_samples)
                res = combine_flip_tta(res, res_f, self.scheme.flip_permutation)
        finally:
            torch.random.set_rng_state(gen_state)
        return res, np.stack(affines), crop_sp

    def _result(self, res: Any, aff: np.ndarray, crop_sp: list[np.ndarray], n: int,
                spacing_mm: Sequence[float] | None, spacing_source: str,
                refine_passes: int | None = None) -> KeypointPrediction:
        """The :class:`KeypointPrediction` of one network pass (``res`` None: no boxes)."""
        k = self.scheme.num_points
        if res is None or n == 0:
            empty = np.zeros((0, k))
            kinds = ("aleatoric", "epistemic", "total")
            return KeypointPrediction(
                np.zeros((0, k, 2)), {c: empty for c in kinds}, {c: empty for c in kinds}, empty.astype(int),
                np.zeros((0, 3, 3)), None if spacing_mm is None else tuple(map(float, spacing_mm)), spacing_source,
            )
        mean = res.mean_frac.cpu().numpy().astype(np.float64)
        kp = frac_to_image_px(mean, aff, self.spatial_size)
        h, w = self.spatial_size
        sigma_frac, sigma_mm = {}, {}
        for kind in ("aleatoric", "epistemic", "total"):
            s_xy = res.sigma_xy_frac(kind).cpu().numpy().astype(np.float64)  # (N, K, 2)
            sigma_frac[kind] = np.sqrt((s_xy**2).sum(-1))
            sigma_mm[kind] = np.asarray(sigma_frac_to_mm(s_xy, (w, h), np.stack(crop_sp)), dtype=np.float64)
        classes = self.thresholds.classify(
            sigma_mm["total"] if self.thresholds.units == "mm" else sigma_frac["total"], self.scheme.point_types
        )
        radius = unit = None
        meta = {"num_samples": self.num_samples, "thresholds": self.thresholds.to_dict(), "flip_tta": self.flip_tta,
                "refine_passes": self.refine_passes if refine_passes is None else int(refine_passes)}
        if self.conformal is not None:
            cal = self.conformal
            sig = sigma_mm["total"] if cal.sigma_units == "mm" else sigma_frac["total"]
            radius = np.asarray(cal.radii(sig, self.scheme.point_types), dtype=np.float64)
            unit = str(cal.error_unit)
            meta["conformal"] = cal.result_block("total")
        return KeypointPrediction(
            keypoints_px=kp,
            sigma_frac=sigma_frac,
            sigma_mm=sigma_mm,
            classes=np.asarray(classes),
            crop_to_image=aff,
            spacing_mm=None if spacing_mm is None else (float(spacing_mm[0]), float(spacing_mm[1])),
            spacing_source=spacing_source,
            meta=meta,
            conformal_radius=radius,
            conformal_unit=unit,
        )

    def to_json(self, pred: KeypointPrediction, levels: Sequence[str], image: str | None = None) -> dict[str, Any]:
        """JSON-ready result: per vertebra and point x, y in pixels and mm, sigma_p and class.

        With a conformal calibrator each point also has ``conformal_radius_mm`` (or ``_px``; null
        where not finite) and the result a ``conformal`` block (alpha, ``nominal_coverage``, units,
        ``q_hat``); ``flip_tta`` says whether flip test-time augmentation was used.
        """
        from monai_spine.uncertainty.classes import class_names

        names = class_names(pred.classes)
        mm = pred.keypoints_mm
        verts = []
        for i, level in enumerate(levels):
            pts = []
            for j, pname in enumerate(self.scheme.point_names):
                p = {
                    "name": pname,
                    "x_px": float(pred.keypoints_px[i, j, 0]),
                    "y_px": float(pred.keypoints_px[i, j, 1]),
                    "x_mm": None if mm is None else float(mm[i, j, 0]),
                    "y_mm": None if mm is None else float(mm[i, j, 1]),
                    "uncertainty_class": str(names[i, j]),
                }
                for kind in ("aleatoric", "epistemic", "total"):
                    p[f"sigma_p_{kind}_frac"] = float(pred.sigma_frac[kind][i, j])
                    v = pred.sigma_mm[kind][i, j]
                    p[f"sigma_p_{kind}_mm"] = float(v) if np.isfinite(v) else None
                if pred.conformal_radius is not None:
                    r = pred.conformal_radius[i, j]
                    p[f"conformal_radius_{pred.conformal_unit}"] = float(r) if np.isfinite(r) else None
                pts.append(p)
            verts.append({"level": str(level), "points": pts})
        return {
            "image": image,
            "scheme": self.scheme.name,
            "spacing_mm": None if pred.spacing_mm is None else list(pred.spacing_mm),
            "spacing_source": pred.spacing_source,
            "units_note": "mm values are null when the spacing is unknown; pixel values are always given",
            "thresholds": pred.meta.get("thresholds"),
            "mc_dropout_samples": pred.meta.get("num_samples"),
            "flip_tta": bool(pred.meta.get("flip_tta", False)),
            **({"conformal": pred.meta["conformal"]} if "conformal" in pred.meta else {}),
            "vertebrae": verts,
        }

    @staticmethod
    def dumps(result: dict[str, Any]) -> str:
        """Strict JSON text of a :meth:`to_json` result."""
        return json.dumps(result, indent=1, allow_nan=False)


def predict_cases(
    predictor: KeypointPredictor, label_paths: Sequence[str], out_dir: str | os.PathLike, overlays: bool = True
) -> list[dict[str, Any]]:
    """Predict every annotated radiograph of ``label_paths`` and write its outputs to ``out_dir``.

    Vertebra boxes come from the annotations (their ``box_px``, else the keypoints' extent) until a
    detector provides them. Per case ``<stem>`` it writes ``<stem>.keypoints.json`` (points in pixels
    and mm, sigma_p, class, spacing source), ``<stem>.mrk.json`` (3D Slicer markups) and, with
    ``overlays``, ``<stem>.overlay.png`` (ground truth green, predictions by uncertainty class).

    Returns:
        one summary dict per case (paths written, number of vertebrae).
    """
    from monai_spine.data.annotation import SpineAnnotation, atomic_write_text, read_annotation
    from monai_spine.data.keypoints import get_region
    from monai_spine.data.readers import read_xray
    from monai_spine.data.slicer import write_slicer_markups
    from monai_spine.inference.overlay import write_overlay
    from monai_spine.uncertainty.classes import GROUND_TRUTH_COLOUR_RGB, class_colours

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summaries = []
    for label in label_paths:
        ann = read_annotation(label)
        levels = get_region(ann.region).levels
        keep = [i for i, lev in enumerate(ann.levels) if lev in levels]
        override = ann.spacing_override_mm
        img = read_xray(ann.image, spacing_mm=override)
        boxes, angles = predictor.annotation_boxes(ann)
        # annotation boxes already frame the vertebra as in training: no re-cut (it is for a detector's boxes)
        pred = predictor.predict(img.channel_first(), boxes[keep], img.spacing_mm, img.spacing_source, refine_passes=0,
                                 angles_rad=None if angles is None else angles[keep])
        stem = Path(label).name.removesuffix(".json")
        kept_levels = [ann.levels[i] for i in keep]
        result = predictor.to_json(pred, kept_levels, image=str(ann.image))
        json_path = out / f"{stem}.keypoints.json"
        atomic_write_text(json_path, predictor.dumps(result))
        pred_ann = SpineAnnotation(
            levels=kept_levels,
            keypoints_px=pred.keypoints_px,
            visible=np.ones(pred.keypoints_px.shape[:2], bool),
            region=ann.region,
            scheme=ann.scheme,
            image=ann.image,
            image_size=img.size_wh,
            spacing_mm=img.spacing_mm,
            spacing_source=img.spacing_source,
        )
        markups_path = out / f"{stem}.mrk.json"
        descriptions = np.array(
            [
                [f"sigma_p={pred.sigma_mm['total'][i, j]:.2f} mm; {result['vertebrae'][i]['points'][j]['uncertainty_class']}"
                 for j in range(pred.keypoints_px.shape[1])]
                for i in range(len(kept_levels))
            ],
            dtype=object,
        ).reshape(pred.keypoints_px.shape[:2])
        write_slicer_markups(pred_ann, markups_path, point_fields={"description": descriptions})
        written = {"case": stem, "keypoints": str(json_path), "markups": str(markups_path), "vertebrae": len(keep)}
        if overlays:
            png = out / f"{stem}.overlay.png"
            write_overlay(
                png,
                img.array,
                [
                    dict(keypoints_px=ann.keypoints_px[keep], visible=ann.visible[keep], colors_rgb=GROUND_TRUTH_COLOUR_RGB),
                    dict(keypoints_px=pred.keypoints_px, colors_rgb=class_colours(pred.classes), labels=kept_levels),
                ],
            )
            written["overlay"] = str(png)
        summaries.append(written)
    return summaries
