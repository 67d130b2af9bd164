"""A shipped regressor folder: weights, spec with test metrics, calibration and a model card."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("boxes", ["annotation", "frame"])
def test_train_shipped_regressor_writes_a_self_describing_folder(tmp_path, monkeypatch, boxes):
    from monai_spine.engines.ship import train_shipped_regressor
    from monai_spine.inference.regressor import KeypointPredictor

    monkeypatch.setenv("MONAI_SPINE_CACHE", str(tmp_path / "cache"))
    model = tmp_path / "model"
    rec = train_shipped_regressor(
        "cervical", model, tmp_path / "work", n=10, size=256, epochs=1, command=["train", "--tiny"],
        extra={"network_width": 0.125, "fc_features": 16, "spatial_size": [64, 128], "batch_size": 4,
               "train#handler#mlflow#_disabled_": True}, boxes=boxes,
    )
    names = {p.name for p in model.iterdir()}
    assert {"model.pt", "regressor_model.json", "thresholds.json", "conformal.json", "README.md"} <= names
    assert "train_state.pt" not in names
    spec = json.loads((model / "regressor_model.json").read_text())
    assert spec["meta"]["training_command"] == "train --tiny"
    assert spec["meta"]["validated_on_real_films"] is False
    assert spec["meta"]["test_metrics"]["val_mean_mm"] == pytest.approx(rec["metrics"]["val_mean_mm"])
    card = (model / "README.md").read_text()
    assert "synthetic radiographs only" in card and "train --tiny" in card and "no network" in card
    pred = KeypointPredictor.from_checkpoint(model)
    assert pred.spatial_size == (64, 128) and pred.conformal is not None
    if boxes == "frame":  # the rule fitted on the training films ships in the spec; every split was framed
        from monai_spine.data.annotation import read_annotation
        from monai_spine.data.datasets import list_cases

        assert spec["box_rule"]["kind"] == "frame" and 1.0 < spec["box_rule"]["width_ratio"] < 3.0
        assert pred.box_rule is not None and "spine-frame boxes" in spec["meta"]["data"]
        assert "spine-frame boxes around the annotated centres" in card and "boxes from the annotations" not in card
        framed = list_cases(tmp_path / "work" / "dataset-frame")
        assert all(read_annotation(p).box_angles_rad is not None for s in ("training", "validation", "test")
                   for p in framed[s])
    else:
        assert spec["box_rule"] is None and pred.box_rule is None


GENERATED = "# Card\nintro\n\n## Data\ngen data\n\n## Test split\ngen table\n\n## Calibration\ngen calib\n"


@pytest.mark.parametrize("existing,expected", [
    (None, GENERATED),
    ("", GENERATED),
    # a hand-written section keeps its place (after "Test split"); the generated ones replace theirs
    ("# Old\n\n## Data\nold data\n\n## Test split\nold table\n\n## Fully automatic\nhand table\n\n"
     "## Calibration\nold calib\n",
     "# Card\nintro\n\n## Data\ngen data\n\n## Test split\ngen table\n\n## Fully automatic\nhand table\n\n"
     "## Calibration\ngen calib\n"),
    # hand-written sections right after the title keep following it, in their order
    ("## Usage\nx\n## Notes\nkept",
     "# Card\nintro\n\n## Usage\nx\n\n## Notes\nkept\n\n## Data\ngen data\n\n## Test split\ngen table\n\n"
     "## Calibration\ngen calib\n"),
])
def test_merge_card_keeps_hand_written_sections(existing, expected):
    from monai_spine.engines.ship import merge_card

    assert merge_card(GENERATED, existing) == expected


def test_extra_films_join_the_training_split_only(tmp_path, monkeypatch):
    from monai_spine.data.datasets import bundle_splits, list_cases
    from monai_spine.engines.ship import extra_films_dataset

    monkeypatch.setenv("MONAI_SPINE_CACHE", str(tmp_path / "cache"))
    base = bundle_splits(None, "lumbar", 10, 5, 0.0, (128, 128))
    folder = extra_films_dataset(tmp_path / "ds", "lumbar", 10, 5, 128, 0.0, 4, 6)
    got = list_cases(folder)
    assert got["validation"] == base["validation"] and got["test"] == base["test"]  # the same held-out films
    assert got["training"][: len(base["training"])] == base["training"]
    extra = got["training"][len(base["training"]):]
    assert len(extra) == 4 and not set(extra) & set(base["validation"] + base["test"] + base["training"])
    with pytest.raises(ValueError, match="extra_seed"):
        extra_films_dataset(tmp_path / "ds2", "lumbar", 10, 5, 128, 0.0, 4, 5)
