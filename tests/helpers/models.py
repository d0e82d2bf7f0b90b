"""Tiny test models. Every model takes images of shape (B, 3, 8, 8) and has a
``backbone`` and a ``head`` submodule, so that every trick can be tried on each."""

from __future__ import annotations

from typing import Literal

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

IMAGE_SHAPE = (3, 8, 8)
NUM_CLASSES = 4


class MLP(nn.Module):
    """Flatten -> Linear -> ReLU -> Linear -> ReLU | head Linear."""

    def __init__(self, in_features: int = 3 * 8 * 8, hidden: int = 32, num_classes: int = NUM_CLASSES):
        super().__init__()
        self.backbone = nn.Sequential(
            nn.Flatten(), nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU()
        )
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def make_mlp(hidden: int = 32, num_classes: int = NUM_CLASSES) -> MLP:
    return MLP(hidden=hidden, num_classes=num_classes)


class SmallCNN(nn.Module):
    """Two conv blocks with BatchNorm in ``backbone``; pooling + Linear in ``head``."""

    def __init__(self, channels: int = 8, num_classes: int = NUM_CLASSES):
        super().__init__()
        self.backbone = nn.Sequential(
            nn.Sequential(
                nn.Conv2d(3, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels), nn.ReLU()
            ),
            nn.Sequential(
                nn.Conv2d(channels, 2 * channels, 3, padding=1, bias=False),
                nn.BatchNorm2d(2 * channels),
                nn.ReLU(),
            ),
        )
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * channels, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


class ResidualBlock(nn.Module):
    """Pre-norm transformer-style block: x + attn(LN(x)); x + MLP(LN(x))."""

    def __init__(self, dim: int, heads: int = 2, dropout: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(
            nn.Linear(dim, 2 * dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(2 * dim, dim)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    def __init__(self, dim: int, patch: int = 2):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, patch, stride=patch)
        self.pos = nn.Parameter(torch.zeros(1, (8 // patch) ** 2, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2) + self.pos


class MeanPoolHead(nn.Module):
    def __init__(self, dim: int, num_classes: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.norm(x).mean(dim=1))


class BlockNet(nn.Module):
    """A tiny vision transformer: patch embedding and ``depth`` residual blocks in
    ``backbone`` (``backbone.blocks`` is a Sequential of :class:`ResidualBlock`), a
    LayerNorm + Linear ``head``."""

    def __init__(self, dim: int = 16, depth: int = 2, num_classes: int = NUM_CLASSES, dropout: float = 0.0):
        super().__init__()
        self.backbone = nn.Sequential()
        self.backbone.add_module("embed", PatchEmbed(dim))
        self.backbone.add_module(
            "blocks", nn.Sequential(*[ResidualBlock(dim, dropout=dropout) for _ in range(depth)])
        )
        self.head = MeanPoolHead(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


MODELS = {"mlp": MLP, "cnn": SmallCNN, "blocks": BlockNet}


class ClassifierModule(L.LightningModule):
    """A LightningModule around one of :data:`MODELS`.

    ``self.backbone`` and ``self.head`` are attributes of the LightningModule itself,
    so tricks address them as ``"backbone"`` and ``"head"``.

    Args:
        arch: which test network.
        lr: learning rate.
        optimizer: ``"sgd"`` (momentum 0.9) or ``"adamw"``.
        weight_decay: weight decay of the single parameter group.
        scheduler: optional LR scheduler.
        dropout: ``> 0`` adds dropout: inside the residual blocks of ``"blocks"``, between
            backbone and head for the other architectures.
    """

    def __init__(
        self,
        arch: Literal["mlp", "cnn", "blocks"] = "cnn",
        lr: float = 0.05,
        optimizer: Literal["sgd", "adamw"] = "sgd",
        weight_decay: float = 1e-4,
        scheduler: Literal["none", "step", "onecycle", "plateau", "lambda"] = "none",
        num_classes: int = NUM_CLASSES,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.save_hyperparameters()
        if arch == "blocks" and dropout:
            net: nn.Module = BlockNet(num_classes=num_classes, dropout=dropout)
        else:
            net = MODELS[arch](num_classes=num_classes)
        self.backbone = net.backbone
        self.head = net.head
        self.dropout = nn.Dropout(dropout) if dropout and arch != "blocks" else None
        self.example_input_array = torch.zeros(2, *IMAGE_SHAPE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.backbone(x)
        return self.head(h if self.dropout is None else self.dropout(h))

    def _step(self, batch, stage: str) -> torch.Tensor:
        x, y = batch[0], batch[1]
        logits = self(x)
        loss = F.cross_entropy(logits.float(), y)
        self.log(f"{stage}_loss", loss, prog_bar=stage == "train", sync_dist=stage != "train")
        if stage != "train":
            acc = (logits.argmax(-1) == y).float().mean()
            self.log(f"{stage}_acc", acc, sync_dist=True)
        return loss

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx):
        return self._step(batch, "val")

    def test_step(self, batch, batch_idx):
        return self._step(batch, "test")

    def predict_step(self, batch, batch_idx, dataloader_idx=0):
        return self(batch[0])

    def configure_optimizers(self):
        hp = self.hparams
        params = [p for p in self.parameters() if p.requires_grad]
        if hp.optimizer == "sgd":
            opt = torch.optim.SGD(params, lr=hp.lr, momentum=0.9, weight_decay=hp.weight_decay)
        else:
            opt = torch.optim.AdamW(params, lr=hp.lr, weight_decay=hp.weight_decay)
        if hp.scheduler == "none":
            return opt
        if hp.scheduler == "step":
            sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}
        if hp.scheduler == "lambda":
            sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda e: 0.9**e)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}
        if hp.scheduler == "onecycle":
            total = self.trainer.estimated_stepping_batches
            sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=hp.lr, total_steps=int(total))
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, patience=0, factor=0.5)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "monitor": "val_loss"}}
