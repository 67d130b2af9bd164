"""VertebraDetector: the spec file, decoding through the letterbox affine, checkpoints, and a short training."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from monai_spine.inference.detector import CHECKPOINT_FILE, SPEC_FILE, Detections, DetectorSpec, VertebraDetector
from monai_spine.transforms.detection import CentreHeatmapTarget

TINY = (4, 4, 8, 8, 16, 4)

# net-pixel centres of C3, C4, C6, C7 (C5 absent) in a 64 x 64 letterbox of a 200 x 100 px image:
# x = 3.125 u + 1.0625, y = 3.125 v - 48.9375
NET_C = np.array([[10.3, 20.7], [20.0, 25.0], [np.nan, np.nan], [40.0, 30.0], [50.0, 35.0]])
IMG_C = np.array([[33.25, 15.75], [63.5625, 29.1875], [126.0625, 44.8125], [157.3125, 60.4375]])


class _FixedMaps(torch.nn.Module):
    """Stands in for the network: the logits of a known target, whatever the input."""

    def __init__(self, spatial=(64, 64)):
        super().__init__()
        boxes = np.concatenate([NET_C - [2.0, 1.0], NET_C + [3.0, 1.0]], 1)
        y = CentreHeatmapTarget(spatial, 1.5)(NET_C, boxes)
        hm = np.clip(0.95 * y[:5], 1e-4, None)  # peaks of 0.95: exact Gaussians, no clipping at the top
        out = np.concatenate([np.log(hm / (1 - hm)), y[5:9]])
        self.register_buffer("out", torch.as_tensor(out, dtype=torch.float32))
        self.inputs: list[tuple[int, ...]] = []

    def forward(self, x):
        self.inputs.append(tuple(x.shape))
        return self.out[None].repeat(x.shape[0], 1, 1, 1)


def _detector(**spec_kwargs) -> VertebraDetector:
    spec = DetectorSpec(region="cervical", spatial_size=(64, 64), features=TINY, **spec_kwargs)
    return VertebraDetector(_FixedMaps(), spec)


# ---------------------------------------------------------------------------------------------- spec


def test_spec_round_trips_through_its_file(tmp_path):
    spec = DetectorSpec(region="lumbar", spatial_size=[128, 96], features=TINY, sigma_px=1.5, score_threshold=0.25,
                        decode_method="argmax", meta={"training_images": 3})
    path = spec.save(tmp_path / "models")
    assert path.name == SPEC_FILE
    d = json.loads(path.read_text())
    assert d["levels"] == ["L1", "L2", "L3", "L4", "L5"] and d["checkpoint_file"] == CHECKPOINT_FILE
    back = DetectorSpec.load(tmp_path / "models")
    assert back == spec and back.spatial_size == (128, 96) and back.levels == spec.levels
    assert spec.file_paths(tmp_path / "models") == [str(path)]


@pytest.mark.parametrize(
    "kwargs, match",
    [({"spatial_size": (60, 64)}, "multiples of 16"), ({"features": (4, 4)}, "six"),
     ({"score_threshold": 1.0}, "score_threshold"), ({"region": "thoracic"}, "region"),
     ({"decode_method": "nms"}, "decode_method"), ({"intensity_percentiles": (99, 1)}, "percentiles")],
)
def test_spec_refuses_bad_values(kwargs, match):
    with pytest.raises((ValueError, KeyError), match=match):
        DetectorSpec(**kwargs)


def test_spec_file_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="train the detector"):
        DetectorSpec.load(tmp_path)
    bad = tmp_path / SPEC_FILE
    bad.write_text(json.dumps({**DetectorSpec().to_dict(), "levels": ["C3"]}))
    with pytest.raises(ValueError, match=str(bad)):
        DetectorSpec.load(bad)
    bad.write_text(json.dumps({"format": "other"}))
    with pytest.raises(ValueError, match="monai-spine-detector"):
        DetectorSpec.load(bad)


# ---------------------------------------------------------------------------------------------- detection


@pytest.mark.parametrize("method", ["sequence", "argmax"])
def test_detect_maps_decoded_centres_back_to_image_pixels(method):
    det = _detector(decode_method=method)
    image = np.random.default_rng(0).random((1, 100, 200)).astype(np.float32)
    res = det.detect(image, (0.5, 0.5))
    assert det.network.inputs == [(1, 1, 64, 64)]
    levels, centres, boxes, scores = res  # unpacks like the brief's (levels, centres, boxes, scores)
    assert levels == ["C3", "C4", "C6", "C7"] and len(res) == 4
    np.testing.assert_allclose(centres, IMG_C, atol=1e-4)
    # boxes: (-2, -1, +3, +1) net px around each centre, x 3.125 image px per net px
    np.testing.assert_allclose(boxes, np.concatenate([IMG_C - [6.25, 3.125], IMG_C + [9.375, 3.125]], 1), atol=1e-3)
    np.testing.assert_allclose(scores, 0.95, rtol=1e-5)  # the target's nearest pixel is 1, the stub scales it
    np.testing.assert_allclose(res.centres_mm, IMG_C * 0.5, atol=1e-4)
    assert res.spacing_source == "sidecar"
    d = res.to_dict()
    assert [v["level"] for v in d["vertebrae"]] == levels and d["spacing_mm"] == [0.5, 0.5]


def test_detect_without_spacing_and_with_a_2d_image():
    res = _detector().detect(np.random.default_rng(1).random((100, 200)), None)
    assert res.spacing_mm is None and res.spacing_source == "unknown" and res.centres_mm is None
    np.testing.assert_allclose(res.centres_px, IMG_C, atol=1e-4)
    with pytest.raises(ValueError, match="1, H, W"):
        _detector().detect(np.zeros((2, 100, 200), np.float32))


def test_predict_levels_reports_every_level():
    out = _detector().predict_levels(np.random.default_rng(2).random((1, 100, 200)), None, score_threshold=0.5)
    np.testing.assert_array_equal(out["detected"], [True, True, False, True, True])
    assert np.all(np.isnan(out["centres_px"][2])) and out["det_to_image"].shape == (3, 3)


@pytest.mark.parametrize("wrapped", [False, True])
def test_from_checkpoint_loads_weights_and_spec(tmp_path, wrapped):
    spec = DetectorSpec(region="cervical", spatial_size=(32, 32), features=TINY)
    net = spec.build_network()
    spec.save(tmp_path)
    torch.save({"model": net.state_dict()} if wrapped else net.state_dict(), tmp_path / CHECKPOINT_FILE)
    det = VertebraDetector.from_checkpoint(tmp_path)
    for k, v in net.state_dict().items():
        torch.testing.assert_close(det.network.state_dict()[k], v)
    res = det.detect(np.random.default_rng(0).random((1, 40, 30)).astype(np.float32), (0.3, 0.3))
    assert isinstance(res, Detections) and res.centres_px.shape == (len(res), 2) and res.boxes_px.shape == (len(res), 4)
    with pytest.raises(FileNotFoundError, match="train the detector"):
        VertebraDetector.from_checkpoint(tmp_path / "nothing")


# ---------------------------------------------------------------------------------------------- a short training


@pytest.mark.slow
def test_a_short_training_finds_every_vertebra_with_its_level():
    """Memorise two synthetic radiographs (64 x 64 input, 150 steps), then detect on their files end to end.

    Checks the whole chain (boxes from keypoints, letterbox, targets, loss, decoding, the affine back to image
    pixels): every annotated vertebra is found under its own level, centre inside its box. Generalisation to
    unseen radiographs is measured by ``scripts/bench_detector.py``.
    """
    from monai.data import list_data_collate
    from monai.transforms import Compose, EnsureTyped, ScaleIntensityRangePercentilesd
    from monai.utils import set_determinism

    from monai_spine.data.datasets import bundle_splits
    from monai_spine.engines.detector import detector_datalists
    from monai_spine.losses.detection import DetectionLoss
    from monai_spine.transforms.detection import CentreHeatmapTargetd, LetterboxResized
    from monai_spine.transforms.io import LoadXrayd

    set_determinism(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        splits = bundle_splits(None, "cervical", 8, 0, 0.25, (256, 256))
        cases = detector_datalists(splits, "cervical")["training"][:2]
        spec = DetectorSpec(region="cervical", spatial_size=(64, 64), features=(8, 8, 16, 32, 64, 8), sigma_px=1.5)
        prep = Compose([
            LoadXrayd(keys="image"),
            ScaleIntensityRangePercentilesd("image", 0.5, 99.5, 0.0, 1.0, clip=True),
            LetterboxResized("image", spec.spatial_size, point_keys="centres_px", box_keys="boxes_px"),
            CentreHeatmapTargetd("centres_net_px", spec.spatial_size, spec.sigma_px),
            EnsureTyped(["image", "label"], dtype=torch.float32, track_meta=False),
        ])
        batch = list_data_collate([prep(c) for c in cases])
        net = spec.build_network()
        loss_fn, opt = DetectionLoss(), torch.optim.Adam(net.parameters(), 3e-3)
        for _ in range(150):
            loss = loss_fn(net(batch["image"]), batch["label"])
            opt.zero_grad()
            loss.backward()
            opt.step()
        det = VertebraDetector(net, spec)
        for case in cases:
            res = det.detect_file(case["image"])
            assert res.spacing_source == "PixelSpacing"
            present = [lev for lev, p in zip(spec.levels, case["present"]) if p]
            assert res.levels == present
            rows = [spec.levels.index(lev) for lev in res.levels]
            gt_c, gt_b = case["centres_px"][rows], case["boxes_px"][rows]
            c = res.centres_px
            assert np.all((c >= gt_b[:, :2]) & (c <= gt_b[:, 2:]))  # inside its own box
            err_mm = np.linalg.norm((c - gt_c) * np.asarray(res.spacing_mm), axis=1)
            assert err_mm.max() < 2.0
    finally:
        torch.set_num_threads(threads)


# ---------------------------------------------------------------------------------------------- chain detector
PROF16 = tuple(np.linspace(0.8, 1.2, 16))


class PeaksNet(torch.nn.Module):
    """A chain 'network' whose heatmap peaks at fixed net pixels, level channel = the true level."""

    def __init__(self, peaks_net_px, levels, hw):
        super().__init__()
        self.peaks, self.levels, self.hw = np.asarray(peaks_net_px, float), list(levels), hw

    def forward(self, x):
        h, w = self.hw
        out = torch.full((1, 6, h, w), -9.0)
        ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                                indexing="ij")
        heat = torch.zeros(h, w)
        for (px, py), k in zip(self.peaks, self.levels):
            heat = torch.maximum(heat, torch.exp(-((xs - px) ** 2 + (ys - py) ** 2) / 2.0))
            out[0, 1, int(py) - 1 : int(py) + 2, int(px) - 1 : int(px) + 2] = float(np.log((k / 16 + 1e-6) / (1 - k / 16 + 1e-6)))
        p = heat.clamp(1e-6, 1 - 1e-6)
        out[0, 0] = torch.log(p / (1 - p))
        out[0, 2:] = 0.02
        return out


def _chain_spec(**kw):
    return DetectorSpec(region="ap", spatial_size=(128, 64), features=(4, 4, 8, 8, 16, 4), score_threshold=0.2,
                        decode_method="chain", spacing_profile=PROF16, complete=True, **kw)


def test_chain_detector_completes_the_spine_and_flags_inferred_levels():
    cum = np.concatenate([[0.0], np.cumsum(PROF16)])
    peaks = np.stack([np.full(17, 32.0), 10 + 6.5 * cum], -1)
    seen = [k for k in range(17) if k not in (0, 8)]  # T1 and T9 not seen
    det = VertebraDetector(PeaksNet(peaks[seen], seen, (128, 64)), _chain_spec())
    # a 256 x 128 image: the letterbox is a plain factor 2 (net px (u, v) -> image px (2u + 0.5, 2v + 0.5))
    d = det.detect(np.zeros((1, 256, 128), np.float32))
    assert d.levels == list(det.levels)  # every level, in order
    assert d.inferred.tolist() == [k in (0, 8) for k in range(17)]
    assert np.all(d.scores[d.inferred] == 0.0) and np.all(d.scores[~d.inferred] > 0.2)
    np.testing.assert_allclose(d.centres_px[~d.inferred], 2 * peaks[seen] + 0.5, atol=0.5)
    np.testing.assert_allclose(d.centres_px[[0, 8]], 2 * peaks[[0, 8]] + 0.5, atol=1.5)  # placed along the spine
    assert [v["inferred"] for v in d.to_dict()["vertebrae"]] == d.inferred.tolist()
    assert d.warnings == []


@pytest.mark.parametrize("span_range, seen, expect", [
    ((0.2, 0.3), list(range(17)), "span"),  # the spine covers ~83 % of the film: far above 30 % * 1.5
    ((0.6, 0.9), list(range(17)), None),
    (None, [0, 1, 2], "saw only 3 of the 17"),
])
def test_chain_detector_warns_when_the_film_looks_like_another_view(span_range, seen, expect):
    cum = np.concatenate([[0.0], np.cumsum(PROF16)])
    peaks = np.stack([np.full(17, 32.0), 10 + 6.5 * cum], -1)
    det = VertebraDetector(PeaksNet(peaks[seen], seen, (128, 64)), _chain_spec(length_frac_range=span_range))
    d = det.detect(np.zeros((1, 256, 128), np.float32))
    if expect is None:
        assert d.warnings == []
    else:
        assert len(d.warnings) == 1 and expect in d.warnings[0]


class _StubStrip:
    """A spine-strip refiner stand-in: moves every level 3 px right with heat 0.5 (level 4: 0.05), or fails."""

    def __init__(self, fail=False):
        from monai_spine.inference.spine_strip import SpineStripSpec

        self.spec = SpineStripSpec(levels=DetectorSpec(region="ap").levels)
        self.fail = fail
        self.film = None

    def refine(self, image, centres_px, profile, level_y_frac=None, film=None):
        self.film = film
        if self.fail:
            raise ValueError("SpineStrip: the two first (or last) centres coincide")
        heat = np.full(len(centres_px), 0.5)
        heat[4] = 0.05
        return np.asarray(centres_px) + [3.0, 0.0], heat


@pytest.mark.parametrize("fail", [False, True])
def test_chain_detector_with_a_spine_strip_refiner(fail):
    cum = np.concatenate([[0.0], np.cumsum(PROF16)])
    peaks = np.stack([np.full(17, 32.0), 10 + 6.5 * cum], -1)
    coarse = VertebraDetector(PeaksNet(peaks, range(17), (128, 64)), _chain_spec()).detect(np.zeros((1, 256, 128), np.float32))
    det = VertebraDetector(PeaksNet(peaks, range(17), (128, 64)), _chain_spec(), strip=_StubStrip(fail))
    d = det.detect(np.zeros((1, 256, 128), np.float32))
    assert d.levels == list(det.levels)
    if fail:  # the coarse levels, said in a warning
        np.testing.assert_allclose(d.centres_px, coarse.centres_px)
        assert len(d.warnings) == 1 and "coarse levels are kept" in d.warnings[0]
    else:  # the refined centres; boxes moved with them; the level without strip heat is inferred
        np.testing.assert_allclose(d.centres_px, coarse.centres_px + [3.0, 0.0])
        np.testing.assert_allclose(d.boxes_px, coarse.boxes_px + [3.0, 0.0, 3.0, 0.0])
        assert d.inferred.tolist() == [k == 4 for k in range(17)] and d.scores[4] == 0.0 and d.scores[0] == 0.5
        assert d.warnings == []


def test_the_refiner_gets_the_film_scaled_once():
    """The detector scales the film once and hands it to a refiner with the same percentiles; not to one
    whose percentiles differ (it scales its own)."""
    from monai_spine.transforms.intensity import scale_film_intensities

    cum = np.concatenate([[0.0], np.cumsum(PROF16)])
    peaks = np.stack([np.full(17, 32.0), 10 + 6.5 * cum], -1)
    image = np.random.default_rng(0).integers(0, 4096, (1, 256, 128)).astype(np.float32)  # a 12-bit film
    strip = _StubStrip()
    det = VertebraDetector(PeaksNet(peaks, range(17), (128, 64)), _chain_spec(), strip=strip)
    det.detect(image)
    np.testing.assert_array_equal(strip.film, det.scaled_film(image))
    np.testing.assert_allclose(strip.film, scale_film_intensities(image, _chain_spec().intensity_percentiles), atol=1e-6)
    strip.spec.intensity_percentiles = (1.0, 99.0)
    VertebraDetector(PeaksNet(peaks, range(17), (128, 64)), _chain_spec(), strip=strip).detect(image)
    assert strip.film is None


def test_detector_scaling_is_the_refiners_on_integer_films():
    """scaled_film (MONAI's percentile scaling, as the bundle) gives scale_film_intensities' numbers exactly on an
    8-bit film, and to a float32 rounding where the percentiles fall between values (12-bit, float)."""
    from monai_spine.transforms.intensity import scale_film_intensities

    det = _detector()
    rng = np.random.default_rng(1)
    for image, exact in ((rng.integers(0, 256, (1, 97, 61)).astype(np.uint8), True),
                         (rng.integers(0, 4096, (1, 97, 61)).astype(np.uint16), False),
                         (rng.gamma(2.0, 300.0, (97, 61)).astype(np.float32), False)):
        ours = scale_film_intensities(image, det.spec.intensity_percentiles)
        if exact:
            np.testing.assert_array_equal(det.scaled_film(image), ours)
        else:
            np.testing.assert_allclose(det.scaled_film(image), ours, atol=1e-6)
    with pytest.raises(ValueError, match=r"\(1, H, W\)"):
        det.scaled_film(np.zeros((2, 5, 5)))
