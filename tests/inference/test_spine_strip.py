"""The spine-strip refiner: its spec file, loading checks, and how the detector uses it."""

import json

import numpy as np
import pytest
import torch

from monai_spine.inference.spine_strip import SpineStripRefiner, SpineStripSpec

LEVELS = ("C3", "C4", "C5", "C6", "C7")
SMALL = dict(rows=64, width=16, features=(4, 4, 8, 8, 16, 4))


def _film_and_centres():
    rng = np.random.default_rng(0)
    film = rng.uniform(0, 1000, (300, 200)).astype(np.float32)
    return film, np.c_[np.full(5, 100.0), 80.0 + 35.0 * np.arange(5)]


def test_spec_round_trip(tmp_path):
    spec = SpineStripSpec(levels=LEVELS, score_threshold=0.2, decode_kwargs={"unary_weight": 1.5},
                          meta={"training_command": "x"}, **SMALL)
    spec.save(tmp_path)
    back = SpineStripSpec.load(tmp_path)
    assert back.to_dict() == spec.to_dict()
    assert back.features == SMALL["features"] and back.levels == LEVELS


@pytest.mark.parametrize("change, err, match", [
    ({"format": "other"}, ValueError, "not a spine-strip spec"),
    ({"rows": None}, KeyError, "misses 'rows'"),
])
def test_spec_rejects(tmp_path, change, err, match):
    d = SpineStripSpec(levels=LEVELS, **SMALL).to_dict()
    for k, v in change.items():
        if v is None:
            d.pop(k)
        else:
            d[k] = v
    (tmp_path / "spine_strip_model.json").write_text(json.dumps(d))
    with pytest.raises(err, match=match):
        SpineStripSpec.load(tmp_path)


def test_spec_rejects_bad_features():
    with pytest.raises(ValueError, match="six ints"):
        SpineStripSpec(levels=LEVELS, features=(8, 8))


def test_from_dir_missing_and_mismatched_weights(tmp_path):
    spec = SpineStripSpec(levels=LEVELS, **SMALL)
    spec.save(tmp_path)
    assert SpineStripRefiner.exists(tmp_path)
    with pytest.raises(FileNotFoundError, match="spine_strip.pt"):
        SpineStripRefiner.from_dir(tmp_path)
    other = SpineStripSpec(levels=LEVELS, rows=64, width=16, features=(8, 8, 8, 8, 16, 8)).build_network()
    torch.save(other.state_dict(), tmp_path / "spine_strip.pt")
    with pytest.raises(ValueError, match="do not match the spine-strip spec"):
        SpineStripRefiner.from_dir(tmp_path)


def test_refine_returns_every_level_on_the_film(tmp_path):
    spec = SpineStripSpec(levels=LEVELS, **SMALL)
    torch.manual_seed(0)
    ref = SpineStripRefiner(spec.build_network(), spec)
    film, centres = _film_and_centres()
    out, heat = ref.refine(film[None], centres, np.ones(4))
    assert out.shape == (5, 2) and heat.shape == (5,) and np.isfinite(out).all()
    assert np.all(np.diff(out[:, 1]) > 0)  # the levels stay in order down the spine
    assert np.all((heat >= 0) & (heat <= 1))


def test_refine_rejects_centres_of_another_region():
    spec = SpineStripSpec(levels=LEVELS, **SMALL)
    ref = SpineStripRefiner(spec.build_network(), spec)
    film, centres = _film_and_centres()
    with pytest.raises(ValueError, match=r"centres must be \(5, 2\) for levels C3-C7"):
        ref.refine(film, centres[:4], np.ones(4))


def test_detector_refuses_a_refiner_of_other_levels():
    from monai_spine.inference.detector import DetectorSpec, VertebraDetector

    det_spec = DetectorSpec(region="cervical", spatial_size=(64, 64), features=(4, 4, 4, 4, 4, 4))
    spec = SpineStripSpec(levels=("L1", "L2", "L3", "L4", "L5"), **SMALL)
    with pytest.raises(ValueError, match="spine-strip refiner's levels"):
        VertebraDetector(det_spec.build_network(), det_spec, strip=SpineStripRefiner(spec.build_network(), spec))
