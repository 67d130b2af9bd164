"""Tests of the whole-radiograph pipeline (monai_spine/inference/pipeline.py)."""

from __future__ import annotations

import io
import json
import math

import cv2
import numpy as np
import pytest
import torch

from monai_spine.data.readers import write_sidecar
from monai_spine.data.synthetic_dicom import write_dx_dicom
from monai_spine.inference.detector import Detections, DetectorSpec
from monai_spine.cli.predict import predict_cli
from monai_spine.inference.pipeline import SpinePipeline, expand_inputs, output_stem
from monai_spine.inference.regressor import KeypointPredictor

FRAC = (0.25, 0.75)  # the stub network's answer for every point, crop fractions (x, y)
SIGMA_FRAC = 0.01  # its per-axis aleatoric sigma
BOXES = np.array([[100.0, 100.0, 140.0, 120.0], [100.0, 160.0, 140.0, 180.0]])
IMAGE_HW = (300, 240)
CROP_HW = (32, 64)


class FakeDetector:
    """Returns the same two boxes (C3, C4) on any image, and records the spacing it was given."""

    def __init__(self):
        self.calls = []

    def detect(self, image, spacing_mm=None, spacing_source=None):
        self.calls.append((image.shape, spacing_mm, spacing_source))
        centres = np.stack([(BOXES[:, 0] + BOXES[:, 2]) / 2, (BOXES[:, 1] + BOXES[:, 3]) / 2], 1)
        return Detections(["C3", "C4"], centres, BOXES.copy(), np.array([0.9, 0.6]), spacing_mm,
                          spacing_source or "unknown")


class ConstantNet(torch.nn.Module):
    """Means FRAC and log-variance log(SIGMA_FRAC^2) for every crop and point."""

    def forward(self, x):
        out = torch.tensor([FRAC[0], FRAC[1], 2 * math.log(SIGMA_FRAC), 2 * math.log(SIGMA_FRAC)])
        return out.repeat(x.shape[0], 5, 1)


def stub_pipeline(**kw):
    reg = KeypointPredictor(ConstantNet(), scheme="lateral5", spatial_size=CROP_HW, margin_mm=4.0, num_samples=2)
    return SpinePipeline(FakeDetector(), reg, **kw)


def image_u16(seed=0):
    rng = np.random.default_rng(seed)
    return (rng.random(IMAGE_HW) * 4000).astype(np.uint16)


@pytest.fixture()
def inputs(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    write_dx_dicom(d / "dx.dcm", image_u16(0), (0.1, 0.2))  # sx = 0.1, sy = 0.2
    cv2.imwrite(str(d / "side.png"), (image_u16(1) // 16).astype(np.uint8))
    write_sidecar(d / "side.png", (0.2, 0.2))
    cv2.imwrite(str(d / "bare.png"), (image_u16(2) // 16).astype(np.uint8))
    return d


# Expected points, hand-computed through the crop (margin 4 mm, or 15 % of the box without spacing;
# the box grows about its centre until one crop pixel covers equal mm (or px) in x and y; crop size
# H x W = 32 x 64; x = x0 + fx * bw, y = y0 + fy * bh). First box (100, 100, 140, 120):
# * dx.dcm, spacing (0.1, 0.2): margins 40 px (x), 20 px (y) -> (60, 80, 180, 140), 120 x 60 px =
#   12 x 12 mm -> x grows to 240 px (0.375 mm per crop pixel both ways): (0, 80, 240, 140) -> (60, 125).
# * side.png, spacing (0.2, 0.2): margins 20 px -> (80, 80, 160, 140), 80 x 60 px -> x grows to
#   120 px: (60, 80, 180, 140) -> (90, 125).
# * bare.png, unknown spacing: margins 6 px (x), 3 px (y) -> (94, 97, 146, 123), 52 x 26 px, already
#   2 : 1 -> (107, 116.5).
# The second box is the first moved down by 60 px.
EXPECTED = {"dx": (60.0, 125.0), "side": (90.0, 125.0), "bare": (107.0, 116.5)}
SPACING = {"dx": ([0.1, 0.2], "PixelSpacing"), "side": ([0.2, 0.2], "sidecar"), "bare": (None, "unknown")}


@pytest.mark.parametrize("stem", ["dx", "side", "bare"])
def test_points_map_through_the_crop_and_outputs_are_valid(inputs, tmp_path, stem):
    name = {"dx": "dx.dcm", "side": "side.png", "bare": "bare.png"}[stem]
    out = tmp_path / "out"
    res = stub_pipeline().predict_file(inputs / name, out)
    assert set(res.files) == {"keypoints", "markups", "overlay"}
    d = json.loads((out / f"{stem}.keypoints.json").read_text())
    sp, source = SPACING[stem]
    assert d["format"] == "monai-spine-prediction" and d["scheme"] == "lateral5" and d["models"] == ["regressor"]
    assert d["spacing_mm"] == sp and d["spacing_source"] == source
    assert [v["level"] for v in d["vertebrae"]] == ["C3", "C4"]
    assert [v["detection_score"] for v in d["vertebrae"]] == pytest.approx([0.9, 0.6])
    assert d["vertebrae"][1]["box_px"] == BOXES[1].tolist()
    ex, ey = EXPECTED[stem]
    for i, v in enumerate(d["vertebrae"]):
        assert len(v["points"]) == 5
        for p in v["points"]:
            assert (p["x_px"], p["y_px"]) == pytest.approx((ex, ey + 60.0 * i), abs=1e-6)
            assert p["sigma_p_aleatoric_frac"] == pytest.approx(SIGMA_FRAC * math.sqrt(2), rel=1e-4)
            assert p["sigma_p_epistemic_frac"] == pytest.approx(0.0, abs=1e-9)
            assert p["uncertainty_class"] == "highly_uncertain"  # 0.0141 > tau2 = 0.0097 (paper, fractions)
            if sp is None:
                assert p["x_mm"] is None and p["y_mm"] is None and p["sigma_p_total_mm"] is None
            else:
                assert (p["x_mm"], p["y_mm"]) == pytest.approx((ex * sp[0], (ey + 60.0 * i) * sp[1]), abs=1e-6)
                assert p["sigma_p_total_mm"] > 0
    mrk = json.loads((out / f"{stem}.mrk.json").read_text())
    assert sum(len(m["controlPoints"]) for m in mrk["markups"]) == 10
    png = cv2.imread(str(out / f"{stem}.overlay.png"))
    assert png.shape == (*IMAGE_HW, 3)


def test_a_model_trained_in_frame_boxes_gets_them_around_the_detected_centres(inputs, tmp_path):
    # centres (120, 110) and (120, 170): spacing 60 px, upright frame; FrameBoxes(1.0, 0.5) -> 60 x 30 px
    # boxes (90, 95, 150, 125); bare.png (no spacing): margins 15 % -> 9 and 4.5 px -> (81, 90.5, 159, 129.5),
    # 78 x 39 px, already 2 : 1 -> x = 81 + 0.25 * 78 = 100.5, y = 90.5 + 0.75 * 39 = 119.75
    from monai_spine.data.frames import FrameBoxes

    pipe = stub_pipeline()
    pipe.regressor.box_rule = FrameBoxes(1.0, 0.5)
    pipe.predict_file(inputs / "bare.png", tmp_path / "out")
    d = json.loads((tmp_path / "out" / "bare.keypoints.json").read_text())
    for i, v in enumerate(d["vertebrae"]):
        assert v["box_px"] == BOXES[i].tolist()  # the detector's box is still reported
        for p in v["points"]:
            assert (p["x_px"], p["y_px"]) == pytest.approx((100.5, 119.75 + 60.0 * i), abs=1e-6)


def test_detector_gets_the_spacing_of_the_file(inputs, tmp_path):
    pipe = stub_pipeline()
    pipe.predict_file(inputs / "dx.dcm", tmp_path / "o")
    pipe.predict_file(inputs / "bare.png", tmp_path / "o")
    assert pipe.detector.calls == [((1, *IMAGE_HW), (0.1, 0.2), "PixelSpacing"), ((1, *IMAGE_HW), None, "unknown")]


def test_cli_goes_on_past_bad_files_and_lists_them(inputs, tmp_path, capsys):
    (inputs / "broken.png").write_bytes(b"not an image at all")
    out = tmp_path / "out"
    buf = io.StringIO()
    rc = predict_cli([inputs, tmp_path / "missing.dcm"], out, pipeline=stub_pipeline(), stream=buf, progress=False)
    text, err = buf.getvalue(), capsys.readouterr().err
    assert rc == 1
    assert "predicted 3 of 5" in text and "2 failed" in err  # the summary on the stream, failures on stderr
    assert "broken.png" in err and "missing.dcm" in err
    for stem in ("bare", "dx", "side"):
        for suffix in (".keypoints.json", ".mrk.json", ".overlay.png"):
            assert (out / f"{stem}{suffix}").is_file()
    names = sorted(p.name for p in out.iterdir())
    assert not [n for n in names if n.startswith(("broken", "missing", "."))], names  # no partial / temp file


def test_cli_all_good_returns_zero_and_progress_bar_runs(inputs, tmp_path, capsys):
    rc = predict_cli([inputs / "dx.dcm", inputs / "side.png"], tmp_path / "o", pipeline=stub_pipeline(),
                     stream=io.StringIO(), progress=True)
    assert rc == 0
    assert "predict" in capsys.readouterr().err  # tqdm's bar on stderr


def test_cli_no_input_and_bad_model(tmp_path):
    (tmp_path / "empty").mkdir()
    assert predict_cli([tmp_path / "empty"], tmp_path / "o", pipeline=stub_pipeline(), stream=io.StringIO()) == 2
    with pytest.raises(ValueError, match="--model"):
        predict_cli([tmp_path], tmp_path / "o", model="fcn")


def test_failed_write_leaves_no_partial_outputs(inputs, tmp_path, monkeypatch):
    import monai_spine.inference.overlay as overlay

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(overlay, "write_overlay", boom)
    out = tmp_path / "out"
    with pytest.raises(OSError, match="disk full"):
        stub_pipeline().predict_file(inputs / "dx.dcm", out)
    assert list(out.iterdir()) == []


@pytest.mark.parametrize(
    "name, stem", [("a.dcm", "a"), ("b.nii.gz", "b"), ("c.PNG", "c"), ("noext", "noext"), ("x.y.png", "x.y")]
)
def test_output_stem(name, stem):
    assert output_stem(name) == stem


def test_expand_inputs_skips_outputs_hidden_and_other_files(inputs, tmp_path):
    (inputs / "notes.txt").write_text("x")
    (inputs / ".hidden.png").write_bytes(b"")
    (inputs / "out").mkdir()
    (inputs / "out" / "old.overlay.png").write_bytes(b"")
    files = expand_inputs([inputs, inputs / "dx.dcm"], exclude=inputs / "out")
    assert [f.name for f in files] == ["bare.png", "dx.dcm", "side.png"]


def test_pipeline_needs_a_model():
    with pytest.raises(ValueError, match="regressor"):
        SpinePipeline(FakeDetector(), None, None)


# ------------------------------------------------------------- loaders: untrained tiny models saved to disk
def test_cli_loads_saved_detector_regressor_and_heatmap(inputs, tmp_path):
    from monai_spine.inference.corners import CornerPrior
    from monai_spine.inference.heatmap import HeatmapModelSpec
    from monai_spine.networks.regressor import build_regressor

    torch.manual_seed(0)
    det_dir = tmp_path / "det"
    spec = DetectorSpec(region="cervical", spatial_size=(32, 32), features=(4, 4, 8, 8, 16, 4), score_threshold=0.01)
    spec.save(det_dir)
    torch.save(spec.build_network().state_dict(), det_dir / "model.pt")
    reg_ckpt = tmp_path / "reg" / "model.pt"
    reg_ckpt.parent.mkdir()
    net = build_regressor("bayecbam", 5, width=0.125, fc_features=16, spatial_size=(64, 64))
    torch.save(net.state_dict(), reg_ckpt)
    hm_dir = tmp_path / "hm"
    offs = np.array([[-0.5, -0.4], [0.5, -0.4], [-0.5, 0.4], [0.5, 0.4]])
    hm = HeatmapModelSpec(size_ratio=0.7, out_size=32, grid=(1, 0.1), scales=(2.0,), rotations_deg=(0.0,),
                          network={"width": 2}, prior=CornerPrior(offs, np.stack([np.eye(2) * 0.01] * 4), count=5))
    hm.save(hm_dir)
    torch.save(hm.build_network().state_dict(), hm_dir / "model.pt")
    out = tmp_path / "out"
    buf = io.StringIO()
    rc = predict_cli([inputs / "dx.dcm", inputs / "bare.png"], out, model="both", detector_dir=det_dir,
                     regressor_checkpoint=reg_ckpt, variant="bayecbam", width=0.125, fc_features=16,
                     spatial_size=(64, 64), mc_samples=2, heatmap_dir=hm_dir, progress=False, stream=buf)
    assert rc == 0, buf.getvalue()
    for stem in ("dx", "bare"):
        d = json.loads((out / f"{stem}.keypoints.json").read_text())
        assert d["models"] == ["regressor", "heatmap"]
        assert all(lev in spec.levels for lev in (v["level"] for v in d["vertebrae"]))
        for v in d["vertebrae"]:
            assert len(v["points"]) == 5 and 0.0 <= v["detection_score"] <= 1.0
            if len(d["vertebrae"]) >= 2:
                assert [c["name"] for c in v["corners"]] == ["AS", "PS", "AI", "PI"]
        assert (out / f"{stem}.overlay.png").is_file() and (out / f"{stem}.mrk.json").is_file()
    assert json.loads((out / "bare.keypoints.json").read_text())["spacing_source"] == "unknown"
    assert len(json.loads((out / "dx.keypoints.json").read_text())["vertebrae"]) >= 2  # corners were checked
    cm = json.loads((out / "dx.corners.mrk.json").read_text())["markups"][0]["controlPoints"]
    assert [c["positionStatus"] for c in cm[:5]] == ["defined"] * 4 + ["missing"]  # SP is no corner
    rc = predict_cli([inputs / "side.png"], out, model="heatmap", detector_dir=det_dir, heatmap_dir=hm_dir,
                     progress=False, stream=buf)
    d = json.loads((out / "side.keypoints.json").read_text())
    assert rc == 0 and d["models"] == ["heatmap"] and d["spacing_source"] == "sidecar"
    assert all("points" not in v and len(v["corners"]) == 4 for v in d["vertebrae"])
    assert d["vertebrae"][0]["corners"][0]["x_mm"] is not None


def test_cli_passes_flip_tta_and_conformal_beside_the_checkpoint(inputs, tmp_path):
    from monai_spine.networks.regressor import build_regressor
    from monai_spine.uncertainty.conformal import ConformalCalibrator

    torch.manual_seed(0)
    det_dir = tmp_path / "det"
    spec = DetectorSpec(region="cervical", spatial_size=(32, 32), features=(4, 4, 8, 8, 16, 4), score_threshold=0.01)
    spec.save(det_dir)
    torch.save(spec.build_network().state_dict(), det_dir / "model.pt")
    reg_ckpt = tmp_path / "reg" / "model.pt"
    reg_ckpt.parent.mkdir()
    net = build_regressor("bayecbam", 5, width=0.125, fc_features=16, spatial_size=(64, 64))
    torch.save(net.state_dict(), reg_ckpt)
    # scores [1, 2, 3, 4], alpha 0.2 -> q_hat = 4
    ConformalCalibrator.fit([0.1, 0.2, 0.3, 0.4], [0.1] * 4, alpha=0.2, sigma_units="frac").save(
        reg_ckpt.parent / "conformal.json")
    kw = dict(model="regressor", detector_dir=det_dir, regressor_checkpoint=reg_ckpt, width=0.125, fc_features=16,
              spatial_size=(64, 64), mc_samples=2, overlays=False, progress=False, stream=io.StringIO())
    out = tmp_path / "out"
    assert predict_cli([inputs / "dx.dcm"], out, flip_tta=True, **kw) == 0
    d = json.loads((out / "dx.keypoints.json").read_text())
    assert d["flip_tta"] is True and d["conformal"]["nominal_coverage"] == pytest.approx(0.8)
    pts = [p for v in d["vertebrae"] for p in v["points"]]
    assert pts and all(p["conformal_radius_mm"] == pytest.approx(4 * p["sigma_p_total_frac"]) for p in pts)
    with pytest.raises(FileNotFoundError, match="missing.json"):
        predict_cli([inputs / "dx.dcm"], out, conformal=tmp_path / "missing.json", **kw)


# ------------------------------------------------------------- the model zoo: predict with no model options
def _zoo(root, region="ap", chain=True):
    """Tiny untrained models in the zoo layout: <root>/<region>/{detector,heatmap}."""
    from monai_spine.data.keypoints import get_region
    from monai_spine.inference.corners import CornerPrior
    from monai_spine.inference.heatmap import HeatmapModelSpec

    torch.manual_seed(0)
    n = len(get_region(region).levels)
    det_dir = root / region / "detector"
    kw = dict(decode_method="chain", spacing_profile=tuple(np.linspace(0.8, 1.2, n - 1)), complete=True) if chain else {}
    spec = DetectorSpec(region=region, spatial_size=(64, 32), features=(4, 4, 8, 8, 16, 4), score_threshold=0.01, **kw)
    spec.save(det_dir)
    torch.save(spec.build_network().state_dict(), det_dir / "model.pt")
    hm_dir = root / region / "heatmap"
    offs = np.array([[-0.5, -0.4], [0.5, -0.4], [-0.5, 0.4], [0.5, 0.4]])
    hm = HeatmapModelSpec(scheme=get_region(region).scheme.name, region=region, size_ratio=0.7, out_size=32,
                          grid=(1, 0.1), scales=(2.0,), rotations_deg=(0.0,), network={"width": 2},
                          prior=CornerPrior(offs, np.stack([np.eye(2) * 0.01] * 4), count=5))
    hm.save(hm_dir)
    torch.save(hm.build_network().state_dict(), hm_dir / "model.pt")
    return det_dir, hm_dir


@pytest.fixture()
def film_files(tmp_path):
    """One radiograph as DICOM, PNG and JPEG."""
    d = tmp_path / "films"
    d.mkdir()
    img = image_u16(3)
    write_dx_dicom(d / "film.dcm", img, (0.2, 0.2))
    cv2.imwrite(str(d / "film.png"), (img // 16).astype(np.uint8))
    cv2.imwrite(str(d / "film.jpg"), (img // 16).astype(np.uint8))
    return d


@pytest.mark.parametrize("name", ["film.dcm", "film.png", "film.jpg"])
def test_predict_with_no_model_options_uses_the_zoo(film_files, tmp_path, monkeypatch, name):
    from monai_spine.cli import main

    root = tmp_path / "models"
    _zoo(root, "ap")
    monkeypatch.setenv("MONAI_SPINE_MODELS", str(root))
    out = tmp_path / "out"
    assert main(["predict", str(film_files / name), "--out", str(out), "--no-progress"]) == 0
    d = json.loads((out / "film.keypoints.json").read_text())
    assert d["models"] == ["heatmap"]
    levels = [v["level"] for v in d["vertebrae"]]
    # the chain detector outputs the complete AP spine: every level once, in order, seen or inferred
    assert levels == ["T1", "T2", "T3", "T4", "T5", "T6", "T7", "T8", "T9", "T10", "T11", "T12",
                      "L1", "L2", "L3", "L4", "L5"] or levels == []
    for v in d["vertebrae"]:
        assert isinstance(v["inferred"], bool)
        if v["inferred"]:
            assert v["detection_score"] == 0.0
            assert all(c["uncertainty_class"] == "highly_uncertain" and c["inferred"] for c in v["corners"])


def test_inferred_levels_are_flagged_in_json_markups_and_sigma(tmp_path, inputs):
    """A detector that saw C3 and C5 only: C4 is inferred between them, flagged everywhere, sigma = half its box diagonal."""
    from monai_spine.inference.corners import CornerPrior
    from monai_spine.inference.heatmap import CornerPredictor, HeatmapModelSpec

    class HalfDetector:
        def detect(self, image, spacing_mm=None, spacing_source=None):
            c = np.array([[120.0, 110.0], [120.0, 150.0], [120.0, 190.0]])
            b = np.concatenate([c - [20.0, 15.0], c + [20.0, 15.0]], -1)  # 40 x 30 px: diagonal 50 px
            return Detections(["C3", "C4", "C5"], c, b, np.array([0.9, 0.0, 0.8]), spacing_mm,
                              spacing_source or "unknown", inferred=np.array([False, True, False]))

    torch.manual_seed(0)
    offs = np.array([[-0.5, -0.4], [0.5, -0.4], [-0.5, 0.4], [0.5, 0.4]])
    hm = HeatmapModelSpec(size_ratio=0.7, out_size=32, grid=(1, 0.1), scales=(2.0,), rotations_deg=(0.0,),
                          network={"width": 2}, prior=CornerPrior(offs, np.stack([np.eye(2) * 0.01] * 4), count=5))
    cp = CornerPredictor(hm.build_network(), hm)
    pipe = SpinePipeline(HalfDetector(), None, cp)
    out = tmp_path / "out"
    res = pipe.predict_file(inputs / "dx.dcm", out)  # spacing (0.1, 0.2): mean 0.15 mm / px
    v = res.result["vertebrae"]
    assert [x["inferred"] for x in v] == [False, True, False]
    assert "inferred_note" in res.result
    c4 = v[1]["corners"]
    assert all(c["sigma_px"] >= 25.0 and c["uncertainty_class"] == "highly_uncertain" for c in c4)
    assert all(c["sigma_mm"] >= 25.0 * 0.15 - 1e-9 for c in c4)
    assert not any(c.get("inferred") for c in v[0]["corners"])
    mrk = json.loads((out / "dx.corners.mrk.json").read_text())["markups"][0]["controlPoints"]
    descs = [p.get("description", "") for p in mrk]
    assert [i // 5 for i, s in enumerate(descs) if "inferred" in s] == [1] * 5  # the 5 slots of C4 (SP missing)


def test_predict_refuses_a_mismatching_model(film_files, tmp_path, monkeypatch, capsys):
    from monai_spine.cli import main

    root = tmp_path / "models"
    det_dir, _ = _zoo(root, "ap")
    monkeypatch.setenv("MONAI_SPINE_MODELS", str(root))
    out = str(tmp_path / "out")
    # a detector folder of another region than the one asked for
    assert main(["predict", str(film_files / "film.png"), "--out", out, "--region", "cervical",
                 "--detector-dir", str(det_dir)]) == 2
    err = capsys.readouterr().err
    assert "trained for region 'ap', not 'cervical'" in err and len(err.strip().splitlines()) == 1
    # weights that do not fit the spec beside them (a per-level network saved under a chain spec)
    spec = DetectorSpec(region="ap", spatial_size=(64, 32), features=(4, 4, 8, 8, 16, 4))
    torch.save(spec.build_network().state_dict(), det_dir / "model.pt")
    assert main(["predict", str(film_files / "film.png"), "--out", out]) == 2
    err = capsys.readouterr().err
    assert "do not match the detector spec" in err and len(err.strip().splitlines()) == 1
    # no shipped model for the region
    assert main(["predict", str(film_files / "film.png"), "--out", out, "--region", "lumbar"]) == 2
    assert "no shipped detector for region lumbar" in capsys.readouterr().err


# ------------------------------------------------------- nothing found: a blank film gets no result
SHIPPED = __import__("pathlib").Path(__file__).resolve().parents[2] / "bundle" / "models"


BLANK = ["1x1.png", "const.png", "const.dcm"]  # the kinds of the blank_film fixture (tests/conftest.py)


@pytest.mark.parametrize("kind", BLANK)
def test_predict_of_a_blank_film_says_nothing_found_and_writes_nothing(tmp_path, capsys, monkeypatch, kind, blank_film):
    from monai_spine.cli import main

    monkeypatch.delenv("MONAI_SPINE_MODELS", raising=False)
    film = blank_film(kind)
    out = tmp_path / "out"
    # the shipped cervical models (detector, regressor, corner FCN)
    rc = main(["predict", str(film), "--region", "cervical", "--out", str(out), "--no-progress"])
    cap = capsys.readouterr()
    assert rc == 1  # a batch with a film that gave no result
    assert f"monai-spine predict: nothing found in {film}: constant image" in cap.err
    assert "warning" not in cap.err  # said once, not also as the reader's warning
    assert "predicted 0 of 1" in cap.out and "nothing found in 1" in cap.out
    assert not out.exists()  # no keypoints, markups or overlay, not even an empty folder


@pytest.mark.parametrize("kind", BLANK)
def test_shipped_detector_sees_no_vertebra_on_a_blank_film(kind, blank_film):
    """Past the contrast check the detector itself finds nothing, and places nothing off the film."""
    from monai_spine.data.readers import read_xray
    from monai_spine.inference.detector import VertebraDetector

    img = read_xray(blank_film(kind))
    for region in ("cervical", "ap"):
        det = VertebraDetector.from_checkpoint(SHIPPED / region / "detector").detect(
            img.channel_first().astype(np.float32), img.spacing_mm, img.spacing_source)
        seen = ~np.asarray(det.inferred, bool)
        assert not seen.any(), (region, det.levels)
        h, w = img.array.shape
        c = np.asarray(det.centres_px, np.float64).reshape(-1, 2)
        assert np.all((c >= 0) & (c <= [w - 1, h - 1])), (region, c)


class SeesNothing:
    """A detector that sees no vertebra (``inferred`` None) or only infers the chain (``inferred`` True)."""

    def __init__(self, inferred):
        self.inferred = inferred

    def detect(self, image, spacing_mm=None, spacing_source=None):
        if not self.inferred:
            return Detections([], np.zeros((0, 2)), np.zeros((0, 4)), np.zeros(0), spacing_mm, "unknown")
        return Detections(["C3", "C4"], (BOXES[:, :2] + BOXES[:, 2:]) / 2, BOXES.copy(), np.zeros(2), spacing_mm,
                          spacing_source or "unknown", inferred=np.array([True, True]))


@pytest.mark.parametrize("inferred, why", [(False, "the detector saw no vertebra\n"),
                                           (True, "the detector saw no vertebra (2 levels would only be inferred, none seen)")])
def test_predict_lists_a_film_where_the_detector_saw_nothing(inputs, tmp_path, capsys, inferred, why):
    reg = KeypointPredictor(ConstantNet(), scheme="lateral5", spatial_size=CROP_HW, margin_mm=4.0, num_samples=2)
    pipe = SpinePipeline(SeesNothing(inferred), reg)
    out = tmp_path / "out"
    buf = io.StringIO()
    rc = predict_cli([inputs / "dx.dcm", inputs / "bare.png"], out, pipeline=pipe, stream=buf, progress=False)
    err = capsys.readouterr().err
    assert rc == 1 and "predicted 0 of 2" in buf.getvalue()
    assert f"nothing found in {inputs / 'dx.dcm'}: {why}" in err and f"nothing found in {inputs / 'bare.png'}" in err
    assert "failed" not in err and not out.exists()
    # the apps and benchmarks keep the empty (or inferred) result: predict_file without require_found
    res = pipe.predict_file(inputs / "dx.dcm", out)
    assert [v["inferred"] for v in res.result["vertebrae"]] == [inferred] * (2 if inferred else 0)
    assert (out / "dx.keypoints.json").is_file()


# ------------------------------------------------------------------ the overlay predict draws
def _point(x, y, cls, **kw):
    return {"x_px": x, "y_px": y, "uncertainty_class": cls, **kw}


RECORD = {  # two vertebrae of a --model both prediction: C4 inferred; spacing 0.5 mm / px
    "spacing_mm": [0.5, 0.5],
    "conformal": {"nominal_coverage": 0.9}, "corner_conformal": {"nominal_coverage": 0.8},
    "vertebrae": [
        {"level": "C3", "inferred": False,
         "points": [_point(10.0, 10.0, "certain", conformal_radius_mm=3.0),
                    _point(20.0, 10.0, "moderately_uncertain", conformal_radius_mm=None)],
         "corners": [{"x_px": 11.0, "y_px": 11.0, "uncertainty_class": "certain", "conformal_radius_mm": 1.0},
                     {"x_px": None, "y_px": None}]},
        {"level": "C4", "inferred": True,
         "points": [_point(10.0, 40.0, "highly_uncertain", conformal_radius_mm=12.5),
                    _point(20.0, 40.0, "highly_uncertain", conformal_radius_mm=12.5)],
         "corners": [{"x_px": 11.0, "y_px": 41.0, "uncertainty_class": "highly_uncertain", "inferred": True},
                     {"x_px": 21.0, "y_px": 41.0, "uncertainty_class": "highly_uncertain", "inferred": True}]},
    ],
}
VIOLET, YELLOW, RED, CYAN = (148, 0, 211), (255, 255, 0), (255, 0, 0), (0, 255, 255)


def test_overlay_layers_draw_classes_radii_inferred_levels_and_legend():
    from monai_spine.inference.pipeline import overlay_layers

    layers, legend = overlay_layers(RECORD)
    reg, cor = layers
    np.testing.assert_array_equal(reg["keypoints_px"], [[[10, 10], [20, 10]], [[10, 40], [20, 40]]])
    assert reg["colors_rgb"].tolist() == [[list(VIOLET), list(YELLOW)], [list(RED), list(RED)]]
    np.testing.assert_allclose(reg["radii_px"], [[6.0, np.nan], [25.0, 25.0]])  # mm / 0.5 mm per px
    assert reg["labels"] == ["C3", "C4?"] and cor["labels"] is None  # one set of names, beside the regressor's
    # beside the regressor the corners are cyan (red where inferred); a missing corner stays NaN
    assert cor["colors_rgb"].tolist() == [[list(CYAN), list(CYAN)], [list(RED), list(RED)]]
    assert np.isnan(cor["keypoints_px"][0, 1]).all()
    np.testing.assert_allclose(cor["radii_px"], [[2.0, np.nan], [np.nan, np.nan]])
    assert [t for t, _ in legend] == ["prediction: certain", "prediction: moderately uncertain",
                                      "prediction: highly uncertain", "heatmap corners",
                                      "ring: conformal radius (90 % / 80 % coverage)", "C4? : level inferred, not seen"]


def test_overlay_layers_of_the_corner_fcn_alone_without_spacing():
    from monai_spine.inference.pipeline import overlay_layers

    rec = {"spacing_mm": None, "vertebrae": [
        {"level": "L1", "corners": [{"x_px": 5.0, "y_px": 5.0, "uncertainty_class": "moderately_uncertain",
                                     "conformal_radius_mm": 2.0},
                                    {"x_px": 9.0, "y_px": 5.0, "conformal_radius_px": 7.0}]}]}
    (cor,), legend = overlay_layers(rec)
    # calibrated corners drawn alone take their class colour; a corner without a class stays cyan
    assert cor["colors_rgb"].tolist() == [[list(YELLOW), list(CYAN)]] and cor["labels"] == ["L1"]
    np.testing.assert_allclose(cor["radii_px"], [[np.nan, 7.0]])  # a radius in mm needs the spacing
    assert [t for t, _ in legend] == ["prediction: moderately uncertain", "heatmap corners",
                                      "ring: conformal radius", "no scale: pixel spacing unknown"]


@pytest.mark.parametrize("stem, spacing", [("dx", (0.1, 0.2)), ("bare", None)])
def test_predict_draws_units_radii_and_legend_on_its_overlay(inputs, tmp_path, monkeypatch, stem, spacing):
    """The overlay predict writes gets the spacing (scale bar), each point's conformal radius and the legend."""
    import monai_spine.inference.overlay as overlay
    from monai_spine.uncertainty.conformal import ConformalCalibrator

    calls = []
    real = overlay.write_overlay
    monkeypatch.setattr(overlay, "write_overlay", lambda path, image, layers, **kw: (calls.append((layers, kw)),
                                                                                     real(path, image, layers, **kw)))
    pipe = stub_pipeline()
    # scores [1, 2, 3, 4], alpha 0.2 -> q_hat = 4: radius 4 x sigma_p (frac) in mm
    pipe.regressor.conformal = ConformalCalibrator.fit([0.1, 0.2, 0.3, 0.4], [0.1] * 4, alpha=0.2, sigma_units="frac")
    name = {"dx": "dx.dcm", "bare": "bare.png"}[stem]
    res = pipe.predict_file(inputs / name, tmp_path / "out")
    (layers, kw), = calls
    assert kw["spacing_mm"] == (None if spacing is None else list(spacing))
    texts = [t for t, _ in kw["legend"]]
    assert ("ring: conformal radius (80 % coverage)" in texts) == (spacing is not None)  # drawn rings only
    assert ("no scale: pixel spacing unknown" in texts) == (spacing is None)
    r_mm = np.array([[p["conformal_radius_mm"] for p in v["points"]] for v in res.result["vertebrae"]])
    if spacing is None:
        assert np.isnan(layers[0]["radii_px"]).all()  # mm radii cannot be drawn without a spacing
    else:
        np.testing.assert_allclose(layers[0]["radii_px"], r_mm / 0.15)  # mean spacing (0.1 + 0.2) / 2
    # the scale bar is drawn only with the spacing: white at its row, bottom left
    png = cv2.imread(str(tmp_path / "out" / f"{stem}.overlay.png"))
    bar = png[IMAGE_HW[0] - 10, 10:20]
    assert (bar == 255).all() == (spacing is not None)


def test_an_inferred_vertebra_gets_no_small_conformal_radius(inputs, tmp_path):
    """The regressor's radius was fitted on seen vertebrae: an inferred one's is at least its sigma (half the box diagonal)."""
    from monai_spine.uncertainty.conformal import ConformalCalibrator

    class InfersC4:
        def detect(self, image, spacing_mm=None, spacing_source=None):
            c = np.array([[120.0, 110.0], [120.0, 150.0]])
            b = np.concatenate([c - [20.0, 15.0], c + [20.0, 15.0]], -1)  # 40 x 30 px: diagonal 50 px
            return Detections(["C3", "C4"], c, b, np.array([0.9, 0.0]), spacing_mm, spacing_source or "unknown",
                              inferred=np.array([False, True]))

    reg = KeypointPredictor(ConstantNet(), scheme="lateral5", spatial_size=CROP_HW, margin_mm=4.0, num_samples=2,
                            conformal=ConformalCalibrator.fit([0.1, 0.2, 0.3, 0.4], [0.1] * 4, alpha=0.2,
                                                              sigma_units="frac"))
    res = SpinePipeline(InfersC4(), reg, overlays=False).predict_file(inputs / "dx.dcm", tmp_path / "o")
    c3, c4 = ([p["conformal_radius_mm"] for p in v["points"]] for v in res.result["vertebrae"])
    assert c3 == pytest.approx([4 * SIGMA_FRAC * math.sqrt(2)] * 5, rel=1e-4)  # q_hat 4 x sigma_p, untouched
    assert c4 == pytest.approx([25.0 * 0.15] * 5)  # 25 px x mean spacing 0.15 mm


# ------------------------------------------------------------------ start-up: what the predict path imports
HEAVY = ("torch", "monai", "mlflow", "ignite", "matplotlib", "pandas", "itk", "SimpleITK", "scipy")


@pytest.mark.parametrize("modules, allowed", [
    # the parser and the pipeline's own modules: a folder of films pays for torch / MONAI once, when
    # the models load, and `--help`, `--version` or a bad path never pays
    (["monai_spine.cli", "monai_spine.inference.pipeline", "monai_spine.inference.overlay", "monai_spine.outputs",
      "monai_spine.data.readers", "monai_spine.data.slicer", "monai_spine.inference.model_zoo"], ()),
    # the corner FCN (corners, predict --model heatmap): torch, no MONAI and what MONAI drags in
    (["monai_spine.inference.heatmap"], ("torch",)),
])
def test_the_predict_path_imports_nothing_heavy_before_the_models_load(modules, allowed):
    import subprocess
    import sys

    code = f"import sys; import {', '.join(modules)}; print(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert sorted(set(out) - set(allowed)) == []
