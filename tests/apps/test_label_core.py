"""The MONAI Label app's MONAI-Label-free parts, in the main venv: client names, click levels, view check, training.

``monai_spine.apps.label.lib.core``, ``clicks``, ``models``, ``training`` and ``uploads`` import no ``monailabel``;
the server-level behaviour is in ``test_label_server.py``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from monai_spine.apps.label.lib.clicks import check_inside, click_levels, parse_centres
from monai_spine.apps.label.lib.core import LabelAppConfig, LabelAppError
from monai_spine.apps.label.lib.models import view_check
from monai_spine.apps.label.lib.training import finetune_regressor
from monai_spine.apps.label.lib.uploads import client_basename, traversal_name
from monai_spine.data.annotation import SpineAnnotation, write_annotation
from monai_spine.data.synthetic import generate_radiograph


@pytest.mark.parametrize("name, base", [
    ("/tmp/slicer-monai-label/tmpab12.json", "tmpab12.json"),    # Slicer's temporary file
    ("C:\\Users\\me\\AppData\\Local\\Temp\\tmpx.nrrd", "tmpx.nrrd"),  # Windows
    ("D:film.png", "film.png"),                                # a drive-relative name
    ("plain.png", "plain.png"),
    ("utf-8''%2Fhome%2Fme%2Fa%20b.png", "a b.png"),             # RFC 5987 encoded
    ("", ""),
    (None, None),
])
def test_client_basename_keeps_the_last_component(name, base):
    assert client_basename(name) == base


@pytest.mark.parametrize("name, refused", [
    ("/tmp/slicer/tmp1.json", False), ("C:\\x\\a.png", False), ("a..b.png", False),
    ("../a.png", True), ("x/../../a.png", True), ("..\\a.png", True), ("a\x00.png", True), ("a\n.png", True),
])
def test_traversal_names_are_spotted(name, refused):
    assert traversal_name(name) is refused


def test_one_click_is_a_valid_request_and_clicks_outside_the_image_are_named():
    assert parse_centres([[3, 4, 0]]).tolist() == [[3.0, 4.0]]  # Slicer's [i, j, k]
    with pytest.raises(LabelAppError, match="at least 1"):
        parse_centres([])
    check_inside(np.array([[-0.5, -0.5], [99.5, 49.5]]), (100, 50))  # the outer pixel edges are inside
    with pytest.raises(LabelAppError, match=r"click 2 at \(100, 10\) px lies outside the 100 x 50 image"):
        check_inside(np.array([[1, 1], [100, 10]]), (100, 50))


class _Det:
    def __init__(self, levels, centres, half=10.0):
        self.levels = list(levels)
        self.centres_px = np.asarray(centres, float)
        self.boxes_px = np.hstack([self.centres_px - half, self.centres_px + half])  # 20 px boxes
        self.scores = np.full(len(levels), 0.9)

    def __len__(self):
        return len(self.levels)


DET = _Det(["C3", "C4", "C5", "C6"], [[50, 40], [52, 70], [54, 100], [56, 130]])


@pytest.mark.parametrize("clicks, kw, levels, source", [
    ([[52, 71]], {}, ["C4"], "detector"),                                   # on C4's detection
    ([[55, 131], [51, 41]], {}, ["C6", "C3"], "detector"),                  # any order
    ([[53, 72], [80, 160]], {}, ["C4", "C5"], "detector"),                  # 2nd matches nothing: next below C4
    ([[0, 0], [1, 5]], {}, ["C3", "C4"], "top_down"),                       # nothing near: region from the top
    ([[52, 71]], {"first_level": "t1"}, ["T1"], "first_level"),
    ([[5, 9], [5, 1]], {"first_level": "C5"}, ["C6", "C5"], "first_level"),  # topmost click (y=1) is C5
    ([[5, 9], [5, 1]], {"levels": ["l1", "L2"]}, ["L1", "L2"], "given"),
    ([[52, 71]], {"first_level": "auto"}, ["C4"], "detector"),
])
def test_click_levels_given_or_inferred(clicks, kw, levels, source):
    det = kw.pop("det", DET)
    assert click_levels(np.array(clicks, float), detections=det, region="cervical", **kw) == (levels, source)


def test_click_levels_refuse_what_does_not_fit():
    with pytest.raises(LabelAppError, match="unknown level 'X1'"):
        click_levels(np.array([[1.0, 1.0]]), levels=["X1"])
    with pytest.raises(LabelAppError, match="2 names for 1 centres"):
        click_levels(np.array([[1.0, 1.0]]), levels=["C3", "C4"])
    with pytest.raises(LabelAppError, match="do not fit"):
        click_levels(np.array([[1.0, 1.0], [1.0, 9.0]]), first_level="S1")


@pytest.mark.parametrize("levels, scores, frac, min_score, in_domain, detected_frac", [
    (["C3", "C4", "C5", "C6", "C7"], [0.9] * 5, 0.5, 0.0, True, 1.0),
    (["T1", "T2", "T3"], [0.9] * 3, 0.5, 0.0, False, 3 / 17),             # a lateral film on the AP model
    ([], [], 0.5, 0.0, False, 0.0),                                       # nothing found
    (["C3", "C4", "C5"], [0.2, 0.3, 0.4], 0.5, 0.5, False, 0.6),          # found, but mean score 0.3 < 0.5
])
def test_view_check(levels, scores, frac, min_score, in_domain, detected_frac):
    expected = ["C3", "C4", "C5", "C6", "C7"] if levels[:1] != ["T1"] else [f"T{i}" for i in range(1, 13)] + [
        f"L{i}" for i in range(1, 6)]
    det = type("D", (), {"levels": levels, "scores": scores})()
    out = view_check(det, expected, frac, min_score)
    assert out["in_domain"] is in_domain and out["detected_frac"] == pytest.approx(detected_frac, abs=1e-4)
    assert (out["reason"] is None) is in_domain
    if not in_domain:
        assert "does not look like the model's view" in out["reason"]


@pytest.mark.slow
def test_training_skips_a_label_of_another_scheme_and_reports_it(tmp_path):
    """On main one 4-point label among 5-point ones failed every training ("all input arrays must have the same shape")."""
    import cv2

    from monai_spine.inference.detector import DetectorSpec
    from monai_spine.networks.regressor import build_regressor

    torch.manual_seed(0)
    models = tmp_path / "models"
    spec = DetectorSpec(region="cervical", spatial_size=(64, 64), features=(4, 4, 8, 8, 16, 4), decode_method="argmax")
    spec.save(models / "detector")
    torch.save(spec.build_network().state_dict(), models / "detector" / "model.pt")
    torch.save(build_regressor("bayecbam", 5, width=0.125, fc_features=32, spatial_size=(64, 128)).state_dict(),
               models / "model.pt")
    cfg = LabelAppConfig.from_conf({"models": str(models), "regressor_width": "0.125", "regressor_fc_features": "32",
                                    "regressor_spatial_size": "64,128", "batch_size": "4"})
    assert cfg.layout == "flat"
    items = []
    for i, seed in enumerate((1, 2)):
        img, ann = generate_radiograph("cervical", seed, size=(256, 192))
        path = tmp_path / f"f{i}.png"
        cv2.imwrite(str(path), (img // 16).astype(np.uint8))
        items.append((str(path), ann))
    bad = SpineAnnotation(levels=["L1", "L2"], keypoints_px=items[0][1].keypoints_px[:2, :4], visible=np.ones((2, 4), bool),
                          region="ap", scheme="ap4", image_size=(192, 256))
    write_annotation(bad, tmp_path / "bad.json")
    stats = finetune_regressor(cfg, [items[0], (str(tmp_path / "f1.png"), bad), items[1]], epochs=1)
    assert stats["samples"] == 10  # 5 vertebrae x 2 good labels
    assert stats["skipped"] == ["f1.png: scheme 'ap4' has 4 points per vertebra, the model 5"]
    with pytest.raises(LabelAppError, match="skipped: f1.png: scheme 'ap4'"):
        finetune_regressor(cfg, [(str(tmp_path / "f1.png"), bad)], epochs=1)


def test_the_app_defaults_to_the_model_zoo(tmp_path, monkeypatch):
    import json

    monkeypatch.setenv("MONAI_SPINE_MODELS", str(tmp_path))
    monkeypatch.delenv("MONAI_SPINE_LABEL_MODELS", raising=False)
    for region, kind in (("ap", "heatmap"), ("cervical", "detector"), ("cervical", "regressor")):
        d = tmp_path / region / kind
        d.mkdir(parents=True)
        (d / "model.pt").write_bytes(b"")
        (d / f"{kind}_model.json").write_text(json.dumps(
            {"variant": "bayecbam", "network": {"width": 0.5, "fc_features": 64}, "spatial_size": [112, 224],
             "region": "cervical"} if kind == "regressor" else {}))
    cfg = LabelAppConfig.from_conf({})
    # cervical: the first region with a detector and a regressor
    assert (cfg.layout, cfg.zoo_region, cfg.models_dir) == ("zoo", "cervical", tmp_path)
    assert cfg.detector_dir == tmp_path / "cervical" / "detector"
    assert cfg.regressor_checkpoint == tmp_path / "cervical" / "regressor" / "model.pt"
    assert (cfg.width, cfg.fc_features, cfg.spatial_size, cfg.region) == (0.5, 64, (112, 224), "cervical")
    assert cfg.has_regressor() and not cfg.has_heatmap()
    over = LabelAppConfig.from_conf({"region": "ap", "regressor_width": "0.25"})
    assert over.zoo_region == "ap" and over.heatmap_dir == tmp_path / "ap" / "heatmap" and over.has_heatmap()
    assert (over.width, over.fc_features) == (0.25, 1024)  # the conf given; no ap regressor spec: the default
    with pytest.raises(LabelAppError, match="conf region"):
        LabelAppConfig.from_conf({"region": "thoracic"})
    # a flat folder (detector/, model.pt) with the spec beside model.pt: read too
    flat = tmp_path / "flat"
    (flat / "detector").mkdir(parents=True)
    (flat / "regressor_model.json").write_text(json.dumps({"format": "monai-spine-regressor", "width": 0.25,
                                                           "fc_features": 16, "spatial_size": [64, 128]}))
    f = LabelAppConfig.from_conf({"models": str(flat)})
    assert (f.layout, f.width, f.fc_features, f.spatial_size) == ("flat", 0.25, 16, (64, 128))
    assert f.regressor_checkpoint == flat / "model.pt"
