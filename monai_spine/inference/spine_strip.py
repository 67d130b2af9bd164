"""The spine-strip refiner: a second, finer look along the coarse detector's spine that places every level.

The coarse detector's levels (seen and inferred, every level of the region) give the spine's course; the
refiner cuts the straightened strip along it (:class:`~monai_spine.codecs.spine_strip.SpineStrip`,
``rows`` x ``width`` pixels at about twice the coarse detector's resolution on AASCE films),
:class:`~monai_spine.networks.spine_strip.SpineStripNet` (a MONAI ``BasicUNet`` and a GRU along the strip)
gives its "vertebra centre" heatmap and the level index of every row, and
:func:`~monai_spine.codecs.spine_strip.decode_strip_levels` places the L levels along it. A level whose
heat at its place is below ``score_threshold`` is not seen there: it is reported as inferred.

The refiner lives in the detector's model folder (``spine_strip_model.json`` and its weights beside
``detector_model.json``) and is used by
:meth:`~monai_spine.inference.detector.VertebraDetector.detect` when present.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from monai_spine.codecs.spine_strip import SpineStrip, decode_strip_levels
from monai_spine.inference.model_zoo import load_strict_weights
from monai_spine.transforms.intensity import scale_film_intensities

__all__ = ["SpineStripSpec", "SpineStripRefiner", "STRIP_SPEC_FILE"]

STRIP_SPEC_FILE = "spine_strip_model.json"
_FORMAT = "monai-spine-spine-strip"


@dataclass
class SpineStripSpec:
    """What a trained spine-strip refiner needs at inference time (saved as ``spine_strip_model.json``).

    Attributes:
        levels: the region's levels, top to bottom (the detector's).
        rows, width: strip size in pixels.
        ext_levels: arc extension above the first and below the last level, in level steps.
        smooth_levels: arc smoothing, in level spacings.
        features: ``BasicUNet`` features (six ints).
        embed, hidden, band_half_width, pool: the level reader's sizes
            (:class:`~monai_spine.networks.spine_strip.SpineStripNet`); ``band_half_width`` is also the
            band the decoding reads the heat in.
        sigma_px: target Gaussian, strip pixels.
        intensity_percentiles: film intensity scaling (as the detector's).
        score_threshold: strip heat below which a level is reported inferred.
        decode_kwargs: options of :func:`~monai_spine.codecs.spine_strip.decode_strip_levels`.
        checkpoint_file: the weights, beside the spec.
        meta: free-form record (training command, data, metrics).
    """

    levels: tuple[str, ...]
    rows: int = 768
    width: int = 96
    ext_levels: tuple[float, float] = (2.5, 2.5)
    smooth_levels: float = 0.6
    features: tuple[int, ...] = (8, 16, 32, 64, 128, 8)
    embed: int = 8
    hidden: int = 32
    band_half_width: int = 24
    pool: int = 4
    sigma_px: float = 2.5
    intensity_percentiles: tuple[float, float] = (0.5, 99.5)
    score_threshold: float = 0.1
    decode_kwargs: dict[str, Any] = field(default_factory=dict)
    checkpoint_file: str = "spine_strip.pt"
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.levels = tuple(str(v) for v in self.levels)
        if len(self.levels) < 2:
            raise ValueError(f"SpineStripSpec: needs at least two levels, got {list(self.levels)}")
        self.features = tuple(int(v) for v in self.features)
        if len(self.features) != 6:
            raise ValueError(f"SpineStripSpec: features must be six ints (BasicUNet), got {list(self.features)}")
        self.ext_levels = (float(self.ext_levels[0]), float(self.ext_levels[1]))
        self.intensity_percentiles = (float(self.intensity_percentiles[0]), float(self.intensity_percentiles[1]))
        self.decode_kwargs = dict(self.decode_kwargs or {})

    def build_network(self) -> torch.nn.Module:
        """The strip's :class:`~monai_spine.networks.spine_strip.SpineStripNet` (heatmap + level index)."""
        from monai_spine.networks.spine_strip import SpineStripNet

        return SpineStripNet(self.features, self.embed, self.hidden, self.band_half_width, self.pool)

    def strip(self, centres_px: Any) -> SpineStrip:
        """The strip through a film's level centres ``(L, 2)``."""
        return SpineStrip.from_centres(centres_px, self.rows, self.width, self.ext_levels, self.smooth_levels)

    def to_dict(self) -> dict[str, Any]:
        return {"format": _FORMAT, "version": 1, "levels": list(self.levels), "rows": self.rows, "width": self.width,
                "ext_levels": list(self.ext_levels), "smooth_levels": self.smooth_levels,
                "features": list(self.features), "embed": self.embed, "hidden": self.hidden,
                "band_half_width": self.band_half_width, "pool": self.pool, "sigma_px": self.sigma_px,
                "intensity_percentiles": list(self.intensity_percentiles), "score_threshold": self.score_threshold,
                "decode_kwargs": self.decode_kwargs, "checkpoint_file": self.checkpoint_file, "meta": self.meta}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str = "<dict>") -> SpineStripSpec:
        if d.get("format") != _FORMAT:
            raise ValueError(f"{source}: not a spine-strip spec (format {d.get('format')!r}, expected {_FORMAT!r})")
        try:
            return cls(levels=tuple(d["levels"]), rows=int(d["rows"]), width=int(d["width"]),
                       ext_levels=tuple(d["ext_levels"]), smooth_levels=float(d["smooth_levels"]),
                       features=tuple(d["features"]), embed=int(d["embed"]), hidden=int(d["hidden"]),
                       band_half_width=int(d["band_half_width"]), pool=int(d["pool"]), sigma_px=float(d["sigma_px"]),
                       intensity_percentiles=tuple(d["intensity_percentiles"]),
                       score_threshold=float(d["score_threshold"]), decode_kwargs=dict(d.get("decode_kwargs", {})),
                       checkpoint_file=str(d["checkpoint_file"]), meta=dict(d.get("meta", {})))
        except KeyError as e:
            raise KeyError(f"{source}: spine-strip spec misses {e.args[0]!r}") from None

    def save(self, model_dir: str | os.PathLike) -> Path:
        path = Path(model_dir) / STRIP_SPEC_FILE
        path.write_text(json.dumps(self.to_dict(), indent=1), encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> SpineStripSpec:
        p = Path(path)
        if p.is_dir():
            p = p / STRIP_SPEC_FILE
        return cls.from_dict(json.loads(p.read_text(encoding="utf-8")), str(p))


class SpineStripRefiner:
    """A trained spine-strip refiner: every level of the region placed along the coarse spine."""

    def __init__(self, network: torch.nn.Module, spec: SpineStripSpec) -> None:
        self.network = network.eval()
        self.spec = spec

    @classmethod
    def from_dir(cls, model_dir: str | os.PathLike) -> SpineStripRefiner:
        """Load ``spine_strip_model.json`` and its weights from a model folder.

        Raises:
            FileNotFoundError: the weights named in the spec are missing.
            ValueError: the weights do not fit the spec's network.
        """
        spec = SpineStripSpec.load(model_dir)
        net = load_strict_weights(spec.build_network(), Path(model_dir) / spec.checkpoint_file,
                                  f"the spine-strip spec beside them (features {list(spec.features)})",
                                  hint=f"the spine-strip weights named in {STRIP_SPEC_FILE} are missing")
        return cls(net, spec)

    @staticmethod
    def exists(model_dir: str | os.PathLike) -> bool:
        return (Path(model_dir) / STRIP_SPEC_FILE).is_file()

    @staticmethod
    def spacing_px(centres_px: np.ndarray, profile: np.ndarray) -> float:
        """The film's level spacing (film pixels per median profile step) from the coarse centres.

        The median over consecutive finite centres of their distance per profile unit, times the profile's
        median.
        """
        c = np.asarray(centres_px, dtype=np.float64)
        prof = np.asarray(profile, dtype=np.float64).reshape(-1)
        idx = np.flatnonzero(np.all(np.isfinite(c), 1))
        d = np.hypot(*(c[idx[1:]] - c[idx[:-1]]).T)
        units = np.array([prof[a:b].sum() for a, b in zip(idx[:-1], idx[1:])])
        return float(np.median(d / units)) * float(np.median(prof))

    @torch.inference_mode()
    def read(self, film: np.ndarray, strip: SpineStrip) -> tuple[np.ndarray, np.ndarray]:
        """``(heat (rows, width), level (rows,))`` of the strip cut from a scaled film: the heatmap's
        probabilities and the level index of each row."""
        out = self.network(torch.from_numpy(strip.sample(film))[None, None])[0].double()
        return torch.sigmoid(out[0]).numpy(), out[1, :, strip.width // 2].numpy()

    def refine(self, image: Any, centres_px: Any, profile: Any, level_y_frac: Any = None,
               film: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Every level's centre along the strip through the coarse centres.

        Args:
            image: ``(1, H, W)`` or ``(H, W)`` raw film.
            centres_px: ``(L, 2)`` coarse centres ``(x, y)`` film pixels, every level of the region
                (seen and inferred; NaN rows are skipped when cutting the strip).
            profile: ``(L - 1,)`` the detector's spacing profile.
            level_y_frac: ``(L,)`` the detector's level heights on the film, or None.
            film: the image already scaled by the spec's ``intensity_percentiles``
                (:func:`~transforms.intensity.scale_film_intensities`), or None to scale it here.

        Returns:
            ``(centres_px (L, 2), scores (L,))``: the refined centres and each level's strip heat.

        Raises:
            ValueError: ``centres_px`` is not ``(L, 2)`` for the spec's levels.
        """
        c = np.asarray(centres_px, dtype=np.float64)
        if c.shape != (len(self.spec.levels), 2):
            raise ValueError(f"SpineStripRefiner: centres must be ({len(self.spec.levels)}, 2) for levels "
                             f"{self.spec.levels[0]}-{self.spec.levels[-1]}, got shape {c.shape}")
        if film is None:
            film = scale_film_intensities(image, self.spec.intensity_percentiles)
        elif np.shape(film) != np.shape(image)[-2:]:
            raise ValueError(f"SpineStripRefiner: the scaled film {np.shape(film)} is not the image's "
                             f"{np.shape(image)[-2:]}")
        strip = self.spec.strip(c)
        prof = np.asarray(profile, dtype=np.float64).reshape(-1)
        spacing = self.spacing_px(c, prof)
        heat, level = self.read(film, strip)
        return self.decode(heat, level, strip, prof, spacing, level_y_frac, film.shape[0])

    def decode(self, heat: np.ndarray, level: np.ndarray, strip: SpineStrip, profile: Any, spacing_px: float,
               level_y_frac: Any, film_height_px: float, **overrides: Any) -> tuple[np.ndarray, np.ndarray]:
        """:func:`~monai_spine.codecs.spine_strip.decode_strip_levels` of one :meth:`read` with the spec's
        options (``overrides`` replace some of them: the validation choice of the options)."""
        kw = {"band_half_width": self.spec.band_half_width, **self.spec.decode_kwargs, **overrides}
        return decode_strip_levels(heat, strip, profile, spacing_px, level_y_frac, film_height_px, level_rows=level,
                                   **kw)
