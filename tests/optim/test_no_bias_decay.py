"""NoBiasDecay through a real Trainer, with the user's own optimizer and scheduler."""

from __future__ import annotations

import logging

import lightning as L
import pytest
import torch

from lightning_tricks import NoBiasDecay
from tests.helpers import ClassifierModule, ImageDataModule, cpu_trainer


class AdamWOneCycle(NoBiasDecay, ClassifierModule):
    no_decay_extra = ("backbone.embed.pos",)

    def configure_optimizers(self):
        opt = torch.optim.AdamW(
            [
                {"params": self.backbone.parameters(), "lr": 0.001, "betas": (0.8, 0.95)},
                {"params": self.head.parameters(), "lr": 0.01},
            ],
            weight_decay=0.05,
        )
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[0.001, 0.01], total_steps=8)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


class SGDPlateau(NoBiasDecay, ClassifierModule):
    pass


def test_user_groups_are_split_and_keep_their_hyperparameters(caplog):
    L.seed_everything(0, verbose=False)
    model = AdamWOneCycle(arch="blocks")
    trainer = cpu_trainer(max_epochs=2)
    with caplog.at_level(logging.INFO):
        trainer.fit(model, datamodule=ImageDataModule())
    opt = trainer.optimizers[0]
    names = {id(p): n for n, p in model.named_parameters()}
    groups = [
        (g["weight_decay"], g["betas"][1], g["max_lr"], [names[id(p)] for p in g["params"]])
        for g in opt.param_groups
    ]
    assert [g[:3] for g in groups] == [
        (0.05, 0.95, 0.001),
        (0.0, 0.95, 0.001),
        (0.05, 0.999, 0.01),
        (0.0, 0.999, 0.01),
    ]
    assert "backbone.embed.pos" in groups[1][3] and "backbone.embed.proj.weight" in groups[0][3]
    assert not [n for n in groups[0][3] + groups[2][3] if n.endswith("bias") or "norm" in n]
    assert groups[2][3] == ["head.fc.weight"]
    sched = trainer.lr_scheduler_configs[0].scheduler
    assert sched.last_epoch == 8 and len(sched.get_last_lr()) == 4
    assert opt.param_groups[1]["lr"] == opt.param_groups[0]["lr"] != opt.param_groups[2]["lr"]
    msgs = [r.getMessage() for r in caplog.records if "NoBiasDecay" in r.getMessage()]
    n_decay = sum(p.numel() for g in opt.param_groups if g["weight_decay"] for p in g["params"])
    assert len(msgs) == 1 and f"({n_decay:,} parameters)" in msgs[0]


def test_plateau_scheduler_follows_the_split_groups():
    L.seed_everything(0, verbose=False)
    model = SGDPlateau(arch="cnn", scheduler="plateau", weight_decay=0.1)
    trainer = cpu_trainer(max_epochs=3)
    trainer.fit(model, datamodule=ImageDataModule())
    opt = trainer.optimizers[0]
    sched = trainer.lr_scheduler_configs[0].scheduler
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]
    assert len(sched.min_lrs) == 2 and len({g["lr"] for g in opt.param_groups}) == 1


def test_explicit_parameter_groups_path():
    class Explicit(NoBiasDecay, ClassifierModule):
        def configure_optimizers(self):
            return torch.optim.SGD(self.parameter_groups(0.01), lr=0.1)

    model = Explicit(arch="mlp")
    opt = model.configure_optimizers()
    assert [(len(g["params"]), g["weight_decay"]) for g in opt.param_groups] == [(3, 0.0), (3, 0.01)]


def test_bad_class_attribute_names_the_attribute():
    class Bad(NoBiasDecay, ClassifierModule):
        no_decay_embeddings = "yes"

    with pytest.raises(TypeError, match="no_decay_embeddings"):
        Bad(arch="mlp").configure_optimizers()


def test_an_optimizer_over_another_models_parameters_is_reported():
    other = torch.nn.Linear(3, 3)

    class Foreign(NoBiasDecay, ClassifierModule):
        def configure_optimizers(self):
            return torch.optim.AdamW(other.parameters(), lr=0.1, weight_decay=0.05)

    with pytest.warns(UserWarning, match="2 parameters in the optimizer are not parameters of this Foreign"):
        Foreign(arch="mlp").configure_optimizers()
