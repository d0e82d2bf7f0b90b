"""visualize_filters (functional) and FilterVisualizer (callback)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightning_tricks.functional.inspect.filter_visualizer import layer_channels, visualize_filters


@pytest.fixture(scope="module")
def digits_model():
    """A tiny CNN trained for a few Adam steps on scikit-learn's 8x8 digits (pixels in [0, 1])."""
    datasets = pytest.importorskip("sklearn.datasets")
    d = datasets.load_digits()
    x = torch.tensor(d.images, dtype=torch.float32)[:, None] / 16.0
    y = torch.tensor(d.target)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(8, 16, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(16, 10),
        )
        opt = torch.optim.Adam(model.parameters(), 0.02)
        for _ in range(200):
            i = torch.randint(0, 1500, (64,))
            loss = F.cross_entropy(model(x[i]), y[i])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.zero_grad(set_to_none=True)
    model.eval()
    return model, x[1500:], y[1500:]


def channel_means(model: nn.Module, layer: int, x: torch.Tensor) -> torch.Tensor:
    """(B, C) spatial mean of every channel of `model[layer]`'s output."""
    with torch.no_grad():
        return model[: layer + 1](x).mean(dim=(2, 3))


@pytest.mark.parametrize("color", ["decorrelated", "clamped"])
def test_generated_images_excite_their_channel(digits_model, color):
    model, x_val, y_val = digits_model
    with torch.no_grad():
        assert (model(x_val).argmax(1) == y_val).float().mean() > 0.5  # it learned something
    val = channel_means(model, 3, x_val).mean(0)
    channels = [c for c in range(16) if val[c] > 0]  # dead ReLU channels cannot be excited
    assert len(channels) >= 6
    imgs = visualize_filters(
        model, "3", channels, size=8, in_channels=1, steps=32, rounds=2, lr=0.3, jitter=1, color=color
    )
    assert imgs.shape == (len(channels), 1, 8, 8) and float(imgs.min()) >= 0 and float(imgs.max()) <= 1
    idx = torch.arange(len(channels))
    act = channel_means(model, 3, imgs)[idx, channels]
    noise = torch.rand(len(channels), 1, 8, 8, generator=torch.Generator().manual_seed(1))
    act_noise = channel_means(model, 3, noise)[idx, channels]
    vs_noise = act / act_noise.clamp_min(1e-6)
    vs_val = act / val[channels]
    # measured (2-core CPU): median ~8x noise, ~3.2x the average validation image
    assert float(vs_noise.median()) > 2.0, vs_noise
    assert float(vs_val.median()) > 2.0, vs_val
    assert bool((vs_val > 1.0).all()), vs_val
    # each image excites its own channel more than the other images do (it is specific)
    own = channel_means(model, 3, imgs)[:, channels]
    assert (own.argmax(0) == idx).float().mean() >= 0.5


def test_leaves_model_and_rng_untouched(digits_model):
    model, _, _ = digits_model
    model.train()
    model[0].weight.requires_grad_(False)
    try:
        marker = torch.full_like(model[2].weight, 0.5)
        model[2].weight.grad = marker
        before = {k: v.clone() for k, v in model.state_dict().items()}
        rng = torch.get_rng_state()
        a = visualize_filters(model, "3", [0, 1], size=8, in_channels=1, steps=3, rounds=2, seed=3)
        assert torch.equal(torch.get_rng_state(), rng)
        assert all(m.training for m in model.modules())
        assert not model[0].weight.requires_grad and model[2].weight.requires_grad
        assert model[2].weight.grad is marker and bool((marker == 0.5).all())
        assert model[0].weight.grad is None
        assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
        assert not any(m._forward_hooks for m in model.modules())
        b = visualize_filters(model, "3", [0, 1], size=8, in_channels=1, steps=3, rounds=2, seed=3)
        assert torch.equal(a, b)  # the seed decides
    finally:
        model[0].weight.requires_grad_(True)
        model[2].weight.grad = None
        model.eval()


def test_bad_arguments(digits_model):
    model, _, _ = digits_model
    kw = {"size": 8, "in_channels": 1, "steps": 1}
    with pytest.raises(ValueError, match=r"`channels` must lie in \[0, 16\) for `layer` '3'; got \[16\]"):
        visualize_filters(model, "3", 16, **kw)
    with pytest.raises(TypeError, match="`channels`"):
        visualize_filters(model, "3", "0", **kw)
    with pytest.raises(ValueError, match="`layer` names no submodule 'conv'"):
        visualize_filters(model, "conv", 0, **kw)
    with pytest.raises(ValueError, match="`color` must be one of"):
        visualize_filters(model, "3", 0, color="rgb", **kw)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="`std`"):
        visualize_filters(model, "3", 0, std=[0.0], **kw)
    assert layer_channels(model, "3", (1, 8, 8)) == 16


def test_hf_convnext_stage_rgb_decorrelated():
    from tests.helpers.zoo import ZOO

    torch.manual_seed(0)
    model = ZOO["convnext"]()
    imgs = visualize_filters(model, "convnext.encoder.stages.1", [0, 5], size=16, steps=2, rounds=2)
    assert imgs.shape == (2, 3, 16, 16) and torch.isfinite(imgs).all()
    assert layer_channels(model, "convnext.encoder.stages.1", (3, 32, 32)) == 16
    assert all(p.grad is None for p in model.parameters())


# ----------------------------------------------------------------------------- the callback


def _fit(callbacks, tmp_path, logger=False, max_epochs=2):
    import lightning as L

    from tests.helpers import ClassifierModule, ImageDataModule, cpu_trainer

    L.seed_everything(0, verbose=False)
    model = ClassifierModule("cnn")
    trainer = cpu_trainer(
        max_epochs=max_epochs, callbacks=callbacks, logger=logger, default_root_dir=tmp_path
    )
    trainer.fit(model, datamodule=ImageDataModule(n_train=32, n_val=16, batch_size=8, shuffle=True))
    return model


def test_callback_leaves_training_untouched_and_writes_pngs(tmp_path):
    from lightning_tricks import FilterVisualizer
    from tests.helpers import state_of

    cb = FilterVisualizer(layers=["backbone.0", "backbone.1.2"], channels=3, steps=4, rounds=2)
    with pytest.warns(UserWarning, match="PNG files"):
        model = _fit([cb], tmp_path / "fv")
    plain = _fit([], tmp_path / "plain")
    a, b = state_of(model, params_only=False), state_of(plain, params_only=False)
    assert all(torch.equal(a[k], b[k]) for k in a)
    files = sorted(p.name for p in (tmp_path / "fv" / "filter_visualizer").iterdir())
    assert files == [
        "backbone.0_epoch000_step000004.png",
        "backbone.0_epoch001_step000008.png",
        "backbone.1.2_epoch000_step000004.png",
        "backbone.1.2_epoch001_step000008.png",
    ]
    assert cb.last_images["backbone.1.2"].shape == (3, 3, 8, 8)


def test_callback_logs_to_tensorboard(tmp_path):
    from lightning.pytorch.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from lightning_tricks import FilterVisualizer

    logger = TensorBoardLogger(tmp_path, name="tb")
    cb = FilterVisualizer(layers="backbone.1.0", channels=[1, 4], every_n_epochs=2, steps=2, size=12)
    _fit([cb], tmp_path, logger=logger)
    acc = EventAccumulator(logger.log_dir, size_guidance={"images": 0})
    acc.Reload()
    (img,) = acc.Images("filter_visualizer/backbone.1.0")
    assert (img.step, img.height, img.width) == (8, 12, 2 * 12 + 1)


def test_callback_bad_arguments(tmp_path):
    from lightning_tricks import FilterVisualizer

    with pytest.raises(ValueError, match=r"`layers` names no submodule 'backbone\.9'"):
        _fit([FilterVisualizer(layers="backbone.9")], tmp_path, max_epochs=1)
    with pytest.raises(ValueError, match=r"`channels` must lie in \[0, 8\)"):
        _fit(
            [FilterVisualizer(layers="backbone.0.0", channels=[9], steps=1, on_error="raise")],
            tmp_path,
            max_epochs=1,
        )
    with pytest.raises(TypeError, match="`channels`"):
        FilterVisualizer(layers="a", channels="3")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="`color` must be one of"):
        FilterVisualizer(layers="a", color="hsv")  # type: ignore[arg-type]
