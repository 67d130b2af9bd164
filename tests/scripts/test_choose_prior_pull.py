"""scripts/choose_prior_pull.py: the validation table, the choice and what --write stores, on tiny synthetic films."""

from __future__ import annotations

import json

import pytest
import torch

from monai_spine.data.datasets import ensure_synthetic, list_cases
from monai_spine.engines.heatmap import fit_heatmap_model, heatmap_cases


@pytest.fixture(scope="module")
def split_and_model(tmp_path_factory):
    """Three synthetic cervical films (two training, one validation) and an untrained width-2 corner model with
    the training films' prior."""
    root = tmp_path_factory.mktemp("pull")
    data = ensure_synthetic(root / "syn", "cervical", n=3, seed=1, hard_case_rate=0.0, size=(384, 384))
    cases = list_cases(data)["cases"]
    split = root / "split"
    split.mkdir()
    (split / "dataset.json").write_text(json.dumps({"region": "cervical", "training": cases[:2], "validation": cases[2:]}))
    spec = fit_heatmap_model(heatmap_cases(cases[:2], "cervical"), "cervical", grid=(1, 0.0), scales=(2.0,),
                             rotations_deg=(0.0,), network_width=2)
    model = root / "model"
    spec.save(model)
    torch.manual_seed(0)
    torch.save(spec.build_network().state_dict(), model / "model.pt")
    return split, model


def test_choose_prior_pull_prints_the_table_and_writes_the_choice(load_script, split_and_model, capsys):
    split, model = split_and_model
    before = json.loads((model / "heatmap_model.json").read_text())
    assert "prior_pull" not in before["postprocess"]
    argv = ["--dataset", str(split), "--heatmap-dir", str(model), "--grid", "0", "0.5", "1", "--threads", "1"]
    assert load_script("choose_prior_pull").main(argv) == 0
    out = capsys.readouterr().out
    assert "[prior pull] 0: mean" in out and "[prior pull] 1: mean" in out and "chosen prior pull:" in out
    assert json.loads((model / "heatmap_model.json").read_text()) == before  # no --write: nothing stored
    assert load_script("choose_prior_pull").main(argv + ["--write"]) == 0
    after = json.loads((model / "heatmap_model.json").read_text())
    choice = after["meta"]["prior_pull_choice"]
    assert after["postprocess"]["prior_pull"] == choice["chosen"] in (0.0, 0.5, 1.0)
    assert set(choice["table"]) == {"0", "0.5", "1"} and choice["validation_films"] == 1
    chosen_mean = choice["table"][f"{choice['chosen']:g}"]["mean_px"]
    assert chosen_mean <= min(row["mean_px"] for row in choice["table"].values()) + 1e-3  # the table is rounded
    assert choice["criterion"].endswith("at the annotated centres")
    assert choice["command"].startswith("python scripts/choose_prior_pull.py --dataset")
    assert {k: v for k, v in after.items() if k not in ("postprocess", "meta")} == \
        {k: v for k, v in before.items() if k not in ("postprocess", "meta")}


def test_choose_prior_pull_refuses_a_candidate_outside_zero_one(load_script, split_and_model):
    split, model = split_and_model
    with pytest.raises(ValueError, match="candidate"):
        load_script("choose_prior_pull").main(["--dataset", str(split), "--heatmap-dir", str(model), "--grid", "0", "2"])
