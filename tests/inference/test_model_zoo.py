"""The model-zoo layout: folders located by region and kind, specs read with named errors."""

import json

import pytest

from monai_spine.inference import model_zoo as mz


@pytest.mark.parametrize("region,kind", [("ap", "detector"), ("cervical", "regressor"), ("lumbar", "heatmap")])
def test_model_dir_layout(tmp_path, region, kind):
    assert mz.model_dir(region, kind, tmp_path) == tmp_path / region / kind


@pytest.mark.parametrize("region,kind", [("thoracic", "detector"), ("ap", "segmenter")])
def test_unknown_region_or_kind(tmp_path, region, kind):
    with pytest.raises(KeyError):
        mz.model_dir(region, kind, tmp_path)


def test_find_model_needs_weights_and_spec(tmp_path):
    d = tmp_path / "ap" / "detector"
    d.mkdir(parents=True)
    assert mz.find_model("ap", "detector", tmp_path) is None
    (d / "model.pt").write_bytes(b"x")
    assert mz.find_model("ap", "detector", tmp_path) is None
    (d / "detector_model.json").write_text("{}")
    assert mz.find_model("ap", "detector", tmp_path) == d


def test_env_root(tmp_path, monkeypatch):
    monkeypatch.setenv(mz.MODELS_ENV, str(tmp_path))
    assert mz.models_root() == tmp_path


def test_read_spec_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="regressor_model.json"):
        mz.read_spec(tmp_path, "regressor")
    (tmp_path / "regressor_model.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="regressor_model.json"):
        mz.read_spec(tmp_path, "regressor")
    (tmp_path / "regressor_model.json").write_text("{bad")
    with pytest.raises(ValueError, match="regressor_model.json"):
        mz.read_spec(tmp_path, "regressor")
    (tmp_path / "regressor_model.json").write_text(json.dumps({"region": "cervical"}))
    assert mz.read_spec(tmp_path, "regressor") == {"region": "cervical"}
