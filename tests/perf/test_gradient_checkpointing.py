"""Gradient checkpointing: same gradients as the plain model, less saved memory, reversible;
selective mode; BatchNorm statistics updated once per step; RNG replayed only where needed."""

from __future__ import annotations

import copy
import gc
import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import lightning_tricks.functional.perf.gradient_checkpointing as ckpt_mod
from lightning_tricks import GradientCheckpointing
from lightning_tricks.functional import apply_gradient_checkpointing, remove_gradient_checkpointing
from lightning_tricks.functional.perf._checkpoint_frame import _Frame
from tests.helpers import (
    BlockNet,
    ClassifierModule,
    ImageDataModule,
    SmallCNN,
    cpu_trainer,
    params_equal,
    state_of,
)
from tests.helpers.zoo import hf_bert, hf_convnext, hf_resnet, hf_segformer, hf_vit, image_size
from tests.helpers.zoo_ckpt import GeluMLP, TorchCheckpointed, held_bytes

MODES = ["full", "selective"]


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


@pytest.mark.parametrize("mode", MODES)
def test_gradients_equal_plain_model_with_dropout(mode):
    torch.manual_seed(0)
    plain = BlockNet(depth=4, dropout=0.1)
    ckpt = copy.deepcopy(plain)
    wrapped = apply_gradient_checkpointing(ckpt, "ResidualBlock", mode=mode)
    assert wrapped == [f"backbone.blocks.{i}" for i in range(4)]
    x = torch.randn(4, 3, 8, 8)
    g_plain, g_ckpt = _grads(plain, x), _grads(ckpt, x)
    assert g_plain.keys() == g_ckpt.keys() and len(g_plain) > 0
    for k in g_plain:
        assert torch.equal(g_plain[k], g_ckpt[k]), k
    # the dropout masks really differ between seeds, so the equality above is not trivial
    assert not torch.equal(_grads(plain, x, seed=2)["head.fc.weight"], g_plain["head.fc.weight"])


@pytest.mark.parametrize("mode", MODES)
def test_frozen_stem_and_input_without_grad(mode):
    torch.manual_seed(0)
    plain = BlockNet(depth=3)
    for p in [*plain.backbone.embed.parameters(), *plain.backbone.blocks[0].parameters()]:
        p.requires_grad_(False)
    ckpt = copy.deepcopy(plain)
    apply_gradient_checkpointing(ckpt, "backbone.blocks.*", mode=mode)
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


def _mlp_held_bytes(mode):
    torch.manual_seed(0)
    model = GeluMLP(depth=4, dim=8, hidden=32)
    if mode != "plain":
        apply_gradient_checkpointing(model, "blocks.*", mode=mode)
    x = torch.randn(16, 8)
    return held_bytes(model, lambda m: m(x).square().mean(), exclude=[x])


def test_selective_keeps_matmul_outputs_between_full_and_plain():
    # counted from the live storages, so the outputs cached by selective mode count too
    plain, full, selective = (_mlp_held_bytes(m) for m in ("plain", "full", "selective"))
    assert full <= 0.5 * plain
    # per block: its input (d) and the two matmul outputs (4d + d) of the plain 10d; GELUs recomputed
    assert full < selective <= 0.7 * plain


class _CountOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.counts = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.counts[func] = self.counts.get(func, 0) + 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize(("mode", "matmuls"), [("full", 3), ("selective", 2)])
def test_selective_recomputes_the_activation_but_not_the_matmul(mode, matmuls):
    net = nn.Sequential(nn.Sequential(nn.Linear(4, 4), nn.GELU(), nn.Linear(4, 4)))
    apply_gradient_checkpointing(net, "0", mode=mode)
    with _CountOps() as ops:
        net(torch.randn(2, 4, requires_grad=True)).sum().backward()
    assert ops.counts[torch.ops.aten.gelu.default] == 2  # forward + recomputation, both modes
    assert ops.counts[torch.ops.aten.addmm.default] == matmuls  # full mode recomputes the first matmul


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
    with pytest.raises(ValueError, match=r"`targets` names no submodule 'encodr'; available: backbone, "):
        apply_gradient_checkpointing(BlockNet(), "encodr")
    with pytest.raises(
        ValueError, match=r"`targets` names no submodule 'ResidualBlok'.*did you mean 'ResidualBlock'"
    ):
        apply_gradient_checkpointing(BlockNet(), "ResidualBlok")
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


@pytest.mark.parametrize(("freeze", "mode"), [(False, "full"), (True, "full"), (False, "selective")])
def test_callback_fit_matches_plain_fit_and_unwraps(freeze, mode):
    seen = {}

    class Probe(GradientCheckpointing):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen["wrapped"] = pl_module.backbone.blocks[0].__dict__.get("forward")

    plain = _fit([], freeze)
    ckpt = _fit([Probe(targets="backbone.blocks.*", mode=mode)], freeze)
    assert type(seen["wrapped"]).__name__ == "CheckpointedForward" and seen["wrapped"].mode == mode
    assert not params_equal(state_of(plain), state_of(ckpt))
    assert all("forward" not in m.__dict__ for m in ckpt.modules())


def test_callback_bad_target_fails_in_setup():
    with pytest.raises(ValueError, match="available"):
        _fit([GradientCheckpointing(targets="encodr")], freeze=False)


def test_callback_typo_in_target_suggests_the_near_name():
    with pytest.raises(ValueError) as err:
        _fit([GradientCheckpointing(targets=["bakcbone.*"])], freeze=False)
    assert str(err.value).startswith("`targets` names no submodule 'bakcbone.*'; available: backbone, ")
    assert "did you mean 'backbone" in str(err.value)


def test_every_target_must_match_and_one_message_form_names_the_unmatched_one():
    from lightning_tricks.functional._modules import unknown_module_error

    net = BlockNet()
    with pytest.raises(ValueError) as err:  # the first entry matches, the second is a typo
        apply_gradient_checkpointing(net, ["ResidualBlock", "backbone.blokcs.*"])
    assert str(err.value) == str(unknown_module_error("targets", "backbone.blokcs.*", net))
    assert not any("forward" in m.__dict__ for m in net.modules())  # nothing half-applied


def test_callback_class_name_and_lone_string_targets():
    seen = {}

    class Probe(GradientCheckpointing):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen["wrapped"] = sorted(n for n, m in pl_module.named_modules() if "forward" in m.__dict__)

    _fit([Probe(targets="ResidualBlock")], freeze=False)  # one class name, not its characters
    assert seen["wrapped"] == [f"backbone.blocks.{i}" for i in range(2)]
    _fit([Probe(targets=["head", "backbone.blocks.1"])], freeze=False)
    assert seen["wrapped"] == ["backbone.blocks.1", "head"]


# --------------------------------------------------------------------------- BatchNorm statistics


def _train_then_eval(model, call, steps=3):
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(4, 3, 32, 32, generator=g) for _ in range(steps + 1)]
    model.train()
    for x in xs[:-1]:
        opt.zero_grad()
        call(model, x).square().mean().backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        return call(model, xs[-1])


BN_MODELS = {
    "cnn": (SmallCNN, "backbone.*", lambda m, x: m(x)),
    "hf_resnet": (hf_resnet, "resnet.encoder.stages.*", lambda m, x: m(pixel_values=x).logits),
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("arch", list(BN_MODELS))
def test_batchnorm_statistics_updated_once_per_step(arch, mode):
    build, targets, call = BN_MODELS[arch]
    torch.manual_seed(0)
    plain = build()
    ckpt = copy.deepcopy(plain)
    assert apply_gradient_checkpointing(ckpt, targets, mode=mode)
    out_plain, out_ckpt = _train_then_eval(plain, call), _train_then_eval(ckpt, call)
    buffers_plain, buffers_ckpt = dict(plain.named_buffers()), dict(ckpt.named_buffers())
    assert any(k.endswith("num_batches_tracked") for k in buffers_plain)
    for k, v in buffers_plain.items():
        assert torch.equal(v, buffers_ckpt[k]), k  # running_mean/var and num_batches_tracked
    assert int(buffers_ckpt[next(k for k in buffers_ckpt if k.endswith("num_batches_tracked"))]) == 3
    assert torch.equal(out_plain, out_ckpt)
    assert not params_equal(dict(plain.named_parameters()), dict(ckpt.named_parameters()))


ZOO_BLOCKS = {  # models we did not write: depthwise convolutions, attention through SDPA, Mix-FFN
    "convnext": (hf_convnext, "convnext.encoder.stages.*"),
    "vit": (hf_vit, "vit.layers.*"),
    "segformer": (hf_segformer, "segformer.stages.*.blocks.*"),
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("arch", list(ZOO_BLOCKS))
def test_zoo_blocks_gradients_and_buffers_equal_plain(arch, mode):
    build, targets = ZOO_BLOCKS[arch]
    torch.manual_seed(0)
    plain = build().train()
    ckpt = copy.deepcopy(plain)
    assert apply_gradient_checkpointing(ckpt, targets, mode=mode)
    size = image_size(arch)
    x = torch.randn(2, 3, size, size)
    for model in (plain, ckpt):
        torch.manual_seed(1)
        model(pixel_values=x).logits.square().mean().backward()
    grads = [{n: p.grad for n, p in m.named_parameters() if p.grad is not None} for m in (plain, ckpt)]
    assert grads[0] and not params_equal(*grads)
    assert not params_equal(dict(plain.named_buffers()), dict(ckpt.named_buffers()))


# --------------------------------------------------------------------------- RNG state


@pytest.fixture
def preserve_flags(monkeypatch):
    """The ``preserve_rng_state`` of every (eager) checkpoint call made by the wrappers."""
    flags = []
    real = ckpt_mod.lean_checkpoint

    def spy(*args, **kwargs):
        flags.append(kwargs["preserve_rng_state"])
        return real(*args, **kwargs)

    monkeypatch.setattr(ckpt_mod, "lean_checkpoint", spy)
    return flags


class _FunctionalDropoutBlock(nn.Module):
    """Draws random numbers with no dropout module and no "drop" attribute."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x):
        return F.dropout(self.fc(x), 0.5, self.training)


def _two_steps_equal(plain, ckpt, x, call=lambda m, x: m(x)):
    for seed in (1, 2):
        a, b = (list(_grads_of(m, x, seed, call).values()) for m in (plain, ckpt))
        assert len(a) == len(b) > 0 and all(torch.equal(u, v) for u, v in zip(a, b)), seed


def _grads_of(model, x, seed, call):
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    call(model, x).square().mean().backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("mode", MODES)
def test_rng_state_replayed_only_for_blocks_that_can_draw(mode, preserve_flags):
    x = torch.randn(4, 8)
    deterministic = GeluMLP(depth=2, dim=8, hidden=16)
    apply_gradient_checkpointing(deterministic, "blocks.*", mode=mode)
    for _ in range(2):
        deterministic(x).sum().backward()
    # the first call of each block replays anyway and checks that nothing was drawn
    assert preserve_flags == [True, True, False, False]

    preserve_flags.clear()
    torch.manual_seed(0)
    plain = nn.Sequential(_FunctionalDropoutBlock(), _FunctionalDropoutBlock())
    ckpt = copy.deepcopy(plain)
    apply_gradient_checkpointing(ckpt, "*", mode=mode)
    _two_steps_equal(plain, ckpt, x)
    assert preserve_flags == [True] * 4

    preserve_flags.clear()
    torch.manual_seed(0)
    plain = nn.Sequential(nn.Linear(8, 8), nn.Dropout(0.0))  # a dropout schedule starting at 0
    ckpt = nn.Sequential(copy.deepcopy(plain))
    apply_gradient_checkpointing(ckpt, "0", mode=mode)
    for _ in range(2):
        ckpt(x).sum().backward()
    assert preserve_flags == [True, False]
    plain[1].p = ckpt[0][1].p = 0.5  # the rate is read at call time
    _two_steps_equal(plain, ckpt, x)
    assert preserve_flags[2:] == [True, True]


def test_attention_dropout_applied_functionally_is_detected(preserve_flags):
    """HF ViT applies attention dropout with ``F.dropout``/SDPA from a float attribute."""
    from transformers import ViTConfig, ViTModel

    cfg = ViTConfig(
        image_size=8, patch_size=4, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=32, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.3,
    )  # fmt: skip
    torch.manual_seed(0)
    plain = ViTModel(cfg, add_pooling_layer=False)
    ckpt = copy.deepcopy(plain)
    apply_gradient_checkpointing(ckpt, "layers.*")
    x = torch.randn(2, 3, 8, 8)

    def call(m, x):
        return m(pixel_values=x).last_hidden_state

    _two_steps_equal(plain, ckpt, x, call)
    assert preserve_flags and all(preserve_flags)
    # the replay matters: without it, the recomputed attention dropout differs
    forced = copy.deepcopy(plain)
    apply_gradient_checkpointing(forced, "layers.*", preserve_rng_state=False)
    assert not all(
        torch.equal(a, b)
        for a, b in zip(_grads_of(plain, x, 1, call).values(), _grads_of(forced, x, 1, call).values())
    )


@pytest.mark.parametrize("mode", MODES)
def test_hf_bert_layers_gradients_equal(mode, preserve_flags):
    torch.manual_seed(0)
    plain = hf_bert()  # dropout 0: no RNG replay needed after the first call
    ckpt = copy.deepcopy(plain)
    assert apply_gradient_checkpointing(ckpt, "bert.encoder.layer.*", mode=mode) == [
        "bert.encoder.layer.0",
        "bert.encoder.layer.1",
    ]
    ids = torch.randint(0, 40, (2, 12))
    _two_steps_equal(plain, ckpt, ids, lambda m, ids: m(input_ids=ids).logits)
    assert preserve_flags == [True, True, False, False]


# --------------------------------------------------------------------------- arguments


def test_bad_mode_and_preserve_rng_state():
    with pytest.raises(ValueError, match=r"`mode` must be one of 'full', 'selective'; got 'selctive'"):
        apply_gradient_checkpointing(BlockNet(), "ResidualBlock", mode="selctive")
    with pytest.raises(ValueError, match=r"`mode`.*'fast'"):
        GradientCheckpointing(targets="backbone.blocks.*", mode="fast")
    with pytest.raises(TypeError, match=r"`preserve_rng_state`.*'yes'"):
        GradientCheckpointing(targets="backbone.blocks.*", preserve_rng_state="yes")
    model = BlockNet()
    apply_gradient_checkpointing(model, "ResidualBlock")
    with pytest.raises(ValueError, match=r"already checkpointed with mode='full'.*got mode='selective'"):
        apply_gradient_checkpointing(model, "ResidualBlock", mode="selective")


def test_conflicting_settings_wrap_nothing():
    model = BlockNet(depth=2)
    apply_gradient_checkpointing(model, "backbone.blocks.1")
    with pytest.raises(ValueError, match=r"`backbone.blocks.1` is already checkpointed"):
        apply_gradient_checkpointing(model, "ResidualBlock", mode="selective")
    # the call fails as a whole: block 0, listed before the conflict, was not wrapped either
    assert "forward" not in model.backbone.blocks[0].__dict__
    assert model.backbone.blocks[1].forward.mode == "full"


def _sum_grads(model, x):
    model.zero_grad(set_to_none=True)
    model(x).sum().backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def test_selective_recomputes_a_saved_output_modified_in_place():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            return self.fc(x).mul_(2).sigmoid()  # the kept matmul output is changed in place

    torch.manual_seed(0)
    plain = nn.Sequential(Block(), Block())
    ckpt = copy.deepcopy(plain)
    apply_gradient_checkpointing(ckpt, "*", mode="selective")
    x = torch.randn(3, 4)
    # the stale output is not handed back: the matmul runs again, gradients are the plain ones
    assert not params_equal(_sum_grads(plain, x), _sum_grads(ckpt, x))


@pytest.mark.parametrize("mode", MODES)
def test_second_backward_with_retain_graph_matches_plain(mode):
    torch.manual_seed(0)
    plain = GeluMLP(depth=3, dim=8, hidden=16)
    ckpt = copy.deepcopy(plain)
    apply_gradient_checkpointing(ckpt, "blocks.*", mode=mode)
    x = torch.randn(5, 8)
    grads = []
    for model in (plain, ckpt):
        loss = model(x).square().sum()
        loss.backward(retain_graph=True)  # the kept outputs are handed back and freed here
        loss.backward()  # recomputed in full the second time
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    assert not params_equal(*grads)


@pytest.mark.parametrize("mode", MODES)
def test_under_torch_compile_batchnorm_statistics_updated_once(mode):
    torch.manual_seed(0)
    plain = SmallCNN()
    ckpt = copy.deepcopy(plain)
    apply_gradient_checkpointing(ckpt, "backbone.*", mode=mode)
    compiled = torch.compile(ckpt, backend="aot_eager")
    x = torch.randn(4, 3, 8, 8)
    for model in (plain, compiled):
        for _ in range(2):
            model(x).square().mean().backward()
    assert not params_equal(dict(plain.named_buffers()), dict(ckpt.named_buffers()))
    assert not params_equal(
        {n: p.grad for n, p in plain.named_parameters()}, {n: p.grad for n, p in ckpt.named_parameters()}
    )


# --------------------------------------------------------------------------- the eager checkpoint's contract
#
# In eager mode the wrappers run the module's own lean checkpoint (`_checkpoint_frame`), not
# `torch.utils.checkpoint`: these pin the parts of PyTorch's non-reentrant semantics that a
# block of a real model can reach, against the plain model and against PyTorch.


def _pair(mode, depth=3):
    torch.manual_seed(0)
    plain = GeluMLP(depth=depth, dim=8, hidden=16)
    ckpt = copy.deepcopy(plain)
    apply_gradient_checkpointing(ckpt, "blocks.*", mode=mode)
    return plain, ckpt


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("backward_in_autocast", [False, True])
@pytest.mark.parametrize("forward_in_autocast", [False, True])
def test_recomputation_replays_the_forwards_autocast_state(mode, forward_in_autocast, backward_in_autocast):
    """bf16 autocast as under ``precision="bf16-mixed"`` (forward inside, backward outside),
    and the mismatched cases: the recomputation must cast as the forward did."""
    plain, ckpt = _pair(mode)
    x = torch.randn(6, 8)
    grads = []
    for model in (plain, ckpt):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=forward_in_autocast):
            loss = model(x).float().square().mean()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=backward_in_autocast):
            loss.backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    assert not params_equal(*grads)


@pytest.mark.parametrize("mode", MODES)
def test_autograd_grad_and_input_gradients_match_plain(mode):
    plain, ckpt = _pair(mode)
    results = []
    for model in (plain, ckpt):
        x = torch.randn(5, 8, generator=torch.Generator().manual_seed(3), requires_grad=True)
        params = list(model.parameters())
        results.append(torch.autograd.grad(model(x).square().sum(), [x, *params]))
    assert all(torch.equal(a, b) for a, b in zip(*results))


class _GradInsideForward(nn.Module):
    """A block that differentiates inside its own forward (a gradient penalty, a PINN)."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x):
        y = torch.tanh(self.fc(x))
        (g,) = torch.autograd.grad(y.square().sum(), x, create_graph=True)
        return y + g


@pytest.mark.parametrize("mode", MODES)
def test_backward_inside_the_forward_matches_plain(mode):
    torch.manual_seed(0)
    plain = nn.Sequential(_GradInsideForward(), _GradInsideForward())
    ckpt = copy.deepcopy(plain)
    apply_gradient_checkpointing(ckpt, "*", mode=mode)
    grads = []
    for model in (plain, ckpt):
        x = torch.randn(4, 8, generator=torch.Generator().manual_seed(1), requires_grad=True)
        model(x).square().mean().backward()
        grads.append({"x": x.grad, **{n: p.grad for n, p in model.named_parameters()}})
    assert not params_equal(*grads)


def test_nested_inside_and_around_torch_checkpoint_matches_plain():
    torch.manual_seed(0)
    plain = GeluMLP(depth=3, dim=8, hidden=16)
    around = copy.deepcopy(plain)  # ours on the blocks, PyTorch's on the whole stack
    apply_gradient_checkpointing(around, "blocks.*")
    inside = copy.deepcopy(plain)  # PyTorch's on each block's layers, ours on the blocks
    for block in inside.blocks:
        for i, layer in enumerate(block):
            block[i] = TorchCheckpointed(layer)
    apply_gradient_checkpointing(inside, "blocks.*", mode="selective")
    x = torch.randn(5, 8)
    reference = _sum_grads(plain, x)
    around.zero_grad(set_to_none=True)
    torch.utils.checkpoint.checkpoint(around, x, use_reentrant=False).sum().backward()
    assert not params_equal(reference, {n: p.grad for n, p in around.named_parameters()})
    assert not params_equal(reference, {n.replace(".block", ""): g for n, g in _sum_grads(inside, x).items()})


def test_input_changed_in_place_after_the_forward_is_refused_like_pytorch():
    """Its recomputation would read the new values: PyTorch's checkpoint and the plain
    model (whose Linear saved the input) refuse the backward, and so do we."""
    errors = []
    for wrap in ("plain", "torch", "ours"):
        torch.manual_seed(0)
        block = nn.Sequential(nn.Linear(4, 4))
        if wrap == "ours":
            apply_gradient_checkpointing(block, "Linear")
        x = torch.randn(3, 4, requires_grad=True)
        h = x * 1
        out = (
            torch.utils.checkpoint.checkpoint(block, h, use_reentrant=False) if wrap == "torch" else block(h)
        )
        h.add_(1)
        with pytest.raises(RuntimeError, match="modified by an inplace operation") as info:
            out.sum().backward()
        errors.append(str(info.value))
    assert "checkpointed block `Linear`" in errors[2]


class _ShapeShifter(nn.Module):
    """Computes something else on its second run (state its first run changed)."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return torch.tanh(self.fc(x if self.calls == 1 else x[:2]))


@pytest.mark.parametrize("mode", MODES)
def test_a_recomputation_that_differs_is_refused_like_pytorch(mode):
    for ours in (False, True):
        block = nn.Sequential(_ShapeShifter())
        if ours:
            apply_gradient_checkpointing(block, "_ShapeShifter", mode=mode)
            out = block(torch.randn(4, 8))
        else:
            out = torch.utils.checkpoint.checkpoint(block, torch.randn(4, 8), use_reentrant=False)
        with pytest.raises(torch.utils.checkpoint.CheckpointError, match=r"shape|metadata"):
            out.sum().backward()


class _KeywordBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x, *, scale):
        return torch.tanh(self.fc(x)) * scale


class _KeywordNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = _KeywordBlock(), _KeywordBlock()

    def forward(self, x, scale):
        return self.b(x=self.a(x=x, scale=scale), scale=scale)


@pytest.mark.parametrize("mode", MODES)
def test_keyword_only_inputs_are_inputs(mode):
    """Blocks called with keyword arguments only (as HF layers often are): gradients equal
    plain, and a keyword input changed in place after the forward is refused too."""
    torch.manual_seed(0)
    plain = _KeywordNet()
    ckpt = copy.deepcopy(plain)
    apply_gradient_checkpointing(ckpt, "_KeywordBlock", mode=mode)
    grads = []
    for model in (plain, ckpt):
        x = torch.randn(4, 8, generator=torch.Generator().manual_seed(2), requires_grad=True)
        scale = torch.full((8,), 0.5, requires_grad=True)
        model(x, scale).square().sum().backward()
        grads.append({"x": x.grad, "scale": scale.grad, **{n: p.grad for n, p in model.named_parameters()}})
    assert not params_equal(*grads)

    scale = torch.full((8,), 0.5)
    out = ckpt.a(x=torch.randn(4, 8), scale=scale)
    scale.mul_(2)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.sum().backward()


@pytest.mark.parametrize("mode", MODES)
def test_nothing_outlives_the_graph(mode):
    """Each call's bookkeeping (inputs, recomputed tensors) lives as long as its graph:
    after backward, or when the graph is dropped without one, none is left."""

    def frames():
        gc.collect()
        return sum(type(o) is _Frame for o in gc.get_objects())

    _, ckpt = _pair(mode)
    x = torch.randn(5, 8)
    before = frames()
    loss = ckpt(x).sum()
    assert frames() == before + 3
    loss.backward()
    del loss
    assert frames() == before
    ckpt(x).sum()  # graph dropped without backward
    assert frames() == before


@pytest.mark.gpu
@pytest.mark.parametrize("mode", MODES)
def test_cuda_dropout_under_fp16_autocast_matches_plain(mode):
    """On a GPU: the CUDA RNG state (dropout masks) and CUDA autocast are replayed in the
    recomputation; gradients equal the plain model's (as under ``precision="16-mixed"``)."""
    torch.manual_seed(0)
    plain = nn.Sequential(
        *[nn.Sequential(nn.Linear(64, 64), nn.GELU(), nn.Dropout(0.2)) for _ in range(3)]
    ).cuda()
    ckpt = copy.deepcopy(plain)
    apply_gradient_checkpointing(ckpt, "*", mode=mode)
    x = torch.randn(32, 64, device="cuda")
    grads = []
    for model in (plain, ckpt):
        torch.manual_seed(5)
        with torch.autocast("cuda", dtype=torch.float16):
            loss = model(x).float().square().mean()
        loss.backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    assert not params_equal(*grads)
