"""MONAI Label scoring method: each unlabelled image's predicted uncertainty, stored in the datastore.

``POST /scoring/sigma_uncertainty`` (MONAI Label runs it in a subprocess, or in the server with
``?run_sync=true``; it also runs when the server starts and after training unless
``MONAI_LABEL_AUTO_UPDATE_SCORING=false``) predicts every image without a final label and stores
in its image info (``GET /datastore/image/info?image=ID``)::

    "monai_spine_uncertainty": {"mean_sigma_p_total_frac": 0.0123 or null, "vertebrae": 5,
                                "points": 25, "in_domain": true, "view_reason": null,
                                "model_stamp": "...", "ts": 1764240000}

``mean_sigma_p_total_frac`` is the mean total sigma_p (aleatoric + epistemic, crop fractions, so
images with and without a known spacing compare) over every predicted point; null when nothing
was detected. ``in_domain`` false (with ``view_reason``) marks a film that does not look like the
model's view (:func:`~.models.view_check`: too few of the detector's levels found): its sigma_p
means little, and the strategy serves it first, like a film where nothing was detected. Images already scored with the same model files are skipped (``force: true`` in the
request scores them again).
"""

from __future__ import annotations

import hashlib
import logging
import time
from typing import Any, Dict

from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.scoring import ScoringMethod

from monai_spine.apps.label.lib.core import UNCERTAINTY_KEY
from monai_spine.apps.label.lib.models import ModelStore

__all__ = ["SigmaUncertaintyScoring", "model_stamp"]

logger = logging.getLogger(__name__)


def model_stamp(store: ModelStore) -> str:
    """A short digest of the model files' names, sizes and modification times."""
    from monai_spine.apps.label.lib.models import _stamp

    cfg = store.config
    text = repr(_stamp([cfg.detector_dir, cfg.regressor_checkpoint]))
    return hashlib.sha1(text.encode()).hexdigest()[:12]


class SigmaUncertaintyScoring(ScoringMethod):
    """Store each unlabelled image's mean predicted sigma_p (see the module docstring).

    Args:
        store: the app's models.
    """

    def __init__(self, store: ModelStore) -> None:
        super().__init__("Mean predicted keypoint uncertainty (total sigma_p) of every unlabelled image")
        self.store = store

    def __call__(self, request: Dict[str, Any], datastore: Datastore) -> Dict[str, Any]:
        if not self.store.config.has_regressor():
            logger.warning("scoring: no detector/regressor in the model folder; nothing scored")
            return {"scored": [], "skipped": [], "failed": {}, "reason": "no model"}
        stamp = model_stamp(self.store)
        force = str(request.get("force", "false")).lower() in ("1", "true", "yes")
        scored, skipped, failed = {}, [], {}
        for image_id in sorted(datastore.get_unlabeled_images()):
            info = datastore.get_image_info(image_id) or {}
            old = info.get(UNCERTAINTY_KEY) or {}
            if not force and old.get("model_stamp") == stamp:
                skipped.append(image_id)
                continue
            try:
                out = self.store.predict(datastore.get_image_uri(image_id), name=image_id)
            except Exception as e:  # one bad image does not stop the others; it is reported
                failed[image_id] = f"{type(e).__name__}: {e}"
                logger.warning(f"scoring {image_id} failed: {failed[image_id]}")
                continue
            verts = out["result"].get("vertebrae", [])
            rec = {"mean_sigma_p_total_frac": out["uncertainty"], "vertebrae": len(verts),
                   "points": sum(len(v.get("points") or []) for v in verts),
                   "in_domain": bool(out["view"]["in_domain"]), "view_reason": out["view"]["reason"],
                   "model_stamp": stamp,
                   "ts": int(time.time())}
            datastore.update_image_info(image_id, {UNCERTAINTY_KEY: rec})
            scored[image_id] = rec["mean_sigma_p_total_frac"]
            logger.info(f"scoring: {image_id} mean sigma_p = {rec['mean_sigma_p_total_frac']}")
        logger.info(f"scoring: {len(scored)} scored, {len(skipped)} up to date, {len(failed)} failed")
        return {"scored": scored, "skipped": skipped, "failed": failed, "model_stamp": stamp}
