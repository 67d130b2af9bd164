"""The one keypoint convention of monai-spine, written once.

Convention (used by every module, transform, network and file format):

* Keypoints of one image are a float array ``keypoints_px`` of shape ``(N, K, 2)``: ``N`` vertebrae
  (top to bottom, one per level in ``levels``), ``K`` points per vertebra in the order of the
  scheme's ``point_names``, and the last axis in ``(x, y)`` order, **x = column, y = row**, in
  pixels of the image as stored (origin at the centre of the top-left pixel, so pixel ``(c, r)``
  covers ``[c - 0.5, c + 0.5] x [r - 0.5, r + 0.5]``).
* A ``(N, K)`` boolean ``visible`` mask says which points were seen (an occluded or missing point
  is ``False``; its coordinates may be NaN or a best guess and are excluded from metrics).
* Images are channel-first ``(C, H, W)`` arrays (rows before columns, as numpy stores them), so
  ``image[:, y, x]`` is the pixel at keypoint ``(x, y)``.
* Pixel spacing is ``spacing_mm = (sx, sy)``: millimetres per pixel along x (columns) and y (rows).
  Note that DICOM ``PixelSpacing`` is stored the other way round, ``[row spacing, column spacing]``.
  Every image also carries ``spacing_source`` (one of :data:`SPACING_SOURCES`); when it is
  ``"unknown"`` there is no spacing, and distances stay in pixels.
* Fractional coordinates ``_frac`` are ``(x + 0.5) / W`` and ``(y + 0.5) / H`` of a crop of width
  ``W`` and height ``H``: 0 is the crop's left (top) edge and 1 its right (bottom) edge, whatever its
  resolution, so a crop resampled to another size keeps the same fractions.

Point names and the horizontal-flip swap table are data (:data:`SCHEMES`, :data:`REGIONS`).
For lateral views the names are anatomical for the standard display (patient facing image left,
anterior on the left): a horizontal flip mirrors the vertebra so the anterior and posterior corners
change places in the fixed output order, which is the swap ``AS<->PS``, ``AI<->PI``. For AP views
the names are as displayed (top-left, top-right, ...), and a flip swaps left and right.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

__all__ = [
    "KeypointScheme",
    "Region",
    "SCHEMES",
    "REGIONS",
    "SPACING_SOURCES",
    "get_scheme",
    "get_region",
    "flip_permutation",
    "px_to_frac",
    "frac_to_px",
    "px_to_mm",
    "mm_to_px",
    "validate_keypoints",
    "level_order",
]

#: Where an image's pixel spacing came from; ``unknown`` means distances stay in pixels.
SPACING_SOURCES = ("PixelSpacing", "ImagerPixelSpacing", "sidecar", "header", "synthetic", "unknown")


@dataclass(frozen=True)
class KeypointScheme:
    """Names, order and flip behaviour of the ``K`` points of one vertebra.

    Attributes:
        name: scheme id used in files (``"lateral5"``, ``"ap4"``).
        point_names: short names of the K points, in output order.
        point_descriptions: long names, same order.
        flip_pairs: index pairs that exchange places under a horizontal flip.
        corner_indices: indices of the four vertebral-body corners, in the order
            (top-left-as-defined, top-right, bottom-left, bottom-right) = (AS, PS, AI, PI) or
            (TL, TR, BL, BR).
        point_types: per point ``"corner"`` or ``"spinous_process"`` (metrics split by it).
    """

    name: str
    point_names: tuple[str, ...]
    point_descriptions: tuple[str, ...]
    flip_pairs: tuple[tuple[int, int], ...]
    corner_indices: tuple[int, int, int, int]
    point_types: tuple[str, ...]

    @property
    def num_points(self) -> int:
        """K, the number of points per vertebra."""
        return len(self.point_names)

    @property
    def flip_permutation(self) -> np.ndarray:
        """(K,) int array ``perm`` with ``flipped[:, j] = original[:, perm[j]]``."""
        return flip_permutation(self.num_points, self.flip_pairs)


@dataclass(frozen=True)
class Region:
    """A view of the spine: its levels (top to bottom) and keypoint scheme."""

    name: str
    view: str
    levels: tuple[str, ...]
    scheme: KeypointScheme


SCHEMES: dict[str, KeypointScheme] = {
    "lateral5": KeypointScheme(
        name="lateral5",
        point_names=("AS", "PS", "AI", "PI", "SP"),
        point_descriptions=(
            "anterior-superior corner",
            "posterior-superior corner",
            "anterior-inferior corner",
            "posterior-inferior corner",
            "tip of the spinous process",
        ),
        flip_pairs=((0, 1), (2, 3)),
        corner_indices=(0, 1, 2, 3),
        point_types=("corner", "corner", "corner", "corner", "spinous_process"),
    ),
    "ap4": KeypointScheme(
        name="ap4",
        point_names=("TL", "TR", "BL", "BR"),
        point_descriptions=("top-left corner", "top-right corner", "bottom-left corner", "bottom-right corner"),
        flip_pairs=((0, 1), (2, 3)),
        corner_indices=(0, 1, 2, 3),
        point_types=("corner", "corner", "corner", "corner"),
    ),
}

_THORACIC = tuple(f"T{i}" for i in range(1, 13))
_LUMBAR = tuple(f"L{i}" for i in range(1, 6))

REGIONS: dict[str, Region] = {
    "cervical": Region("cervical", "lateral", ("C3", "C4", "C5", "C6", "C7"), SCHEMES["lateral5"]),
    "lumbar": Region("lumbar", "lateral", _LUMBAR, SCHEMES["lateral5"]),
    "ap": Region("ap", "ap", _THORACIC + _LUMBAR, SCHEMES["ap4"]),
}

#: every level name known to the project, in anatomical order
_ALL_LEVELS = tuple(f"C{i}" for i in range(1, 8)) + _THORACIC + _LUMBAR + ("S1",)


def get_scheme(name: str) -> KeypointScheme:
    """Return the scheme called ``name``; ``KeyError`` naming the known ones otherwise."""
    try:
        return SCHEMES[name]
    except KeyError:
        raise KeyError(f"unknown keypoint scheme {name!r}; known: {sorted(SCHEMES)}") from None


def get_region(name: str) -> Region:
    """Return the region called ``name`` (``cervical``, ``lumbar``, ``ap``)."""
    try:
        return REGIONS[name]
    except KeyError:
        raise KeyError(f"unknown region {name!r}; known: {sorted(REGIONS)}") from None


def level_order(level: str) -> int:
    """Anatomical rank of a level name (``"C3"`` < ``"T1"`` < ``"L5"``); ``KeyError`` if unknown."""
    try:
        return _ALL_LEVELS.index(level)
    except ValueError:
        raise KeyError(f"unknown vertebra level {level!r}; expected one of {_ALL_LEVELS}") from None


def flip_permutation(num_points: int, flip_pairs: Sequence[Sequence[int]]) -> np.ndarray:
    """Permutation of point indices for a horizontal flip.

    Args:
        num_points: K.
        flip_pairs: pairs ``(i, j)`` exchanged by the flip.

    Returns:
        (K,) int array; applying it twice gives the identity.
    """
    perm = np.arange(num_points)
    for i, j in flip_pairs:
        if not (0 <= i < num_points and 0 <= j < num_points):
            raise ValueError(f"flip pair ({i}, {j}) out of range for {num_points} points")
        perm[i], perm[j] = j, i
    return perm


def _size_wh(size_wh: Sequence[float]) -> np.ndarray:
    size = np.asarray(size_wh, dtype=np.float64).reshape(-1)
    if size.shape != (2,) or np.any(size <= 0):
        raise ValueError(f"size must be (width, height) > 0, got {size_wh!r}")
    return size


def px_to_frac(points_px: np.ndarray, size_wh: Sequence[float]) -> np.ndarray:
    """Pixels to fractions of width/height: ``(x + 0.5) / W``, ``(y + 0.5) / H``.

    Args:
        points_px: (..., 2) array in (x, y) pixels.
        size_wh: (W, H) of the image or crop, in pixels.

    Returns:
        (..., 2) array of fractions (float64 for numpy input, same dtype for torch).
    """
    size = _size_wh(size_wh)
    if hasattr(points_px, "new_tensor"):  # torch tensor: stay differentiable
        return (points_px + 0.5) / points_px.new_tensor(size)
    return (np.asarray(points_px, dtype=np.float64) + 0.5) / size


def frac_to_px(points_frac: np.ndarray, size_wh: Sequence[float]) -> np.ndarray:
    """Inverse of :func:`px_to_frac`: ``x_px = x_frac * W - 0.5``, ``y_px = y_frac * H - 0.5``."""
    size = _size_wh(size_wh)
    if hasattr(points_frac, "new_tensor"):
        return points_frac * points_frac.new_tensor(size) - 0.5
    return np.asarray(points_frac, dtype=np.float64) * size - 0.5


def _spacing(spacing_mm: Sequence[float] | None) -> np.ndarray:
    if spacing_mm is None:
        raise ValueError("pixel spacing is unknown: distances can only be given in pixels")
    sp = np.asarray(spacing_mm, dtype=np.float64).reshape(-1)
    if sp.shape != (2,) or not np.all(np.isfinite(sp)) or np.any(sp <= 0):
        raise ValueError(f"spacing_mm must be two positive finite numbers (sx, sy), got {spacing_mm!r}")
    return sp


def px_to_mm(points_px: np.ndarray, spacing_mm: Sequence[float] | None) -> np.ndarray:
    """Pixel coordinates (or vectors) to millimetres: ``(x * sx, y * sy)``.

    Raises:
        ValueError: spacing is ``None`` (unknown), zero, negative or not two numbers.
    """
    return np.asarray(points_px, dtype=np.float64) * _spacing(spacing_mm)


def mm_to_px(points_mm: np.ndarray, spacing_mm: Sequence[float] | None) -> np.ndarray:
    """Inverse of :func:`px_to_mm`."""
    return np.asarray(points_mm, dtype=np.float64) / _spacing(spacing_mm)


def validate_keypoints(
    keypoints_px: np.ndarray, visible: np.ndarray | None = None, num_points: int | None = None, name: str = "keypoints"
) -> tuple[np.ndarray, np.ndarray]:
    """Check shapes of a keypoint array and its mask, returning float64 points and a bool mask.

    Args:
        keypoints_px: (N, K, 2) points.
        visible: (N, K) mask; all True when None (non-finite points are then marked invisible).
        num_points: expected K, if known.
        name: what to call the array in error messages (a file or key name).

    Raises:
        ValueError: naming ``name`` and the bad shape.
    """
    kp = np.asarray(keypoints_px, dtype=np.float64)
    if kp.ndim != 3 or kp.shape[-1] != 2:
        raise ValueError(f"{name}: keypoints must have shape (N, K, 2), got {kp.shape}")
    if num_points is not None and kp.shape[1] != num_points:
        raise ValueError(f"{name}: expected {num_points} points per vertebra, got {kp.shape[1]}")
    if visible is None:
        vis = np.all(np.isfinite(kp), axis=-1)
    else:
        vis = np.asarray(visible, dtype=bool)
        if vis.shape != kp.shape[:2]:
            raise ValueError(f"{name}: visibility mask shape {vis.shape} does not match keypoints {kp.shape[:2]}")
    return kp, vis
