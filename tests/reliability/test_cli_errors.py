"""Bad input through ``monai-spine``: one line per problem naming the file, no traceback, non-zero exit,
batch commands go on past a bad file and leave no partial output."""

from __future__ import annotations

import json
import math
import shutil
import warnings

import numpy as np
import pytest
import torch
from reliability_corpus import BAD_ANNOTATIONS, good_annotation_dict, write_json_case

from monai_spine.cli import main
from monai_spine.data.synthetic_dicom import write_dx_dicom

BAD_FOR_PREDICT = ["truncated.dcm", "corrupt.dcm", "nopixels.dcm", "huge.png", "nan.nii.gz", "volume.nii.gz",
                   "empty.png"]



def _stub_pipeline():
    """Detector and regressor stand-ins (as in tests/inference/test_pipeline.py): two fixed boxes, constant points."""
    from monai_spine.inference.detector import Detections
    from monai_spine.inference.pipeline import SpinePipeline
    from monai_spine.inference.regressor import KeypointPredictor

    boxes = np.array([[60.0, 60.0, 100.0, 80.0], [60.0, 100.0, 100.0, 120.0]])

    class FakeDetector:
        def detect(self, image, spacing_mm=None, spacing_source=None):
            centres = np.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2], 1)
            return Detections(["C3", "C4"], centres, boxes.copy(), np.array([0.9, 0.8]), spacing_mm,
                              spacing_source or "unknown")

    class ConstantNet(torch.nn.Module):
        def forward(self, x):
            out = torch.tensor([0.25, 0.75, 2 * math.log(0.01), 2 * math.log(0.01)])
            return out.repeat(x.shape[0], 5, 1)

    reg = KeypointPredictor(ConstantNet(), scheme="lateral5", spatial_size=(32, 64), margin_mm=4.0, num_samples=2)
    return SpinePipeline(FakeDetector(), reg)


@pytest.fixture()
def stub_models(monkeypatch):
    import monai_spine.inference.model_zoo as zoo
    import monai_spine.inference.pipeline as pipeline

    monkeypatch.setattr(pipeline, "build_pipeline", lambda *a, **k: _stub_pipeline())
    # no shipped models are needed: the stand-in replaces the choice of the zoo's folders too
    monkeypatch.setattr(zoo, "resolve_models", lambda *a, **k: {
        "model": "regressor", "region": "cervical", "detector_dir": None, "regressor_dir": None, "heatmap_dir": None})


def _good_dicom(path):
    img = (np.random.default_rng(0).random((200, 160)) * 4000).astype(np.uint16)
    return write_dx_dicom(path, img, (0.1, 0.1))


def test_predict_goes_on_past_bad_files_lists_them_and_exits_non_zero(image_corpus, stub_models, tmp_path, capsys):
    inp = tmp_path / "in"
    inp.mkdir()
    _good_dicom(inp / "good.dcm")
    for name in BAD_FOR_PREDICT:
        shutil.copy(image_corpus[name], inp / name)
    out = tmp_path / "out"
    code = main(["predict", str(inp), "--out", str(out), "--no-progress"])
    cap = capsys.readouterr()
    text = cap.out + cap.err
    assert code == 1
    assert "Traceback" not in text
    assert "predicted 1 of 8" in text
    for name in BAD_FOR_PREDICT:
        lines = [line for line in text.splitlines() if str(inp / name) in line]
        assert len(lines) >= 1, f"{name} not listed:\n{text}"
    # outputs exist for the good file only, and nothing half-written is left behind
    written = sorted(p.name for p in out.iterdir())
    assert {"good.keypoints.json", "good.mrk.json"} <= set(written)
    assert all(p.startswith("good.") for p in written), written
    assert not [p for p in out.rglob("*") if ".tmp" in p.name or p.name.startswith(".")]
    json.loads((out / "good.keypoints.json").read_text())


@pytest.mark.parametrize("name", ["truncated.dcm", "huge.png", "nan.nii.gz", "volume.nii.gz", "text.dcm"])
def test_corners_on_a_bad_image_is_one_line_naming_it(image_corpus, name, capsys):
    code = main(["corners", str(image_corpus[name]), "--centres", "10,10;10,30", "--ckpt-dir", "/nonexistent/m"])
    err = capsys.readouterr().err
    assert code == 2
    assert "Traceback" not in err and err.count("\n") == 1
    assert str(image_corpus[name]) in err


def test_measure_goes_on_past_bad_files_and_lists_them(tmp_path, capsys):
    inp = tmp_path / "labels"
    inp.mkdir()
    write_json_case(inp / "good.json", good_annotation_dict(image=str(tmp_path / "absent.dcm")))
    bad = ["missing_vertebrae.json", "wrong_point_count.json", "unknown_level.json", "not_json.json",
           "infinite_point.json", "binary.json"]
    for name in bad:
        write_json_case(inp / name, BAD_ANNOTATIONS[name][0])
    out = tmp_path / "out"
    code = main(["measure", str(inp), "--out", str(out), "--num-samples", "0"])
    cap = capsys.readouterr()
    assert code == 1
    assert "Traceback" not in cap.out + cap.err
    err_lines = cap.err.strip().splitlines()
    assert len(err_lines) == len(bad)
    for name in bad:
        assert sum(str(inp / name) in line for line in err_lines) == 1, (name, cap.err)
        assert BAD_ANNOTATIONS[name][1] in next(line for line in err_lines if str(inp / name) in line)
    assert "measured 1 file(s)" in cap.out and f"{len(bad)} failed" in cap.out
    res = json.loads((out / "measurements.json").read_text())
    assert [c["source"] for c in res["cases"]] == [str(inp / "good.json")]
    assert sorted(f["file"] for f in res["failures"]) == sorted(str(inp / n) for n in bad)
    assert (out / "measurements.csv").is_file()
    assert sorted(p.name for p in out.iterdir()) == ["measurements.csv", "measurements.json"]


def test_measure_pair_with_a_bad_file_is_listed(tmp_path, capsys):
    good = write_json_case(tmp_path / "flex.json", good_annotation_dict(image=str(tmp_path / "absent.dcm")))
    bad = write_json_case(tmp_path / "ext.json", BAD_ANNOTATIONS["wrong_point_count.json"][0])
    code = main(["measure", "--flexion", str(good), "--extension", str(bad), "--out", str(tmp_path / "o"),
                 "--num-samples", "0"])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert "pair not measured" in err and str(bad) in err


def test_measure_argument_error_writes_nothing(tmp_path, capsys):
    code = main(["measure", str(tmp_path / "missing.json"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "missing.json" in err
    assert not (tmp_path / "o").exists()


def test_warnings_are_one_line_each(image_corpus, capsys, monkeypatch):
    """A rejected spacing reaches the user as one line, not Python's two-line warning with source code."""
    import monai_spine.cli.data as cli

    def read(args):
        from monai_spine.data.readers import read_xray

        read_xray(image_corpus["spacing_zero.dcm"])
        return 0

    monkeypatch.setattr(cli, "_cmd_synth", read)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        assert main(["synth", "--out", "unused"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("monai-spine synth: warning: ") for line in err)
    assert "PixelSpacing = '0\\0' rejected" in err[0]


def test_unexpected_error_is_one_line_and_exit_3_unless_debugging(capsys, monkeypatch):
    import monai_spine.cli.data as cli

    def boom(args):
        raise RuntimeError("something broke\non two lines")

    monkeypatch.setattr(cli, "_cmd_synth", boom)
    assert main(["synth", "--out", "unused"]) == 3
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "internal error: RuntimeError: something broke on two lines" in err
    assert "MONAI_SPINE_DEBUG" in err and "Traceback" not in err
    monkeypatch.setenv("MONAI_SPINE_DEBUG", "1")
    with pytest.raises(RuntimeError):
        main(["synth", "--out", "unused"])
