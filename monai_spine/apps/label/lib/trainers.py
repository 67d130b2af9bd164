"""MONAI Label training task: fine-tune the bundle's BayeRegX regressor on the labels submitted so far.

MONAI Label runs it in a subprocess (``POST /train/regressor``; ``GET /train/`` shows its status and
log). The labels are read once at the start (the datastore's ``final`` labels, each a
``monai-spine-keypoints`` JSON of its image), so labels saved while it runs wait for the next
run and are never touched by it. A label that cannot be used (unreadable, or of another keypoint
scheme than the model's, e.g. saved before the app checked schemes) is skipped and reported in
the log and in ``GET /info/`` -> ``train_stats.regressor.skipped``; it never stops the training. The new weights replace ``<models>/model.pt`` atomically
(previous ones kept as ``model.previous.pt``); inference picks them up on its next request.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any, Dict

from monailabel.interfaces.datastore import Datastore, DefaultLabelTag
from monailabel.interfaces.tasks.train import TrainTask

from monai_spine.apps.label.lib.core import LabelAppConfig, LabelAppError
from monai_spine.apps.label.lib.training import finetune_regressor

__all__ = ["RegressorFinetune", "STATS_FILE"]

logger = logging.getLogger(__name__)

#: statistics of the last run, beside the regressor's weights
STATS_FILE = "label_train_stats.json"


class RegressorFinetune(TrainTask):
    """Fine-tune ``<models>/model.pt`` on the datastore's final labels.

    Request (``POST /train/regressor`` JSON body): ``epochs``, ``lr``, ``batch_size`` (defaults
    from the app conf ``epochs``, ``lr``, ``batch_size``: 1, 1e-4, 8), ``seed`` (0).

    Args:
        config: the app configuration.
    """

    def __init__(self, config: LabelAppConfig) -> None:
        super().__init__("Fine-tune the BayeRegX keypoint regressor on the keypoint labels submitted so far")
        self.app_config = config

    def config(self) -> Dict[str, Any]:
        c = self.app_config
        return {"epochs": c.train_epochs, "lr": c.train_lr, "batch_size": c.train_batch_size, "seed": 0}

    def stats(self) -> Dict[str, Any]:
        path = self.app_config.regressor_checkpoint.parent / STATS_FILE
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}

    def __call__(self, request: Dict[str, Any], datastore: Datastore) -> Dict[str, Any]:
        from monai_spine.data.annotation import read_annotation

        items = []
        skipped = []
        for image_id in sorted(datastore.get_labeled_images()):
            label = datastore.get_label_uri(image_id, DefaultLabelTag.FINAL)
            image = datastore.get_image_uri(image_id)
            try:
                items.append((image, read_annotation(label)))
            except (OSError, ValueError) as e:
                skipped.append(f"{image_id}: {e}")
        for s in skipped:
            logger.warning(f"training: skipped label {s}")
        if not items:
            raise LabelAppError("training: no labelled image in the datastore yet")

        def num(key: str, cast: type) -> Any:
            v = request.get(key)
            return None if v in (None, "") else cast(v)

        stats = finetune_regressor(self.app_config, items, epochs=num("epochs", int), lr=num("lr", float),
                                   batch_size=num("batch_size", int), seed=num("seed", int) or 0)
        skipped = skipped + list(stats.get("skipped") or [])
        for s in stats.get("skipped") or []:
            logger.warning(f"training: skipped label {s}")
        stats.update({"labelled_images": [os.path.basename(i) for i, _ in items], "skipped": skipped,
                      "finished": time.strftime("%Y-%m-%d %H:%M:%S")})
        from monai_spine.data.annotation import atomic_write_text

        atomic_write_text(self.app_config.regressor_checkpoint.parent / STATS_FILE, json.dumps(stats, indent=1))
        logger.info(f"training done: {stats}")
        return stats
