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
from pathlib import Path

import pytest

from monai_spine.data.synthetic import write_dx_dicom


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
        "dx.keypoints.json", "dx.mrk.json", "dx.overlay.png", "dx.sr.dcm", "measurements.csv", "measurements.json"]
    assert f"wrote {mnt}/dx.sr.dcm" in proc.stdout
