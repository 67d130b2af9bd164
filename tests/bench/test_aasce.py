"""Tests of the AASCE benchmark's pieces (monai_spine/bench/aasce.py); the full run is a script."""

from __future__ import annotations

import math

import numpy as np
import pytest

from monai_spine.bench.aasce import (
    AasceBenchSettings,
    PointSet,
    format_aasce_table,
    points_metrics,
    sdr,
    vertebra_heights_px,
)

# one vertebra: TL (0,0), TR (10,0), BL (0,6), BR (10,8) -> left edge 6, right edge 8, height 7
BOX = np.array([[[0.0, 0.0], [10.0, 0.0], [0.0, 6.0], [10.0, 8.0]]])


def test_vertebra_height_is_the_mean_of_its_sides():
    np.testing.assert_allclose(vertebra_heights_px(BOX), [7.0])
    with pytest.raises(ValueError, match=r"\(V, 4, 2\)"):
        vertebra_heights_px(np.zeros((2, 5, 2)))


@pytest.mark.parametrize(
    "errors, heights, fraction, expected",
    [
        ([1.0, 5.0, 20.0], [100.0, 100.0, 1000.0], 0.02, 1 / 3),  # thresholds 2, 2, 20 px: only 1 < 2
        ([0.5, 3.0], [100.0, 100.0], 0.05, 1.0),
        ([10.0], [100.0], 0.01, 0.0),
    ],
)
def test_sdr_counts_points_below_a_share_of_the_image_height(errors, heights, fraction, expected):
    assert sdr(errors, heights, fraction) == pytest.approx(expected)


def test_point_set_and_row_by_hand():
    ps = PointSet("m")
    pred = BOX + np.array([[[3.0, 4.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.7]]])  # errors 5, 0, 0, 0.7
    ps.add_image(0, pred, np.array([[2.0, 0.1, 0.2, 0.5]]), BOX, np.array([[True, True, True, False]]), 100.0)
    ps.found, ps.annotated, ps.seen_found, ps.images, ps.images_all_found = 1, 2, 1, 1, 0
    ps.cobb_pred_deg.append([10.0, 5.0, 5.0])
    ps.cobb_ref_deg.append([10.0, 0.0, 10.0])
    row = points_metrics(ps)
    assert row["count"] == 3  # the invisible corner is not scored
    assert row["mean_px"] == pytest.approx(5 / 3)
    assert row["median_px"] == pytest.approx(0.0)
    assert row["mean_pct_height"] == pytest.approx(100 * (5 / 3) / 7)
    assert row["recall"] == pytest.approx(0.5)
    assert row["sdr_1pct"] == pytest.approx(2 / 3)  # 1 px threshold: 0, 0 below, 5 not
    assert row["sdr_5pct"] == pytest.approx(2 / 3)  # 5 px threshold: 5 is not below 5
    # SMAPE of one image: (0 + 5 + 5) / (20 + 5 + 15) = 0.25
    assert row["smape"] == pytest.approx(25.0)
    # ranks: errors (3, 1.5, 1.5), sigma (3, 1, 2) -> Pearson of the ranks = sqrt(3) / 2
    assert row["spearman"] == pytest.approx(math.sqrt(3) / 2)
    # scored errors (5, 0, 0): 95th percentile by linear interpolation 0 + 0.9 * 5 = 4.5, max 5
    assert row["p95_px"] == pytest.approx(4.5) and row["max_px"] == pytest.approx(5.0)
    assert row["seen_recall"] == pytest.approx(0.5) and row["images_all_found"] == 0
    table = format_aasce_table([row])
    assert "| m | 50.0 % (1/2) | 50.0 % | 0.0 % (0/1) | 1.7 | 0.0 | 4.5 | 5.0 |" in table
    assert "25.0 % (1 images)" in table


def test_add_image_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="differ"):
        PointSet("m").add_image(0, BOX, np.zeros((1, 4)), np.zeros((2, 4, 2)), np.ones((1, 4), bool), 10.0)


@pytest.mark.parametrize(
    "kw, match",
    [({"epochs_detector": 0}, "epochs_detector"), ({"alpha": 1.0}, "alpha"), ({"models": ("heatmap",)}, "detector")],
)
def test_settings_validate(kw, match):
    with pytest.raises(ValueError, match=match):
        AasceBenchSettings(**kw)


def test_unfinite_rows_print_dashes():
    row = points_metrics(PointSet("empty"))
    assert math.isnan(row["mean_px"]) and math.isnan(row["smape"])
    assert "| empty | — (0/0) | — |" in format_aasce_table([row])



def test_mean_shape_reference_puts_the_mean_layout_back(tmp_path):
    """Fitted on two films that are the same spine at two scales, the reference reproduces their corners."""
    from monai_spine.data.annotation import SpineAnnotation, write_annotation
    from monai_spine.data.keypoints import get_region
    from monai_spine.bench.aasce import MeanShapeReference

    levels = list(get_region("ap").levels)
    c = np.stack([200 + 10 * np.sin(np.arange(17) / 4), 50 + 40 * np.arange(17)], -1).astype(float)
    half = np.array([[-15.0, -12.0], [15.0, -12.0], [-15.0, 12.0], [15.0, 12.0]])  # TL, TR, BL, BR
    labels = []
    for k, f in enumerate((1.0, 2.0)):
        kp = (c[:, None] + half[None]) * f
        ann = SpineAnnotation(levels=levels, keypoints_px=kp, visible=np.ones((17, 4), bool), region="ap",
                              scheme="ap4", image="x.png", image_size=(800, 1600))
        p = tmp_path / f"a{k}.json"
        write_annotation(ann, p)
        labels.append(str(p))
    ref = MeanShapeReference.fit(labels)
    np.testing.assert_allclose(ref.predict(c * 3, levels), (c[:, None] + half[None]) * 3, atol=1e-9)
    with pytest.raises(ValueError, match="offsets"):
        MeanShapeReference(np.zeros((3, 4, 2)), levels)


class _StubDetector:
    """Detects T1 inside its box (kept), T2 far away (left out), and not T3 (left out)."""

    def detect(self, image, spacing_mm=None, spacing_source=None):
        from monai_spine.inference.detector import Detections

        centres = np.array([[50.0, 30.0], [400.0, 400.0]])
        boxes = np.array([[30.0, 15.0, 70.0, 45.0], [380.0, 380.0, 420.0, 420.0]])
        return Detections(["T1", "T2"], centres, boxes, np.ones(2), spacing_mm, spacing_source or "unknown")


def test_detector_box_dataset_keeps_vertebrae_the_detector_frames(tmp_path):
    import json

    import cv2

    from monai_spine.bench.aasce import detector_box_dataset
    from monai_spine.data.annotation import SpineAnnotation, read_annotation, write_annotation

    src = tmp_path / "ds"
    (src / "labels").mkdir(parents=True)
    cv2.imwrite(str(tmp_path / "film.png"), np.full((500, 500), 100, np.uint8))
    half = np.array([[-20.0, -10.0], [20.0, -10.0], [-20.0, 10.0], [20.0, 10.0]])
    kp = np.stack([np.array([50.0, 30.0 + 40 * i]) + half for i in range(3)])
    index = {}
    for split in ("training", "validation", "test"):
        ann = SpineAnnotation(levels=["T1", "T2", "T3"], keypoints_px=kp, visible=np.ones((3, 4), bool), region="ap",
                              scheme="ap4", image=str(tmp_path / "film.png"), image_size=(500, 500))
        write_annotation(ann, src / "labels" / f"{split}.json")
        index[split] = [{"label": f"labels/{split}.json", "image": str(tmp_path / "film.png")}]
    (src / "dataset.json").write_text(json.dumps(index))
    out = detector_box_dataset(src, tmp_path / "boxed", _StubDetector(), log=lambda m: None)
    new = json.loads((out / "dataset.json").read_text())
    for split in ("training", "validation"):
        ann = read_annotation(out / new[split][0]["label"])
        assert ann.levels == ["T1"]  # T2 detected elsewhere, T3 not detected: left out
        np.testing.assert_allclose(ann.boxes_px, [[30.0, 15.0, 70.0, 45.0]])
        np.testing.assert_allclose(ann.keypoints_px, kp[:1])
    assert read_annotation(out / new["test"][0]["label"]).levels == ["T1", "T2", "T3"]  # test untouched


def test_spacing_boxes_by_hand():
    from monai_spine.bench.aasce import SpacingBoxes

    # gaps 10 and 20: local distances 10 (one-sided), 15, 20 (one-sided)
    c = np.array([[0.0, 0.0], [0.0, 10.0], [0.0, 30.0]])
    np.testing.assert_allclose(SpacingBoxes.local_distance_px(c), [10.0, 15.0, 20.0])
    np.testing.assert_allclose(SpacingBoxes(2.0, 0.5).boxes(c)[0], [-10.0, -2.5, 10.0, 2.5])
    np.testing.assert_allclose(SpacingBoxes(2.0, 0.5).boxes(c)[2], [-20.0, 25.0, 20.0, 35.0])


def test_spacing_boxes_fit_recovers_the_ratio(tmp_path):
    from monai_spine.bench.aasce import SpacingBoxes
    from monai_spine.data.annotation import SpineAnnotation, write_annotation

    half = np.array([[-15.0, -6.0], [15.0, -6.0], [-15.0, 6.0], [15.0, 6.0]])  # 30 x 12 px bodies
    kp = np.stack([np.array([100.0, 50.0 + 20 * i]) + half for i in range(5)])  # centres 20 px apart
    ann = SpineAnnotation(levels=["T1", "T2", "T3", "T4", "T5"], keypoints_px=kp, visible=np.ones((5, 4), bool),
                          region="ap", scheme="ap4", image="x.png", image_size=(300, 300))
    write_annotation(ann, tmp_path / "a.json")
    rule = SpacingBoxes.fit([str(tmp_path / "a.json")])
    assert rule.width_frac == pytest.approx(1.5) and rule.height_frac == pytest.approx(0.6)



def test_label_order_counts_reads_the_fix_and_the_disorder(tmp_path):
    from monai_spine.bench.aasce import label_order_counts
    from monai_spine.data.annotation import SpineAnnotation, write_annotation
    from monai_spine.data.keypoints import get_region

    region = get_region("ap")
    box = np.array([[-4.0, -3.0], [4.0, -3.0], [-4.0, 3.0], [4.0, 3.0]])
    column = np.c_[np.full(17, 50.0), 20.0 + 10.0 * np.arange(17)][:, None, :] + box[None]
    paths = []
    for name, kp, fix in (("clean", column, None), ("fixed", column, "rotated: ..."),
                          ("noisy", np.concatenate([column[:16], column[15:16]]), None)):  # L5 on L4
        ann = SpineAnnotation(levels=list(region.levels), keypoints_px=kp, visible=np.ones((17, 4), bool),
                              region="ap", scheme=region.scheme.name, image=str(tmp_path / f"{name}.png"),
                              image_size=(100, 220), spacing_mm=None, spacing_source="unknown",
                              meta={"label_fix": fix})
        write_annotation(ann, tmp_path / f"{name}.json")
        paths.append(str(tmp_path / f"{name}.json"))
    assert label_order_counts(paths) == {"films": 3, "put back in level order": 1, "out of level order": 1}
    assert label_order_counts([]) == {"films": 0, "put back in level order": 0, "out of level order": 0}


def test_points_metrics_gives_the_smape_without_rotated_references():
    ps = PointSet("heatmap (detected centres)")
    # three images; the second one's reference came from a rotated list and is far off
    ps.cobb_pred_deg = [[10.0, 20.0, 30.0], [10.0, 10.0, 10.0], [20.0, 20.0, 20.0]]
    ps.cobb_ref_deg = [[10.0, 20.0, 30.0], [30.0, 30.0, 30.0], [20.0, 20.0, 40.0]]
    ps.cobb_ref_rotated = [False, True, False]
    row = points_metrics(ps)
    # per image sum|p - r| / sum(p + r): 0, 60 / 120 = 0.5, 20 / 140; all three: 100 / 3 * (0.5 + 1/7)
    assert row["smape"] == pytest.approx(100 / 3 * (0.5 + 1 / 7))
    assert row["smape_unrotated_refs"] == pytest.approx(100 / 2 * (1 / 7)) and row["cobb_images_unrotated_refs"] == 2
    ps.cobb_ref_rotated = []  # not recorded: no figure
    assert math.isnan(points_metrics(ps)["smape_unrotated_refs"])


def test_vertebra_width_is_the_mean_of_its_end_plates():
    from monai_spine.bench.aasce import vertebra_widths_px

    # top edge (0,0)-(10,0): 10; bottom (0,6)-(10,8): sqrt(104)
    np.testing.assert_allclose(vertebra_widths_px(BOX), [(10.0 + math.sqrt(104.0)) / 2])
    with pytest.raises(ValueError, match=r"\(V, 4, 2\)"):
        vertebra_widths_px(np.zeros((4, 2)))


def test_batch_metrics_by_hand():
    from monai_spine.bench.aasce import batch_metrics, format_batch_table

    ps = PointSet("m")
    rect = np.array([[[0.0, 0.0], [10.0, 0.0], [0.0, 6.0], [10.0, 6.0]]])  # 10 x 6 px
    wide = rect * np.array([1.2, 1.0])  # 20 % wider, same height: corners TR and BR move 2 px
    ps.add_image(0, wide, np.zeros((1, 4)), rect, np.ones((1, 4), bool), 100.0, batch="2016-07")
    tall = rect * np.array([1.0, 0.5])  # half as tall: BL and BR 3 px off
    ps.add_image(1, tall, np.zeros((1, 4)), rect, np.array([[True, True, True, False]]), 100.0, batch="2017-01")
    m = batch_metrics(ps)
    assert list(m) == ["2016-07", "2017-01"]
    a, b = m["2016-07"], m["2017-01"]
    assert a["corners"] == 4 and a["median_px"] == pytest.approx(1.0) and a["mean_px"] == pytest.approx(1.0)
    assert a["width_ratio"] == pytest.approx(1.2) and a["height_ratio"] == pytest.approx(1.0)
    # one corner not annotated: scored corners 0, 0, 3; no size (a vertebra's size needs its four corners)
    assert b["corners"] == 3 and b["median_px"] == pytest.approx(0.0) and b["vertebrae"] == 0
    assert math.isnan(b["width_ratio"])
    table = format_batch_table({"2016-07": {"films": 2, "width_per_step": 1.4, "width_per_step_sd": 0.1,
                                            "height_per_step": 0.8, "height_per_step_sd": 0.05}}, {"m": m})
    assert "| 2016-07 | 2 | 1.400 ± 0.100 | 0.800 ± 0.050 | 1.0 (4) | 1.200, 1.000 | 0.0 |" in table
    assert "| 2017-01 |  |  |  | 0.0 (3) | —, — | — |" in table
    ps.point_batches.pop()  # a batch per corner or none
    with pytest.raises(ValueError, match="7 errors with 6 batches"):
        batch_metrics(ps)
    with pytest.raises(ValueError, match="no annotation batch"):
        format_batch_table({}, {})


def test_annotation_proportions_by_hand(tmp_path):
    from monai_spine.bench.aasce import annotation_proportions
    from monai_spine.data.annotation import SpineAnnotation, write_annotation
    from monai_spine.data.keypoints import get_region

    region = get_region("ap")
    paths = []
    # centres 10 px apart; batch 2016-07 draws 14 x 8 px bodies, 2017-01 12 x 7 px; one 2017 film out of order
    for name, (w, h), noisy in (("20-Jul-2016-1 A AP", (14.0, 8.0), False), ("21-Jul-2016-2 A AP", (14.0, 8.0), False),
                                ("10-Jan-2017-3 A AP", (12.0, 7.0), False), ("10-Jan-2017-4 A AP", (12.0, 7.0), True)):
        box = np.array([[-w / 2, -h / 2], [w / 2, -h / 2], [-w / 2, h / 2], [w / 2, h / 2]])
        ys = 20.0 + 10.0 * np.arange(17)
        if noisy:
            ys[16] = ys[3]  # L5 drawn at T4's height
        kp = np.c_[np.full(17, 50.0), ys][:, None, :] + box[None]
        ann = SpineAnnotation(levels=list(region.levels), keypoints_px=kp, visible=np.ones((17, 4), bool),
                              region="ap", scheme=region.scheme.name, image=str(tmp_path / "x.png"),
                              image_size=(100, 220), spacing_mm=None, spacing_source="unknown", meta={})
        path = tmp_path / f"sunhl-1th-{name}.json"
        write_annotation(ann, path)
        paths.append(str(path))
    p = annotation_proportions(paths)
    assert list(p) == ["2016-07", "2017-01"]
    assert p["2016-07"]["films"] == 2 and p["2016-07"]["out_of_order"] == 0
    assert p["2016-07"]["width_per_step"] == pytest.approx(1.4) and p["2016-07"]["width_per_step_sd"] == pytest.approx(0.0)
    assert p["2016-07"]["height_per_step"] == pytest.approx(0.8)
    assert p["2017-01"]["films"] == 1 and p["2017-01"]["out_of_order"] == 1
    assert p["2017-01"]["width_per_step"] == pytest.approx(1.2) and p["2017-01"]["height_per_step"] == pytest.approx(0.7)
    from monai_spine.bench.aasce import label_report

    report = label_report({"test": paths})
    assert report.startswith("test: 4 films, 0 put back in level order, 1 still out of level order")
    assert "| 2016-07 | 2 | 1.400 ± 0.000 | 0.800 ± 0.000 |" in report


@pytest.mark.parametrize(
    "pred, expected",
    [
        ([[0.0, 0.0], [10.0, 10.0], [0.0, 6.0], [10.0, 6.0]], [45.0, 0.0]),  # upper plate falls 45 deg to the right
        ([[0.0, 0.0], [10.0, 0.0], [0.0, 6.0], [10.0, 6.0 - 10.0 * math.tan(math.radians(7.0))]], [0.0, 7.0]),
        ([[0.0, 0.0], [10.0, 0.0], [20.0, 6.0], [-10.0, 6.0]], [0.0, 180.0]),  # a lower plate drawn backwards
        ([[5.0, 3.0], [25.0, 3.0], [5.0, 9.0], [25.0, 9.0]], [0.0, 0.0]),  # wider and moved: no tilt error
    ],
)
def test_endplate_tilt_errors_by_hand(pred, expected):
    from monai_spine.bench.aasce import endplate_tilts_deg

    rect = np.array([[[0.0, 0.0], [10.0, 0.0], [0.0, 6.0], [10.0, 6.0]]])
    np.testing.assert_allclose(endplate_tilts_deg(rect), [[0.0, 0.0]], atol=1e-12)
    ps = PointSet("m")
    ps.add_image(0, np.array([pred]), np.zeros((1, 4)), rect, np.ones((1, 4), bool), 100.0)
    np.testing.assert_allclose(ps.tilt_error_deg, [expected], atol=1e-9)
    row = points_metrics(ps)
    assert row["tilt_mean_deg"] == pytest.approx(np.mean(expected))
    assert row["tilt_median_deg"] == pytest.approx(np.median(expected))
    with pytest.raises(ValueError, match=r"\(V, 4, 2\)"):
        endplate_tilts_deg(np.zeros((1, 5, 2)))


def test_tilt_column_in_the_table():
    ps = PointSet("m")
    rect = np.array([[[0.0, 0.0], [10.0, 0.0], [0.0, 6.0], [10.0, 6.0]]])
    tilted = np.array([[[0.0, 0.0], [10.0, 10.0], [0.0, 6.0], [10.0, 6.0]]])
    ps.add_image(0, tilted, np.zeros((1, 4)), rect, np.ones((1, 4), bool), 100.0)
    ps.add_image(1, rect, np.zeros((1, 4)), rect, np.array([[True, True, False, True]]), 100.0)  # no tilt: not whole
    table = format_aasce_table([points_metrics(ps)])
    assert "end-plate tilt error mean / median / p95 °" in table
    assert "| 22.5 / 22.5 / 42.8 |" in table  # errors 45, 0: p95 = 0 + 0.95 * 45


def test_evaluate_split_counts_level_misses_once_per_film(tmp_path):
    """Two films, a stub detector and the mean-shape row: the split's miss counts come once per film, and the
    row scores the vertebrae found at their level, with each corner's annotation batch."""
    from types import SimpleNamespace

    from PIL import Image

    from monai_spine.bench.aasce import MeanShapeReference, evaluate_split
    from monai_spine.data.annotation import SpineAnnotation, write_annotation
    from monai_spine.data.keypoints import get_region

    levels = list(get_region("ap").levels)
    box = np.array([[-6.0, -4.0], [6.0, -4.0], [-6.0, 4.0], [6.0, 4.0]])
    centres = np.c_[np.full(17, 40.0), 20.0 + 12.0 * np.arange(17)]
    Image.fromarray(np.full((240, 80), 128, np.uint8)).save(tmp_path / "film.png")
    paths = []
    for name in ("20-Jul-2016-1 A AP", "10-Jan-2017-2 A AP"):
        ann = SpineAnnotation(levels=levels, keypoints_px=centres[:, None, :] + box[None], visible=np.ones((17, 4), bool),
                              region="ap", scheme="ap4", image=str(tmp_path / "film.png"), image_size=(80, 240),
                              spacing_mm=None, spacing_source="unknown", meta={})
        write_annotation(ann, tmp_path / f"sunhl-1th-{name}.json")
        paths.append(str(tmp_path / f"sunhl-1th-{name}.json"))

    class Shifted:
        """Every level one vertebra down (a whole-chain shift): T1 on T2, ..., L4 on L5, L5 below the film's spine."""

        def detect(self, image, spacing_mm, source):
            c = centres + [0.0, 12.0]
            return SimpleNamespace(levels=levels, centres_px=c, boxes_px=np.c_[c - 6, c + 6],
                                   inferred=np.zeros(17, bool))

    counts: dict[str, int] = {}
    sets = evaluate_split(paths, Shifted(), reference=MeanShapeReference.fit(paths), log=lambda m: None,
                          level_counts=counts)
    assert counts["whole chain shifted"] == 2 * 16 and counts["outside every box"] == 2 * 1
    assert counts["run off by a level"] == 0 and counts["levels inferred"] == 0
    ps = sets["reference"]
    assert ps.found == 0 and ps.annotated == 34 and ps.images == 2 and ps.errors_px == []
    assert not hasattr(ps, "level_misses")

    class Right:
        def detect(self, image, spacing_mm, source):
            return SimpleNamespace(levels=levels, centres_px=centres, boxes_px=np.c_[centres - 6, centres + 6],
                                   inferred=np.zeros(17, bool))

    counts = {}
    ps = evaluate_split(paths, Right(), reference=MeanShapeReference.fit(paths), log=lambda m: None,
                        level_counts=counts)["reference"]
    assert sum(counts[k] for k in ("whole chain shifted", "run off by a level", "outside every box")) == 0
    assert ps.found == 34 and len(ps.errors_px) == 34 * 4 and max(ps.errors_px) < 1e-9  # the mean shape of two equal films
    assert sorted(set(ps.point_batches)) == ["2016-07", "2017-01"] and ps.point_batches.count("2016-07") == 68
