"""The README's command list works in the order shown: each command parses, reads only what an
earlier command wrote (or what ships with the repository), and the chain runs on a fresh folder."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

from monai_spine.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]
PROG = ".venv/bin/monai-spine"
#: inputs that do not come from an earlier command: shipped with the repository or the user's own
EXTERNAL = ("bundle/", "../shared/", "studies/", "dicom/")


def readme_commands() -> list[list[str]]:
    """The ``monai-spine`` commands of the README's command-line block, in order (continuations joined)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"## The command line.*?```bash\n(.*?)```", text, re.S)
    assert block, "README has no command-line block"
    joined = block.group(1).replace("\\\n", " ")
    cmds = []
    for line in joined.splitlines():
        line = line.split("  #")[0].strip()
        if line.startswith(PROG):
            cmds.append(shlex.split(line)[1:])
    return cmds


def _outputs(args) -> list[str]:
    outs = [getattr(args, "out", None), getattr(args, "models_dir", None)]
    if args.command == "corners" and args.out:  # --out is a file: its folder holds the output
        outs.append(str(Path(args.out).parent))
    return [str(o) for o in outs if o]


def _inputs(args) -> list[str]:
    cmd = args.command
    if cmd in ("predict", "measure", "convert"):
        return list(args.paths)
    if cmd == "overlay":
        return [args.dataset]
    if cmd == "corners":
        return [args.image] + ([args.ckpt_dir] if args.ckpt_dir else [])
    if cmd in ("report", "calibrate"):
        preds = [p.partition("=")[2] or p for p in args.predictions]
        return preds + list(args.annotations) + list(getattr(args, "thresholds", None) or [])
    return []


def test_readme_commands_parse_and_read_only_what_earlier_ones_wrote():
    cmds = readme_commands()
    assert [c[0] for c in cmds][:4] == ["synth", "synth", "overlay", "demo"]
    assert {"predict", "measure", "report", "calibrate", "corners"} <= {c[0] for c in cmds}
    parser = build_parser()
    written: list[str] = []
    for argv in cmds:
        args = parser.parse_args(argv)
        for path in _inputs(args):
            if path.startswith(EXTERNAL):
                continue
            assert any(path == w or path.startswith(w.rstrip("/") + "/") for w in written), (
                f"README: `monai-spine {' '.join(argv)}` reads {path}, which no earlier command writes")
        written += _outputs(args)


def test_readme_names_the_make_targets_and_version():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    make = (ROOT / "Makefile").read_text(encoding="utf-8")
    for target in ("demo", "test-quick", "test", "test-main"):
        assert f"make {target}" in text and re.search(rf"^{re.escape(target)}:", make, re.M), target
    assert "CPU=1" in text and "TORCH_INDEX_URL" in text and "--version" in text


TINY_PX = 256


def _shrink(argv: list[str], readme_px: int) -> list[str]:
    """The README command on a tiny data set (2 films of :data:`TINY_PX` px, clicked centres scaled)."""
    out = list(argv)
    for opt, value in (("--n", "2"), ("--size", str(TINY_PX))):
        if opt in out:
            out[out.index(opt) + 1] = value
    if "--centres" in out:
        i = out.index("--centres") + 1
        f = TINY_PX / readme_px
        out[i] = ";".join(",".join(f"{float(v) * f:g}" for v in xy.split(",")) for xy in out[i].split(";"))
    return out


class _AnnotationDetector:
    """Stand-in for a trained detector: each film's annotated levels and boxes, found by its pixels
    among the annotations under ``data/`` (the README's synth sets)."""

    def __init__(self, data_dir: Path):
        self.data_dir = data_dir

    def detect(self, image, spacing_mm=None, spacing_source=None):
        import numpy as np

        from monai_spine.data.annotation import read_annotation
        from monai_spine.data.readers import read_xray
        from monai_spine.inference.detector import Detections

        key = np.asarray(image, np.float32).tobytes()
        for lab in sorted(self.data_dir.rglob("case_*.json")):
            ann = read_annotation(lab)
            if read_xray(ann.image).channel_first().astype(np.float32).tobytes() == key:
                boxes = ann.boxes_from_keypoints()
                centres = np.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2], 1)
                return Detections(list(ann.levels), centres, boxes, np.full(len(ann.levels), 0.9), spacing_mm,
                                  spacing_source or "unknown")
        raise AssertionError("film not among the README's synthetic sets")


def _tiny_cervical_zoo(root: Path) -> None:
    """``<root>/cervical/{detector,heatmap}`` with tiny untrained models (the detector is replaced by
    :class:`_AnnotationDetector` in the test; its folder only has to exist)."""
    import numpy as np
    import torch

    from monai_spine.inference.corners import CornerPrior
    from monai_spine.inference.detector import DetectorSpec
    from monai_spine.inference.heatmap import HeatmapModelSpec

    torch.manual_seed(0)
    det = DetectorSpec(region="cervical", spatial_size=(64, 32), features=(4, 4, 8, 8, 16, 4), score_threshold=0.01)
    det.save(root / "cervical" / "detector")
    torch.save(det.build_network().state_dict(), root / "cervical" / "detector" / "model.pt")
    offs = np.array([[-0.5, -0.4], [0.5, -0.4], [-0.5, 0.4], [0.5, 0.4]])
    hm = HeatmapModelSpec(scheme="lateral5", region="cervical", size_ratio=0.7, out_size=32, grid=(1, 0.1),
                          scales=(2.0,), rotations_deg=(0.0,), network={"width": 2},
                          prior=CornerPrior(offs, np.stack([np.eye(2) * 0.01] * 4), count=5))
    hm.save(root / "cervical" / "heatmap")
    torch.save(hm.build_network().state_dict(), root / "cervical" / "heatmap" / "model.pt")


@pytest.mark.slow
def test_readme_commands_run_in_order_on_a_fresh_folder(tmp_path, monkeypatch, capsys):
    """Every README command but the demo (its own test) and convert (needs the real AASCE data), in
    order, in an empty folder, on a tiny data set (2 films of 256 px); ``bundle/models`` there holds
    tiny untrained cervical models and the detector is a stand-in returning the annotated boxes."""
    from monai_spine.inference.detector import VertebraDetector

    _tiny_cervical_zoo(tmp_path / "bundle" / "models")
    monkeypatch.setenv("MONAI_SPINE_MODELS", str(tmp_path / "bundle" / "models"))
    monkeypatch.setattr(VertebraDetector, "from_checkpoint",
                        classmethod(lambda cls, *a, **k: _AnnotationDetector(tmp_path / "data")))
    monkeypatch.chdir(tmp_path)
    ran = []
    cmds = readme_commands()
    readme_px = int(cmds[0][cmds[0].index("--size") + 1])
    for argv in cmds:
        if argv[0] in ("demo", "convert"):
            continue
        code = main(_shrink(argv, readme_px) + (["--no-progress"] if argv[0] == "predict" else []))
        cap = capsys.readouterr()
        # calibrate may find no admissible class with untrained networks (exit 1, said in words)
        assert code == 0 or (argv[0] == "calibrate" and code == 1), (argv, cap.err)
        ran.append(argv[0])
    assert ran == ["synth", "synth", "overlay", "predict", "calibrate", "predict", "measure", "report", "corners",
                   "measure"]
    assert len(list((tmp_path / "data" / "overlays").glob("*.png"))) == 2
    assert (tmp_path / "runs" / "report" / "index.html").is_file()
    assert (tmp_path / "runs" / "calibration" / "thresholds.json").is_file()
    for d in ("measure", "measure-corners"):
        res = json.loads((tmp_path / "runs" / d / "measurements.json").read_text())
        assert res["cases"] and not res["failures"], d
