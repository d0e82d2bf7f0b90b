"""The param-group plumbing: groups added to a live optimizer follow its schedulers."""

from __future__ import annotations

import pytest
import torch

from lightning_tricks.functional import (
    add_param_groups,
    split_param_groups,
)
from tests.helpers import make_mlp


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
    with pytest.raises(ValueError, match=r"`groups\[0\]` holds a parameter that is already in the optimizer"):
        add_param_groups(opt, [{"params": net.head.parameters()}])
    with pytest.raises(ValueError, match="`like`"):
        add_param_groups(opt, [{"params": net.backbone.parameters()}], like=3)
