"""Run monai_spine's readers under the older pydicom and OpenCV that MONAI Label 0.8.5's environment needs.

``.venv-label`` holds pydicom 2 (MONAI Label's ``pydicom-seg`` needs it) while
:mod:`monai_spine.data.readers` is written for pydicom 3 and imports ``apply_modality_lut`` and
``apply_color_lut`` from ``pydicom.pixels``. pydicom 2 has both functions in
``pydicom.pixel_data_handlers.util``; :func:`install` registers that module as ``pydicom.pixels``
when the real one is missing. Under pydicom 3 it does nothing.

OpenCV: ``.venv-label`` keeps numpy 1.x, so OpenCV 4.11 (4.12+ needs numpy 2), whose Python
package lacks the ``cv2.utils.logging`` module that the raster reader uses to silence OpenCV's own
error print; :func:`install` provides one over ``cv2.setLogLevel`` / ``cv2.getLogLevel``.
"""

from __future__ import annotations

import importlib
import sys

__all__ = ["install", "install_pydicom", "install_cv2"]


def install() -> bool:
    """Install both shims (:func:`install_pydicom`, :func:`install_cv2`); True when either was needed."""
    a = install_pydicom()
    b = install_cv2()
    return a or b


def install_cv2() -> bool:
    """Provide ``cv2.utils.logging`` (``getLogLevel``, ``setLogLevel``, ``LOG_LEVEL_*``) when OpenCV lacks it.

    Returns:
        True when the module was provided.
    """
    try:
        import cv2
    except ImportError:
        return False
    utils = getattr(cv2, "utils", None)
    if utils is None or hasattr(utils, "logging"):
        return False
    try:
        importlib.import_module("cv2.utils.logging")
        return False
    except ImportError:
        pass
    import types

    mod = types.ModuleType("cv2.utils.logging")
    levels = {"LOG_LEVEL_SILENT": 0, "LOG_LEVEL_FATAL": 1, "LOG_LEVEL_ERROR": 2, "LOG_LEVEL_WARNING": 3,
              "LOG_LEVEL_INFO": 4, "LOG_LEVEL_DEBUG": 5, "LOG_LEVEL_VERBOSE": 6}
    for k, v in levels.items():
        setattr(mod, k, v)
    mod.getLogLevel = getattr(cv2, "getLogLevel", lambda: 3)  # type: ignore[attr-defined]
    mod.setLogLevel = getattr(cv2, "setLogLevel", lambda level: None)  # type: ignore[attr-defined]
    sys.modules["cv2.utils.logging"] = mod
    utils.logging = mod
    return True


def install_pydicom() -> bool:
    """Alias ``pydicom.pixels`` to pydicom 2's pixel utilities when needed.

    Returns:
        True when the alias was installed, False when pydicom already has ``pydicom.pixels`` (or
        is not installed).
    """
    try:
        import pydicom
    except ImportError:
        return False
    try:
        importlib.import_module("pydicom.pixels")
        return False
    except ImportError:
        pass
    util = importlib.import_module("pydicom.pixel_data_handlers.util")
    sys.modules["pydicom.pixels"] = util
    pydicom.pixels = util  # type: ignore[attr-defined]
    return True
