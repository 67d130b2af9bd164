from __future__ import annotations

import numpy as np
import pytest
import torch

from monai_spine.engines.checkpoints import init_from_checkpoint
from monai_spine.engines.regressor import RegressorPostprocess, build_loss, lower_is_better, sqlite_tracking_uri
from monai_spine.inference.model_zoo import load_weights
from monai_spine.losses.gaussian_nll import GaussianNLLLoss, MaskedMSELoss


@pytest.mark.parametrize("variant, cls", [("baseline", MaskedMSELoss), ("CBAM", MaskedMSELoss), ("bayecbam", GaussianNLLLoss)])
def test_build_loss_by_variant(variant, cls):
    assert isinstance(build_loss(variant), cls)


def test_build_loss_unknown_variant_names_the_known_ones():
    with pytest.raises(KeyError, match="bayecbam"):
        build_loss("resnet")


@pytest.mark.parametrize(
    "current, prev, better",
    [(0.5, -1, True), (-2.0, -1, True), (-2.0, -1.5, True), (-1.2, -1.5, False), (3.0, 2.0, False), (2.0, 3.0, True)],
)
def test_lower_is_better_with_negative_losses(current, prev, better):
    assert lower_is_better(current, prev) is better


def test_postprocess_maps_fractions_to_image_pixels_and_sigma():
    # crop 10 (H) x 20 (W) px covering image x in [99.5, 139.5], y in [49.5, 69.5]: 2 image px per crop px
    crop_to_image = np.array([[2.0, 0.0, 100.0], [0.0, 2.0, 50.0], [0.0, 0.0, 1.0]])
    pred = torch.tensor([[0.5, 0.5, np.log(0.04), np.log(0.09)], [0.025, 0.05, 0.0, 0.0]])
    data = {"pred": pred, "crop_to_image": crop_to_image, "keypoints_px": np.zeros((2, 2)), "visible": np.ones(2, bool),
            "spacing_mm": np.array([0.1, 0.1]), "image_id": 3}
    out = RegressorPostprocess(spatial_size=(10, 20))(data)
    # frac 0.5 -> crop px (0.5 * 20 - 0.5, 0.5 * 10 - 0.5) = (9.5, 4.5) -> image (119, 59)
    np.testing.assert_allclose(out["pred_px"][0].numpy(), [119.0, 59.0], atol=1e-5)
    # frac (0.025, 0.05) -> crop px (0, 0) -> image (100, 50)
    np.testing.assert_allclose(out["pred_px"][1].numpy(), [100.0, 50.0], atol=1e-5)
    np.testing.assert_allclose(out["sigma_frac"][0].item(), np.sqrt(0.04 + 0.09), rtol=1e-6)
    assert out["gt_image_id"].item() == 3 and out["gt_visible"].dtype == torch.bool


def test_postprocess_rejects_bad_prediction_shape():
    with pytest.raises(ValueError, match="pred must be"):
        RegressorPostprocess()({"pred": torch.zeros(5, 3), "crop_to_image": np.eye(3)})
    with pytest.raises(KeyError, match="crop_to_image"):
        RegressorPostprocess()({"pred": torch.zeros(5, 2)})


def test_init_from_checkpoint_skips_mismatched_shapes_and_loads_the_rest(tmp_path):
    src = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    dst = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 5))  # other number of points
    torch.save({"network": src.state_dict()}, tmp_path / "c.pt")
    init_from_checkpoint(dst, tmp_path / "c.pt")
    torch.testing.assert_close(dst[0].weight, src[0].weight)
    assert dst[1].weight.shape == (5, 4)
    init_from_checkpoint(dst, "")  # no-op
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        init_from_checkpoint(dst, tmp_path / "missing.pt")


def test_load_weights_round_trip_and_missing_file(tmp_path):
    net = torch.nn.Linear(2, 2)
    torch.save(net.state_dict(), tmp_path / "model.pt")
    other = torch.nn.Linear(2, 2)
    load_weights(other, tmp_path / "model.pt")
    torch.testing.assert_close(other.weight, net.weight)
    with pytest.raises(FileNotFoundError, match="train the bundle first"):
        load_weights(other, tmp_path / "nope.pt")


def test_sqlite_tracking_uri_is_absolute_and_creates_the_folder(tmp_path):
    uri = sqlite_tracking_uri(tmp_path / "store")
    assert uri == f"sqlite:///{(tmp_path / 'store' / 'mlruns.db').resolve()}"
    assert (tmp_path / "store").is_dir()


def test_atomic_torch_save_replaces_whole_files_and_leaves_no_temporary(tmp_path):
    from monai_spine.engines.checkpoints import atomic_torch_save

    path = tmp_path / "m" / "state.pt"
    atomic_torch_save({"w": torch.ones(3)}, path)
    atomic_torch_save({"w": torch.zeros(2)}, path)
    loaded = torch.load(path, weights_only=True)
    torch.testing.assert_close(loaded["w"], torch.zeros(2))
    assert [p.name for p in path.parent.iterdir()] == ["state.pt"]


def test_train_state_checkpoint_round_trip_restores_epoch_optimizer_and_scheduler(tmp_path):
    from ignite.engine import Engine, Events

    from monai_spine.engines.checkpoints import TrainStateCheckpoint

    def make():
        torch.manual_seed(0)
        net = torch.nn.Linear(2, 1)
        opt = torch.optim.Adam(net.parameters(), lr=0.1)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)

        def step(engine, batch):
            opt.zero_grad()
            net(torch.ones(1, 2)).sum().backward()
            opt.step()

        eng = Engine(step)
        eng.add_event_handler(Events.EPOCH_COMPLETED, lambda e: sched.step())
        return net, opt, sched, eng

    net, opt, sched, eng = make()
    TrainStateCheckpoint(tmp_path / "s.pt", net, opt, sched).attach(eng)
    eng.run([0, 1, 2], max_epochs=2)  # 2 epochs of 3 iterations
    net2, opt2, sched2, eng2 = make()
    epochs_run = []
    eng2.add_event_handler(Events.EPOCH_COMPLETED, lambda e: epochs_run.append(e.state.epoch))
    handler = TrainStateCheckpoint(tmp_path / "s.pt", net2, opt2, sched2, resume=True)
    handler.attach(eng2)
    eng2.run([0, 1, 2], max_epochs=3)
    assert handler.resumed_from_epoch == 2 and epochs_run == [3]
    assert {int(s["step"]) for s in opt2.state_dict()["state"].values()} == {9}
    assert sched2.last_epoch == 3 and opt2.param_groups[0]["lr"] == pytest.approx(0.1 * 0.5**3)
    with pytest.raises(ValueError, match="beyond max_epochs 1"):
        _, o, s, e = make()
        TrainStateCheckpoint(tmp_path / "s.pt", torch.nn.Linear(2, 1), o, s, resume=True).attach(e)
        e.run([0, 1, 2], max_epochs=1)


def test_init_from_checkpoint_keeps_this_runs_codec(tmp_path):
    from monai_spine.codecs import KeypointRegressionCodec
    from monai_spine.networks.regressor import build_regressor

    src = build_regressor("baseline", 5, width=0.125, fc_features=8,
                          codec=KeypointRegressionCodec(5, np.full((5, 2), 0.3), np.full((5, 2), 0.1)))
    torch.save(src.state_dict(), tmp_path / "cervical.pt")
    dst = build_regressor("baseline", 5, width=0.125, fc_features=8,
                          codec=KeypointRegressionCodec(5, np.full((5, 2), 0.6), np.full((5, 2), 0.05)))
    init_from_checkpoint(dst, tmp_path / "cervical.pt")
    assert torch.equal(dst.regressor_out.weight, src.regressor_out.weight)  # the weights transfer
    assert torch.allclose(dst.codec.mean_frac, torch.full((5, 2), 0.6))  # the codec does not


def test_fit_codec_with_flips_fits_the_mirrored_targets_too():
    from monai_spine.engines.regressor import fit_codec

    items = [{"kp": np.array([[0.2, 0.4], [0.9, 0.5]])}, {"kp": np.array([[0.3, 0.6], [0.8, 0.5]])}]
    tf = lambda it: {"keypoints_frac": it["kp"], "visible": np.ones(2, bool)}  # noqa: E731
    plain = fit_codec(items, tf, 2)
    np.testing.assert_allclose(plain.mean_frac.numpy(), [[0.25, 0.5], [0.85, 0.5]], atol=1e-6)
    flipped = fit_codec(items, tf, 2, flip_prob=0.5, flip_perm=[1, 0])
    # point 0 now also takes point 1's mirrored x values 0.1 and 0.2: mean x (0.2 + 0.3 + 0.1 + 0.2) / 4
    np.testing.assert_allclose(flipped.mean_frac.numpy()[:, 0], [0.2, 0.8], atol=1e-6)
    with pytest.raises(ValueError, match="flip_perm"):
        fit_codec(items, tf, 2, flip_prob=0.5)
