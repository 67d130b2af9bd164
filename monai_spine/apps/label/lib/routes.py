"""The app's versions of some MONAI Label 0.8.5 endpoints: client paths accepted, clear 4xx answers, inference off the event loop.

:func:`install_routes` puts, in front of MONAI Label's own route for the same method and path, a
route that checks the request and then calls MONAI Label's own function for it:

* ``PUT /datastore/image`` (and the deprecated ``PUT /datastore/``, which the Python client's
  ``upload_image`` uses), ``PUT /datastore/label``: the uploaded file's name is reduced to its base
  name (MONAI Label's clients send the full local path, :func:`~.uploads.client_basename`);
  ``params`` must be a JSON object (``400``); the copy and the checks run in a worker thread;
* ``POST /infer/{model}``: ``404`` naming an unknown model (MONAI Label: ``500``), ``400`` for
  ``params`` that are not a JSON object, ``404`` naming an image id that is not in the datastore,
  ``400`` for an ``image`` that is a path; then MONAI Label's ``run_inference`` runs in a worker
  thread (MONAI Label 0.8.5 runs it in the server's event loop, so one long request stalled every
  other client);
* ``POST /train/{model}``, ``POST /activelearning/{strategy}``, ``POST /scoring/{method}``: ``404``
  naming an unknown trainer, strategy or scoring method (MONAI Label: ``200`` then a failing
  subprocess, or ``500``);
* ``GET /datastore/image``, ``GET /datastore/label``: the ``404`` names the id.

The app's routes are put first in the app's route list, so FastAPI matches them before MONAI
Label's (which stay behind them).

``json.JSONDecodeError`` escaping any endpoint is answered ``400`` (MONAI Label: ``500``).
"""


import contextvars
import json
import logging
from typing import Any, Callable, Dict, Optional

__all__ = ["install_routes", "parse_params"]

logger = logging.getLogger(__name__)


def _http(status: int, detail: str) -> Exception:
    from fastapi import HTTPException

    return HTTPException(status_code=status, detail=detail)


def parse_params(params: Optional[str], what: str = "params") -> Dict[str, Any]:
    """The ``params`` form field as a dict; ``400`` when it is not a JSON object."""
    if params in (None, ""):
        return {}
    try:
        p = json.loads(params)
    except (TypeError, ValueError) as e:
        raise _http(400, f"{what}: not JSON ({e}); send a JSON object such as {{\"levels\": [\"C3\"]}}") from None
    if not isinstance(p, dict):
        raise _http(400, f"{what}: expected a JSON object, got {type(p).__name__}")
    return p


def _known(instance: Any, kind: str) -> list[str]:
    names = getattr(instance, "task_names", None)
    if names is not None:
        return list(names(kind))
    return list(instance.info().get(kind, {}))


def _check_name(instance: Any, kind: str, name: Optional[str], what: str) -> None:
    known = _known(instance, kind)
    if name not in known:
        raise _http(404, f"unknown {what} {name!r}; this app has {sorted(known)}")


def _check_image_id(instance: Any, image: str) -> None:
    from monai_spine.apps.label.lib.core import LabelAppError
    from monai_spine.apps.label.lib.labels import safe_image_id

    try:
        safe_image_id(image)
    except LabelAppError:
        raise _http(400, f"refused image {image!r}: give the id of an image of the studies folder "
                         "(or upload the file with the request)") from None
    ds = instance.datastore()
    has = getattr(ds, "has_image", None)
    found = has(image) if has is not None else bool(ds.get_image_uri(image))
    if not found:
        raise _http(404, f"image {image!r} not found in the studies folder")


def _replace(app: Any, method: str, path: str, endpoint: Callable[..., Any]) -> bool:
    """Add ``endpoint`` for ``method path`` in front of every route of the app, so it is matched before
    MONAI Label's own (kept behind it, in its included router: FastAPI matches routes in order)."""
    routes = app.router.routes
    for r in routes:
        if getattr(r, "path", None) == path and method in (getattr(r, "methods", None) or ()) and getattr(
                getattr(r, "endpoint", None), "_monai_spine", False):
            return True
    app.router.add_api_route(path, endpoint, methods=[method], include_in_schema=False)
    new = routes.pop()
    routes.insert(0, new)
    return True


def install_routes() -> bool:
    """Install the app's routes in the running ``monailabel.app:app`` (see the module docstring; idempotent).

    Returns:
        False when this process has no MONAI Label server app (a training or scoring subprocess).
    """
    import sys

    mod = sys.modules.get("monailabel.app")
    app: Any = getattr(mod, "app", None)
    if app is None:
        return False

    from fastapi import BackgroundTasks, Depends, File, Form, Request, UploadFile
    from fastapi.responses import JSONResponse
    from monailabel.config import settings
    from monailabel.endpoints import activelearning as al_ep
    from monailabel.endpoints import datastore as ds_ep
    from monailabel.endpoints import infer as infer_ep
    from monailabel.endpoints import scoring as scoring_ep
    from monailabel.endpoints import train as train_ep
    from monailabel.endpoints.user.auth import RBAC, User
    from monailabel.interfaces.datastore import DefaultLabelTag
    from monailabel.interfaces.utils.app import app_instance
    from starlette.concurrency import run_in_threadpool

    from monai_spine.apps.label.lib.uploads import client_basename, install_tracking

    install_tracking()
    prefix = settings.MONAI_LABEL_API_STR

    def mark(f: Callable[..., Any]) -> Callable[..., Any]:
        f._monai_spine = True  # type: ignore[attr-defined]
        return f

    @mark
    async def add_image(background_tasks: BackgroundTasks, image: Optional[str] = None, params: str = Form("{}"),
                        file: UploadFile = File(...),
                        user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_ANNOTATOR))):
        parse_params(params)
        file.filename = client_basename(file.filename)
        ctx = contextvars.copy_context()  # copying and checking a large film: not in the event loop
        return await run_in_threadpool(ctx.run, ds_ep.add_image, background_tasks, image, params, file, user.username)

    @mark
    async def save_label(background_tasks: BackgroundTasks, image: str, params: str = Form("{}"),
                         tag: str = DefaultLabelTag.FINAL.value, label: UploadFile = File(...),
                         user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_ANNOTATOR))):
        parse_params(params)
        label.filename = client_basename(label.filename)
        ctx = contextvars.copy_context()  # the label is checked against its film (read from disk)
        return await run_in_threadpool(ctx.run, ds_ep.save_label, background_tasks, image, params, tag, label,
                                       user.username)

    @mark
    async def download_image(image: str, check_only: bool = False, check_sum: Optional[str] = None,
                             user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_USER))):
        _check_image_id(app_instance(), image)
        return ds_ep.download_image(image, check_only, check_sum)

    @mark
    async def download_label(label: str, tag: str, check_only: bool = False,
                             user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_USER))):
        ds = app_instance().datastore()
        uri = ds.get_label_uri(label, tag) if label and tag else ""
        if not uri:
            raise _http(404, f"no label {label!r} with tag {tag!r} in the studies folder")
        return ds_ep.download_label(label, tag, check_only)

    @mark
    async def run_inference(background_tasks: BackgroundTasks, model: str, image: str = "", session_id: str = "",
                            params: str = Form("{}"), file: UploadFile = File(None), label: UploadFile = File(None),
                            output: Optional[infer_ep.ResultType] = None,
                            user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_USER))):
        instance = app_instance()
        _check_name(instance, "models", model, "model")
        parse_params(params)
        if file:
            file.filename = client_basename(file.filename)
        if label:
            label.filename = client_basename(label.filename)
        if not file and not session_id:
            if not image:
                raise _http(400, "no image: give an image id of the studies folder (image=ID) or upload a file")
            _check_image_id(instance, image)
        ctx = contextvars.copy_context()  # the request's upload record (uploads.py) goes with it
        return await run_in_threadpool(ctx.run, infer_ep.run_inference, background_tasks, model, image, session_id,
                                       params, file, label, output)

    @mark
    async def train_model(model: str, params: Optional[dict] = None, run_sync: Optional[bool] = False,
                          enqueue: Optional[bool] = False,
                          user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_ADMIN))):
        _check_name(app_instance(), "trainers", model, "trainer")
        return train_ep.run_model(model, params, run_sync, enqueue)

    @mark
    async def next_sample(strategy: str, params: Optional[dict] = None,
                          user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_USER))):
        _check_name(app_instance(), "strategies", strategy, "strategy")
        return al_ep.sample(strategy, params, user.username)

    @mark
    async def run_scoring(method: str, params: Optional[dict] = None, run_sync: Optional[bool] = False,
                          user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_ANNOTATOR))):
        _check_name(app_instance(), "scoring", method, "scoring method")
        if run_sync:  # the scoring predicts every unlabelled image: not in the event loop
            return await run_in_threadpool(scoring_ep.run_method, method, params, run_sync)
        return scoring_ep.run_method(method, params, run_sync)

    ok = [
        _replace(app, "PUT", f"{prefix}/datastore/image", add_image),
        _replace(app, "PUT", f"{prefix}/datastore/", add_image),
        _replace(app, "PUT", f"{prefix}/datastore/label", save_label),
        _replace(app, "GET", f"{prefix}/datastore/image", download_image),
        _replace(app, "GET", f"{prefix}/datastore/label", download_label),
        _replace(app, "POST", f"{prefix}/infer/{{model}}", run_inference),
        _replace(app, "POST", f"{prefix}/train/{{model}}", train_model),
        _replace(app, "POST", f"{prefix}/activelearning/{{strategy}}", next_sample),
        _replace(app, "POST", f"{prefix}/scoring/{{method}}", run_scoring),
    ]

    async def bad_json(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse(status_code=400, content={"detail": f"request: malformed JSON ({exc})"})

    app.add_exception_handler(json.JSONDecodeError, bad_json)
    logger.info(f"monai-spine routes installed: {len(ok)}")
    return all(ok)
