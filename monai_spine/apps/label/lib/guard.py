"""An ASGI guard in front of the MONAI Label server: request bodies are size-limited, uploads cleaned up.

MONAI Label's endpoints copy an uploaded file to a temporary file (and Starlette parses the whole
multipart body) before the app's datastore sees it, so a size check in the datastore alone would
let a huge upload fill the disk first. :class:`UploadGuard` wraps the server's ASGI stack and, for
every ``PUT``/``POST`` request:

* answers ``413`` when ``Content-Length`` is over the limit, after reading and discarding the body
  (a client that sends its whole body before reading the answer, as MONAI Label's Python client
  does, would otherwise see "connection reset" instead of the ``413``; at most
  :data:`DRAIN_FACTOR` times the limit, and at least :data:`DRAIN_MIN_BYTES`, is read), and stops
  reading (``413``) a body without ``Content-Length`` (chunked) as soon as it passes the limit;
* answers ``400`` when a multipart part carries a file name with a ``..`` component or control
  characters (a full client path such as ``/tmp/slicer/tmp1.json`` or ``C:\\x\\a.png`` is fine:
  the app's routes keep its base name, :mod:`~monai_spine.apps.label.lib.routes`);
* records the temporary copies MONAI Label makes of the request's uploads and deletes those still on
  disk once the request is over, whatever its status (:mod:`~monai_spine.apps.label.lib.uploads`).

:func:`install_guard` puts the guard in front of ``monailabel.app:app`` (the FastAPI app that
``monailabel start_server`` runs); it is called from the app's constructor, which MONAI Label runs
in the server's startup, once the middleware stack exists.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from typing import Any, Awaitable, Callable

__all__ = ["UploadGuard", "install_guard", "unsafe_filename", "DRAIN_FACTOR", "DRAIN_MIN_BYTES"]

logger = logging.getLogger(__name__)

#: a multipart part header line naming a file: ``Content-Disposition: form-data; name="file"; filename="x.png"``
_FILENAME_RE = re.compile(
    rb'content-disposition:[^\r\n]*?\bfilename\*?\s*=\s*(?:"([^"\r\n]*)"|([^;\r\n]*))', re.IGNORECASE
)
_TAIL = 512  # bytes of the previous chunk kept, so a header split across chunks is still seen

#: an over-limit body announced by ``Content-Length`` is read (and discarded) up to this many times the
#: limit (at least :data:`DRAIN_MIN_BYTES`) before the ``413`` is sent, so that the client reads the
#: answer; longer ones are cut off
DRAIN_FACTOR = 4
DRAIN_MIN_BYTES = 256 * 1024 * 1024


def unsafe_filename(name: str) -> bool:
    """True when an uploaded file name holds a ``..`` component or control characters (see :func:`~.uploads.traversal_name`)."""
    from monai_spine.apps.label.lib.uploads import traversal_name

    return traversal_name(name)


class UploadGuard:
    """ASGI wrapper refusing oversized request bodies (``413``) and path-like upload names (``400``).

    Args:
        app: the wrapped ASGI application.
        max_bytes: largest accepted request body, bytes.
        methods: HTTP methods whose bodies are checked.
    """

    def __init__(self, app: Callable[..., Awaitable[None]], max_bytes: int, methods: tuple[str, ...] = ("PUT", "POST")) -> None:
        self.app = app
        self.max_bytes = int(max_bytes)
        self.methods = methods

    @staticmethod
    async def _reply(send: Callable[..., Awaitable[None]], status: int, detail: str) -> None:
        body = json.dumps({"detail": detail}).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})

    @staticmethod
    async def _drain(receive: Callable[..., Awaitable[dict]], cap: int) -> int:
        """Read and discard the request body (at most ``cap`` bytes); returns the bytes read."""
        total = 0
        while total <= cap:
            msg = await receive()
            if msg.get("type") != "http.request":
                break
            total += len(msg.get("body", b"") or b"")
            if not msg.get("more_body", False):
                break
        return total

    async def __call__(self, scope: dict, receive: Callable[..., Awaitable[dict]], send: Callable[..., Awaitable[None]]) -> None:
        if scope.get("type") != "http" or scope.get("method") not in self.methods:
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        length = headers.get("content-length")
        if length is not None:
            try:
                n = int(length)
            except ValueError:
                await self._reply(send, 400, "invalid Content-Length")
                return
            if n > self.max_bytes:
                logger.warning(f"refused upload of {n} bytes to {scope.get('path')} (limit {self.max_bytes})")
                await self._drain(receive, max(DRAIN_FACTOR * self.max_bytes, DRAIN_MIN_BYTES))
                await self._reply(send, 413, f"request body of {n} bytes is over the limit of {self.max_bytes} bytes")
                return
        state = {"total": 0, "tail": b"", "started": False}

        async def guarded_receive() -> dict:
            msg = await receive()
            if msg.get("type") == "http.request":
                body = msg.get("body", b"") or b""
                state["total"] += len(body)
                if state["total"] > self.max_bytes:
                    raise _refusal(413, f"request body over the limit of {self.max_bytes} bytes")
                window = state["tail"] + body
                for m in _FILENAME_RE.finditer(window):
                    raw = m.group(1) if m.group(1) is not None else m.group(2)
                    name = raw.decode("utf-8", "replace")
                    if unsafe_filename(name):
                        raise _refusal(400, f"refused upload file name {name!r}: '..' components and control "
                                            "characters are not allowed")
                state["tail"] = window[-_TAIL:]
            return msg

        async def tracked_send(msg: dict) -> None:
            if msg.get("type") == "http.response.start":
                state["started"] = True
            await send(msg)

        from monai_spine.apps.label.lib.uploads import begin_request, cleanup

        uploads = begin_request()
        try:
            await self.app(scope, guarded_receive, tracked_send)
        except Exception as e:  # a refusal nobody turned into a response (outside FastAPI's body parsing)
            status = getattr(e, "status_code", None)
            if status not in (400, 413) or state["started"]:
                raise
            await self._reply(send, int(status), str(getattr(e, "detail", e)))
        finally:
            cleanup(uploads)


def _refusal(status: int, detail: str) -> Exception:
    """The exception raised from ``receive``: FastAPI re-raises an ``HTTPException`` met while parsing a body,
    so the client gets ``status`` (any other exception there would become a generic 400)."""
    logger.warning(f"upload refused ({status}): {detail}")
    try:
        from fastapi import HTTPException
    except ImportError:  # pragma: no cover - the server always has FastAPI
        from starlette.exceptions import HTTPException  # type: ignore[no-redef]
    return HTTPException(status_code=status, detail=detail)


def install_guard(max_bytes: int) -> bool:
    """Wrap the running ``monailabel.app:app`` in an :class:`UploadGuard` (once; later calls update the limit).

    Returns:
        True when the guard is in place, False when there is no MONAI Label server app in this process
        (a training or scoring subprocess) or its middleware stack is not built yet.
    """
    mod = sys.modules.get("monailabel.app")
    app: Any = getattr(mod, "app", None)
    if app is None:
        return False
    stack = getattr(app, "middleware_stack", None)
    if isinstance(stack, UploadGuard):
        stack.max_bytes = int(max_bytes)
        return True
    # built afresh, so that exception handlers registered since the first build (routes.install) are in
    stack = app.build_middleware_stack()
    app.middleware_stack = UploadGuard(stack, max_bytes)
    logger.info(f"upload guard installed: request bodies up to {max_bytes} bytes; temporary uploads removed after each request")
    return True
