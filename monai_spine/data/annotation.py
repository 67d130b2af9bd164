"""The project's annotation record and its JSON file format (``monai-spine-keypoints``, version 1).

One JSON file describes the vertebra keypoints of one image; see ``docs/formats.md``. Example::

    {
      "format": "monai-spine-keypoints", "version": 1,
      "image": "case_0001.dcm",                 # relative to the JSON file's folder
      "region": "cervical", "scheme": "lateral5",
      "image_size": [1024, 1024],               # (W, H) pixels
      "spacing_mm": [0.14, 0.14],               # (sx, sy) mm/pixel, or null
      "spacing_source": "PixelSpacing",
      "point_names": ["AS", "PS", "AI", "PI", "SP"],
      "vertebrae": [
        {"level": "C3",
         "keypoints_px": [[x, y], ...],         # K points, (x, y), null for a missing point
         "visible": [true, ...],
         "box_px": [x0, y0, x1, y1],            # optional
         "box_angle_rad": 0.0,                  # optional: box_px turned about its centre (radians)
         "outline_px": [[x, y], ...]},          # optional: vertebral-body outline (closed curve)
        ...
      ],
      "meta": {...}                             # free-form (generator parameters, hard cases)
    }

Bad files: :func:`read_annotation` raises :class:`AnnotationError` (a ``ValueError``) naming the
file and the field for anything malformed: not JSON (or nested too deeply), another format or
version, a missing field, a wrong number of points, a point that is not two finite numbers (use
``null`` for a missing point), an unknown or repeated level name, a bad ``image_size`` or
``spacing_mm``; ``FileNotFoundError`` when the file is absent. No other exception type leaves it
for a bad file. A point outside the image (``image_size`` known) is kept, with an
:class:`AnnotationWarning` naming the file, level and point: annotations at the border of a
radiograph may legitimately reach beyond it, but far-away points usually mean swapped x/y or a
wrong image.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from monai_spine.data.keypoints import SPACING_SOURCES, get_region, get_scheme, level_order, validate_keypoints

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "SpineAnnotation",
    "AnnotationError",
    "AnnotationWarning",
    "read_annotation",
    "write_annotation",
    "atomic_write_text",
    "keypoint_boxes_px",
]

FORMAT_NAME = "monai-spine-keypoints"
FORMAT_VERSION = 1


class AnnotationError(ValueError):
    """An annotation file or record is malformed; the message names the file and the problem."""


class AnnotationWarning(UserWarning):
    """An annotation is readable but suspicious (points outside the image); the message names the file."""


@dataclass
class SpineAnnotation:
    """Keypoints of the vertebrae of one image.

    Attributes:
        levels: N level names, top to bottom (``"C3"``...).
        keypoints_px: (N, K, 2) float array, (x, y) pixels (see :mod:`monai_spine.data.keypoints`).
        visible: (N, K) bool mask.
        region: ``cervical``, ``lumbar`` or ``ap``.
        scheme: keypoint scheme name (``lateral5``, ``ap4``).
        image: path of the image (absolute, or relative to the annotation file when read).
        image_size: (W, H) in pixels, if known.
        spacing_mm: (sx, sy) mm per pixel, or None when unknown.
        spacing_source: one of :data:`SPACING_SOURCES`.
        boxes_px: (N, 4) float array ``x0, y0, x1, y1`` or None.
        box_angles_rad: (N,) turn of each box about its centre in radians (its width axis along
            ``(cos a, sin a)``; a crop in the vertebra's own frame), or None: axis-aligned boxes.
        outlines_px: N arrays of shape (M_i, 2) (vertebral-body outlines) or None.
        meta: free-form dictionary (JSON-serialisable).
    """

    levels: list[str]
    keypoints_px: np.ndarray
    visible: np.ndarray
    region: str
    scheme: str
    image: str | None = None
    image_size: tuple[int, int] | None = None
    spacing_mm: tuple[float, float] | None = None
    spacing_source: str = "unknown"
    boxes_px: np.ndarray | None = None
    box_angles_rad: np.ndarray | None = None
    outlines_px: list[np.ndarray] | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        name = self.image or "annotation"
        sch = get_scheme(self.scheme)
        get_region(self.region)
        self.keypoints_px, self.visible = validate_keypoints(self.keypoints_px, self.visible, sch.num_points, name)
        self.visible = self.visible & np.all(np.isfinite(self.keypoints_px), axis=-1)  # NaN is never seen
        if len(self.levels) != self.keypoints_px.shape[0]:
            raise AnnotationError(f"{name}: {len(self.levels)} levels for {self.keypoints_px.shape[0]} vertebrae")
        for lev in self.levels:
            try:
                level_order(lev)
            except KeyError as e:
                raise AnnotationError(f"{name}: {e.args[0]}") from None
        dups = sorted({lev for lev in self.levels if self.levels.count(lev) > 1})
        if dups:
            raise AnnotationError(f"{name}: levels {dups} appear more than once")
        if self.image_size is not None:
            try:
                size = tuple(int(s) for s in self.image_size)
            except (TypeError, ValueError):
                size = ()
            if len(size) != 2 or min(size) <= 0:
                raise AnnotationError(f"{name}: image_size must be (W, H) > 0 pixels, got {self.image_size!r}")
            self.image_size = size
        if self.spacing_source not in SPACING_SOURCES:
            raise AnnotationError(f"{name}: spacing_source {self.spacing_source!r} not in {SPACING_SOURCES}")
        if self.spacing_mm is not None:
            sp = tuple(float(s) for s in self.spacing_mm)
            if len(sp) != 2 or not all(math.isfinite(s) and s > 0 for s in sp):
                raise AnnotationError(f"{name}: spacing_mm must be two positive numbers, got {self.spacing_mm!r}")
            self.spacing_mm = sp
            if self.spacing_source == "unknown":
                raise AnnotationError(f"{name}: spacing_mm is given but spacing_source is 'unknown'")
        elif self.spacing_source != "unknown":
            raise AnnotationError(f"{name}: spacing_source is {self.spacing_source!r} but spacing_mm is missing")
        if self.boxes_px is not None:
            self.boxes_px = np.asarray(self.boxes_px, dtype=np.float64)
            if self.boxes_px.shape != (len(self.levels), 4):
                raise AnnotationError(f"{name}: boxes_px shape {self.boxes_px.shape}, expected ({len(self.levels)}, 4)")
        if self.box_angles_rad is not None:
            if self.boxes_px is None:
                raise AnnotationError(f"{name}: box_angles_rad given without boxes_px")
            self.box_angles_rad = np.asarray(self.box_angles_rad, dtype=np.float64)
            if self.box_angles_rad.shape != (len(self.levels),) or not np.all(np.isfinite(self.box_angles_rad)):
                raise AnnotationError(f"{name}: box_angles_rad must be {len(self.levels)} finite numbers (radians), "
                                      f"got shape {self.box_angles_rad.shape}")
        if self.outlines_px is not None:
            outlines = [np.asarray(o, dtype=np.float64) for o in self.outlines_px]
            if len(outlines) != len(self.levels) or any(o.ndim != 2 or o.shape[1] != 2 for o in outlines):
                raise AnnotationError(f"{name}: outlines_px must be {len(self.levels)} arrays of shape (M, 2)")
            self.outlines_px = outlines

    @property
    def num_vertebrae(self) -> int:
        """N."""
        return len(self.levels)

    @property
    def point_names(self) -> tuple[str, ...]:
        """Names of the K points per vertebra."""
        return get_scheme(self.scheme).point_names

    @property
    def spacing_override_mm(self) -> tuple[float, float] | None:
        """The spacing to read the image with: the annotation's, except for a DICOM image.

        A DICOM header is the spacing's source of truth (its tags, magnification and calibration
        rules in :mod:`monai_spine.data.readers`); for other images (PNG, JPEG, ...) the annotation's
        spacing is the only one there is. None when the image is DICOM, unnamed, or the spacing unknown.
        """
        if self.image is None or str(self.image).lower().endswith((".dcm", ".dicom")):
            return None
        return self.spacing_mm

    def boxes_from_keypoints(self, margin_frac: float = 0.0) -> np.ndarray:
        """(N, 4) boxes ``x0, y0, x1, y1`` around each vertebra's visible points (and outline).

        Args:
            margin_frac: margin added on each side as a fraction of the box width/height.
        """
        return keypoint_boxes_px(self.keypoints_px, self.visible, self.outlines_px, margin_frac)

    def to_dict(self, relative_to: str | os.PathLike | None = None) -> dict[str, Any]:
        """JSON-ready dictionary in the ``monai-spine-keypoints`` format."""
        image = self.image
        if image is not None and relative_to is not None:
            try:
                image = os.path.relpath(image, relative_to)
            except ValueError:  # other drive on Windows
                pass
        verts = []
        for i, lev in enumerate(self.levels):
            pts = [
                [float(x), float(y)] if np.isfinite(x) and np.isfinite(y) else None for x, y in self.keypoints_px[i]
            ]
            v: dict[str, Any] = {"level": lev, "keypoints_px": pts, "visible": [bool(b) for b in self.visible[i]]}
            if self.boxes_px is not None:
                v["box_px"] = [float(b) if np.isfinite(b) else None for b in self.boxes_px[i]]
            if self.box_angles_rad is not None:
                v["box_angle_rad"] = float(self.box_angles_rad[i])
            if self.outlines_px is not None:
                v["outline_px"] = np.asarray(self.outlines_px[i], dtype=float).round(3).tolist()
            verts.append(v)
        return {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "image": image,
            "region": self.region,
            "scheme": self.scheme,
            "image_size": list(self.image_size) if self.image_size is not None else None,
            "spacing_mm": list(self.spacing_mm) if self.spacing_mm is not None else None,
            "spacing_source": self.spacing_source,
            "point_names": list(self.point_names),
            "vertebrae": verts,
            "meta": self.meta,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "annotation", base_dir: str | None = None) -> SpineAnnotation:
        """Parse a ``monai-spine-keypoints`` dictionary.

        Args:
            d: the parsed JSON.
            source: name used in error messages (the file path).
            base_dir: folder that a relative ``image`` path is resolved against.

        Raises:
            AnnotationError: naming ``source`` and the missing or malformed field.
        """
        if not isinstance(d, dict):
            raise AnnotationError(f"{source}: expected a JSON object, got {type(d).__name__}")
        if d.get("format") != FORMAT_NAME:
            raise AnnotationError(f"{source}: 'format' must be {FORMAT_NAME!r}, got {d.get('format')!r}")
        if d.get("version") != FORMAT_VERSION:
            raise AnnotationError(f"{source}: unsupported version {d.get('version')!r} (reader knows {FORMAT_VERSION})")
        for key in ("region", "scheme", "vertebrae"):
            if key not in d:
                raise AnnotationError(f"{source}: missing field {key!r}")
        for key in ("region", "scheme", "spacing_source", "image"):
            if d.get(key) is not None and not isinstance(d[key], str):
                raise AnnotationError(f"{source}: {key!r} must be a string, got {d[key]!r}")
        try:
            sch = get_scheme(d["scheme"])
        except KeyError as e:
            raise AnnotationError(f"{source}: {e.args[0]}") from None
        verts = d["vertebrae"]
        if not isinstance(verts, list):
            raise AnnotationError(f"{source}: 'vertebrae' must be a list")
        k = sch.num_points
        kp = np.full((len(verts), k, 2), np.nan)
        vis = np.zeros((len(verts), k), dtype=bool)
        levels, boxes, angles, outlines = [], [], [], []
        for i, v in enumerate(verts):
            where = f"{source}: vertebrae[{i}]"
            if not isinstance(v, dict) or "level" not in v or "keypoints_px" not in v:
                raise AnnotationError(f"{where}: needs 'level' and 'keypoints_px'")
            pts = v["keypoints_px"]
            if not isinstance(pts, list) or len(pts) != k:
                n = len(pts) if isinstance(pts, list) else type(pts).__name__
                raise AnnotationError(f"{where} ({v['level']}): expected {k} points for scheme {sch.name}, got {n}")
            for j, p in enumerate(pts):
                if p is None:
                    continue
                if not isinstance(p, (list, tuple)) or len(p) != 2:
                    raise AnnotationError(f"{where}: point {j} is not [x, y]: {p!r}")
                try:
                    kp[i, j] = [float(p[0]), float(p[1])]
                except (TypeError, ValueError, IndexError, OverflowError):
                    raise AnnotationError(f"{where}: point {j} is not [x, y]: {p!r}") from None
                if not np.all(np.isfinite(kp[i, j])):
                    raise AnnotationError(f"{where}: point {j} is not finite: {p!r} (write null for a missing point)")
            vflags = v.get("visible")
            if vflags is None:
                vis[i] = np.all(np.isfinite(kp[i]), axis=-1)
            else:
                if not isinstance(vflags, list) or len(vflags) != k or not all(isinstance(b, bool) for b in vflags):
                    raise AnnotationError(f"{where}: 'visible' must be a list of {k} booleans")
                vis[i] = [bool(b) for b in vflags]
                vis[i] &= np.all(np.isfinite(kp[i]), axis=-1)
            if not isinstance(v["level"], str):
                raise AnnotationError(f"{where}: 'level' must be a string, got {v['level']!r}")
            levels.append(v["level"])
            boxes.append(v.get("box_px"))
            angles.append(v.get("box_angle_rad"))
            outlines.append(v.get("outline_px"))
        boxes_arr = None
        if verts and all(b is not None for b in boxes):
            try:
                boxes_arr = np.asarray([[np.nan if c is None else c for c in b] for b in boxes], dtype=np.float64)
            except (TypeError, ValueError):
                raise AnnotationError(f"{source}: every 'box_px' must be [x0, y0, x1, y1]") from None
            if boxes_arr.shape != (len(verts), 4):
                raise AnnotationError(f"{source}: every 'box_px' must be [x0, y0, x1, y1]")
        angles_arr = None
        if any(a is not None for a in angles):
            if boxes_arr is None or not all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in angles):
                raise AnnotationError(f"{source}: 'box_angle_rad' must be a number (radians) on every vertebra, "
                                      "each with a 'box_px'")
            angles_arr = np.asarray(angles, dtype=np.float64)
        outlines_list = None
        if verts and all(o is not None for o in outlines):
            try:
                outlines_list = [np.asarray(o, dtype=np.float64) for o in outlines]
            except (TypeError, ValueError):
                outlines_list = [np.zeros(0)]
            if any(o.ndim != 2 or o.shape[1] != 2 for o in outlines_list):
                raise AnnotationError(f"{source}: every 'outline_px' must be a list of [x, y] points")
        image = d.get("image")
        if image is not None and base_dir is not None and not os.path.isabs(image):
            image = os.path.normpath(os.path.join(base_dir, image))
        size = d.get("image_size")
        if size is not None and not (isinstance(size, list) and len(size) == 2 and all(
                isinstance(s, (int, float)) and not isinstance(s, bool) and math.isfinite(s) for s in size)):
            raise AnnotationError(f"{source}: 'image_size' must be [W, H] in pixels, got {size!r}")
        sp = d.get("spacing_mm")
        if sp is not None and not (isinstance(sp, list) and all(
                isinstance(s, (int, float)) and not isinstance(s, bool) for s in sp)):
            raise AnnotationError(f"{source}: 'spacing_mm' must be [sx, sy] in mm per pixel or null, got {sp!r}")
        meta = d.get("meta") or {}
        if not isinstance(meta, dict):
            raise AnnotationError(f"{source}: 'meta' must be a JSON object, got {type(meta).__name__}")
        try:
            ann = cls(
                levels=levels,
                keypoints_px=kp,
                visible=vis,
                region=d["region"],
                scheme=d["scheme"],
                image=image,
                image_size=tuple(int(s) for s in size) if size is not None else None,
                spacing_mm=tuple(d["spacing_mm"]) if d.get("spacing_mm") is not None else None,
                spacing_source=d.get("spacing_source", "unknown" if d.get("spacing_mm") is None else "sidecar"),
                boxes_px=boxes_arr,
                box_angles_rad=angles_arr,
                outlines_px=outlines_list,
                meta=meta,
            )
        except AnnotationError as e:
            raise AnnotationError(f"{source}: {e}") from None
        except (KeyError, ValueError, TypeError, OverflowError) as e:
            raise AnnotationError(f"{source}: {e.args[0] if isinstance(e, KeyError) and e.args else e}") from None
        _warn_outside(ann, source)
        return ann


def _warn_outside(ann: SpineAnnotation, source: str) -> None:
    """Warn (:class:`AnnotationWarning`) about visible points outside the ``image_size`` box."""
    if ann.image_size is None or ann.num_vertebrae == 0:
        return
    w, h = ann.image_size
    kp = ann.keypoints_px
    with np.errstate(invalid="ignore"):
        out = ((kp[..., 0] < -0.5) | (kp[..., 0] > w - 0.5) | (kp[..., 1] < -0.5) | (kp[..., 1] > h - 0.5))
    out &= np.all(np.isfinite(kp), axis=-1)
    if out.any():
        i, j = (int(v) for v in np.argwhere(out)[0])
        warnings.warn(
            f"{source}: {int(out.sum())} point(s) outside the {w} x {h} image, first {ann.levels[i]} "
            f"point {j} at ({kp[i, j, 0]:g}, {kp[i, j, 1]:g}) px; kept as given",
            AnnotationWarning,
            stacklevel=3,
        )


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path``, then rename it over ``path``.

    A crash leaves either the old file or the new one, never a partial file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def keypoint_boxes_px(keypoints_px: Any, visible: Any, outlines_px: Sequence[Any] | None = None,
                      margin_frac: float = 0.0) -> np.ndarray:
    """``(N, 4)`` boxes ``x0, y0, x1, y1`` around each vertebra's visible points (and outline, when given).

    Args:
        keypoints_px: ``(N, K, 2)`` points; visible: ``(N, K)`` mask.
        outlines_px: ``N`` arrays ``(M, 2)`` (empty where none), or None.
        margin_frac: margin added on each side as a fraction of the box width/height.

    Returns:
        the boxes; NaN rows for vertebrae without a visible point.
    """
    kp, vis = np.asarray(keypoints_px, dtype=np.float64), np.asarray(visible, dtype=bool)
    boxes = np.full((kp.shape[0], 4), np.nan)
    for i in range(kp.shape[0]):
        pts = kp[i][vis[i]]
        if outlines_px is not None and len(outlines_px[i]):
            pts = np.concatenate([pts, outlines_px[i]], axis=0)
        if len(pts) == 0:
            continue
        lo, hi = pts.min(0), pts.max(0)
        m = (hi - lo) * margin_frac
        boxes[i] = [lo[0] - m[0], lo[1] - m[1], hi[0] + m[0], hi[1] + m[1]]
    return boxes


def read_annotation(path: str | os.PathLike) -> SpineAnnotation:
    """Read one ``monai-spine-keypoints`` JSON file; a relative image path resolves against its folder.

    Raises:
        AnnotationError: the file is not valid JSON or not in the format (message names the file).
        FileNotFoundError: the file does not exist.

    Warns:
        AnnotationWarning: visible points outside the image (they are kept).
    """
    path = str(path)
    try:
        with open(path, encoding="utf-8") as f:
            d = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise AnnotationError(f"{path}: not valid JSON ({e})") from None
    except RecursionError:
        raise AnnotationError(f"{path}: JSON nested too deeply") from None
    return SpineAnnotation.from_dict(d, source=path, base_dir=os.path.dirname(os.path.abspath(path)))


def write_annotation(ann: SpineAnnotation, path: str | os.PathLike) -> None:
    """Write ``ann`` as JSON to ``path`` atomically, with the image path relative to its folder."""
    base = os.path.dirname(os.path.abspath(path))
    # allow_nan=False: strict JSON (NaN points/boxes are written as null; NaN in meta is refused)
    atomic_write_text(path, json.dumps(ann.to_dict(relative_to=base), indent=1, allow_nan=False))

