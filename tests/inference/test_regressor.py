"""Flip test-time augmentation and conformal radii of :class:`KeypointPredictor` (stub networks)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from monai_spine.data.keypoints import get_scheme
from monai_spine.inference.regressor import (
    KeypointPredictor,
    combine_flip_tta,
    flip_back,
    load_conformal,
)
from monai_spine.uncertainty.conformal import ConformalCalibrator
from monai_spine.uncertainty.mc_dropout import mc_dropout_predict
from monai_spine.transforms.keypoints import frac_to_image_px

H, W = 8, 16
SPACING = (0.5, 0.25)
# lateral5: AS, PS, AI, PI, SP -- deliberately asymmetric constant outputs
CONST_FRAC = [(0.2, 0.3), (0.7, 0.3), (0.25, 0.8), (0.75, 0.8), (0.9, 0.5)]
LOGVAR = math.log(0.01)  # aleatoric variance 0.01 per axis


def identity_crop(d: dict) -> dict:
    """The whole image is the crop: crop pixels are image pixels."""
    return {
        "image": np.asarray(d["image"], np.float32),
        "crop_to_image": np.eye(3),
        "crop_spacing_mm": np.asarray(d["spacing_mm"], np.float64),
    }


class ConstNet(nn.Module):
    """Returns the same points (fractions) and log-variances whatever the input."""

    predicts_logvar = True

    def __init__(self, frac=CONST_FRAC, logvar=LOGVAR):
        super().__init__()
        self.register_buffer("frac", torch.tensor(frac, dtype=torch.float32))
        self.logvar = float(logvar)

    def forward(self, x):
        out = torch.cat([self.frac, torch.full_like(self.frac, self.logvar)], -1)
        return out.unsqueeze(0).expand(x.shape[0], -1, -1)


class BrightestNet(nn.Module):
    """Point j = brightest pixel (as fractions) shifted by d_j in x, with d_AS = -d_PS, d_AI = -d_PI:
    equivariant under the flip (the flipped crop's AS is the original PS mirrored)."""

    predicts_logvar = False
    OFFSETS = torch.tensor([-0.1, 0.1, -0.05, 0.05, 0.0])

    def forward(self, x):
        b, _, h, w = x.shape
        flat = x[:, 0].reshape(b, -1).argmax(1)
        fx = ((flat % w).float() + 0.5) / w
        fy = ((flat // w).float() + 0.5) / h
        px = fx[:, None] + self.OFFSETS[None]
        return torch.stack([px, fy[:, None].expand_as(px)], -1)


class DropoutNet(nn.Module):
    """A tiny network with dropout (MC passes disagree) for the TTA-off regression check."""

    predicts_logvar = False

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.lin = nn.Linear(H * W, 10)
        self.drop = nn.Dropout(0.5)

    def forward(self, x):
        return torch.sigmoid(self.drop(self.lin(x.flatten(1)))).reshape(-1, 5, 2)


def make_image():
    img = np.zeros((1, H, W), np.float32)
    img[0, 5, 3] = 1.0  # brightest pixel at x=3, y=5
    return img


BOXES = np.array([[0, 0, W - 1, H - 1], [1, 1, W - 2, H - 2]], float)


def predictor(net, **kw):
    return KeypointPredictor(net, scheme="lateral5", spatial_size=(H, W), num_samples=3,
                             crop_transform=identity_crop, **kw)


def test_flip_back_by_hand():
    perm = get_scheme("lateral5").flip_permutation
    np.testing.assert_array_equal(perm, [1, 0, 3, 2, 4])
    back = flip_back(np.array(CONST_FRAC), perm)
    # slot j takes point perm[j], mirrored: AS <- PS (0.7 -> 0.3), PS <- AS (0.2 -> 0.8), ...
    np.testing.assert_allclose(back, [(0.3, 0.3), (0.8, 0.3), (0.25, 0.8), (0.75, 0.8), (0.1, 0.5)])
    var = np.arange(10.0).reshape(5, 2)
    np.testing.assert_array_equal(flip_back(var, perm, is_mean=False), var[[1, 0, 3, 2, 4]])
    # tensors too, and the input is left alone
    t = torch.tensor(CONST_FRAC)
    torch.testing.assert_close(flip_back(t, perm), torch.tensor(back, dtype=torch.float32))
    assert t[0, 0].item() == pytest.approx(0.2)


def test_flip_tta_with_constant_network_hand_computed():
    pred = predictor(ConstNet(), flip_tta=True).predict(make_image(), BOXES, SPACING, "test")
    # mean of the original and the flipped-back prediction
    mean_frac = np.array([(0.25, 0.3), (0.75, 0.3), (0.25, 0.8), (0.75, 0.8), (0.5, 0.5)])
    expected_px = mean_frac * [W, H] - 0.5
    for i in range(2):
        np.testing.assert_allclose(pred.keypoints_px[i], expected_px, atol=1e-6)
    # epistemic variance: MC passes agree (0) + ((m1 - m2) / 2)^2 in x; y agrees
    between_x = np.array([((0.2 - 0.3) / 2) ** 2, ((0.7 - 0.8) / 2) ** 2, 0.0, 0.0, ((0.9 - 0.1) / 2) ** 2])
    np.testing.assert_allclose(pred.sigma_frac["epistemic"][0], np.sqrt(between_x), atol=1e-6)
    # aleatoric: mean of two identical 0.01 per-axis variances -> sigma_p = sqrt(0.02)
    np.testing.assert_allclose(pred.sigma_frac["aleatoric"], math.sqrt(0.02), rtol=1e-5)
    np.testing.assert_allclose(pred.sigma_frac["total"][0], np.sqrt(0.02 + between_x), rtol=1e-5)
    # mm: sigma_x_mm = sigma_x_frac * W * sx
    sx_mm = np.sqrt(0.01 + between_x) * W * SPACING[0]
    sy_mm = np.sqrt(0.01) * H * SPACING[1]
    np.testing.assert_allclose(pred.sigma_mm["total"][0], np.hypot(sx_mm, sy_mm), rtol=1e-5)
    assert pred.meta["flip_tta"] is True


def test_flip_tta_off_is_the_plain_prediction():
    pred = predictor(ConstNet()).predict(make_image(), BOXES, SPACING)
    np.testing.assert_allclose(pred.keypoints_px[0], np.array(CONST_FRAC) * [W, H] - 0.5, atol=1e-6)
    np.testing.assert_allclose(pred.sigma_frac["epistemic"], 0.0, atol=1e-7)
    assert pred.meta["flip_tta"] is False


def test_flip_tta_off_matches_the_direct_mc_dropout_computation():
    net = DropoutNet()
    img = make_image()
    default = predictor(net).predict(img, BOXES[:1], SPACING)
    off = predictor(net, flip_tta=False).predict(img, BOXES[:1], SPACING)
    # what the predictor did before the option existed: seed 0, one MC-dropout call
    torch.manual_seed(0)
    res = mc_dropout_predict(net, torch.as_tensor(img)[None], num_samples=3)
    expected = frac_to_image_px(res.mean_frac.numpy().astype(np.float64), np.eye(3)[None], (H, W))
    for p in (default, off):
        np.testing.assert_allclose(p.keypoints_px, expected, atol=1e-6)
        np.testing.assert_allclose(p.sigma_frac["epistemic"], res.sigma_p_frac("epistemic").numpy(), rtol=1e-5)
    assert default.sigma_frac["epistemic"].max() > 0  # dropout passes disagree: the check can fail
    on = predictor(net, flip_tta=True).predict(img, BOXES[:1], SPACING)
    assert not np.allclose(on.keypoints_px, default.keypoints_px)


def test_flip_equivariant_network_is_unchanged_by_tta():
    img = make_image()
    off = predictor(BrightestNet()).predict(img, BOXES[:1], SPACING)
    on = predictor(BrightestNet(), flip_tta=True).predict(img, BOXES[:1], SPACING)
    # brightest pixel at x=3, y=5; AS 0.1 W to its left, PS 0.1 W to its right
    np.testing.assert_allclose(off.keypoints_px[0, :, 1], 5.0, atol=1e-5)
    np.testing.assert_allclose(off.keypoints_px[0, :, 0], 3.0 + np.array([-0.1, 0.1, -0.05, 0.05, 0.0]) * W, atol=1e-5)
    np.testing.assert_allclose(on.keypoints_px, off.keypoints_px, atol=1e-5)
    np.testing.assert_allclose(on.sigma_frac["total"], 0.0, atol=1e-6)


def test_combine_flip_tta_keeps_num_samples():
    net = ConstNet()
    x = torch.zeros(2, 1, H, W)
    a = mc_dropout_predict(net, x, num_samples=2)
    c = combine_flip_tta(a, a, get_scheme("lateral5").flip_permutation)
    assert c.num_samples == 2 and tuple(c.mean_frac.shape) == (2, 5, 2)


def fitted_calibrator(sigma_units="frac", error_unit="mm"):
    # scores e / sigma = [1, 2, 3, 4]; n = 4, alpha = 0.2: k = ceil(5 * 0.8) = 4 -> q_hat = 4
    return ConformalCalibrator.fit([0.1, 0.2, 0.3, 0.4], [0.1, 0.1, 0.1, 0.1], alpha=0.2,
                                   sigma_units=sigma_units, error_unit=error_unit)


def test_conformal_radius_is_q_hat_times_sigma():
    cal = fitted_calibrator()
    assert cal.q_hat == pytest.approx(4.0)
    p = predictor(ConstNet(), conformal=cal)
    pred = p.predict(make_image(), BOXES, SPACING)
    np.testing.assert_allclose(pred.conformal_radius, 4.0 * math.sqrt(0.02), rtol=1e-5)
    d = json.loads(p.dumps(p.to_json(pred, ["C3", "C4"], image="x.png")))
    pt = d["vertebrae"][1]["points"][4]
    assert pt["conformal_radius_mm"] == pytest.approx(4.0 * pt["sigma_p_total_frac"])
    assert d["conformal"]["nominal_coverage"] == pytest.approx(0.8)
    assert d["conformal"]["q_hat"] == pytest.approx(4.0) and d["conformal"]["sigma_units"] == "frac"
    assert d["flip_tta"] is False


def test_conformal_mm_sigma_px_radius_and_unknown_spacing_is_null():
    cal = fitted_calibrator(sigma_units="mm", error_unit="px")
    p = predictor(ConstNet(), conformal=cal)
    known = p.to_json(p.predict(make_image(), BOXES[:1], SPACING), ["C3"])
    pt = known["vertebrae"][0]["points"][0]
    assert "conformal_radius_mm" not in pt
    assert pt["conformal_radius_px"] == pytest.approx(4.0 * pt["sigma_p_total_mm"], rel=1e-6)
    unknown = p.to_json(p.predict(make_image(), BOXES[:1], None), ["C3"])
    assert all(q["conformal_radius_px"] is None for q in unknown["vertebrae"][0]["points"])
    json.loads(p.dumps(unknown))  # strict JSON (no NaN)


def test_infinite_q_hat_is_written_as_null():
    cal = ConformalCalibrator.fit([0.1, 0.2], [0.1, 0.1], alpha=0.1, sigma_units="frac")  # k = 3 > n = 2
    assert math.isinf(cal.q_hat)
    p = predictor(ConstNet(), conformal=cal)
    d = json.loads(p.dumps(p.to_json(p.predict(make_image(), BOXES[:1], SPACING), ["C3"])))
    assert d["conformal"]["q_hat"] is None
    assert all(q["conformal_radius_mm"] is None for q in d["vertebrae"][0]["points"])


def test_no_conformal_writes_no_radius():
    p = predictor(ConstNet())
    d = p.to_json(p.predict(make_image(), BOXES[:1], SPACING), ["C3"])
    assert "conformal" not in d
    assert not any(k.startswith("conformal_radius") for k in d["vertebrae"][0]["points"][0])


def test_bad_conformal_argument():
    with pytest.raises(ValueError, match="ConformalCalibrator"):
        predictor(ConstNet(), conformal={"q_hat": 1.0})


def test_load_conformal_round_trip_and_absent(tmp_path):
    assert load_conformal(tmp_path / "conformal.json") is None
    assert load_conformal(None) is None
    cal = fitted_calibrator()
    cal.save(tmp_path / "conformal.json")
    loaded = load_conformal(str(tmp_path / "conformal.json"))
    assert loaded == cal
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError, match="bad.json"):
        load_conformal(tmp_path / "bad.json")


# ---------------------------------------------------------------------------------------------- speed paths
def test_reference_predictor_equals_batched_without_dropout():
    """Dropout off: the batched (trunk once) predictor and the plain reference (one crop at a time,
    T full passes one by one) give the same points to 1e-4 px and the same sigmas."""
    from monai_spine.networks.regressor import build_regressor

    torch.manual_seed(0)
    net = build_regressor("bayecbam", 5, width=0.0625, fc_features=16, dropout=0.0, spatial_size=(64, 128),
                          logvar_bias_init=-6.0)
    rng = np.random.default_rng(0)
    img = (rng.random((1, 200, 160)) * 1000).astype(np.float32)
    boxes = np.array([[40.0, 30.0, 100.0, 60.0], [45.0, 80.0, 105.0, 110.0], [50.0, 130.0, 110.0, 160.0]])
    kw = dict(scheme="lateral5", spatial_size=(64, 128), num_samples=4)
    a = KeypointPredictor(net, **kw).predict(img, boxes, (0.2, 0.2))
    b = KeypointPredictor(net, reference=True, **kw).predict(img, boxes, (0.2, 0.2))
    np.testing.assert_allclose(a.keypoints_px, b.keypoints_px, atol=1e-4)
    for kind in ("aleatoric", "total"):
        np.testing.assert_allclose(a.sigma_mm[kind], b.sigma_mm[kind], rtol=1e-4)
    assert np.all(b.sigma_frac["epistemic"] < 1e-6)


# ---------------------------------------------------------------------------- self-describing model folder


def _model_folder(tmp_path, variant="baseline", region="cervical", **kw):
    from monai_spine.inference.regressor import RegressorSpec

    spec = RegressorSpec(region=region, variant=variant, spatial_size=(64, 128), width=0.125, fc_features=16,
                         dropout=0.0, margin_mm=3.0, meta={"trained_with": "test"}, **kw)
    net = spec.build_network()
    torch.save(net.state_dict(), tmp_path / "model.pt")
    spec.save(tmp_path)
    return spec, net


@pytest.mark.parametrize("variant,region", [("baseline", "cervical"), ("bayecbam", "ap")])
def test_spec_round_trip_and_predictor_from_folder(tmp_path, variant, region):
    from monai_spine.inference.regressor import KeypointPredictor, RegressorSpec

    spec, net = _model_folder(tmp_path, variant, region)
    assert RegressorSpec.load(tmp_path) == spec
    pred = KeypointPredictor.from_checkpoint(tmp_path)
    assert pred.spatial_size == (64, 128) and pred.spec == spec and pred.scheme.name == spec.scheme
    for k, v in net.state_dict().items():
        assert torch.equal(pred.network.state_dict()[k], v)
    # a model.pt given directly finds its spec beside it
    assert KeypointPredictor.from_checkpoint(tmp_path / "model.pt").spec == spec


def test_mismatching_checkpoint_is_refused_in_one_line(tmp_path):
    from monai_spine.inference.regressor import KeypointPredictor, RegressorSpec

    _model_folder(tmp_path)
    d = RegressorSpec.load(tmp_path).to_dict()
    d["fc_features"] = 32
    (tmp_path / "regressor_model.json").write_text(json.dumps(d))
    with pytest.raises(ValueError) as e:
        KeypointPredictor.from_checkpoint(tmp_path)
    msg = str(e.value)
    assert "model.pt" in msg and "other shape" in msg and "\n" not in msg and len(msg) < 400


@pytest.mark.parametrize(
    "patch,match",
    [({"format": "monai-spine-detector"}, "not a regressor spec"), ({"colour": 1}, "unknown spec keys"),
     ({"variant": "resnet"}, "unknown regressor variant"), ({"spatial_size": [10, 10]}, "spatial_size")],
)
def test_bad_spec_names_the_file(tmp_path, patch, match):
    from monai_spine.inference.regressor import RegressorSpec

    _model_folder(tmp_path)
    d = {**RegressorSpec.load(tmp_path).to_dict(), **patch}
    (tmp_path / "regressor_model.json").write_text(json.dumps(d))
    with pytest.raises(ValueError, match=match) as e:
        RegressorSpec.load(tmp_path)
    assert "regressor_model.json" in str(e.value)


def test_spec_contradicting_arguments_is_refused(tmp_path):
    from monai_spine.inference.regressor import KeypointPredictor

    _model_folder(tmp_path)
    with pytest.raises(ValueError, match="other settings"):
        KeypointPredictor.from_checkpoint(tmp_path, network_kwargs={"width": 1.0})
    with pytest.raises(ValueError, match="trained on"):
        KeypointPredictor.from_checkpoint(tmp_path, spatial_size=(112, 224))


class RecordingCrop:
    """The identity crop that records the boxes it was asked to cut."""

    def __init__(self):
        self.boxes: list[list[float]] = []
        self.angles: list[float | None] = []

    def __call__(self, d: dict) -> dict:
        self.boxes.append([float(v) for v in d["box_px"]])
        self.angles.append(d.get("box_angle_rad"))
        return identity_crop(d)


@pytest.mark.parametrize("passes,calls", [(0, 2), (1, 4), (2, 6)])
def test_refine_passes_recut_around_the_previous_keypoints(passes, calls):
    crop = RecordingCrop()
    p = KeypointPredictor(ConstNet(), scheme="lateral5", spatial_size=(H, W), num_samples=2, crop_transform=crop,
                          refine_passes=passes)
    res = p.predict(make_image(), BOXES, SPACING)
    assert len(crop.boxes) == calls  # two vertebrae per pass
    # CONST_FRAC in a 16 x 8 identity crop: x = f * 16 - 0.5, y = f * 8 - 0.5 -> box (2.7, 1.9, 13.9, 5.9)
    for box in crop.boxes[2:]:
        np.testing.assert_allclose(box, [2.7, 1.9, 13.9, 5.9], atol=1e-5)
    np.testing.assert_allclose(crop.boxes[:2], BOXES.astype(np.float32))
    assert res.meta["refine_passes"] == passes
    np.testing.assert_allclose(res.keypoints_px[0, 0], [2.7, 1.9], atol=1e-5)


def test_recut_with_angles_keeps_each_angle_and_frames_the_points_in_it():
    crop = RecordingCrop()
    p = KeypointPredictor(ConstNet(), scheme="lateral5", spatial_size=(H, W), num_samples=2, crop_transform=crop,
                          refine_passes=1)
    p.predict(make_image(), BOXES, SPACING, angles_rad=np.array([0.0, math.pi / 2]))
    assert crop.angles == [0.0, math.pi / 2, 0.0, math.pi / 2]
    # the same points (x 2.7..13.9, y 1.9..5.9, centre (8.3, 3.9)); at a quarter turn the box's width
    # runs along y: half sizes (2.0, 5.6) about the same centre
    np.testing.assert_allclose(crop.boxes[2], [2.7, 1.9, 13.9, 5.9], atol=1e-5)
    np.testing.assert_allclose(crop.boxes[3], [6.3, -1.7, 10.3, 9.5], atol=1e-5)
    with pytest.raises(ValueError, match="angles_rad: expected 2 angles"):
        p.predict(make_image(), BOXES, SPACING, angles_rad=[0.1])


def test_without_angles_no_angle_reaches_the_crop():
    crop = RecordingCrop()
    KeypointPredictor(ConstNet(), scheme="lateral5", spatial_size=(H, W), num_samples=1,
                      crop_transform=crop).predict(make_image(), BOXES, SPACING)
    assert crop.angles == [None, None]


@pytest.mark.parametrize("override,calls", [(0, 2), (1, 4), (None, 6)])
def test_refine_passes_per_call_override_the_predictors(override, calls):
    """Annotation boxes are predicted with 0 re-cuts whatever the spec says; None keeps the predictor's."""
    crop = RecordingCrop()
    p = KeypointPredictor(ConstNet(), scheme="lateral5", spatial_size=(H, W), num_samples=2, crop_transform=crop,
                          refine_passes=2)
    res = p.predict(make_image(), BOXES, SPACING, refine_passes=override)
    assert len(crop.boxes) == calls and res.meta["refine_passes"] == (2 if override is None else override)
    with pytest.raises(ValueError, match="refine_passes"):
        p.predict(make_image(), BOXES, SPACING, refine_passes=-1)


def test_negative_refine_passes_is_refused():
    with pytest.raises(ValueError, match="refine_passes"):
        KeypointPredictor(ConstNet(), scheme="lateral5", spatial_size=(H, W), refine_passes=-1)


def test_refine_passes_comes_from_the_spec(tmp_path):
    from monai_spine.inference.regressor import RegressorSpec

    spec = RegressorSpec(region="cervical", variant="baseline", spatial_size=(64, 128), width=0.25, fc_features=16,
                         refine_passes=2)
    spec.save(tmp_path)
    torch.save(spec.build_network().state_dict(), tmp_path / "model.pt")
    assert RegressorSpec.load(tmp_path).refine_passes == 2
    assert KeypointPredictor.from_checkpoint(tmp_path).refine_passes == 2
    assert KeypointPredictor.from_checkpoint(tmp_path, refine_passes=0).refine_passes == 0


def test_predict_cases_does_not_recut_annotation_boxes(tmp_path, monkeypatch):
    from monai_spine.data.synthetic import generate_dataset
    from monai_spine.inference.regressor import predict_cases

    labels = generate_dataset(tmp_path / "d", "cervical", 1, seed=3, size=256)
    p = KeypointPredictor(ConstNet(), scheme="lateral5", spatial_size=(H, W), num_samples=1, refine_passes=2)
    seen, real = [], p.predict
    monkeypatch.setattr(p, "predict", lambda *a, **k: (seen.append(k.get("refine_passes")), real(*a, **k))[1])
    predict_cases(p, [str(labels[0])], tmp_path / "out", overlays=False)
    assert seen == [0] and len(list((tmp_path / "out").glob("*.keypoints.json"))) == 1


# --- a model trained in boxes made from vertebra centres (box_rule) --------------------------------

RULE = {"kind": "frame", "width_ratio": 1.5, "height_ratio": 0.5, "offset_ratio": [0.0, 0.0]}


def test_box_rule_comes_from_the_spec_and_round_trips(tmp_path):
    from monai_spine.data.frames import FrameBoxes
    from monai_spine.inference.regressor import KeypointPredictor, RegressorSpec

    spec, _ = _model_folder(tmp_path, box_rule=RULE)
    assert RegressorSpec.load(tmp_path).box_rule == RULE
    assert KeypointPredictor.from_checkpoint(tmp_path).box_rule == FrameBoxes(1.5, 0.5)
    with pytest.raises(ValueError, match="box_rule"):
        RegressorSpec(box_rule={"kind": "spacing"})


def test_vertebra_boxes_frame_the_centres_top_to_bottom_by_level():
    # three centres 20 px apart on x = 50, given out of order (C5, C3, C4), and a fourth without a
    # centre: the frame is upright (angle 0), boxes 30 x 10 px about each centre; the fourth keeps its box
    p = KeypointPredictor(ConstNet(), scheme="lateral5", spatial_size=(H, W), box_rule=RULE)
    given = np.array([[0.0, 0.0, 5.0, 5.0]] * 4)
    centres = np.array([[50.0, 50.0], [50.0, 10.0], [50.0, 30.0], [np.nan, np.nan]])
    boxes, angles = p.vertebra_boxes(given, centres, ["C5", "C3", "C4", "C6"])
    np.testing.assert_allclose(boxes, [[35, 45, 65, 55], [35, 5, 65, 15], [35, 25, 65, 35], [0, 0, 5, 5]])
    np.testing.assert_allclose(angles, 0.0, atol=1e-12)
    # a tilted spine: centres along (1, 1) -> endplates at -45 degrees
    boxes, angles = p.vertebra_boxes(given[:3], np.array([[0.0, 0.0], [10.0, 10.0], [20.0, 20.0]]))
    np.testing.assert_allclose(np.degrees(angles), -45.0)


@pytest.mark.parametrize("rule,centres,expect_angles", [
    (None, np.array([[1.0, 1.0], [1.0, 9.0]]), False),  # no rule: the given boxes
    (RULE, None, False),  # no centres: the given boxes
    (RULE, np.array([[1.0, 1.0], [np.nan, np.nan]]), True),  # one centre: no frame, axis-aligned
])
def test_vertebra_boxes_fall_back_to_the_given_boxes(rule, centres, expect_angles):
    p = KeypointPredictor(ConstNet(), scheme="lateral5", spatial_size=(H, W), box_rule=rule)
    boxes, angles = p.vertebra_boxes(BOXES, centres)
    np.testing.assert_array_equal(boxes, BOXES)
    assert (angles is not None) == expect_angles and (angles is None or not np.any(angles))


def test_vertebra_boxes_errors():
    p = KeypointPredictor(ConstNet(), scheme="lateral5", spatial_size=(H, W), box_rule=RULE)
    with pytest.raises(ValueError, match="2 boxes, 3 centres"):
        p.vertebra_boxes(BOXES, np.zeros((3, 2)))
    with pytest.raises(ValueError, match="box_rule must be FrameBoxes"):
        KeypointPredictor(ConstNet(), scheme="lateral5", spatial_size=(H, W), box_rule=3)


def test_annotation_boxes_are_its_boxes_or_the_rule_around_its_centres():
    from monai_spine.data.annotation import SpineAnnotation

    # three upright 30 x 10 px bodies 20 px apart (centres (50, 10), (50, 30), (50, 50)), SP 25 px behind
    local = np.array([[-15.0, -5.0], [15.0, -5.0], [-15.0, 5.0], [15.0, 5.0], [40.0, 0.0]])
    kp = np.array([50.0, 10.0]) + np.stack([local + [0.0, 20.0 * i] for i in range(3)])
    ann = SpineAnnotation(["C3", "C4", "C5"], kp, np.ones((3, 5), bool), "cervical", "lateral5")
    plain = KeypointPredictor(ConstNet(), scheme="lateral5", spatial_size=(H, W))
    boxes, angles = plain.annotation_boxes(ann)
    assert angles is None
    np.testing.assert_allclose(boxes, ann.boxes_from_keypoints())  # no boxes_px: the keypoints' extent
    framed = KeypointPredictor(ConstNet(), scheme="lateral5", spatial_size=(H, W), box_rule=RULE)
    boxes, angles = framed.annotation_boxes(ann)
    np.testing.assert_allclose(boxes, [[35, 5, 65, 15], [35, 25, 65, 35], [35, 45, 65, 55]])  # 30 x 10 about each
    np.testing.assert_allclose(angles, 0.0, atol=1e-12)
