"""Small demo models and data for trying the tricks, in the spirit of ``lightning.pytorch.demos``.

The examples in this documentation import from here, so that they run with only the
installed package. Nothing is downloaded: the data is generated in code.

* Models: `SmallCNN` (convolutions with BatchNorm), `BlockNet` (a tiny vision transformer)
  and `MLP`. Each takes images of shape ``(B, 3, 8, 8)`` and has a ``backbone`` and a
  ``head`` submodule, the layout the fine-tuning tricks address by name.
* `ClassifierModule`: a LightningModule around one of them, with a choice of optimizer
  and LR scheduler.
* `ImageDataModule`: loaders over `make_image_dataset`, images whose class decides which
  quadrant is bright.
* `cpu_trainer`: a quiet, deterministic CPU Trainer.

Example:
    >>> from lightning_tricks.demos import ClassifierModule, ImageDataModule, cpu_trainer
    >>> trainer = cpu_trainer(max_epochs=1)
    >>> trainer.fit(ClassifierModule(arch="cnn"), datamodule=ImageDataModule())
    >>> sorted(trainer.callback_metrics)
    ['train_loss', 'val_acc', 'val_loss']
"""

from __future__ import annotations

from typing import Any, Literal

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

__all__ = [
    "IMAGE_SHAPE",
    "MLP",
    "MODELS",
    "NUM_CLASSES",
    "BlockNet",
    "ClassifierModule",
    "ImageDataModule",
    "SmallCNN",
    "cpu_trainer",
    "make_image_dataset",
]

IMAGE_SHAPE = (3, 8, 8)
"""The shape of one demo image: (channels, height, width)."""
NUM_CLASSES = 4
"""The number of classes of the demo data and models, unless told otherwise."""

Arch = Literal["mlp", "cnn", "blocks"]
Optimizer = Literal["sgd", "adamw"]
Scheduler = Literal["none", "step", "onecycle", "plateau", "lambda"]


class _BackboneHead(nn.Module):
    backbone: nn.Module
    head: nn.Module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


class MLP(_BackboneHead):
    """Flatten, then two Linear-ReLU layers in ``backbone``; one Linear as ``head``.

    Example:
        >>> MLP()(torch.zeros(2, 3, 8, 8)).shape
        torch.Size([2, 4])
    """

    def __init__(self, in_features: int = 3 * 8 * 8, hidden: int = 32, num_classes: int = NUM_CLASSES):
        super().__init__()
        self.backbone = nn.Sequential(
            nn.Flatten(), nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU()
        )
        self.head = nn.Linear(hidden, num_classes)


class SmallCNN(_BackboneHead):
    """Two Conv-BatchNorm-ReLU blocks in ``backbone``; pooling, flatten and Linear in ``head``.

    Example:
        >>> net = SmallCNN(num_classes=10)
        >>> net(torch.zeros(2, 3, 8, 8)).shape
        torch.Size([2, 10])
        >>> net.head
        Sequential(
          (0): AdaptiveAvgPool2d(output_size=1)
          (1): Flatten(start_dim=1, end_dim=-1)
          (2): Linear(in_features=16, out_features=10, bias=True)
        )
    """

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


class ResidualBlock(nn.Module):
    """A pre-norm transformer block: ``x + attn(LN(x))``, then ``x + MLP(LN(x))``.

    Example:
        >>> ResidualBlock(16)(torch.zeros(2, 5, 16)).shape
        torch.Size([2, 5, 16])
    """

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
    """Non-overlapping ``patch`` x ``patch`` patches of an 8 x 8 image, projected to ``dim``,
    plus a learned position embedding ``pos``."""

    def __init__(self, dim: int, patch: int = 2):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, patch, stride=patch)
        self.pos = nn.Parameter(torch.zeros(1, (8 // patch) ** 2, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2) + self.pos


class MeanPoolHead(nn.Module):
    """LayerNorm, mean over the tokens, then the Linear classifier ``fc``."""

    def __init__(self, dim: int, num_classes: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.norm(x).mean(dim=1))


class BlockNet(_BackboneHead):
    """A tiny vision transformer.

    ``backbone`` holds the patch embedding ``embed`` (a `PatchEmbed`) and ``blocks``, a
    Sequential of ``depth`` `ResidualBlock`; ``head`` is a `MeanPoolHead` (LayerNorm, mean
    over tokens, Linear ``fc``).

    Example:
        >>> net = BlockNet(depth=3)
        >>> net(torch.zeros(2, 3, 8, 8)).shape
        torch.Size([2, 4])
        >>> [name for name, _ in net.backbone.named_children()], len(net.backbone.blocks)
        (['embed', 'blocks'], 3)
    """

    def __init__(self, dim: int = 16, depth: int = 2, num_classes: int = NUM_CLASSES, dropout: float = 0.0):
        super().__init__()
        self.backbone = nn.Sequential()
        self.backbone.add_module("embed", PatchEmbed(dim))
        self.backbone.add_module(
            "blocks", nn.Sequential(*[ResidualBlock(dim, dropout=dropout) for _ in range(depth)])
        )
        self.head = MeanPoolHead(dim, num_classes)


MODELS: dict[str, type[_BackboneHead]] = {"mlp": MLP, "cnn": SmallCNN, "blocks": BlockNet}
"""The networks `ClassifierModule` builds, by ``arch`` name."""


def _check_choice(name: str, value: object, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"`{name}` must be one of {', '.join(map(repr, allowed))}; got {value!r}")


class ClassifierModule(L.LightningModule):
    """A LightningModule that classifies the demo images with one of `MODELS`.

    ``self.backbone`` and ``self.head`` are attributes of the LightningModule itself, so
    the tricks address them as ``"backbone"`` and ``"head"``. It logs ``train_loss``,
    ``val_loss``, ``val_acc`` (and ``test_*``); ``predict_step`` returns the logits.

    Args:
        arch: the network: ``"cnn"`` (`SmallCNN`), ``"blocks"`` (`BlockNet`) or ``"mlp"``.
        lr: learning rate.
        optimizer: ``"sgd"`` (momentum 0.9) or ``"adamw"``.
        weight_decay: weight decay of the single parameter group.
        scheduler: ``"none"``, or an LR scheduler: ``"step"`` (halves the LR each epoch),
            ``"lambda"`` (times 0.9 each epoch), ``"onecycle"`` (per step, over the whole
            fit), ``"plateau"`` (halves the LR when ``val_loss`` stops falling).
        num_classes: the number of classes.
        dropout: ``> 0`` adds dropout: inside the residual blocks of ``"blocks"``, between
            backbone and head for the other architectures.

    Raises:
        ValueError: if ``arch``, ``optimizer`` or ``scheduler`` is not one of its choices.

    Example:
        >>> model = ClassifierModule(arch="blocks", optimizer="adamw", lr=1e-3)
        >>> type(model.head).__name__, model(torch.zeros(2, 3, 8, 8)).shape
        ('MeanPoolHead', torch.Size([2, 4]))
    """

    def __init__(
        self,
        arch: Arch = "cnn",
        lr: float = 0.05,
        optimizer: Optimizer = "sgd",
        weight_decay: float = 1e-4,
        scheduler: Scheduler = "none",
        num_classes: int = NUM_CLASSES,
        dropout: float = 0.0,
    ):
        super().__init__()
        _check_choice("arch", arch, tuple(MODELS))
        _check_choice("optimizer", optimizer, ("sgd", "adamw"))
        _check_choice("scheduler", scheduler, ("none", "step", "onecycle", "plateau", "lambda"))
        self.save_hyperparameters()
        if arch == "blocks" and dropout:
            net: Any = BlockNet(num_classes=num_classes, dropout=dropout)
        else:
            net = MODELS[arch](num_classes=num_classes)
        self.backbone = net.backbone
        self.head = net.head
        self.dropout: nn.Module | None = nn.Dropout(dropout) if dropout and arch != "blocks" else None
        self.example_input_array = torch.zeros(2, *IMAGE_SHAPE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.backbone(x)
        return self.head(h if self.dropout is None else self.dropout(h))

    def _step(self, batch: Any, stage: str) -> torch.Tensor:
        x, y = batch[0], batch[1]
        logits = self(x)
        loss = F.cross_entropy(logits.float(), y)
        self.log(f"{stage}_loss", loss, prog_bar=stage == "train", sync_dist=stage != "train")
        if stage != "train":
            acc = (logits.argmax(-1) == y).float().mean()
            self.log(f"{stage}_acc", acc, sync_dist=True)
        return loss

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "test")

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> torch.Tensor:
        return self(batch[0])

    def configure_optimizers(self) -> Any:
        hp: Any = self.hparams
        params = [p for p in self.parameters() if p.requires_grad]
        opt: torch.optim.Optimizer
        if hp.optimizer == "sgd":
            opt = torch.optim.SGD(params, lr=hp.lr, momentum=0.9, weight_decay=hp.weight_decay)
        else:
            opt = torch.optim.AdamW(params, lr=hp.lr, weight_decay=hp.weight_decay)
        if hp.scheduler == "none":
            return opt
        if hp.scheduler == "step":
            sched: Any = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
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


def make_image_dataset(n: int = 64, seed: int = 0, num_classes: int = NUM_CLASSES) -> TensorDataset:
    """``n`` images of shape (3, 8, 8) whose class decides which 4 x 4 quadrant is bright, plus noise.

    Classes are balanced (class ``i % num_classes`` for the ``i``-th image before shuffling);
    class ``c`` brightens quadrant ``c % 4``. The same ``seed`` gives the same data.

    Example:
        >>> data = make_image_dataset(8, seed=0)
        >>> x, y = data.tensors
        >>> x.shape, sorted(y.tolist())
        (torch.Size([8, 3, 8, 8]), [0, 0, 1, 1, 2, 2, 3, 3])
    """
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % num_classes
    y = y[torch.randperm(n, generator=g)]
    x = 0.5 * torch.randn(n, *IMAGE_SHAPE, generator=g)
    for c in range(num_classes):
        r, col = divmod(c % 4, 2)
        x[y == c, :, 4 * r : 4 * r + 4, 4 * col : 4 * col + 4] += 1.0
    return TensorDataset(x, y)


class ImageDataModule(L.LightningDataModule):
    """Train, validation, test and predict loaders over `make_image_dataset`.

    The training set is ``make_image_dataset(n_train, seed=0)``; validation, test and
    predict share ``make_image_dataset(n_val, seed=1)``. Batches are ``(images, labels)``.
    ``shuffle`` is off by default, so that runs are exactly reproducible.

    Args:
        n_train: the number of training images.
        n_val: the number of validation (and test and predict) images.
        batch_size: the batch size of every loader.
        shuffle: shuffle the training set each epoch.
        num_classes: the number of classes.

    Example:
        >>> dm = ImageDataModule(n_train=32, batch_size=8)
        >>> dm.setup("fit")
        >>> x, y = next(iter(dm.train_dataloader()))
        >>> x.shape, y.shape, len(dm.train_dataloader())
        (torch.Size([8, 3, 8, 8]), torch.Size([8]), 4)
    """

    def __init__(
        self,
        n_train: int = 64,
        n_val: int = 32,
        batch_size: int = 16,
        shuffle: bool = False,
        num_classes: int = NUM_CLASSES,
    ):
        super().__init__()
        self.n_train, self.n_val, self.batch_size, self.shuffle = n_train, n_val, batch_size, shuffle
        self.num_classes = num_classes

    def setup(self, stage: str | None = None) -> None:
        self.train_set = make_image_dataset(self.n_train, seed=0, num_classes=self.num_classes)
        self.val_set = make_image_dataset(self.n_val, seed=1, num_classes=self.num_classes)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=self.shuffle)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.batch_size)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.batch_size)

    def predict_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.batch_size)


def cpu_trainer(**overrides: Any) -> L.Trainer:
    """A quiet, deterministic CPU Trainer for trying things out.

    2 epochs, one device, no logger, no checkpoints, no progress bar, model summary or
    sanity check; every keyword argument overrides (or adds to) these defaults.

    Example:
        >>> trainer = cpu_trainer(max_epochs=1, limit_train_batches=2)
        >>> trainer.max_epochs, trainer.logger, trainer.limit_train_batches
        (1, None, 2)
    """
    kwargs: dict[str, Any] = dict(
        accelerator="cpu",
        devices=1,
        max_epochs=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        deterministic=True,
        num_sanity_val_steps=0,
    )
    kwargs.update(overrides)
    return L.Trainer(**kwargs)
