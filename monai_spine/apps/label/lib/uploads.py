"""Uploaded files of one request: client file names reduced to base names, temporary copies tracked and removed.

MONAI Label's endpoints copy an uploaded image or label to ``tempfile.NamedTemporaryFile(suffix=...).name``
(a ``tmpXXXX<suffix>`` file in the system's temporary folder) and delete it in a background task
that runs **only after a successful response**: a refused upload would leave its full copy on
disk. :func:`install_tracking` makes those endpoints' ``tempfile`` record the names it hands out
in the current request's :class:`RequestUploads` (a context variable set by the app's ASGI guard);
the guard removes whatever is still there when the request is over (:func:`cleanup`), whatever
the status. The same record tells the inference task which temporary file is *this* request's own
upload (:func:`is_request_upload`), so no other file of the temporary folder can be named as one.

MONAI Label's own clients send the full local path as the upload's file name (3D Slicer a
temporary file such as ``/tmp/slicer-monai-label/tmpXXXX.json``, on Windows ``C:\\...``):
:func:`client_basename` keeps its last component (both separators); :func:`traversal_name` says
whether a name holds a ``..`` component or control characters (refused before anything is written).
"""

from __future__ import annotations

import contextvars
import logging
import os
import sys
import tempfile
import threading
import types
from typing import Any, Iterator

__all__ = [
    "RequestUploads",
    "begin_request",
    "current_uploads",
    "is_request_upload",
    "cleanup",
    "install_tracking",
    "client_basename",
    "traversal_name",
    "TRACKED_MODULES",
]

logger = logging.getLogger(__name__)

#: MONAI Label endpoint modules whose uploads are tracked (sessions keep their file: not tracked)
TRACKED_MODULES = ("monailabel.endpoints.datastore", "monailabel.endpoints.infer")


class RequestUploads:
    """Temporary files handed out to the endpoints while one request runs (thread-safe list of paths)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._paths: list[str] = []

    def add(self, path: str) -> None:
        """Record ``path`` (resolved) as one of the request's temporary uploads."""
        with self._lock:
            self._paths.append(os.path.realpath(path))

    def __iter__(self) -> Iterator[str]:
        with self._lock:
            return iter(list(self._paths))

    def __contains__(self, path: object) -> bool:
        if not isinstance(path, str):
            return False
        with self._lock:
            return os.path.realpath(path) in self._paths


_CURRENT: contextvars.ContextVar[RequestUploads | None] = contextvars.ContextVar("monai_spine_uploads", default=None)


def begin_request() -> RequestUploads:
    """Start recording the temporary uploads of the request running in this context."""
    rec = RequestUploads()
    _CURRENT.set(rec)
    return rec


def current_uploads() -> RequestUploads | None:
    """The record of the current request, or None outside a request."""
    return _CURRENT.get()


def is_request_upload(path: str) -> bool:
    """True when ``path`` is a temporary copy of a file uploaded with the current request."""
    rec = _CURRENT.get()
    return rec is not None and path in rec


def cleanup(rec: RequestUploads | None) -> list[str]:
    """Delete the request's temporary uploads that still exist (after its response, whatever the status).

    Returns:
        The paths deleted.
    """
    gone = []
    for p in rec or ():
        try:
            if os.path.isfile(p):
                os.unlink(p)
                gone.append(p)
        except OSError as e:  # reported, never raised: the response is already sent
            logger.warning(f"could not remove temporary upload {p}: {e}")
    if gone:
        logger.info(f"removed {len(gone)} temporary upload(s) left by the request: {gone}")
    return gone


class _TrackingTempfile(types.ModuleType):
    """``tempfile`` for MONAI Label's endpoint modules: ``NamedTemporaryFile`` names are recorded."""

    def __init__(self) -> None:
        super().__init__("tempfile")

    def __getattr__(self, name: str) -> Any:
        return getattr(tempfile, name)

    @staticmethod
    def NamedTemporaryFile(*args: Any, **kwargs: Any) -> Any:  # noqa: N802 - the stdlib's name
        f = tempfile.NamedTemporaryFile(*args, **kwargs)
        rec = _CURRENT.get()
        if rec is not None:
            rec.add(f.name)
        return f


def install_tracking() -> list[str]:
    """Give MONAI Label's datastore and inference endpoints the recording ``tempfile`` (idempotent).

    Returns:
        The module names patched now or before (those of :data:`TRACKED_MODULES` that are imported).
    """
    done = []
    for name in TRACKED_MODULES:
        mod = sys.modules.get(name)
        if mod is None or not hasattr(mod, "tempfile"):
            continue
        if not isinstance(mod.tempfile, _TrackingTempfile):
            mod.tempfile = _TrackingTempfile()
        done.append(name)
    return done


def _decode(name: str) -> str:
    n = name.strip()
    if n.lower().startswith("utf-8''"):
        from urllib.parse import unquote

        n = unquote(n[7:])
    return n


def client_basename(name: str | None) -> str | None:
    """The last component of a client's file name, split at ``/`` and ``\\`` (a Windows drive dropped).

    ``"/tmp/slicer-monai-label/tmpab12.json"`` -> ``"tmpab12.json"``; ``"C:\\Users\\me\\x.png"`` ->
    ``"x.png"``; None or empty stays as it is.
    """
    if not name:
        return name
    n = _decode(name).replace("\\", "/")
    base = n.rsplit("/", 1)[-1]
    if len(base) >= 2 and base[1] == ":" and base[0].isalpha():
        base = base[2:]
    return base


def traversal_name(name: str) -> bool:
    """True when a file name holds a ``..`` component or control characters (refused)."""
    n = _decode(name)
    if any(ord(c) < 32 for c in n):
        return True
    return any(part == ".." for part in n.replace("\\", "/").split("/"))
