"""Hand-made corner cases shared by the corner-model tests (metrics, handlers, evaluation, training).

Rectangular "vertebrae" of W x H px, 50 px apart, whose four corners are ``OFFSETS`` around each centre
(and the spinous-process tip W px behind it); an image of Gaussian dots at given points; a tiny model spec
and prior; and a driver that runs an ignite metric handler over batches on a stub engine. Put on
``sys.path`` by ``tests/conftest.py`` (the tests run with ``--import-mode=importlib``).
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch
from monai.data import list_data_collate

from monai_spine.inference.corners import CornerPrior
from monai_spine.inference.heatmap import HeatmapModelSpec

W, H = 40.0, 30.0
OFFSETS = np.array([[-W / 2, -H / 2], [W / 2, -H / 2], [-W / 2, H / 2], [W / 2, H / 2]])
LEVELS = ["C3", "C4", "C5", "C6"]


def rect_keypoints(n=4, x=100.0, y0=60.0, step=50.0, jitter=None):
    kp = np.zeros((n, 5, 2))
    for i in range(n):
        c = np.array([x, y0 + step * i])
        kp[i, :4] = OFFSETS * (1.0 if jitter is None else jitter[i]) + c
        kp[i, 4] = c + [W, 0.0]
    return kp


def dot_image(points, shape=(300, 200), sigma=1.5):
    ys, xs = np.mgrid[0 : shape[0], 0 : shape[1]]
    img = np.zeros(shape)
    for x, y in np.asarray(points).reshape(-1, 2):
        img += np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * sigma**2))
    return img


def heatmap_spec(prior):
    return HeatmapModelSpec(size_ratio=0.7, out_size=64, grid=(2, 0.1), scales=(2.0,), rotations_deg=(0.0,),
                            network={"width": 2}, prior=prior)


def corner_prior():
    return CornerPrior(OFFSETS / 35.0, np.stack([np.eye(2) * 0.05**2] * 4), count=10)


def run_handler(handler, patches, maps, batch_size):
    engine = SimpleNamespace(state=SimpleNamespace(metrics={}, batch=None, output=None))
    handler._engine = engine
    handler.reset()
    for i in range(0, len(patches), batch_size):
        batch = list_data_collate(patches[i : i + batch_size])
        engine.state.batch = batch
        engine.state.output = {"pred": torch.as_tensor(maps[i : i + batch_size])}
        handler.iteration_completed(engine)
    return handler.compute(), engine.state.metrics
