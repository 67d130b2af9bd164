"""Tests of monai_spine.uncertainty.classes: boundaries, colours and threshold files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from monai_spine.data.keypoints import get_scheme
from monai_spine.uncertainty.classes import (
    CERTAIN,
    CLASS_COLOURS_RGB,
    CLASS_NAMES,
    GROUND_TRUTH_COLOUR_RGB,
    HIGHLY_UNCERTAIN,
    MODERATELY_UNCERTAIN,
    PAPER_THRESHOLDS,
    UNKNOWN,
    Thresholds,
    class_colours,
    class_names,
    classify,
)

T1, T2 = 0.0087, 0.0097

BOUNDARY_CASES = [
    (0.0, CERTAIN),
    (np.nextafter(T1, 0.0), CERTAIN),
    (T1, MODERATELY_UNCERTAIN),  # tau1 itself is moderately uncertain
    (0.0092, MODERATELY_UNCERTAIN),
    (np.nextafter(T2, 0.0), MODERATELY_UNCERTAIN),
    (T2, HIGHLY_UNCERTAIN),  # tau2 itself is highly uncertain
    (1.0, HIGHLY_UNCERTAIN),
    (np.inf, UNKNOWN),
    (np.nan, UNKNOWN),
]


@pytest.mark.parametrize("value, expected", BOUNDARY_CASES)
def test_boundaries(value, expected):
    assert classify(np.array([value]), T1, T2).tolist() == [expected]


def test_shape_dtype_and_torch_input():
    s = torch.tensor([[0.001, 0.009, 0.02], [float("nan"), 0.0087, 0.0097]])
    out = classify(s, T1, T2)
    assert out.dtype == np.int64 and out.shape == (2, 3)
    assert out.tolist() == [[0, 1, 2], [-1, 1, 2]]


@pytest.mark.parametrize("taus", [(0.01, 0.01), (0.02, 0.01), (-0.1, 0.1), (0.0, np.inf)])
def test_bad_thresholds(taus):
    with pytest.raises(ValueError, match="tau1"):
        classify(np.zeros(2), *taus)
    with pytest.raises(ValueError, match="tau1"):
        Thresholds(*taus)


def test_names_and_colours_are_data():
    assert CLASS_NAMES == ("certain", "moderately_uncertain", "highly_uncertain")
    assert CLASS_COLOURS_RGB["certain"] == (148, 0, 211)  # violet
    assert CLASS_COLOURS_RGB["moderately_uncertain"] == (255, 255, 0)  # yellow
    assert CLASS_COLOURS_RGB["highly_uncertain"] == (255, 0, 0)  # red
    assert GROUND_TRUTH_COLOUR_RGB == (0, 255, 0)  # green


def test_class_names_and_colours_lookup():
    c = np.array([[0, 1], [2, -1]])
    assert class_names(c).tolist() == [["certain", "moderately_uncertain"], ["highly_uncertain", "unknown"]]
    col = class_colours(c)
    assert col.shape == (2, 2, 3) and col.dtype == np.uint8
    assert col[1, 0].tolist() == [255, 0, 0] and col[0, 0].tolist() == [148, 0, 211]
    with pytest.raises(ValueError, match="class indices"):
        class_colours(np.array([3]))


def test_paper_default():
    assert (PAPER_THRESHOLDS.tau1, PAPER_THRESHOLDS.tau2, PAPER_THRESHOLDS.units) == (0.0087, 0.0097, "frac")
    assert PAPER_THRESHOLDS.classify(np.array([0.008, 0.009, 0.01])).tolist() == [0, 1, 2]


def test_per_point_type_thresholds():
    th = Thresholds(0.01, 0.02, "mm", per_point_type={"spinous_process": (0.03, 0.05)})
    types = get_scheme("lateral5").point_types  # four corners then the spinous process
    s = np.array([[0.025, 0.025, 0.005, 0.05, 0.025], [0.0, 0.0, 0.0, 0.0, 0.06]])
    assert th.classify(s, types).tolist() == [[2, 2, 0, 2, 0], [0, 0, 0, 0, 2]]
    assert th.for_point_type("corner") == (0.01, 0.02)
    with pytest.raises(ValueError, match="point types"):
        th.classify(s, types[:4])


def test_json_round_trip(tmp_path):
    th = Thresholds(0.5, 1.5, "mm", per_point_type={"corner": (0.4, 1.0)}, source="tuned on val")
    path = tmp_path / "thresholds.json"
    th.save(path)
    loaded = Thresholds.load(path)
    assert loaded == th
    assert json.loads(path.read_text())["per_point_type"] == {"corner": [0.4, 1.0]}


def test_from_dict_defaults_units():
    assert Thresholds.from_dict({"tau1": 0.1, "tau2": 0.2}).units == "frac"


@pytest.mark.parametrize(
    "content, exc, match",
    [
        ('{"tau1": 0.1}', KeyError, "tau2"),
        ('{"tau1": 0.1, "tau2": 0.2, "colour": 1}', KeyError, "colour"),
        ('{"tau1": 0.1, "tau2": 0.2, "units": "px"}', ValueError, "units"),
        ('{"tau1": 0.3, "tau2": 0.2}', ValueError, "tau1"),
        ('{"tau1": 0.1, "tau2": 0.2, "per_point_type": {"corner": [1]}}', ValueError, "corner"),
        ("[1, 2]", ValueError, "object"),
        ("{not json", ValueError, "JSON"),
    ],
)
def test_bad_files_name_the_file(tmp_path, content, exc, match):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(exc, match=match) as info:
        Thresholds.load(path)
    assert "bad.json" in str(info.value)


def test_thresholds_are_immutable():
    with pytest.raises(AttributeError):
        PAPER_THRESHOLDS.tau1 = 0.5
