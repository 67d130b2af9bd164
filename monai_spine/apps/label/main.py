"""MONAI Label app of monai-spine (``monailabel start_server --app monai_spine/apps/label --studies DIR``).

Tasks (see ``docs/label.md``):

* infer ``keypoints``: detector + BayeRegX regressor on the whole radiograph: every vertebra's
  keypoints with sigma_p and uncertainty class, as 3D Slicer markups (``C4-AS``...) and the
  project's prediction JSON;
* infer ``corners`` (interactive): corners of clicked vertebra centres from the heatmap FCN, from the
  first click on (the 3D Slicer module sends one click at a time);
* train ``regressor``: fine-tune the regressor on the keypoint labels saved so far;
* scoring ``sigma_uncertainty`` and strategy ``most_uncertain``: active learning by predicted sigma_p.

App conf (``--conf KEY VALUE``): ``models`` (model folder, default the model zoo
``$MONAI_SPINE_MODELS`` or ``<repo>/bundle/models``, ``<region>/<kind>/``),
``regressor_variant``, ``regressor_width``, ``regressor_fc_features``, ``regressor_spatial_size``
(``H,W``), ``margin_mm``, ``mc_samples``, ``region``, ``flip_tta``, ``max_upload_mb`` (64),
``epochs``, ``lr``, ``batch_size``, ``ood_min_detected_frac`` (0.5), ``ood_min_score`` (0).

Some MONAI Label endpoints are replaced by checked versions (:mod:`~.lib.routes`: client file paths,
4xx answers, inference off the event loop) and an ASGI guard limits and cleans up uploads
(:mod:`~.lib.guard`).
"""

from __future__ import annotations

import logging
from typing import Any, Dict

from monailabel.config import settings
from monailabel.interfaces.app import MONAILabelApp

from monai_spine.apps.label.lib import compat
from monai_spine.apps.label.lib.activelearning import MostUncertain
from monai_spine.apps.label.lib.core import LabelAppConfig
from monai_spine.apps.label.lib.datastore import SpineDatastore
from monai_spine.apps.label.lib.guard import install_guard
from monai_spine.apps.label.lib.infers import CornersInfer, KeypointsInfer
from monai_spine.apps.label.lib.models import ModelStore
from monai_spine.apps.label.lib.routes import install_routes
from monai_spine.apps.label.lib.scoring import SigmaUncertaintyScoring
from monai_spine.apps.label.lib.trainers import RegressorFinetune

__all__ = ["SpineLabelApp"]

logger = logging.getLogger(__name__)

compat.install()


class SpineLabelApp(MONAILabelApp):
    """The monai-spine MONAI Label app (see the module docstring).

    Args:
        app_dir: this folder.
        studies: the studies folder (DICOM, PNG, JPEG radiographs; labels go to ``labels/final``).
        conf: ``--conf`` pairs.
    """

    def __init__(self, app_dir: str, studies: str, conf: Dict[str, str]) -> None:
        self.app_config = LabelAppConfig.from_conf(conf)
        self.store = ModelStore(self.app_config)
        super().__init__(app_dir=app_dir, studies=studies, conf=conf, name="monai-spine",
                         description="Vertebra keypoints with uncertainty on spinal X-rays (BayeRegX, Al Arif corners)",
                         version="0.1.0", labels=[])
        install_routes()
        install_guard(self.app_config.max_upload_bytes)
        logger.info(f"monai-spine app: models {self.app_config.models_dir} ({self.app_config.layout} layout"
                    f"{', region ' + self.app_config.zoo_region if self.app_config.layout == 'zoo' else ''}); regressor "
                    f"{'present' if self.app_config.has_regressor() else 'MISSING'}; heatmap "
                    f"{'present' if self.app_config.has_heatmap() else 'MISSING'}")

    def init_datastore(self) -> SpineDatastore:
        if self.studies.startswith(("http://", "https://")):
            raise ValueError("the monai-spine app serves a local studies folder only")
        return SpineDatastore(self.studies, self.app_config.max_upload_bytes,
                              auto_reload=settings.MONAI_LABEL_DATASTORE_AUTO_RELOAD,
                              read_only=settings.MONAI_LABEL_DATASTORE_READ_ONLY,
                              expected_scheme=self.store.expected_scheme)

    def init_infers(self) -> Dict[str, Any]:
        return {"keypoints": KeypointsInfer(self.store, self.studies), "corners": CornersInfer(self.store, self.studies)}

    def init_trainers(self) -> Dict[str, Any]:
        return {"regressor": RegressorFinetune(self.app_config)}

    def init_strategies(self) -> Dict[str, Any]:
        return {"most_uncertain": MostUncertain()}

    def init_scoring_methods(self) -> Dict[str, Any]:
        return {"sigma_uncertainty": SigmaUncertaintyScoring(self.store)}

    def task_names(self, kind: str) -> list:
        """Names of the usable tasks of ``kind``: ``models``, ``trainers``, ``strategies`` or ``scoring``."""
        tasks = {"models": self._infers, "trainers": self._trainers, "strategies": self._strategies,
                 "scoring": self._scoring_methods}[kind]
        return [k for k, t in tasks.items() if getattr(t, "is_valid", lambda: True)()]

    def info(self) -> Dict[str, Any]:
        meta = super().info()
        c = self.app_config
        meta["monai_spine"] = {
            "models_dir": str(c.models_dir), "layout": c.layout, "region": c.zoo_region if c.layout == "zoo" else None,
            "regressor": c.has_regressor(), "heatmap": c.has_heatmap(), "detector": c.has_detector(),
            "label_scheme": self.store.expected_scheme(),
            "max_upload_bytes": c.max_upload_bytes, "image_extensions": [".dcm", ".dicom", ".png", ".jpg", ".jpeg"],
            "label_format": "monai-spine-keypoints (JSON) or 3D Slicer markups JSON",
        }
        return meta
