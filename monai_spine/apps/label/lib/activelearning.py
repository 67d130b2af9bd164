"""MONAI Label active-learning strategy: serve the unlabelled image the model is least sure about.

``POST /activelearning/most_uncertain`` returns ``{"id": ID, "path": ..., "uncertainty": value,
...image info}`` for the unlabelled image with the highest stored mean sigma_p
(:mod:`~monai_spine.apps.label.lib.scoring`). An image where nothing was detected
(``mean_sigma_p_total_frac`` null) or that does not look like the model's view (``in_domain``
false) counts as the most uncertain of all; images not scored yet
come after every scored one (in id order). ``{}`` when every image is labelled.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Dict

from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.strategy import Strategy

from monai_spine.apps.label.lib.core import UNCERTAINTY_KEY

__all__ = ["MostUncertain", "uncertainty_rank"]

logger = logging.getLogger(__name__)


def uncertainty_rank(info: Dict[str, Any]) -> float:
    """Sort key (higher = served first): the stored mean sigma_p; +inf when nothing was detected or the film
    is out of the model's domain; -inf unscored."""
    rec = (info or {}).get(UNCERTAINTY_KEY)
    if not isinstance(rec, dict):
        return -math.inf
    if rec.get("in_domain") is False:
        return math.inf
    v = rec.get("mean_sigma_p_total_frac")
    if v is None:
        return math.inf
    try:
        v = float(v)
    except (TypeError, ValueError):
        return -math.inf
    return v if math.isfinite(v) else math.inf


class MostUncertain(Strategy):
    """Next image to label: the unlabelled one with the highest predicted uncertainty."""

    def __init__(self) -> None:
        super().__init__("Unlabelled image with the highest mean predicted sigma_p (run scoring first)")

    def __call__(self, request: Dict[str, Any], datastore: Datastore) -> Dict[str, Any]:
        ids = sorted(datastore.get_unlabeled_images())
        if not ids:
            return {}
        ranked = sorted(ids, key=lambda i: (-uncertainty_rank(datastore.get_image_info(i)), i))
        best = ranked[0]
        rank = uncertainty_rank(datastore.get_image_info(best))
        rec = (datastore.get_image_info(best) or {}).get(UNCERTAINTY_KEY) or {}
        logger.info(f"most uncertain unlabelled image: {best} ({rank})")
        return {"id": best, "uncertainty": rec.get("mean_sigma_p_total_frac"), "scored": rank != -math.inf,
                "in_domain": rec.get("in_domain"), "view_reason": rec.get("view_reason"), "candidates": len(ids)}
