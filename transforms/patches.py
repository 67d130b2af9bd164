"""Patch sampling and corner-probability targets for the probabilistic spatial regressor (Al Arif et al. 2017).

One radiograph with annotated vertebrae becomes a list of patches, each a ``(1, S, S)`` z-scored image
patch with its ``(1, S, S)`` target distribution (:func:`monai_spine.codecs.corner_maps.corner_maps` of every
annotated vertebra of the image). Patches are cut around each vertebra in the frame an operator's
click would give (:func:`monai_spine.data.frames.annotation_frames`: centre = mean of the
corners, orientation and size from the neighbouring centres), so training, validation and the
semi-automatic predictor see the same geometry.

* :class:`CornerPatches` / :class:`CornerPatchesd`: the regular test-time grid (deterministic, so a
  :class:`~monai.data.CacheDataset` caches its output): validation.
* :class:`RandCornerPatches` / :class:`RandCornerPatchesd`: the grid jittered (positions, scales,
  rotations within half their spacing) and ``num_samples`` patches drawn per image and call: training.

The dictionary transforms return a **list** of patch dictionaries (like MONAI's
``RandCropByPosNegLabeld`` with ``num_samples``), which MONAI's ``list_data_collate`` flattens into
one batch. Each patch dictionary holds, for ``keys="image"`` and the default names::

    image            (1, S, S) float32 z-scored patch
    label            (1, S, S) float32 target distribution (sums to 1)
    patch_affine     (3, 3) float64 patch px (u, v, 1) -> image px (x, y, 1)
    vertebra         int, row of the vertebra in the annotation the patch was cut around
    centre_px        (2,) float64 that vertebra's centre; orientation_deg, size_px: its frame
    + copies of ``copy_keys`` (default image_id, spacing_mm, image_size) when present

Bundle config example::

    {"_target_": "monai_spine.transforms.patches.RandCornerPatchesd", "keys": "image",
     "size_ratio": "$@heatmap_model.size_ratio", "num_samples": 64}
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
from monai.config import KeysCollection
from monai.transforms import MapTransform, Randomizable, Transform

from monai_spine.codecs.corner_maps import corner_maps
from monai_spine.data.frames import annotation_frames
from monai_spine.data.keypoints import get_scheme
from monai_spine.data.patches import extract_patch, normalize_patch, patch_params

__all__ = [
    "PATCH_KEYS",
    "CornerPatches",
    "RandCornerPatches",
    "CornerPatchesd",
    "RandCornerPatchesd",
    "CornerPatchesD",
    "CornerPatchesDict",
    "RandCornerPatchesD",
    "RandCornerPatchesDict",
]

#: per-patch geometry keys written by the dictionary transforms
PATCH_KEYS = ("patch_affine", "vertebra", "centre_px", "orientation_deg", "size_px")


class CornerPatches(Transform):
    """Patches and target maps around the annotated vertebrae of one image (regular grid).

    Args:
        size_ratio: vertebra size / centre spacing (see :func:`~monai_spine.data.frames.centre_frames`).
        scheme: keypoint scheme name (gives the corner indices).
        out_size: patch side in px.
        grid, scales, rotations_deg: the patch grid (:func:`monai_spine.data.patches.sample_patch_params`).
        sigma_along_frac, sigma_across_frac, empty: the targets (:func:`monai_spine.codecs.corner_maps.corner_maps`).
        antialias: blur before shrinking (:func:`monai_spine.data.patches.extract_patch`).

    ``__call__(image, keypoints_px, visible=None, select=None, levels=None)`` returns a dict of arrays:
    ``patches (P, 1, S, S)``, ``targets (P, 1, S, S)``, ``affines (P, 3, 3)``, ``rows (P,)`` and the
    frame of each patch's vertebra ``centres_px (P, 2)``, ``orientations_deg (P,)``, ``sizes_px (P,)``.
    Patches are cut around vertebrae with four visible corners (and ``select`` true); the targets hold
    the corners of all annotated vertebrae.
    """

    def __init__(
        self,
        size_ratio: float,
        scheme: str = "lateral5",
        out_size: int = 64,
        grid: Sequence[float] = (3, 0.15),
        scales: Sequence[float] = (1.6, 2.0, 2.4),
        rotations_deg: Sequence[float] = (-10.0, 0.0, 10.0),
        sigma_along_frac: float = 0.1,
        sigma_across_frac: float = 0.06,
        empty: str = "uniform",
        antialias: bool = True,
    ) -> None:
        if not (np.isfinite(size_ratio) and size_ratio > 0):
            raise ValueError(f"size_ratio must be positive, got {size_ratio!r}")
        if len(grid) != 2:
            raise ValueError(f"grid must be (n, half_extent_frac), got {grid!r}")
        self.size_ratio = float(size_ratio)
        self.scheme = get_scheme(scheme)
        self.out_size = int(out_size)
        self.grid = (int(grid[0]), float(grid[1]))
        self.scales = tuple(float(s) for s in scales)
        self.rotations_deg = tuple(float(r) for r in rotations_deg)
        self.sigma = (float(sigma_along_frac), float(sigma_across_frac))
        self.empty = empty
        self.antialias = bool(antialias)

    def _rng(self) -> np.random.Generator | None:
        return None

    def _num_samples(self) -> int | None:
        return None

    def params(
        self, keypoints_px: np.ndarray, visible: np.ndarray | None = None, select: np.ndarray | None = None,
        levels: Sequence[str] | None = None,
    ) -> dict[str, np.ndarray]:
        """Patch geometry only: ``affines (P, 3, 3)``, ``rows (P,)``, ``centres_px``, ``orientations_deg``, ``sizes_px``."""
        rows, centres, ang, size = annotation_frames(keypoints_px, visible, self.scheme.corner_indices, self.size_ratio,
                                                     select, levels)
        affines, owner = patch_params(centres, ang, size, self.grid, self.scales, self.rotations_deg, self.out_size,
                                      self._rng(), self._num_samples())
        return {
            "affines": affines, "rows": rows[owner].astype(np.int64), "centres_px": centres[owner],
            "orientations_deg": ang[owner], "sizes_px": size[owner],
        }

    def extract(self, image: np.ndarray, affines: np.ndarray) -> np.ndarray:
        """``(P, 1, S, S)`` z-scored patches of ``image`` ``(1, H, W)`` or ``(H, W)``."""
        img = np.asarray(image, dtype=np.float32)
        out = [normalize_patch(extract_patch(img, a, self.out_size, antialias=self.antialias)) for a in affines]
        if not out:
            return np.zeros((0, 1, self.out_size, self.out_size), np.float32)
        return np.stack(out)[:, None]

    def targets(self, keypoints_px: np.ndarray, visible: np.ndarray | None, affines: np.ndarray) -> np.ndarray:
        """``(P, 1, S, S)`` target distributions of the patches ``affines``."""
        out = [
            corner_maps(keypoints_px, visible, a, self.out_size, self.scheme.corner_indices, self.sigma[0], self.sigma[1],
                        self.empty)
            for a in affines
        ]
        if not out:
            return np.zeros((0, 1, self.out_size, self.out_size), np.float32)
        return np.stack(out)[:, None]

    def __call__(
        self, image: np.ndarray, keypoints_px: np.ndarray, visible: np.ndarray | None = None,
        select: np.ndarray | None = None, levels: Sequence[str] | None = None,
    ) -> dict[str, np.ndarray]:
        p = self.params(keypoints_px, visible, select, levels)
        p["patches"] = self.extract(image, p["affines"])
        p["targets"] = self.targets(keypoints_px, visible, p["affines"])
        return p


class RandCornerPatches(Randomizable, CornerPatches):
    """:class:`CornerPatches` with the grid jittered and ``num_samples`` patches drawn per call.

    Args:
        num_samples: patches per image and call (all of the grid when it has fewer; None: all).
        jitter: jitter grid offsets, scales and rotations within half their spacing.
        **kwargs: those of :class:`CornerPatches`.
    """

    def __init__(self, size_ratio: float, num_samples: int | None = 64, jitter: bool = True, **kwargs: Any) -> None:
        CornerPatches.__init__(self, size_ratio, **kwargs)
        if num_samples is not None and int(num_samples) < 1:
            raise ValueError(f"num_samples must be >= 1 or None, got {num_samples!r}")
        self.num_samples = None if num_samples is None else int(num_samples)
        self.jitter = bool(jitter)
        self._gen: np.random.Generator | None = None

    def randomize(self, data: Any = None) -> None:
        """Draw the generator of this call from ``self.R`` (seeded by ``set_random_state``)."""
        self._gen = np.random.default_rng(int(self.R.randint(0, 2**31 - 1)))

    def _rng(self) -> np.random.Generator | None:
        if self._gen is None:
            self.randomize()
        if self.jitter:
            return self._gen
        return _NoJitter(self._gen)

    def _num_samples(self) -> int | None:
        return self.num_samples

    def __call__(  # type: ignore[override]
        self, image: np.ndarray, keypoints_px: np.ndarray, visible: np.ndarray | None = None,
        select: np.ndarray | None = None, levels: Sequence[str] | None = None, randomize: bool = True,
    ) -> dict[str, np.ndarray]:
        if randomize:
            self.randomize()
        return CornerPatches.__call__(self, image, keypoints_px, visible, select, levels)


class _NoJitter:
    """A generator that draws the subset (``choice``) but adds no jitter (``uniform`` returns zeros)."""

    def __init__(self, gen: np.random.Generator) -> None:
        self.gen = gen

    def uniform(self, low: float = 0.0, high: float = 1.0, size: Any = None) -> np.ndarray:
        return np.zeros(size if size is not None else ())

    def choice(self, *args: Any, **kwargs: Any) -> np.ndarray:
        return self.gen.choice(*args, **kwargs)


class CornerPatchesd(MapTransform):
    """Dictionary version of :class:`CornerPatches`: one image dict -> a list of patch dicts.

    The patch geometry is computed once from ``keypoints_key`` and applied to every key in ``keys``
    (e.g. an image and a second channel); the target goes to ``label_key``.

    Args:
        keys: image keys (``(1, H, W)`` arrays, e.g. after :class:`monai_spine.transforms.io.LoadXrayd`).
        size_ratio: see :class:`CornerPatches`.
        keypoints_key, visible_key: the image's ``(N, K, 2)`` keypoints and ``(N, K)`` mask.
        select_key: optional ``(N,)`` bool: vertebrae to cut patches around (absent: all).
        levels_key: optional level names (gaps between annotated levels, see ``centre_frames``).
        label_key: where the target goes (None: no target).
        copy_keys: entries copied into every patch dict when present (small, collatable values).
        allow_missing_keys: skip absent image keys.
        **kwargs: the patch and target settings of :class:`CornerPatches`.

    Returns (``__call__``): a list of dicts, see the module docstring (empty when no vertebra qualifies).
    """

    def __init__(
        self,
        keys: KeysCollection = "image",
        size_ratio: float = 0.78,
        keypoints_key: str = "keypoints_px",
        visible_key: str | None = "visible",
        select_key: str | None = "select",
        levels_key: str | None = "levels",
        label_key: str | None = "label",
        copy_keys: Sequence[str] = ("image_id", "spacing_mm", "image_size"),
        allow_missing_keys: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.patcher = self._make_patcher(size_ratio, **kwargs)
        self.keypoints_key = keypoints_key
        self.visible_key = visible_key
        self.select_key = select_key
        self.levels_key = levels_key
        self.label_key = label_key
        self.copy_keys = tuple(copy_keys)

    def _make_patcher(self, size_ratio: float, **kwargs: Any) -> CornerPatches:
        return CornerPatches(size_ratio, **kwargs)

    def _get(self, d: Mapping[Hashable, Any], key: str | None) -> Any:
        return None if key is None else d.get(key)

    def __call__(self, data: Mapping[Hashable, Any]) -> list[dict[Hashable, Any]]:
        d = dict(data)
        if self.keypoints_key not in d:
            raise KeyError(f"{self.__class__.__name__}: the data has no {self.keypoints_key!r} entry")
        kp = np.asarray(d[self.keypoints_key], dtype=np.float64)
        vis = self._get(d, self.visible_key)
        vis = None if vis is None else np.asarray(vis, dtype=bool)
        p = self.patcher.params(kp, vis, self._get(d, self.select_key), self._get(d, self.levels_key))
        n = len(p["affines"])
        per_key = {key: self.patcher.extract(d[key], p["affines"]) for key in self.key_iterator(d)}
        labels = self.patcher.targets(kp, vis, p["affines"]) if self.label_key is not None else None
        shared = {k: d[k] for k in self.copy_keys if k in d}
        out = []
        for i in range(n):
            item: dict[Hashable, Any] = {key: arr[i] for key, arr in per_key.items()}
            if labels is not None:
                item[self.label_key] = labels[i]
            item.update({
                "patch_affine": p["affines"][i], "vertebra": int(p["rows"][i]), "centre_px": p["centres_px"][i],
                "orientation_deg": float(p["orientations_deg"][i]), "size_px": float(p["sizes_px"][i]),
            })
            item.update(shared)
            out.append(item)
        return out


class RandCornerPatchesd(Randomizable, CornerPatchesd):
    """Dictionary version of :class:`RandCornerPatches` (training): one ``randomize()`` per image,
    shared by every key.

    Args:
        num_samples: patches drawn per image and call.
        jitter: jitter the grid.
        **kwargs: those of :class:`CornerPatchesd`.
    """

    def __init__(self, keys: KeysCollection = "image", size_ratio: float = 0.78, num_samples: int | None = 64,
                 jitter: bool = True, **kwargs: Any) -> None:
        self._rand_args = {"num_samples": num_samples, "jitter": jitter}
        CornerPatchesd.__init__(self, keys, size_ratio, **kwargs)

    def _make_patcher(self, size_ratio: float, **kwargs: Any) -> CornerPatches:
        return RandCornerPatches(size_ratio, **self._rand_args, **kwargs)

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None) -> "RandCornerPatchesd":
        super().set_random_state(seed, state)
        self.patcher.set_random_state(seed, state)  # type: ignore[attr-defined]
        return self

    def randomize(self, data: Any = None) -> None:
        self.patcher.R = self.R  # type: ignore[attr-defined]
        self.patcher.randomize()  # type: ignore[attr-defined]

    def __call__(self, data: Mapping[Hashable, Any]) -> list[dict[Hashable, Any]]:
        self.randomize()
        return CornerPatchesd.__call__(self, data)


CornerPatchesD = CornerPatchesDict = CornerPatchesd
RandCornerPatchesD = RandCornerPatchesDict = RandCornerPatchesd
