"""grad_cam (functional) and ClassActivationMaps (callback)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightning_tricks.functional.inspect.grad_cam import grad_cam


def small_cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.Conv2d(6, 8, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 5),
    )


def reference_cam(model: nn.Module, x: torch.Tensor, cut: int, targets: torch.Tensor | None) -> torch.Tensor:
    """The formula written out directly: split the Sequential at `cut`."""
    model = model.eval()
    feats = model[:cut](x).detach().requires_grad_(True)
    logits = model[cut:](feats)
    t = logits.argmax(1) if targets is None else targets
    score = logits[torch.arange(len(x)), t].sum()
    (g,) = torch.autograd.grad(score, feats)
    w = g.mean(dim=(2, 3))  # (B, K)
    cam = torch.relu(torch.einsum("bk,bkhw->bhw", w, feats.detach()))
    cam = F.interpolate(cam[:, None], size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    out = []
    for m in cam:
        lo, hi = m.min(), m.max()
        out.append((m - lo) / (hi - lo) if hi > lo else torch.zeros_like(m))
    return torch.stack(out)


@pytest.mark.parametrize("targets", [None, 3, [0, 1, 2, 3, 4, 0]])
def test_matches_direct_formula(targets):
    model = small_cnn()
    x = torch.randn(6, 3, 12, 10)
    t = None if targets is None else torch.as_tensor(targets).expand(6)
    expected = reference_cam(small_cnn(), x, 5, t)
    cams = grad_cam(model, x, "4", targets=targets)
    assert cams.shape == (6, 12, 10)
    torch.testing.assert_close(cams, expected, atol=1e-5, rtol=1e-5)
    assert float(cams.min()) >= 0.0 and float(cams.max()) <= 1.0
    assert (cams.flatten(1).amax(1) == 1).sum() >= 1  # normalised per image


def test_leaves_model_untouched():
    model = small_cnn().train()
    model[0].weight.requires_grad_(False)
    grads = {}
    for n, p in model.named_parameters():
        if p.requires_grad:
            p.grad = torch.full_like(p, 0.25)
            grads[n] = p.grad
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    x = torch.randn(4, 3, 8, 8)
    rng = torch.get_rng_state()
    grad_cam(model, x, "3")
    assert all(m.training for m in model.modules())
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    for n, p in model.named_parameters():
        assert p.grad is grads.get(n)
        if p.grad is not None:
            assert bool((p.grad == 0.25).all())
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BN running stats too
    assert torch.equal(torch.get_rng_state(), rng)
    assert not model[3]._forward_hooks


def test_works_with_frozen_model_and_no_grad_context():
    model = small_cnn()
    for p in model.parameters():
        p.requires_grad_(False)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        cams = grad_cam(model, x, "4")
    torch.testing.assert_close(cams, reference_cam(small_cnn(), x, 5, None), atol=1e-5, rtol=1e-5)


def test_constant_map_is_zero():
    # a layer whose weighted map is zero everywhere: min-max of a constant gives zeros, not NaN
    model = small_cnn()
    with torch.no_grad():
        model[8].weight.zero_()
    cams = grad_cam(model, torch.randn(2, 3, 8, 8), "3")
    assert torch.equal(cams, torch.zeros(2, 8, 8))


def test_layer_without_spatial_dims_says_why():
    model = small_cnn()
    with pytest.raises(ValueError, match=r"`layer` '7'.*\(B, C, H, W\)"):
        grad_cam(model, torch.randn(2, 3, 8, 8), "7")
    assert not model[7]._forward_hooks


def test_bad_arguments():
    model = small_cnn()
    x = torch.randn(2, 3, 8, 8)
    with pytest.raises(ValueError, match="`layer` names no submodule 'conv'"):
        grad_cam(model, x, "conv")
    with pytest.raises(ValueError, match="exactly one"):
        grad_cam(model, x, "Conv2d")
    with pytest.raises(ValueError, match=r"`targets` must lie in \[0, 5\)"):
        grad_cam(model, x, "3", targets=5)
    with pytest.raises(ValueError, match="one per image"):
        grad_cam(model, x, "3", targets=[1, 2, 3])
    with pytest.raises(TypeError, match="`x` must be"):
        grad_cam(model, torch.randn(3, 8, 8), "3")


@pytest.mark.parametrize(
    "name, layer", [("resnet", "resnet.encoder.stages.1"), ("convnext", "convnext.encoder.stages.0")]
)
def test_hf_models(name, layer):
    from tests.helpers.zoo import IMAGE_SIZE, ZOO

    torch.manual_seed(0)
    model = ZOO[name]()
    x = torch.randn(3, 3, IMAGE_SIZE, IMAGE_SIZE)
    model.train()
    cams = grad_cam(model, x, layer)
    assert cams.shape == (3, IMAGE_SIZE, IMAGE_SIZE)
    assert torch.isfinite(cams).all() and float(cams.min()) >= 0 and float(cams.max()) <= 1
    assert model.training and all(p.grad is None for p in model.parameters())
    # the logit explained is the predicted one: explaining it explicitly gives the same maps
    with torch.no_grad():
        pred = model.eval()(pixel_values=x).logits.argmax(1)
    model.train()
    torch.testing.assert_close(grad_cam(model, x, layer, targets=pred), cams)


# ----------------------------------------------------------------------------- the callback


def _fit(callbacks, tmp_path, logger=False, max_epochs=2, seed=0, **kw):
    import lightning as L

    from tests.helpers import ClassifierModule, ImageDataModule, cpu_trainer

    L.seed_everything(seed, verbose=False)
    model = ClassifierModule("cnn")
    trainer = cpu_trainer(
        max_epochs=max_epochs, callbacks=callbacks, logger=logger, default_root_dir=tmp_path, **kw
    )
    trainer.fit(model, datamodule=ImageDataModule(n_train=32, n_val=16, batch_size=8, shuffle=True))
    return model


def test_callback_writes_pngs_and_leaves_training_untouched(tmp_path):
    from lightning_tricks import ClassActivationMaps
    from tests.helpers import state_of

    plain = state_of(_fit([], tmp_path / "plain"), params_only=False)
    cb = ClassActivationMaps(layer="backbone.1", num_images=3, every_n_epochs=2)
    with pytest.warns(UserWarning, match="PNG files"):
        model = _fit([cb], tmp_path / "cam", max_epochs=3)
    again = state_of(_fit([], tmp_path / "plain3", max_epochs=3), params_only=False)
    assert all(torch.equal(again[k], v) for k, v in state_of(model, params_only=False).items())
    assert plain  # the 2-epoch run exists; the 3-epoch run is the one compared
    files = sorted(p.name for p in (tmp_path / "cam" / "class_activation_maps").iterdir())
    assert files == ["backbone.1_epoch001_step000008.png"]  # every 2nd epoch only
    assert cb.last_maps is not None and cb.last_maps.shape == (3, 8, 8)
    assert cb.sample is not None and cb.sample.shape == (3, 3, 8, 8)
    # the sample is the first validation images, not training images
    from tests.helpers.data import make_image_dataset

    val = make_image_dataset(16, seed=1)
    assert torch.equal(cb.sample, torch.stack([val[i][0] for i in range(3)]))


def test_callback_logs_to_tensorboard(tmp_path):
    from lightning.pytorch.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from lightning_tricks import ClassActivationMaps

    logger = TensorBoardLogger(tmp_path, name="tb")
    _fit([ClassActivationMaps(layer="backbone.0", num_images=2)], tmp_path, logger=logger)
    acc = EventAccumulator(logger.log_dir, size_guidance={"images": 0})
    acc.Reload()
    imgs = acc.Images("class_activation_maps/backbone.0")
    assert [i.step for i in imgs] == [4, 8]
    assert (imgs[0].height, imgs[0].width) == (2 * 8 + 1, 2 * 8 + 1)


def test_callback_layer_errors(tmp_path):
    from lightning_tricks import ClassActivationMaps

    with pytest.raises(ValueError, match=r"`layer` names no submodule 'backbone\.7'"):
        _fit([ClassActivationMaps(layer="backbone.7")], tmp_path, max_epochs=1)
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        _fit([ClassActivationMaps(layer="head.2", on_error="raise")], tmp_path, max_epochs=1)
    cb = ClassActivationMaps(layer="head.2")
    with pytest.warns(UserWarning, match="No more heatmaps"):
        _fit([cb], tmp_path, max_epochs=2)
    with pytest.raises(ValueError, match="`num_images` must be an int >= 1"):
        ClassActivationMaps(layer="x", num_images=0)


def test_callback_on_hf_resnet_module(tmp_path):
    from lightning_tricks import ClassActivationMaps
    from tests.helpers import cpu_trainer
    from tests.helpers.zoo import IMAGE_SIZE, zoo_loaders, zoo_module

    cb = ClassActivationMaps(layer="model.resnet.encoder.stages.1", num_images=2, on_error="raise")
    trainer = cpu_trainer(
        max_epochs=1, callbacks=[cb], default_root_dir=tmp_path, limit_train_batches=1, limit_val_batches=1
    )
    with pytest.warns(UserWarning, match="PNG files"):
        trainer.fit(zoo_module("resnet"), *zoo_loaders("resnet"))
    assert cb.last_maps is not None and cb.last_maps.shape == (2, IMAGE_SIZE, IMAGE_SIZE)
    assert len(list((tmp_path / "class_activation_maps").glob("*.png"))) == 1
