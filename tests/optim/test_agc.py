"""AGC: the functional core against a unit-by-unit reference computation, the exclusion
rule, and AdaptiveGradientClipping through a real Trainer."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from torch import nn

from lightning_tricks import AdaptiveGradientClipping
from lightning_tricks.functional import adaptive_clip_exclusions, adaptive_clip_grad_, unitwise_norm
from tests.helpers import ClassifierModule, ImageDataModule, cpu_trainer, params_equal, state_of
from tests.optim.clip_helpers import (
    NormSpy,
    RatioSpy,
    check_gpu_16_mixed_no_sync_on_non_logging_steps,
    check_logs_norms_and_fraction_on_logging_steps_only,
    fp16_cpu,
    scalars,
)


def reference_agc(params, clip_factor, eps):
    """timm's ``adaptive_clip_grad`` formula (timm/utils/agc.py), written unit by unit in
    Python: for every output unit, max_norm = max(||W_i||, eps) * clip_factor, and the
    gradient is scaled by max_norm / max(||G_i||, 1e-6) unless ||G_i|| < max_norm."""
    out = []
    for p in params:
        w, g = p.detach().double(), p.grad.detach().double()
        new = g.clone()
        units = [None] if w.ndim <= 1 else range(w.shape[0])
        for i in units:
            wi, gi = (w, g) if i is None else (w[i], g[i])
            max_norm = max(wi.norm().item(), eps) * clip_factor
            gnorm = gi.norm().item()
            if not gnorm < max_norm:
                scaled = gi * (max_norm / max(gnorm, 1e-6))
                if i is None:
                    new = scaled
                else:
                    new[i] = scaled
        out.append(new)
    return out


def _net():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 5), nn.LayerNorm(5))
    net.extra = nn.Parameter(torch.randn(2, 3, 4))  # 3-d parameter
    with torch.no_grad():
        net[2].weight[0].zero_()  # a zero unit: eps decides its threshold
    x = torch.randn(4, 3, 8, 8)
    loss = net(x).pow(2).sum() + (net.extra**2).sum() * 3
    loss.backward()
    with torch.no_grad():
        net[0].weight.grad[1] *= 1e-4  # a unit far below its threshold
    return net


@pytest.mark.parametrize("clip_factor,eps", [(0.01, 1e-3), (0.1, 1e-2), (1.0, 1e-3)])
def test_matches_reference(clip_factor, eps):
    net = _net()
    params = list(net.parameters())
    expected = reference_agc(params, clip_factor, eps)
    before = [p.grad.clone() for p in params]
    conv = next(i for i, p in enumerate(params) if p is net[0].weight)
    result = adaptive_clip_grad_(params, clip_factor=clip_factor, eps=eps)
    for p, e in zip(params, expected):
        torch.testing.assert_close(p.grad.double(), e, rtol=1e-5, atol=1e-9)
    # the unit far below its threshold is bit-for-bit untouched
    assert torch.equal(params[conv].grad[1], before[conv][1])
    assert bool(result.clipped)
    torch.testing.assert_close(result.norm_before, torch.nn.utils.get_total_norm(before), rtol=1e-5, atol=0)
    after = torch.nn.utils.get_total_norm([p.grad for p in params])
    torch.testing.assert_close(result.norm_after, after, rtol=1e-5, atol=0)
    assert float(result.norm_after) < float(result.norm_before)


def test_nothing_clipped_when_factor_large():
    net = _net()
    params = list(net.parameters())
    before = [p.grad.clone() for p in params]
    result = adaptive_clip_grad_(params, clip_factor=1e6)
    assert not bool(result.clipped)
    assert all(torch.equal(p.grad, b) for p, b in zip(params, before))
    assert float(result.norm_before) == pytest.approx(float(result.norm_after))


def test_params_without_grad_and_empty():
    p = nn.Parameter(torch.ones(3))
    res = adaptive_clip_grad_([p])
    assert float(res.norm_before) == 0.0 and not bool(res.clipped)
    q = nn.Parameter(torch.ones(3))
    q.grad = torch.full((3,), 10.0)
    adaptive_clip_grad_(q, clip_factor=0.5)  # a single tensor is accepted
    assert float(q.grad.norm()) == pytest.approx(0.5 * math.sqrt(3), rel=1e-5)


def test_inf_norm_type_and_unitwise_norm():
    w = torch.tensor([[1.0, -3.0], [2.0, 0.5]])
    assert unitwise_norm(w, math.inf).flatten().tolist() == [3.0, 2.0]
    assert unitwise_norm(torch.tensor([3.0, 4.0])).item() == 5.0
    p = nn.Parameter(w.clone())
    p.grad = torch.tensor([[10.0, 0.0], [0.0, 0.1]])
    res = adaptive_clip_grad_([p], clip_factor=0.5, norm_type=math.inf)
    assert p.grad[0, 0].item() == pytest.approx(1.5) and p.grad[1, 1].item() == pytest.approx(0.1)
    assert float(res.norm_before) == 10.0 and float(res.norm_after) == pytest.approx(1.5)


@pytest.mark.parametrize(
    "kwargs,name",
    [({"clip_factor": 0.0}, "clip_factor"), ({"eps": -1.0}, "eps"), ({"norm_type": 0}, "norm_type")],
)
def test_bad_arguments(kwargs, name):
    with pytest.raises((ValueError, TypeError), match=name):
        adaptive_clip_grad_([nn.Parameter(torch.ones(1))], **kwargs)


# --------------------------------------------------------------------------- the callback


def test_agc_matches_a_hand_written_loop():
    """Same weights as a plain loop that calls the functional core on all but the classifier."""
    torch.manual_seed(0)
    model = ClassifierModule(arch="cnn", lr=0.1)
    reference = ClassifierModule(arch="cnn", lr=0.1)
    reference.load_state_dict(model.state_dict())
    dm = ImageDataModule()
    cpu_trainer(callbacks=[AdaptiveGradientClipping(clip_factor=0.01)], max_epochs=1).fit(model, dm)

    dm.setup()
    opt = reference.configure_optimizers()
    classifier = {id(p) for p in reference.head[2].parameters()}  # last nn.Linear
    for x, y in dm.train_dataloader():
        opt.zero_grad()
        F.cross_entropy(reference(x), y).backward()
        adaptive_clip_grad_([p for p in reference.parameters() if id(p) not in classifier], 0.01, 1e-3)
        opt.step()
    assert not params_equal(state_of(model), state_of(reference))


def test_agc_skip_classifier_and_exclude():
    cb = AdaptiveGradientClipping(clip_factor=1e-4, exclude=["backbone.1"])
    model = ClassifierModule(arch="mlp")
    spy_head = {}

    class HeadSpy(Callback):
        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            spy_head.setdefault("before", pl_module.head.weight.grad.clone())

    class HeadSpyAfter(Callback):
        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            spy_head.setdefault("after", pl_module.head.weight.grad.clone())

    cpu_trainer(callbacks=[HeadSpy(), cb, HeadSpyAfter()], max_epochs=1, limit_train_batches=1).fit(
        model, ImageDataModule()
    )
    assert torch.equal(spy_head["before"], spy_head["after"])  # the classifier is left alone
    names = {n for n, p in model.named_parameters() if id(p) in cb._excluded_ids}
    assert names == {"backbone.1.weight", "backbone.1.bias", "head.weight", "head.bias"}
    with pytest.raises(ValueError, match="`exclude` names no parameter or submodule 'encodr'"):
        cpu_trainer(callbacks=[AdaptiveGradientClipping(exclude=["encodr"])], max_epochs=1).fit(
            ClassifierModule(arch="mlp"), ImageDataModule()
        )


# --------------------------------------------------------------------------- what AGC leaves out


class WithAttention(nn.Module):
    """A classifier followed, in registration order, by an attention block (as in models
    that register a pooling attention after the head): its ``out_proj`` is the last
    ``nn.Linear`` registered, but it is not the classifier."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8))
        self.classifier = nn.Linear(8, 3)
        self.pool = nn.MultiheadAttention(8, 2)


def test_exclusions_skip_the_head_that_find_head_finds():
    net = WithAttention()
    assert adaptive_clip_exclusions(net) == ["classifier.weight", "classifier.bias"]

    class Timm(nn.Module):  # timm convention: get_classifier() names the head
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)
            self.proj = nn.Linear(4, 2)

        def get_classifier(self):
            return self.fc

    assert adaptive_clip_exclusions(Timm()) == ["fc.weight", "fc.bias"]
    assert adaptive_clip_exclusions(nn.Sequential(nn.Conv2d(3, 3, 1))) == []  # no head: nothing left out
    assert adaptive_clip_exclusions(net, skip_classifier=False) == []


def test_exclude_follows_the_naming_rule():
    net = nn.Sequential()
    net.add_module("backbone", nn.Sequential(nn.Sequential(nn.Linear(2, 2)), nn.Linear(2, 2)))
    net.add_module("head", nn.Linear(2, 2))
    kw = {"skip_classifier": False}
    # a module name selects all its parameters (what a prefix did before)
    assert adaptive_clip_exclusions(net, exclude="backbone", **kw) == [
        "backbone.0.0.weight",
        "backbone.0.0.bias",
        "backbone.1.weight",
        "backbone.1.bias",
    ]
    # `*` stays within one segment, `**` crosses segments
    assert adaptive_clip_exclusions(net, exclude=["backbone.*.weight"], **kw) == ["backbone.1.weight"]
    assert adaptive_clip_exclusions(net, exclude=["**.bias"], **kw) == [
        "backbone.0.0.bias",
        "backbone.1.bias",
        "head.bias",
    ]
    assert adaptive_clip_exclusions(net, exclude="Linear", **kw) == [n for n, _ in net.named_parameters()]
    with pytest.raises(
        ValueError, match=r"`exclude` names no parameter or submodule 'haed'.*did you mean 'head'"
    ):
        adaptive_clip_exclusions(net, exclude="haed")
    with pytest.raises(TypeError, match="skip_classifier"):
        adaptive_clip_exclusions(net, skip_classifier="yes")


def test_callback_leaves_out_a_glob_and_not_an_attention_projection():
    """``exclude`` globs select by segment; the classifier comes from ``find_head`` (the old
    private rule took the last ``nn.Linear``, here an attention projection)."""

    class Module(ClassifierModule):
        def __init__(self):
            super().__init__(arch="mlp")
            self.pool = nn.MultiheadAttention(4, 1)  # registered after the head, unused

    model = Module()
    cb = AdaptiveGradientClipping(clip_factor=1e-4, exclude="backbone.*.bias")
    cpu_trainer(callbacks=[cb], max_epochs=1, limit_train_batches=1).fit(model, ImageDataModule())
    names = {n for n, p in model.named_parameters() if id(p) in cb._excluded_ids}
    bias = {n for n, _ in model.named_parameters() if n.startswith("backbone.") and n.count(".") == 2}
    bias = {n for n in bias if n.endswith(".bias")}
    assert bias and names == bias | {"head.weight", "head.bias"}


def test_logs_norms_and_fraction_on_logging_steps_only(tmp_path):
    logged = check_logs_norms_and_fraction_on_logging_steps_only(
        tmp_path, AdaptiveGradientClipping(clip_factor=0.01), "adaptive_gradient_clipping"
    )
    assert not [k for k in logged if k.startswith("agc/")]


def test_mixed_precision_decides_on_unscaled_gradients(tmp_path):
    """With a GradScaler at 2**12, the hook sees unscaled gradients: a clip factor above
    every unscaled unit ratio but below the scaled ones must not clip anything."""
    spy, ratios = NormSpy(), RatioSpy()
    model = ClassifierModule(lr=0.01)
    plain = ClassifierModule(lr=0.01)
    plain.load_state_dict(model.state_dict())
    clip_factor = 200.0
    cb = AdaptiveGradientClipping(clip_factor=clip_factor, skip_classifier=False)
    trainer = cpu_trainer(
        callbacks=[spy, ratios, cb],
        plugins=[fp16_cpu()],
        max_epochs=1,
        logger=TensorBoardLogger(str(tmp_path), name="tb"),
        log_every_n_steps=1,
    )
    trainer.fit(model, ImageDataModule())
    scale = trainer.precision_plugin.scaler.get_scale()
    assert scale >= 2.0**12
    # the setting is discriminating: unscaled ratios are below clip_factor, scaled ones above
    assert max(ratios.ratios) < clip_factor < min(ratios.ratios) * scale
    logged = scalars(trainer.logger.log_dir)
    pre = [v for _, v in logged["adaptive_gradient_clipping/grad_norm_pre_clip"]]
    assert pre == pytest.approx(spy.norms, rel=1e-5)  # unscaled: not 4096x larger
    assert [v for _, v in logged["adaptive_gradient_clipping/clipped_fraction"]] == [0.0] * 4
    cpu_trainer(plugins=[fp16_cpu()], max_epochs=1).fit(plain, ImageDataModule())
    assert not params_equal(state_of(model), state_of(plain))  # nothing was clipped


def test_sharded_strategy_is_refused():
    from lightning.pytorch.strategies import FSDPStrategy

    from lightning_tricks.optim._clip import _check_strategy

    class FakeTrainer:
        strategy = FSDPStrategy.__new__(FSDPStrategy)

    with pytest.raises(Exception, match="unsharded"):
        _check_strategy(FakeTrainer(), "AutoClip")


@pytest.mark.gpu
def test_gpu_16_mixed_no_sync_on_non_logging_steps():
    check_gpu_16_mixed_no_sync_on_non_logging_steps(AdaptiveGradientClipping())
