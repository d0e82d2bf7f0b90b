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
