"""The README's command list works in the order shown: each command parses, reads only what an
earlier command wrote (or what ships with the repository), and the chain runs on a fresh folder."""

from __future__ import annotations

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


def _shrink(argv: list[str]) -> list[str]:
    """The README command with a tiny data set (2 films of 256 px) so that the chain runs in seconds."""
    out = list(argv)
    for opt, value in (("--n", "2"), ("--size", "256")):
        if opt in out:
            out[out.index(opt) + 1] = value
    return out


@pytest.mark.slow
def test_readme_commands_run_in_order_on_a_fresh_folder(tmp_path, monkeypatch, capsys):
    """synth, overlay, then (when the cervical models ship) predict, calibrate, measure, report,
    corners, on a tiny data set; the demo has its own test and convert needs the real AASCE data."""
    from monai_spine.inference.model_zoo import find_model

    (tmp_path / "bundle").symlink_to(ROOT / "bundle")
    monkeypatch.chdir(tmp_path)
    have_models = find_model("cervical", "detector") is not None
    ran = []
    for argv in readme_commands():
        if argv[0] in ("demo", "convert"):
            continue
        if argv[0] in ("predict", "calibrate", "report", "corners") and not have_models:
            continue
        if argv[0] == "measure" and not have_models:
            continue
        code = main(_shrink(argv))
        cap = capsys.readouterr()
        # calibrate may find no admissible class on two films (exit 1, said in words)
        assert code == 0 or (argv[0] == "calibrate" and code == 1), (argv, cap.err)
        ran.append(argv[0])
    assert ran[:3] == ["synth", "synth", "overlay"]
    assert len(list((tmp_path / "data" / "overlays").glob("*.png"))) == 2
    if have_models:
        assert (tmp_path / "runs" / "report" / "index.html").is_file()
        assert (tmp_path / "runs" / "measure-corners" / "measurements.csv").is_file()
