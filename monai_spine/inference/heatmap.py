"""Semi-automatic vertebral-corner localisation with the probabilistic spatial regressor (Al Arif et al. 2017).

An operator clicks the vertebra centres; from them this module

1. estimates each vertebra's frame (:func:`~monai_spine.data.frames.centre_frames`): orientation from the neighbouring centres
   (:func:`monai_spine.data.patches.orientation_from_centres`) and size = ``size_ratio`` x the mean
   distance to the neighbouring centres, ``size_ratio`` fitted on training annotations (the paper:
   "The height, width and orientation are computed based on the manually annotated center points");
2. cuts the regular grid of patches around every centre (:func:`make_patches`, scales and rotations
   relative to the vertebra frame, each resampled to ``out_size`` px and z-scored);
3. runs the FCN (:class:`monai_spine.networks.fcn.ProbabilisticUNet`) on every patch and localises the
   four corners of every vertebra with :func:`monai_spine.inference.corners.corners_from_patches`
   (background removal, back-projection, the learned :class:`~monai_spine.inference.corners.CornerPrior`,
   quadrant maxima, a per-corner ``sigma``).

Training (:mod:`monai_spine.engines.heatmap`) uses exactly the same frames and patch grid, so the
validation metrics of the bundle are those of this predictor.

A trained model is a folder (the bundle's ``ckpt_dir``) holding three files side by side:

* ``model.pt``: the network weights (MONAI ``CheckpointSaver``, weights only);
* ``corner_prior.json``: the :class:`CornerPrior` (format ``monai-spine-corner-prior``);
* ``heatmap_model.json``: :class:`HeatmapModelSpec` (format ``monai-spine-heatmap-model``): the
  network width, patch grid, ``size_ratio``, post-processing settings and the prior's file name.

Units: points are ``(x, y)`` pixels of the radiograph (see :mod:`monai_spine.data.keypoints`); mm values
are given only when the spacing is known (never a silent 1.0 mm/px); ``sigma`` is the per-axis RMS
spread of a corner's accumulated map (see :mod:`monai_spine.inference.corners`).

Why one module: it is one predictor, :class:`CornerPredictor`, with the model spec it is built from
and the patch grid it samples; the grid's settings live in the spec and are used only here. The
codec that turns patch maps into corners is :mod:`monai_spine.codecs.corner_maps`, the prior
:mod:`monai_spine.inference.corners`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import cv2
import numpy as np
import torch

from monai_spine.data.annotation import atomic_write_text
from monai_spine.data.frames import centre_frames
from monai_spine.data.keypoints import get_scheme, level_order, px_to_mm
from monai_spine.data.patches import extract_patch, image_2d, normalize_patch, patch_params
from monai_spine.inference.corners import CornerPrior, VertebraCorners, corners_from_patches
from monai_spine.inference.model_zoo import load_strict_weights

__all__ = [
    "MODEL_FORMAT",
    "CHECKPOINT_FILE",
    "PRIOR_FILE",
    "MODEL_FILE",
    "RESULT_FORMAT",
    "HeatmapModelSpec",
    "PatchSet",
    "DEFAULT_POSTPROCESS",
    "make_patches",
    "extract_patches",
    "inference_network",
    "localize",
    "CornerPrediction",
    "CornerPredictor",
    "parse_centres",
    "default_ckpt_dir",
]

MODEL_FORMAT = "monai-spine-heatmap-model"
RESULT_FORMAT = "monai-spine-corners"
CHECKPOINT_FILE = "model.pt"
PRIOR_FILE = "corner_prior.json"
MODEL_FILE = "heatmap_model.json"

#: post-processing defaults (arguments of :func:`corners_from_patches` / :func:`localize_corners`)
DEFAULT_POSTPROCESS: dict[str, Any] = {"background": "mode", "renormalize": "max", "prior_scale": 1.0, "prior_radius": 3.5}


def _tuple_f(x: Sequence[Any]) -> tuple[float, ...]:
    return tuple(float(v) for v in x)


@dataclass
class HeatmapModelSpec:
    """Everything besides the weights that a trained corner model needs at inference time.

    Attributes:
        scheme: keypoint scheme (gives the corner names and indices).
        region: body region the model was trained on (informative).
        size_ratio: vertebra size ``(width + height) / 2`` divided by the mean distance to the
            neighbouring centres (fitted on training annotations, :func:`fit_size_ratio` of the engine).
        out_size: patch side in px (the network input, divisible by 16).
        grid: ``(n, half_extent_frac)`` of the patch-centre grid (:func:`~monai_spine.data.patches.sample_patch_params`).
        scales: patch sides as multiples of the vertebra size.
        rotations_deg: patch rotations relative to the vertebra orientation.
        network: keyword arguments of :class:`ProbabilisticUNet` (``width``, ``multipliers``).
        postprocess: keyword arguments of :func:`corners_from_patches` (background removal,
            prior scale and radius, ``prior_pull``: how far corners move toward the prior mean, ...).
        target: how the training targets were made (``sigma_along_frac``, ``sigma_across_frac``, ``empty``).
        prior: the fitted :class:`CornerPrior`, or None (corners from the maps alone).
        meta: free-form record (training data, counts).
    """

    scheme: str = "lateral5"
    region: str | None = "cervical"
    size_ratio: float = 0.78
    out_size: int = 64
    grid: tuple[int, float] = (3, 0.15)
    scales: tuple[float, ...] = (1.6, 2.0, 2.4)
    rotations_deg: tuple[float, ...] = (-10.0, 0.0, 10.0)
    network: dict[str, Any] = field(default_factory=lambda: {"width": 64, "multipliers": [1, 2, 4, 8, 12]})
    postprocess: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_POSTPROCESS))
    target: dict[str, Any] = field(
        default_factory=lambda: {"sigma_along_frac": 0.1, "sigma_across_frac": 0.06, "empty": "uniform"}
    )
    prior: CornerPrior | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        get_scheme(self.scheme)
        if not (np.isfinite(self.size_ratio) and self.size_ratio > 0):
            raise ValueError(f"size_ratio must be positive, got {self.size_ratio!r}")
        self.size_ratio = float(self.size_ratio)
        self.out_size = int(self.out_size)
        if self.out_size < 16 or self.out_size % 16:
            raise ValueError(f"out_size must be a positive multiple of 16, got {self.out_size}")
        if len(self.grid) != 2:
            raise ValueError(f"grid must be (n, half_extent_frac), got {self.grid!r}")
        self.grid = (int(self.grid[0]), float(self.grid[1]))
        self.scales = _tuple_f(self.scales)
        self.rotations_deg = _tuple_f(self.rotations_deg)
        if not self.scales or min(self.scales) <= 0 or not self.rotations_deg:
            raise ValueError(f"need positive scales and at least one rotation, got {self.scales}, {self.rotations_deg}")
        self.network = dict(self.network)
        self.postprocess = {**DEFAULT_POSTPROCESS, **dict(self.postprocess)}
        pull = self.postprocess.get("prior_pull", 0.0)
        if isinstance(pull, bool) or not (isinstance(pull, (int, float)) and 0.0 <= float(pull) <= 1.0):
            raise ValueError(f"postprocess prior_pull must be a number in [0, 1], got {pull!r}")

    @property
    def corner_indices(self) -> tuple[int, int, int, int]:
        """Indices of the 4 corners (top-left, top-right, bottom-left, bottom-right) in the scheme."""
        return get_scheme(self.scheme).corner_indices

    @property
    def corner_names(self) -> tuple[str, ...]:
        """Names of the 4 corners (``AS, PS, AI, PI`` for ``lateral5``)."""
        sch = get_scheme(self.scheme)
        return tuple(sch.point_names[i] for i in sch.corner_indices)

    @property
    def patches_per_vertebra(self) -> int:
        """``n^2 * len(scales) * len(rotations_deg)``."""
        return self.grid[0] ** 2 * len(self.scales) * len(self.rotations_deg)

    def build_network(self) -> torch.nn.Module:
        """A fresh :class:`ProbabilisticUNet` with the stored arguments (one input and output channel)."""
        from monai_spine.networks.fcn import ProbabilisticUNet

        return ProbabilisticUNet(**self.network)

    def to_dict(self, prior_file: str | None = PRIOR_FILE) -> dict[str, Any]:
        """JSON-able record (the prior itself is stored in ``prior_file`` beside it)."""
        return {
            "format": MODEL_FORMAT, "version": 1,
            "scheme": self.scheme, "region": self.region, "size_ratio": self.size_ratio,
            "size_ratio_note": "vertebra size (width + height) / 2 = size_ratio * mean distance to the neighbouring centres",
            "out_size": self.out_size, "grid": list(self.grid), "scales": list(self.scales),
            "rotations_deg": list(self.rotations_deg), "network": self.network, "postprocess": self.postprocess,
            "target": self.target, "prior_file": prior_file if self.prior is not None else None,
            "checkpoint_file": CHECKPOINT_FILE, "meta": self.meta,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "<dict>", prior: CornerPrior | None = None) -> "HeatmapModelSpec":
        """Inverse of :meth:`to_dict`; ``ValueError`` naming ``source`` on a malformed record."""
        if not isinstance(d, dict) or d.get("format") != MODEL_FORMAT:
            raise ValueError(f"{source}: not a {MODEL_FORMAT} record")
        try:
            return cls(
                scheme=d["scheme"], region=d.get("region"), size_ratio=d["size_ratio"], out_size=d["out_size"],
                grid=tuple(d["grid"]), scales=tuple(d["scales"]), rotations_deg=tuple(d["rotations_deg"]),
                network=d.get("network", {}), postprocess=d.get("postprocess", {}), target=d.get("target", {}),
                prior=prior, meta=d.get("meta", {}),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{source}: malformed {MODEL_FORMAT} record: {e}") from None

    def file_paths(self, ckpt_dir: str | os.PathLike) -> list[str]:
        """The files :meth:`save` writes into ``ckpt_dir`` (for MLflow artifacts)."""
        d = Path(ckpt_dir)
        files = [d / MODEL_FILE] + ([d / PRIOR_FILE] if self.prior is not None else [])
        return [str(p) for p in files]

    def save(self, ckpt_dir: str | os.PathLike) -> list[str]:
        """Write ``heatmap_model.json`` and ``corner_prior.json`` into ``ckpt_dir`` (created); returns the paths."""
        d = Path(ckpt_dir)
        d.mkdir(parents=True, exist_ok=True)
        if self.prior is not None:
            self.prior.save(d / PRIOR_FILE)
        atomic_write_text(d / MODEL_FILE, json.dumps(self.to_dict(), indent=1))
        return self.file_paths(d)

    @classmethod
    def load(cls, path: str | os.PathLike, prior: str | os.PathLike | None = None) -> "HeatmapModelSpec":
        """Read a spec from a ckpt dir (or its ``heatmap_model.json``) with its prior.

        Args:
            path: the folder written by :meth:`save`, or the JSON file itself.
            prior: a prior JSON to use instead of the one the spec names.

        Raises:
            FileNotFoundError: the spec or its prior is missing (message names the file).
            ValueError: a malformed file.
        """
        p = Path(path)
        f = p if p.suffix.lower() == ".json" else p / MODEL_FILE
        if not f.is_file():
            raise FileNotFoundError(f"heatmap model spec {f} does not exist: train with configs/heatmap_train.json first")
        try:
            d = json.loads(f.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ValueError(f"{f}: invalid JSON: {e}") from None
        prior_path = Path(prior) if prior else (f.parent / d["prior_file"] if isinstance(d, dict) and d.get("prior_file") else None)
        cp = None
        if prior_path is not None:
            if not prior_path.is_file():
                raise FileNotFoundError(f"corner prior {prior_path} (named by {f}) does not exist")
            cp = CornerPrior.load(prior_path)
        return cls.from_dict(d, str(f), cp)


# ---------------------------------------------------------------------------------------------- geometry
class PatchSet(NamedTuple):
    """Patches of one image: ``patches (P, S, S)`` float32 (z-scored), ``affines (P, 3, 3)`` patch px ->
    image px, ``vertebra_index (P,)`` int64 (row of the centres they were cut around)."""

    patches: np.ndarray
    affines: np.ndarray
    vertebra_index: np.ndarray


def make_patches(
    image: np.ndarray,
    centres_px: np.ndarray,
    orientations_deg: np.ndarray,
    sizes_px: np.ndarray,
    out_size: int = 64,
    grid: tuple[int, float] = (3, 0.15),
    scales: Sequence[float] = (1.6, 2.0, 2.4),
    rotations_deg: Sequence[float] = (-10.0, 0.0, 10.0),
    rng: np.random.Generator | None = None,
    num_samples: int | None = None,
    antialias: bool = True,
    fast: bool = True,
) -> PatchSet:
    """Cut and z-score the patches of :func:`~monai_spine.data.patches.patch_params` from ``image`` ``(H, W)`` or ``(1, H, W)``.

    ``fast`` uses :func:`extract_patches` (one blur per scale and region); False cuts the patches one
    by one with :func:`~monai_spine.data.patches.extract_patch` (the reference; same patches to float
    rounding).
    """
    affines, owner = patch_params(centres_px, orientations_deg, sizes_px, grid, scales, rotations_deg, out_size,
                                  rng, num_samples)
    if len(affines) == 0:
        return PatchSet(np.zeros((0, out_size, out_size), np.float32), affines, owner)
    if fast:
        arr = normalize_patch(extract_patches(image, affines, out_size, antialias=antialias))
    else:
        arr = np.stack([normalize_patch(extract_patch(image, a, out_size, antialias=antialias)) for a in affines])
    return PatchSet(arr.astype(np.float32, copy=False), affines, owner)


def extract_patches(image: np.ndarray, affines: np.ndarray, out_size: int = 64, antialias: bool = True) -> np.ndarray:
    """:func:`~monai_spine.data.patches.extract_patch` of many patches, blurring each image region once.

    Gives the patches of ``[extract_patch(image, a, out_size, antialias) for a in affines]``
    (constant border, fill 0), faster: patches of equal scale ``s`` (equal anti-aliasing sigma, e.g.
    the grid positions and rotations of one scale around one vertebra) share one Gaussian blur of
    the union of their regions, and each patch is then warped from the view of that blur that
    :func:`extract_patch` would have blurred on its own (same origin, same size, same affine). A
    pixel's blurred value depends only on the image within the kernel radius (``<= 4 sigma``, inside
    the ``4 sigma + 2`` px margin) and on the same image-border reflection, so the patches agree with
    the one-by-one ones to float rounding (OpenCV's vectorised and scalar filter paths, about 1e-7
    relative).

    Args:
        image: ``(H, W)`` or ``(1, H, W)`` image.
        affines: ``(P, 3, 3)`` patch-to-image affines.
        out_size: patch side in px.
        antialias: as in :func:`extract_patch`.

    Returns:
        ``(P, out_size, out_size)`` float32 patches (not normalised).
    """
    img = image_2d(image, "extract_patches")
    af = np.asarray(affines, dtype=np.float64).reshape(-1, 3, 3)
    out = np.empty((len(af), out_size, out_size), np.float32)
    if len(af) == 0:
        return out
    scale = np.sqrt(np.abs(np.linalg.det(af[:, :2, :2])))
    if not antialias or not np.all(np.isfinite(af)):
        for i, a in enumerate(af):
            out[i] = extract_patch(img, a, out_size, antialias=antialias)
        return out
    h, w = img.shape
    e = np.array([[-0.5, -0.5], [out_size - 0.5, -0.5], [-0.5, out_size - 0.5], [out_size - 0.5, out_size - 0.5]])
    fp = np.einsum("kj,pij->pki", e, af[:, :2, :2]) + af[:, None, :2, 2]  # (P, 4, 2) footprints, image px
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    for s in np.unique(scale):
        idx = np.nonzero(scale == s)[0]
        if not s > 1.0:  # no blur: the warp alone, as extract_patch does it
            for i in idx:
                out[i] = extract_patch(img, af[i], out_size, antialias=antialias)
            continue
        sigma = 0.5 * (float(s) - 1.0)
        margin = int(np.ceil(4 * sigma)) + 2
        x0 = np.clip(np.floor(fp[idx, :, 0].min(axis=1)) - margin, 0, w).astype(int)
        x1 = np.clip(np.ceil(fp[idx, :, 0].max(axis=1)) + margin + 1, 0, w).astype(int)
        y0 = np.clip(np.floor(fp[idx, :, 1].min(axis=1)) - margin, 0, h).astype(int)
        y1 = np.clip(np.ceil(fp[idx, :, 1].max(axis=1)) + margin + 1, 0, h).astype(int)
        inside = (x1 > x0) & (y1 > y0)
        out[idx[~inside]] = 0.0  # the patch lies entirely outside the image (fill 0)
        if not inside.any():
            continue
        ux0, uy0, ux1, uy1 = x0[inside].min(), y0[inside].min(), x1[inside].max(), y1[inside].max()
        blur = cv2.GaussianBlur(np.ascontiguousarray(img[uy0:uy1, ux0:ux1]), (0, 0), sigmaX=sigma, sigmaY=sigma,
                                borderType=cv2.BORDER_REFLECT_101)
        for j in np.nonzero(inside)[0]:
            i = idx[j]
            a = af[i].copy()
            a[:2, 2] -= (x0[j], y0[j])
            view = blur[y0[j] - uy0 : y1[j] - uy0, x0[j] - ux0 : x1[j] - ux0]
            out[i] = cv2.warpAffine(view, a[:2], (out_size, out_size), flags=flags,
                                    borderMode=cv2.BORDER_CONSTANT, borderValue=0.0)
    return out


def localize(
    maps: np.ndarray,
    affines: np.ndarray,
    vertebra_index: np.ndarray,
    centres_px: np.ndarray,
    orientations_deg: np.ndarray,
    sizes_px: np.ndarray,
    spec: HeatmapModelSpec,
    levels: Sequence[str | None] | None = None,
    spacing_mm: Sequence[float] | None = None,
    image_shape: Sequence[int] | None = None,
) -> VertebraCorners:
    """Corners of every vertebra from its patch maps, with the spec's prior and post-processing."""
    lv = None
    if levels is not None and spec.prior is not None:
        lv = [None if lev is None else str(lev) for lev in levels]
    return corners_from_patches(
        maps, affines, vertebra_index, centres_px, orientations_deg, sizes_px, spec.prior, levels=lv,
        spacing_mm=spacing_mm, image_shape=image_shape, **spec.postprocess,
    )


# ---------------------------------------------------------------------------------------------- predictor
def inference_network(network: torch.nn.Module, channels_last: bool = True) -> torch.nn.Module:
    """An eval-mode copy of ``network`` for fast CPU inference; ``network`` itself is not touched.

    Every ``Conv2d`` directly followed by a ``BatchNorm2d`` in an ``nn.Sequential`` (the
    :class:`~monai_spine.networks.fcn.ProbabilisticUNet` blocks) becomes one convolution with the
    batch norm's running statistics folded into its weights and bias
    (``torch.nn.utils.fusion.fuse_conv_bn_eval``), the batch norm an identity; with
    ``channels_last`` the copy's weights use the channels-last memory format (feed it channels-last
    input; any layout gives the same values). Outputs equal the original's in eval mode to float
    rounding (about 1e-6 relative).

    Args:
        network: any module (eval-mode semantics are assumed: running batch-norm statistics).
        channels_last: convert the copy to ``torch.channels_last``.

    Returns:
        the optimised copy, in eval mode, without gradients.
    """
    import copy

    from torch.nn.utils.fusion import fuse_conv_bn_eval

    net = copy.deepcopy(network).eval()
    for mod in net.modules():
        if not isinstance(mod, torch.nn.Sequential):
            continue
        for i in range(len(mod) - 1):
            conv, bn = mod[i], mod[i + 1]
            if (isinstance(conv, torch.nn.Conv2d) and isinstance(bn, torch.nn.BatchNorm2d)
                    and bn.track_running_stats and bn.running_mean is not None):
                mod[i] = fuse_conv_bn_eval(conv, bn)
                mod[i + 1] = torch.nn.Identity()
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    for prm in net.parameters():
        prm.requires_grad_(False)
    return net


@dataclass
class CornerPrediction:
    """Corners of the ``V`` clicked vertebrae of one radiograph (in the order the centres were given).

    Attributes:
        corners_px: ``(V, 4, 2)`` (x, y) px, corner order of :attr:`HeatmapModelSpec.corner_names`.
        sigma_px: ``(V, 4)`` per-axis spread of each corner's accumulated map, px.
        used_prior: ``(V, 4)`` the corner is the prior mean (no evidence in the map).
        centres_px, orientations_deg, sizes_px: the frames the patches were cut in.
        spacing_mm: ``(sx, sy)`` or None (unknown); spacing_source: where it came from.
        levels: level names or None.
        maps: ``(P, S, S)`` network outputs and ``patches``: the :class:`PatchSet` (``return_maps``).
    """

    corners_px: np.ndarray
    sigma_px: np.ndarray
    used_prior: np.ndarray
    centres_px: np.ndarray
    orientations_deg: np.ndarray
    sizes_px: np.ndarray
    spacing_mm: tuple[float, float] | None = None
    spacing_source: str = "unknown"
    levels: list[str] | None = None
    maps: np.ndarray | None = None
    patches: PatchSet | None = None

    @property
    def corners_mm(self) -> np.ndarray | None:
        """``(V, 4, 2)`` in mm from the image origin, or None when the spacing is unknown."""
        return None if self.spacing_mm is None else px_to_mm(self.corners_px, self.spacing_mm)

    @property
    def sigma_mm(self) -> np.ndarray | None:
        """``(V, 4)`` sigma in mm (RMS spacing), or None when the spacing is unknown."""
        from monai_spine.inference.corners import sigma_px_to_mm

        return sigma_px_to_mm(self.sigma_px, self.spacing_mm)


class CornerPredictor:
    """Corners with uncertainty of clicked vertebrae (the paper's semi-automatic framework).

    Args:
        network: a :class:`ProbabilisticUNet` with its weights loaded.
        spec: the model's :class:`HeatmapModelSpec` (patch grid, size ratio, prior, post-processing).
        device: torch device of the forward passes.
        batch_size: patches per forward pass.
        optimize: cut the patches with :func:`extract_patches` and run them through
            :func:`inference_network` (batch norms folded into the convolutions, channels-last),
            rebuilt whenever the weights change; False: patches one by one and ``network`` itself
            (the reference). Maps agree to float rounding (about 1e-6 relative).
        thresholds: uncertainty-class thresholds of the corners
            (:class:`~monai_spine.uncertainty.classes.Thresholds`, ``monai-spine calibrate --model heatmap``'s
            ``thresholds.json``), on ``sigma_p = sqrt(2) * sigma`` (the reader's convention, see
            :mod:`monai_spine.data.prediction`) in their units (mm, or px); None: no class.
        conformal: a fitted :class:`~monai_spine.uncertainty.conformal.ConformalCalibrator` on the same
            ``sigma_p`` (its ``conformal.json``); each corner then gets ``conformal_radius_<unit>``.

    Example::

        predictor = CornerPredictor.from_ckpt_dir("bundle/models/heatmap")
        pred = predictor.predict(image, centres_px=[[210, 80], [215, 150], [222, 221]], spacing_mm=(0.14, 0.14))
        pred.corners_px, pred.sigma_mm
    """

    def __init__(self, network: torch.nn.Module, spec: HeatmapModelSpec, device: str | torch.device = "cpu",
                 batch_size: int = 256, optimize: bool = True, thresholds: Any = None, conformal: Any = None) -> None:
        if conformal is not None and not callable(getattr(conformal, "radii", None)):
            raise ValueError(f"conformal must be a fitted ConformalCalibrator or None, got {type(conformal).__name__}")
        self.thresholds = thresholds
        self.conformal = conformal
        self.device = torch.device(device)
        self.network = network.to(self.device).eval()
        self.spec = spec
        self.batch_size = int(batch_size)
        self.optimize = bool(optimize)
        self._fast: tuple[tuple, torch.nn.Module] | None = None

    @classmethod
    def from_ckpt_dir(
        cls,
        ckpt_dir: str | os.PathLike,
        checkpoint: str | os.PathLike | None = None,
        prior: str | os.PathLike | None = None,
        **kwargs: Any,
    ) -> "CornerPredictor":
        """Load the spec, prior and weights that training stored in ``ckpt_dir``.

        Args:
            ckpt_dir: folder with ``heatmap_model.json``, ``corner_prior.json`` and ``model.pt``.
            checkpoint: weights to use instead of ``ckpt_dir/model.pt``.
            prior: prior JSON to use instead of the stored one.
            **kwargs: ``device``, ``batch_size``, ``optimize``, ``thresholds``, ``conformal``; the
                folder's ``thresholds.json`` and ``conformal.json`` (``monai-spine calibrate --model
                heatmap``) are used when present unless ``thresholds`` / ``conformal`` are passed.

        Raises:
            FileNotFoundError: a file is missing (message names it).
        """
        folder = Path(ckpt_dir)
        if "thresholds" not in kwargs and (folder / "thresholds.json").is_file():
            from monai_spine.uncertainty.classes import Thresholds

            kwargs["thresholds"] = Thresholds.load(folder / "thresholds.json")
        if "conformal" not in kwargs and (folder / "conformal.json").is_file():
            from monai_spine.uncertainty.conformal import ConformalCalibrator

            kwargs["conformal"] = ConformalCalibrator.load(folder / "conformal.json")
        spec = HeatmapModelSpec.load(ckpt_dir, prior=prior)
        ckpt = Path(checkpoint) if checkpoint else Path(ckpt_dir) / CHECKPOINT_FILE
        # a CheckpointSaver file with several entries gives its "model" entry
        net = load_strict_weights(spec.build_network(), ckpt, f"the network of {spec.network}",
                                  hint="train with configs/heatmap_train.json first")
        return cls(net, spec, **kwargs)

    @torch.inference_mode()
    def predict_maps(self, patches: np.ndarray) -> np.ndarray:
        """Network outputs ``(P, S, S)`` float32 for z-scored patches ``(P, S, S)``."""
        p = np.asarray(patches, dtype=np.float32)
        if len(p) == 0:
            return np.zeros_like(p)
        net, fmt = self.network, torch.contiguous_format
        if self.optimize:
            net, fmt = self._inference_network(), torch.channels_last
        out = np.empty(p.shape, np.float32)
        for i in range(0, len(p), self.batch_size):
            x = torch.as_tensor(p[i : i + self.batch_size])[:, None].to(self.device).contiguous(memory_format=fmt)
            out[i : i + len(x)] = net(x)[:, 0].float().cpu().numpy()
        return out

    def _inference_network(self) -> torch.nn.Module:
        """The cached :func:`inference_network` of ``self.network``, rebuilt when a weight changed."""
        tensors = list(self.network.parameters()) + list(self.network.buffers())
        key = (id(self.network), tuple(id(t) for t in tensors), tuple(t._version for t in tensors))
        if self._fast is None or self._fast[0] != key:
            self._fast = (key, inference_network(self.network))
        return self._fast[1]

    def predict(
        self,
        image: np.ndarray,
        centres_px: np.ndarray | Sequence[Sequence[float]],
        spacing_mm: Sequence[float] | None = None,
        spacing_source: str | None = None,
        levels: Sequence[str] | None = None,
        return_maps: bool = False,
    ) -> CornerPrediction:
        """Corners of the vertebrae whose centres were clicked.

        Args:
            image: ``(H, W)`` or ``(1, H, W)`` radiograph (raw intensities; patches are z-scored).
            centres_px: ``(V, 2)`` vertebra centres (x, y) px, ``V >= 2``, in any order: they are
                sorted top to bottom (by level when ``levels`` are given, else by y) for the frames,
                and the result follows the given order.
            spacing_mm: ``(sx, sy)`` or None (unknown: no mm values; NaN values also mean unknown).
            spacing_source: where the spacing came from (default ``"unknown"`` / ``"sidecar"``).
            levels: optional level name per centre (per-level prior, gaps between clicked levels).
            return_maps: keep the patches and network maps in the result.
        """
        img = image_2d(image, "CornerPredictor")
        c = np.asarray(centres_px, dtype=np.float64).reshape(-1, 2)
        if levels is not None and len(levels) != len(c):
            raise ValueError(f"{len(levels)} levels for {len(c)} centres")
        if levels is not None:
            try:
                order = np.argsort([level_order(str(lev)) for lev in levels], kind="stable")
            except KeyError:
                order = np.argsort(c[:, 1], kind="stable")
        else:
            order = np.argsort(c[:, 1], kind="stable")
        cs = c[order]
        lv = None if levels is None else [str(levels[i]) for i in order]
        ang, size = centre_frames(cs, self.spec.size_ratio, lv)
        s = self.spec
        ps = make_patches(img, cs, ang, size, s.out_size, s.grid, s.scales, s.rotations_deg, fast=self.optimize)
        maps = self.predict_maps(ps.patches)
        sp = None if spacing_mm is None else (float(spacing_mm[0]), float(spacing_mm[1]))
        if sp is not None and not (np.all(np.isfinite(sp)) and min(sp) > 0):
            sp = None  # NaN spacing = unknown (the batch convention)
        res = localize(maps, ps.affines, ps.vertebra_index, cs, ang, size, s, lv, sp, img.shape)
        inv = np.argsort(order)
        if spacing_source is None or sp is None:
            spacing_source = "unknown" if sp is None else "sidecar"
        return CornerPrediction(
            corners_px=res.corners_px[inv], sigma_px=res.sigma_px[inv], used_prior=res.used_prior[inv],
            centres_px=c, orientations_deg=ang[inv], sizes_px=size[inv], spacing_mm=sp, spacing_source=spacing_source,
            levels=None if levels is None else [str(x) for x in levels],
            maps=maps if return_maps else None,
            patches=PatchSet(ps.patches, ps.affines, order[ps.vertebra_index]) if return_maps else None,
        )

    def calibrated(self, pred: CornerPrediction) -> tuple[np.ndarray | None, np.ndarray | None, str | None]:
        """Uncertainty classes and conformal radii of the corners, from the model's calibration.

        Both act on ``sigma_p = sqrt(2) * sigma`` (radial, the per-axis spread of both axes combined) in
        the calibration's units: mm needs the spacing; without it no class / radius is given.

        Returns:
            ``(classes, radii, radius_unit)``: ``(V, 4)`` class names (``"unknown"`` where sigma_p is not
            known in the thresholds' units) or None without thresholds; ``(V, 4)`` radii (NaN where
            none) or None without a conformal calibration; the radii's unit.
        """
        from monai_spine.data.prediction import CORNER_SIGMA_P_FACTOR

        def sigma_p(units: str) -> np.ndarray:
            s = pred.sigma_px if units == "px" else pred.sigma_mm
            if s is None:
                return np.full(pred.sigma_px.shape, np.nan)
            return CORNER_SIGMA_P_FACTOR * np.asarray(s, dtype=np.float64)

        classes = radii = unit = None
        if self.thresholds is not None:
            from monai_spine.uncertainty.classes import class_names

            sp = sigma_p(str(self.thresholds.units))
            classes = class_names(self.thresholds.classify(sp, ["corner"] * sp.shape[-1]))
        if self.conformal is not None:
            cal = self.conformal
            radii = np.asarray(cal.radii(sigma_p(str(cal.sigma_units)), ["corner"] * pred.sigma_px.shape[-1]),
                               dtype=np.float64)
            unit = str(cal.error_unit)
        return classes, radii, unit

    def to_json(self, pred: CornerPrediction, image: str | None = None) -> dict[str, Any]:
        """JSON-ready result (format ``monai-spine-corners``): per vertebra and corner x, y and sigma in
        px and, when the spacing is known, in mm (``null`` otherwise); with a calibration
        (:meth:`calibrated`) also ``uncertainty_class`` and ``conformal_radius_<unit>`` per corner and
        the ``thresholds`` / ``conformal`` blocks."""
        mm, smm = pred.corners_mm, pred.sigma_mm
        classes, radii, r_unit = self.calibrated(pred)
        verts = []
        for v in range(len(pred.corners_px)):
            corners = []
            for k, name in enumerate(self.spec.corner_names):
                x, y = pred.corners_px[v, k]
                ok = bool(np.isfinite(x) and np.isfinite(y))
                corners.append({
                    "name": name,
                    "x_px": float(x) if ok else None, "y_px": float(y) if ok else None,
                    "x_mm": float(mm[v, k, 0]) if mm is not None and ok else None,
                    "y_mm": float(mm[v, k, 1]) if mm is not None and ok else None,
                    "sigma_px": float(pred.sigma_px[v, k]) if np.isfinite(pred.sigma_px[v, k]) else None,
                    "sigma_mm": float(smm[v, k]) if smm is not None and np.isfinite(smm[v, k]) else None,
                    "from_prior": bool(pred.used_prior[v, k]),
                })
                if classes is not None:
                    corners[-1]["uncertainty_class"] = str(classes[v, k])
                if radii is not None:
                    corners[-1][f"conformal_radius_{r_unit}"] = float(radii[v, k]) if np.isfinite(radii[v, k]) else None
            verts.append({
                "index": v, "level": None if pred.levels is None else pred.levels[v],
                "centre_px": [float(t) for t in pred.centres_px[v]],
                "orientation_deg": float(pred.orientations_deg[v]), "size_px": float(pred.sizes_px[v]),
                "corners": corners,
            })
        return {
            "format": RESULT_FORMAT, "version": 1, "image": image, "scheme": self.spec.scheme,
            "method": "probabilistic spatial regression (Al Arif et al., BMVC 2017), semi-automatic from clicked centres",
            "spacing_mm": None if pred.spacing_mm is None else list(pred.spacing_mm),
            "spacing_source": pred.spacing_source,
            "units_note": "mm values are null when the spacing is unknown; sigma is the per-axis RMS spread of the corner's accumulated map",
            "vertebrae": verts,
            **({"thresholds": self.thresholds.to_dict()} if self.thresholds is not None else {}),
            **({"conformal": self.conformal.result_block("sqrt(2) x per-axis sigma")}
               if self.conformal is not None else {}),
        }

    @staticmethod
    def dumps(result: dict[str, Any]) -> str:
        """Strict JSON text of a :meth:`to_json` result."""
        return json.dumps(result, indent=1, allow_nan=False)


# ---------------------------------------------------------------------------------------------- CLI
def parse_centres(text: str) -> np.ndarray:
    """``"x1,y1;x2,y2;..."`` -> ``(V, 2)`` float array (px); ``ValueError`` on a malformed string."""
    pts = []
    for i, part in enumerate(p for p in str(text).replace(" ", "").split(";") if p):
        xy = part.split(",")
        try:
            if len(xy) != 2:
                raise ValueError
            pts.append((float(xy[0]), float(xy[1])))
        except ValueError:
            raise ValueError(f"--centres: item {i + 1} {part!r} is not 'x,y' (expected 'x1,y1;x2,y2;...')") from None
    if not pts:
        raise ValueError("--centres: no centre given (expected 'x1,y1;x2,y2;...')")
    arr = np.asarray(pts, dtype=np.float64)
    if not np.all(np.isfinite(arr)):
        raise ValueError("--centres: centres must be finite numbers")
    return arr


def default_ckpt_dir() -> Path:
    """``<repo>/bundle/models/heatmap``, where ``configs/heatmap_train.json`` stores the model by default."""
    return Path(__file__).resolve().parents[2] / "bundle" / "models" / "heatmap"
