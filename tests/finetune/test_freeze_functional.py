"""freeze_modules / unfreeze_modules / count_parameters on plain modules."""

from __future__ import annotations

import pytest
import torch

from lightning_tricks.functional import (
    batchnorm_eval,
    count_parameters,
    freeze_modules,
    select_modules,
    unfreeze_modules,
    unfreeze_units,
)
from tests.helpers import BlockNet, SmallCNN


def test_select_by_path_and_glob_and_unknown_names():
    net = BlockNet(depth=3)
    assert list(select_modules(net, "backbone.blocks.*")) == [f"backbone.blocks.{i}" for i in range(3)]
    assert list(select_modules(net, ["head", "backbone.embed"])) == ["head", "backbone.embed"]
    assert list(select_modules(net, "**.norm1")) == [f"backbone.blocks.{i}.norm1" for i in range(3)]
    with pytest.raises(
        ValueError, match=r"'backbone.blokcs'; available: backbone, backbone.embed, backbone.blocks, head"
    ):
        select_modules(net, "backbone.blokcs")
    with pytest.raises(ValueError, match="'nothing\\*'"):
        select_modules(net, "nothing*")


def test_freeze_then_optimizer_step_changes_nothing_frozen():
    net = SmallCNN()
    frozen = freeze_modules(net, "backbone")
    assert {id(p) for p in frozen} == {id(p) for p in net.backbone.parameters()}
    assert all(not m.training for m in net.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    opt = torch.optim.SGD(
        [p for p in net.parameters() if p.requires_grad], lr=0.1, momentum=0.9, weight_decay=0.1
    )
    net.head.train()
    net(torch.randn(4, 3, 8, 8)).sum().backward()
    opt.step()
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("backbone"))
    assert count_parameters(net) == {
        "total": sum(p.numel() for p in net.parameters()),
        "trainable": sum(p.numel() for p in net.head.parameters()),
        "frozen": sum(p.numel() for p in net.backbone.parameters()),
    }
    net.train()
    assert [bn.training for bn in batchnorm_eval([net.backbone])] == [False, False]
    thawed = unfreeze_modules(net, "backbone")
    assert len(thawed) == len(frozen) and all(p.requires_grad for p in net.parameters())


def test_unfreeze_units_top_first():
    net = BlockNet(depth=2)
    units = unfreeze_units([net.backbone.embed, net.backbone.blocks])
    assert units[:2] == [net.backbone.blocks[1], net.backbone.blocks[0]]
    # the patch embedding owns ``pos`` itself: it goes with its last child
    assert any(p is net.backbone.embed.pos for p in units[-1].parameters())


def test_count_parameters_counts_tied_once():
    lin = torch.nn.Linear(3, 3)
    net = torch.nn.Sequential(lin, lin)
    assert count_parameters(net)["total"] == 12
    with pytest.raises(TypeError, match="`model`"):
        count_parameters("not a module")


def test_set_train_mode_keeps_frozen_batchnorm_of_hf_resnet_in_eval():
    import copy

    from lightning_tricks.functional.finetune.freeze import set_train_mode
    from tests.helpers.zoo import hf_resnet

    net = hf_resnet()
    freeze_modules(net, "resnet.encoder")
    bns = {n: m for n, m in net.named_modules() if isinstance(m, torch.nn.BatchNorm2d)}
    frozen = {n for n in bns if n.startswith("resnet.encoder.")}
    assert frozen and frozen != set(bns)
    net.eval()
    for model in (net, copy.deepcopy(net)):  # the mark travels with the module
        assert set_train_mode(model) is model and model.training
        modes = {n: m.training for n, m in model.named_modules() if n in bns}
        assert {n for n, t in modes.items() if not t} == frozen
        set_train_mode(model, False)
        assert not any(m.training for m in model.modules())
    # a frozen BatchNorm's statistics do not move in a train-mode forward pass
    set_train_mode(net)
    stats = {k: v.clone() for k, v in net.state_dict().items() if "resnet.encoder" in k and "running" in k}
    net(pixel_values=torch.randn(4, 3, 32, 32))
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in stats.items())
    unfreeze_modules(net, "resnet.encoder")
    set_train_mode(net)
    assert all(m.training for m in bns.values())
    # train_bn=True: the statistics are meant to update, so nothing is kept in eval
    freeze_modules(net, "resnet.encoder", train_bn=True)
    set_train_mode(net)
    assert all(m.training for m in bns.values())
    with pytest.raises(TypeError, match="`model`"):
        set_train_mode("net")


def test_add_param_groups_during_a_warmup_from_zero():
    """The functional path of a hand-written loop: unfreeze while the head's LR is 0."""
    from lightning_tricks.functional import add_param_groups

    net = SmallCNN()
    freeze_modules(net, "backbone")
    opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: min(step / 4, 1.0))  # 0 at step 0
    new = unfreeze_modules(net, "backbone")
    # lr 0 next to a head at 0 says nothing about the ratio: refused, not kept at 0 for good
    with pytest.raises(ValueError, match="pass `ratio`"):
        add_param_groups(opt, [{"params": new, "lr": 0.0}], [sched])
    with pytest.raises(ValueError, match="`ratio` must be a positive"):
        add_param_groups(opt, [{"params": new}], [sched], ratio=0.0)
    assert add_param_groups(opt, [{"params": new}], [sched], ratio=0.25) == [1]
    lrs = []
    for _ in range(5):
        lrs.append([g["lr"] for g in opt.param_groups])
        sched.step()
    assert lrs[0] == [0.0, 0.0]
    assert all(b == pytest.approx(0.25 * h) for h, b in lrs) and lrs[-1][1] == pytest.approx(0.025)
