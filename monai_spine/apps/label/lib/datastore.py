"""The app's datastore: MONAI Label's local datastore, confined, size-limited and safe across processes.

:class:`SpineDatastore` is a :class:`monailabel.datastore.local.LocalDatastore` over the studies folder
(DICOM ``.dcm``/``.dicom``, PNG and JPEG images; keypoint labels as ``labels/<tag>/<image id>.json``
in the ``monai-spine-keypoints`` format) that adds:

* **confinement**: image ids and label tags must be plain names (:func:`~.labels.safe_image_id`:
  no ``/``, ``\\``, ``..``, absolute path or leading dot) and every destination is checked to lie
  inside the studies folder; an existing image is not overwritten (``409``);
* **size limits**: an image or label file over ``max_upload_bytes`` is refused (``413``) (the
  server's :class:`~.guard.UploadGuard` refuses the request body before it reaches the disk);
* **label validation**: an uploaded label must be a ``monai-spine-keypoints`` JSON or a 3D Slicer
  markups JSON of the image (:func:`~.labels.label_from_upload`) whose keypoint scheme is the one of
  the app's regressor (a 5-point lateral label for a 4-point AP model is refused: it would stop
  every training); it is stored canonically, written atomically;
* **no temporary copy left behind**: a refused image or label upload's temporary file (MONAI Label
  deletes it only after a successful response) is deleted before the refusal is raised;
* **no lost updates across processes**: MONAI Label runs training and scoring in subprocesses that
  keep their own copy of ``datastore_v2.json``. The stock store writes its in-memory copy, so a label
  saved by the server while a subprocess updates an image's info could vanish from the index.
  Here every change re-reads the index under the folder's file lock, applies itself and writes
  the index atomically (temporary file, then rename) before the lock is released; the lock is
  one re-entrant :class:`filelock.FileLock` per store.

Errors are raised as ``fastapi.HTTPException`` with a clear status and message (400 bad name or
label, 404 unknown image (named), 409 existing image, 413 too large, 415 unsupported file type).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, Optional

from filelock import FileLock
from monailabel.datastore.local import LocalDatastore, LocalDatastoreModel

from monai_spine.apps.label.lib.core import IMAGE_EXTENSIONS, LabelAppError
from monai_spine.apps.label.lib.labels import label_from_upload, safe_image_id, write_label

__all__ = ["SpineDatastore", "IMAGE_PATTERNS", "LABEL_PATTERNS", "http_error"]

logger = logging.getLogger(__name__)

#: image file patterns of the studies folder (both cases)
IMAGE_PATTERNS = [f"*{e}" for e in IMAGE_EXTENSIONS] + [f"*{e.upper()}" for e in IMAGE_EXTENSIONS]
#: label file patterns of ``labels/<tag>/``
LABEL_PATTERNS = ["*.json"]


def http_error(status: int, detail: str) -> Exception:
    """A ``fastapi.HTTPException`` (FastAPI turns it into the response status)."""
    from fastapi import HTTPException

    return HTTPException(status_code=status, detail=detail)


def _discard(path: str) -> None:
    """Delete the temporary copy of a refused upload (only a file directly in the system's temporary folder)."""
    try:
        if path and os.path.isfile(path) and os.path.dirname(os.path.realpath(path)) == os.path.realpath(tempfile.gettempdir()):
            os.unlink(path)
    except OSError as e:
        logger.warning(f"could not remove the refused upload {path}: {e}")


def _inside(path: str | os.PathLike, folder: str | os.PathLike) -> bool:
    p, f = os.path.realpath(path), os.path.realpath(folder)
    return os.path.commonpath([p, f]) == f


class SpineDatastore(LocalDatastore):
    """Local datastore of the monai-spine app (see the module docstring).

    Args:
        studies: the studies folder.
        max_upload_bytes: largest accepted image or label file.
        auto_reload: watch the folder for files added or removed by hand (MONAI Label's setting).
        read_only: do not reconcile the index with the folder at start.
        expected_scheme: ``() -> scheme name or None``: the keypoint scheme a label must have (that of
            the app's regressor; None: any scheme).
    """

    def __init__(self, studies: str, max_upload_bytes: int, auto_reload: bool = True, read_only: bool = False,
                 expected_scheme: Optional[Callable[[], Optional[str]]] = None) -> None:
        self._max_upload_bytes = int(max_upload_bytes)
        self._expected_scheme = expected_scheme
        self._flock = FileLock(os.path.join(studies, ".lock"))
        super().__init__(studies, extensions=IMAGE_PATTERNS, auto_reload=auto_reload, read_only=read_only)

    # ---------------------------------------------------------------- index file, locked and atomic
    def _init_from_datastore_file(self, throw_exception: bool = False) -> None:
        try:
            with self._flock:
                self._load_index()
        except ValueError as e:
            logger.error(f"+++ Failed to load datastore => {e}")
            if throw_exception:
                raise

    def _load_index(self, force: bool = False) -> None:
        """Re-read ``datastore_v2.json`` when its modification time changed, or always with ``force``
        (every change does: two writes within one file-system clock tick share a modification time).
        The caller holds the lock."""
        path = self._datastore_config_path
        if not os.path.exists(path):
            return
        ts = os.stat(path).st_mtime_ns
        if force or self._config_ts != ts:
            with open(path, encoding="utf-8") as fp:
                model = LocalDatastoreModel.model_validate_json(fp.read())
            model.base_path = self._datastore_path
            self._datastore = model
            self._config_ts = ts

    def _update_datastore_file(self, lock: bool = True) -> None:
        with self._flock:
            self._ignore_event_config = True
            text = json.dumps(self._datastore.model_dump(exclude={"base_path"}), indent=2, default=str)
            fd, tmp = tempfile.mkstemp(prefix=".datastore-", suffix=".tmp", dir=self._datastore_path)
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    f.write(text)
                os.replace(tmp, self._datastore_config_path)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
            self._config_ts = os.stat(self._datastore_config_path).st_mtime_ns

    def _reconcile_datastore(self) -> None:
        with self._flock:
            self._load_index(force=True)  # then the stock steps, which re-read only on a changed mtime
            super()._reconcile_datastore()

    def _list_files(self, path: str, patterns: Any) -> Dict[str, str]:
        if _inside(path, self._datastore.label_path(None)):
            patterns = LABEL_PATTERNS
        return super()._list_files(path, patterns)

    def _to_id(self, file: str) -> tuple[str, str]:
        if file.lower().endswith(".json"):
            return file[:-5], file[-5:]
        return super()._to_id(file)

    # ---------------------------------------------------------------- checks
    def _check_name(self, name: str, what: str) -> str:
        try:
            return safe_image_id(name)
        except LabelAppError as e:
            raise http_error(400, f"{what}: {e}") from None

    def _check_size(self, path: str, what: str) -> None:
        size = os.path.getsize(path)
        if size > self._max_upload_bytes:
            raise http_error(413, f"{what} of {size} bytes is over the limit of {self._max_upload_bytes} bytes")

    def _check_dest(self, dest: str, folder: str) -> None:
        if not _inside(dest, folder) or not _inside(dest, self._datastore_path):
            raise http_error(400, f"refused destination {dest}: outside the studies folder")

    # ---------------------------------------------------------------- changes
    def has_image(self, image_id: str) -> bool:
        """True when ``image_id`` is an image of the index (re-read under the lock)."""
        with self._flock:
            self._load_index(force=True)
            return image_id in self._datastore.objects

    def remove_image(self, image_id: str) -> None:
        """Remove an image and its labels; ``404`` naming an unknown id."""
        if not self.has_image(image_id):
            raise http_error(404, f"image {image_id!r} not found in the studies folder")
        super().remove_image(image_id)

    def add_image(self, image_id: str, image_filename: str, image_info: Dict[str, Any]) -> str:
        """Copy an uploaded image into the studies folder (see the module docstring for the checks).

        The uploaded (temporary) file is deleted when the image is refused."""
        try:
            return self._add_image(image_id, image_filename, image_info)
        except Exception:
            _discard(image_filename)
            raise

    def _add_image(self, image_id: str, image_filename: str, image_info: Dict[str, Any]) -> str:
        _, ext = super()._to_id(os.path.basename(image_filename))
        if ext.lower() not in IMAGE_EXTENSIONS:
            raise http_error(415, f"refused image type {ext!r}: expected one of {IMAGE_EXTENSIONS}")
        if not image_id:
            raise http_error(400, "refused image: no image id or file name")
        image_id = self._check_name(image_id, "image id")
        self._check_size(image_filename, "image")
        name = self._filename(image_id, ext)
        dest = os.path.realpath(os.path.join(self._datastore.image_path(), name))
        self._check_dest(dest, self._datastore.image_path())
        from monailabel.datastore.local import DataModel, ImageLabelModel
        import shutil
        import time

        with self._flock:
            self._load_index(force=True)
            if image_id in self._datastore.objects or os.path.exists(dest):
                raise http_error(409, f"image {image_id!r} exists already; remove it first or choose another id")
            tmp = dest + f".tmp-{os.getpid()}"
            shutil.copyfile(image_filename, tmp)
            os.replace(tmp, dest)
            info = dict(image_info or {})
            info.update({"ts": int(time.time()), "name": name})
            self._datastore.objects[image_id] = ImageLabelModel(image=DataModel(info=info, ext=ext))
            self._update_datastore_file()
        logger.info(f"added image {image_id} => {dest}")
        return image_id

    def save_label(self, image_id: str, label_filename: str, label_tag: str, label_info: Dict[str, Any]) -> str:
        """Validate a keypoint label (project JSON or Slicer markups) and store it as ``labels/<tag>/<id>.json``.

        The uploaded (temporary) file is deleted when the label is refused."""
        try:
            return self._save_label(image_id, label_filename, label_tag, label_info)
        except Exception:
            _discard(label_filename)
            raise

    def _save_label(self, image_id: str, label_filename: str, label_tag: str, label_info: Dict[str, Any]) -> str:
        from monailabel.datastore.local import DataModel
        import time

        label_tag = self._check_name(label_tag, "label tag")
        self._check_size(label_filename, "label")
        with self._flock:
            self._load_index(force=True)
            obj = self._datastore.objects.get(image_id)
        if obj is None:
            raise http_error(404, f"image {image_id!r} not found in the studies folder")
        image_path = self.get_image_uri(image_id)
        try:
            expected = self._expected_scheme() if self._expected_scheme is not None else None
            ann = label_from_upload(label_filename, image_path, image_id, expected_scheme=expected)
        except LabelAppError as e:
            raise http_error(400, str(e)) from None
        except (OSError, ValueError) as e:
            raise http_error(400, f"label of {image_id}: {e}") from None
        folder = self._datastore.label_path(label_tag)
        name = self._filename(image_id, ".json")
        dest = os.path.realpath(os.path.join(folder, name))
        self._check_dest(dest, self._datastore.label_path(None))
        os.makedirs(folder, exist_ok=True)
        with self._flock:
            write_label(ann, dest, meta={"label_tag": label_tag, "image_id": image_id})
            self._load_index(force=True)
            obj = self._datastore.objects.get(image_id)
            if obj is None:
                os.unlink(dest)
                raise http_error(404, f"image {image_id!r} was removed while its label was saved")
            info = dict(label_info or {})
            info.update({"ts": int(time.time()), "name": name, "vertebrae": len(ann.levels)})
            obj.labels[label_tag] = DataModel(info=info, ext=".json")
            self._update_datastore_file()
        logger.info(f"saved label {label_tag}/{name} ({len(ann.levels)} vertebrae)")
        return image_id

    def update_image_info(self, image_id: str, info: Dict[str, Any]) -> None:
        """Merge ``info`` into the image's record (re-read, changed and written under the lock)."""
        from monailabel.interfaces.exception import ImageNotFoundException

        with self._flock:
            self._load_index(force=True)
            obj = self._datastore.objects.get(image_id)
            if not obj:
                raise ImageNotFoundException(f"Image {image_id} not found")
            obj.image.info.update(info)
            self._update_datastore_file()

    def update_label_info(self, label_id: str, label_tag: str, info: Dict[str, Any]) -> None:
        """Merge ``info`` into a label's record (re-read, changed and written under the lock)."""
        from monailabel.interfaces.exception import LabelNotFoundException

        with self._flock:
            self._load_index(force=True)
            label = self._datastore.label(label_id, label_tag)
            if not label:
                raise LabelNotFoundException(f"Label: {label_id} Tag: {label_tag} not found")
            label.info.update(info)
            self._update_datastore_file()

    def image_path(self, image_id: str) -> Path:
        """Path of a datastore image; ``404`` when the id is unknown."""
        uri = self.get_image_uri(image_id)
        if not uri or not os.path.isfile(uri):
            raise http_error(404, f"image {image_id!r} not found in the studies folder")
        return Path(uri)
