"""Training the spine-strip refiner: augmented samples and a network that learns its films."""

import numpy as np
import pytest
import torch

from monai_spine.data.datasets import ensure_synthetic, list_cases
from monai_spine.data.keypoints import get_region
from monai_spine.engines.spine_strip import load_strip_films, strip_training_sample, train_spine_strip
from monai_spine.inference.spine_strip import SpineStripRefiner, SpineStripSpec

LEVELS = get_region("cervical").levels


@pytest.fixture(scope="module")
def films(tmp_path_factory):
    folder = ensure_synthetic(tmp_path_factory.mktemp("syn"), "cervical", n=3, seed=1, hard_case_rate=0.0, size=(512, 512))
    return list_cases(folder)["cases"]


def _spec():
    return SpineStripSpec(levels=LEVELS, rows=128, width=32, features=(8, 8, 16, 16, 32, 8), sigma_px=2.0)


def test_training_sample_has_one_peak_per_level(films):
    film, centres = load_strip_films(films[:1], LEVELS, log=lambda m: None)[0]
    assert film.dtype == np.float16 and centres.shape == (len(LEVELS), 2) and np.isfinite(centres).all()
    x, y = strip_training_sample(film, centres, _spec(), np.random.default_rng(0))
    assert x.shape == (128, 32) and y.shape == (3, 128, 32) and x.dtype == y.dtype == np.float32
    assert (y[0] == 1.0).sum() == len(LEVELS) and 0.0 <= x.min() and x.max() <= 1.0
    # the level index grows down the strip and is 0 .. 4 at the peaks' rows
    rows = np.argwhere(y[0] == 1.0)[:, 0]
    np.testing.assert_allclose(y[1, rows, 16], np.arange(len(LEVELS)), atol=0.15)
    assert np.all(np.diff(y[1, :, 16]) > 0) and (y[2] == 1.0).all() and y[1, 0, 0] < -1.0


def test_load_strip_films_leaves_out_films_without_levels(films):
    said = []
    assert load_strip_films(films[:1], ("T1", "T2", "T3"), log=said.append) == []
    assert "fewer than 3 annotated levels" in said[0]


def test_refiner_learns_its_training_films(films, tmp_path):
    """A few hundred CPU steps: the strip's peaks land on the annotated centres of its films."""
    torch.manual_seed(0)
    spec = train_spine_strip(tmp_path, films, _spec(), epochs=120, batch_size=3, learning_rate=3e-3, log=lambda m: None)
    assert spec.meta["loss_per_epoch"][-1] < 0.5 * spec.meta["loss_per_epoch"][0]
    trained = SpineStripRefiner.from_dir(tmp_path)
    untrained = SpineStripRefiner(_spec().build_network(), _spec())
    errors = {}
    for name, ref in (("trained", trained), ("untrained", untrained)):
        e = []
        for film, centres in load_strip_films(films, LEVELS, log=lambda m: None):
            coarse = centres + np.array([6.0, 0.0])  # a coarse spine a little to the side
            out, _ = ref.refine(film.astype(np.float32), coarse, np.ones(len(LEVELS) - 1))
            spacing = np.median(np.hypot(*np.diff(centres, axis=0).T))
            e += list(np.hypot(*(out - centres).T) / spacing)
        errors[name] = float(np.median(e))
    assert errors["trained"] < 0.15 < errors["untrained"]


def test_training_sample_survives_a_folding_arc():
    """The last two annotated centres 1 px apart: jitter folds the arc; the sample is drawn again or left
    without a level target, never an error."""
    film = np.random.default_rng(0).uniform(0, 1, (400, 200)).astype(np.float16)
    c = np.c_[np.full(5, 100.0), [80.0, 140.0, 200.0, 260.0, 261.0]]
    for seed in range(20):
        _, y = strip_training_sample(film, c, _spec(), np.random.default_rng(seed))
        assert (y[2] == 0).all() or np.all(np.diff(y[1, :, 16]) > 0)


def test_training_on_from_an_earlier_refiner(films, tmp_path):
    first = tmp_path / "first"
    train_spine_strip(first, films[:1], _spec(), epochs=1, batch_size=1, log=lambda m: None)
    spec = train_spine_strip(tmp_path / "second", films[:1], _spec(), epochs=1, batch_size=1, learning_rate=0.0,
                             log=lambda m: None, init_from=first)
    assert spec.meta["initialised_from"]["folder"] == str(first) and spec.meta["initialised_from"]["epochs"] == 1
    a, b = SpineStripRefiner.from_dir(first).network, SpineStripRefiner.from_dir(tmp_path / "second").network
    # learning rate 0: the second run keeps the first run's weights
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    other = SpineStripSpec(levels=LEVELS, rows=64, width=32, features=(8, 8, 16, 16, 32, 8))
    with pytest.raises(ValueError, match="another size"):
        train_spine_strip(tmp_path / "third", films[:1], other, epochs=1, log=lambda m: None, init_from=first)


def test_training_with_worker_processes_records_where_it_ran(films, tmp_path):
    spec = train_spine_strip(tmp_path, films[:2], _spec(), epochs=2, batch_size=1, log=lambda m: None, num_workers=2)
    assert spec.meta["device"] == "cpu" and spec.meta["num_workers"] == 2
    assert len(spec.meta["loss_per_epoch"]) == 2 and np.isfinite(spec.meta["loss_per_epoch"]).all()
    assert next(SpineStripRefiner.from_dir(tmp_path).network.parameters()).device.type == "cpu"
    with pytest.raises(ValueError, match="training device"):
        train_spine_strip(tmp_path / "x", films[:1], _spec(), epochs=1, log=lambda m: None, device="gpu")
