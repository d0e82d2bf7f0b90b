"""Under 2-process CPU DDP, unfreezing keeps every rank's weights identical."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from lightning.pytorch import Callback
from lightning.pytorch.callbacks import BackboneFinetuning

from lightning_tricks import FreezeBackbone
from tests.helpers import ClassifierModule, ImageDataModule, params_equal, state_of
from tests.helpers.ddp import GlooDDP


class SaveRankWeights(Callback):
    def __init__(self, out: str):
        self.out = out

    def on_fit_end(self, trainer, pl_module):
        torch.save(state_of(pl_module), f"{self.out}/rank{trainer.global_rank}.pt")


def _fit_ddp(tmp_path, finetune_cb):
    L.seed_everything(0, verbose=False)
    model = ClassifierModule(arch="cnn", optimizer="sgd", lr=0.05)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=2,
        strategy=GlooDDP(start_method="spawn"),
        max_epochs=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        callbacks=[finetune_cb, SaveRankWeights(str(tmp_path))],
    )
    trainer.fit(model, datamodule=ImageDataModule(n_train=64, batch_size=8))
    w0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    w1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    return w0, w1


@pytest.mark.ddp
def test_ranks_identical_after_unfreezing(tmp_path):
    w0, w1 = _fit_ddp(tmp_path, FreezeBackbone(unfreeze_at_epoch=1, backbone_lr_factor=1.0))
    assert not params_equal(w0, w1)
    L.seed_everything(0, verbose=False)
    init = state_of(ClassifierModule(arch="cnn"))  # the backbone did train after unfreezing
    assert all(not torch.equal(init[k], w0[k]) for k in init if k.startswith("backbone"))


@pytest.mark.ddp
@pytest.mark.slow
def test_lightning_backbone_finetuning_diverges(tmp_path):
    """The reference point (pytorch-lightning #20340): ranks drift apart after unfreezing."""
    cb = BackboneFinetuning(unfreeze_backbone_at_epoch=1, backbone_initial_ratio_lr=1.0, initial_denom_lr=1.0)
    w0, w1 = _fit_ddp(tmp_path, cb)
    diff = params_equal(w0, w1)
    assert diff and all(k.startswith("backbone") for k in diff)
