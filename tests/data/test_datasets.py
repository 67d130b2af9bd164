from __future__ import annotations

import json

import pytest

from monai_spine.data.datasets import bundle_splits, ensure_synthetic, list_cases, split_cases, vertebra_datalists


@pytest.mark.parametrize(
    "n, expected_sizes",
    [(20, (14, 3, 3)), (3, (1, 1, 1)), (10, (6, 2, 2))],  # round(0.15 * 10) = round(1.5) = 2, twice
)
def test_split_cases_sizes_are_disjoint_and_seeded(n, expected_sizes):
    cases = [f"/d/case_{i:03d}.json" for i in range(n)]
    a = split_cases(cases, seed=3)
    b = split_cases(list(reversed(cases)), seed=3)
    assert a == b  # independent of listing order
    assert tuple(len(a[s]) for s in ("training", "validation", "test")) == expected_sizes
    assert sorted(sum(a.values(), [])) == sorted(cases)
    assert split_cases(cases, seed=4) != a or n <= 3


def test_split_cases_rejects_bad_fractions():
    with pytest.raises(ValueError, match="fractions"):
        split_cases(["a"], fractions=(1.0, -0.1, 0.1))


def test_synthetic_default_is_generated_once_and_split_by_image(tmp_path):
    folder = ensure_synthetic(tmp_path, "cervical", n=6, seed=1, hard_case_rate=0.0, size=(128, 128))
    again = ensure_synthetic(tmp_path, "cervical", n=6, seed=1, hard_case_rate=0.0, size=(128, 128))
    assert folder == again and not list(tmp_path.glob("*.tmp-*"))
    assert len(list_cases(folder)["cases"]) == 6
    splits = bundle_splits(str(folder), region="cervical")
    lists = vertebra_datalists(splits, region="cervical")
    ids = {s: {it["image_id"] for it in lists[s]} for s in lists}
    assert not (ids["training"] & ids["validation"]) and not (ids["training"] & ids["test"])
    item = lists["training"][0]
    assert item["keypoints_px"].shape == (5, 2) and item["box_px"].shape == (4,) and item["level"] == "C3"


def test_list_cases_without_index_and_with_explicit_split(tmp_path):
    with pytest.raises(FileNotFoundError, match="no monai-spine-keypoints"):
        list_cases(tmp_path)
    (tmp_path / "dataset.json").write_text(json.dumps({"region": "lumbar", "training": [{"label": "a.json"}], "test": ["b.json"]}))
    idx = list_cases(tmp_path)
    assert idx["region"] == "lumbar" and idx["training"][0].endswith("a.json") and idx["validation"] == []
