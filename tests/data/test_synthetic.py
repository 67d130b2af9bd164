from __future__ import annotations

import json
import math

import cv2
import numpy as np
import pydicom
import pytest

from monai_spine.data.annotation import read_annotation
from monai_spine.data.keypoints import get_region, px_to_mm
from monai_spine.data.synthetic import (
    HARD_CASES,
    generate_dataset,
    generate_radiograph,
)
from monai_spine.data.synthetic_dicom import DX_FOR_PRESENTATION_SOP_CLASS
from monai_spine.data.synthetic_raster import polygon_coverage

REGIONS = ["cervical", "lumbar"]


def _ann_json(ann) -> str:
    return json.dumps(ann.to_dict(), sort_keys=True)


@pytest.mark.parametrize("region", REGIONS)
def test_same_seed_gives_bit_identical_image_and_annotation(region):
    img1, ann1 = generate_radiograph(region, 11, size=256, hard_case="auto")
    img2, ann2 = generate_radiograph(region, 11, size=256, hard_case="auto")
    assert img1.dtype == np.uint16 and img1.shape == (256, 256)
    np.testing.assert_array_equal(img1, img2)
    assert _ann_json(ann1) == _ann_json(ann2)


@pytest.mark.parametrize("region", REGIONS)
def test_different_seeds_differ(region):
    img1, ann1 = generate_radiograph(region, 1, size=256)
    img2, ann2 = generate_radiograph(region, 2, size=256)
    assert np.mean(img1 != img2) > 0.5
    assert np.abs(ann1.keypoints_px - ann2.keypoints_px).max() > 1.0


@pytest.mark.parametrize(
    "region, size, expected_hw",
    [("cervical", 256, (256, 256)), ("lumbar", 256, (256, 256)), ("cervical", (320, 256), (320, 256)),
     ("lumbar", (256, 320), (256, 320))],
)
def test_keypoints_inside_image_levels_in_order_and_anatomical_orientation(region, size, expected_hw):
    for seed in range(4):
        img, ann = generate_radiograph(region, seed, size=size)
        h, w = expected_hw
        assert img.shape == (h, w) and ann.image_size == (w, h)
        assert ann.levels == list(get_region(region).levels) and ann.scheme == "lateral5"
        kp = ann.keypoints_px
        assert kp.shape == (5, 5, 2) and ann.visible.all()
        assert np.all((kp[..., 0] >= 0) & (kp[..., 0] <= w - 1) & (kp[..., 1] >= 0) & (kp[..., 1] <= h - 1))
        # top to bottom, and each body above the next one
        assert np.all(np.diff(kp[:, :4, 1].mean(1)) > 0)
        assert np.all(kp[:-1, 2:4, 1] < kp[1:, 0:2, 1])  # inferior corners above the next superior ones
        # patient faces left: anterior corners left of posterior ones, spinous process furthest right
        assert np.all(kp[:, 0, 0] < kp[:, 1, 0]) and np.all(kp[:, 2, 0] < kp[:, 3, 0])
        assert np.all(kp[:, 4, 0] > kp[:, [1, 3], 0].max(1))
        # superior corners above inferior ones, spinous tip below the superior endplate
        assert np.all(kp[:, 0, 1] < kp[:, 2, 1]) and np.all(kp[:, 1, 1] < kp[:, 3, 1])
        # boxes hold the vertebra's keypoints
        b = ann.boxes_px
        assert np.all(b[:, :1] <= kp[..., 0]) and np.all(kp[..., 0] <= b[:, 2:3])
        assert np.all(b[:, 1:2] <= kp[..., 1]) and np.all(kp[..., 1] <= b[:, 3:4])


def _hull_distance(mask: np.ndarray, point: np.ndarray) -> float:
    ys, xs = np.nonzero(mask)
    hull = cv2.convexHull(np.stack([xs, ys], 1).astype(np.float32)).reshape(-1, 2)
    return float(np.linalg.norm(hull - point, axis=1).min())


def _patch_mean(img: np.ndarray, p: np.ndarray) -> float:
    x, y = int(round(p[0])), int(round(p[1]))
    return float(img[y - 1:y + 2, x - 1:x + 2].mean())


@pytest.mark.parametrize("region, seed", [("cervical", 3), ("cervical", 8), ("lumbar", 3), ("lumbar", 8)])
def test_keypoints_lie_on_the_rendered_corners(region, seed):
    img, ann, layers = generate_radiograph(region, seed, size=512, return_layers=True)
    img = img.astype(np.float64)
    kp = ann.keypoints_px
    for i in range(ann.num_vertebrae):
        body = layers["body_index"] == i
        assert body.sum() > 200
        centre = kp[i, :4].mean(0)
        for j in range(4):
            # each corner is a vertex of the rendered body (the convex hull of its pixels) within 1.5 px
            assert _hull_distance(body, kp[i, j]) < 1.5, (ann.levels[i], ann.point_names[j])
            # in the final image, bone just inside the corner is brighter than just outside it
            d = (centre - kp[i, j]) / np.linalg.norm(centre - kp[i, j])
            inside, outside = kp[i, j] + 3.0 * d, kp[i, j] - 3.0 * d
            assert body[int(round(inside[1])), int(round(inside[0]))]
            assert not body[int(round(outside[1])), int(round(outside[0]))]
            assert _patch_mean(img, inside) > _patch_mean(img, outside) + 100
        # the spinous-process tip ends the rendered posterior elements
        post = layers["posterior_index"] == i
        tip = kp[i, 4]
        d = tip - (kp[i, 1] + kp[i, 3]) / 2
        d /= np.linalg.norm(d)
        inside, outside = tip - 3.0 * d, tip + 3.0 * d
        assert post[int(round(inside[1])), int(round(inside[0]))]
        assert not post[int(round(outside[1])), int(round(outside[0]))]
        assert _patch_mean(img, inside) > _patch_mean(img, outside) + 100


@pytest.mark.parametrize("region", REGIONS)
def test_outlines_pass_through_corners_and_are_what_was_rendered(region):
    img, ann, layers = generate_radiograph(region, 5, size=256, return_layers=True)
    assert len(ann.outlines_px) == 5
    for i, outline in enumerate(ann.outlines_px):
        assert outline.ndim == 2 and outline.shape[1] == 2 and len(outline) >= 16
        for j in range(4):
            assert np.linalg.norm(outline - ann.keypoints_px[i, j], axis=1).min() < 1e-9
        rendered = layers["body_index"] == i
        expected = polygon_coverage(outline, img.shape) >= 0.5
        assert np.mean(rendered != expected) < 1e-4


def _sizes_mm(ann):
    mm = px_to_mm(ann.keypoints_px, ann.spacing_mm)
    depth = (np.linalg.norm(mm[:, 1] - mm[:, 0], axis=-1) + np.linalg.norm(mm[:, 3] - mm[:, 2], axis=-1)) / 2
    height = (np.linalg.norm(mm[:, 2] - mm[:, 0], axis=-1) + np.linalg.norm(mm[:, 3] - mm[:, 1], axis=-1)) / 2
    disc = (np.linalg.norm(mm[1:, 0] - mm[:-1, 2], axis=-1) + np.linalg.norm(mm[1:, 1] - mm[:-1, 3], axis=-1)) / 2
    sp = np.linalg.norm(mm[:, 4] - (mm[:, 1] + mm[:, 3]) / 2, axis=-1)
    return depth, height, disc, sp


@pytest.mark.parametrize(
    "region, depth_range, height_range, disc_range, sp_range",
    [
        ("cervical", (13.0, 19.5), (11.5, 16.5), (2.5, 8.0), (24.0, 56.0)),
        ("lumbar", (33.0, 48.0), (22.0, 32.0), (5.0, 14.0), (40.0, 72.0)),
    ],
)
def test_sizes_in_mm_are_anatomically_plausible(region, depth_range, height_range, disc_range, sp_range):
    for seed in range(5):
        _, ann = generate_radiograph(region, seed, size=256)
        depth, height, disc, sp = _sizes_mm(ann)
        assert depth_range[0] < depth.min() and depth.max() < depth_range[1]
        assert height_range[0] < height.min() and height.max() < height_range[1]
        assert disc_range[0] < disc.min() and disc.max() < disc_range[1]
        assert sp_range[0] < sp.min() and sp.max() < sp_range[1]


def test_lumbar_bodies_are_deeper_in_mm_than_cervical_whatever_the_pixel_size():
    _, c = generate_radiograph("cervical", 4, size=512)
    _, lum = generate_radiograph("lumbar", 4, size=256)
    assert _sizes_mm(lum)[0].mean() > 2.0 * _sizes_mm(c)[0].mean()


@pytest.mark.parametrize("region", REGIONS)
def test_lordosis_turns_endplates_by_the_recorded_angle(region):
    for seed in range(3):
        _, ann = generate_radiograph(region, seed, size=256)
        mm = px_to_mm(ann.keypoints_px, ann.spacing_mm)
        top = mm[0, 1] - mm[0, 0]  # superior endplate of the first vertebra, anterior -> posterior
        bot = mm[-1, 3] - mm[-1, 2]  # inferior endplate of the last one
        # lordosis: endplates converge posteriorly; the bottom one is turned anticlockwise on screen
        turn = math.degrees(math.atan2(top[0] * bot[1] - top[1] * bot[0], top @ bot))
        lordosis = ann.meta["params"]["lordosis_deg"]
        # each body also has a random turn of up to 2.5 degrees (cervical) about its centre
        assert turn == pytest.approx(-lordosis, abs=5.5)


def test_spacing_is_recorded_and_possibly_anisotropic():
    seen_aniso = False
    for seed in range(12):
        _, ann = generate_radiograph("cervical", seed, size=256)
        sx, sy = ann.spacing_mm
        assert ann.spacing_source == "PixelSpacing"
        assert 0.3 < sx < 1.0 and 0.3 < sy < 1.0  # 256 px: about four times the 1024 px spacing
        assert abs(sx / sy - 1) <= 0.045
        assert ann.meta["params"]["spacing_mm"] == [sx, sy]
        seen_aniso |= sx != sy
    assert seen_aniso
    _, ann = generate_radiograph("cervical", 0, size=1024)
    assert 0.09 < ann.spacing_mm[1] < 0.2


def test_given_spacing_is_used_and_a_too_large_one_is_refused():
    _, ann = generate_radiograph("cervical", 0, size=256, spacing_mm=(0.6, 0.55))
    assert ann.spacing_mm == (0.6, 0.55)
    with pytest.raises(ValueError, match="does not fit"):
        generate_radiograph("lumbar", 0, size=256, spacing_mm=0.2)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"region": "ap", "seed": 0}, "region"),
        ({"region": "cervical", "seed": -1}, "seed"),
        ({"region": "cervical", "seed": 0, "hard_case": "fracture"}, "hard_case"),
        ({"region": "cervical", "seed": 0, "size": 16}, "size"),
    ],
)
def test_bad_arguments_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        generate_radiograph(**kwargs)


@pytest.mark.parametrize("region", REGIONS)
def test_occlusion_hides_points_under_the_overlay_and_keeps_the_anatomy(region):
    _, plain = generate_radiograph(region, 6, size=256)
    _, ann, layers = generate_radiograph(region, 6, size=256, hard_case="occlusion", return_layers=True)
    np.testing.assert_array_equal(ann.keypoints_px, plain.keypoints_px)
    hc = ann.meta["hard_case"]
    assert hc["type"] == "occlusion" and hc["subtype"] in ("shoulder", "pelvis", "collimation")
    assert (~ann.visible).any() and plain.visible.all()
    hidden = {(lev, name) for lev, name in hc["hidden_points"]}
    names = ann.point_names
    assert hidden == {(ann.levels[i], names[j]) for i, j in zip(*np.nonzero(~ann.visible))}
    assert set(hc["levels"]) == {lev for lev, _ in hidden}
    strength = np.asarray(hc["overlay_strength_at_points"])
    np.testing.assert_array_equal(strength >= 0.5, ~ann.visible)
    # the rendered overlay covers the hidden points
    for i, j in zip(*np.nonzero(~ann.visible)):
        x, y = np.round(ann.keypoints_px[i, j]).astype(int)
        assert layers["occlusion"][y, x] > 0.4


@pytest.mark.parametrize("region", REGIONS)
def test_implant_draws_metal_over_the_recorded_levels(region):
    img, ann, layers = generate_radiograph(region, 2, size=256, hard_case="implant", return_layers=True)
    hc = ann.meta["hard_case"]
    assert hc["type"] == "implant" and 2 <= len(hc["levels"]) <= 3
    metal = layers["metal"] >= 0.5
    assert metal.sum() > 20
    assert np.median(img[metal]) > np.percentile(img, 95)  # metal is bright
    for lev in hc["levels"]:  # metal inside the box of every instrumented vertebra
        x0, y0, x1, y1 = np.round(ann.boxes_px[ann.levels.index(lev)]).astype(int)
        assert metal[y0:y1 + 1, x0:x1 + 1].any()
    for i, j in zip(*np.nonzero(~ann.visible)):
        x, y = np.round(ann.keypoints_px[i, j]).astype(int)
        assert layers["metal"][max(y - 1, 0):y + 2, max(x - 1, 0):x + 2].max() > 0.5
    assert {tuple(p) for p in hc["hidden_points"]} <= {tuple(p) for p in hc["affected_points"]}


def test_cervical_plate_hides_the_anterior_corners_of_the_fused_disc():
    _, ann = generate_radiograph("cervical", 3, size=512, hard_case="implant")
    levels = ann.meta["hard_case"]["levels"]
    hidden = {tuple(p) for p in ann.meta["hard_case"]["hidden_points"]}
    for upper, lower in zip(levels[:-1], levels[1:]):
        assert (upper, "AI") in hidden and (lower, "AS") in hidden


def test_low_contrast_keeps_points_visible_and_reduces_bone_contrast():
    img_n, ann_n, lay_n = generate_radiograph("lumbar", 9, size=256, return_layers=True)
    img_l, ann_l, lay_l = generate_radiograph("lumbar", 9, size=256, hard_case="low_contrast", return_layers=True)
    assert ann_l.visible.all() and ann_l.meta["hard_case"]["type"] == "low_contrast"
    body = lay_n["body_index"] >= 0
    ring = cv2.dilate(body.astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool) & ~body

    def contrast(img):
        return img[body].mean() - img[ring].mean()

    assert contrast(img_l.astype(float)) < 0.7 * contrast(img_n.astype(float))


def _read_back(path):
    ds = pydicom.dcmread(path)
    return ds, ds.pixel_array


def test_dataset_writes_dicom_dx_with_pixel_spacing_in_row_column_order(tmp_path):
    paths = generate_dataset(tmp_path / "a", "cervical", 2, seed=5, size=(256, 320))
    assert [p.name for p in paths] == ["case_0000.json", "case_0001.json"]
    index = json.loads((tmp_path / "a" / "dataset.json").read_text())
    assert index["region"] == "cervical" and index["generator"]["seed"] == 5
    assert index["data"] == [{"image": f"case_000{i}.dcm", "label": f"case_000{i}.json"} for i in range(2)]
    for p in paths:
        ann = read_annotation(p)
        ds, arr = _read_back(ann.image)
        assert ann.image == str(p.with_suffix(".dcm"))
        assert ds.Modality == "DX" and ds.SOPClassUID == DX_FOR_PRESENTATION_SOP_CLASS
        assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert ds.PhotometricInterpretation == "MONOCHROME2" and ds.BitsStored == 12 and ds.BitsAllocated == 16
        assert ds.BodyPartExamined == "CSPINE" and ds.ViewPosition in ("LL", "RL")
        assert (ds.Rows, ds.Columns) == (256, 320) and arr.shape == (256, 320) and arr.dtype == np.uint16
        sx, sy = ann.spacing_mm
        assert [float(v) for v in ds.PixelSpacing] == [sy, sx]  # DICOM: row spacing, then column spacing
        assert [float(v) for v in ds.ImagerPixelSpacing] == [sy, sx]
        img, again = generate_radiograph("cervical", ann.meta["seed"], size=(256, 320),
                                         hard_case=None)
        np.testing.assert_array_equal(arr, img)
        np.testing.assert_allclose(ann.keypoints_px, again.keypoints_px, atol=1e-9)
    # deterministic identifiers: a second run gives the same UIDs and patient id
    generate_dataset(tmp_path / "b", "cervical", 1, seed=5, size=(256, 320))
    a, b = pydicom.dcmread(tmp_path / "a" / "case_0000.dcm"), pydicom.dcmread(tmp_path / "b" / "case_0000.dcm")
    for key in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "PatientID"):
        assert a[key].value == b[key].value
    assert a.StudyInstanceUID != pydicom.dcmread(tmp_path / "a" / "case_0001.dcm").StudyInstanceUID


def test_hard_case_rate_one_makes_every_case_hard_and_records_it(tmp_path):
    paths = generate_dataset(tmp_path, "lumbar", 6, seed=1, hard_case_rate=1.0, size=256)
    kinds = set()
    for p in paths:
        ann = read_annotation(p)
        hc = ann.meta["hard_case"]
        assert hc is not None and hc["type"] in HARD_CASES and hc["levels"]
        assert len(hc["hidden_points"]) == int((~ann.visible).sum())
        kinds.add(hc["type"])
    assert len(kinds) >= 2
    none = generate_dataset(tmp_path / "none", "lumbar", 2, seed=1, hard_case_rate=0.0, size=256)
    assert all(read_annotation(p).meta["hard_case"] is None for p in none)


def test_dataset_does_not_depend_on_workers(tmp_path):
    generate_dataset(tmp_path / "one", "cervical", 2, seed=3, size=128, workers=1)
    generate_dataset(tmp_path / "two", "cervical", 2, seed=3, size=128, workers=2)
    for name in ("case_0000.dcm", "case_0001.dcm", "case_0001.json"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()


def test_synth_cli_prints_a_summary(tmp_path, capsys):
    from monai_spine.cli.data import synth_cli

    assert synth_cli("lumbar", 1, tmp_path, seed=2, hard_case_rate=0.0, size=128) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and "1 lumbar" in out[0] and "dataset.json" in out[0]
    assert (tmp_path / "case_0000.dcm").exists() and (tmp_path / "dataset.json").exists()
