"""Tests of monai_spine.data.reboxing: dataset copies with other crop boxes."""

from __future__ import annotations

import numpy as np
import pytest


def test_frame_box_dataset_turns_training_boxes_into_the_spine_frame(tmp_path):
    import json

    from monai_spine.data.reboxing import frame_box_dataset
    from monai_spine.data.annotation import SpineAnnotation, read_annotation, write_annotation
    from monai_spine.data.frames import FrameBoxes

    # a straight spine tilted by 30 degrees: centres 20 px apart along t, 30 x 12 px bodies, plus a T4
    # with one corner missing (no frame: it keeps its own axis-aligned box)
    a = np.radians(30.0)
    e, t = np.array([np.cos(a), np.sin(a)]), np.array([-np.sin(a), np.cos(a)])
    local = np.array([[-15.0, -6.0], [15.0, -6.0], [-15.0, 6.0], [15.0, 6.0]])
    centres = np.array([200.0, 50.0]) + np.arange(4)[:, None] * 20.0 * t
    kp = centres[:, None] + local[..., :1] * e + local[..., 1:] * t
    vis = np.ones((4, 4), bool)
    vis[3, 1] = False
    src = tmp_path / "ds"
    (src / "labels").mkdir(parents=True)
    index = {}
    for split in ("training", "validation", "test"):
        write_annotation(SpineAnnotation(["T1", "T2", "T3", "T4"], kp, vis, "ap", "ap4", image="x.png"),
                         src / "labels" / f"{split}.json")
        index[split] = [{"label": f"labels/{split}.json", "image": "x.png"}]
    (src / "dataset.json").write_text(json.dumps(index))
    out = frame_box_dataset(src, tmp_path / "framed", FrameBoxes(1.5, 0.6))
    new = json.loads((out / "dataset.json").read_text())
    for split in ("training", "validation"):
        ann = read_annotation(out / new[split][0]["label"])
        np.testing.assert_allclose(np.degrees(ann.box_angles_rad), [30.0, 30.0, 30.0, 0.0], atol=1e-9)
        # 1.5 x 20 = 30 wide and 0.6 x 20 = 12 high about each centre: the bodies' own turned box
        np.testing.assert_allclose(ann.boxes_px[:3], np.concatenate([centres[:3] - [15, 6], centres[:3] + [15, 6]], 1),
                                   atol=1e-9)
        np.testing.assert_allclose(ann.boxes_px[3], ann.boxes_from_keypoints()[3])
    test = read_annotation(out / new["test"][0]["label"])
    assert test.box_angles_rad is None and test.boxes_px is None  # test labels untouched


def _dataset(tmp_path, names=("a.json", "b.json", "c.json")):
    import json

    from monai_spine.data.annotation import SpineAnnotation, write_annotation

    src = tmp_path / "ds"
    (src / "labels").mkdir(parents=True)
    kp = np.array([[[10.0, 10.0], [30.0, 10.0], [10.0, 20.0], [30.0, 20.0]]])
    index = {}
    for split, name in zip(("training", "validation", "test"), names):
        write_annotation(SpineAnnotation(["T1"], kp, np.ones((1, 4), bool), "ap", "ap4", image="x.png"),
                         src / "labels" / f"{split}-{name}")
        label = str(src / "labels" / f"{split}-{name}")  # absolute paths; the test split's a bare path
        index[split] = [label if split == "test" else {"label": label}]
    (src / "dataset.json").write_text(json.dumps(index))
    return src


@pytest.mark.parametrize("splits,reboxed", [
    (("training", "validation"), [True, True, False]),
    (("training", "validation", "test"), [True, True, True]),
    ((), [False, False, False]),
])
def test_reboxed_dataset_reboxes_only_the_asked_splits(tmp_path, splits, reboxed):
    import json

    from monai_spine.data.annotation import read_annotation
    from monai_spine.data.datasets import list_cases
    from monai_spine.data.reboxing import reboxed_dataset

    def rebox(ann):
        ann.boxes_px = np.array([[1.0, 2.0, 3.0, 4.0]])
        return ann

    out = reboxed_dataset(_dataset(tmp_path), tmp_path / "out", rebox, splits)
    index = list_cases(out)
    got = [read_annotation(index[s][0]).boxes_px is not None for s in ("training", "validation", "test")]
    assert got == reboxed
    assert json.loads((out / "dataset.json").read_text())["test"] == ["labels/test-c.json"]  # a bare path stays one


def test_reboxed_dataset_refuses_two_labels_of_one_name(tmp_path):
    import json

    from monai_spine.data.reboxing import reboxed_dataset

    src = _dataset(tmp_path)
    index = json.loads((src / "dataset.json").read_text())
    index["test"] = index["training"]
    (src / "dataset.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match="two labels named 'training-a.json'"):
        reboxed_dataset(src, tmp_path / "out", lambda a: a)


def test_outside_ratio_by_hand():
    from monai_spine.data.reboxing import outside_ratio

    # box (0, 0, 20, 10): centre (10, 5), half sizes (10, 5); points at (25, 5) -> 1.5 along x,
    # (10, 15) -> 2.0 along y; a quarter turn swaps the half sizes: (25, 5) -> 15 / 5 = 3.0
    kp = np.array([[[25.0, 5.0], [10.0, 15.0]], [[25.0, 5.0], [np.nan, np.nan]], [[0.0, 0.0], [0.0, 0.0]]])
    vis = np.array([[True, True], [True, False], [False, False]])
    boxes = np.array([[0.0, 0.0, 20.0, 10.0]] * 3)
    np.testing.assert_allclose(outside_ratio(kp, vis, boxes, np.zeros(3)), [2.0, 1.5, np.nan])
    np.testing.assert_allclose(outside_ratio(kp[1:2], vis[1:2], boxes[:1], np.array([np.pi / 2])), [3.0])


def test_frame_box_dataset_leaves_out_vertebrae_their_box_misses(tmp_path):
    import json

    from monai_spine.data.annotation import SpineAnnotation, read_annotation, write_annotation
    from monai_spine.data.datasets import vertebra_items
    from monai_spine.data.frames import FrameBoxes
    from monai_spine.data.reboxing import frame_box_dataset

    # T1-T4 upright, 30 x 12 px bodies 20 px apart, but T4 annotated 4 px below T3 (compressed levels):
    # T4's box is 1.5 x 4 = 6 px wide about its centre, its corners 15 px out: 5 half widths (left out);
    # T3's spacing (20 + 4) / 2 = 12 gives 18 x 7.2 px: its corners at 15 / 9 = 1.67 (kept)
    local = np.array([[-15.0, -6.0], [15.0, -6.0], [-15.0, 6.0], [15.0, 6.0]])
    kp = np.array([100.0, 50.0]) + np.stack([local + [0.0, y] for y in (0.0, 20.0, 40.0, 44.0)])
    src = tmp_path / "ds"
    (src / "labels").mkdir(parents=True)
    write_annotation(SpineAnnotation(["T1", "T2", "T3", "T4"], kp, np.ones((4, 4), bool), "ap", "ap4", image="x.png"),
                     src / "labels" / "a.json")
    (src / "dataset.json").write_text(json.dumps({"training": ["labels/a.json"], "validation": [], "test": []}))
    for max_outside, kept in ((2.0, ["T1", "T2", "T3"]), (None, ["T1", "T2", "T3", "T4"])):
        out = frame_box_dataset(src, tmp_path / f"out{max_outside}", FrameBoxes(1.5, 0.6), max_outside=max_outside)
        label = out / "labels" / "a.json"
        assert [it["level"] for it in vertebra_items([label])] == kept
        assert read_annotation(label).meta.get("frame_boxes_left_out", []) == (["T4"] if max_outside else [])
