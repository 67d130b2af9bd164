"""Nothing silent: each case a user met where a command said nothing (or the wrong thing) now gives
a clear one-line message naming the problem, a non-zero exit, and no partial output."""

from __future__ import annotations

import json

import pytest

from monai_spine.cli import main
from monai_spine.data.synthetic import generate_dataset


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("silent")
    generate_dataset(root / "data", "cervical", 2, seed=1, size=192)
    return root / "data"


def _prediction(levels=("C3", "C4", "C5"), nulls=(), sigma=0.01, spacing=(0.2, 0.2)):
    """A prediction file in predict's format with 5 points per vertebra; ``nulls``: (vertebra, point) set to null."""
    verts = []
    for i, lev in enumerate(levels):
        pts = []
        for j, name in enumerate(("AS", "PS", "AI", "PI", "SP")):
            x, y = 100.0 + 30 * (j % 2) + (20 if j == 4 else 0), 100.0 + 50 * i + 20 * (j // 2)
            p = {"name": name, "x_px": x, "y_px": y}
            for kind in ("aleatoric", "epistemic", "total"):
                p[f"sigma_p_{kind}_frac"] = sigma
                p[f"sigma_p_{kind}_mm"] = None if sigma is None else sigma * 100
            if (i, j) in nulls:
                p["x_px"] = p["y_px"] = None
            pts.append(p)
        verts.append({"level": lev, "points": pts})
    return {"format": "monai-spine-prediction", "version": 1, "image": "x.dcm", "scheme": "lateral5",
            "spacing_mm": list(spacing), "spacing_source": "PixelSpacing", "models": ["regressor"],
            "vertebrae": verts}


def _write(path, doc):
    path.write_text(json.dumps(doc))
    return path


# ------------------------------------------------------------------------------------------ measure
def test_measure_names_points_without_coordinates_per_file(tmp_path, capsys):
    f = _write(tmp_path / "a.keypoints.json", _prediction(nulls={(1, 0), (2, 3)}))
    g = _write(tmp_path / "b.keypoints.json", _prediction())
    out = tmp_path / "out"
    assert main(["measure", str(f), str(g), "--out", str(out), "--num-samples", "0"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(f) in err[0] and "2 predicted point(s) without coordinates" in err[0]
    assert "C4 AS" in err[0] and "C5 PI" in err[0]
    case = json.loads((out / "measurements.json").read_text())["cases"][0]
    assert any("C4 AS, C5 PI" in n for n in case["notes"])


def test_measure_file_with_no_finite_point_fails_by_name(tmp_path, capsys):
    bad = _write(tmp_path / "bad.keypoints.json", _prediction(nulls={(i, j) for i in range(3) for j in range(5)}))
    good = _write(tmp_path / "good.keypoints.json", _prediction())
    assert main(["measure", str(bad), str(good), "--out", str(tmp_path / "o"), "--num-samples", "0"]) == 1
    err = capsys.readouterr().err
    assert str(bad) in err and "every coordinate is null or NaN" in err


def test_measure_says_when_only_some_points_carry_a_sigma(tmp_path):
    doc = _prediction()
    doc["vertebrae"][0]["points"][0]["sigma_p_total_mm"] = float("nan")  # Python's json writes NaN
    f = _write(tmp_path / "a.keypoints.json", doc)
    res_dir = tmp_path / "o"
    assert main(["measure", str(f), "--out", str(res_dir), "--num-samples", "5"]) == 0
    case = json.loads((res_dir / "measurements.json").read_text())["cases"][0]
    assert any("missing or NaN for 1 of 15 points" in n for n in case["notes"]) and case["uncertainty"] is None


def test_measure_with_no_input_is_an_error(tmp_path, capsys):
    assert main(["measure", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "no input" in err and err.count("\n") == 1 and not (tmp_path / "o").exists()


def test_measure_of_a_dataset_folder_skips_dataset_json(synth, tmp_path, capsys):
    assert main(["measure", str(synth), "--out", str(tmp_path), "--num-samples", "0"]) == 0
    res = json.loads((tmp_path / "measurements.json").read_text())
    assert len(res["cases"]) == 2 and not res["failures"]


# ------------------------------------------------------------------------------ unusable --out
def _no_models(monkeypatch):
    """Fail loudly if predict or corners gets as far as loading a model."""
    import monai_spine.inference.heatmap as heatmap
    import monai_spine.inference.pipeline as pipeline

    def boom(*a, **k):
        raise AssertionError("a model was loaded before the paths were checked")

    monkeypatch.setattr(pipeline, "build_pipeline", boom)
    monkeypatch.setattr(heatmap.CornerPredictor, "from_ckpt_dir", classmethod(boom))


@pytest.mark.parametrize("command", ["measure", "predict", "report", "calibrate", "overlay", "synth", "corners"])
def test_out_that_is_a_file_is_named_before_any_work(command, synth, tmp_path, capsys, monkeypatch):
    _no_models(monkeypatch)
    blocker = tmp_path / "blocker"
    blocker.write_text("a file")
    image = str(synth / "case_0000.dcm")
    out_opt = ["--models-dir" if command == "calibrate" else "--out", str(blocker / "sub")]
    argv = {
        "measure": ["measure", str(synth / "case_0000.json")],
        "predict": ["predict", image],
        "report": ["report", "--predictions", str(synth), "--annotations", str(synth)],
        "calibrate": ["calibrate", "--predictions", str(synth), "--annotations", str(synth)],
        "overlay": ["overlay", str(synth)],
        "synth": ["synth", "--n", "1", "--size", "64"],
        "corners": ["corners", image, "--centres", "50,50;50,90"],
    }[command] + out_opt
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(blocker) in err and "is a file" in err and "Traceback" not in err
    assert blocker.read_text() == "a file"


def test_corners_out_that_is_a_folder_is_refused(synth, tmp_path, capsys, monkeypatch):
    _no_models(monkeypatch)
    assert main(["corners", str(synth / "case_0000.dcm"), "--centres", "50,50;50,90", "--out", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err


def test_predict_names_every_missing_input_before_loading_a_model(synth, tmp_path, capsys, monkeypatch):
    _no_models(monkeypatch)
    out = tmp_path / "out"
    assert main(["predict", str(synth), str(tmp_path / "a.dcm"), str(tmp_path / "b.png"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "a.dcm" in err and "b.png" in err and "do not exist" in err
    assert not out.exists()


# --------------------------------------------------------------------------------- overlay, synth
def test_overlay_goes_on_past_a_bad_case(tmp_path, capsys):
    data = tmp_path / "data"
    generate_dataset(data, "cervical", 3, seed=2, size=128)
    (data / "case_0001.dcm").write_bytes(b"not a dicom")
    out = tmp_path / "png"
    assert main(["overlay", str(data), "--out", str(out)]) == 1
    cap = capsys.readouterr()
    assert "case_0001" in cap.err and cap.err.count("\n") == 1 and "1 failed" in cap.out
    assert sorted(p.name for p in out.iterdir()) == ["case_0000.png", "case_0002.png"]  # no partial picture


def test_synth_into_a_folder_with_cases_refuses_then_overwrite_replaces_them(tmp_path, capsys):
    out = tmp_path / "synth"
    assert main(["synth", "--n", "3", "--size", "64", "--out", str(out)]) == 0
    (out / "notes.txt").write_text("mine")
    before = sorted(p.name for p in out.iterdir())
    assert main(["synth", "--n", "1", "--size", "64", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "already holds a synthetic data set" in err and "--overwrite" in err
    assert sorted(p.name for p in out.iterdir()) == before
    assert main(["synth", "--n", "1", "--size", "64", "--out", str(out), "--overwrite"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["case_0000.dcm", "case_0000.json", "dataset.json", "notes.txt"]
    assert len(json.loads((out / "dataset.json").read_text())["data"]) == 1


def test_version_flag(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.startswith("monai-spine ")


def test_measure_names_inferred_levels(tmp_path, capsys):
    doc = _prediction()
    doc["vertebrae"][1]["inferred"] = True
    f = _write(tmp_path / "a.keypoints.json", doc)
    assert main(["measure", str(f), "--out", str(tmp_path / "o"), "--num-samples", "0"]) == 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "level(s) C4 inferred, not seen by the detector" in err
