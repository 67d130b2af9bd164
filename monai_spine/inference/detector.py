"""Level-labelled vertebra boxes and centres with scores for a whole radiograph.

:class:`VertebraDetector` runs the bundle's detector (``bundle/configs/detector_train.json``) on a
radiograph exactly as the bundle's validation does: intensities scaled to [0, 1] by the 0.5 / 99.5
percentiles, letterbox resize to the network size (:class:`transforms.detection.LetterboxResize`),
:class:`~monai_spine.networks.detector.VertebraDetectorNet`, decoding per level
(:func:`monai_spine.codecs.detection.decode_detections`) and the ``det_to_image`` affine back to the
radiograph's pixels. The boxes can feed :class:`~monai_spine.inference.regressor.KeypointPredictor`
in place of annotation boxes.

Everything besides the weights is in :class:`DetectorSpec`, saved by the bundle as
``detector_model.json`` beside the checkpoint ``model.pt``. Two optional helpers of the ``chain``
decoding live in the same folder and are loaded with it: the level anchor
(:mod:`~monai_spine.inference.level_anchor`) and the spine-strip refiner
(:mod:`~monai_spine.inference.spine_strip`, which places every level again along the straightened
spine after the chain is complete)::

    det = VertebraDetector.from_checkpoint("models/detector")
    levels, centres_px, boxes_px, scores = det.detect(image, spacing_mm)   # image (1, H, W)
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from monai_spine.data.annotation import atomic_write_text
from monai_spine.data.keypoints import get_region, px_to_mm
from monai_spine.data.patches import image_2d
from monai_spine.codecs.chain import complete_chain
from monai_spine.codecs.detection import decode_detections
from monai_spine.networks.detector import DEFAULT_FEATURES, VertebraDetectorNet
from monai_spine.inference.level_anchor import LevelAnchor
from monai_spine.inference.model_zoo import load_strict_weights
from monai_spine.inference.spine_strip import SpineStripRefiner
from monai_spine.transforms.detection import LetterboxResize, boxes_to_image_px, points_to_image_px

__all__ = ["DetectorSpec", "Detections", "VertebraDetector", "complete_levels", "SPEC_FILE", "CHECKPOINT_FILE", "MODEL_FORMAT"]

SPEC_FILE = "detector_model.json"
CHECKPOINT_FILE = "model.pt"
MODEL_FORMAT = "monai-spine-detector"


@dataclass
class DetectorSpec:
    """Everything besides the weights that a trained detector needs at inference time.

    Attributes:
        region: ``cervical``, ``lumbar`` or ``ap``; gives the levels.
        spatial_size: ``(H, W)`` network input, divisible by 16.
        features: the six BasicUNet feature sizes.
        sigma_px: Gaussian sigma of the training targets, net pixels (informative).
        score_threshold: peaks below it are not detections.
        decode_method: ``"sequence"`` (order-preserving level assignment) or ``"argmax"`` (each level
            on its own) for a network with one heatmap per level; ``"chain"`` for a network with one
            "any vertebra" heatmap whose peaks get levels from their spacing along the spine
            (:func:`~monai_spine.codecs.chain.assign_levels_chain`); see
            :func:`~monai_spine.codecs.detection.decode_detections`.
        nms_radius_px: local-maximum window half-size of the ``sequence`` decoding, net pixels.
        gap_penalty: cost of a level or vertebra skipped inside the sequence (``sequence`` decoding).
        keep_mm_aspect: letterbox with square millimetres per net pixel when the spacing is known.
        intensity_percentiles: ``(lower, upper)`` percentiles scaled to 0 and 1 (clipped).
        spacing_profile: ``(L - 1,)`` mean relative distance between consecutive levels, measured on
            the training split (``chain`` decoding; required there).
        complete: output every level of the region: levels the detector did not see are filled along
            the spine (:func:`~monai_spine.codecs.chain.complete_chain`) and flagged ``inferred``.
        chain_kwargs: options of :func:`~monai_spine.codecs.chain.assign_levels_chain`.
        level_y_frac: ``(L,)`` mean height of each level's centre as a fraction of the film height on the
            training films (``chain``; see :func:`~monai_spine.codecs.chain.level_height_fractions`):
            anchors the levels for films cropped like the training films. None: not used.
        length_frac_range: ``(lo, hi)``: the span from the first to the last level as a fraction of the
            film's height on the training films (``chain``); a film whose detected spine is far outside it
            (below ``lo / 1.5`` or above ``hi * 1.5``) gets a warning that it may be another view or region.
        meta: free-form record.
    """

    region: str = "cervical"
    spatial_size: tuple[int, int] = (256, 256)
    features: tuple[int, ...] = DEFAULT_FEATURES
    sigma_px: float = 2.0
    score_threshold: float = 0.2
    decode_method: str = "sequence"
    nms_radius_px: int = 2
    gap_penalty: float = 0.5
    keep_mm_aspect: bool = True
    intensity_percentiles: tuple[float, float] = (0.5, 99.5)
    spacing_profile: tuple[float, ...] | None = None
    complete: bool = False
    chain_kwargs: dict[str, Any] = field(default_factory=dict)
    length_frac_range: tuple[float, float] | None = None
    level_y_frac: tuple[float, ...] | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        get_region(self.region)
        size = tuple(int(s) for s in np.ravel(self.spatial_size))
        if len(size) == 1:
            size = (size[0], size[0])
        if len(size) != 2 or min(size) < 16 or size[0] % 16 or size[1] % 16:
            raise ValueError(f"spatial_size must be (H, W), multiples of 16, got {self.spatial_size!r}")
        self.spatial_size = size  # type: ignore[assignment]
        self.features = tuple(int(f) for f in self.features)
        if len(self.features) != 6:
            raise ValueError(f"features must be six ints (BasicUNet), got {self.features!r}")
        if not 0.0 < float(self.score_threshold) < 1.0:
            raise ValueError(f"score_threshold must be in (0, 1), got {self.score_threshold}")
        self.score_threshold = float(self.score_threshold)
        if self.decode_method not in ("sequence", "argmax", "chain"):
            raise ValueError(f"decode_method must be 'sequence', 'argmax' or 'chain', got {self.decode_method!r}")
        if self.spacing_profile is not None:
            prof = tuple(float(v) for v in np.ravel(self.spacing_profile))
            if len(prof) != len(self.levels) - 1 or not all(np.isfinite(prof)) or min(prof) <= 0:
                raise ValueError(f"spacing_profile must be {len(self.levels) - 1} positive numbers (region "
                                 f"{self.region!r}), got {self.spacing_profile!r}")
            self.spacing_profile = prof
        if self.decode_method == "chain" and self.spacing_profile is None:
            raise ValueError("decode_method 'chain' needs a spacing_profile (measured on the training split)")
        self.complete = bool(self.complete)
        if self.level_y_frac is not None:
            ly = tuple(float(v) for v in np.ravel(self.level_y_frac))
            if len(ly) != len(self.levels) or not all(np.isfinite(ly)) or any(np.diff(ly) <= 0):
                raise ValueError(f"level_y_frac must be {len(self.levels)} increasing numbers, got {self.level_y_frac!r}")
            self.level_y_frac = ly
        if self.length_frac_range is not None:
            lo_f, hi_f = (float(v) for v in self.length_frac_range)
            if not 0.0 < lo_f <= hi_f:
                raise ValueError(f"length_frac_range must be 0 < lo <= hi, got {self.length_frac_range!r}")
            self.length_frac_range = (lo_f, hi_f)
        self.chain_kwargs = dict(self.chain_kwargs or {})
        self.nms_radius_px = int(self.nms_radius_px)
        if self.nms_radius_px < 1:
            raise ValueError(f"nms_radius_px must be >= 1, got {self.nms_radius_px}")
        self.gap_penalty = float(self.gap_penalty)
        if not self.gap_penalty >= 0:
            raise ValueError(f"gap_penalty must be >= 0, got {self.gap_penalty}")
        self.sigma_px = float(self.sigma_px)
        self.keep_mm_aspect = bool(self.keep_mm_aspect)
        lo, hi = (float(p) for p in self.intensity_percentiles)
        if not 0.0 <= lo < hi <= 100.0:
            raise ValueError(
                f"intensity_percentiles must be 0 <= lower < upper <= 100, got {self.intensity_percentiles!r}"
            )
        self.intensity_percentiles = (lo, hi)

    @property
    def levels(self) -> tuple[str, ...]:
        """The region's levels, one heatmap channel each."""
        return get_region(self.region).levels

    @property
    def num_heatmaps(self) -> int:
        """Heatmap-like channels of the network: for ``chain`` 2 ("any vertebra" heatmap and the level
        position, :class:`~monai_spine.losses.detection.ChainDetectionLoss`), else one heatmap per level."""
        return 2 if self.decode_method == "chain" else len(self.levels)

    def build_network(self) -> VertebraDetectorNet:
        """A fresh :class:`VertebraDetectorNet` for this spec."""
        return VertebraDetectorNet(num_levels=self.num_heatmaps, features=self.features)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able record."""
        return {
            "format": MODEL_FORMAT, "version": 1, "region": self.region, "levels": list(self.levels),
            "spatial_size": list(self.spatial_size), "features": list(self.features), "sigma_px": self.sigma_px,
            "score_threshold": self.score_threshold, "decode_method": self.decode_method,
            "nms_radius_px": self.nms_radius_px, "gap_penalty": self.gap_penalty, "keep_mm_aspect": self.keep_mm_aspect,
            "intensity_percentiles": list(self.intensity_percentiles), "checkpoint_file": CHECKPOINT_FILE,
            "spacing_profile": None if self.spacing_profile is None else list(self.spacing_profile),
            "complete": self.complete, "chain_kwargs": self.chain_kwargs, "num_heatmaps": self.num_heatmaps,
            "length_frac_range": None if self.length_frac_range is None else list(self.length_frac_range),
            "level_y_frac": None if self.level_y_frac is None else list(self.level_y_frac),
            "meta": self.meta,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "<dict>") -> DetectorSpec:
        """Inverse of :meth:`to_dict`; ``ValueError`` naming ``source`` on a malformed record."""
        if not isinstance(d, dict) or d.get("format") != MODEL_FORMAT:
            raise ValueError(f"{source}: not a {MODEL_FORMAT} record")
        keys = ("region", "spatial_size", "features", "sigma_px", "score_threshold", "decode_method", "nms_radius_px",
                "gap_penalty", "keep_mm_aspect",
                "intensity_percentiles", "spacing_profile", "complete", "chain_kwargs", "length_frac_range", "level_y_frac", "meta")
        try:
            spec = cls(**{k: d[k] for k in keys if k in d})
        except (TypeError, ValueError, KeyError) as e:
            raise ValueError(f"{source}: {e}") from None
        if "levels" in d and list(d["levels"]) != list(spec.levels):
            raise ValueError(f"{source}: levels {d['levels']} do not match region {spec.region!r} {list(spec.levels)}")
        return spec

    def save(self, ckpt_dir: str | os.PathLike) -> Path:
        """Write ``detector_model.json`` into ``ckpt_dir`` (created); returns its path."""
        d = Path(ckpt_dir)
        d.mkdir(parents=True, exist_ok=True)
        path = d / SPEC_FILE
        atomic_write_text(path, json.dumps(self.to_dict(), indent=1))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> DetectorSpec:
        """Read a spec file, or ``detector_model.json`` in a folder.

        Raises:
            FileNotFoundError: no spec there.
        """
        p = Path(path)
        if p.is_dir():
            p = p / SPEC_FILE
        if not p.is_file():
            raise FileNotFoundError(f"detector spec {p} does not exist: train the detector bundle first")
        with open(p, encoding="utf-8") as f:
            return cls.from_dict(json.load(f), source=str(p))

    def file_paths(self, ckpt_dir: str | os.PathLike) -> list[str]:
        """The spec file path in ``ckpt_dir`` (MLflow artifact list)."""
        return [str(Path(ckpt_dir) / SPEC_FILE)]


@dataclass
class Detections:
    """The detected vertebrae of one radiograph, top level first (in the region's order).

    Unpacks as ``levels, centres_px, boxes_px, scores = detections``.

    Attributes:
        levels: N level names.
        centres_px: ``(N, 2)`` ``(x, y)`` vertebral-body centres, image pixels.
        boxes_px: ``(N, 4)`` ``(x0, y0, x1, y1)`` boxes, image pixels.
        scores: ``(N,)`` in [0, 1]: the heatmap peak of each vertebra (for the ``sequence`` decoding the
            maximum over the level heatmaps, for ``argmax`` the level's own; with a spine-strip refiner
            the strip's heat at the level).
        spacing_mm: ``(sx, sy)`` or None when unknown.
        spacing_source: where the spacing came from.
        inferred: ``(N,)`` bool: the vertebra was not seen by the detector but placed along the spine
            between or beyond the seen ones (a complete spine, :attr:`DetectorSpec.complete`); its score
            is 0 and its box is the size of its nearest seen neighbour's. None: all seen.
        warnings: sentences about the film as a whole (it may be another view or region than the model's).
    """

    levels: list[str]
    centres_px: np.ndarray
    boxes_px: np.ndarray
    scores: np.ndarray
    spacing_mm: tuple[float, float] | None = None
    spacing_source: str = "unknown"
    inferred: np.ndarray | None = None
    warnings: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.inferred is None:
            self.inferred = np.zeros(len(self.levels), dtype=bool)
        self.inferred = np.asarray(self.inferred, dtype=bool).reshape(-1)
        if self.inferred.shape[0] != len(self.levels):
            raise ValueError(f"Detections: {len(self.levels)} levels but {self.inferred.shape[0]} inferred flags")

    def __iter__(self) -> Iterator[Any]:
        return iter((self.levels, self.centres_px, self.boxes_px, self.scores))

    def __len__(self) -> int:
        return len(self.levels)

    @property
    def centres_mm(self) -> np.ndarray | None:
        """``(N, 2)`` centres in mm from the image origin, or None when the spacing is unknown."""
        return None if self.spacing_mm is None else px_to_mm(self.centres_px, self.spacing_mm)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able record: one entry per vertebra with ``level``, ``centre_px``, ``box_px``, ``score``."""
        return {
            "spacing_mm": list(self.spacing_mm) if self.spacing_mm is not None else None,
            "spacing_source": self.spacing_source,
            "warnings": list(self.warnings),
            "vertebrae": [
                {"level": lev, "centre_px": [float(v) for v in c], "box_px": [float(v) for v in b], "score": float(s),
                 "inferred": bool(f)}
                for lev, c, b, s, f in zip(self.levels, self.centres_px, self.boxes_px, self.scores, self.inferred)
            ],
        }


def complete_levels(
    centres_px: np.ndarray, boxes_px: np.ndarray, detected: np.ndarray, profile: Sequence[float] | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every level of the region from the detected ones: ``(centres (L, 2), boxes (L, 4), inferred (L,))``.

    Undetected levels are placed along the spine by
    :func:`~monai_spine.codecs.chain.complete_chain` (``profile``: the spec's spacing profile; None:
    equal spacing) and get the box size of the nearest detected level, centred on the placed centre.
    """
    n_lev = centres_px.shape[0]
    det = np.asarray(detected, dtype=bool) & np.all(np.isfinite(centres_px), -1)
    prof = np.ones(n_lev - 1) if profile is None else np.asarray(profile, dtype=np.float64)
    c = np.where(det[:, None], centres_px, np.nan)
    filled, inferred = complete_chain(c, prof)
    boxes = np.where(det[:, None], boxes_px, np.nan).astype(np.float64)
    idx = np.flatnonzero(det)
    for k in np.flatnonzero(inferred & np.all(np.isfinite(filled), -1)):
        j = idx[np.argmin(np.abs(idx - k))]
        half = (boxes_px[j, 2:] - boxes_px[j, :2]) / 2
        if not np.all(np.isfinite(half)):
            half = np.zeros(2)
        boxes[k] = np.concatenate([filled[k] - half, filled[k] + half])
    return filled, boxes, inferred


class VertebraDetector:
    """Detect and label the vertebrae of whole radiographs.

    Args:
        network: a :class:`VertebraDetectorNet` with weights loaded (L = ``len(spec.levels)``).
        spec: the :class:`DetectorSpec` it was trained with.
        device: torch device.
        anchor: a :class:`~monai_spine.inference.level_anchor.LevelAnchor` for the ``chain`` decoding (its
            levels must be the spec's), or None.
        strip: a :class:`~monai_spine.inference.spine_strip.SpineStripRefiner` that places every level
            again along the spine at a finer scale (its levels must be the spec's), or None.
    """

    def __init__(self, network: torch.nn.Module, spec: DetectorSpec, device: str | torch.device = "cpu",
                 anchor: LevelAnchor | None = None, strip: SpineStripRefiner | None = None) -> None:
        self.spec = spec
        self.device = torch.device(device)
        self.network = network.to(self.device).eval()
        self.resizer = LetterboxResize(spec.spatial_size, keep_mm_aspect=spec.keep_mm_aspect)
        if anchor is not None and tuple(anchor.spec.groups.levels) != tuple(spec.levels):
            raise ValueError(f"the level anchor's levels {list(anchor.spec.groups.levels)} are not the detector's "
                             f"{list(spec.levels)}")
        self.anchor = anchor
        if strip is not None and tuple(strip.spec.levels) != tuple(spec.levels):
            raise ValueError(f"the spine-strip refiner's levels {list(strip.spec.levels)} are not the detector's "
                             f"{list(spec.levels)}")
        self.strip = strip

    @property
    def levels(self) -> tuple[str, ...]:
        return self.spec.levels

    @property
    def score_threshold(self) -> float:
        return self.spec.score_threshold

    @classmethod
    def from_checkpoint(
        cls, path: str | os.PathLike, spec: DetectorSpec | None = None, device: str | torch.device = "cpu",
        use_anchor: bool = True, use_strip: bool = True,
    ) -> VertebraDetector:
        """Load a trained detector.

        Args:
            path: the bundle's detector checkpoint folder (holding ``model.pt`` and
                ``detector_model.json``) or the checkpoint file itself (the spec beside it).
            spec: the spec, if it is not stored beside the checkpoint.
            device: torch device.
            use_anchor: load the level anchor stored beside the checkpoint
                (``level_anchor_model.json``), if there is one.
            use_strip: load the spine-strip refiner stored beside the checkpoint
                (``spine_strip_model.json``), if there is one.

        Raises:
            FileNotFoundError: no checkpoint or no spec.
        """
        p = Path(path)
        ckpt = p / CHECKPOINT_FILE if p.is_dir() else p
        if not ckpt.is_file():
            raise FileNotFoundError(f"detector checkpoint {ckpt} does not exist: train the detector bundle first")
        spec = spec or DetectorSpec.load(ckpt.parent)
        net = load_strict_weights(spec.build_network(), ckpt,
                                  f"the detector spec beside them (region {spec.region!r}, {spec.num_heatmaps} "
                                  f"heatmap(s), features {list(spec.features)})")
        anchor = LevelAnchor.from_dir(ckpt.parent) if use_anchor and LevelAnchor.exists(ckpt.parent) else None
        strip = (SpineStripRefiner.from_dir(ckpt.parent)
                 if use_strip and SpineStripRefiner.exists(ckpt.parent) else None)
        return cls(net, spec, device, anchor, strip)

    def preprocess(self, image: Any, spacing_mm: Sequence[float] | None = None, film: np.ndarray | None = None
                   ) -> tuple[np.ndarray, np.ndarray]:
        """Scale intensities and letterbox: ``(net_image (1, H_net, W_net), det_to_image (3, 3))``.

        ``film``: the image already scaled by :meth:`scaled_film` (it is not scaled again).
        """
        img = image_2d(image, "VertebraDetector")
        if film is None:
            film = self.scaled_film(img)
        elif np.shape(film) != img.shape:
            raise ValueError(f"VertebraDetector: the scaled film {np.shape(film)} is not the image's {img.shape}")
        return self.resizer(np.asarray(film, np.float32)[None], spacing_mm)

    def scaled_film(self, image: Any) -> np.ndarray:
        """``(H, W)`` float32: the spec's intensity percentiles scaled to 0 and 1, clipped, with MONAI's
        ``ScaleIntensityRangePercentiles`` as the bundle does: :func:`~transforms.intensity.scale_film_intensities`'
        numbers (the AP detector's and refiner's training scaling) up to float32 rounding (exactly on 8-bit
        films, where the percentiles fall on pixel values)."""
        from monai.transforms import ScaleIntensityRangePercentiles
        from monai.utils import convert_to_numpy

        img = image_2d(image, "VertebraDetector")
        lo, hi = self.spec.intensity_percentiles
        scale = ScaleIntensityRangePercentiles(lower=lo, upper=hi, b_min=0.0, b_max=1.0, clip=True)
        return convert_to_numpy(scale(img[None].copy()), dtype=np.float32)[0]

    @torch.inference_mode()
    def predict_levels(
        self, image: Any, spacing_mm: Sequence[float] | None = None, score_threshold: float | None = None,
        film: np.ndarray | None = None,
    ) -> dict[str, np.ndarray]:
        """Per-level decoding of one radiograph (see :func:`~monai_spine.codecs.detection.decode_detections`).

        Args:
            image: ``(1, H, W)`` or ``(H, W)`` raw radiograph.
            spacing_mm: ``(sx, sy)`` or None (unknown: the letterbox assumes square pixels).
            score_threshold: override of the spec's threshold.
            film: the image already scaled by :meth:`scaled_film`, or None.

        Returns:
            dict of ``(L, ...)`` arrays in image pixels: ``scores``, ``centres_px``, ``boxes_px`` (NaN
            for a level without a vertebra), ``detected``; and ``det_to_image`` ``(3, 3)``; with the
            ``chain`` decoding also every peak that took part, ``candidates_px`` ``(P, 2)`` and
            ``candidate_scores`` ``(P,)``.
        """
        net_img, a = self.preprocess(image, spacing_mm, film)
        h_img = float(tuple(np.shape(image))[-2])
        x = torch.as_tensor(net_img[None], device=self.device)
        pred = self.network(x)[0]
        thr = self.spec.score_threshold if score_threshold is None else float(score_threshold)
        peak_cost = None
        if self.anchor is not None and self.spec.decode_method == "chain":
            px_per_net = float(np.sqrt(abs(np.linalg.det(np.asarray(a, np.float64)[:2, :2]))))

            def peak_cost(points_net_px: np.ndarray, spacing_net_px: float) -> np.ndarray:
                return self.anchor.level_cost(image, points_to_image_px(points_net_px, a), spacing_net_px * px_per_net)

        dec = decode_detections(pred, thr, method=self.spec.decode_method, nms_radius_px=self.spec.nms_radius_px,
                                gap_penalty=self.spec.gap_penalty, profile=self.spec.spacing_profile,
                                chain_kwargs=self.spec.chain_kwargs, level_y_frac=self.spec.level_y_frac,
                                y_frac_map=(a[1, 1] / h_img, a[1, 2] / h_img), peak_cost=peak_cost)
        out = {
            "scores": dec["scores"], "detected": dec["detected"], "scale": dec.get("scale", np.nan),
            "centres_px": points_to_image_px(dec["centres_net_px"], a),
            "boxes_px": boxes_to_image_px(dec["boxes_net_px"], a),
            "det_to_image": a,
        }
        if "candidates_net_px" in dec:  # chain decoding: every peak that took part, levelled or not
            out["candidates_px"] = points_to_image_px(dec["candidates_net_px"], a)
            out["candidate_scores"] = dec["candidate_scores"]
        return out

    def detect(
        self, image: Any, spacing_mm: Sequence[float] | None = None, spacing_source: str | None = None
    ) -> Detections:
        """The detected vertebrae of one radiograph (levels in the region's order).

        Args:
            image: ``(1, H, W)`` or ``(H, W)`` raw radiograph (any intensity range).
            spacing_mm: ``(sx, sy)`` mm per pixel, or None when unknown.
            spacing_source: recorded in the result (default ``"unknown"`` without spacing, else
                ``"sidecar"``, as for a spacing given besides the image file).

        Returns:
            :class:`Detections`; unpacks as ``levels, centres_px (N, 2), boxes_px (N, 4), scores (N,)``.
        """
        sp = None
        if spacing_mm is not None:
            arr = np.asarray(spacing_mm, dtype=np.float64).reshape(-1)
            if arr.shape == (2,) and np.all(np.isfinite(arr)) and np.all(arr > 0):
                sp = (float(arr[0]), float(arr[1]))
        film = self.scaled_film(image)  # once: the coarse detector and the refiner read the same scaling
        res = self.predict_levels(image, sp, film=film)
        keep = res["detected"]
        warnings = self._view_warnings(res, np.asarray(image).shape[-2])
        centres, boxes, scores = res["centres_px"], res["boxes_px"], res["scores"]
        inferred = np.zeros(len(self.levels), dtype=bool)
        if self.spec.complete and keep.any():
            centres, boxes, inferred = complete_levels(centres, boxes, keep, self.spec.spacing_profile)
            scores = np.where(inferred, 0.0, scores)
            keep = np.all(np.isfinite(centres), -1)
            if self.strip is not None and keep.all():
                try:
                    centres, boxes, scores, inferred = self._along_strip(image, centres, boxes, film)
                except ValueError as e:  # e.g. two coarse centres on one point: no strip through them
                    warnings.append(f"the spine-strip refiner could not place the levels ({e}); the coarse "
                                    f"levels are kept")
        return Detections(
            levels=[lev for lev, k in zip(self.levels, keep) if k],
            centres_px=centres[keep], boxes_px=boxes[keep], scores=scores[keep],
            spacing_mm=sp, spacing_source=spacing_source or ("unknown" if sp is None else "sidecar"),
            inferred=inferred[keep], warnings=warnings,
        )

    def _along_strip(self, image: Any, centres_px: np.ndarray, boxes_px: np.ndarray, film: np.ndarray | None = None
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Every level placed again along the spine strip: ``(centres, boxes, scores, inferred)``.

        Boxes keep their coarse size, moved with their centre; a level whose strip heat is below the
        refiner's threshold is reported inferred (score 0). ``film``: :meth:`scaled_film` of the image,
        handed on when the refiner scales by the same percentiles.
        """
        same = tuple(self.strip.spec.intensity_percentiles) == tuple(self.spec.intensity_percentiles)
        c, heat = self.strip.refine(image, centres_px, self.spec.spacing_profile, self.spec.level_y_frac,
                                    film=film if same else None)
        boxes = np.asarray(boxes_px, dtype=np.float64) + np.tile(c - centres_px, (1, 2))
        inferred = heat < self.strip.spec.score_threshold
        return c, boxes, np.where(inferred, 0.0, heat), inferred

    def _view_warnings(self, res: dict[str, Any], height_px: int) -> list[str]:
        """Warnings that the film may not be what the model was trained on (few levels seen, odd spine span)."""
        out: list[str] = []
        n_lev, seen = len(self.levels), int(np.sum(res["detected"]))
        if seen < max(2, n_lev // 2):
            out.append(f"the detector saw only {seen} of the {n_lev} {self.spec.region} levels: the film may show "
                       f"another view or region than this model's ({self.spec.region}: {self.levels[0]}-{self.levels[-1]})")
        rng = self.spec.length_frac_range
        scale = float(np.asarray(res.get("scale", np.nan)))
        if rng is not None and self.spec.spacing_profile is not None and np.isfinite(scale) and height_px > 0:
            a = np.asarray(res["det_to_image"], dtype=np.float64)
            span = scale * float(np.hypot(a[0, 1], a[1, 1])) * float(sum(self.spec.spacing_profile)) / float(height_px)
            if span < rng[0] / 1.5 or span > rng[1] * 1.5:
                out.append(f"the detected {self.levels[0]}-{self.levels[-1]} span is {100 * span:.0f} % of the film "
                           f"height, against {100 * rng[0]:.0f}-{100 * rng[1]:.0f} % on the training films: the "
                           f"film may show another view or region than this model's")
        return out

    def detect_file(self, path: str | os.PathLike, spacing_mm: Sequence[float] | None = None) -> Detections:
        """Read a radiograph (DICOM, PNG, ...; spacing from its header or sidecar) and :meth:`detect`."""
        from monai_spine.data.readers import read_xray

        img = read_xray(path, spacing_mm=None if spacing_mm is None else [float(v) for v in spacing_mm])
        return self.detect(img.channel_first(), img.spacing_mm, img.spacing_source)
