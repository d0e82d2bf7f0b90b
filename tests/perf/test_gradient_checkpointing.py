"""Gradient checkpointing: same gradients as the plain model, less saved memory, reversible."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch

from lightning_tricks import GradientCheckpointing
from lightning_tricks.functional import apply_gradient_checkpointing, remove_gradient_checkpointing
from tests.helpers import BlockNet, ClassifierModule, ImageDataModule, cpu_trainer, params_equal, state_of


def _grads(model, x, seed=1):
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    model(x).square().mean().backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _saved_bytes(model, x):
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x).sum().backward()
    return total


def test_gradients_equal_plain_model_with_dropout():
    torch.manual_seed(0)
    plain = BlockNet(depth=4, dropout=0.1)
    ckpt = copy.deepcopy(plain)
    assert apply_gradient_checkpointing(ckpt, "ResidualBlock") == [f"backbone.blocks.{i}" for i in range(4)]
    x = torch.randn(4, 3, 8, 8)
    g_plain, g_ckpt = _grads(plain, x), _grads(ckpt, x)
    assert g_plain.keys() == g_ckpt.keys() and len(g_plain) > 0
    for k in g_plain:
        assert torch.equal(g_plain[k], g_ckpt[k]), k
    # the dropout masks really differ between seeds, so the equality above is not trivial
    assert not torch.equal(_grads(plain, x, seed=2)["head.fc.weight"], g_plain["head.fc.weight"])


def test_frozen_stem_and_input_without_grad():
    torch.manual_seed(0)
    plain = BlockNet(depth=3)
    for p in [*plain.backbone.embed.parameters(), *plain.backbone.blocks[0].parameters()]:
        p.requires_grad_(False)
    ckpt = copy.deepcopy(plain)
    apply_gradient_checkpointing(ckpt, "backbone.blocks.*")
    x = torch.randn(2, 3, 8, 8)  # does not require grad; the first checkpointed block is frozen
    g_plain, g_ckpt = _grads(plain, x), _grads(ckpt, x)
    assert "backbone.blocks.1.mlp.0.weight" in g_ckpt and "backbone.blocks.0.mlp.0.weight" not in g_ckpt
    assert all(torch.equal(g_plain[k], g_ckpt[k]) for k in g_plain) and g_plain.keys() == g_ckpt.keys()


def test_saves_fewer_bytes_and_is_reversible():
    torch.manual_seed(0)
    model = BlockNet(depth=6, dim=32)
    x = torch.randn(8, 3, 8, 8)
    plain_bytes = _saved_bytes(model, x)
    apply_gradient_checkpointing(model, "ResidualBlock")
    assert _saved_bytes(model, x) < 0.5 * plain_bytes
    assert remove_gradient_checkpointing(model) == [f"backbone.blocks.{i}" for i in range(6)]
    assert _saved_bytes(model, x) == plain_bytes
    assert all("forward" not in m.__dict__ for m in model.modules())


def test_eval_and_no_grad_run_the_plain_forward():
    model = BlockNet(depth=2)
    apply_gradient_checkpointing(model, "ResidualBlock")
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        out = model(x)
    model.eval()
    assert torch.equal(model(x), out)


def test_nested_matches_and_idempotence_and_pickle():
    model = BlockNet(depth=2)
    first = apply_gradient_checkpointing(model, ["backbone.blocks", "ResidualBlock"])
    assert first == ["backbone.blocks"]  # the outermost match only
    assert apply_gradient_checkpointing(model, "backbone.blocks") == []
    clone = pickle.loads(pickle.dumps(model))
    assert clone.backbone.blocks.forward.module is clone.backbone.blocks
    assert list(clone.state_dict()) == list(model.state_dict())


def test_error_lists_available_names():
    with pytest.raises(ValueError, match=r"`targets`.*available names: backbone.*ResidualBlock"):
        apply_gradient_checkpointing(BlockNet(), "encodr")
    with pytest.raises(TypeError, match="targets"):
        GradientCheckpointing(targets=3)


def _fit(callbacks, freeze: bool):
    import lightning as L

    L.seed_everything(0, verbose=False)
    model = ClassifierModule(arch="blocks")
    if freeze:
        model.backbone.embed.requires_grad_(False)
    trainer = cpu_trainer(callbacks=callbacks, max_epochs=1)
    trainer.fit(model, datamodule=ImageDataModule())
    return model


@pytest.mark.parametrize("freeze", [False, True])
def test_callback_fit_matches_plain_fit_and_unwraps(freeze):
    seen = {}

    class Probe(GradientCheckpointing):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen["wrapped"] = type(pl_module.backbone.blocks[0].__dict__.get("forward")).__name__

    plain = _fit([], freeze)
    ckpt = _fit([Probe(targets="backbone.blocks.*")], freeze)
    assert seen["wrapped"] == "CheckpointedForward"
    assert not params_equal(state_of(plain), state_of(ckpt))
    assert all("forward" not in m.__dict__ for m in ckpt.modules())


def test_callback_bad_target_fails_in_setup():
    with pytest.raises(ValueError, match="available names"):
        _fit([GradientCheckpointing(targets="encodr")], freeze=False)
