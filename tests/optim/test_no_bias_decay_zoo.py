"""NoBiasDecay on HF transformers models: plain use, tied weights, and under LightningCLI."""

from __future__ import annotations

import sys

import lightning as L
import pytest
import torch
from lightning.pytorch.cli import LightningCLI
from torch import nn

from lightning_tricks import NoBiasDecay
from lightning_tricks.functional import no_bias_decay_groups
from tests.helpers.utils import cpu_trainer
from tests.helpers.zoo import HFImageClassifier, HFTextClassifier, zoo_loaders


class ViTNoDecay(NoBiasDecay, HFImageClassifier):
    """The zoo's ViT classifier (its own SGD/AdamW ``configure_optimizers``) with the mixin."""


class BertNoDecay(NoBiasDecay, HFTextClassifier):
    pass


class BertOnlyCLIOptimizer(NoBiasDecay, L.LightningModule):
    """No ``configure_optimizers`` of its own: the CLI's optimizer is the only one."""

    def __init__(self):
        super().__init__()
        self.model = HFTextClassifier().model

    def training_step(self, batch, batch_idx):
        return self.model(**batch).loss


class VitData(L.LightningDataModule):
    def train_dataloader(self):
        return zoo_loaders("vit", n=8, batch_size=4)[0]


class TextData(L.LightningDataModule):
    def train_dataloader(self):
        return zoo_loaders("bert", n=8, batch_size=4)[0]


def norm_and_bias_names(model: nn.Module) -> set[str]:
    """Every bias and every LayerNorm weight, found by module type (HF names vary:
    ``LayerNorm.weight``, ``layernorm_before.weight``, ``embeddings.LayerNorm.weight``)."""
    names = {n for n, _ in model.named_parameters() if n.endswith("bias")}
    for prefix, module in model.named_modules():
        if isinstance(module, nn.LayerNorm):
            names.add(f"{prefix}.weight")
    return names


def groups_by_decay(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[float, set[str]]:
    names = {id(p): n for n, p in model.named_parameters()}
    out: dict[float, set[str]] = {}
    for g in optimizer.param_groups:
        out.setdefault(g["weight_decay"], set()).update(names[id(p)] for p in g["params"])
    return out


def cli(model_class, data_class, tmp_path, *extra):
    sys.argv = ["cli"]  # the args below are the whole command line (the caller restores argv)
    args = [
        "--optimizer=AdamW",
        "--optimizer.lr=0.01",
        "--optimizer.weight_decay=0.05",
        f"--trainer.default_root_dir={tmp_path}",
        "--trainer.accelerator=cpu",
        "--trainer.max_epochs=1",
        "--trainer.limit_train_batches=2",
        "--trainer.logger=false",
        "--trainer.enable_checkpointing=false",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        *extra,
    ]
    return LightningCLI(model_class, data_class, args=args, run=False, save_config_callback=None)


@pytest.mark.parametrize("model_class,data_class", [(ViTNoDecay, VitData), (BertOnlyCLIOptimizer, TextData)])
def test_lightning_cli_optimizer_gets_the_no_decay_split(tmp_path, monkeypatch, model_class, data_class):
    monkeypatch.setattr(sys, "argv", sys.argv)
    c = cli(model_class, data_class, tmp_path, "--lr_scheduler=StepLR", "--lr_scheduler.step_size=1")
    c.trainer.fit(c.model, datamodule=c.datamodule)
    opt = c.trainer.optimizers[0]
    assert isinstance(opt, torch.optim.AdamW)
    by_decay = groups_by_decay(c.model, opt)
    expected_no_decay = norm_and_bias_names(c.model)
    assert set(by_decay) == {0.0, 0.05}
    assert expected_no_decay <= by_decay[0.0]
    assert not by_decay[0.05] & expected_no_decay and by_decay[0.05]
    assert all(p.ndim > 1 for g in opt.param_groups if g["weight_decay"] for p in g["params"])
    sched = c.trainer.lr_scheduler_configs[0].scheduler  # the scheduler follows the groups
    assert len(sched.base_lrs) == len(opt.param_groups) and sched.last_epoch == 1
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.001] * len(opt.param_groups))  # x 0.1


def test_lightning_cli_without_scheduler(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", sys.argv)
    c = cli(BertNoDecay, TextData, tmp_path)
    opt = c.model.configure_optimizers()  # what the Trainer calls
    by_decay = groups_by_decay(c.model, opt)
    assert norm_and_bias_names(c.model) <= by_decay[0.0] and by_decay[0.05]


@pytest.mark.parametrize("name", ["vit", "bert"])
def test_every_bias_and_layernorm_of_hf_models_is_not_decayed(name):
    module = (
        ViTNoDecay("vit", optimizer="adamw", weight_decay=0.05)
        if name == "vit"
        else BertNoDecay(optimizer="adamw", weight_decay=0.05)
    )
    expected = norm_and_bias_names(module)
    assert any("layernorm_before" in n for n in expected) or any("LayerNorm.weight" in n for n in expected)
    by_decay = groups_by_decay(module, module.configure_optimizers())
    assert expected <= by_decay[0.0]
    assert not expected & by_decay[0.05]


def test_tied_decoder_and_embedding_weight_appears_once():
    module = BertNoDecay(mlm=True, optimizer="adamw", weight_decay=0.05)
    tied = module.model.cls.predictions.decoder.weight
    assert tied is module.model.bert.embeddings.word_embeddings.weight
    opt = module.configure_optimizers()
    ids = [id(p) for g in opt.param_groups for p in g["params"]]
    assert len(ids) == len(set(ids)) and ids.count(id(tied)) == 1
    groups = no_bias_decay_groups(module, 0.05)
    assert sum(p is tied for g in groups for p in g["params"]) == 1
    assert len({id(p) for p in module.parameters()}) == len(ids)


def test_fit_on_vit_through_a_real_trainer():
    L.seed_everything(0, verbose=False)
    module = ViTNoDecay("vit", optimizer="adamw", weight_decay=0.05, lr=0.01)
    before = {n: p.detach().clone() for n, p in module.named_parameters()}
    train, val = zoo_loaders("vit", n=8, batch_size=4)
    trainer = cpu_trainer(max_epochs=1)
    trainer.fit(module, train, val)
    by_decay = groups_by_decay(module, trainer.optimizers[0])
    assert norm_and_bias_names(module) <= by_decay[0.0]
    changed = [n for n, p in module.named_parameters() if not torch.equal(p, before[n])]
    assert set(changed) == set(before)  # every parameter trained
