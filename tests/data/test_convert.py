"""Tests of ``monai-spine convert`` (batch conversion of BUU-LSPINE / CSXA to monai-spine-keypoints)."""

from __future__ import annotations

import argparse
import json
import os

import numpy as np
import pytest
from PIL import Image

from monai_spine.data.annotation import read_annotation
from monai_spine.data.convert import (
    convert_dataset,
    find_convert_inputs,
)
from monai_spine.cli.data import add_convert_arguments, convert_cli, convert_from_args

W, H = 300, 420


def buu_rows(view: str) -> list[list[float]]:
    """Rows x1, y1, x2, y2 of a lordotic lumbar spine facing left (LA: 11 rows, AP: 10 rows)."""
    rows, ya, yp = [], 30.0, 30.0
    for _ in range(5):
        rows.append([100.0, ya, 160.0, yp])
        ya, yp = ya + 40, yp + 40
        rows.append([100.0, ya, 160.0, yp])
        ya, yp = ya + 14, yp + 8
    if view == "LA":
        rows.append([100.0, ya + 24, 160.0, ya])
    return rows


def write_buu(folder, stem, rows, image=True):
    folder.mkdir(parents=True, exist_ok=True)
    p = folder / f"{stem}.csv"
    p.write_text("".join(",".join(f"{v:g}" for v in r) + ",0\n" for r in rows))
    if image:
        Image.new("L", (W, H), 90).save(folder / f"{stem}.jpg")
    return p


def buu_tree(root):
    """root/AP (1 good), root/LA (2 good, 1 with 9 rows), and a report CSV at the root."""
    write_buu(root / "AP", "0001-F-037Y0", buu_rows("AP"))
    write_buu(root / "LA", "0001-F-037Y1", buu_rows("LA"))
    write_buu(root / "LA", "0002-M-050Y1", buu_rows("LA"))
    bad = write_buu(root / "LA", "0003-F-061Y1", buu_rows("LA")[:9])
    (root / "Pixel Spacing.csv").write_text("filename,pixel_spacing\n0001-F-037Y,0.14\n")
    return bad


def csxa_case(folder, stem, pixel_equivalent=None):
    pts = [[90.0, 40.0], [80.0, 70.0], [120.0, 70.0]]
    ya, yp = 78.0, 74.0
    for _ in range(5):
        pts += [[80.0, ya], [120.0, yp], [80.0, ya + 24], [120.0, yp + 24]]
        ya, yp = ya + 32, yp + 28
    d = {"version": "5.2.1", "shapes": [{"label": str(i + 1), "points": [p], "shape_type": "point"}
                                        for i, p in enumerate(pts)],
         "imagePath": f"{stem}.png", "imageHeight": H, "imageWidth": W}
    if pixel_equivalent is not None:
        d["pixel_equivalent"] = pixel_equivalent
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{stem}.json").write_text(json.dumps(d))
    Image.new("L", (W, H), 90).save(folder / f"{stem}.png")
    return folder / f"{stem}.json"


def all_files(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_find_convert_inputs_buu(tmp_path):
    buu_tree(tmp_path / "buu")
    inputs, skipped = find_convert_inputs([tmp_path / "buu"], "buu-lspine")
    assert [(p.name, str(rel)) for p, rel in inputs] == [
        ("0001-F-037Y0.csv", "AP"), ("0001-F-037Y1.csv", "LA"), ("0002-M-050Y1.csv", "LA"), ("0003-F-061Y1.csv", "LA"),
    ]
    assert [os.path.basename(s) for s, _ in skipped] == ["Pixel Spacing.csv"]  # no image beside it
    with pytest.raises(FileNotFoundError):
        find_convert_inputs([tmp_path / "nope"], "buu-lspine")
    with pytest.raises(ValueError, match="unknown format"):
        find_convert_inputs([tmp_path], "dicom")


def test_convert_buu_goes_on_past_a_bad_file(tmp_path, capsys):
    bad = buu_tree(tmp_path / "buu")
    out = tmp_path / "out"
    rc = convert_cli([tmp_path / "buu"], out, fmt="buu-lspine", spacing_table=tmp_path / "buu" / "Pixel Spacing.csv")
    assert rc == 1
    captured = capsys.readouterr()
    assert "convert: 3 converted, 1 failed, 1 skipped" in captured.out
    assert "spacing known for 2, unknown for 1" in captured.out  # patient 0001: AP and LA; 0002 unknown
    assert "failed (1):" in captured.err and str(bad) in captured.err and "9 endplate rows, expected 11" in captured.err
    # mirrored sub-folders, one JSON per good image, nothing (not even a temporary file) for the bad one
    assert all_files(out) == ["AP/0001-F-037Y0.json", "LA/0001-F-037Y1.json", "LA/0002-M-050Y1.json"]
    ann = read_annotation(out / "LA" / "0001-F-037Y1.json")
    assert ann.region == "lumbar" and ann.spacing_mm == (0.14, 0.14) and ann.spacing_source == "sidecar"
    assert os.path.samefile(ann.image, tmp_path / "buu" / "LA" / "0001-F-037Y1.jpg")
    with open(out / "LA" / "0001-F-037Y1.json") as f:
        assert json.load(f)["image"] == "../../buu/LA/0001-F-037Y1.jpg"  # a reference, not a copy
    unknown = read_annotation(out / "LA" / "0002-M-050Y1.json")
    assert unknown.spacing_mm is None and unknown.spacing_source == "unknown"
    assert read_annotation(out / "AP" / "0001-F-037Y0.json").scheme == "ap4"


def test_convert_all_good_returns_zero_and_explicit_spacing(tmp_path, capsys):
    write_buu(tmp_path / "LA", "0001-F-037Y1", buu_rows("LA"))
    rc = convert_cli([tmp_path / "LA" / "0001-F-037Y1.csv"], tmp_path / "out", fmt="buu-lspine", spacing=[0.2])
    assert rc == 0
    assert "1 converted, 0 failed" in capsys.readouterr().out
    ann = read_annotation(tmp_path / "out" / "0001-F-037Y1.json")
    assert ann.spacing_mm == (0.2, 0.2) and ann.meta["spacing_from"] == "given by the user"


def test_nothing_found_is_a_failure(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert convert_cli([tmp_path / "empty"], tmp_path / "out", fmt="csxa") == 1
    assert "no csxa annotation found" in capsys.readouterr().err


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        ({"spacing": 0.0}, ValueError, "positive"),
        ({"spacing": (0.1, 0.2, 0.3)}, ValueError, "one or two"),
        ({"spacing_table": "missing.csv"}, FileNotFoundError, "missing.csv"),
        ({"facing": "up"}, ValueError, "facing"),
        ({"view": "side"}, ValueError, "view"),
    ],
)
def test_option_errors_stop_before_the_run(tmp_path, kwargs, exc, match):
    write_buu(tmp_path / "LA", "0001-F-037Y1", buu_rows("LA"))
    with pytest.raises(exc, match=match):
        convert_dataset([tmp_path / "LA"], tmp_path / "out", fmt="buu-lspine", **kwargs)
    assert not (tmp_path / "out").exists()


def test_failed_write_leaves_no_partial_file(tmp_path, monkeypatch):
    write_buu(tmp_path / "LA", "0001-F-037Y1", buu_rows("LA"))
    write_buu(tmp_path / "LA", "0002-M-050Y1", buu_rows("LA"))
    import pathlib

    real = pathlib.Path.write_text

    def flaky(self, text, *args, **kwargs):  # the first output dies half-way through writing
        if "0001-F-037Y1" in self.name:
            real(self, text[: len(text) // 2], *args, **kwargs)
            raise OSError("disk full")
        return real(self, text, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "write_text", flaky)
    report = convert_dataset([tmp_path / "LA"], tmp_path / "out", fmt="buu-lspine")
    assert [os.path.basename(s) for s, _ in report.failed] == ["0001-F-037Y1.csv"]
    assert "OSError: disk full" in report.failed[0][1]
    assert all_files(tmp_path / "out") == ["0002-M-050Y1.json"]  # no partial or temporary file


def test_no_overwrite_and_overwrite(tmp_path):
    write_buu(tmp_path / "LA", "0001-F-037Y1", buu_rows("LA"))
    out = tmp_path / "out"
    (out).mkdir()
    (out / "0001-F-037Y1.json").write_text("old")
    r = convert_dataset([tmp_path / "LA" / "0001-F-037Y1.csv"], out, fmt="buu-lspine", overwrite=False)
    assert not r.converted and "exists" in r.skipped[0][1] and (out / "0001-F-037Y1.json").read_text() == "old"
    r = convert_dataset([tmp_path / "LA" / "0001-F-037Y1.csv"], out, fmt="buu-lspine")
    assert len(r.converted) == 1 and read_annotation(out / "0001-F-037Y1.json").region == "lumbar"


def test_convert_csxa_and_never_replace_the_input(tmp_path, capsys):
    csxa_case(tmp_path / "csxa", "img_001", pixel_equivalent=0.1)
    csxa_case(tmp_path / "csxa", "img_002")
    (tmp_path / "csxa" / "notes.json").write_text('{"about": "not labelme"}')
    (tmp_path / "csxa" / "broken.json").write_text("{")
    rc = convert_cli([tmp_path / "csxa"], tmp_path / "out", fmt="csxa")
    assert rc == 1
    cap = capsys.readouterr()
    assert "2 converted, 1 failed, 1 skipped" in cap.out and "broken.json: CsxaError" in cap.err
    assert "lateral facing decided by: cues 2" in cap.out
    a = read_annotation(tmp_path / "out" / "img_001.json")
    assert a.region == "cervical" and a.spacing_mm == (0.1, 0.1) and a.meta["facing"] == "left"
    before = (tmp_path / "csxa" / "img_002.json").read_text()
    report = convert_dataset([tmp_path / "csxa" / "img_002.json"], tmp_path / "csxa", fmt="csxa")
    assert "would replace the input" in report.failed[0][1]
    assert (tmp_path / "csxa" / "img_002.json").read_text() == before


def test_same_stem_twice_is_a_failure_not_an_overwrite(tmp_path):
    a = csxa_case(tmp_path / "a", "img")
    b = csxa_case(tmp_path / "b", "img")
    report = convert_dataset([a, b], tmp_path / "out", fmt="csxa")
    assert len(report.converted) == 1 and "already written" in report.failed[0][1]


def test_argparse_wiring(tmp_path, capsys):
    write_buu(tmp_path / "LA", "0001-F-037Y1", buu_rows("LA"))
    parser = argparse.ArgumentParser(prog="monai-spine convert")
    add_convert_arguments(parser)
    parser.set_defaults(func=convert_from_args, command="convert")
    args = parser.parse_args([str(tmp_path / "LA"), "--out", str(tmp_path / "out"), "--format", "buu-lspine",
                              "--spacing", "0.1", "0.12", "--facing", "right", "--no-overwrite"])
    assert (args.fmt, args.spacing, args.facing, args.overwrite) == ("buu-lspine", [0.1, 0.12], "right", False)
    assert args.func(args) == 0
    ann = read_annotation(tmp_path / "out" / "0001-F-037Y1.json")
    assert ann.spacing_mm == (0.1, 0.12) and ann.meta["facing"] == "right"
    np.testing.assert_allclose(ann.keypoints_px[0, 0], [160, 30])  # AS forced to the right corner
    assert "lateral facing decided by: user 1" in capsys.readouterr().out


@pytest.mark.parametrize("seed", [0, 1])
def test_convert_aasce_writes_a_split_dataset_folder(shared_data, tmp_path, capsys, seed):
    from monai_spine.cli.data import add_convert_arguments, convert_from_args
    from monai_spine.data.datasets import list_cases

    args = add_convert_arguments(argparse.ArgumentParser()).parse_args(
        [str(shared_data / "aasce-train"), "--out", str(tmp_path / "ds"), "--format", "aasce", "--split-seed", str(seed)]
    )
    assert convert_from_args(args) == 0
    index = list_cases(tmp_path / "ds")
    assert index["region"] == "ap"
    assert sum(len(index[s]) for s in ("training", "validation", "test")) == 481
    assert "by patient" in capsys.readouterr().out
    first = read_annotation(index["test"][0])
    assert first.spacing_mm is None and os.path.isfile(first.image)


def test_convert_aasce_takes_one_folder(tmp_path):
    from monai_spine.cli.data import add_convert_arguments, convert_from_args

    args = add_convert_arguments(argparse.ArgumentParser()).parse_args(
        ["a", "b", "--out", str(tmp_path), "--format", "aasce"]
    )
    with pytest.raises(ValueError, match="one dataset folder"):
        convert_from_args(args)
