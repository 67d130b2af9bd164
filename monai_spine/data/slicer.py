"""3D Slicer markups JSON (``.mkp.json``) writer and reader for vertebra keypoints.

One annotation becomes one ``Fiducial`` (point list) markup with ``N * K`` control points, in the
annotation's order (vertebra by vertebra, points in scheme order), labelled ``"<level>-<point>"``
(``"C4-AS"``, ``"T12-BR"``)::

    {"@schema": SLICER_MARKUPS_SCHEMA,           # .../Markups/Resources/Schema/markups-schema-v1.0.3.json#
     "markups": [{
        "type": "Fiducial", "name": "vertebrae", "coordinateSystem": "LPS", "coordinateUnits": "mm",
        "description": "...",                     # notes, e.g. that spacing is unknown
        "controlPoints": [
            {"id": "C4-AS", "label": "C4-AS", "position": [x_mm, y_mm, 0.0],
             "positionStatus": "defined", "description": "", ...},
            {"id": "C4-SP", "label": "C4-SP", "positionStatus": "missing", ...},   # invisible point
            ...],
        "monaiSpine": {"format": "monai-spine-keypoints", "version": 1, "region": "cervical",
                       "scheme": "lateral5", "levels": [...], "image": ..., "image_size": [W, H],
                       "spacing_mm": [sx, sy] or null, "spacing_source": ..., "units": "mm" or "px",
                       "meta": {...}}}]}

Coordinate mapping (2D image, origin 0, identity direction, as Slicer shows a PNG/JPEG or a
radiograph without a patient orientation): the pixel centre ``(x_px, y_px)`` is at LPS position
``(x_px * sx, y_px * sy, 0)`` mm, with ``spacing_mm = (sx, sy)`` (x = columns first). The reader
inverts this (``x_px = L / sx``, ``y_px = P / sy``; z is ignored) and also accepts ``RAS`` files
(``L = -R``, ``P = -A``) and ``um`` units.

Unknown spacing: by default the writer stores pixel units (spacing 1, ``"units": "px"`` in the
``monaiSpine`` block and a note in the markup ``description``); this is also what Slicer uses
for an image loaded without spacing, so the points overlay the image. Pass
``on_unknown_spacing="raise"`` to refuse instead.

Visibility: visible points are ``positionStatus: "defined"``; invisible ones are ``"missing"``
(Slicer's "skip placement" state, written by Slicer itself though absent from the v1.0.3 schema's
enum), keeping their best-guess position when it is finite and no ``position`` otherwise. On
reading, only ``"defined"`` points (or points with a position and no status) are visible;
``"undefined"``, ``"preview"`` and ``"missing"`` are not.

Extra per-point fields (e.g. ``description`` holding sigma and an uncertainty class) are passed as
``point_fields={"description": (N, K) strings}``. Slicer keeps the standard control-point keys
(``description``, ``selected``, ``locked``, ``visibility``, ``orientation``,
``associatedNodeID``) when it re-saves a file; other keys are written but Slicer drops them.
Boxes and outlines are not stored in markups. A file re-saved by Slicer loses the ``monaiSpine``
block: read it with an explicit ``spacing_mm``.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Mapping, Sequence

import numpy as np

from monai_spine.data.annotation import FORMAT_NAME, FORMAT_VERSION, AnnotationError, SpineAnnotation, atomic_write_text
from monai_spine.data.keypoints import SCHEMES, get_scheme, level_order

__all__ = [
    "SLICER_MARKUPS_SCHEMA",
    "MONAI_SPINE_KEY",
    "RESERVED_POINT_FIELDS",
    "point_label",
    "parse_point_label",
    "annotation_to_markups",
    "write_slicer_markups",
    "markups_to_annotation",
    "read_slicer_markups",
    "read_slicer_point_fields",
]

#: the ``@schema`` URL written into every file
SLICER_MARKUPS_SCHEMA = (
    "https://raw.githubusercontent.com/slicer/slicer/master/Modules/Loadable/Markups/Resources/Schema/"
    "markups-schema-v1.0.3.json#"
)
#: key of the markup's monai-spine metadata block (Slicer ignores unknown keys)
MONAI_SPINE_KEY = "monaiSpine"
#: control-point keys set by the writer; ``point_fields`` may not override them
RESERVED_POINT_FIELDS = ("id", "label", "position", "positionStatus")

_UNKNOWN_SPACING_NOTE = (
    "monai-spine: pixel spacing unknown; positions are in pixels (spacing 1), not millimetres"
)
_LABEL_RE = re.compile(r"^\s*([A-Za-z]+[0-9]+)\s*-\s*([A-Za-z]+)\s*$")
_REGION_BY_PREFIX = {"C": "cervical", "L": "lumbar"}
_FROM_FILE = "file"


def point_label(level: str, point_name: str) -> str:
    """Control-point label of one keypoint: ``point_label("C4", "AS") == "C4-AS"``."""
    return f"{level}-{point_name}"


def parse_point_label(label: str) -> tuple[str, str]:
    """Split a label ``"<level>-<point>"`` into ``(level, point_name)``, upper-cased.

    ``"c4-as"`` and ``" T12 - BR "`` are accepted. The level must be a known level name.

    Raises:
        ValueError: the label has another form or an unknown level.
    """
    m = _LABEL_RE.match(str(label))
    if m is None:
        raise ValueError(f"control point label {label!r} is not '<level>-<point>' (e.g. 'C4-AS')")
    level, name = m.group(1).upper(), m.group(2).upper()
    try:
        level_order(level)
    except KeyError as e:
        raise ValueError(f"control point label {label!r}: {e.args[0]}") from None
    return level, name


def _json_value(v: Any) -> Any:
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, np.generic):
        return v.item()
    return v


def annotation_to_markups(
    ann: SpineAnnotation,
    point_fields: Mapping[str, Any] | None = None,
    name: str = "vertebrae",
    on_unknown_spacing: str = "pixels",
    locked: bool = False,
) -> dict[str, Any]:
    """Build the Slicer markups dictionary of one annotation (see the module docstring).

    Args:
        ann: the annotation.
        point_fields: extra control-point fields, each an ``(N, K)`` array-like (nested lists or
            an object array) of JSON-serialisable values; ``None`` entries are left out.
        name: markup name shown in Slicer.
        on_unknown_spacing: ``"pixels"`` (write pixel units, flagged) or ``"raise"``.
        locked: lock the points against moving in Slicer.

    Raises:
        ValueError: spacing unknown with ``on_unknown_spacing="raise"``, a reserved or
            wrongly-shaped entry in ``point_fields``, or a bad ``on_unknown_spacing``.
    """
    if on_unknown_spacing not in ("pixels", "raise"):
        raise ValueError(f"on_unknown_spacing must be 'pixels' or 'raise', got {on_unknown_spacing!r}")
    n, k = ann.visible.shape
    src = ann.image or "annotation"
    if ann.spacing_mm is None:
        if on_unknown_spacing == "raise":
            raise ValueError(f"{src}: pixel spacing is unknown; Slicer positions need millimetres")
        spacing = np.ones(2)
        units = "px"
    else:
        spacing = np.asarray(ann.spacing_mm, dtype=np.float64)
        units = "mm"
    fields: dict[str, np.ndarray] = {}
    for key, values in (point_fields or {}).items():
        if key in RESERVED_POINT_FIELDS:
            raise ValueError(f"point_fields: {key!r} is written by the writer (reserved: {RESERVED_POINT_FIELDS})")
        try:
            fields[key] = _to_object_grid(values, n, k)
        except (ValueError, TypeError):
            raise ValueError(f"point_fields[{key!r}]: expected (N, K) = ({n}, {k}) values") from None
    names = ann.point_names
    points = []
    for i, lev in enumerate(ann.levels):
        for j, pname in enumerate(names):
            label = point_label(lev, pname)
            cp: dict[str, Any] = {"id": label, "label": label, "description": "", "associatedNodeID": ""}
            xy = ann.keypoints_px[i, j]
            if np.all(np.isfinite(xy)):
                x_mm, y_mm = (xy * spacing).tolist()
                cp["position"] = [x_mm, y_mm, 0.0]
            cp.update({"selected": True, "locked": bool(locked), "visibility": True})
            cp["positionStatus"] = "defined" if ann.visible[i, j] and "position" in cp else "missing"
            for key, arr in fields.items():
                if arr[i, j] is not None:
                    cp[key] = _json_value(arr[i, j])
            points.append(cp)
    markup: dict[str, Any] = {
        "type": "Fiducial",
        "name": name,
        "coordinateSystem": "LPS",
        "coordinateUnits": "mm",
        "locked": bool(locked),
        "fixedNumberOfControlPoints": False,
        "labelFormat": "%N-%d",
        "lastUsedControlPointNumber": len(points),
        "description": _UNKNOWN_SPACING_NOTE if units == "px" else "",
        "controlPoints": points,
        "measurements": [],
        "display": {"visibility": True, "pointLabelsVisibility": True},
        MONAI_SPINE_KEY: {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "region": ann.region,
            "scheme": ann.scheme,
            "levels": list(ann.levels),
            "image": ann.image,
            "image_size": [int(s) for s in ann.image_size] if ann.image_size is not None else None,
            "spacing_mm": list(ann.spacing_mm) if ann.spacing_mm is not None else None,
            "spacing_source": ann.spacing_source,
            "units": units,
            "meta": ann.meta,
        },
    }
    return {"@schema": SLICER_MARKUPS_SCHEMA, "markups": [markup]}


def _to_object_grid(values: Any, n: int, k: int) -> np.ndarray:
    """(N, K) nested lists or array (extra trailing axes allowed) to an (N, K) object array,
    without numpy broadcasting or splitting strings."""
    if isinstance(values, np.ndarray) and values.shape[:2] != (n, k):
        raise ValueError("shape")
    if isinstance(values, (str, bytes)) or len(values) != n or any(
        isinstance(row, (str, bytes)) or len(row) != k for row in values
    ):
        raise ValueError("shape")
    arr = np.empty((n, k), dtype=object)
    for i, row in enumerate(values):
        for j, v in enumerate(row):
            arr[i, j] = v
    return arr


def write_slicer_markups(
    ann: SpineAnnotation,
    path: str | os.PathLike,
    point_fields: Mapping[str, Any] | None = None,
    name: str = "vertebrae",
    on_unknown_spacing: str = "pixels",
    locked: bool = False,
) -> None:
    """Write ``ann`` as a Slicer markups JSON file (atomically); see :func:`annotation_to_markups`.

    Raises:
        ValueError: as :func:`annotation_to_markups`, or a value that JSON cannot hold (NaN in
            ``meta`` or ``point_fields``), naming ``path``.
    """
    d = annotation_to_markups(ann, point_fields, name=name, on_unknown_spacing=on_unknown_spacing, locked=locked)
    try:
        text = json.dumps(d, indent=1, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: cannot write markups JSON: {e}") from None
    atomic_write_text(path, text)


def _select_markup(d: Any, source: str, markup_index: int) -> dict[str, Any]:
    if not isinstance(d, dict) or not isinstance(d.get("markups"), list):
        raise AnnotationError(f"{source}: not a Slicer markups file (no 'markups' list)")
    fiducials = [m for m in d["markups"] if isinstance(m, dict) and m.get("type") == "Fiducial"]
    if not -len(fiducials) <= markup_index < len(fiducials):
        raise AnnotationError(
            f"{source}: markup_index {markup_index} but the file has {len(fiducials)} Fiducial (point list) markups"
        )
    m = fiducials[markup_index]
    if not isinstance(m.get("controlPoints", []), list):
        raise AnnotationError(f"{source}: 'controlPoints' must be a list")
    return m


def _units_to_mm(m: dict[str, Any], source: str) -> float:
    units = m.get("coordinateUnits", "mm")
    if isinstance(units, list) and units:
        units = units[0]
    if units == "mm":
        return 1.0
    if units == "um":
        return 1e-3
    raise AnnotationError(f"{source}: unsupported coordinateUnits {units!r} (expected 'mm' or 'um')")


def _parse(
    d: Any,
    source: str,
    spacing_mm: Any,
    spacing_source: str,
    region: str | None,
    scheme: str | None,
    markup_index: int,
    ignore_unknown_labels: bool,
) -> tuple[SpineAnnotation, list[tuple[int, int, dict[str, Any]]]]:
    m = _select_markup(d, source, markup_index)
    info = m.get(MONAI_SPINE_KEY) if isinstance(m.get(MONAI_SPINE_KEY), dict) else {}
    cs = m.get("coordinateSystem", "LPS")
    if cs not in ("LPS", "RAS"):
        raise AnnotationError(f"{source}: unsupported coordinateSystem {cs!r} (expected 'LPS' or 'RAS')")
    to_mm = _units_to_mm(m, source)

    # spacing: explicit argument, else the monaiSpine block
    if isinstance(spacing_mm, str):
        if spacing_mm != _FROM_FILE:
            raise ValueError(f"spacing_mm must be 'file', None or (sx, sy), got {spacing_mm!r}")
        if not info:
            raise AnnotationError(
                f"{source}: no '{MONAI_SPINE_KEY}' block to take the spacing from; pass spacing_mm=(sx, sy), "
                "or spacing_mm=None if the positions are pixel units"
            )
        sp = info.get("spacing_mm")
        src_name = info.get("spacing_source", "unknown" if sp is None else "sidecar")
        if sp is not None and info.get("units", "mm") != "mm":
            raise AnnotationError(f"{source}: '{MONAI_SPINE_KEY}' has spacing_mm but units {info.get('units')!r}")
    else:
        sp = spacing_mm
        src_name = "unknown" if sp is None else spacing_source
    if sp is None:
        div = np.ones(2)
    else:
        div = np.asarray(sp, dtype=np.float64).reshape(-1)
        if div.shape != (2,) or not np.all(np.isfinite(div)) or np.any(div <= 0):
            raise AnnotationError(f"{source}: spacing_mm must be two positive numbers (sx, sy), got {sp!r}")

    # parse the control points
    parsed: list[tuple[str, str, np.ndarray, bool, dict[str, Any]]] = []
    seen: dict[tuple[str, str], int] = {}
    for idx, cp in enumerate(m.get("controlPoints", [])):
        where = f"{source}: controlPoints[{idx}]"
        if not isinstance(cp, dict):
            raise AnnotationError(f"{where}: not an object")
        try:
            lev, pname = parse_point_label(cp.get("label", ""))
        except ValueError as e:
            if ignore_unknown_labels:
                continue
            raise AnnotationError(f"{where}: {e}") from None
        if (lev, pname) in seen:
            raise AnnotationError(f"{where}: label {cp.get('label')!r} repeats controlPoints[{seen[(lev, pname)]}]")
        seen[(lev, pname)] = idx
        status = cp.get("positionStatus")
        pos = cp.get("position")
        xyz = np.full(3, np.nan)
        if pos is not None:
            try:
                xyz = np.asarray([float(v) for v in pos], dtype=np.float64)
            except (TypeError, ValueError):
                xyz = np.full(3, np.nan)
            if xyz.shape != (3,):
                xyz = np.full(3, np.nan)
        has_pos = bool(np.all(np.isfinite(xyz)))
        if status == "defined" and not has_pos:
            raise AnnotationError(f"{where} ({cp.get('label')}): defined point without a 3-number position")
        if status is not None and status not in ("defined", "preview", "undefined", "missing"):
            raise AnnotationError(f"{where}: unknown positionStatus {status!r}")
        visible = has_pos and (status == "defined" or status is None)
        lps = xyz[:2] * (-1.0 if cs == "RAS" else 1.0) * to_mm
        extra = {key: val for key, val in cp.items() if key not in RESERVED_POINT_FIELDS}
        parsed.append((lev, pname, lps / div, visible, extra))

    # scheme, region and levels
    names_found = {p[1] for p in parsed}
    sch_name = scheme or info.get("scheme")
    if sch_name is None:
        cands = [s.name for s in SCHEMES.values() if names_found <= set(s.point_names)]
        if len(cands) != 1 or not names_found:
            raise AnnotationError(
                f"{source}: cannot tell the keypoint scheme from point names {sorted(names_found)}; pass scheme="
            )
        sch_name = cands[0]
    try:
        sch = get_scheme(sch_name)
    except KeyError as e:
        raise AnnotationError(f"{source}: {e.args[0]}") from None
    bad = sorted(names_found - set(sch.point_names))
    if bad:
        raise AnnotationError(f"{source}: point names {bad} are not in scheme {sch.name} {sch.point_names}")
    levels_found = sorted({p[0] for p in parsed}, key=level_order)
    levels = list(info.get("levels") or levels_found)
    missing_levels = sorted(set(levels_found) - set(levels), key=level_order)
    if missing_levels:
        raise AnnotationError(f"{source}: levels {missing_levels} are not in the '{MONAI_SPINE_KEY}' levels {levels}")
    reg = region or info.get("region")
    if reg is None:
        if sch.name == "ap4":
            reg = "ap"
        else:
            prefixes = {lev[0] for lev in levels}
            if len(prefixes) != 1 or next(iter(prefixes)) not in _REGION_BY_PREFIX:
                raise AnnotationError(f"{source}: cannot tell the region from levels {levels}; pass region=")
            reg = _REGION_BY_PREFIX[next(iter(prefixes))]

    row = {lev: i for i, lev in enumerate(levels)}
    col = {p: j for j, p in enumerate(sch.point_names)}
    kp = np.full((len(levels), sch.num_points, 2), np.nan)
    vis = np.zeros((len(levels), sch.num_points), dtype=bool)
    extras: list[tuple[int, int, dict[str, Any]]] = []
    for lev, pname, xy, visible, extra in parsed:
        i, j = row[lev], col[pname]
        kp[i, j] = xy
        vis[i, j] = visible
        extras.append((i, j, extra))
    size = info.get("image_size")
    try:
        ann = SpineAnnotation(
            levels=levels,
            keypoints_px=kp,
            visible=vis,
            region=reg,
            scheme=sch.name,
            image=info.get("image"),
            image_size=tuple(int(s) for s in size) if size is not None else None,
            spacing_mm=tuple(float(s) for s in div) if sp is not None else None,
            spacing_source=src_name,
            meta=dict(info.get("meta") or {}),
        )
    except AnnotationError as e:
        raise AnnotationError(f"{source}: {e}") from None
    except (KeyError, ValueError, TypeError) as e:
        raise AnnotationError(f"{source}: {e}") from None
    return ann, extras


def markups_to_annotation(
    d: Mapping[str, Any],
    spacing_mm: Sequence[float] | None | str = _FROM_FILE,
    spacing_source: str = "sidecar",
    region: str | None = None,
    scheme: str | None = None,
    markup_index: int = 0,
    ignore_unknown_labels: bool = False,
    source: str = "markups",
) -> SpineAnnotation:
    """Parse a Slicer markups dictionary into a :class:`SpineAnnotation`.

    Args:
        d: the parsed JSON.
        spacing_mm: ``"file"`` to take the spacing from the ``monaiSpine`` block (files written
            by this module), ``(sx, sy)`` mm/pixel to convert positions, or ``None`` when the
            positions are pixel units (spacing stays unknown).
        spacing_source: recorded source of an explicit ``spacing_mm``.
        region: region name; default from the ``monaiSpine`` block, else inferred (``ap4`` ->
            ``ap``; ``lateral5`` with only C or only L levels -> ``cervical`` / ``lumbar``).
        scheme: scheme name; default from the block, else the one scheme holding all point names.
        markup_index: which ``Fiducial`` markup of the file (0 = the first).
        ignore_unknown_labels: skip control points whose label is not ``<level>-<point>``
            instead of raising.
        source: name used in error messages.

    Returns:
        The annotation: levels from the block (else the labels' levels, top to bottom), points
        never listed are NaN and invisible.

    Raises:
        AnnotationError: naming ``source`` and the bad markup, label, status or position.
    """
    return _parse(d, source, spacing_mm, spacing_source, region, scheme, markup_index, ignore_unknown_labels)[0]


def _load(path: str | os.PathLike) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise AnnotationError(f"{path}: not valid JSON ({e})") from None


def read_slicer_markups(
    path: str | os.PathLike,
    spacing_mm: Sequence[float] | None | str = _FROM_FILE,
    spacing_source: str = "sidecar",
    region: str | None = None,
    scheme: str | None = None,
    markup_index: int = 0,
    ignore_unknown_labels: bool = False,
) -> SpineAnnotation:
    """Read a Slicer markups JSON file; arguments as :func:`markups_to_annotation`.

    Raises:
        FileNotFoundError: no such file.
        AnnotationError: invalid JSON or markups (the message names ``path``).
    """
    return markups_to_annotation(
        _load(path),
        spacing_mm=spacing_mm,
        spacing_source=spacing_source,
        region=region,
        scheme=scheme,
        markup_index=markup_index,
        ignore_unknown_labels=ignore_unknown_labels,
        source=str(path),
    )


def read_slicer_point_fields(
    path: str | os.PathLike,
    fields: Sequence[str] = ("description",),
    spacing_mm: Sequence[float] | None | str = _FROM_FILE,
    region: str | None = None,
    scheme: str | None = None,
    markup_index: int = 0,
    ignore_unknown_labels: bool = False,
) -> dict[str, np.ndarray]:
    """Per-point extra fields of a markups file, aligned with :func:`read_slicer_markups`.

    Args:
        path: the file.
        fields: control-point keys to return (e.g. ``"description"``).
        spacing_mm, region, scheme, markup_index, ignore_unknown_labels: as
            :func:`read_slicer_markups` (they decide the levels, hence the row order).

    Returns:
        ``{field: (N, K) object array}``, ``None`` where a point lacks the field.
    """
    ann, extras = _parse(
        _load(path), str(path), spacing_mm, "sidecar", region, scheme, markup_index, ignore_unknown_labels
    )
    out = {f: np.full(ann.visible.shape, None, dtype=object) for f in fields}
    for i, j, extra in extras:
        for f in fields:
            if f in extra:
                out[f][i, j] = extra[f]
    return out

