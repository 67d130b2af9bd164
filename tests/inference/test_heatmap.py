"""Tests of the semi-automatic corner predictor (monai_spine/inference/heatmap.py)."""

from __future__ import annotations

import io
import json

import cv2
import numpy as np
import pytest
import torch

from monai_spine.cli.predict import corners_cli
from monai_spine.inference.corners import CornerPrior
from monai_spine.inference.heatmap import (
    HeatmapModelSpec,
    CornerPrediction,
    CornerPredictor,
    make_patches,
    parse_centres,
)
from monai_spine.networks.fcn import ProbabilisticUNet, SpatialNormalization

W, H = 40.0, 30.0  # rectangles: size 35, centres 50 px apart -> size ratio 0.7
OFFSETS = np.array([[-W / 2, -H / 2], [W / 2, -H / 2], [-W / 2, H / 2], [W / 2, H / 2]])


def rect_corners(n=4, x=100.0, y0=60.0, step=50.0):
    return np.stack([OFFSETS + [x, y0 + step * i] for i in range(n)])


def prior(sigma_frac=0.05):
    """Rectangle prior (mean exactly the rectangles' shape), std sigma_frac x size per axis."""
    return CornerPrior(OFFSETS / 35.0, np.stack([np.eye(2) * sigma_frac**2] * 4), count=10)


def spec(**kw):
    base = dict(size_ratio=0.7, out_size=64, grid=(2, 0.1), scales=(2.0,), rotations_deg=(0.0,),
                network={"width": 2}, prior=prior())
    return HeatmapModelSpec(**{**base, **kw})


def dot_image(corners, shape=(300, 200), sigma=1.5):
    """A flat image with a bright Gaussian dot at every corner."""
    ys, xs = np.mgrid[0 : shape[0], 0 : shape[1]]
    img = np.zeros(shape)
    for x, y in np.asarray(corners).reshape(-1, 2):
        img += np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * sigma**2))
    return (100.0 * img).astype(np.float32)


class DotOracle(torch.nn.Module):
    """A 'network' whose map is the bright part of the patch: corners where the dots are."""

    def forward(self, x):
        return SpatialNormalization()(torch.relu(x - 2.0))


class Flat(torch.nn.Module):
    def forward(self, x):
        return torch.full_like(x, 1.0 / x[0].numel())


def test_make_patches_shapes_and_owners():
    ps = make_patches(dot_image(rect_corners()), rect_corners().mean(1), np.zeros(4), np.full(4, 35.0), out_size=32,
                      grid=(2, 0.1), scales=(1.6, 2.0), rotations_deg=(0.0,))
    assert ps.patches.shape == (32, 32, 32) and ps.patches.dtype == np.float32
    np.testing.assert_array_equal(np.bincount(ps.vertebra_index), [8, 8, 8, 8])


# ----------------------------------------------------------------------------------------- spec
def test_spec_save_load_round_trip(tmp_path):
    s = spec(meta={"note": "x"})
    paths = s.save(tmp_path)
    assert sorted(p.split("/")[-1] for p in paths) == ["corner_prior.json", "heatmap_model.json"]
    back = HeatmapModelSpec.load(tmp_path)
    assert back.size_ratio == pytest.approx(0.7) and back.grid == (2, 0.1) and back.scales == (2.0,)
    assert back.network == {"width": 2} and back.meta == {"note": "x"}
    np.testing.assert_allclose(back.prior.mean, s.prior.mean)
    assert back.corner_names == ("AS", "PS", "AI", "PI")
    assert isinstance(back.build_network(), ProbabilisticUNet)
    no_prior = spec(prior=None)
    no_prior.save(tmp_path / "np")
    assert HeatmapModelSpec.load(tmp_path / "np" / "heatmap_model.json").prior is None


@pytest.mark.parametrize(
    "kw, match",
    [({"out_size": 40}, "multiple of 16"), ({"size_ratio": -1.0}, "size_ratio"), ({"scales": ()}, "scales"),
     ({"scheme": "nope"}, "scheme"), ({"postprocess": {"prior_pull": 1.2}}, "prior_pull"),
     ({"postprocess": {"prior_pull": -0.1}}, "prior_pull"), ({"postprocess": {"prior_pull": "0.4"}}, "prior_pull")],
)
def test_spec_rejects_bad_values(kw, match):
    with pytest.raises((ValueError, KeyError), match=match):
        spec(**kw)


def test_spec_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="heatmap_model.json"):
        HeatmapModelSpec.load(tmp_path)
    (tmp_path / "heatmap_model.json").write_text('{"format": "other"}')
    with pytest.raises(ValueError, match="monai-spine-heatmap-model"):
        HeatmapModelSpec.load(tmp_path)
    spec().save(tmp_path / "m")
    (tmp_path / "m" / "corner_prior.json").unlink()
    with pytest.raises(FileNotFoundError, match="corner_prior.json"):
        HeatmapModelSpec.load(tmp_path / "m")


# ----------------------------------------------------------------------------------------- predictor
def test_prior_only_prediction_returns_the_rectangles_in_the_given_order():
    corners = rect_corners()
    pred = CornerPredictor(Flat(), spec()).predict(dot_image(corners), corners.mean(1)[[2, 0, 3, 1]], spacing_mm=(0.5, 0.25))
    assert pred.used_prior.all()
    np.testing.assert_allclose(pred.corners_px, corners[[2, 0, 3, 1]], atol=1e-9)
    np.testing.assert_allclose(pred.sigma_px, 0.05 * 35.0)  # the prior's spread
    np.testing.assert_allclose(pred.corners_mm, corners[[2, 0, 3, 1]] * [0.5, 0.25])
    np.testing.assert_allclose(pred.sigma_mm, pred.sigma_px * np.sqrt((0.25 + 0.0625) / 2))
    assert pred.spacing_source == "sidecar"


def test_network_maps_move_corners_off_the_prior():
    corners = rect_corners()
    truth = corners.copy()
    truth[1, 0] += [2.0, -1.0]  # the dot of vertebra 1's top-left corner is 2.2 px off the prior mean
    pred = CornerPredictor(DotOracle(), spec()).predict(dot_image(truth), corners.mean(1), return_maps=True)
    assert not pred.used_prior.any()
    assert np.max(np.linalg.norm(pred.corners_px - truth, axis=-1)) <= 0.75
    assert np.linalg.norm(pred.corners_px[1, 0] - corners[1, 0]) > 1.5
    assert np.all(pred.sigma_px > 0) and pred.corners_mm is None and pred.sigma_mm is None
    assert pred.maps.shape == (16, 64, 64) and pred.patches.affines.shape == (16, 3, 3)


@pytest.mark.parametrize("pull", [0.25, 0.5])
def test_spec_prior_pull_reaches_the_corners(pull):
    """The spec's ``postprocess["prior_pull"]`` moves the map's corners that fraction toward the prior mean:
    the closed form ``p + w (mean - p)`` that :func:`~monai_spine.engines.heatmap.choose_prior_pull` scores."""
    corners = rect_corners()
    truth = corners.copy()
    truth[1, 0] += [2.0, -1.0]
    image, centres = dot_image(truth), corners.mean(1)
    free = CornerPredictor(DotOracle(), spec()).predict(image, centres)
    pulled = CornerPredictor(DotOracle(), spec(postprocess={"prior_pull": pull})).predict(image, centres)
    mean = np.stack([prior().mean_px(c, o, s) for c, o, s in zip(centres, free.orientations_deg, free.sizes_px)])
    np.testing.assert_allclose(mean, corners, atol=1e-9)  # the rectangles' own shape
    np.testing.assert_allclose(pulled.corners_px, free.corners_px + pull * (mean - free.corners_px), atol=1e-9)
    np.testing.assert_allclose(pulled.sigma_px, free.sigma_px)
    assert np.linalg.norm(pulled.corners_px[1, 0] - corners[1, 0]) < np.linalg.norm(free.corners_px[1, 0] - corners[1, 0])


def test_levels_order_the_centres_and_pick_level_priors():
    corners = rect_corners(n=3)
    lv = CornerPrior(OFFSETS / 35.0 + [0.1, 0.0], np.stack([np.eye(2) * 0.05**2] * 4), count=10,
                     levels={"C4": (OFFSETS / 35.0 - [0.1, 0.0], np.stack([np.eye(2) * 0.05**2] * 4), 10)})
    pred = CornerPredictor(Flat(), spec(prior=lv)).predict(dot_image(corners), corners.mean(1)[::-1],
                                                           levels=["C5", "C4", "C3"])
    np.testing.assert_allclose(pred.corners_px[1], corners[1] - [3.5, 0.0], atol=1e-9)  # C4's own prior
    np.testing.assert_allclose(pred.corners_px[0], corners[2] + [3.5, 0.0], atol=1e-9)  # pooled prior
    assert pred.levels == ["C5", "C4", "C3"]


def test_to_json_is_strict_and_complete():
    corners = rect_corners(n=2)
    p = CornerPredictor(Flat(), spec())
    res = p.to_json(p.predict(dot_image(corners), corners.mean(1), spacing_mm=(0.5, 0.5)), image="x.png")
    text = p.dumps(res)
    d = json.loads(text)
    assert d["format"] == "monai-spine-corners" and d["spacing_mm"] == [0.5, 0.5]
    c = d["vertebrae"][0]["corners"][0]
    assert c["name"] == "AS" and c["x_mm"] == pytest.approx(c["x_px"] * 0.5) and c["from_prior"] is True
    assert c["sigma_mm"] == pytest.approx(c["sigma_px"] * 0.5)


@pytest.mark.parametrize(
    "text, expected",
    [("1,2;3,4", [[1, 2], [3, 4]]), (" 1.5, 2 ; 3,4;", [[1.5, 2], [3, 4]])],
)
def test_parse_centres(text, expected):
    np.testing.assert_allclose(parse_centres(text), expected)


@pytest.mark.parametrize("text", ["", "1,2;3", "a,b;1,2", "1,2,3;4,5", "nan,1;2,3"])
def test_parse_centres_rejects(text):
    with pytest.raises(ValueError, match="centre"):
        parse_centres(text)


# ----------------------------------------------------------------------------------------- CLI
@pytest.fixture()
def model_dir(tmp_path):
    d = tmp_path / "model"
    s = spec()
    s.save(d)
    torch.manual_seed(0)
    torch.save(s.build_network().state_dict(), d / "model.pt")
    return d


@pytest.fixture()
def png(tmp_path):
    path = tmp_path / "spine.png"
    cv2.imwrite(str(path), np.clip(dot_image(rect_corners()), 0, 255).astype(np.uint8))
    return path


def test_corners_cli_writes_json_with_mm_from_a_sidecar(model_dir, png, tmp_path):
    (tmp_path / "spine.png.spacing.json").write_text('{"spacing_mm": [0.2, 0.2]}')
    centres = ";".join(f"{x},{y}" for x, y in rect_corners().mean(1))
    buf = io.StringIO()
    res = corners_cli(png, centres, ckpt_dir=model_dir, out=tmp_path / "o" / "c.json", levels="C3,C4,C5,C6", stream=buf)
    d = json.loads((tmp_path / "o" / "c.json").read_text())
    assert d["spacing_source"] == "sidecar" and d["spacing_mm"] == [0.2, 0.2]
    assert [v["level"] for v in d["vertebrae"]] == ["C3", "C4", "C5", "C6"]
    c = d["vertebrae"][2]["corners"][3]
    assert c["name"] == "PI" and c["y_mm"] == pytest.approx(c["y_px"] * 0.2) and c["sigma_mm"] > 0
    printed = buf.getvalue()
    assert "x_mm" in printed and "C6" in printed and "wrote" in printed
    assert res["output"].endswith("c.json")


def test_corners_cli_spacing_option_overrides(model_dir, png, tmp_path):
    res = corners_cli(png, "100,60;100,110", ckpt_dir=model_dir, out=tmp_path / "s.json", spacing_mm="0.3,0.4",
                      stream=io.StringIO())
    assert res["spacing_mm"] == [0.3, 0.4] and res["spacing_source"] == "sidecar"
    c = res["vertebrae"][1]["corners"][0]
    assert c["x_mm"] == pytest.approx(c["x_px"] * 0.3) and c["y_mm"] == pytest.approx(c["y_px"] * 0.4)


def test_corners_cli_unknown_spacing_gives_no_mm(model_dir, png, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    buf = io.StringIO()
    corners_cli(png, rect_corners(n=2).mean(1), ckpt_dir=model_dir, print_format="json", stream=buf)
    d = json.loads((tmp_path / "spine.png.corners.json").read_text())
    assert d["spacing_mm"] is None and d["spacing_source"] == "unknown"
    assert all(c["x_mm"] is None and c["sigma_mm"] is None for v in d["vertebrae"] for c in v["corners"])
    assert json.loads(buf.getvalue()) == d


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"centres": "100,60;100,900"}, ValueError, "outside"),
        ({"centres": "100,60;100,110", "levels": "C3"}, ValueError, "levels"),
        ({"centres": "100,60;100,110", "levels": "C3,X9"}, KeyError, "X9"),
        ({"centres": "100,60"}, ValueError, "two"),
        ({"centres": "100,60;100,110", "spacing_mm": "0.1;0.1"}, ValueError, "spacing"),
        ({"centres": "100,60;100,110", "spacing_mm": "0.1,-1"}, ValueError, "spacing"),
        ({"centres": "100,60;100,110", "ckpt_dir": "missing"}, FileNotFoundError, "heatmap_model.json"),
        ({"centres": "100,60;100,110", "image": "missing.png"}, FileNotFoundError, "missing.png"),
    ],
)
def test_corners_cli_errors(model_dir, png, tmp_path, kwargs, error, match):
    args = {"image": png, "ckpt_dir": model_dir, "out": tmp_path / "o.json", "stream": io.StringIO(), **kwargs}
    if args["ckpt_dir"] == "missing":
        args["ckpt_dir"] = tmp_path / "missing"
    if args["image"] == "missing.png":
        args["image"] = tmp_path / "missing.png"
    with pytest.raises(error, match=match):
        corners_cli(**args)


def test_corners_cli_missing_checkpoint(model_dir, png, tmp_path):
    (model_dir / "model.pt").unlink()
    with pytest.raises(FileNotFoundError, match="model.pt"):
        corners_cli(png, "100,60;100,110", ckpt_dir=model_dir, out=tmp_path / "o.json", stream=io.StringIO())


def test_nan_spacing_means_unknown():
    corners = rect_corners(n=2)
    pred = CornerPredictor(Flat(), spec()).predict(dot_image(corners), corners.mean(1), spacing_mm=(np.nan, np.nan),
                                                   spacing_source="PixelSpacing")
    assert pred.spacing_mm is None and pred.corners_mm is None and pred.spacing_source == "unknown"


# ---------------------------------------------------------------------------------------------- speed paths
@pytest.mark.parametrize("scales,rotations,centre_x", [
    ((1.6, 2.0, 2.4), (-10.0, 0.0, 10.0), 100.0),  # blurred (s > 1), three scales sharing nothing
    ((0.5,), (0.0, 15.0), 100.0),  # s < 1: no blur
    ((2.4,), (0.0,), 5.0),  # regions clipped at the image border
])
def test_extract_patches_equals_one_by_one(scales, rotations, centre_x):
    from monai_spine.data.patches import extract_patch, patch_params
    from monai_spine.inference.heatmap import extract_patches

    rng = np.random.default_rng(0)
    img = cv2.GaussianBlur(rng.random((300, 200)).astype(np.float32) * 1000, (0, 0), 2)
    c = np.array([[centre_x, 80.0], [centre_x + 4, 140.0], [centre_x + 8, 200.0]])
    aff, _ = patch_params(c, np.array([3.0, 5.0, 7.0]), np.array([40.0, 42.0, 44.0]), (3, 0.15), scales, rotations)
    ref = np.stack([extract_patch(img, a, 64) for a in aff])
    fast = extract_patches(img, aff, 64)
    assert fast.shape == ref.shape and fast.dtype == np.float32
    np.testing.assert_allclose(fast, ref, rtol=0, atol=1e-5 * np.abs(ref).max())


def test_extract_patches_outside_the_image_is_zero():
    from monai_spine.data.patches import patch_affine
    from monai_spine.inference.heatmap import extract_patches

    a = patch_affine(-500.0, -500.0, 100.0, 0.0, 64)[None]
    assert np.all(extract_patches(np.ones((50, 50), np.float32), a, 64) == 0)


def test_inference_network_matches_eval_network_and_leaves_it_alone():
    from monai_spine.inference.heatmap import inference_network

    torch.manual_seed(0)
    net = ProbabilisticUNet(width=2).eval()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
    x = torch.randn(3, 1, 32, 32)
    fast = inference_network(net)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fast.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())
    with torch.no_grad():
        ref = net(x)
        out = fast(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))


def test_optimised_predictor_equals_reference_and_tracks_weight_changes():
    torch.manual_seed(1)
    net = ProbabilisticUNet(width=2).eval()
    corners = rect_corners()
    img = dot_image(corners)
    sp = spec(scales=(1.6, 2.4), rotations_deg=(-10.0, 10.0))
    fast = CornerPredictor(net, sp)
    ref = CornerPredictor(net, sp, optimize=False, batch_size=1)
    a = fast.predict(img, corners.mean(1), return_maps=True)
    b = ref.predict(img, corners.mean(1), return_maps=True)
    np.testing.assert_allclose(a.maps, b.maps, rtol=1e-4, atol=1e-4 * b.maps.max())
    np.testing.assert_allclose(a.corners_px, b.corners_px, atol=1e-4)
    np.testing.assert_allclose(a.sigma_px, b.sigma_px, atol=1e-4)
    with torch.no_grad():  # new weights in place (as load_state_dict does): the fast copy is rebuilt
        net.final.bias.add_(1.0)
        net.down[0][0][0].weight.mul_(-1.0)
    a2 = fast.predict_maps(a.patches.patches[:4])
    b2 = ref.predict_maps(a.patches.patches[:4])
    np.testing.assert_allclose(a2, b2, rtol=1e-4, atol=1e-4 * b2.max())


def _one_vertebra(spacing_mm):
    """A hand-made prediction: one vertebra, per-axis sigma 1, 2, 3, 4 px."""
    return CornerPrediction(
        corners_px=np.array([[[10.0, 10.0], [30.0, 10.0], [10.0, 20.0], [30.0, 20.0]]]),
        sigma_px=np.array([[1.0, 2.0, 3.0, 4.0]]), used_prior=np.zeros((1, 4), bool),
        centres_px=np.array([[20.0, 15.0]]), orientations_deg=np.zeros(1), sizes_px=np.array([20.0]),
        spacing_mm=spacing_mm, levels=["C3"],
    )


# sigma_mm = 0.5 x sigma_px; sigma_p = sqrt(2) x sigma_mm = 0.707, 1.414, 2.121, 2.828 mm
# tau1 = 1.0, tau2 = 2.5 mm -> certain, moderately, moderately, highly; radius = q_hat 0.5 x sigma_p
@pytest.mark.parametrize(
    "spacing_mm, classes, radii_mm",
    [
        ((0.5, 0.5), ["certain", "moderately_uncertain", "moderately_uncertain", "highly_uncertain"],
         [0.5 * 0.5 * np.sqrt(2) * s for s in (1, 2, 3, 4)]),
        (None, ["unknown"] * 4, [None] * 4),  # thresholds in mm need the spacing
    ],
)
def test_to_json_classes_and_radii_from_the_models_calibration(spacing_mm, classes, radii_mm):
    from monai_spine.uncertainty.conformal import ConformalCalibrator
    from monai_spine.uncertainty.classes import Thresholds

    thr = Thresholds(1.0, 2.5, units="mm")
    cal = ConformalCalibrator(alpha=0.1, q_hat=0.5, sigma_units="mm")
    p = CornerPredictor(Flat(), spec(), thresholds=thr, conformal=cal)
    res = json.loads(p.dumps(p.to_json(_one_vertebra(spacing_mm))))
    got = res["vertebrae"][0]["corners"]
    assert [c["uncertainty_class"] for c in got] == classes
    for c, r in zip(got, radii_mm):
        assert c["conformal_radius_mm"] == (None if r is None else pytest.approx(r))
    assert res["thresholds"]["tau1"] == 1.0 and res["conformal"]["q_hat"] == 0.5


def test_to_json_without_calibration_has_no_class():
    res = CornerPredictor(Flat(), spec()).to_json(_one_vertebra((0.5, 0.5)))
    assert "thresholds" not in res and "uncertainty_class" not in res["vertebrae"][0]["corners"][0]


def test_from_ckpt_dir_reads_the_folders_calibration(tmp_path):
    from monai_spine.uncertainty.conformal import ConformalCalibrator
    from monai_spine.uncertainty.classes import Thresholds

    s = spec()
    s.save(tmp_path)
    torch.save(s.build_network().state_dict(), tmp_path / "model.pt")
    Thresholds(1.0, 2.5, units="mm").save(tmp_path / "thresholds.json")
    ConformalCalibrator(alpha=0.1, q_hat=0.5, sigma_units="mm").save(tmp_path / "conformal.json")
    p = CornerPredictor.from_ckpt_dir(tmp_path)
    assert p.thresholds.tau2 == 2.5 and p.conformal.q_hat == 0.5
    assert CornerPredictor.from_ckpt_dir(tmp_path, thresholds=None, conformal=None).thresholds is None


# ------------------------------------------------------- nothing found: a blank film gets no corners
@pytest.mark.parametrize("kind, centres", [("1x1.png", "0,0;0,0"), ("const.png", "256,200;256,300"),
                                           ("const.dcm", "256,200;256,300")])
def test_corners_of_a_blank_film_say_nothing_found_and_write_nothing(tmp_path, capsys, kind, centres, blank_film):
    """Today's shipped FCN would put the prior's corners there with a 1.3 px sigma: a confident answer from nothing."""
    from pathlib import Path

    from monai_spine.cli import main

    film = blank_film(kind)
    out = tmp_path / "c.json"
    ckpt = Path(__file__).resolve().parents[2] / "bundle" / "models" / "cervical" / "heatmap"
    rc = main(["corners", str(film), "--centres", centres, "--ckpt-dir", str(ckpt), "--out", str(out)])
    cap = capsys.readouterr()
    assert rc == 2  # its one input cannot be used
    assert cap.err.strip() == (f"monai-spine corners: error: nothing found in {film}: constant image "
                               f"({1 if kind == '1x1.png' else 512 * 512} pixel{'' if kind == '1x1.png' else 's'}, "
                               f"every one = {2000 if kind.endswith('dcm') else 128}), no contrast")
    assert cap.out == "" and not out.exists()
