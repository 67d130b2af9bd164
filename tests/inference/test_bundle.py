"""The glue of the bundle's inference.json: the detector checked against the region, films listed and predicted."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from monai_spine.inference.bundle import load_detector, predict_films
from monai_spine.inference.pipeline import PipelineResult


def _detector_folder(folder: Path, region: str) -> Path:
    """An untrained detector saved as a model folder (weights + spec)."""
    from monai_spine.inference.detector import DetectorSpec

    spec = DetectorSpec(region=region, spatial_size=(64, 64), features=(4, 4, 8, 8, 16, 4))
    spec.save(folder)
    torch.save(spec.build_network().state_dict(), folder / "model.pt")
    return folder


@pytest.mark.parametrize("region,levels", [("cervical", ("C3", "C4", "C5", "C6", "C7")),
                                           ("lumbar", ("L1", "L2", "L3", "L4", "L5"))])
def test_load_detector_of_the_region(tmp_path, region, levels):
    assert load_detector(_detector_folder(tmp_path, region), region).levels == levels


def test_load_detector_refuses_another_region(tmp_path):
    with pytest.raises(ValueError, match=r"detector_model.json: the detector was trained for region 'lumbar', "
                                         r"the regressor for 'cervical'"):
        load_detector(_detector_folder(tmp_path, "lumbar"), "cervical")


@pytest.mark.parametrize("files", [[], ["detector_model.json"], ["model.pt"]])
def test_load_detector_names_the_folder_and_the_override_when_incomplete(tmp_path, files):
    for f in files:
        (tmp_path / f).write_text("{}")
    with pytest.raises(FileNotFoundError, match=r"no vertebra detector .*--detector_dir"):
        load_detector(tmp_path, "cervical")


class _FakePipeline:
    """Records the films it is given; a film named ``bad*`` fails; two vertebrae per film."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def predict_file(self, path, out_dir, stem=None, spacing_mm=None):
        self.calls.append((Path(path).name, stem))
        if Path(path).name.startswith("bad"):
            raise ValueError("unreadable")
        kp = Path(out_dir) / f"{stem}.keypoints.json"
        kp.parent.mkdir(parents=True, exist_ok=True)
        kp.write_text("{}")
        return PipelineResult(str(path), {"vertebrae": [{}, {}]}, {"keypoints": str(kp)})


#: (files in the films folder, films predicted in order with their output stems)
CASES = [
    (["a.dcm", "b.png", "notes.txt", ".hidden.dcm"], [("a.dcm", "a"), ("b.png", "b")]),
    (["a.dcm", "sub/a.png"], [("a.dcm", "a"), ("a.png", "a-1")]),  # same stem twice: both kept
    (["x.nii.gz", "out/old.dcm"], [("x.nii.gz", "x")]),  # the output folder is never an input
]


@pytest.mark.parametrize("names,expected", CASES)
def test_predict_films_lists_the_images_of_a_folder(tmp_path, names, expected):
    films = tmp_path / "films"
    for n in names:
        (films / n).parent.mkdir(parents=True, exist_ok=True)
        (films / n).write_bytes(b"")
    pipe = _FakePipeline()
    done = predict_films(pipe, films, films / "out")
    assert pipe.calls == expected
    assert [d["vertebrae"] for d in done] == [2] * len(expected)
    assert [Path(d["keypoints"]).name for d in done] == [f"{s}.keypoints.json" for _, s in expected]


def test_predict_films_goes_on_after_a_failure_then_names_it(tmp_path):
    for n in ("a.dcm", "bad.dcm", "c.dcm"):
        (tmp_path / n).write_bytes(b"")
    pipe = _FakePipeline()
    with pytest.raises(RuntimeError, match=r"1 of 3 film\(s\) failed:\n  .*bad.dcm: ValueError: unreadable"):
        predict_films(pipe, tmp_path, tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.keypoints.json", "c.keypoints.json"]


def test_predict_films_takes_a_list_of_files(tmp_path):
    for n in ("a.dcm", "b.dcm"):
        (tmp_path / n).write_bytes(b"")
    pipe = _FakePipeline()
    predict_films(pipe, [tmp_path / "b.dcm", str(tmp_path / "a.dcm")], tmp_path / "out")
    assert pipe.calls == [("b.dcm", "b"), ("a.dcm", "a")]


def test_predict_films_without_films_names_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"no film found in {tmp_path}"):
        predict_films(_FakePipeline(), tmp_path, tmp_path / "out")


@pytest.mark.parametrize("folder,expected", [
    # the shipped lateral regressors are framed from the detected centres (box_rule): no re-cut
    ("bundle/models/cervical/regressor", 0), ("bundle/models/lumbar/regressor", 0), (None, 0), ("", 0),
])
def test_spec_refine_passes_reads_the_model_folder(folder, expected):
    """inference.json predicts new films with the spec's re-cuts, as `monai-spine predict` does."""
    from pathlib import Path

    from monai_spine.inference.regressor import spec_box_rule, spec_refine_passes

    repo = Path(__file__).resolve().parents[2]
    assert spec_refine_passes(repo / folder if folder else folder) == expected
    if folder:
        assert spec_box_rule(repo / folder)["kind"] == "frame"


def test_spec_refine_passes_without_a_spec_is_zero(tmp_path):
    from monai_spine.inference.regressor import spec_refine_passes

    assert spec_refine_passes(tmp_path) == 0


def test_spec_box_rule_reads_the_model_folder(tmp_path):
    """inference.json frames vertebrae with the spec's box rule, as `monai-spine predict` does."""
    import json

    from monai_spine.inference.regressor import RegressorSpec, spec_box_rule

    assert spec_box_rule(tmp_path) is None and spec_box_rule(None) is None
    rule = {"kind": "frame", "width_ratio": 2.0, "height_ratio": 0.8, "offset_ratio": [0.25, 0.0]}
    RegressorSpec(box_rule=rule).save(tmp_path)
    assert spec_box_rule(tmp_path) == rule
    config = json.loads((Path(__file__).resolve().parents[2] / "bundle" / "configs" / "inference.json").read_text())
    assert config["predictor"]["box_rule"] == "$spine_infer.spec_box_rule(@ckpt_dir)"
