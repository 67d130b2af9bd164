"""The MONAI Label app (monai_spine/apps/label) served by a real ``monailabel start_server``, over HTTP.

One server (module fixture) runs in ``.venv-label`` on a synthetic studies folder (two DICOM DX files,
a PNG with a spacing sidecar, a JPEG) with tiny random models written by the test; the expected
answers come from the same models run in this process (the main venv). The server is stopped by
its process id at the end, whatever happens. Skipped when ``.venv-label`` is missing (failed when
``MONAI_SPINE_REQUIRE_APPS=1``; see tests/apps/conftest.py).

Requests go both as plain HTTP and through MONAI Label 0.8.5's own Python client
(``monailabel.client.MONAILabelClient``, loaded from ``.venv-label``: it sends the full local path as
an upload's file name), and the 3D Slicer module's way of reading a task's config and sending
clicks is reproduced from its source (``plugins/slicer/MONAILabel/MONAILabel.py`` of MONAI Label
0.8.5: ``getParamsFromConfig`` and ``onClickDeepgrow``). The server's temporary folder (``TMPDIR``)
is the test's own, so no temporary file left by a refused request goes unnoticed.

The order of the tests matters only for the last one: training replaces the regressor's weights.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import requests
import torch

from monai_spine.data.annotation import SpineAnnotation, read_annotation, write_annotation
from monai_spine.data.readers import read_xray, write_sidecar
from monai_spine.data.synthetic import generate_radiograph
from monai_spine.data.synthetic_dicom import write_dx_dicom

pytestmark = pytest.mark.slow  # one server start (~15-70 s) and a training subprocess

REPO_ROOT = Path(__file__).resolve().parents[2]
APP_DIR = REPO_ROOT / "monai_spine" / "apps" / "label"

#: tiny models: regressor network and sampling, as passed to the server with --conf
TINY = {"regressor_width": "0.125", "regressor_fc_features": "32", "regressor_spatial_size": "64,128",
        "mc_samples": "3", "margin_mm": "4.0", "max_upload_mb": "1", "epochs": "1", "batch_size": "4"}
IMAGE_HW = (256, 192)
SEEDS = {"a": 11, "b": 12, "c": 13, "d": 14}
START_TIMEOUT_S = 240


# ----------------------------------------------------------------------------------------- fixtures
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _write_models(models: Path) -> None:
    """Random tiny detector (argmax decoding, fixed box size), regressor and heatmap FCN."""
    from monai_spine.inference.detector import DetectorSpec
    from monai_spine.inference.heatmap import HeatmapModelSpec
    from monai_spine.networks.regressor import build_regressor

    torch.manual_seed(0)
    spec = DetectorSpec(region="cervical", spatial_size=(64, 64), features=(4, 4, 8, 8, 16, 4),
                        decode_method="argmax", score_threshold=0.01)
    net = spec.build_network()
    sd = net.state_dict()
    n = len(spec.levels)
    sd["unet.final_conv.weight"][n:] = 0.0  # box distances: 6 % of the letterbox on every side
    sd["unet.final_conv.bias"][n:] = 0.06
    spec.save(models / "detector")
    torch.save(sd, models / "detector" / "model.pt")
    reg = build_regressor("bayecbam", 5, width=0.125, fc_features=32, spatial_size=(64, 128))
    torch.save(reg.state_dict(), models / "model.pt")
    hs = HeatmapModelSpec(out_size=32, grid=(2, 0.1), scales=(2.0,), rotations_deg=(0.0,), network={"width": 2})
    hs.save(models / "heatmap")
    torch.save(hs.build_network().state_dict(), models / "heatmap" / "model.pt")


def _write_studies(studies: Path, truth: Path) -> dict[str, Path]:
    """a.dcm, d.dcm (DICOM DX), b.png (+ spacing sidecar), c.jpg; true annotations into ``truth``."""
    files = {}
    for key, seed in SEEDS.items():
        img, ann = generate_radiograph("cervical", seed, size=IMAGE_HW)
        if key in ("a", "d"):
            path = write_dx_dicom(studies / f"{key}.dcm", img, ann.spacing_mm)
        elif key == "b":
            path = studies / "b.png"
            cv2.imwrite(str(path), (img // 16).astype(np.uint8))
            write_sidecar(path, ann.spacing_mm)
        else:
            path = studies / "c.jpg"
            cv2.imwrite(str(path), (img // 16).astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, 95])
            ann.spacing_mm, ann.spacing_source = None, "unknown"
        ann.image = str(path)
        write_annotation(ann, truth / f"{key}.json")
        files[key] = Path(path)
    return files


class Server:
    def __init__(self, url: str, proc: subprocess.Popen, studies: Path, models: Path, files: dict, truth: Path,
                 log: Path, tmp: Path) -> None:
        self.url, self.proc, self.studies, self.models, self.files, self.truth, self.log, self.tmp = (
            url, proc, studies, models, files, truth, log, tmp)
        self.tmp_at_start: set[str] = set()  # MONAI Label's own start-up files (its logging config)

    def temp_files(self, wait_s: float = 3.0) -> list[str]:
        """Files left in the server's temporary folder since it started (waits ``wait_s`` for a clean-up
        after the response)."""
        deadline = time.monotonic() + wait_s
        while True:
            left = sorted(p.name for p in self.tmp.iterdir() if p.is_file() and p.name not in self.tmp_at_start)
            if not left or time.monotonic() > deadline:
                return left
            time.sleep(0.1)

    def get(self, path: str, **kw) -> requests.Response:
        return requests.get(self.url + path, timeout=kw.pop("timeout", 120), **kw)

    def post(self, path: str, **kw) -> requests.Response:
        return requests.post(self.url + path, timeout=kw.pop("timeout", 120), **kw)

    def put(self, path: str, **kw) -> requests.Response:
        return requests.put(self.url + path, timeout=kw.pop("timeout", 120), **kw)

    def delete(self, path: str, **kw) -> requests.Response:
        return requests.delete(self.url + path, timeout=kw.pop("timeout", 120), **kw)

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"


def _stop(proc: subprocess.Popen) -> None:
    """Stop the server by its process id (and its process group: training/scoring subprocesses)."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=20)


_STALE_WRITER = r"""
import json, sys
from monai_spine.apps.label.lib import compat
compat.install()
from monailabel.datastore.local import LocalDatastore
from monai_spine.apps.label.lib.datastore import SpineDatastore

def run(make, studies, label):
    stale = make(studies)   # e.g. a scoring process: loads the index before the label exists
    server = make(studies)  # the server
    server.save_label("a", label, "final", {})
    stale.update_image_info("b", {"score": 1.0})  # writes its whole index
    fresh = make(studies)
    return {"labelled": fresh.get_labeled_images(), "score": fresh.get_image_info("b").get("score")}

out = {
    "spine": run(lambda d: SpineDatastore(d, 1 << 20, auto_reload=False), sys.argv[1], sys.argv[3]),
    "stock": run(lambda d: LocalDatastore(d, extensions=["*.png"], auto_reload=False), sys.argv[2], sys.argv[3]),
}
print("RESULT " + json.dumps(out))
"""


@pytest.fixture(scope="module")
def stale_writer(app_python, tmp_path_factory):
    """Runs :data:`_STALE_WRITER` in ``.venv-label``, started before the server so both start up together."""
    py = app_python(".venv-label")
    base = tmp_path_factory.mktemp("stale")
    img, ann = generate_radiograph("cervical", 3, size=(128, 96))
    for name in ("spine", "stock"):
        (base / name).mkdir()
        for key in ("a", "b"):
            cv2.imwrite(str(base / name / f"{key}.png"), (img // 16).astype(np.uint8))
    ann.spacing_mm, ann.spacing_source = None, "unknown"
    write_annotation(ann, base / "a.json")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("PYTHONPATH", None)
    proc = subprocess.Popen([str(py), "-c", _STALE_WRITER, str(base / "spine"), str(base / "stock"), str(base / "a.json")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=str(base))
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)


@pytest.fixture(scope="module")
def server(app_python, tmp_path_factory, stale_writer):
    py = app_python(".venv-label")
    monailabel = py.parent / "monailabel"
    base = tmp_path_factory.mktemp("label")
    studies, models, truth, tmp = base / "studies", base / "models", base / "truth", base / "tmp"
    for d in (studies, models, truth, tmp):
        d.mkdir()
    _write_models(models)
    files = _write_studies(studies, truth)
    port = _free_port()
    conf = []
    for k, v in {"models": str(models), **TINY}.items():
        conf += ["--conf", k, v]
    env = {**os.environ, "MONAI_LABEL_AUTO_UPDATE_SCORING": "false", "OMP_NUM_THREADS": "1", "TMPDIR": str(tmp),
           "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "MONAILABEL_PYEXE": str(py),
           "PATH": f"{py.parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("PYTHONPATH", None)
    log = base / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [str(monailabel), "start_server", "--app", str(APP_DIR), "--studies", str(studies),
             "--host", "127.0.0.1", "--port", str(port), *conf],
            cwd=str(base), env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    srv = Server(f"http://127.0.0.1:{port}", proc, studies, models, files, truth, log, tmp)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"the MONAI Label server exited ({proc.returncode}):\n{srv.log_tail()}")
            try:
                if srv.get("/info/", timeout=5).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the MONAI Label server did not answer /info/ in {START_TIMEOUT_S} s:\n{srv.log_tail()}")
            time.sleep(1.0)
        srv.tmp_at_start = {p.name for p in tmp.iterdir()}
        yield srv
    finally:
        _stop(proc)
        assert proc.poll() is not None


# ----------------------------------------------------------------------------------------- references
def _pipeline(models: Path):
    from monai_spine.inference.detector import VertebraDetector
    from monai_spine.inference.pipeline import SpinePipeline
    from monai_spine.inference.regressor import KeypointPredictor

    reg = KeypointPredictor.from_checkpoint(models / "model.pt", variant="bayecbam", region="cervical",
                                            network_kwargs={"width": 0.125, "fc_features": 32},
                                            spatial_size=(64, 128), margin_mm=4.0, num_samples=3)
    return SpinePipeline(VertebraDetector.from_checkpoint(models / "detector"), reg, overlays=False)


def _reference(srv: Server, key: str) -> dict:
    img = read_xray(srv.files[key])
    result, _ = _pipeline(srv.models).predict_image(img.channel_first(), img.spacing_mm, img.spacing_source)
    return result


def _points(result: dict) -> np.ndarray:
    return np.array([[[p["x_px"], p["y_px"]] for p in v["points"]] for v in result["vertebrae"]])


def _infer(srv: Server, model: str, image: str, params: dict | None = None, output: str = "json") -> requests.Response:
    return srv.post(f"/infer/{model}", params={"image": image, "output": output},
                    data={"params": json.dumps(params or {})})


# ----------------------------------------------------------------------------------------- tests
def test_info_lists_the_tasks_and_the_studies(server):
    r = server.get("/info/")
    assert r.status_code == 200
    info = r.json()
    assert info["name"] == "monai-spine"
    assert set(info["models"]) == {"keypoints", "corners"}
    assert info["models"]["keypoints"]["dimension"] == 2
    assert set(info["trainers"]) == {"regressor"}
    assert set(info["strategies"]) == {"most_uncertain"}
    assert set(info["scoring"]) == {"sigma_uncertainty"}
    assert info["datastore"]["total"] == len(SEEDS)
    assert info["monai_spine"]["max_upload_bytes"] == 1024 * 1024


@pytest.mark.parametrize("key", ["a", "b", "c"])  # DICOM, PNG + sidecar, JPEG without spacing
def test_keypoint_inference_equals_the_pipeline_in_process(server, key):
    r = _infer(server, "keypoints", key)
    assert r.status_code == 200, r.text
    res = r.json()
    assert res["format"] == "monai-spine-label-result" and res["task"] == "keypoints" and res["image"] == server.files[key].name
    pred, ref = res["prediction"], _reference(server, key)
    assert pred["format"] == "monai-spine-prediction"
    assert [v["level"] for v in pred["vertebrae"]] == [v["level"] for v in ref["vertebrae"]] == ["C3", "C4", "C5", "C6", "C7"]
    assert pred["spacing_source"] == ref["spacing_source"] == {"a": "PixelSpacing", "b": "sidecar", "c": "unknown"}[key]
    np.testing.assert_allclose(_points(pred), _points(ref), atol=0.05)  # two venvs: OpenCV/numpy builds differ
    s_srv = [p["sigma_p_total_frac"] for v in pred["vertebrae"] for p in v["points"]]
    s_ref = [p["sigma_p_total_frac"] for v in ref["vertebrae"] for p in v["points"]]
    np.testing.assert_allclose(s_srv, s_ref, rtol=1e-3)
    assert [p["uncertainty_class"] for v in pred["vertebrae"] for p in v["points"]] == [
        p["uncertainty_class"] for v in ref["vertebrae"] for p in v["points"]]
    assert res["uncertainty"] == pytest.approx(float(np.mean(s_ref)), rel=1e-3)
    # the 3D Slicer markups: one point list, labels <level>-<point>, sigma_p and class in the description
    (mk,) = res["markups"]["markups"]
    labels = [c["label"] for c in mk["controlPoints"]]
    assert labels == [f"{lev}-{p}" for lev in ["C3", "C4", "C5", "C6", "C7"] for p in ["AS", "PS", "AI", "PI", "SP"]]
    assert all(c["description"].startswith("sigma_p=") for c in mk["controlPoints"])
    assert mk["monaiSpine"]["units"] == ("px" if key == "c" else "mm")


def test_keypoint_inference_output_image_is_the_markups_file(server):
    r = _infer(server, "keypoints", "a", output="image")
    assert r.status_code == 200
    d = json.loads(r.content)
    assert d["markups"][0]["controlPoints"][0]["label"] == "C3-AS"
    assert d["@schema"].endswith("markups-schema-v1.0.3.json#")


def test_interactive_corners_from_clicked_centres(server):
    from monai_spine.inference.heatmap import CornerPredictor

    truth = read_annotation(server.truth / "b.json")
    centres = truth.keypoints_px[:, :4].mean(1)  # centre of the four corners of each vertebra
    r = _infer(server, "corners", "b", {"centres": centres.tolist(), "levels": truth.levels})
    assert r.status_code == 200, r.text
    res = r.json()
    assert res["task"] == "corners" and res["corners"]["format"] == "monai-spine-corners"
    verts = res["corners"]["vertebrae"]
    assert [v["level"] for v in verts] == truth.levels
    got = np.array([[[c["x_px"], c["y_px"]] for c in v["corners"]] for v in verts])
    img = read_xray(server.files["b"])
    ref = CornerPredictor.from_ckpt_dir(server.models / "heatmap").predict(
        img.channel_first(), centres, img.spacing_mm, img.spacing_source, levels=truth.levels)
    # two venvs (OpenCV 4 / 5): the random FCN's near-flat maps may move a quadrant maximum by a pixel
    diff = np.abs(got - ref.corners_px)
    assert diff.max() <= 1.0 and np.mean(diff < 0.05) >= 0.9, diff
    assert [c["name"] for c in verts[0]["corners"]] == ["AS", "PS", "AI", "PI"]
    assert verts[0]["corners"][0]["x_mm"] == pytest.approx(got[0, 0, 0] * img.spacing_mm[0], rel=1e-6)
    labels = [c["label"] for c in res["markups"]["markups"][0]["controlPoints"]]
    assert labels[:5] == ["C3-AS", "C3-PS", "C3-AI", "C3-PI", "C3-SP"]
    statuses = [c["positionStatus"] for c in res["markups"]["markups"][0]["controlPoints"]]
    assert statuses[:5] == ["defined"] * 4 + ["missing"]  # the FCN gives corners, not the spinous process


@pytest.mark.parametrize("params, match", [
    ({}, "click at least 1 vertebra centre"),
    ({"centres": [[10, 10], [20, 20]], "levels": ["C3", "X9"]}, "unknown level 'X9'"),
    ({"centres": [[10, 10]], "first_level": "Q1"}, "unknown level 'Q1'"),
    ({"centres": [[10, 10], [192, 20]]}, "click 2 at (192, 20) px lies outside the 192 x 256 image"),  # x = W
    ({"centres": [[10, -0.6]]}, "outside the 192 x 256 image"),
    ({"foreground": [[1e9, 1e9, 0], [-1e9, 5, 0]]}, "click 1 at (1e+09, 1e+09) px lies outside"),  # stalled 28 s
])
def test_interactive_corners_refuses_bad_clicks_at_once(server, params, match):
    t0 = time.monotonic()
    r = _infer(server, "corners", "a", params)
    assert r.status_code == 400 and match in r.json()["detail"], r.text
    assert time.monotonic() - t0 < 5.0


def test_twenty_concurrent_inference_requests_get_identical_correct_answers(server):
    ref = _reference(server, "d")
    results: list = [None] * 20

    def call(i: int) -> None:
        try:
            results[i] = _infer(server, "keypoints", "d")
        except Exception as e:  # recorded, checked below
            results[i] = e

    threads = [threading.Thread(target=call, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    time.sleep(0.1)
    pending = sum(t.is_alive() for t in threads)
    info_start = time.monotonic()
    info = server.get("/info/")  # inference runs off the event loop: the server answers meanwhile
    info_done = time.monotonic()
    for t in threads:
        t.join(timeout=300)
    all_done = time.monotonic()
    assert info.status_code == 200
    assert all(isinstance(r, requests.Response) and r.status_code == 200 for r in results), results
    # MONAI Label 0.8.5 answered /info/ only once the inferences queued before it were done (ratio ~1)
    assert pending >= 5, f"only {pending} requests pending: the check below would measure nothing"
    assert info_done - info_start < 0.5 * (all_done - info_start), (info_done - info_start, all_done - info_start)
    preds = [r.json()["prediction"] for r in results]
    assert all(p == preds[0] for p in preds)  # bit-identical JSON
    np.testing.assert_allclose(_points(preds[0]), _points(ref), atol=0.05)


def _label_bytes(srv: Server, key: str) -> bytes:
    return (srv.truth / f"{key}.json").read_bytes()


def test_saved_label_reads_back(server):
    r = server.put("/datastore/label", params={"image": "c", "tag": "final"},
                   files={"label": ("c.json", _label_bytes(server, "c"), "application/json")})
    assert r.status_code == 200, r.text
    assert r.json()["label"] == "c"
    back = server.get("/datastore/label", params={"label": "c", "tag": "final"})
    assert back.status_code == 200
    d = back.json()
    assert d["format"] == "monai-spine-keypoints" and d["image"] == "../../c.jpg"
    truth = read_annotation(server.truth / "c.json")
    got = SpineAnnotation.from_dict(d)
    assert got.levels == truth.levels
    np.testing.assert_allclose(got.keypoints_px, truth.keypoints_px)
    assert (server.studies / "labels" / "final" / "c.json").is_file()


def test_a_slicer_markups_label_is_stored_in_the_project_format(server):
    from monai_spine.data.slicer import annotation_to_markups

    truth = read_annotation(server.truth / "d.json")
    mk = json.dumps(annotation_to_markups(truth))
    r = server.put("/datastore/label", params={"image": "d", "tag": "draft"},
                   files={"label": ("d.mrk.json", mk, "application/json")})
    assert r.status_code == 200, r.text
    got = read_annotation(server.studies / "labels" / "draft" / "d.json")
    np.testing.assert_allclose(got.keypoints_px, truth.keypoints_px, atol=1e-6)
    assert got.spacing_mm == pytest.approx(truth.spacing_mm)


@pytest.mark.parametrize("label, match", [
    (b"not json", "not a JSON"),
    (json.dumps({"format": "monai-spine-keypoints", "version": 1, "region": "cervical", "scheme": "lateral5",
                 "vertebrae": [{"level": "C3", "keypoints_px": [[1, 2]] * 4, "visible": [True] * 4}]}).encode(), "4"),
    (json.dumps({"format": "monai-spine-keypoints", "version": 1, "region": "cervical", "scheme": "lateral5",
                 "vertebrae": [{"level": "C3", "keypoints_px": [[5000, 2]] * 5, "visible": [True] * 5}]}).encode(),
     "outside"),
    # what the Slicer module's "Submit Label" sends for a detection task: its ROI nodes only
    (json.dumps({"@schema": "https://raw.githubusercontent.com/slicer/slicer/master/Modules/Loadable/Markups/"
                 "Resources/Schema/markups-schema-v1.0.3.json#", "markups": []}).encode(), "holds no point list"),
    (json.dumps({"markups": [{"type": "ROI", "coordinateSystem": "LPS", "center": [1, 2, 0], "size": [5, 5, 1]}]}).encode(),
     "markups: ['ROI']"),
])
def test_bad_labels_are_refused(server, label, match):
    r = server.put("/datastore/label", params={"image": "a", "tag": "bad"},
                   files={"label": ("a.json", label, "application/json")})
    assert r.status_code == 400 and match in r.json()["detail"], r.text
    assert not (server.studies / "labels" / "bad" / "a.json").exists()
    assert server.temp_files() == []  # the refused upload's temporary copy is gone


def _ap_label(srv: Server) -> bytes:
    """A valid 4-point AP label (scheme ap4) of image a: the wrong scheme for the app's lateral model."""
    truth = read_annotation(srv.truth / "a.json")
    kp = truth.keypoints_px[:, :4]  # AS, PS, AI, PI: inside the image
    return json.dumps({"format": "monai-spine-keypoints", "version": 1, "region": "ap", "scheme": "ap4",
                       "vertebrae": [{"level": lev, "keypoints_px": k.tolist(), "visible": [True] * 4}
                                     for lev, k in zip(["L1", "L2", "L3", "L4", "L5"], kp)]}).encode()


def test_a_label_of_another_scheme_is_refused_at_save_time(server):
    r = server.put("/datastore/label", params={"image": "a", "tag": "final"},
                   files={"label": ("a.json", _ap_label(server), "application/json")})
    assert r.status_code == 400, r.text
    detail = r.json()["detail"]
    assert "'ap4' (4 points per vertebra)" in detail and "'lateral5', 5 points" in detail
    assert not (server.studies / "labels" / "final" / "a.json").exists()
    assert server.temp_files() == []


def _png_bytes(size_hw=(64, 48)) -> bytes:
    ok, buf = cv2.imencode(".png", np.random.default_rng(0).integers(0, 255, size_hw, dtype=np.uint8))
    return buf.tobytes()


@pytest.mark.parametrize("image, filename", [
    ("../evil", "evil.png"),          # an id that climbs out
    (None, "../../evil.png"),         # a file name that climbs out
    ("sub/evil", "evil.png"),         # an id with a folder
    (None, "..\\evil.png"),          # a Windows-style climb
    (None, "C:\\x\\..\\evil.png"),   # a Windows path that climbs
    ("evil", "ev\x01il.png"),        # a control character
])
def test_uploads_that_try_to_leave_the_studies_folder_are_refused(server, image, filename):
    before = sorted(p.name for p in server.studies.parent.rglob("*evil*"))
    params = {"image": image} if image else {}
    r = server.put("/datastore/image", params=params, files={"file": (filename, _png_bytes(), "image/png")})
    assert r.status_code == 400, r.text
    assert sorted(p.name for p in server.studies.parent.rglob("*evil*")) == before == []
    assert server.get("/datastore/").json()["total"] == len(SEEDS)
    assert server.temp_files() == []


def test_uploads_over_the_size_limit_are_refused_and_a_plain_one_is_stored(server):
    big = b"\x89PNG" + os.urandom(1024 * 1024 + 10)
    r = server.put("/datastore/image", params={"image": "big"}, files={"file": ("big.png", big, "image/png")})
    assert r.status_code == 413, r.text
    r = server.put("/datastore/label", params={"image": "a", "tag": "final"},
                   files={"label": ("a.json", b" " * (1024 * 1024 + 10), "application/json")})
    assert r.status_code == 413
    def chunked():  # no Content-Length: the guard counts the bytes as they arrive
        yield b'--bnd\r\nContent-Disposition: form-data; name="file"; filename="big.png"\r\n\r\n\x89PNG'
        for _ in range(24):
            yield os.urandom(64 * 1024)
        yield b"\r\n--bnd--\r\n"

    r = server.put("/datastore/image", params={"image": "big"}, data=chunked(),
                   headers={"Content-Type": "multipart/form-data; boundary=bnd"})
    assert r.status_code == 413, r.text
    assert not list(server.studies.rglob("big*"))
    r = server.put("/datastore/image", params={"image": "fresh"}, files={"file": ("fresh.png", _png_bytes(), "image/png")})
    assert r.status_code == 200, r.text
    assert (server.studies / "fresh.png").read_bytes() == _png_bytes()
    again = server.put("/datastore/image", params={"image": "fresh"}, files={"file": ("x.png", _png_bytes(), "image/png")})
    assert again.status_code == 409
    r = server.put("/datastore/image", params={"image": "notes"}, files={"file": ("notes.txt", b"hello", "text/plain")})
    assert r.status_code == 415
    assert server.get("/datastore/").json()["total"] == len(SEEDS) + 1
    assert server.temp_files() == []  # 409 and 415 deleted their temporary copies


def test_inference_on_a_path_outside_the_studies_is_refused(server, tmp_path):
    outside = tmp_path / "outside.png"
    outside.write_bytes(_png_bytes())
    r = _infer(server, "keypoints", str(outside))
    assert r.status_code == 400 and "refused image" in r.json()["detail"]
    r = _infer(server, "keypoints", "no_such_image")
    assert r.status_code == 404 and "'no_such_image'" in r.json()["detail"]
    # a file of the server's temporary folder named like an upload is not this request's upload
    fake = server.tmp / "tmpfake.png"
    fake.write_bytes(_png_bytes())
    try:
        for image in (str(fake), "tmpfake"):
            r = _infer(server, "keypoints", image)
            assert r.status_code in (400, 404) and "tmpfake" in r.json()["detail"], r.text
    finally:
        fake.unlink()


def test_label_tag_cannot_name_a_folder_outside(server):
    r = server.put("/datastore/label", params={"image": "a", "tag": "../../escape"},
                   files={"label": ("a.json", _label_bytes(server, "a"), "application/json")})
    assert r.status_code == 400
    assert not list(server.studies.parent.rglob("escape*"))


def test_scoring_stores_uncertainty_and_active_learning_serves_the_most_uncertain(server, client):
    r = server.post("/scoring/sigma_uncertainty", params={"run_sync": "true"}, json={})
    assert r.status_code == 200, r.text
    scored = r.json()["scored"]
    unlabelled = {"a", "b", "d", "fresh"}  # c has a final label; d only a draft
    assert set(scored) == unlabelled
    for key in ("a", "b", "d"):  # stored in the datastore and equal to the in-process uncertainty
        from monai_spine.apps.label.lib.models import uncertainty_score

        info = server.get("/datastore/image/info", params={"image": key}).json()
        stored = info["monai_spine_uncertainty"]["mean_sigma_p_total_frac"]
        assert stored == pytest.approx(uncertainty_score(_reference(server, key)), rel=1e-3)
        assert stored == pytest.approx(scored[key])
    info = {k: server.get("/datastore/image/info", params={"image": k}).json()["monai_spine_uncertainty"]
            for k in unlabelled}
    for key in ("a", "b", "d"):  # the view check stored with the score (the fixture: a 2 of 5 levels on the film, b, d 3)
        assert info[key]["in_domain"] is (_on_film(server, key) / 5 >= 0.5)
    # served first: nothing detected or out of the model's view; then by decreasing sigma_p; ties by id
    ranked = sorted(unlabelled, key=lambda k: (-math.inf if scored[k] is None or not info[k]["in_domain"]
                                               else -scored[k], k))
    r = server.post("/activelearning/most_uncertain", json={})
    assert r.status_code == 200, r.text
    assert r.json()["id"] == ranked[0]
    sample = client.next_sample("most_uncertain", {})  # as the Slicer module's "Next Sample" asks
    assert sample["id"] == ranked[0] and Path(sample["path"]).parent == server.studies
    assert Path(sample["path"]).name.startswith(ranked[0] + ".")
    again = server.post("/scoring/sigma_uncertainty", params={"run_sync": "true"}, json={}).json()
    assert again["scored"] == {} and set(again["skipped"]) == unlabelled  # same models: nothing recomputed
    # a film scored as out of the model's view is served first, whatever its (meaningless) sigma_p: a (2 of its
    # 5 levels on the film) before films with a larger sigma_p
    assert info["a"]["in_domain"] is False and ranked[0] == "a"
    assert any(info[k]["in_domain"] and scored[k] is not None and scored[k] > scored["a"] for k in unlabelled), scored
    nxt = server.post("/activelearning/most_uncertain", json={}).json()
    assert nxt["id"] == "a" and nxt["in_domain"] is False and "found 2 of its 5 levels" in nxt["view_reason"]


def test_an_unreadable_image_gives_a_clear_error_and_no_traceback(server):
    r = server.put("/datastore/image", params={"image": "broken"},
                   files={"file": ("broken.png", b"\x89PNG\r\n\x1a\n" + b"\0" * 100, "image/png")})
    assert r.status_code == 200, r.text
    try:
        r = _infer(server, "keypoints", "broken")
        assert r.status_code == 422, r.text
        detail = r.json()["detail"]
        assert "broken.png" in detail and "Traceback" not in detail
    finally:
        assert server.delete("/datastore/image", params={"id": "broken"}).status_code == 200
    assert not (server.studies / "broken.png").exists()


def test_datastore_keeps_a_label_another_process_wrote_meanwhile(stale_writer):
    """A store holding an old copy of the index (MONAI Label's training and scoring processes) must not
    drop a label saved after it loaded the index; MONAI Label's stock local datastore does."""
    stdout, stderr = stale_writer.communicate(timeout=300)
    lines = [ln for ln in stdout.splitlines() if ln.startswith("RESULT ")]
    assert stale_writer.returncode == 0 and lines, stdout[-3000:] + stderr[-3000:]
    out = json.loads(lines[-1][7:])
    assert out["spine"] == {"labelled": ["a"], "score": 1.0}
    assert out["stock"]["labelled"] == [] and out["stock"]["score"] == 1.0  # the race this store closes


# ----------------------------------------------------------------------------------------- MONAI Label's own clients
@pytest.fixture(scope="module")
def client_cls(app_python):
    """``MONAILabelClient`` of MONAI Label 0.8.5, loaded from ``.venv-label`` (standard library + requests only)."""
    py = app_python(".venv-label")
    found = sorted(py.parent.parent.glob("lib/python*/site-packages/monailabel/client/client.py"))
    assert found, f"no monailabel/client/client.py in {py.parent.parent}"
    spec = importlib.util.spec_from_file_location("monailabel_client_085", found[0])
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture()
def client(server, client_cls, tmp_path):
    (tmp_path / "client").mkdir()
    return client_cls.MONAILabelClient(server.url, tmpdir=str(tmp_path / "client"), client_id="annotator-1")


def _client_error(exc) -> str:
    return f"{exc.msg} {exc.status_code}"


def slicer_params_from_config(info: dict, section: str, name: str) -> dict:
    """MONAI Label 0.8.5's Slicer module, ``MONAILabelWidget.getParamsFromConfig``: the task's config with
    each list-valued entry read as its first element (``v[0]``: an empty list raises IndexError)."""
    mapping = {"infer": "models", "train": "trainers", "activelearning": "strategies", "scoring": "scoring"}
    name_config = info.get(mapping.get(section, section), {}).get(name, {}).get("config", {})
    return {k: v[0] if isinstance(v, list) else v for k, v in name_config.items()}


def slicer_deepgrow_params(info: dict, model: str, foreground_ijk: list, segment: str = "spine") -> dict:
    """The parameters ``onClickDeepgrow`` sends for a 2D model (every click so far, in image indices
    ``[i, j, k]``; slice index 0 keeps them all), then the config on top, then what
    ``MONAILabelLogic.infer`` adds."""
    params = {"label": segment, "foreground": foreground_ijk, "background": []}
    params["label"] = segment
    params.update(slicer_params_from_config(info, "infer", model))
    params["slice"] = foreground_ijk[-1][2] if foreground_ijk else None
    params["result_extension"] = ".nrrd"
    params["result_dtype"] = "uint8"
    return params


def test_every_task_config_reads_in_the_slicer_module(server, client):
    info = client.info()
    for section, key in (("infer", "models"), ("train", "trainers"), ("activelearning", "strategies"),
                         ("scoring", "scoring")):
        for name in info[key]:
            params = slicer_params_from_config(info, section, name)  # raised IndexError for corners on main
            assert all(not isinstance(v, list) for v in params.values())
    assert slicer_params_from_config(info, "infer", "corners") == {"first_level": "auto"}
    assert slicer_params_from_config(info, "infer", "keypoints") == {"pipeline": "regressor"}
    # the config is applied after the clicks: it must not hold a key that would replace them
    assert not set(info["models"]["corners"]["config"]) & {"foreground", "background", "label", "slice", "centres"}
    assert info["models"]["corners"]["config"]["first_level"][1:] == ["C3", "C4", "C5", "C6", "C7"]
    assert info["models"]["corners"]["type"] == "deepgrow" and info["models"]["corners"]["dimension"] == 2
    assert "config" not in info  # the module refuses a server whose /info/ has one ("upgrade the server")
    # initSample: one segment per app label, then the first model listing a label runs after "Next Sample"
    assert info["labels"] == ["vertebrae"]
    auto = [name for label in info["labels"] for name, m in info["models"].items() if label in m.get("labels", [])]
    assert auto[:1] == ["keypoints"] and info["models"]["keypoints"]["type"] == "detection"


def _detections(srv: Server, key: str):
    from monai_spine.inference.detector import VertebraDetector

    img = read_xray(srv.files[key])
    return VertebraDetector.from_checkpoint(srv.models / "detector").detect(img.channel_first(), img.spacing_mm,
                                                                             img.spacing_source)


def test_corners_click_by_click_as_the_slicer_module_sends_them(server, client):
    """Auto mode: each new click sends every click so far; the first one alone is answered too. Clicks on
    detected vertebrae take the detected levels (the module cannot send levels)."""
    from monai_spine.inference.heatmap import CornerPredictor

    info = client.info()
    det = _detections(server, "b")
    assert det.levels == ["C3", "C4", "C5", "C6", "C7"]
    img = read_xray(server.files["b"])
    w, h = img.size_wh
    # the random tiny detector puts some centres outside the film: click the three inside (C3, C5, C6 here),
    # whose centres are far apart, so the nearest detection of each click is the clicked one
    picks = [i for i, (x, y) in enumerate(det.centres_px) if 0 <= x <= w - 1 and 0 <= y <= h - 1][:3]
    assert len(picks) == 3, det.centres_px
    clicks = [[int(round(v)) for v in det.centres_px[i]] + [0] for i in picks]
    for n in (1, 2, 3):
        params = slicer_deepgrow_params(info, "corners", clicks[:n])
        result_file, res = client.infer("corners", "b", params)
        assert res["clicks"] == n and res["levels"] == [det.levels[i] for i in picks[:n]], res
        assert res["levels_source"] == "detector"
        assert result_file.endswith(".json")  # the module loads a .json result with slicer.util.loadMarkups
        mk = json.loads(Path(result_file).read_text())
        labels = [c["label"] for c in mk["markups"][0]["controlPoints"]]
        assert labels[:4] == [f"{det.levels[picks[0]]}-{p}" for p in ("AS", "PS", "AI", "PI")]
        got = np.array([[[c["x_px"], c["y_px"]] for c in v["corners"]] for v in res["corners"]["vertebrae"]],
                       dtype=float)  # null (no corner found) -> NaN
        assert got.shape == (n, 4, 2)
        if n == 1:  # the corners found lie near the click: within two detected box sizes
            box = det.boxes_px[picks[0]]
            size = float(np.mean(box[2:] - box[:2]))
            found = np.all(np.isfinite(got[0]), axis=1)
            assert found.any(), res["corners"]
            assert np.all(np.linalg.norm(got[0][found] - np.array(clicks[0][:2]), axis=1) < 2 * size), got
        else:  # two clicks or more: exactly the corner model on these centres and levels
            ref = CornerPredictor.from_ckpt_dir(server.models / "heatmap").predict(
                img.channel_first(), np.array(clicks[:n], float)[:, :2], img.spacing_mm, img.spacing_source,
                levels=res["levels"])
            np.testing.assert_array_equal(np.isfinite(got), np.isfinite(ref.corners_px))
            diff = np.nan_to_num(np.abs(got - ref.corners_px))
            # two venvs (OpenCV 4 / 5): the random FCN's near-flat maps may move a quadrant maximum
            assert np.median(diff) < 0.05 and diff.max() < 0.5 * float(np.mean(ref.sizes_px)), diff


@pytest.mark.parametrize("extra, levels, source", [
    ({"levels": ["C5", "C6"]}, ["C5", "C6"], "given"),
    ({"levels": "C4,C5"}, ["C4", "C5"], "given"),
    ({"first_level": "C4"}, ["C4", "C5"], "first_level"),
])
def test_corner_levels_given_by_the_python_client(server, client, extra, levels, source):
    truth = read_annotation(server.truth / "b.json")
    centres = truth.keypoints_px[1:3, :4].mean(1)  # two clicks, top to bottom
    _, res = client.infer("corners", "b", {"centres": centres.tolist(), **extra})
    assert res["levels"] == levels and res["levels_source"] == source


@pytest.mark.parametrize("folder", ["slicer-monai-label", "C:\\Users\\me\\AppData"])
def test_client_saves_a_label_sent_with_its_full_local_path(server, client, tmp_path, folder):
    """The client sends the file's full path as its name (Slicer: a temporary file; Windows: ``C:\\...``)."""
    local = tmp_path / folder / "tmpab12cd.json"
    local.parent.mkdir(parents=True)
    local.write_bytes(_label_bytes(server, "b"))
    res = client.save_label("b", str(local), tag="client")
    assert res["image"] == "b" and res["label"] == "b"
    got = read_annotation(server.studies / "labels" / "client" / "b.json")
    np.testing.assert_allclose(got.keypoints_px, read_annotation(server.truth / "b.json").keypoints_px)
    path = client.download_label("b", "client")
    assert json.loads(Path(path).read_text())["format"] == "monai-spine-keypoints"
    assert server.temp_files() == []


def test_client_uploads_an_image_infers_on_it_and_removes_it(server, client, tmp_path):
    local = tmp_path / "exports" / "film_07.png"
    local.parent.mkdir()
    img, _ = generate_radiograph("cervical", 21, size=IMAGE_HW)
    cv2.imwrite(str(local), (img // 16).astype(np.uint8))
    assert client.upload_image(str(local), image_id="film_07") == {"image": "film_07"}
    try:
        assert (server.studies / "film_07.png").read_bytes() == local.read_bytes()
        result_file, res = client.infer("keypoints", "film_07", {})
        assert res["image"] == "film_07.png" and len(res["prediction"]["vertebrae"]) == 5
        assert json.loads(Path(result_file).read_text())["markups"][0]["controlPoints"][0]["label"] == "C3-AS"
        # the same film sent with the request (infer with a file): answered as "upload", then deleted
        _, res2 = client.infer("keypoints", "", {}, file=str(local))
        assert res2["image"] == "upload"
        np.testing.assert_allclose(_points(res2["prediction"]), _points(res["prediction"]), atol=1e-6)
    finally:
        assert server.delete("/datastore/image", params={"id": "film_07"}).status_code == 200
    assert server.temp_files() == []


@pytest.mark.parametrize("call, status, needle", [
    (lambda c, p: c.infer("no_such_model", "a", {}), 404, "unknown model 'no_such_model'"),
    (lambda c, p: c.infer("keypoints", "nobody", {}), 404, "'nobody' not found"),
    (lambda c, p: c.next_sample("no_such_strategy", {}), 404, "unknown strategy 'no_such_strategy'"),
    (lambda c, p: c.train_start("no_such_trainer", {}), 404, "unknown trainer 'no_such_trainer'"),
    (lambda c, p: c.save_label("nobody", str(p), tag="final"), 404, "'nobody' not found"),
    (lambda c, p: c.save_label("a", str(p.with_name("wrong.json")), tag="final"), 400, "'ap4'"),
    (lambda c, p: c.upload_image(str(p.with_name("big.png")), image_id="big"), 413, "over the limit"),
    (lambda c, p: c.infer("corners", "", {"centres": [[1e6, 5]]}, file=str(p.with_name("film.png"))), 400,
     "outside the 48 x 64 image"),  # infer with a file: its temporary copy goes too
    (lambda c, p: c.upload_image(str(p.with_name("film.png")), image_id="a"), 409, "exists already"),
])
def test_client_gets_clear_refusals_and_no_temporary_file_is_left(server, client, client_cls, tmp_path, call,
                                                                  status, needle):
    label = tmp_path / "labels" / "tmp_label.json"
    label.parent.mkdir()
    label.write_bytes(_label_bytes(server, "a"))
    (label.with_name("wrong.json")).write_bytes(_ap_label(server))
    (label.with_name("big.png")).write_bytes(b"\x89PNG" + os.urandom(6 * 1024 * 1024))  # 6x the limit: the
    # client sends it all before reading the answer (a connection reset on main)
    (label.with_name("film.png")).write_bytes(_png_bytes())  # 48 x 64 px
    with pytest.raises(client_cls.MONAILabelClientException) as err:
        call(client, label)
    assert f"Status: {status};" in err.value.msg and needle in err.value.msg, _client_error(err.value)
    assert server.temp_files() == []
    assert not (server.studies / "big.png").exists()


@pytest.mark.parametrize("method, path, kw, status, needle", [
    ("post", "/infer/keypoints", {"params": {"image": "a"}, "data": {"params": "{not json"}}, 400, "params: not JSON"),
    ("post", "/infer/keypoints", {"params": {"image": "a"}, "data": {"params": "[1, 2]"}}, 400, "JSON object"),
    ("put", "/datastore/label", {"params": {"image": "a", "tag": "final"}, "data": {"params": "{oops"},
                                 "files": {"label": ("/home/me/a.json", b"{}", "application/json")}}, 400, "not JSON"),
    ("post", "/scoring/no_such_method", {"json": {}}, 404, "unknown scoring method 'no_such_method'"),
    ("delete", "/datastore/image", {"params": {"id": "nobody"}}, 404, "'nobody' not found"),
    ("get", "/datastore/image", {"params": {"image": "nobody"}}, 404, "'nobody' not found"),
])
def test_bad_requests_get_4xx_naming_the_problem(server, method, path, kw, status, needle):
    r = getattr(server, method)(path, **kw)
    assert r.status_code == status and needle in r.json()["detail"], r.text
    assert server.temp_files() == []


def _on_film(srv: Server, key: str) -> int:
    """Detections of the in-process detector whose centre lies on the film."""
    det = _detections(srv, key)
    w, h = read_xray(srv.files[key]).size_wh
    return int(sum(-0.5 <= x <= w - 0.5 and -0.5 <= y <= h - 0.5 for x, y in det.centres_px))


@pytest.mark.parametrize("key", ["b", "c"])
def test_keypoint_results_say_whether_the_film_looks_like_the_models_view(server, key):
    """The random tiny detector puts some of its five levels off the film (b: 3 of 5 on it, c: 2 of 5): a film
    where fewer than half the model's levels are seen does not look like the model's view."""
    res = _infer(server, "keypoints", key).json()
    seen = _on_film(server, key)
    assert seen == {"b": 3, "c": 2}[key]  # the fixture's models: keeps the two cases apart
    view = res["view"]
    assert view["detected"] == seen and view["expected"] == 5 and view["detected_frac"] == pytest.approx(seen / 5)
    assert view["in_domain"] is (seen / 5 >= 0.5)
    if view["in_domain"]:
        assert view["reason"] is None and not any("view" in w for w in res["warnings"])
    else:
        assert "found 2 of its 5 levels" in view["reason"] and view["reason"] in res["warnings"]
    assert any("thresholds.json" in w for w in res["warnings"])  # the tiny models ship no thresholds


def _wait_task(srv: Server, kind: str, timeout_s: float = 300) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        status = srv.get(f"/{kind}/").json()
        if status["status"] in ("DONE", "ERROR", "STOPPED"):
            return status
        assert time.monotonic() < deadline, f"{kind} did not finish: {status}"
        time.sleep(1.0)


def test_training_fine_tunes_and_labels_saved_meanwhile_are_kept(server, client, tmp_path):
    """Training and scoring run in their own processes with their own copy of the datastore index;
    a label saved by the server while both run must survive their index writes."""
    ckpt = server.models / "model.pt"
    before = hashlib.sha256(ckpt.read_bytes()).hexdigest()
    for key in ("a", "b"):  # labels as the Slicer module writes them: temporary files, sent by full path
        (tmp_path / f"tmp_{key}.json").write_bytes(_label_bytes(server, key))
    assert client.save_label("a", str(tmp_path / "tmp_a.json"), tag="final")["label"] == "a"
    started = client.train_start("regressor", {"epochs": 1})  # the module's "Train" (params: the trainer's config)
    assert started.get("status") in ("SUBMITTED", "RUNNING"), started
    assert server.post("/scoring/sigma_uncertainty", json={"force": True}).status_code == 200
    deadline = time.monotonic() + 30
    while not client.train_status(check_if_running=True):
        assert time.monotonic() < deadline, "training never started"
        time.sleep(0.2)
    assert client.save_label("b", str(tmp_path / "tmp_b.json"), tag="final")["label"] == "b"
    still = server.get("/train/", params={"check_if_running": "true"})
    assert still.status_code == 200 and still.json()["status"] == "RUNNING"  # the label was saved during training
    status = _wait_task(server, "train")
    assert status["status"] == "DONE", json.dumps(status, indent=1)
    scoring = _wait_task(server, "scoring")
    assert scoring["status"] == "DONE", json.dumps(scoring, indent=1)
    assert hashlib.sha256(ckpt.read_bytes()).hexdigest() != before
    assert (server.models / "model.previous.pt").is_file()
    stats = server.get("/info/").json()["train_stats"]["regressor"]
    assert stats["epochs"] == 1 and stats["samples"] >= 5 and "a.dcm" in stats["labelled_images"]
    assert stats["skipped"] == []
    assert all(math.isfinite(v) for v in stats["loss"])
    # every label saved, the one sent during training and scoring included, is in the index and on disk,
    # and the scores written by the scoring process are there too
    ds = server.get("/datastore/", params={"output": "all"}).json()
    finals = {k for k, v in ds["objects"].items() if "final" in v["labels"]}
    assert finals == {"a", "b", "c"}
    assert all("monai_spine_uncertainty" in ds["objects"][k]["image"]["info"] for k in ("d", "fresh"))
    stored_b = read_annotation(server.studies / "labels" / "final" / "b.json")
    np.testing.assert_allclose(stored_b.keypoints_px, read_annotation(server.truth / "b.json").keypoints_px)
    # inference now uses the fine-tuned weights
    r = _infer(server, "keypoints", "d")
    np.testing.assert_allclose(_points(r.json()["prediction"]), _points(_reference(server, "d")), atol=0.05)
