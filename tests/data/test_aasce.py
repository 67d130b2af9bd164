from __future__ import annotations

import numpy as np
import pytest

from monai_spine.data.aasce import (
    COBB_ANGLE_NAMES,
    LABEL_NOISE_KINDS,
    AasceError,
    LABEL_FIX_ROTATED,
    find_label_noise,
    fix_rotated_levels,
    read_aasce,
    read_aasce_filenames,
    read_aasce_landmarks,
    read_aasce_mat,
    read_cobb_angles,
    read_image_size,
    resolve_aasce_root,
)
from monai_spine.data.annotation import SpineAnnotation
from monai_spine.data.keypoints import get_region

AP_LEVELS = list(get_region("ap").levels)


# --------------------------------------------------------------------------- a tiny fake dataset


def _write_fake(root, sizes=((40, 100), (30, 80)), names=("case 1 A AP.jpg", "case 2 B AP.jpg"), seed=0):
    """A two-image AASCE folder: tiny JPEGs, CSVs and .mat files; returns the pixel points (M, 68, 2)."""
    from PIL import Image
    from scipy.io import savemat

    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    all_px, rows = [], []
    for name, (w, h) in zip(names, sizes):
        Image.fromarray(np.zeros((h, w), dtype=np.uint8)).save(root / "images" / name)
        # integer pixels like the .mat files, vertebrae stacked top to bottom
        y = np.repeat(np.arange(17) * 4 + 5, 4).reshape(17, 4) + np.array([0, 0, 2, 2])
        x = np.tile([5, 15, 5, 15], (17, 1)) + rng.integers(0, 5, size=(17, 1))
        px = np.stack([x, y], -1).reshape(68, 2).astype(np.uint16)
        savemat(root / "labels" / f"{name}.mat", {"p2": px})
        all_px.append(px.astype(float))
        rows.append(np.concatenate([px[:, 0] / w, px[:, 1] / h]))
    (root / "labels" / "filenames.csv").write_text("".join(n + "\n" for n in names))
    np.savetxt(root / "labels" / "landmarks.csv", np.asarray(rows), delimiter=",", fmt="%.8g")
    (root / "labels" / "angles.csv").write_text("10.5,3.25,7\n20,0,12.5\n")
    return np.stack(all_px)


@pytest.fixture
def fake_root(tmp_path):
    root = tmp_path / "aasce-train"
    px = _write_fake(root)
    return root, px


@pytest.mark.parametrize("use_mat", [False, True])
def test_fake_dataset_reads_pixels_sizes_and_meta(fake_root, use_mat):
    root, px = fake_root
    ds = read_aasce(root, use_mat=use_mat)
    assert len(ds) == 2
    assert ds.names == ["case 1 A AP.jpg", "case 2 B AP.jpg"]
    np.testing.assert_allclose(ds.keypoints_px, px.reshape(2, 17, 4, 2), atol=1e-5)
    for row, (ann, size) in enumerate(zip(ds, [(40, 100), (30, 80)])):
        assert ann.levels == AP_LEVELS
        assert (ann.region, ann.scheme) == ("ap", "ap4")
        assert ann.image_size == size
        assert ann.spacing_mm is None and ann.spacing_source == "unknown"
        assert ann.visible.all()
        assert ann.meta["row"] == row
        assert ann.meta["label_source"] == ("mat" if use_mat else "landmarks.csv")
        assert ann.meta["cobb_angle_names"] == list(COBB_ANGLE_NAMES)
        assert ann.meta["label_noise"] == []
    np.testing.assert_allclose(ds.cobb_angles_deg, [[10.5, 3.25, 7.0], [20.0, 0.0, 12.5]])
    assert ds.report == {}


def test_fake_dataset_root_may_be_the_parent_folder(fake_root):
    root, _ = fake_root
    assert resolve_aasce_root(root.parent) == root
    assert len(read_aasce(root.parent)) == 2


def test_landmarks_are_denormalised_by_width_and_height_not_the_frac_convention(fake_root):
    """x_px = value * W (the dataset's normalisation), not value * W - 0.5."""
    root, px = fake_root
    frac = read_aasce_landmarks(root)
    assert frac.shape == (2, 68, 2)
    # hand-computed: first image is 40 x 100 px
    np.testing.assert_allclose(frac[0, 0] * [40, 100], px[0, 0], atol=1e-5)
    ann = read_aasce(root)[0]
    np.testing.assert_allclose(ann.keypoints_px[0, 0], px[0, 0], atol=1e-5)


def test_root_none_uses_the_environment_variable(fake_root, monkeypatch):
    root, _ = fake_root
    monkeypatch.setenv("MONAI_SPINE_DATA", str(root.parent))
    assert resolve_aasce_root() == root
    assert len(read_aasce()) == 2


def test_missing_root_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="filenames.csv"):
        read_aasce(tmp_path)


@pytest.mark.parametrize(
    "csv_name, text, match",
    [
        ("landmarks.csv", "0.1,0.2\n0.1,0.2\n", r"landmarks.csv: row 0 has 2 values, expected 136"),
        ("angles.csv", "1,2,3\n", r"angles.csv: 1 rows, but filenames.csv has 2"),
        ("angles.csv", "1,2,x\n4,5,6\n", r"angles.csv: row 0 is not numeric"),
    ],
)
def test_malformed_csv_raises_naming_the_file(fake_root, csv_name, text, match):
    root, _ = fake_root
    (root / "labels" / csv_name).write_text(text)
    with pytest.raises(AasceError, match=match):
        read_aasce(root)


def test_missing_image_raises_naming_it(fake_root):
    root, _ = fake_root
    (root / "images" / "case 2 B AP.jpg").unlink()
    with pytest.raises(FileNotFoundError, match="case 2 B AP.jpg"):
        read_aasce(root)


def test_mat_with_wrong_shape_raises(tmp_path):
    from scipy.io import savemat

    savemat(tmp_path / "x.jpg.mat", {"p2": np.zeros((60, 2))})
    with pytest.raises(AasceError, match=r"x.jpg.mat.*\(60, 2\)"):
        read_aasce_mat(tmp_path / "x.jpg.mat")
    savemat(tmp_path / "y.jpg.mat", {"other": np.zeros((68, 2))})
    with pytest.raises(AasceError, match="no variable 'p2'"):
        read_aasce_mat(tmp_path / "y.jpg.mat")


def test_noisy_labels_are_reported_not_fatal(tmp_path):
    root = tmp_path / "aasce-train"
    px = _write_fake(root)
    # image 0: L5 placed above L4 (top and bottom swapped) -> both issues on L5
    rows = np.loadtxt(root / "labels" / "landmarks.csv", delimiter=",")
    y = rows[0, 68:].reshape(17, 4)
    y[16] = y[15, [2, 3, 0, 1]] - 1.0 / 100  # bottom corners above top ones, centre above L4's
    rows[0, 68:] = y.ravel()
    np.savetxt(root / "labels" / "landmarks.csv", rows, delimiter=",", fmt="%.8g")
    ds = read_aasce(root)
    assert set(ds.report) == {"case 1 A AP.jpg"}
    assert ds.count_issues("top_below_bottom") == 1
    assert ds.count_issues("centre_out_of_order") == 1
    assert ds[0].meta["label_noise"] == ds.report["case 1 A AP.jpg"]
    assert all(s.split(":")[1].strip() == "L5" for s in ds.report["case 1 A AP.jpg"])
    assert px.shape == (2, 68, 2)


# --------------------------------------------------------------------------- fix_rotated_levels


def _column(n=17, gap=10.0):
    """A straight spine: vertebra k is a 8 x 6 box centred at (50, 20 + gap * k)."""
    c = np.c_[np.full(n, 50.0), 20.0 + gap * np.arange(n)]
    return c[:, None, :] + np.array([[-4.0, -3.0], [4.0, -3.0], [-4.0, 3.0], [4.0, 3.0]])[None]


@pytest.mark.parametrize("case, fixed", [
    ("in order", False),
    ("T1 stored last", True),
    ("T1 stored last, far above", False),  # its gap to T2 is 5 median gaps: not a plain rotation
    ("L5 on L4", False),
    ("L5 in mid-film", False),
    ("T1 and T2 crossed", False),
])
def test_fix_rotated_levels_cases(case, fixed):
    kp = _column()
    if case == "T1 stored last":
        kp = np.roll(kp, -1, axis=0)
    elif case == "T1 stored last, far above":
        kp = np.roll(kp, -1, axis=0)
        kp[16, :, 1] -= 40.0
    elif case == "L5 on L4":
        kp[16] = kp[15]
    elif case == "L5 in mid-film":
        kp[16, :, 1] -= 80.0
    elif case == "T1 and T2 crossed":
        kp[[0, 1]] = kp[[1, 0]]
    out = fix_rotated_levels(kp, np.ones(kp.shape[:2], bool))
    if fixed:
        np.testing.assert_array_equal(out, _column())
    else:
        assert out is None


def test_fake_dataset_with_t1_stored_last_is_put_back(tmp_path):
    root = tmp_path / "aasce-train"
    px = _write_fake(root)
    rows = np.loadtxt(root / "labels" / "landmarks.csv", delimiter=",")
    for axis in (slice(0, 68), slice(68, 136)):  # store image 0's T1 last
        rows[0, axis] = np.roll(rows[0, axis].reshape(17, 4), -1, axis=0).ravel()
    np.savetxt(root / "labels" / "landmarks.csv", rows, delimiter=",", fmt="%.8g")
    ds = read_aasce(root)
    assert ds.fixed == ["case 1 A AP.jpg"] and ds.report == {}
    np.testing.assert_allclose(ds[0].keypoints_px.reshape(68, 2), px[0], atol=1e-4)
    raw = read_aasce(root, fix_order=False)
    assert raw.fixed == [] and raw.count_issues("centre_out_of_order") == 1


# --------------------------------------------------------------------------- find_label_noise


def _ann(kp, image_size=None, scheme="ap4", region="ap", levels=None):
    kp = np.asarray(kp, dtype=float)
    return SpineAnnotation(
        levels=levels or AP_LEVELS[: len(kp)],
        keypoints_px=kp,
        visible=np.ones(kp.shape[:2], bool),
        region=region,
        scheme=scheme,
        image_size=image_size,
    )


# one clean vertebra: TL, TR, BL, BR
_V = [[0, 0], [10, 0], [0, 5], [10, 5]]


@pytest.mark.parametrize(
    "kp, image_size, expected",
    [
        ([_V, np.add(_V, [0, 10]).tolist()], (20, 20), []),
        ([[[0, 6], [10, 0], [0, 5], [10, 5]]], None, ["top_below_bottom: T1: TL y=6.0 > BL y=5.0"]),
        (
            [[[0, 6], [10, 7], [0, 5], [10, 5]]],
            None,
            ["top_below_bottom: T1: TL y=6.0 > BL y=5.0; TR y=7.0 > BR y=5.0"],
        ),
        ([[[11, 0], [10, 0], [0, 5], [10, 5]]], None, ["left_right_swapped: T1: TL x=11.0 > TR x=10.0"]),
        ([_V, _V], None, ["centre_out_of_order: T2: centre y=2.5 not below T1 centre y=2.5"]),
        ([_V], (10, 20), ["point_outside_image: T1: TR = (10.0, 0.0) outside 10 x 20 px",
                          "point_outside_image: T1: BR = (10.0, 5.0) outside 10 x 20 px"]),
    ],
)
def test_find_label_noise_cases(kp, image_size, expected):
    assert find_label_noise(_ann(kp, image_size)) == expected


def test_find_label_noise_reports_visible_nan_point():
    ann = _ann([[[0, 0], [10, 0], [0, 5], [10, np.nan]]])
    ann.visible[0, 3] = True  # a record edited after construction
    assert find_label_noise(ann) == ["non_finite_point: T1: BR = [10.0, nan]"]


def test_find_label_noise_ignores_invisible_points_and_lateral_left_right():
    ann = _ann([[[0, 9], [10, 0], [0, 5], [10, 5]]])
    ann.visible[0, 0] = False  # the wrong TL is not seen
    assert find_label_noise(ann) == []
    # lateral5: AS right of PS is a facing direction, not noise
    lat = _ann([[[10, 0], [0, 0], [10, 5], [0, 5], [-5, 3]]], scheme="lateral5", region="cervical", levels=["C3"])
    assert find_label_noise(lat) == []


def test_count_issues_rejects_unknown_kind(fake_root):
    ds = read_aasce(fake_root[0])
    with pytest.raises(KeyError, match="unknown label-noise kind"):
        ds.count_issues("nope")


# --------------------------------------------------------------------------- the real shared set


@pytest.fixture(scope="module")
def real_root(shared_data):
    root = shared_data / "aasce-train"
    if not (root / "labels" / "filenames.csv").is_file():
        pytest.skip(f"AASCE data absent under {root}")
    return root


@pytest.fixture(scope="module")
def real(real_root):
    return read_aasce(real_root)


def test_real_set_has_481_images_of_17_vertebrae(real):
    assert len(real) == 481
    assert real.keypoints_px.shape == (481, 17, 4, 2)
    assert all(a.levels == AP_LEVELS and a.visible.all() for a in real)
    assert all(a.spacing_mm is None and a.spacing_source == "unknown" for a in real)
    assert [a.meta["row"] for a in real] == list(range(481))


def test_real_file_names_with_spaces_work(real, real_root):
    names = read_aasce_filenames(real_root)
    assert names == real.names
    spaced = [a for a in real if " " in a.meta["filename"]]
    assert len(spaced) > 400
    a = spaced[0]
    assert a.meta["filename"] == "sunhl-1th-02-Jan-2017-162 A AP.jpg"
    assert a.image.endswith("images/sunhl-1th-02-Jan-2017-162 A AP.jpg")
    assert read_image_size(a.image) == a.image_size == (755, 2125)


def test_real_first_point_hand_computed(real):
    # landmarks.csv row 0: x0 = 0.47815, y0 = 0.033882, image 755 x 2125 px; .mat p2[0] = (361, 72)
    np.testing.assert_allclose(real[0].keypoints_px[0, 0], [0.47815 * 755, 0.033882 * 2125], rtol=0, atol=1e-9)
    np.testing.assert_allclose(real[0].keypoints_px[0, 0], [361, 72], atol=0.05)


def test_real_image_sizes_within_documented_ranges(real):
    w, h = np.asarray([a.image_size for a in real]).T
    assert (w.min(), w.max()) == (355, 1427)
    assert (h.min(), h.max()) == (973, 3755)


def test_real_landmarks_and_mat_agree_within_0_05_px(real, real_root):
    for i in (0, 1, 240, 394, 480):
        p2 = read_aasce_mat(real_root / "labels" / f"{real.names[i]}.mat")
        assert np.abs(real[i].keypoints_px.reshape(68, 2) - p2).max() < 0.05
    via_mat = read_aasce(real_root, use_mat=True)
    assert np.abs(via_mat.keypoints_px - real.keypoints_px).max() < 0.05
    assert via_mat[0].meta["label_source"] == "mat"


def test_real_label_noise_counts(real_root):
    real = read_aasce(real_root, fix_order=False)  # the files as they are
    assert real.fixed == []
    # PROVENANCE: 4 of 8,177 vertebrae have a top corner below a bottom corner
    assert real.count_issues("top_below_bottom") == 4
    # "about 23" centres out of level order: 23 lie above the previous centre, and one more
    # (image 376, L5 duplicating L4) has exactly the same centre y -> 24 "not below"
    assert real.count_issues("centre_out_of_order") == 24
    assert real.count_issues("left_right_swapped") == 2
    assert real.count_issues("point_outside_image") == 1
    assert real.count_issues("non_finite_point") == 0
    assert len(real.report) == 27  # images with at least one issue
    assert real.report["sunhl-1th-03-Jan-2017-163 B AP.jpg"][0].startswith("top_below_bottom: L4:")
    assert set(LABEL_NOISE_KINDS) >= {s.split(":")[0] for v in real.report.values() for s in v}


def test_real_rotated_lists_are_put_back(real, real_root):
    """18 files store T1 last; put back, 6 films with other order errors stay (L5 on L4, L5 mid-film, T1/T2 crossed)."""
    assert len(real.fixed) == 18 and "sunhl-1th-10-Jan-2017-227 E AP.jpg" in real.fixed
    assert real.count_issues("centre_out_of_order") == 6
    assert len(real.report) == 11
    raw = read_aasce(real_root, fix_order=False)
    i = real.names.index("sunhl-1th-10-Jan-2017-227 E AP.jpg")
    np.testing.assert_array_equal(real[i].keypoints_px[0], raw[i].keypoints_px[16])  # T1 was stored last
    np.testing.assert_array_equal(real[i].keypoints_px[1:], raw[i].keypoints_px[:16])
    assert real[i].meta["label_fix"] == LABEL_FIX_ROTATED and raw[i].meta["label_fix"] is None


def test_real_cobb_angles(real, real_root):
    ang = read_cobb_angles(real_root)
    assert ang.shape == (481, 3)
    np.testing.assert_allclose(ang[0], [41.139, 14.63, 40.147])
    np.testing.assert_array_equal(real.cobb_angles_deg, ang)
    assert np.all(ang[:, 0] >= ang[:, 1:].max(axis=1))  # the main curve is the largest


# --------------------------------------------------------------------------- the patient split
from monai_spine.data.aasce import aasce_batch, aasce_group, split_aasce, write_aasce_dataset  # noqa: E402


@pytest.mark.parametrize(
    "name, batch",
    [
        ("sunhl-1th-20-Jul-2016-10 A AP.jpg", "2016-07"),
        ("/data/labels/sunhl-1th-10-Jan-2017-238 A AP.json", "2017-01"),
        ("sunhl-1th-30-Dec-2016-159 A AP2.jpg", "2016-12"),
        ("sunhl-1th-20-Jul-2016-coronal1.jpg", "2016-07"),
        ("film.png", "unknown"),
    ],
)
def test_aasce_batch(name, batch):
    assert aasce_batch(name) == batch


@pytest.mark.parametrize(
    "name, group",
    [
        ("sunhl-1th-02-Jan-2017-162 A AP.jpg", "patient-162"),
        ("sunhl-1th-04-Jan-2017-165 B AP.jpg", "patient-165"),
        ("sunhl-1th-30-Dec-2016-159 A AP2.jpg", "patient-159"),
        ("sunhl-1th-20-Jul-2016-coronal1.jpg", "image-sunhl-1th-20-Jul-2016-coronal1"),
    ],
)
def test_aasce_group(name, group):
    assert aasce_group(name) == group


def _names():
    # 10 patients with 1..4 images each (25 images) + 5 single "coronal" images
    names = [f"x-{p} {chr(65 + k)} AP.jpg" for p in range(10) for k in range(1 + p % 4)]
    return names + [f"x-coronal{i}.jpg" for i in range(5)]


def test_split_aasce_keeps_patients_together_and_is_seeded():
    names = _names()
    a = split_aasce(names, (0.6, 0.2, 0.2), seed=3)
    assert sorted(sum(a.values(), [])) == sorted(names)  # every image exactly once
    where = {}
    for split, members in a.items():
        for n in members:
            assert where.setdefault(aasce_group(n), split) == split  # one patient, one split
    assert len(a["test"]) >= round(0.2 * len(names)) and len(a["validation"]) >= round(0.2 * len(names))
    assert split_aasce(list(reversed(names)), (0.6, 0.2, 0.2), seed=3) == a  # order of listing does not matter
    assert split_aasce(names, (0.6, 0.2, 0.2), seed=4) != a


def test_split_aasce_rejects_bad_fractions():
    with pytest.raises(ValueError, match="fractions"):
        split_aasce(_names(), (0.5, -0.1, 0.6))


def test_write_aasce_dataset_round_trip(tmp_path):
    from monai_spine.data.annotation import read_annotation
    from monai_spine.data.datasets import list_cases

    pts = _write_fake(tmp_path / "aasce", names=("p-1 A AP.jpg", "p-2 A AP.jpg"))
    out = write_aasce_dataset(tmp_path / "ds", tmp_path / "aasce", fractions=(0.0, 0.5, 0.5), seed=0)
    index = list_cases(out)
    assert index["region"] == "ap" and index["training"] == []
    labels = index["validation"] + index["test"]
    assert len(labels) == 2
    for lab in labels:
        ann = read_annotation(lab)
        assert ann.spacing_mm is None and ann.spacing_source == "unknown"
        row = ann.meta["row"]
        np.testing.assert_allclose(ann.keypoints_px.reshape(68, 2), pts[row], atol=0.05)
        assert (tmp_path / "aasce" / "images" / ann.meta["filename"]).samefile(ann.image)


def test_real_aasce_split_sizes(shared_data, tmp_path):
    from monai_spine.data.aasce import ensure_aasce_dataset
    from monai_spine.data.datasets import list_cases

    index = list_cases(ensure_aasce_dataset(tmp_path, shared_data))
    sizes = {s: len(index[s]) for s in ("training", "validation", "test")}
    assert sum(sizes.values()) == 481
    assert sizes == {"training": 336, "validation": 73, "test": 72}
