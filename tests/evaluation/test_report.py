"""Tests of monai_spine.evaluation.report and report_figures (HTML report of predictions over a test set),
also through the options of ``monai-spine report`` (:mod:`monai_spine.cli.evaluate`)."""

from __future__ import annotations

import json
import re

import cv2
import numpy as np
import pytest

from monai_spine.data.annotation import read_annotation
from monai_spine.data.keypoints import get_scheme
from monai_spine.data.synthetic import generate_dataset
from monai_spine.cli.evaluate import add_report_arguments, parse_model_dirs, report_from_args
from monai_spine.evaluation.report import INDEX_FILE, report_cli
from monai_spine.evaluation.report_figures import FIGURES, level_sort_key

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# model -> (corner offset px of case i = scale * (1 + i), spinous process = scale * (3 + i)); x shift only
MODELS = {"modelA": 1.0, "modelB": 0.5}
N_CASES = 3


def _write_predictions(ann_paths, pred_dir, scale, overlay_for_first=False):
    """``<stem>.keypoints.json`` in the KeypointPredictor.to_json format, points shifted along x."""
    pred_dir.mkdir(parents=True, exist_ok=True)
    for i, ap in enumerate(ann_paths):
        ann = read_annotation(ap)
        sch = get_scheme(ann.scheme)
        verts = []
        for v, lev in enumerate(ann.levels):
            pts = []
            for j, (name, typ) in enumerate(zip(sch.point_names, sch.point_types)):
                dx = scale * ((1 + i) if typ == "corner" else (3 + i))
                sig = 0.01 * (1 + v) * (1 + i) * (2.0 if typ == "spinous_process" else 1.0)
                x, y = ann.keypoints_px[v, j]
                p = {"name": name, "x_px": float(x + dx), "y_px": float(y), "x_mm": None, "y_mm": None,
                     "uncertainty_class": "certain"}
                for kind in ("aleatoric", "epistemic", "total"):
                    p[f"sigma_p_{kind}_frac"] = sig
                    p[f"sigma_p_{kind}_mm"] = sig * 100.0
                pts.append(p)
            verts.append({"level": lev, "points": pts})
        d = {"image": str(ann.image), "scheme": ann.scheme, "spacing_mm": list(ann.spacing_mm),
             "spacing_source": ann.spacing_source, "thresholds": None, "mc_dropout_samples": 2, "vertebrae": verts}
        stem = ap.name.removesuffix(".json")
        (pred_dir / f"{stem}.keypoints.json").write_text(json.dumps(d))
        if overlay_for_first or i > 0:
            h, w = ann.image_size if ann.image_size else (128, 128)
            cv2.imwrite(str(pred_dir / f"{stem}.overlay.png"), np.full((h, w, 3), 80, np.uint8))


@pytest.fixture(scope="module")
def report_case(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    ann_paths = generate_dataset(root / "ann", "cervical", N_CASES, seed=3, size=128)
    for m, scale in MODELS.items():
        _write_predictions(ann_paths, root / "pred" / m, scale, overlay_for_first=(m == "modelA"))
    return root, ann_paths


def _expected(ann_paths, scale):
    """Hand-computed mean errors (mm) of one model: corners, spinous processes, all points."""
    corner, sp = [], []
    for i, ap in enumerate(ann_paths):
        ann = read_annotation(ap)
        sx = ann.spacing_mm[0]
        nv = len(ann.levels)
        corner += [scale * (1 + i) * sx] * (4 * nv)
        sp += [scale * (3 + i) * sx] * nv
    return {"mean_error_corner": np.mean(corner), "mean_error_spinous_process": np.mean(sp),
            "mean_error": np.mean(corner + sp)}


def _cell(text, model, col):
    row = re.search(rf"<tr><td>{model}</td>(.*?)</tr>", text)
    assert row, f"no summary row for {model}"
    m = re.search(rf'<td class="{col}">([^<]*)</td>', row.group(1))
    assert m, f"no {col} cell for {model}"
    return m.group(1)


def test_report_html_figures_and_numbers(report_case):
    root, ann_paths = report_case
    bc = {"modelA": [0.9, 0.95, 0.97, 0.99]}
    index = report_cli({m: root / "pred" / m for m in MODELS}, root / "ann", root / "out", bhattacharyya=bc,
                       n_samples=2)
    assert index == root / "out" / INDEX_FILE and index.is_file()
    text = index.read_text()
    assert "Errors in <b>mm</b>" in text
    imgs = re.findall(r'<img src="([^"]+)"', text)
    for f in FIGURES + ("bc_hist.png",):
        assert f in imgs, f"{f} not referenced"
    for f in imgs:
        path = root / "out" / f
        assert path.is_file(), f
        assert path.read_bytes()[:8] == PNG_MAGIC, f
    # most / least certain vertebrae: crops cut from the films (which the predictions name), with or without
    # an overlay (modelB has none for case 0, its most certain vertebrae)
    for m in MODELS:
        assert any(f.startswith(f"crop_{m}_certain_") for f in imgs), m
        assert any(f.startswith(f"crop_{m}_uncertain_") for f in imgs), m
    assert "(no film or overlay)" not in text
    for m, scale in MODELS.items():
        for col, val in _expected(ann_paths, scale).items():
            assert _cell(text, m, col) == f"{val:.3f}", (m, col)
        assert _cell(text, m, "n_points") == str(N_CASES * 5 * 5)  # counts are integers
        assert _cell(text, m, "n_failed") == "0"
    assert _cell(text, "modelA", "mean_bc") == f"{np.mean(bc['modelA']):.3f}"
    assert _cell(text, "modelB", "mean_bc") == "n/a"


def test_report_mlflow(report_case, tmp_path):
    from mlflow.tracking import MlflowClient

    root, ann_paths = report_case
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    report_cli({m: root / "pred" / m for m in MODELS}, root / "ann", tmp_path / "out", tracking_uri=uri,
               experiment="exp-report")
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("exp-report")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    arts = {a.path for a in client.list_artifacts(run.info.run_id, "report")}
    for f in FIGURES + (INDEX_FILE,):
        assert f"report/{f}" in arts
    exp_a = _expected(ann_paths, MODELS["modelA"])
    assert run.data.metrics["modelA.mean_error"] == pytest.approx(exp_a["mean_error"])
    assert run.data.metrics["modelB.mean_error_corner"] == pytest.approx(
        _expected(ann_paths, MODELS["modelB"])["mean_error_corner"])
    assert str(tmp_path) in exp.artifact_location  # artifacts beside the store, not in the cwd


@pytest.mark.parametrize("levels,expected", [
    (["L1", "C7", "T12", "C3", "S1"], ["C3", "C7", "T12", "L1", "S1"]),
    (["X", "C2"], ["C2", "X"]),
])
def test_level_sort_key(levels, expected):
    assert sorted(levels, key=level_sort_key) == expected


@pytest.mark.parametrize("items,expected", [
    (["a=/x/p", "b=q"], {"a": "/x/p", "b": "q"}),
    (["/x/runs/m1"], {"m1": "/x/runs/m1"}),
])
def test_parse_model_dirs(items, expected):
    assert parse_model_dirs(items) == expected


@pytest.mark.parametrize("items", [["a=p", "a=q"], ["=p"], ["a="]])
def test_parse_model_dirs_rejects(items):
    with pytest.raises(ValueError, match="--predictions"):
        parse_model_dirs(items)


def test_report_from_args(report_case, tmp_path, capsys):
    import argparse

    root, _ = report_case
    bc_file = tmp_path / "bc.json"
    bc_file.write_text("[0.5, 0.75]")
    args = add_report_arguments(argparse.ArgumentParser()).parse_args(
        ["--predictions", f"A={root / 'pred' / 'modelA'}", "--annotations", str(root / "ann"),
         "--out", str(tmp_path / "o"), "--bhattacharyya", f"A={bc_file}", "--n-samples", "1"])
    assert report_from_args(args) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "o" / INDEX_FILE)
    text = (tmp_path / "o" / INDEX_FILE).read_text()
    assert _cell(text, "A", "mean_bc") == "0.625"
    assert "bc_hist.png" in text


def test_report_errors(tmp_path, report_case):
    root, _ = report_case
    with pytest.raises(ValueError, match="names no model"):
        report_cli({}, root / "ann", tmp_path / "o")
    other = tmp_path / "pred"
    other.mkdir()
    (other / "nomatch.keypoints.json").write_text((root / "pred" / "modelA" / "case_0000.keypoints.json").read_text()
                                                 .replace('"image": "', '"image": "/nowhere/'))
    with pytest.raises(ValueError, match="nomatch.keypoints.json"):
        report_cli({"m": other}, root / "ann", tmp_path / "o")


# --------------------------------------------------------------------------------------------------
# uncertainty classes and referral
# --------------------------------------------------------------------------------------------------
TAU = (0.025, 0.045)  # frac; the fixture's sigma are multiples of 0.01, so no point sits on a threshold


def _expected_classes(ann_paths, scale, tau1, tau2):
    """Per class: the errors (mm) of the fixture's points, classed by hand (certain: sigma < tau1, ...)."""
    out = {"certain": [], "moderately_uncertain": [], "highly_uncertain": []}
    for i, ap in enumerate(ann_paths):
        ann = read_annotation(ap)
        sx = ann.spacing_mm[0]
        for v in range(len(ann.levels)):
            for typ in get_scheme(ann.scheme).point_types:
                sig = 0.01 * (1 + v) * (1 + i) * (2.0 if typ == "spinous_process" else 1.0)
                err = scale * ((1 + i) if typ == "corner" else (3 + i)) * sx
                name = "certain" if sig < tau1 else "moderately_uncertain" if sig < tau2 else "highly_uncertain"
                out[name].append(err)
    return out


def _class_cell(text, model, name, stat):
    m = re.search(rf'<tr><td>{model}</td><td>{name.replace("_", " ")}</td>(.*?)</tr>', text)
    assert m, f"no class row {model}/{name}"
    c = re.search(rf'<td class="class-{name}-{stat}">([^<]*)</td>', m.group(1))
    assert c, f"no {stat} cell in {model}/{name}"
    return c.group(1)


def test_report_classes_and_referral(report_case, tmp_path):
    from monai_spine.uncertainty.classes import Thresholds

    root, ann_paths = report_case
    thr = Thresholds(*TAU, units="frac", source="test")
    index = report_cli({m: root / "pred" / m for m in MODELS}, root / "ann", tmp_path / "out", thresholds=thr)
    text = index.read_text()
    assert "box_class.png" in text and "referral.png" in text
    assert "tau1 = 0.025 frac, tau2 = 0.045 frac; given (test)" in text
    for m, scale in MODELS.items():
        exp = _expected_classes(ann_paths, scale, *TAU)
        n = sum(len(v) for v in exp.values())
        for name, errs in exp.items():
            assert _class_cell(text, m, name, "count") == str(len(errs)), (m, name)
            assert _class_cell(text, m, name, "share") == f"{len(errs) / n:.3f}", (m, name)
            assert _class_cell(text, m, name, "mean_mm") == (f"{np.mean(errs):.3f}" if errs else "n/a"), (m, name)
        assert _class_cell(text, m, "unknown", "count") == "0"
    # by hand for modelA: 75 points, certain = case 0 corners v 0-1 (4 * 2 = 8) and SP v 0 (1), case 1 corners v 0
    # (4): 13 points; their errors 1, 1 px (case 0) and 2 px (case 1) * spacing
    assert len(_expected_classes(ann_paths, 1.0, *TAU)["certain"]) == 13
    row = re.search(r"<tr><td>modelA</td>(<td class=\"refer-0pct\">.*?)</tr>", text).group(1)
    mean0 = float(re.search(r'class="refer-0pct">([^ ]*) /', row).group(1))
    mean20 = float(re.search(r'class="refer-20pct">([^ ]*) /', row).group(1))
    assert mean0 == pytest.approx(_expected(ann_paths, 1.0)["mean_error"], abs=1e-3)
    # the errors grow with the case index as the sigma does: referring the most uncertain lowers the mean
    assert mean20 < mean0
    assert float(re.search(r'class="spearman_rho">([^<]*)<', row).group(1)) > 0.5


def test_report_thresholds_sources(report_case, tmp_path):
    from monai_spine.evaluation.matching import collect_errors
    from monai_spine.evaluation.report import resolve_thresholds
    from monai_spine.uncertainty.classes import PAPER_THRESHOLDS, Thresholds

    root, ann_paths = report_case
    pts = collect_errors(root / "pred" / "modelA", root / "ann")
    # the fixture's predictions record no thresholds: the paper's, said so
    thr, how = resolve_thresholds(pts)
    assert thr == PAPER_THRESHOLDS and "paper" in how
    # recorded in the prediction files
    rec = tmp_path / "rec"
    rec.mkdir()
    for f in (root / "pred" / "modelA").glob("*.keypoints.json"):
        d = json.loads(f.read_text())
        d["thresholds"] = {"tau1": 0.5, "tau2": 1.0, "units": "mm", "per_point_type": {"corner": [0.4, 0.9]},
                           "source": "calibrate"}
        (rec / f.name).write_text(json.dumps(d))
    thr, how = resolve_thresholds(collect_errors(rec, root / "ann"))
    assert (thr.tau1, thr.tau2, thr.units, thr.for_point_type("corner")) == (0.5, 1.0, "mm", (0.4, 0.9))
    assert how == "recorded in the prediction files"
    # a file given wins
    path = tmp_path / "thresholds.json"
    Thresholds(0.1, 0.2, "mm").save(path)
    thr, how = resolve_thresholds(pts, path)
    assert (thr.tau1, thr.tau2) == (0.1, 0.2) and str(path) in how
    with pytest.raises(ValueError, match="not in the report"):
        report_cli({"modelA": root / "pred" / "modelA"}, root / "ann", tmp_path / "o", thresholds={"other": path})


def test_report_mlflow_uncertainty_metrics(report_case, tmp_path):
    from mlflow.tracking import MlflowClient

    from monai_spine.uncertainty.classes import Thresholds

    root, ann_paths = report_case
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    report_cli({"modelA": root / "pred" / "modelA"}, root / "ann", tmp_path / "out", tracking_uri=uri,
               experiment="exp-unc", thresholds={"modelA": Thresholds(*TAU, units="frac")})
    client = MlflowClient(tracking_uri=uri)
    run = client.search_runs([client.get_experiment_by_name("exp-unc").experiment_id])[0]
    met = run.data.metrics
    exp = _expected_classes(ann_paths, 1.0, *TAU)
    assert met["modelA.class/certain/count"] == len(exp["certain"])
    assert met["modelA.class/highly_uncertain/mean_mm"] == pytest.approx(np.mean(exp["highly_uncertain"]))
    assert met["modelA.referral/refer_0pct/mean_mm"] == pytest.approx(_expected(ann_paths, 1.0)["mean_error"])
    assert "modelA.referral/refer_20pct/sdr_2.0mm" in met and "modelA.spearman_rho" in met
    arts = {a.path for a in client.list_artifacts(run.info.run_id, "report")}
    assert {"report/box_class.png", "report/referral.png"} <= arts


@pytest.mark.parametrize("items, expected", [
    (None, None),
    (["t.json"], "t.json"),
    (["a=t.json", "b=u.json"], {"a": "t.json", "b": "u.json"}),
])
def test_parse_thresholds_args(items, expected):
    from monai_spine.cli.evaluate import parse_thresholds_args

    assert parse_thresholds_args(items) == expected


@pytest.mark.parametrize("items", [["t.json", "a=u.json"], ["a=t.json", "a=u.json"]])
def test_parse_thresholds_args_rejects(items):
    from monai_spine.cli.evaluate import parse_thresholds_args

    with pytest.raises(ValueError, match="--thresholds"):
        parse_thresholds_args(items)


def test_kde_falls_to_zero_at_both_ends():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from monai_spine.evaluation.report_figures import _kde_line

    fig, ax = plt.subplots()
    _kde_line(ax, np.random.default_rng(0).normal(0.02, 0.005, 200), "corner", "#000000")
    y = ax.lines[0].get_ydata()
    assert y[0] < 0.02 * y.max() and y[-1] < 0.02 * y.max() and ax.get_ylim()[0] == 0
    plt.close(fig)


@pytest.mark.parametrize("col, unit, title", [
    ("mean_error", "mm", "mean error (mm)"),
    ("median_error", "px", "median error (px)"),
    ("frac_within_2", "mm", "share within 2 mm"),
    ("mean_sigma_frac", "mm", "mean sigma_p (crop fraction)"),
    ("n_points", "mm", "points"),
    ("missed_vertebrae", "mm", "missed vertebrae"),
])
def test_summary_column_titles_carry_the_unit(col, unit, title):
    from monai_spine.evaluation.report import _column_title

    assert _column_title(col, unit) == title


@pytest.mark.parametrize("sigma_frac, sigma_mm, thr_units, label", [
    (np.full(8, 0.02), np.full(8, 0.5), "frac", "sigma_p (crop fraction)"),  # the regressor: the paper's units
    (np.full(8, 0.02), np.full(8, 0.5), "mm", "sigma_p (mm)"),  # ... calibrated in mm: as the 2D histogram
    (np.full(8, np.nan), np.linspace(0.5, 1.5, 8), "mm", "sigma_p (mm)"),  # the corner FCN has no crop fraction
    (np.full(8, np.nan), np.linspace(0.5, 1.5, 8), "frac", "sigma_p (mm)"),  # ... even under the paper's thresholds
])
def test_sigma_kde_uses_the_units_the_model_has(sigma_frac, sigma_mm, thr_units, label, tmp_path, monkeypatch):
    from monai_spine.evaluation import report_figures as report
    from monai_spine.evaluation.matching import MatchedPoints

    drawn = []
    monkeypatch.setattr(report, "_kde_line", lambda ax, v, t, c: drawn.append(np.asarray(v)))
    labels = {}
    real = report._save

    def save(fig, path):
        labels[path.name] = [(ax.get_xlabel(), ax.get_ylabel()) for ax in fig.axes]
        return real(fig, path)

    monkeypatch.setattr(report, "_save", save)
    types = np.array(["corner"] * 6 + ["spinous_process"] * 2)
    pts = MatchedPoints(errors=np.linspace(0.1, 1.0, 8), sigma_frac=sigma_frac, sigma_mm=sigma_mm, point_types=types,
                        point_names=np.array(["AS"] * 8), levels=np.array(["C3"] * 8), cases=np.array(["a"] * 8),
                        error_unit="mm")
    from monai_spine.uncertainty.classes import Thresholds

    tau = (0.5, 1.0) if thr_units == "mm" else (0.0087, 0.0097)
    report._figures({"m": pts}, tmp_path, "mm", None, {"m": Thresholds(*tau, units=thr_units)})
    assert labels["kde_sigma.png"][0][0] == label
    assert labels["error_vs_sigma.png"][0][1] == label  # the 2D histogram beside it: the same sigma_p
    assert len(drawn) == 2 and all(np.isfinite(d).all() and d.size for d in drawn)


def test_sample_crops_read_points_through_the_one_prediction_parser(report_case):
    """The crops around the most / least certain vertebrae take their points from read_prediction:
    the fixture's modelA points of case 0 are the annotation shifted right by scale * (1 + 0) = 1 px."""
    from monai_spine.data.annotation import read_annotation
    from monai_spine.data.prediction import read_prediction
    from monai_spine.evaluation.report_figures import _vertebra_points

    root, ann_paths = report_case
    pred_file = sorted((root / "pred" / "modelA").glob("*.keypoints.json"))[0]
    pred = read_prediction(pred_file)
    ann = read_annotation(ann_paths[0])
    assert pred_file.name.removesuffix(".keypoints.json") == ann_paths[0].name.removesuffix(".json")
    lev = pred.levels[1]
    pts = _vertebra_points(str(pred_file), lev)
    assert pts.shape == (5, 2)
    np.testing.assert_allclose(pts[:, 1], ann.keypoints_px[1, :, 1])
    np.testing.assert_allclose(pts[:, 0] - ann.keypoints_px[1, :, 0], [1.0, 1.0, 1.0, 1.0, 3.0])  # spinous: (3 + 0)
    assert _vertebra_points(str(pred_file), "T9") is None  # a level the file does not hold
    assert _vertebra_points(str(pred_file.with_name("missing.keypoints.json")), lev) is None


def test_report_figures_are_not_stretched(report_case, tmp_path):
    """Every figure's <img> carries the size it is shown at, half the PNG's pixels (sharp on 2x screens), and
    the page's CSS never forces a width (it only caps it at the page's, the height following)."""
    from monai_spine.evaluation.report_figures import DISPLAY_PX_PER_INCH, SAVE_DPI

    root, _ = report_case
    index = report_cli({m: root / "pred" / m for m in MODELS}, root / "ann", tmp_path / "out")
    text = index.read_text()
    css = re.search(r"<style>(.*?)</style>", text).group(1)
    assert not re.search(r"(?<![-\w])width:\s*100%", css), css  # max-width only
    assert "height:auto" in css
    assert set(FIGURES) <= set(re.findall(r'<img src="([^"]+)" width="\d+" height="\d+"', text))
    for f in FIGURES:
        w, h = (int(v) for v in re.search(rf'<img src="{re.escape(f)}" width="(\d+)" height="(\d+)"', text).groups())
        png_h, png_w = cv2.imread(str(tmp_path / "out" / f)).shape[:2]
        assert png_w >= w and png_h >= h, f
        assert (w, h) == (round(png_w * DISPLAY_PX_PER_INCH / SAVE_DPI), round(png_h * DISPLAY_PX_PER_INCH / SAVE_DPI))
    # a single-panel figure (5 x 3.5 inches) is shown at 500 x 350 CSS px, not widened to the page
    assert re.search(r'<img src="cumulative_errors.png" width="500" height="350"', text)


LEGEND_RGB = (0, 0, 255)  # the stand-in legend box: a colour no point, ring or level name is drawn in


def test_sample_crops_show_no_legend(report_case, tmp_path):
    """The overlay has its legend over the most certain vertebra (the top one of case 0, near the film's corner);
    the crop of that vertebra is cut from the film with the points drawn, so it shows none of the legend,
    and it equals that part of the overlay drawn without legend (write_overlay, legend=False, no scale bar)."""
    from monai_spine.evaluation.report_figures import _vertebra_points, crop_box, film_picture
    from monai_spine.inference.overlay import write_overlay
    from monai_spine.inference.pipeline import overlay_layers

    root, ann_paths = report_case
    pred_dir = tmp_path / "pred"
    pred_dir.mkdir()
    src = root / "pred" / "modelA" / "case_0000.keypoints.json"
    pred = pred_dir / src.name
    pred.write_text(src.read_text())
    record = json.loads(pred.read_text())
    film = read_annotation(ann_paths[0])
    lev = record["vertebrae"][0]["level"]  # sigma 0.01 * (1 + 0) * (1 + 0): the most certain
    # the overlay as predict writes it (points, rings, names), without legend: the reference picture
    clean = tmp_path / "clean.png"
    from monai_spine.data.readers import read_xray

    write_overlay(clean, read_xray(film.image).array, overlay_layers(record)[0], spacing_mm=None, legend=False)
    clean_rgb = cv2.cvtColor(cv2.imread(str(clean)), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(film_picture(pred), clean_rgb)
    # the overlay beside the prediction: its legend box over the vertebra's crop
    x0, y0, x1, y1 = crop_box(_vertebra_points(str(pred), lev), clean_rgb.shape[:2])
    assert y0 < 0.25 * clean_rgb.shape[0]  # the top vertebra, its crop near the film's top edge
    overlay = clean_rgb.copy()
    overlay[: y1, : x1] = LEGEND_RGB
    cv2.imwrite(str(pred_dir / "case_0000.overlay.png"), cv2.cvtColor(overlay, cv2.COLOR_RGB2BGR))

    text = report_cli({"m": pred_dir}, root / "ann", tmp_path / "out", n_samples=1).read_text()
    assert f"case_0000.keypoints.json {lev}: mean sigma_p" in text
    crop = cv2.cvtColor(cv2.imread(str(tmp_path / "out" / "crop_m_certain_0.png")), cv2.COLOR_BGR2RGB)
    assert crop.shape == (y1 - y0, x1 - x0, 3)
    assert not np.all(crop == LEGEND_RGB, axis=-1).any()  # no legend pixel
    np.testing.assert_array_equal(crop, clean_rgb[y0:y1, x0:x1])


def test_sample_crops_without_a_film(report_case, tmp_path):
    """A prediction whose film cannot be found: a link to its overlay when there is one, else said so."""
    from pathlib import Path

    root, _ = report_case
    for with_overlay in (True, False):
        pred_dir = tmp_path / f"pred{with_overlay}"
        pred_dir.mkdir()
        src = root / "pred" / "modelA" / "case_0001.keypoints.json"
        record = json.loads(src.read_text())
        record["image"] = f"elsewhere/{Path(record['image']).name}"  # predicted on another machine
        (pred_dir / src.name).write_text(json.dumps(record))
        if with_overlay:
            cv2.imwrite(str(pred_dir / "case_0001.overlay.png"), np.full((128, 128, 3), 80, np.uint8))
        out = tmp_path / f"out{with_overlay}"
        text = report_cli({"m": pred_dir}, root / "ann", out, n_samples=1).read_text()
        assert not list(out.glob("crop_*.png"))
        if with_overlay:
            assert re.search(r'<a href="[^"]*case_0001\.overlay\.png">', text) and "(film not readable: overlay)" in text
        else:
            assert "(no film or overlay)" in text
