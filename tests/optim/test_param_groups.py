"""no_bias_decay_groups against the reference recipes, and the param-group plumbing."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_tricks.functional import (
    add_param_groups,
    no_bias_decay_groups,
    no_weight_decay_names,
    split_by_weight_decay,
    split_param_groups,
)
from tests.helpers import BlockNet, SmallCNN, make_mlp


def add_weight_decay(model, weight_decay=1e-5, skip_list=()):
    """The PyTorch Lightning cheat sheet's recipe."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if len(param.shape) == 1 or name.endswith(".bias") or name in skip_list:
            no_decay.append(param)
        else:
            decay.append(param)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


def param_groups_weight_decay(model, weight_decay=1e-5, no_weight_decay_list=()):
    """timm.optim._param_groups.param_groups_weight_decay."""
    no_weight_decay_list = set(no_weight_decay_list)
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if param.ndim <= 1 or name.endswith(".bias") or name in no_weight_decay_list:
            no_decay.append(param)
        else:
            decay.append(param)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


def _ids(groups):
    return [([id(p) for p in g["params"]], g["weight_decay"]) for g in groups]


@pytest.mark.parametrize("make", [make_mlp, SmallCNN, BlockNet])
def test_groups_equal_reference_recipes(make):
    model = make()
    model.backbone[0].requires_grad_(False) if isinstance(model, SmallCNN) else None
    ours = no_bias_decay_groups(model, 0.05)
    assert _ids(ours) == _ids(add_weight_decay(model, 0.05)) == _ids(param_groups_weight_decay(model, 0.05))


def test_model_no_weight_decay_method_is_honoured():
    net = BlockNet()
    net.backbone.embed.no_weight_decay = lambda: {"pos"}
    assert "backbone.embed.pos" in no_weight_decay_names(net)
    ours = no_bias_decay_groups(net, 0.1)
    assert _ids(ours) == _ids(param_groups_weight_decay(net, 0.1, {"backbone.embed.pos"}))


def test_norm_layers_embeddings_globs_and_tied_parameters():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(10, 4)
            self.gn = nn.GroupNorm(2, 4)
            self.scale = nn.Parameter(torch.ones(1, 4, 4))
            self.out = nn.Linear(4, 10, bias=False)
            self.out.weight = self.emb.weight  # tied

    net = Net()
    assert no_weight_decay_names(net) == ["gn.weight", "gn.bias"]
    assert no_weight_decay_names(net, embeddings=True, extra="sc*") == [
        "scale",
        "emb.weight",
        "gn.weight",
        "gn.bias",
    ]
    groups = no_bias_decay_groups(net, 0.1)
    assert sum(len(g["params"]) for g in groups) == 4  # the tied weight once


def test_split_keeps_hyperparameters_and_is_idempotent():
    net = SmallCNN()
    group = {"params": list(net.parameters()), "lr": 0.3, "betas": (0.8, 0.9), "weight_decay": 0.1}
    parts = split_by_weight_decay(group, net)
    assert [(p["lr"], p["betas"], p["weight_decay"]) for p in parts] == [
        (0.3, (0.8, 0.9), 0.1),
        (0.3, (0.8, 0.9), 0.0),
    ]
    assert [len(p["params"]) for p in parts] == [3, 5]
    assert [len(split_by_weight_decay(p, net)) for p in parts] == [1, 1]


def _opt_sched(kind):
    net = make_mlp()
    opt = torch.optim.SGD(net.head.parameters(), lr=0.1, momentum=0.9)
    scheds = {
        "lambda": lambda: torch.optim.lr_scheduler.LambdaLR(opt, lambda e: 0.5**e),
        "step": lambda: torch.optim.lr_scheduler.StepLR(opt, 1, 0.5),
        "cosine": lambda: torch.optim.lr_scheduler.CosineAnnealingLR(opt, 4),
        "onecycle": lambda: torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=6),
        "plateau": lambda: torch.optim.lr_scheduler.ReduceLROnPlateau(opt, patience=0, factor=0.5),
        "cyclic": lambda: torch.optim.lr_scheduler.CyclicLR(opt, 0.01, 0.1, step_size_up=2),
        "sequential": lambda: torch.optim.lr_scheduler.SequentialLR(
            opt,
            [
                torch.optim.lr_scheduler.LinearLR(opt, 0.5, total_iters=2),
                torch.optim.lr_scheduler.ExponentialLR(opt, 0.9),
            ],
            milestones=[2],
        ),
    }
    return net, opt, scheds[kind]()


def _step(s, n=1):
    for _ in range(n):
        s.step(1.0) if isinstance(s, torch.optim.lr_scheduler.ReduceLROnPlateau) else s.step()


@pytest.mark.parametrize("kind", ["lambda", "step", "cosine", "onecycle", "plateau", "cyclic", "sequential"])
def test_added_group_follows_the_template_schedule_scaled(kind):
    net, opt, sched = _opt_sched(kind)
    opt.step()
    _step(sched, 2)
    head_lr = opt.param_groups[0]["lr"]
    add_param_groups(opt, [{"params": net.backbone.parameters(), "lr": 0.25 * head_lr}], [sched])
    assert opt.param_groups[1]["momentum"] == opt.param_groups[0]["momentum"]
    for _ in range(3):
        opt.step()
        _step(sched)
        a, b = (g["lr"] for g in opt.param_groups)
        if kind != "cosine":  # CosineAnnealingLR's eta_min is not scaled
            assert b == pytest.approx(0.25 * a)
    state = sched.state_dict()
    sched.load_state_dict(state)


def test_split_param_groups_keeps_scheduler_lists_in_step():
    _, opt, sched = _opt_sched("lambda")
    split_param_groups(
        opt,
        lambda g: [{**g, "params": g["params"][:1]}, {**g, "params": g["params"][1:], "weight_decay": 0.0}],
        [sched],
    )
    assert len(sched.lr_lambdas) == len(sched.base_lrs) == 2
    _step(sched)
    assert [g["lr"] for g in opt.param_groups] == [0.05, 0.05]


def test_unsupported_scheduler_and_duplicate_params_fail_clearly():
    net, opt, _ = _opt_sched("step")

    class Custom(torch.optim.lr_scheduler.LRScheduler):
        def get_lr(self):
            return self.base_lrs

    with pytest.raises(TypeError, match=r"Custom.*cannot be extended"):
        add_param_groups(opt, [{"params": net.backbone.parameters()}], [Custom(opt)])
    with pytest.raises(ValueError, match="more than one parameter group"):
        add_param_groups(opt, [{"params": net.head.parameters()}])
    with pytest.raises(ValueError, match="`like`"):
        add_param_groups(opt, [{"params": net.backbone.parameters()}], like=3)
