"""Bundle handlers have names: overrides address `<section>#handler#<name>`, never a list position."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

BUNDLE = Path(__file__).resolve().parents[2] / "bundle"
CONFIGS = BUNDLE / "configs"

TRAIN = ["lr_schedule", "validation", "stats", "mlflow", "state"]
VALIDATE = ["stats", "best_model", "mlflow"]

#: (config files merged in order, section, handler names in the order the engine attaches them)
CASES = [
    (["train.json"], "train", TRAIN),
    (["train.json"], "validate", VALIDATE),
    (["train.json", "paper.json"], "train", TRAIN),
    (["train.json", "multi_gpu_train.json"], "train", TRAIN),
    (["train.json", "multi_gpu_train.json"], "validate", VALIDATE),
    (["train.json", "detector_train.json"], "train", TRAIN),
    (["train.json", "heatmap_train.json"], "train", TRAIN),
    (["train.json", "evaluate.json"], "validate", ["checkpoint_loader", "stats", "metrics_saver", "mlflow"]),
]


def _parser(names):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(CONFIGS / n) for n in names])
    return parser


@pytest.mark.parametrize("names,section,expected", CASES)
def test_handlers_list_refers_to_named_handlers(names, section, expected):
    parser = _parser(names)
    assert parser[f"{section}#handlers"] == [f"@{section}#handler#{n}" for n in expected]
    named = parser[f"{section}#handler"]
    assert list(named) == expected
    assert all(isinstance(h, dict) and "_target_" in h for h in named.values())


@pytest.mark.parametrize("engine_id,arg", [("train#trainer", "train_handlers"), ("validate#evaluator", "val_handlers")])
def test_engines_skip_disabled_handlers(engine_id, arg):
    """A disabled component resolves to None; the engine gets the list without it."""
    section = engine_id.split("#")[0]
    assert _parser(["train.json"])[f"{engine_id}#{arg}"] == f"$[h for h in @{section}#handlers if h is not None]"


@pytest.mark.parametrize("config", sorted(p.name for p in CONFIGS.glob("*.json")))
def test_no_config_addresses_a_handler_by_position(config):
    text = (CONFIGS / config).read_text()
    assert not re.search(r"handlers#\d", text), f"{config}: address handlers by name (<section>#handler#<name>)"


@pytest.mark.parametrize(
    "override,names",
    [
        ("multi_gpu_train.json", ["train.json", "multi_gpu_train.json"]),
        ("paper.json", ["train.json", "paper.json"]),
        ("detector_train.json", ["train.json", "detector_train.json"]),
        ("heatmap_train.json", ["train.json", "heatmap_train.json"]),
    ],
)
def test_every_handler_override_names_an_existing_handler(override, names):
    import json

    base = _parser(["train.json"])
    keys = [k for k in json.loads((CONFIGS / override).read_text()) if "#handler#" in k]
    assert keys, f"{override} overrides no handler"
    for k in keys:
        section, _, name = k.split("#")[:3]
        assert name in base[f"{section}#handler"], f"{override}: {k} names no handler of train.json"


def test_multi_gpu_disables_logging_and_saving_on_secondary_ranks_by_name():
    parser = _parser(["train.json", "multi_gpu_train.json"])
    off = "$spine_dist.is_secondary_rank()"
    for hid in ("train#handler#stats", "train#handler#mlflow", "validate#handler#stats",
                "validate#handler#best_model", "validate#handler#mlflow"):
        assert parser[f"{hid}#_disabled_"] == off, hid
    for hid in ("train#handler#lr_schedule", "train#handler#validation", "train#handler#state"):
        assert "_disabled_" not in parser[hid], hid  # every rank steps the LR, validates and keeps its state


def test_a_positional_override_fails_loudly():
    parser = _parser(["train.json"])
    with pytest.raises(ValueError):
        parser["train#handlers#3#_disabled_"] = True
