"""Tests of the MONAI Deploy application (monai_spine/apps/deploy), run in .venv-deploy as a subprocess.

A synthetic DICOM folder (a DX radiograph, a CT distractor and a text file) and tiny untrained models
(detector decoding ``argmax`` with a low threshold, so every cervical level is "detected"; a narrow
BayeRegX regressor in a self-describing ``regressor/`` folder) are written to tmp_path; the app runs once, and its DICOM SR is read back with
pydicom in the main venv and compared with the app's JSON outputs. Bad inputs (no DICOM, a CT
series, a radiograph without pixel spacing) must give one clear line, a non-zero exit status and no
output folder. The app venv is found by ``tests/apps/conftest.py`` (skip, or fail in CI).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.sr.codedict import codes as sr_codes

from monai_spine.apps.deploy.sr import UNCERTAINTY_CLASS_CODES, measurement_code
from monai_spine.data.synthetic import generate_radiograph
from monai_spine.data.synthetic_dicom import write_dx_dicom

REPO_ROOT = Path(__file__).resolve().parents[2]
SPACING_MM = (0.55, 0.6)  # (sx, sy) of the synthetic radiograph
COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"
TIMEOUT_S = 600
LEVELS = ["C3", "C4", "C5", "C6", "C7"]
POINT_NAMES = ["AS", "PS", "AI", "PI", "SP"]
DEVICE_UID = "1.2.826.0.1.3680043.10.1234.17"  # the installation's Device Observer UID in good_run


# ------------------------------------------------------------------------------------ inputs and models
def _write_models(root: Path, layout: str = "legacy") -> Path:
    """Tiny untrained models: ``detector/`` and either ``regressor/`` with its spec (``layout="kinds"``, what
    the bundle writes now: no deploy.json) or the legacy ``model.pt`` + hand-written ``deploy.json``."""
    import torch

    from monai_spine.inference.detector import DetectorSpec
    from monai_spine.inference.regressor import RegressorSpec
    from monai_spine.networks.regressor import build_regressor

    torch.manual_seed(0)
    det_dir = root / "detector"
    spec = DetectorSpec(region="cervical", spatial_size=(32, 32), features=(4, 4, 8, 8, 16, 4),
                        score_threshold=0.01, decode_method="argmax")
    spec.save(det_dir)
    torch.save(spec.build_network().state_dict(), det_dir / "model.pt")
    if layout == "kinds":
        reg = RegressorSpec(region="cervical", variant="bayecbam", spatial_size=(64, 64), width=0.125, fc_features=16)
        reg.save(root / "regressor")
        torch.save(reg.build_network().state_dict(), root / "regressor" / "model.pt")
        return root
    net = build_regressor("bayecbam", 5, width=0.125, fc_features=16, spatial_size=(64, 64))
    torch.save(net.state_dict(), root / "model.pt")
    (root / "deploy.json").write_text(json.dumps(
        {"regressor": {"width": 0.125, "fc_features": 16, "spatial_size": [64, 64], "mc_samples": 2}}))
    return root


def _radiograph(seed: int = 0) -> np.ndarray:
    img, _ = generate_radiograph("cervical", seed, size=(256, 192), spacing_mm=SPACING_MM)
    return img


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory) -> Path:
    return _write_models(tmp_path_factory.mktemp("models"), layout="kinds")


@pytest.fixture(scope="module")
def good_input(tmp_path_factory) -> Path:
    """A DX radiograph with spacing, a CT image of another series, and a text file."""
    d = tmp_path_factory.mktemp("study")
    write_dx_dicom(d / "dx.dcm", _radiograph(0), SPACING_MM, uid_entropy=["deploy-test", "dx"],
                   body_part="CSPINE", view_position="LL")
    write_dx_dicom(d / "sub" / "ct.dcm", _radiograph(1), (0.5, 0.5), uid_entropy=["deploy-test", "ct"],
                   extra={"Modality": "CT"})
    (d / "README.txt").write_text("not a DICOM file")
    return d


def _run_app(python: Path, in_dir: Path, out_dir: Path, models: Path, env: dict | None = None):
    full_env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), **(env or {})}
    full_env.pop("MONAI_SPINE_DEPLOY_MODELS", None)
    return subprocess.run(
        [str(python), "-m", "monai_spine.apps.deploy", "-i", str(in_dir), "-o", str(out_dir), "-m", str(models)],
        cwd=REPO_ROOT, env=full_env, capture_output=True, text=True, timeout=TIMEOUT_S,
    )


@pytest.fixture(scope="module")
def deploy_python(app_python) -> Path:
    return app_python(".venv-deploy")


@pytest.fixture(scope="module")
def good_run(tmp_path_factory, deploy_python, good_input, models_dir):
    out = tmp_path_factory.mktemp("run") / "out"
    proc = _run_app(deploy_python, good_input, out, models_dir, env={"MONAI_SPINE_DEVICE_UID": DEVICE_UID})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, proc


# ----------------------------------------------------------------------------------- SR reading helpers
def _code(item, attr: str = "ConceptNameCodeSequence") -> tuple[str, str]:
    c = getattr(item, attr)[0]
    value = c.get("CodeValue") or c.get("LongCodeValue")  # values over 16 characters are Long Code Values
    return str(value), str(c.CodingSchemeDesignator)


def _children(item) -> list:
    return list(item.get("ContentSequence", []))


def _walk(items):
    for it in items:
        yield it
        yield from _walk(_children(it))


def _groups(sr) -> list:
    """TID 1410 / 1501 Measurement Group containers (DCM 125007)."""
    return [it for it in _walk(sr.ContentSequence) if it.ValueType == "CONTAINER" and _code(it) == ("125007", "DCM")]


def _tracking_id(group) -> str:
    return next(str(c.TextValue) for c in _children(group) if _code(c) == ("112039", "DCM"))


def _nums(group) -> dict[str, tuple[float, str]]:
    out = {}
    for c in _children(group):
        if c.ValueType == "NUM":
            mv = c.MeasuredValueSequence[0]
            out[_code(c)[0]] = (float(mv.NumericValue), str(mv.MeasurementUnitsCodeSequence[0].CodeValue))
    return out


def _codes(group) -> dict[str, str]:
    return {_code(c)[0]: _code(c, "ConceptCodeSequence")[0] for c in _children(group) if c.ValueType == "CODE"}


def _json_points(pred: dict) -> dict[str, dict]:
    return {f"{v['level']}-{p['name']}": p for v in pred["vertebrae"] for p in v["points"]}


# ------------------------------------------------------------------------------------------------ tests
def test_writes_every_output_and_nothing_else(good_run):
    out, proc = good_run
    names = sorted(p.name for p in out.iterdir())
    assert names == ["dx.keypoints.json", "dx.mrk.json", "dx.overlay.png", "dx.overlay.sc.dcm", "dx.sr.dcm",
                     "measurements.csv", "measurements.json"]
    assert not [p for p in out.parent.iterdir() if ".staging-" in p.name]  # staging folder moved away
    assert "ignored non-radiograph images: 1 CT" in proc.stdout
    pred = json.loads((out / "dx.keypoints.json").read_text())
    assert pred["spacing_mm"] == pytest.approx(list(SPACING_MM)) and pred["spacing_source"] == "PixelSpacing"
    assert [v["level"] for v in pred["vertebrae"]] == LEVELS  # argmax decoding: every level
    assert pred["image"].endswith("dx.dcm")


def test_sr_points_equal_the_json_points_and_reference_the_source(good_run, good_input):
    out, _ = good_run
    src = pydicom.dcmread(good_input / "dx.dcm")
    sr = pydicom.dcmread(out / "dx.sr.dcm")
    pred = json.loads((out / "dx.keypoints.json").read_text())
    assert sr.SOPClassUID == COMPREHENSIVE_SR and sr.Modality == "SR"
    assert _code(sr) == ("126000", "DCM")  # Imaging Measurement Report (TID 1500)
    assert (sr.PatientID, sr.StudyInstanceUID) == (src.PatientID, src.StudyInstanceUID)
    assert sr.SeriesInstanceUID != src.SeriesInstanceUID
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert evidence.ReferencedSOPInstanceUID == src.SOPInstanceUID
    expected = _json_points(pred)
    assert len(expected) == len(LEVELS) * len(POINT_NAMES)
    seen = {}
    for g in _groups(sr):
        scoords = [c for c in _children(g) if c.ValueType == "SCOORD"]
        if not scoords:
            continue
        (sc,) = scoords
        assert sc.GraphicType == "POINT"
        refs = [c for c in _children(sc) if c.ValueType == "IMAGE"]
        assert len(refs) == 1
        ref = refs[0].ReferencedSOPSequence[0]
        assert ref.ReferencedSOPInstanceUID == src.SOPInstanceUID
        assert ref.ReferencedSOPClassUID == src.SOPClassUID
        seen[_tracking_id(g)] = (g, [float(t) for t in sc.GraphicData])
    assert sorted(seen) == sorted(expected)
    for key, (g, xy) in seen.items():
        p = expected[key]
        # DICOM SCOORD: pixel centres at +0.5 (top-left corner of the image is 0, 0)
        assert xy == pytest.approx([p["x_px"] + 0.5, p["y_px"] + 0.5], abs=1e-4)
        codes = _codes(g)
        assert codes["unc-class"] == UNCERTAINTY_CLASS_CODES[p["uncertainty_class"]][0]
        assert codes["kp-name"] == f"kp-{key.split('-')[1]}"
        assert codes["121071"] == "51282000"  # finding: vertebra
        level = key.split("-")[0]
        assert codes["363698007"] == str(getattr(sr_codes.SCT, f"{level}Vertebra").value)
        nums = _nums(g)
        assert nums["sigma-p-total"][0] == pytest.approx(p["sigma_p_total_mm"], rel=1e-6)
        assert nums["sigma-p-total"][1] == "mm"


def test_sr_measurements_equal_the_measurement_json(good_run):
    from monai_spine.measure.io import results_to_rows

    out, _ = good_run
    sr = pydicom.dcmread(out / "dx.sr.dcm")
    meas = json.loads((out / "measurements.json").read_text())
    case = meas["cases"][0]
    assert case["length_unit"] == "mm" and case["spacing_mm"] == pytest.approx(list(SPACING_MM))
    ucum = {"mm": "mm", "deg": "deg", "fraction": "{ratio}"}
    expected = {(f"{r['group']} {r['item']}", measurement_code(r["measurement"])[0]): (r["value"], ucum[r["unit"]])
                for r in results_to_rows(meas) if r["value"] is not None and math.isfinite(r["value"])}
    got = {}
    for g in _groups(sr):
        if any(c.ValueType == "SCOORD" for c in _children(g)):
            continue
        for name, value_unit in _nums(g).items():
            got[(_tracking_id(g), name)] = value_unit
    assert got.keys() == expected.keys()
    assert {k[1] for k in got} >= {"seg-angle", "seg-transl", "disc-h-ant", "body-depth"}
    for k, (value, unit) in expected.items():
        assert got[k][0] == pytest.approx(value, rel=1e-6, abs=1e-9), k
        assert got[k][1] == unit, k


def test_sr_holds_each_measurements_interval_and_the_models_hashes(good_run, models_dir):
    """Issue 16 item 5: the interval of measurements.json beside each value; models by name and weight hash."""
    import hashlib

    from monai_spine.measure.io import results_to_rows

    out, _ = good_run
    sr = pydicom.dcmread(out / "dx.sr.dcm")
    rows = {(f"{r['group']} {r['item']}", measurement_code(r["measurement"])[0]): r
            for r in results_to_rows(json.loads((out / "measurements.json").read_text()))
            if r["value"] is not None and math.isfinite(r["value"])}
    checked = 0
    for g in _groups(sr):
        for c in _children(g):
            if c.ValueType != "NUM" or (_tracking_id(g), _code(c)[0]) not in rows:
                continue
            r = rows[(_tracking_id(g), _code(c)[0])]
            props = {str(p.ConceptNameCodeSequence[0].CodeMeaning): p for p in _children(c)}
            up = float(props["+, range of upper measurement uncertainty"].MeasuredValueSequence[0].NumericValue)
            lo = float(props["-, range of lower measurement uncertainty"].MeasuredValueSequence[0].NumericValue)
            sd = float(props["Standard Deviation"].MeasuredValueSequence[0].NumericValue)
            assert up == pytest.approx(max(0.0, r["ci_high"] - r["value"]), rel=1e-6, abs=1e-9)
            assert lo == pytest.approx(max(0.0, r["value"] - r["ci_low"]), rel=1e-6, abs=1e-9)
            assert sd == pytest.approx(r["std"], rel=1e-6)
            checked += 1
    assert checked == len(rows) > 0
    params = {str(it.TextValue) for it in _walk(sr.ContentSequence)
              if it.ValueType == "TEXT" and str(it.ConceptNameCodeSequence[0].CodeMeaning) == "Algorithm Parameters"}
    digest = {k: hashlib.sha256((models_dir / k / "model.pt").read_bytes()).hexdigest()
              for k in ("detector", "regressor")}
    assert params == {f"detector model detector sha256 {digest['detector']}",
                      f"regressor model regressor sha256 {digest['regressor']}"}
    (uid,) = [str(it.UID) for it in _walk(sr.ContentSequence) if it.ValueType == "UIDREF"
              and str(it.ConceptNameCodeSequence[0].CodeMeaning) == "Device Observer UID"]
    assert uid == DEVICE_UID


def test_overlay_secondary_capture_is_the_png_in_the_source_study(good_run, good_input):
    """Issue 16 item 6: viewers that show no SR get the overlay as a Secondary Capture image."""
    import cv2

    out, _ = good_run
    src = pydicom.dcmread(good_input / "dx.dcm")
    sc = pydicom.dcmread(out / "dx.overlay.sc.dcm")
    assert sc.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7" and sc.Modality == "OT"
    assert (sc.PatientID, sc.StudyInstanceUID) == (src.PatientID, src.StudyInstanceUID)
    assert sc.SeriesInstanceUID not in (src.SeriesInstanceUID, pydicom.dcmread(out / "dx.sr.dcm").SeriesInstanceUID)
    assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID
    png = cv2.cvtColor(cv2.imread(str(out / "dx.overlay.png"), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    assert sc.PhotometricInterpretation == "RGB" and np.array_equal(sc.pixel_array, png)
    assert [float(v) for v in sc.PixelSpacing] == pytest.approx([SPACING_MM[1], SPACING_MM[0]])  # row, column
    assert sc.BurnedInAnnotation == "YES"


BAD_CASES = {
    # name: (files to write, words the one-line message must hold)
    "no_dicom": ("text", ["no DICOM file in input folder", "1 file(s), none of them DICOM"]),
    "ct_series": ("ct", ["no spine radiograph (Modality DX/CR)", "found 1 CT image(s)"]),
    "no_spacing": ("nospacing", ["without a usable pixel spacing", "millimetre measurements need it"]),
}


def _bad_folder(root: Path, kind: str) -> Path:
    d = root / f"in-{kind}"
    d.mkdir()
    if kind == "text":
        (d / "scan.dcm").write_text("this is no DICOM file")
    elif kind == "ct":
        write_dx_dicom(d / "ct.dcm", _radiograph(2), (0.5, 0.5), extra={"Modality": "CT"})
    elif kind == "nospacing":
        write_dx_dicom(d / "dx.dcm", _radiograph(3), None, imager_spacing_mm=None)
    return d


def _check_refused(proc, named: Path, out: Path, words: list[str]) -> None:
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("monai-spine deploy: error: "), proc.stderr[-2000:]
    for w in words + [str(named)]:
        assert w in last, (w, last)
    assert not out.exists()  # no partial output: the folder was never created
    assert not [p for p in out.parent.iterdir() if ".staging-" in p.name]


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_input_is_refused_with_one_line_and_no_output(tmp_path, deploy_python, models_dir, case):
    kind, words = BAD_CASES[case]
    in_dir = _bad_folder(tmp_path, kind)
    out = tmp_path / "out"
    proc = _run_app(deploy_python, in_dir, out, models_dir)
    _check_refused(proc, in_dir, out, words)
    assert len(proc.stderr.strip().splitlines()) == 1  # the pre-flight answers before Holoscan starts


def test_missing_models_are_named(tmp_path, deploy_python, good_input):
    out = tmp_path / "out"
    proc = _run_app(deploy_python, good_input, out, tmp_path)
    _check_refused(proc, tmp_path, out, ["models folder", "has no usable models", "detector/ + model.pt"])


@pytest.mark.slow
def test_in_graph_selection_refuses_too(tmp_path, deploy_python, models_dir):
    """Without the pre-flight the SDK graph's selector raises; the output folder stays absent."""
    kind, words = BAD_CASES["ct_series"]
    in_dir = _bad_folder(tmp_path, kind)
    out = tmp_path / "out"
    proc = _run_app(deploy_python, in_dir, out, models_dir, env={"MONAI_SPINE_DEPLOY_PREFLIGHT": "0"})
    _check_refused(proc, in_dir, out, words)


# ------------------------------------------------------------- in-process tests (main venv, no SDK needed)
def _dcm(d: Path, name: str, *, modality="DX", spacing=(0.2, 0.2), imager=None, series=None, instance=1,
         frames=None, pixels=True) -> Path:
    extra = {"Modality": modality}
    if series is not None:
        extra["SeriesInstanceUID"] = series
    if frames is not None:
        extra["NumberOfFrames"] = frames
    path = write_dx_dicom(d / name, np.zeros((8, 6), np.uint16), spacing, imager_spacing_mm=imager or "same",
                          instance_number=instance, extra=extra, uid_entropy=[str(d), name])
    if not pixels:
        ds = pydicom.dcmread(path)
        del ds.PixelData
        ds.save_as(path)
    return path


SELECT_CASES = {
    # name: (files as (name, kwargs), chosen file or None, words of the refusal)
    "cr_accepted": ([("a.dcm", dict(modality="CR"))], "a.dcm", None),
    "largest_series_then_instance_number": (
        [("a.dcm", dict(series="1.2.3.1")), ("b.dcm", dict(series="1.2.3.2", instance=2)),
         ("c.dcm", dict(series="1.2.3.2", instance=1))], "c.dcm", None),
    "spacing_less_image_skipped": ([("a.dcm", dict(spacing=None, imager=None)), ("b.dcm", {})], "b.dcm", None),
    "imager_spacing_is_enough": ([("a.dcm", dict(spacing=None, imager=(0.15, 0.15)))], "a.dcm", None),
    "multi_frame_refused": ([("a.dcm", dict(frames=2))], None, ["not single-frame 2D", "a.dcm (2 frames)"]),
    "mr_refused": ([("a.dcm", dict(modality="MR")), ("b.dcm", dict(modality="MR"))], None, ["found 2 MR image(s)"]),
    "no_pixel_data": (
        [("a.dcm", dict(pixels=False))], None, ["no DICOM image", "1 DICOM instance(s) without pixel data"]),
}


@pytest.mark.parametrize("case", sorted(SELECT_CASES))
def test_selection_rules(tmp_path, case):
    from monai_spine.apps.deploy.selection import DeployInputError, select_from_folder

    files, chosen, words = SELECT_CASES[case]
    for name, kw in files:
        _dcm(tmp_path, name, **kw)
    if chosen is None:
        with pytest.raises(DeployInputError) as e:
            select_from_folder(tmp_path)
        for w in words + [str(tmp_path)]:
            assert w in str(e.value), (w, str(e.value))
    else:
        sel = select_from_folder(tmp_path)
        assert Path(sel.path).name == chosen
        assert sel.spacing_mm == pytest.approx((0.15, 0.15) if case == "imager_spacing_is_enough" else (0.2, 0.2))
        assert sel.spacing_source == ("ImagerPixelSpacing" if case == "imager_spacing_is_enough" else "PixelSpacing")


def test_selection_of_a_missing_folder(tmp_path):
    from monai_spine.apps.deploy.selection import DeployInputError, select_from_folder

    with pytest.raises(DeployInputError, match="does not exist"):
        select_from_folder(tmp_path / "nope")


@pytest.mark.parametrize("existing", [False, True])
def test_staged_output_commits_all_files_or_nothing(tmp_path, existing):
    from monai_spine.apps.deploy.staging import StagedOutput

    out = tmp_path / "out"
    if existing:
        out.mkdir()
        (out / "old.txt").write_text("kept")
        (out / "a.json").write_text("replaced")
    failed = StagedOutput(out)
    (failed.path / "a.json").write_text("partial")
    failed.discard()
    assert not failed.path.exists()
    assert out.exists() == existing and (not existing or (out / "a.json").read_text() == "replaced")
    ok = StagedOutput(out)
    (ok.path / "a.json").write_text("new")
    (ok.path / "b.png").write_bytes(b"png")
    moved = ok.commit()
    assert sorted(p.name for p in moved) == ["a.json", "b.png"]
    expected = ["a.json", "b.png", "old.txt"] if existing else ["a.json", "b.png"]
    assert sorted(p.name for p in out.iterdir()) == expected
    assert (out / "a.json").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging folder left


def test_deploy_config_and_models_folder(tmp_path, monkeypatch):
    from monai_spine.apps.deploy.models import (
        MODELS_ENV,
        REGRESSOR_DEFAULTS,
        default_models_dir,
        read_deploy_config,
        resolve_models_dir,
    )

    assert read_deploy_config(tmp_path) == REGRESSOR_DEFAULTS
    (tmp_path / "deploy.json").write_text(json.dumps({"regressor": {"width": 0.5, "mc_samples": 3}}))
    cfg = read_deploy_config(tmp_path)
    assert (cfg["width"], cfg["mc_samples"], cfg["fc_features"]) == (0.5, 3, 1024)
    (tmp_path / "deploy.json").write_text(json.dumps({"regressor": {"widht": 0.5}}))
    with pytest.raises(ValueError, match="widht"):
        read_deploy_config(tmp_path)
    monkeypatch.delenv(MODELS_ENV, raising=False)
    monkeypatch.delenv("HOLOSCAN_MODEL_PATH", raising=False)
    monkeypatch.delenv("MONAI_SPINE_MODELS", raising=False)
    assert resolve_models_dir() == default_models_dir() == REPO_ROOT / "bundle" / "models"
    monkeypatch.setenv("HOLOSCAN_MODEL_PATH", "/opt/holoscan/models")
    assert resolve_models_dir() == Path("/opt/holoscan/models")
    monkeypatch.setenv(MODELS_ENV, str(tmp_path))
    assert resolve_models_dir() == tmp_path and resolve_models_dir("x") == Path("x")


def test_missing_app_venv_skips_or_fails_as_ci_asks(tmp_path, monkeypatch, app_python):
    monkeypatch.setitem(app_python.__globals__, "REPO_ROOT", tmp_path)  # no venv there
    monkeypatch.delenv("MONAI_SPINE_REQUIRE_APPS", raising=False)
    with pytest.raises(pytest.skip.Exception, match="scripts/deploy_env.sh"):
        app_python(".venv-deploy")
    monkeypatch.setenv("MONAI_SPINE_REQUIRE_APPS", "1")
    with pytest.raises(pytest.fail.Exception, match="MONAI_SPINE_REQUIRE_APPS=1"):
        app_python(".venv-label")
    with pytest.raises(KeyError, match="venv-other"):
        app_python(".venv-other")
