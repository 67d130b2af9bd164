"""scripts/train_shipped_regressor.py: the crop and network size options become bundle overrides."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "train_shipped_regressor.py"


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("train_shipped_regressor", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("crop, width, fc, expected", [
    (None, None, None, {}),  # the bundle's defaults: nothing overridden
    ([160, 320], None, None, {"spatial_size": [160, 320]}),
    ([160, 320], 0.5, 512, {"spatial_size": [160, 320], "network_width": 0.5, "fc_features": 512}),
    (None, 1, None, {"network_width": 1.0}),
])
def test_network_overrides(script, crop, width, fc, expected):
    args = argparse.Namespace(crop=crop, width=width, fc_features=fc)
    assert script._network_overrides(args) == expected
