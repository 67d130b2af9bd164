"""The model-folder scripts' shared options: the parser they build, the splits they read and the command they record."""

from __future__ import annotations

import argparse
import json

import pytest
import torch

from monai_spine.engines.script_options import add_dataset_arguments, dataset_splits, script_command


def _dataset(tmp_path, index):
    """A dataset folder whose ``dataset.json`` lists ``index`` (label names; the files need not exist)."""
    root = tmp_path / "ds"
    root.mkdir()
    (root / "dataset.json").write_text(json.dumps({"region": "ap", **index}))
    return root


def _parse(argv, splits=("training", "validation"), limits=("training", "validation"), seed=True):
    return add_dataset_arguments(argparse.ArgumentParser(), splits, limits, seed).parse_args(argv)


@pytest.mark.parametrize(
    "limits, seed, argv, expected",
    [
        (("training", "validation"), True, ["--max-train", "2", "--max-val", "1", "--seed", "3"],
         {"max_train": 2, "max_val": 1, "seed": 3, "threads": 2}),
        (("validation",), False, ["--threads", "1"], {"max_val": 0, "threads": 1}),
        ((), True, [], {"seed": 0, "threads": 2}),
    ],
)
def test_the_parser_has_the_options_asked_for(tmp_path, limits, seed, argv, expected):
    args = _parse(["--dataset", str(tmp_path)] + argv, limits=limits, seed=seed)
    got = {k: v for k, v in vars(args).items() if k != "dataset"}
    assert got == expected


def test_a_split_without_a_limit_option_is_refused():
    with pytest.raises(ValueError, match="test"):
        add_dataset_arguments(argparse.ArgumentParser(), ["test"], limits=["test"])


def test_dataset_splits_cuts_to_the_limits_and_sets_the_threads(tmp_path):
    root = _dataset(tmp_path, {"training": ["a.json", "b.json", "c.json"], "validation": ["d.json", "e.json"], "test": []})
    before = torch.get_num_threads()
    try:
        args = _parse(["--dataset", str(root), "--max-train", "2", "--threads", "1"])
        got = dataset_splits(args, ["training", "validation"])
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    assert [p.rsplit("/", 1)[1] for p in got["training"]] == ["a.json", "b.json"]
    assert [p.rsplit("/", 1)[1] for p in got["validation"]] == ["d.json", "e.json"]
    assert set(got) == {"training", "validation"}


@pytest.mark.parametrize("index, needed", [({"training": ["a.json"], "validation": []}, ["training", "validation"]),
                                           ({"training": ["a.json"]}, ["validation"])])
def test_a_missing_or_empty_split_names_the_folder(tmp_path, index, needed):
    root = _dataset(tmp_path, index)
    with pytest.raises(ValueError, match=f"{root}: no validation films"):
        dataset_splits(_parse(["--dataset", str(root)]), needed)


def test_a_folder_without_a_split_trains_on_all_its_films_only_when_asked(tmp_path):
    root = tmp_path / "flat"
    root.mkdir()
    (root / "dataset.json").write_text(json.dumps({"region": "cervical", "data": ["x.json", "y.json"]}))
    args = _parse(["--dataset", str(root), "--max-train", "1"], limits=("training",))
    assert [p.rsplit("/", 1)[1] for p in dataset_splits(args, ["training"], whole_as_training=True)["training"]] == ["x.json"]
    with pytest.raises(ValueError, match="no training films"):
        dataset_splits(args, ["training"])


@pytest.mark.parametrize("argv, expected", [(["--dataset", "D", "--epochs", "3"], "python scripts/s.py --dataset D --epochs 3"),
                                            ([], "python scripts/s.py ")])
def test_script_command(argv, expected):
    assert script_command("s", argv) == expected
