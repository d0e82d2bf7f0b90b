"""Loading real Lightning checkpoints into plain networks."""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_tricks.functional import load_weights, save_weights
from tests.helpers import ImageDataModule, cpu_trainer, make_mlp


class Wrapper(L.LightningModule):
    """A LightningModule that holds the network as ``self.model``."""

    def __init__(self):
        super().__init__()
        self.model = make_mlp()
        self.save_hyperparameters()

    def training_step(self, batch, batch_idx):
        return F.cross_entropy(self.model(batch[0]), batch[1])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_lightning_checkpoint_into_plain_net_and_back(tmp_path):
    module = Wrapper()
    ckpt = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    cpu_trainer(max_epochs=1, callbacks=[ckpt], enable_checkpointing=True, limit_val_batches=0).fit(
        module, datamodule=ImageDataModule(n_train=16)
    )
    net = make_mlp()
    report = load_weights(net, tmp_path / "last.ckpt", strict=True)
    assert report.prefix == "strip 'model.'"
    assert all(torch.equal(v, module.model.state_dict()[k]) for k, v in net.state_dict().items())
    # and a plain net's weights into a fresh LightningModule
    back = Wrapper()
    report = load_weights(back, save_weights(net, tmp_path / "net.safetensors"), strict=True)
    assert report.prefix == "add 'model.'"
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in back.model.state_dict().items())
