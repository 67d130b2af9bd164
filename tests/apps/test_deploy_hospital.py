"""The deploy application on a hospital's real inputs and in its packaged form (issue 16).

* **Mounted output folder**: a MONAI Application Package receives its output folder as a mounted
  volume. A real tmpfs is mounted on the output folder in a private mount namespace
  (``unshare -m``, root only; skipped with the reason where mounting is not allowed) and the
  staging code, then the whole application, must write into it.

The helpers (synthetic radiograph, tiny untrained models, running the app in ``.venv-deploy``) are
those of ``tests/apps/test_deploy.py``.
"""

from __future__ import annotations

import errno
import importlib.util
import os
import shlex
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from monai_spine.data.synthetic_dicom import write_dx_dicom


def _sibling(name: str):
    """A test module of this folder by path (pytest runs with ``--import-mode=importlib``)."""
    spec = importlib.util.spec_from_file_location(f"_monai_spine_{name}", Path(__file__).with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_td = _sibling("test_deploy")
REPO_ROOT, SPACING_MM, TIMEOUT_S = _td.REPO_ROOT, _td.SPACING_MM, _td.TIMEOUT_S
_radiograph, _write_models, _run_app = _td._radiograph, _td._write_models, _td._run_app


# ------------------------------------------------------------------------------------------ mounting
def _mount_refusal(probe_dir: Path) -> str | None:
    """Why a tmpfs cannot be mounted in a private mount namespace here (None when it can)."""
    if os.name != "posix" or os.geteuid() != 0:
        return "mounting a tmpfs needs root (CI runs as root)"
    if shutil.which("unshare") is None or shutil.which("mount") is None:
        return "unshare/mount (util-linux) not installed"
    probe_dir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c",
         f"mount -t tmpfs -o size=1m tmpfs {shlex.quote(str(probe_dir))}"],
        capture_output=True, text=True, timeout=60,
    )
    if proc.returncode != 0:
        return f"mounting a tmpfs is not allowed here: {(proc.stderr or proc.stdout).strip()[:200]}"
    return None


@pytest.fixture(scope="module")
def can_mount(tmp_path_factory) -> None:
    reason = _mount_refusal(tmp_path_factory.mktemp("mount-probe") / "mnt")
    if reason:
        pytest.skip(reason)


def _in_mounted_folder(mount_point: Path, script: str, timeout: int = 120) -> subprocess.CompletedProcess:
    """Run the shell ``script`` in a private mount namespace where a fresh tmpfs is mounted on ``mount_point``.

    The tmpfs disappears with the namespace, so ``script`` copies out what the test must see.
    ``$MNT`` is the mount point inside ``script``.
    """
    mount_point.mkdir(parents=True, exist_ok=True)
    mnt = shlex.quote(str(mount_point))
    wrapped = (
        f"set -e; mount -t tmpfs -o size=64m tmpfs {mnt}; MNT={mnt}; export MNT; "
        f'[ "$(stat -c %d {mnt})" != "$(stat -c %d {mnt}/..)" ] || {{ echo "not a mount point" >&2; exit 97; }}; '
        + script
    )
    return subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", wrapped],
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}, cwd=REPO_ROOT)


_STAGE_AND_COMMIT = """
import sys
import warnings
from pathlib import Path
from monai_spine.apps.deploy.staging import StagedOutput
out = Path(sys.argv[1])
s = StagedOutput(out)
(s.path / "a.json").write_text("new")
(s.path / "sub").mkdir()
(s.path / "sub" / "b.txt").write_text("deep")
print("\\n".join(str(p.relative_to(out)) for p in s.commit()))
"""


def test_staging_commits_into_a_mounted_output_folder(tmp_path, can_mount):
    """The old staging (beside OUT, then os.replace) failed here with EXDEV and wrote nothing."""
    mnt = tmp_path / "out"
    seen = tmp_path / "seen"
    script = (
        "echo kept > $MNT/old.txt; echo replaced > $MNT/a.json; "
        f"{shlex.quote(sys.executable)} -c {shlex.quote(_STAGE_AND_COMMIT)} $MNT; "
        f"cp -r $MNT {shlex.quote(str(seen))}"
    )
    proc = _in_mounted_folder(mnt, script)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["a.json", "sub/b.txt"]
    assert sorted(str(p.relative_to(seen)) for p in seen.rglob("*")) == ["a.json", "old.txt", "sub", "sub/b.txt"]
    assert (seen / "a.json").read_text() == "new" and (seen / "old.txt").read_text() == "kept\n"
    assert (seen / "sub" / "b.txt").read_text() == "deep"
    assert not list(mnt.iterdir())  # nothing leaked onto the folder under the mount
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "seen"]  # no staging folder beside OUT


def test_staging_stages_inside_an_existing_output_folder(tmp_path):
    from monai_spine.apps.deploy.staging import STAGING_PREFIX, StagedOutput

    out = tmp_path / "out"
    out.mkdir()
    s = StagedOutput(out)
    assert s.inside and s.path.parent == out and s.path.name.startswith(STAGING_PREFIX)
    (s.path / "a.json").write_text("x")
    s.discard()
    assert list(out.iterdir()) == [] and list(tmp_path.iterdir()) == [out]
    fresh = StagedOutput(tmp_path / "new")
    assert not fresh.inside and fresh.path.parent == tmp_path and not (tmp_path / "new").exists()
    fresh.discard()


MOVE_CASES = {
    # name: (os.replace raises EXDEV for files?, destination exists before?)
    "rename": (False, False),
    "cross_device_new": (True, False),
    "cross_device_replace": (True, True),
}


@pytest.mark.parametrize("case", sorted(MOVE_CASES))
def test_move_file_copies_when_a_rename_crosses_file_systems(tmp_path, monkeypatch, case):
    from monai_spine.apps.deploy import staging

    cross, existing = MOVE_CASES[case]
    real_replace = os.replace
    calls = []

    def fake_replace(src, dst):
        calls.append((Path(src).name, Path(dst).name))
        if cross and Path(src).parent != Path(dst).parent:  # only a rename inside one folder "works"
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        return real_replace(src, dst)

    monkeypatch.setattr(staging.os, "replace", fake_replace)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    src, dst = tmp_path / "a" / "f.json", tmp_path / "b" / "f.json"
    src.write_text("payload")
    if existing:
        dst.write_text("old")
    assert staging.move_file(src, dst) == dst
    assert dst.read_text() == "payload" and not src.exists()
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["f.json"]  # no .part file left
    assert len(calls) == (2 if cross else 1)


@pytest.mark.slow
def test_app_writes_its_sr_into_a_mounted_output_folder(tmp_path, can_mount, app_python):
    """The whole application with ``-o`` on a tmpfs mount point (exit 1, EXDEV, nothing written on the old code)."""
    py = app_python(".venv-deploy")
    models = _write_models(tmp_path / "models")
    in_dir = tmp_path / "in"
    write_dx_dicom(in_dir / "dx.dcm", _radiograph(0), SPACING_MM, uid_entropy=["deploy-mount", "dx"])
    mnt, seen = tmp_path / "out", tmp_path / "seen"
    cmd = " ".join(shlex.quote(str(a)) for a in [py, "-m", "monai_spine.apps.deploy", "-i", in_dir, "-m", models])
    proc = _in_mounted_folder(mnt, f"{cmd} -o $MNT; cp -r $MNT {shlex.quote(str(seen))}", timeout=TIMEOUT_S)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert sorted(p.name for p in seen.iterdir()) == [
        "dx.keypoints.json", "dx.mrk.json", "dx.overlay.png", "dx.overlay.sc.dcm", "dx.sr.dcm", "measurements.csv",
        "measurements.json"]
    assert f"wrote {mnt}/dx.sr.dcm" in proc.stdout


# ------------------------------------------------------------------- SR validity and its content
TYPE2_TAGS = ["PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
              "ReferringPhysicianName", "StudyID", "AccessionNumber"]
SR_CASES = {
    # name: attributes removed from the source film, attributes set to a given value
    **{f"no_{kw}": ([kw], {}) for kw in TYPE2_TAGS},
    "none_of_them": (TYPE2_TAGS, {}),
    "invalid_values": ([], {"PatientSex": "X", "PatientBirthDate": "1970", "StudyTime": "noon"}),
    # calibrated by PixelSpacing alone, no PatientOrientation: highdicom's image library needed both
    "pixel_spacing_only_no_orientation": (["ImagerPixelSpacing", "PatientOrientation"], {}),
    "complete": ([], {}),
}
# (hand-made) one measurement row with a Monte-Carlo summary: value 10, interval [6, 15] -> +5 / -4
ROW = {"group": "segment", "item": "C3-C4", "measurement": "angle_deg", "unit": "deg",
       "value": 10.0, "mean": 10.5, "std": 2.0, "ci_low": 6.0, "ci_high": 15.0}
MODELS = [{"kind": "detector", "name": "cervical/detector", "sha256": "a" * 64},
          {"kind": "regressor", "name": "cervical/regressor", "sha256": "b" * 64}]
DEVICE_UID = "1.2.826.0.1.3680043.10.1234.16"

_BUILD_SRS = r"""
import json, sys
import cv2
import highdicom as hd
import numpy as np
import pydicom
from monai_spine.apps.deploy.capture import build_overlay_capture
from monai_spine.apps.deploy.sr import build_measurement_report
args = json.loads(sys.argv[1])
pred = {"vertebrae": [{"level": "C3", "inferred": True, "points": [
    {"name": "AS", "x_px": 10.0, "y_px": 20.0, "uncertainty_class": "moderately_uncertain",
     "sigma_p_total_mm": 1.5, "sigma_p_aleatoric_mm": 1.0, "sigma_p_epistemic_mm": 1.1}]}]}
out = {}
for case, (src, dst) in args["cases"].items():
    notes = []
    sr = build_measurement_report(pydicom.dcmread(src), pred, [args["row"]], models=args["models"],
                                  device_uid=args["device_uid"], uncertainty={"num_samples": 500, "ci": 0.95},
                                  notes=notes)
    sr.save_as(dst, enforce_file_format=True)
    film = pydicom.dcmread(src)  # the overlay's Secondary Capture from the same film (a black overlay)
    cv2.imwrite(dst + ".png", np.zeros((int(film.Rows), int(film.Columns), 3), np.uint8))
    build_overlay_capture(film, dst + ".png").save_as(dst + ".sc.dcm", enforce_file_format=True)
    back = hd.sr.srread(dst)  # highdicom reads its own file back
    content = back.content
    out[case] = {"notes": notes, "points": len(content.get_planar_roi_measurement_groups()),
                 "groups": len(content.get_image_measurement_groups()),
                 "patient": {k: str(back.get(k)) for k in args["tags"]}}
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def built_srs(tmp_path_factory, app_python):
    """One SR per case of SR_CASES, built in .venv-deploy from a film lacking the case's attributes."""
    import json

    import pydicom

    py = app_python(".venv-deploy")
    root = tmp_path_factory.mktemp("srs")
    cases = {}
    for case, (removed, values) in SR_CASES.items():
        src = write_dx_dicom(root / f"{case}.dcm", _radiograph(0)[:64, :48], SPACING_MM,
                             uid_entropy=["sr-case", case], extra={"PatientSex": "F", "AccessionNumber": "A1",
                                                                   "StudyID": "S1", "StudyTime": "101500",
                                                                   "PatientBirthDate": "19700101",
                                                                   "ReferringPhysicianName": "DOE^J"})
        ds = pydicom.dcmread(src)
        for kw in removed:
            delattr(ds, kw)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warns about the invalid values it is asked to write
            for kw, v in values.items():
                setattr(ds, kw, v)
            ds.save_as(src)
        cases[case] = (str(src), str(root / f"{case}.sr.dcm"))
    arg = json.dumps({"cases": cases, "row": ROW, "models": MODELS, "device_uid": DEVICE_UID, "tags": TYPE2_TAGS})
    proc = subprocess.run([str(py), "-c", _BUILD_SRS, arg], capture_output=True, text=True, timeout=TIMEOUT_S,
                          env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}, cwd=REPO_ROOT)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return {case: Path(dst) for case, (_, dst) in cases.items()}, json.loads(proc.stdout.strip().splitlines()[-1])


def _dciodvfy() -> str:
    exe = shutil.which("dciodvfy")
    if exe is None:
        msg = "dciodvfy is missing: apt-get install dicom3tools"
        if os.environ.get("MONAI_SPINE_REQUIRE_APPS", "") == "1":
            pytest.fail(f"{msg} (MONAI_SPINE_REQUIRE_APPS=1 requires it)", pytrace=False)
        pytest.skip(msg)
    return exe


def _dsrdump_problems(path: Path, skip: bool = True) -> list[str]:
    """DCMTK's dsrdump error/warning lines for an SR (skip, or [] with ``skip=False``, when DCMTK is missing)."""
    exe = shutil.which("dsrdump")
    if exe is None:
        if not skip:
            return []
        pytest.skip("dsrdump is missing: apt-get install dcmtk")
    proc = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=120)
    lines = (proc.stdout + proc.stderr).splitlines()
    return [ln for ln in lines if ln[:2] in ("E:", "W:", "F:")] + ([f"exit {proc.returncode}"] if proc.returncode else [])


def _dciodvfy_errors(path: Path) -> list[str]:
    proc = subprocess.run([_dciodvfy(), str(path)], capture_output=True, text=True, timeout=120)
    lines = (proc.stdout + proc.stderr).splitlines()
    return [ln for ln in lines if ln.startswith("Error")]


@pytest.mark.parametrize("case", sorted(SR_CASES))
def test_sr_is_valid_whatever_type2_attribute_is_missing(built_srs, case):
    """The old writer raised AttributeError for each missing attribute (and ValueError for PatientSex X)."""
    import pydicom

    files, summary = built_srs
    assert _dciodvfy_errors(files[case]) == []
    assert _dciodvfy_errors(Path(f"{files[case]}.sc.dcm")) == []  # the overlay's Secondary Capture too
    removed, values = SR_CASES[case]
    got = summary[case]
    assert (got["points"], got["groups"]) == (1, 1)  # highdicom read the groups back
    sr = pydicom.dcmread(files[case])
    for kw in TYPE2_TAGS:
        assert kw in sr, kw  # Type 2: present ...
    emptied = (set(removed) & set(TYPE2_TAGS)) | set(values)
    for kw in emptied:
        assert sr[kw].value in (None, ""), kw  # ... and empty when the film had no usable value
        assert any(kw in n for n in got["notes"]), (kw, got["notes"])
    if case == "pixel_spacing_only_no_orientation":
        sc = pydicom.dcmread(f"{files[case]}.sc.dcm")
        assert "PatientOrientation" in sc and sc.PatientOrientation in (None, "")  # unknown, not guessed
    if case in ("complete", "pixel_spacing_only_no_orientation"):
        assert got["notes"] == []
        assert (sr.PatientSex, sr.AccessionNumber, str(sr.ReferringPhysicianName)) == ("F", "A1", "DOE^J")


def _items(items):
    for it in items:
        yield it
        yield from _items(it.get("ContentSequence", []))


def _meaning(item) -> str:
    return str(item.ConceptNameCodeSequence[0].CodeMeaning)


def test_sr_and_capture_of_a_real_cr_header(tmp_path, shared_data, app_python):
    """A real CR header (NEMA WG-04 sample RG3_UNCI, no ImagerPixelSpacing, MONOCHROME1), given a PixelSpacing."""
    import json

    import pydicom

    src = shared_data / "dicom-spacing" / "RG3_UNCI.dcm"
    if not src.is_file():
        pytest.skip(f"{src} is absent")
    ds = pydicom.dcmread(src)
    ds.PixelSpacing = [0.17, 0.17]  # the sample has none; the app refuses films without a spacing
    film = tmp_path / "cr.dcm"
    ds.save_as(film)
    out = tmp_path / "cr.sr.dcm"
    arg = json.dumps({"cases": {"cr": (str(film), str(out))}, "row": ROW, "models": MODELS, "device_uid": DEVICE_UID,
                      "tags": TYPE2_TAGS})
    proc = subprocess.run([str(app_python(".venv-deploy")), "-c", _BUILD_SRS, arg], capture_output=True, text=True,
                          timeout=TIMEOUT_S, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}, cwd=REPO_ROOT)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1])["cr"]["groups"] == 1
    assert _dciodvfy_errors(out) == [] and _dciodvfy_errors(Path(f"{out}.sc.dcm")) == []
    assert _dsrdump_problems(out, skip=False) == []


def test_sr_is_read_by_dcmtk_without_warnings(built_srs):
    """DCMTK checks the SR's relationship constraints (an early version nested NUM CONTAINS NUM)."""
    files, _ = built_srs
    assert _dsrdump_problems(files["complete"]) == []
    assert _dsrdump_problems(files["none_of_them"]) == []


def test_sr_carries_the_measurement_uncertainty(built_srs):
    """TID 310/311 under the measurement: mean, SD, the interval as +5 / -4 deg (hand-computed from ROW)."""
    import pydicom

    files, _ = built_srs
    sr = pydicom.dcmread(files["complete"])
    (num,) = [it for it in _items(sr.ContentSequence)
              if it.ValueType == "NUM" and it.ConceptNameCodeSequence[0].CodeValue == "seg-angle"]
    assert float(num.MeasuredValueSequence[0].NumericValue) == 10.0
    props = {_meaning(c): c for c in num.ContentSequence}
    def value_unit(name):
        mv = props[name].MeasuredValueSequence[0]
        return float(mv.NumericValue), str(mv.MeasurementUnitsCodeSequence[0].CodeValue)
    assert value_unit("Mean") == (10.5, "deg") and value_unit("Standard Deviation") == (2.0, "deg")
    assert value_unit("+, range of upper measurement uncertainty") == (5.0, "deg")
    assert value_unit("-, range of lower measurement uncertainty") == (4.0, "deg")
    assert props["Mean"].RelationshipType == "HAS PROPERTIES"  # NUM CONTAINS NUM is invalid (dsrdump refuses it)
    assert props["+, range of upper measurement uncertainty"].RelationshipType == "HAS PROPERTIES"
    desc = str(props["Population Description"].TextValue)
    assert "500 samples" in desc and "95 % interval [6, 15] deg" in desc
    image = props["Source of Measurement"]
    assert image.RelationshipType == "INFERRED FROM"
    assert image.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == sr.CurrentRequestedProcedureEvidenceSequence[
        0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID


def test_sr_names_the_models_their_weights_and_the_installation(built_srs):
    import pydicom

    files, _ = built_srs
    sr = pydicom.dcmread(files["complete"])
    items = list(_items(sr.ContentSequence))
    texts = {}
    for it in items:
        if it.ValueType in ("TEXT", "UIDREF"):
            texts.setdefault(_meaning(it), []).append(str(it.get("TextValue") or it.get("UID")))
    assert set(texts["Algorithm Parameters"]) == {f"detector model cervical/detector sha256 {'a' * 64}",
                                                 f"regressor model cervical/regressor sha256 {'b' * 64}"}
    assert set(texts["Algorithm Version"]) == {f"monai-spine {sr.SoftwareVersions}; detector {'a' * 12}; "
                                               f"regressor {'b' * 12}"}
    assert texts["Device Observer UID"] == [DEVICE_UID]
    codes = {_meaning(it): str(it.ConceptCodeSequence[0].CodeValue) for it in items if it.ValueType == "CODE"}
    assert codes["Vertebra level source"] == "lvl-inferred"  # the chain detector placed C3 without seeing it
    assert codes["Keypoint uncertainty class"] == "unc-moderate"
    # every code value fits the 16-character Code Value: no Long Code Value for older viewers
    for it in items:
        for attr in ("ConceptNameCodeSequence", "ConceptCodeSequence"):
            for c in it.get(attr, []):
                assert "LongCodeValue" not in c and 0 < len(c.CodeValue) <= 16, c


IDENTITY_CASES = {
    # name: (env value, machine id text or None, expected source)
    "env": (DEVICE_UID, "0123456789abcdef", "$MONAI_SPINE_DEVICE_UID"),
    "machine_id": ("", "0123456789abcdef", "machine-id"),
    "host": ("", None, "host name and MAC address"),
}


@pytest.mark.parametrize("case", sorted(IDENTITY_CASES))
def test_device_observer_uid_is_installation_specific(tmp_path, case):
    """The old SR used generate_uid(entropy=["monai-spine", version]): one UID on every installation."""
    from pydicom.uid import UID

    from monai_spine.apps.deploy.identity import DEVICE_UID_ENV, device_observer_uid

    env_value, machine_id, source = IDENTITY_CASES[case]
    mid = tmp_path / "machine-id"
    if machine_id is not None:
        mid.write_text(machine_id + "\n")
    uid, got_source = device_observer_uid({DEVICE_UID_ENV: env_value}, mid)
    assert got_source.endswith(source) and UID(uid).is_valid and len(uid) <= 64
    again, _ = device_observer_uid({DEVICE_UID_ENV: env_value}, mid)
    assert again == uid  # stable for one installation
    if case == "env":
        assert uid == DEVICE_UID
    if case == "machine_id":
        other = tmp_path / "other-machine-id"
        other.write_text("fedcba9876543210\n")
        assert device_observer_uid({}, other)[0] != uid  # another host, another UID


@pytest.mark.parametrize("bad", ["1.2.03", "abc", "1." + "2" * 70, "1..2"])
def test_device_observer_uid_refuses_a_bad_setting(bad):
    from monai_spine.apps.deploy.identity import DEVICE_UID_ENV, device_observer_uid

    with pytest.raises(ValueError, match=DEVICE_UID_ENV):
        device_observer_uid({DEVICE_UID_ENV: bad})


def test_sha256_file(tmp_path):
    from monai_spine.apps.deploy.identity import sha256_file

    (tmp_path / "w.pt").write_bytes(b"abc")
    assert sha256_file(tmp_path / "w.pt") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


@pytest.mark.slow
def test_app_reports_a_film_without_type2_attributes(tmp_path, app_python):
    """End to end: the old app exited 1 after inference (AttributeError 'PatientBirthDate'), no SR."""
    import pydicom

    py = app_python(".venv-deploy")
    models = _write_models(tmp_path / "models")
    src = write_dx_dicom(tmp_path / "in" / "dx.dcm", _radiograph(0), SPACING_MM, uid_entropy=["deploy-anon", "dx"])
    ds = pydicom.dcmread(src)
    for kw in TYPE2_TAGS:
        if kw in ds:
            delattr(ds, kw)
    ds.save_as(src)
    out = tmp_path / "out"
    proc = _run_app(py, src.parent, out, models, env={"MONAI_SPINE_DEVICE_UID": DEVICE_UID})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "note: source image has no PatientBirthDate: written empty (Type 2)" in proc.stdout
    sr = pydicom.dcmread(out / "dx.sr.dcm")
    assert all(kw in sr and sr[kw].value in (None, "") for kw in TYPE2_TAGS)
    assert _dciodvfy_errors(out / "dx.sr.dcm") == []
    assert _dsrdump_problems(out / "dx.sr.dcm", skip=False) == []
    sc = pydicom.dcmread(out / "dx.overlay.sc.dcm")  # the overlay's Secondary Capture: valid too
    assert all(kw in sc and sc[kw].value in (None, "") for kw in TYPE2_TAGS)
    assert _dciodvfy_errors(out / "dx.overlay.sc.dcm") == []


# ------------------------------------------------------------------------------- model layouts
#: The tiny regressor of the tests as a self-describing model folder (RegressorSpec keyword arguments).
TINY_REGRESSOR = dict(region="cervical", variant="bayecbam", spatial_size=(64, 64), width=0.125, fc_features=16)


def _write_regressor_folder(folder: Path, weights_width: float | None = None, **spec_kw) -> Path:
    """``model.pt`` + ``regressor_model.json``; ``weights_width`` saves weights of another width than the spec's."""
    import torch

    from monai_spine.inference.regressor import RegressorSpec

    torch.manual_seed(0)
    spec = RegressorSpec(**{**TINY_REGRESSOR, **spec_kw})
    spec.save(folder)
    net_spec = spec if weights_width is None else RegressorSpec(**{**TINY_REGRESSOR, **spec_kw, "width": weights_width})
    torch.save(net_spec.build_network().state_dict(), folder / "model.pt")
    return folder


def _write_zoo(root: Path, regions=("cervical",)) -> Path:
    """A model zoo (``<region>/detector``, ``<region>/regressor`` with its spec) of tiny models, and a README."""
    flat = _write_models(root.parent / f"{root.name}-flat")
    root.mkdir(parents=True)
    (root / "README.md").write_text("models")
    for r in regions:
        shutil.copytree(flat / "detector", root / r / "detector")
        _write_regressor_folder(root / r / "regressor")
    return root


LAYOUT_CASES = {
    # name: (models folder to build, package it?, folder given to -m (relative), layout, detector dir, regressor file)
    "zoo": ("zoo", False, ".", "zoo", "cervical/detector", "cervical/regressor/model.pt"),
    "zoo_packaged": ("zoo", True, ".", "zoo", "cervical/detector", "cervical/regressor/model.pt"),
    "region_folder": ("zoo", False, "cervical", "kinds", "cervical/detector", "cervical/regressor/model.pt"),
    "region_folder_packaged": ("zoo/cervical", True, ".", "kinds", "detector", "regressor/model.pt"),
    "legacy": ("flat", False, ".", "legacy", "detector", "model.pt"),
    "legacy_packaged": ("flat", True, ".", "legacy+packaged", "zoo-flat/detector", "zoo-flat/model.pt"),
}


def _layout(tmp_path: Path, case: str) -> Path:
    """The models folder of a LAYOUT_CASES case; packaged ones as /opt/holoscan/models after the packager's copy."""
    from monai_spine.apps.deploy.models import packaged_layout

    src, packaged, given = LAYOUT_CASES[case][:3]
    zoo = _write_zoo(tmp_path / "zoo")
    flat = tmp_path / "zoo-flat"
    folder = {"zoo": zoo, "zoo/cervical": zoo / "cervical", "flat": flat}[src]
    if packaged:
        dest = tmp_path / "opt" / "holoscan" / "models"
        packaged_layout(folder, dest)
        folder = dest
    return folder / given


@pytest.mark.parametrize("case", sorted(LAYOUT_CASES))
def test_models_are_found_in_every_layout(tmp_path, case):
    """The old app looked only for <M>/detector + <M>/model.pt ("has no model.pt" once packaged)."""
    from monai_spine.apps.deploy.models import locate_models

    layout, det, ckpt = LAYOUT_CASES[case][3:]
    root = _layout(tmp_path, case)
    found = locate_models(root)
    assert found.layout == layout
    base = root.parent if case == "region_folder" else root
    assert found.detector_dir == base / det and found.regressor_checkpoint == base / ckpt
    names = [m["name"] for m in found.identities()]
    assert names[0] == (det if case != "region_folder" else "detector")
    assert len({m["sha256"] for m in found.identities()}) == 2


def test_packaged_layout_follows_the_packager_rule(tmp_path):
    """Holoscan packager: a folder holding files is one model (copied whole), each sub-folder another."""
    from monai_spine.apps.deploy.models import packaged_layout

    flat = _write_models(tmp_path / "bundle-models")
    dest = tmp_path / "opt"
    made = packaged_layout(flat, dest)
    assert [p.name for p in made] == ["bundle-models", "detector"]
    files = sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file())
    assert files == ["bundle-models/deploy.json", "bundle-models/detector/detector_model.json",
                     "bundle-models/detector/model.pt", "bundle-models/model.pt",
                     "detector/detector_model.json", "detector/model.pt"]


REGION_CASES = {
    # name: (region argument, preferred region, chosen region or None for a refusal)
    "explicit": ("lumbar", None, "lumbar"),
    "from_header": (None, "lumbar", "lumbar"),
    "explicit_beats_header": ("cervical", "lumbar", "cervical"),
    "ambiguous": (None, None, None),
    "header_names_a_missing_region": (None, "ap", None),
    "region_folder_of_another_region": ("lumbar", None, "kinds-refused"),
}


@pytest.mark.parametrize("case", sorted(REGION_CASES))
def test_region_choice_in_a_zoo_with_two_regions(tmp_path, case):
    from monai_spine.apps.deploy.models import locate_models

    region, prefer, chosen = REGION_CASES[case]
    zoo = _write_zoo(tmp_path / "zoo", regions=("cervical", "lumbar"))
    if chosen == "kinds-refused":  # -m zoo/cervical --region lumbar: the folder's detector is cervical
        with pytest.raises(FileNotFoundError, match="expected lumbar/detector"):
            locate_models(zoo / "cervical", region=region)
        return
    if chosen is None:
        with pytest.raises(FileNotFoundError, match=r"regions \['cervical', 'lumbar'\].*pass --region"):
            locate_models(zoo, region=region, prefer=prefer)
    else:
        found = locate_models(zoo, region=region, prefer=prefer)
        assert (found.region, found.detector_dir) == (chosen, zoo / chosen / "detector")


HEADER_CASES = {
    # name: (BodyPartExamined, ViewPosition, region)
    "cspine_lateral": ("CSPINE", "LL", "cervical"),
    "lspine_lateral": ("LSPINE", "LATERAL", "lumbar"),
    "lspine_ap": ("LSPINE", "AP", "ap"),
    "whole_spine_pa": ("SPINE", "PA", "ap"),
    "chest_lateral": ("CHEST", "LL", None),
    "nothing": ("", "", None),
}


@pytest.mark.parametrize("case", sorted(HEADER_CASES))
def test_region_from_header(case):
    from pydicom.dataset import Dataset

    from monai_spine.apps.deploy.models import region_from_header

    part, view, region = HEADER_CASES[case]
    ds = Dataset()
    ds.BodyPartExamined, ds.ViewPosition = part, view
    assert region_from_header(ds) == region


def test_an_empty_models_folder_is_refused_in_one_line(tmp_path):
    from monai_spine.apps.deploy.models import locate_models

    with pytest.raises(FileNotFoundError) as e:
        locate_models(tmp_path)
    assert "\n" not in str(e.value) and f"models folder {tmp_path} has no usable models" in str(e.value)


@pytest.mark.slow
@pytest.mark.parametrize("case", ["legacy_packaged", "zoo_packaged"])
def test_app_finds_its_models_where_the_package_puts_them(tmp_path, app_python, case):
    """No -m: HOLOSCAN_MODEL_PATH names the packaged models folder, as inside a MAP."""
    py = app_python(".venv-deploy")
    models = _layout(tmp_path, case)
    in_dir = tmp_path / "in"
    write_dx_dicom(in_dir / "dx.dcm", _radiograph(0), SPACING_MM, uid_entropy=["deploy-pkg", "dx"])
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "HOLOSCAN_MODEL_PATH": str(models)}
    env.pop("MONAI_SPINE_DEPLOY_MODELS", None)
    proc = subprocess.run([str(py), "-m", "monai_spine.apps.deploy", "-i", str(in_dir), "-o", str(tmp_path / "out")],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (tmp_path / "out" / "dx.sr.dcm").is_file()


# ----------------------------------------------------------------------------- smaller input checks
def _film(path: Path, *, patient="P1", series=None, number=1, instance=1, size=(64, 48), values=None) -> Path:
    import numpy as np

    img = np.zeros(size, np.uint16) if values == "blank" else _radiograph(0)[: size[0], : size[1]]
    extra = {"SeriesNumber": number}
    if series:
        extra["SeriesInstanceUID"] = series
    return write_dx_dicom(path, img, SPACING_MM, patient_id=patient, extra=extra, instance_number=instance,
                          uid_entropy=[str(path), patient, str(series)])


def _truncate(path: Path, nbytes: int) -> None:
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(size - nbytes)


def test_truncated_pixel_data_is_refused_by_the_preflight(tmp_path):
    """The old pre-flight accepted it; the pipeline then failed after loading the models (exit 1)."""
    from monai_spine.apps.deploy.selection import DeployInputError, select_from_folder

    f = _film(tmp_path / "a.dcm")
    _truncate(f, 1000)  # 64 x 48 x 2 = 6144 bytes of pixel data -> 5144 left
    with pytest.raises(DeployInputError) as e:
        select_from_folder(tmp_path)
    msg = str(e.value)
    assert "1 with unreadable pixel data (a.dcm (truncated pixel data: 5144 of 6144 bytes))" in msg
    assert str(tmp_path) in msg and "\n" not in msg
    good = _film(tmp_path / "b.dcm", series="1.2.3.9")
    sel = select_from_folder(tmp_path)
    assert Path(sel.path) == good
    assert any("1 DX/CR image(s) with unreadable pixel data: a.dcm" in n for n in sel.notes)


def test_several_patients_and_skipped_series_are_named(tmp_path):
    from monai_spine.apps.deploy.selection import select_from_folder

    _film(tmp_path / "a1.dcm", patient="P1", series="1.2.3.1", number=3)
    _film(tmp_path / "a2.dcm", patient="P1", series="1.2.3.1", number=3, instance=2)
    _film(tmp_path / "b.dcm", patient="P2", series="1.2.3.2", number=1)
    sel = select_from_folder(tmp_path)
    assert Path(sel.path).name == "a1.dcm"  # the largest series, first instance
    notes = "\n".join(sel.notes)
    assert "radiographs of 2 patients (P1, P2); processing one of patient P1" in notes
    assert "skipped series 1.2.3.2 (SeriesNumber 1, patient P2, 1 radiograph(s))" in notes


def test_hidden_folders_are_ignored_alike(tmp_path):
    from monai_spine.apps.deploy.selection import is_hidden, list_files

    _film(tmp_path / ".cache" / "a.dcm")
    _film(tmp_path / "sub" / "b.dcm")
    assert [p.relative_to(tmp_path).as_posix() for p in list_files(tmp_path)] == ["sub/b.dcm"]
    assert is_hidden(tmp_path / ".cache" / "a.dcm", tmp_path) and not is_hidden(tmp_path / "sub" / "b.dcm", tmp_path)
    assert is_hidden(tmp_path.parent / "elsewhere.dcm", tmp_path)  # not under the folder at all


@pytest.mark.slow
def test_the_graph_ignores_a_hidden_folder_as_the_preflight_does(tmp_path, app_python):
    """A film only under .hidden/: the old graph (SDK loader) processed it while the pre-flight refused it."""
    py = app_python(".venv-deploy")
    models = _write_models(tmp_path / "models")
    in_dir = tmp_path / "in"
    write_dx_dicom(in_dir / ".hidden" / "dx.dcm", _radiograph(0), SPACING_MM, uid_entropy=["deploy-hidden", "dx"])
    out = tmp_path / "out"
    for preflight in ("1", "0"):
        proc = _run_app(py, in_dir, out, models, env={"MONAI_SPINE_DEPLOY_PREFLIGHT": preflight})
        assert proc.returncode == 2, (preflight, proc.stdout[-2000:], proc.stderr[-2000:])
        assert f"no DICOM file in input folder {in_dir}: it is empty" in proc.stderr.strip().splitlines()[-1]
        assert not out.exists()


THRESHOLD_CASES = {
    # name: (tau1, tau2, units, words of the warning or None)
    "paper": (0.0087, 0.0097, "frac", None),
    "zero_tau1": (0.0, 0.01, "frac", "tau1 = 0: no point can be 'certain'"),
    "tiny_tau2": (0.0, 4.9e-324, "frac", "practically every point is 'highly uncertain'"),
    "huge_tau2_mm": (1.0, 500.0, "mm", "tau2 = 500 mm: practically no point is 'highly uncertain'"),
    "no_moderate_class": (2.0, 2.0 + 1e-9, "mm", "leave no 'moderately uncertain' class"),
    "sane_mm": (1.0, 2.5, "mm", None),
}


@pytest.mark.parametrize("case", sorted(THRESHOLD_CASES))
def test_degenerate_thresholds_are_warned_about(case):
    from monai_spine.apps.deploy.models import threshold_warnings
    from monai_spine.uncertainty.classes import Thresholds

    t1, t2, units, words = THRESHOLD_CASES[case]
    warnings_ = threshold_warnings(Thresholds(t1, t2, units, source="thresholds.json"))
    if words is None:
        assert warnings_ == []
    else:
        assert len(warnings_) == 1 and words in warnings_[0] and "from thresholds.json" in warnings_[0]


BLANK_CASES = {
    # name: (values, vertebrae found, warning expected?)
    "blank_with_detections": ("blank", 5, True),
    "blank_without": ("blank", 0, True),
    "radiograph": (None, 5, False),
}


@pytest.mark.parametrize("case", sorted(BLANK_CASES))
def test_blank_film_warning(tmp_path, case):
    import pydicom

    from monai_spine.apps.deploy.processing import blank_image_warning

    values, n, expected = BLANK_CASES[case]
    ds = pydicom.dcmread(_film(tmp_path / "a.dcm", values=values))
    w = blank_image_warning(ds, n)
    assert (w is not None) == expected
    if expected:
        assert w.startswith("warning: the image is nearly blank (1st-99th percentile span 0 of 4096 stored values)")
        assert ("the 5 vertebra(e) found on it cannot be trusted" in w) == (n == 5)


# ------------------------------------------------------------------ self-describing regressor folder
SPEC_CASES = {
    # name: (deploy.json content or None, spec changes, weights width or None, words of the refusal or None)
    "spec_alone": (None, {}, None, None),
    "runtime_settings_beside_the_spec": ({"mc_samples": 3}, {}, None, None),
    "deploy_json_agrees": ({"spatial_size": [64, 64], "width": 0.125}, {}, None, None),
    "deploy_json_other_crop_size": ({"spatial_size": [96, 96]}, {}, None, "trained on (64, 64) crops, asked for (96, 96)"),
    "deploy_json_other_width": ({"width": 0.25}, {}, None, "trained with other settings than {'width': 0.25}"),
    "weights_of_another_network": (None, {}, 0.25, "the weights do not match the network described by the spec"),
    "regressor_of_another_region": (None, {"region": "lumbar"}, None,
                                    "the regressor was trained for region 'lumbar' but the detector"),
}


@pytest.mark.parametrize("case", sorted(SPEC_CASES))
def test_regressor_folder_describes_itself(tmp_path, case):
    """No hand-written deploy.json needed; a mismatch is refused in one line naming the file.

    The old app read only deploy.json: without it a page-long state-dict error, with a wrong
    spatial_size a normal-looking report.
    """
    import json

    from monai_spine.apps.deploy.models import build_pipeline, locate_models

    deploy, spec_kw, weights_width, words = SPEC_CASES[case]
    zoo = _write_zoo(tmp_path / "zoo")
    reg = zoo / "cervical" / "regressor"
    if spec_kw or weights_width:
        _write_regressor_folder(reg, weights_width=weights_width, **spec_kw)
    if deploy is not None:
        (reg / "deploy.json").write_text(json.dumps({"regressor": deploy}))
    folders = locate_models(zoo)
    if words is None:
        pipe = build_pipeline(folders, overlays=False)
        assert pipe.regressor.spec.spatial_size == (64, 64) and pipe.regressor.spec.width == 0.125
        assert pipe.regressor.num_samples == (3 if case == "runtime_settings_beside_the_spec" else 10)
    else:
        with pytest.raises(ValueError) as e:
            build_pipeline(folders, overlays=False)
        msg = str(e.value)
        assert words in msg and "\n" not in msg and len(msg) < 400, msg
        assert str(reg) in msg


@pytest.mark.slow
def test_app_refuses_weights_that_do_not_fit_their_spec(tmp_path, app_python):
    py = app_python(".venv-deploy")
    zoo = _write_zoo(tmp_path / "zoo")
    _write_regressor_folder(zoo / "cervical" / "regressor", weights_width=0.25)
    in_dir = tmp_path / "in"
    write_dx_dicom(in_dir / "dx.dcm", _radiograph(0), SPACING_MM, uid_entropy=["deploy-spec", "dx"])
    out = tmp_path / "out"
    proc = _run_app(py, in_dir, out, zoo)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"monai-spine deploy: error: models folder {zoo}: ")
    assert "the weights do not match the network described by the spec" in last and len(last) < 600
    assert not out.exists()


def test_identities_record_the_detectors_level_anchor(tmp_path):
    """The SR names every weight file that decided a level: the detector's level anchor too, when it has one."""
    import hashlib

    import torch

    from monai_spine.apps.deploy.models import locate_models
    from monai_spine.codecs.level_groups import level_groups_for
    from monai_spine.inference.level_anchor import LevelAnchorSpec

    root = _layout(tmp_path, sorted(LAYOUT_CASES)[0])
    found = locate_models(root)
    assert [m["kind"] for m in found.identities()] == ["detector", "regressor"]
    spec = LevelAnchorSpec(level_groups_for(["C3", "C4"]), patch_size=16, channels=(4,), strides=(2,))
    spec.save(found.detector_dir)
    torch.save(spec.build_network().state_dict(), found.detector_dir / spec.checkpoint_file)
    ids = found.identities()
    assert [m["kind"] for m in ids] == ["detector", "regressor", "level_anchor"]
    assert ids[2]["sha256"] == hashlib.sha256((found.detector_dir / "level_anchor.pt").read_bytes()).hexdigest()
