"""MONAI Label inference tasks: whole-radiograph keypoints, and corners from clicked vertebra centres.

Both are :class:`monailabel.interfaces.tasks.infer_v2.InferTask` s whose ``__call__(request)``
returns ``(result_file, result_json)``: the result file is a 3D Slicer markups JSON (``.mrk.json``,
what ``/infer/<model>?output=image`` sends back), the JSON holds the project's result and the same
markups (``output=json``). See ``docs/label.md`` for the request and response formats.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from typing import Any, Dict, Tuple, Union

from monailabel.interfaces.tasks.infer_v2 import InferTask, InferType

from monai_spine.apps.label.lib.clicks import LEVEL_AUTO
from monai_spine.apps.label.lib.core import LabelAppError
from monai_spine.apps.label.lib.datastore import http_error
from monai_spine.apps.label.lib.models import ModelStore
from monai_spine.apps.label.lib.uploads import is_request_upload

__all__ = ["KeypointsInfer", "CornersInfer", "resolve_image", "RESULT_FORMAT", "SLICER_SEGMENT"]

logger = logging.getLogger(__name__)

#: ``format`` of the JSON both tasks return
RESULT_FORMAT = "monai-spine-label-result"


def resolve_image(request: Dict[str, Any], studies: str) -> Tuple[str, str]:
    """The radiograph a request names, confined to the studies folder or the request's own upload.

    MONAI Label replaces a datastore id by the image's path, or passes the path of a file uploaded
    with the request (a temporary copy recorded by :mod:`~monai_spine.apps.label.lib.uploads`). Any
    other path (e.g. ``image=/etc/hosts``, which MONAI Label would pass through, or another
    request's temporary file) is refused.

    Returns:
        ``(path, name)``: the image path and the name recorded in the result (the id or ``upload``).

    Raises:
        fastapi.HTTPException: 400 (a path outside the studies folder), 404 (unknown id, named).
    """
    image = request.get("image")
    if not isinstance(image, str) or not image:
        raise http_error(404, f"image {image!r} not found in the studies folder")
    real = os.path.realpath(image)
    studies_real = os.path.realpath(studies)
    if os.path.commonpath([real, studies_real]) == studies_real:
        if not os.path.isfile(real):
            raise http_error(404, f"image {os.path.basename(image)!r} not found in the studies folder")
        return real, os.path.basename(real)
    if is_request_upload(real) and os.path.isfile(real):
        return real, "upload"
    if not os.path.exists(image):
        raise http_error(404, f"image {image!r} not found in the studies folder")
    raise http_error(400, f"refused image {image!r}: outside the studies folder; use an image of the studies "
                          "folder (e.g. from Next Sample) or upload the film with the request")


def _write_result_file(markups: Any) -> Union[str, None]:
    if markups is None:
        return None
    fd, path = tempfile.mkstemp(prefix="monai-spine-", suffix=".mrk.json")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(markups, f, indent=1, allow_nan=False)
    return path


#: the one "label" the keypoints task declares: the 3D Slicer module creates a segment of that name for
#: each new sample (so the click tools have a segment to work on) and runs the task that lists it
#: automatically after "Next Sample"
SLICER_SEGMENT = "vertebrae"


class _Base(InferTask):
    def __init__(self, store: ModelStore, studies: str, type: Any, description: str, config: Dict[str, Any],
                 labels: Any = None) -> None:
        super().__init__(type=type, labels=list(labels or []), dimension=2, description=description, config=config)
        self.store = store
        self.studies = studies


class KeypointsInfer(_Base):
    """All vertebrae of a radiograph: detector, then BayeRegX keypoints with sigma_p and class.

    Request params: ``pipeline`` (``regressor`` default, ``heatmap`` or ``both``; the MONAI Label
    model name is ``keypoints``). Declares one label, :data:`SLICER_SEGMENT`, for the Slicer module.

    Result JSON: ``{"format": "monai-spine-label-result", "task": "keypoints", "image": id,
    "prediction": <monai-spine-prediction>, "markups": <Slicer markups>, "corners_markups": ...,
    "uncertainty": mean total sigma_p (crop fractions) or null, "view": {"in_domain": ..., "reason": ...},
    "warnings": [texts]}`` (``view``: does the film look like the model's view, :func:`~.models.view_check`).
    """

    def __init__(self, store: ModelStore, studies: str) -> None:
        super().__init__(store, studies, InferType.DETECTION,
                         "Vertebra keypoints with uncertainty (BayeRegX) on the whole radiograph, as 3D Slicer markups",
                         {"pipeline": ["regressor", "both", "heatmap"]}, labels=[SLICER_SEGMENT])

    def is_valid(self) -> bool:
        return self.store.config.has_regressor()

    def __call__(self, request: Dict[str, Any]) -> Tuple[Union[str, None], Dict[str, Any]]:
        path, name = resolve_image(request, self.studies)
        pipeline = request.get("pipeline", "regressor")
        if isinstance(pipeline, list):
            pipeline = pipeline[0]
        try:
            out = self.store.predict(path, model=str(pipeline), name=name)
        except LabelAppError as e:
            raise http_error(400, str(e)) from None
        except FileNotFoundError as e:
            raise http_error(503, f"model missing: {e}") from None
        except ValueError as e:  # unreadable image (XrayReadError names the file), bad spacing
            raise http_error(422, f"{name}: {e}") from None
        res = {"format": RESULT_FORMAT, "task": "keypoints", "image": name, "prediction": out["result"],
               "markups": out["markups"], "corners_markups": out["corners_markups"], "uncertainty": out["uncertainty"],
               "view": out["view"], "warnings": out["warnings"]}
        return _write_result_file(out["markups"] or out["corners_markups"]), res


class CornersInfer(_Base):
    """Semi-automatic corners: the annotator clicks vertebra centres, the heatmap FCN gives the corners.

    Request params: ``centres`` (``[[x, y], ...]`` image pixels, one or more) or MONAI Label's
    ``foreground`` clicks (``[[i, j, k], ...]`` image indices, i = column, as the 3D Slicer module
    sends every click so far), optional ``levels`` (``["C3", "C4", ...]``, one per centre) or
    ``first_level`` (the topmost click's level; ``"auto"``, the default, infers the levels: from the
    detector when the app has one, else from the top of the model's region down). Clicks outside the
    image are refused (``400``) before any model runs.

    Config (``GET /info/``): ``{"first_level": ["auto", <the region's levels>...]}``: the Slicer
    module reads each list-valued entry as its first element (``auto``) and shows the list as a
    choice in its options table; it has no list-valued entry that could be empty.

    Result JSON: ``{"format": "monai-spine-label-result", "task": "corners", "image": id,
    "corners": <monai-spine-corners, with "levels_source">, "markups": <Slicer markups, labels like C4-AS>,
    "levels": [...], "levels_source": "given" | "first_level" | "detector" | "top_down", "clicks": n}``.
    """

    def __init__(self, store: ModelStore, studies: str) -> None:
        super().__init__(store, studies, InferType.DEEPGROW,
                         "Vertebral corners from clicked vertebra centres, one click at a time (probabilistic "
                         "spatial regression FCN)",
                         {"first_level": [LEVEL_AUTO, *_region_levels(store)]})

    def is_valid(self) -> bool:
        return self.store.config.has_heatmap()

    def __call__(self, request: Dict[str, Any]) -> Tuple[Union[str, None], Dict[str, Any]]:
        path, name = resolve_image(request, self.studies)
        centres = request.get("centres")
        if centres is None or (isinstance(centres, (list, tuple)) and len(centres) == 0):
            centres = request.get("foreground")
        levels = request.get("levels") or None
        if isinstance(levels, str):
            levels = [s for s in levels.replace(";", ",").split(",") if s.strip()]
        first_level = request.get("first_level")
        if isinstance(first_level, list):
            first_level = first_level[0] if first_level else None
        try:
            out = self.store.corners(path, centres, levels=levels, name=name, first_level=first_level)
        except LabelAppError as e:
            raise http_error(400, str(e)) from None
        except FileNotFoundError as e:
            raise http_error(503, f"model missing: {e}") from None
        except ValueError as e:  # unreadable image, centres the frames cannot use
            raise http_error(422, f"{name}: {e}") from None
        verts = out["result"].get("vertebrae", [])
        res = {"format": RESULT_FORMAT, "task": "corners", "image": name, "corners": out["result"],
               "markups": out["markups"], "levels": [v.get("level") for v in verts],
               "levels_source": out["result"].get("levels_source"), "clicks": len(verts)}
        return _write_result_file(out["markups"]), res


def _region_levels(store: ModelStore) -> list:
    """The heatmap model's region levels (top to bottom) for the ``first_level`` choice; all levels without a spec."""
    from monai_spine.data.keypoints import _ALL_LEVELS, get_region
    from monai_spine.inference.model_zoo import read_spec

    try:
        region = read_spec(store.config.heatmap_dir, "heatmap").get("region")
        return list(get_region(str(region)).levels)
    except (OSError, ValueError, KeyError):
        return list(_ALL_LEVELS)
