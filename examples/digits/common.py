"""Shared pieces of the examples: scikit-learn's digits as a Dataset, a small ResNet, a LightningModule.

The digits (1,797 grey 8x8 images of the digits 0-9, 180 per class) ship inside
scikit-learn, so nothing is downloaded. ``DigitsDataset`` scales them to 12x12 and pads
them to 16x16, which leaves room for small shifts (the training augmentation, and the
test-time augmentation that matches it).
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from lightning_tricks import NoBiasDecay, TTAPredict

IMAGE_SIZE = 16

#: test-time augmentation matching the training augmentation (random shifts of up to 2
#: pixels, zero fill): the eight shifts of one pixel (with the identity, a 3x3 grid)
ONE_PIXEL_SHIFTS = (
    "hshift:1",
    "hshift:-1",
    "vshift:1",
    "vshift:-1",
    "hshift:1+vshift:1",
    "hshift:1+vshift:-1",
    "hshift:-1+vshift:1",
    "hshift:-1+vshift:-1",
)


class DigitsDataset(Dataset):
    """scikit-learn's handwritten digits as ``(image, label)`` pairs, images ``(1, 16, 16)``.

    Args:
        classes: keep only these digits; their labels become ``0..len(classes)-1`` in
            this order. ``None`` keeps all ten.
        per_class: keep at most this many samples of each class (the first ones, in the
            order scikit-learn ships them); ``None`` keeps all.
    """

    def __init__(self, classes: Sequence[int] | None = None, per_class: int | None = None) -> None:
        from sklearn.datasets import load_digits

        x, y = load_digits(return_X_y=True)
        images = torch.tensor(x, dtype=torch.float32).view(-1, 1, 8, 8) / 16.0
        labels = torch.tensor(y, dtype=torch.long)
        self.classes = list(range(10)) if classes is None else [int(c) for c in classes]
        keep: list[int] = []
        for c in self.classes:
            idx = (labels == c).nonzero().flatten().tolist()
            keep += idx if per_class is None else idx[:per_class]
        keep.sort()
        remap = torch.full((10,), -1, dtype=torch.long)
        remap[self.classes] = torch.arange(len(self.classes))
        images = F.interpolate(images[keep], size=12, mode="bilinear", align_corners=False)
        images = F.pad(images, (2, 2, 2, 2))
        self.images = (images - 0.25) / 0.35  # roughly zero mean, unit variance
        self.targets = remap[labels[keep]].tolist()  # `labels="targets"` stratifies SplitDataModule

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.images[i], self.targets[i]


def random_shift(x: torch.Tensor, max_shift: int = 2) -> torch.Tensor:
    """Shift each image of ``x`` by up to ``max_shift`` pixels (zero fill), on x's device."""
    if max_shift == 0:
        return x
    n, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4)
    dy, dx = torch.randint(0, 2 * max_shift + 1, (2, n, 1, 1), device=x.device)
    rows = (torch.arange(h, device=x.device).view(1, h, 1) + dy).expand(n, h, w)
    cols = (torch.arange(w, device=x.device).view(1, 1, w) + dx).expand(n, h, w)
    flat = (rows * padded.shape[-1] + cols).view(n, 1, h * w).expand(-1, x.shape[1], -1)
    return padded.flatten(2).gather(2, flat).view_as(x)


class BasicBlock(nn.Module):
    """A ResNet basic block (two 3x3 convs, BatchNorm, identity or 1x1 shortcut)."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = (
            nn.Identity()
            if stride == 1 and cin == cout
            else nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


def make_backbone(width: int = 16) -> nn.Sequential:
    """Stem + three residual stages + global pooling: ``(B, 1, H, W) -> (B, 4 * width)``."""
    return nn.Sequential(
        nn.Sequential(nn.Conv2d(1, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU()),
        BasicBlock(width, width),
        BasicBlock(width, 2 * width, stride=2),
        BasicBlock(2 * width, 4 * width, stride=2),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    )


class DigitsNet(nn.Module):
    """A plain ``nn.Module`` (for Fabric / hand-written loops): ``backbone`` then ``head``."""

    def __init__(self, num_classes: int = 10, width: int = 16) -> None:
        super().__init__()
        self.backbone = make_backbone(width)
        self.head = nn.Linear(4 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


class DigitsModule(TTAPredict, L.LightningModule):
    """The digits CNN as a LightningModule with TTA, weight decay on every parameter.

    ``TTAPredict`` makes ``trainer.predict`` (and ``tta_forward``, and ``trainer.test`` once
    ``tta_on_test`` is set) average the softmax over the one-pixel shifts below. The
    examples use :class:`DigitsClassifier`, which adds ``NoBiasDecay``; this class is the
    comparison without it (``benchmarks/quality.py``).

    Args:
        num_classes: number of outputs.
        width: channels of the first stage (the others have 2x and 4x).
        lr: AdamW learning rate (one-cycle schedule over the run).
        weight_decay: AdamW weight decay.
        shift: training augmentation: random shifts of up to this many pixels.
    """

    tta_views = ONE_PIXEL_SHIFTS  # like the training augmentation: shifted, same size, zero fill
    tta_merge = "mean_softmax"
    # a fixed number of images per forward pass: planning it ("auto") would time several
    # passes over all the views, more than TTA itself costs this small model
    tta_chunk_size = 1024

    def __init__(
        self,
        num_classes: int = 10,
        width: int = 16,
        lr: float = 3e-3,
        weight_decay: float = 0.05,
        shift: int = 2,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.backbone = make_backbone(width)
        self.head = nn.Linear(4 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = F.cross_entropy(self(random_shift(x, self.hparams.shift)), y)
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def _evaluate(self, batch: Any, stage: str) -> None:
        x, y = batch
        logits = self(x)
        self.log(f"{stage}_loss", F.cross_entropy(logits, y), sync_dist=True)
        self.log(f"{stage}_acc", (logits.argmax(-1) == y).float().mean(), prog_bar=True, sync_dist=True)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def configure_optimizers(self) -> Any:
        params = [p for p in self.parameters() if p.requires_grad]  # FreezeBackbone adds the rest later
        opt = torch.optim.AdamW(params, lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        total = self.trainer.estimated_stepping_batches
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=self.hparams.lr, total_steps=max(1, total))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


class DigitsClassifier(NoBiasDecay, DigitsModule):
    """The digits CNN as a LightningModule, with no weight decay on biases/norms and TTA.

    ``NoBiasDecay`` splits the AdamW group of :class:`DigitsModule` into decay / no-decay
    parts: ``weight_decay`` applies to the weights only, not to biases and BatchNorm.
    """


# ---------------------------------------------------------------------------- command line
def add_common_args(parser: argparse.ArgumentParser, epochs: int, out: str) -> None:
    """The options every example shares: device, length of the run, output folder, seed."""
    parser.add_argument("--epochs", type=int, default=epochs, help=f"training epochs (default {epochs})")
    parser.add_argument(
        "--limit-batches", type=int, default=None, help="at most this many batches per epoch (quick runs)"
    )
    parser.add_argument("--out", default=out, help=f"output folder (default {out})")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--gpu", action="store_true", help="train on GPU(s) with precision 16-mixed")
    parser.add_argument(
        "--devices", type=int, default=1, help="number of GPUs; more than 1 trains with strategy='ddp'"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="CPU threads of torch (default 1: these models are too small to gain)",
    )


def configure_cpu(args: argparse.Namespace) -> None:
    """Use ``--threads`` intra-op threads on CPU.

    The models here are so small that a second thread gains nothing, while on a busy
    machine an intra-op thread that waits for a core stalls every operation (measured:
    a run of seconds on an idle 2-core machine took minutes next to another job).
    """
    if not args.gpu:
        torch.set_num_threads(max(1, args.threads))


def trainer_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """Trainer arguments for CPU (default) or ``--gpu [--devices N]`` (16-mixed, DDP for N > 1)."""
    if args.devices > 1 and not args.gpu:
        raise SystemExit("--devices N > 1 needs --gpu (DDP over N GPUs)")
    kwargs: dict[str, Any] = {
        "accelerator": "gpu" if args.gpu else "cpu",
        "devices": args.devices,
        "precision": "16-mixed" if args.gpu else "32-true",
        "max_epochs": args.epochs,
        "deterministic": not args.gpu,
        "enable_progress_bar": False,
        "enable_model_summary": False,
    }
    if args.devices > 1:
        kwargs["strategy"] = "ddp"
    if args.limit_batches is not None:
        kwargs["limit_train_batches"] = kwargs["limit_val_batches"] = args.limit_batches
    return kwargs


def write_summary(out: str | os.PathLike[str], summary: dict[str, Any]) -> Path:
    """Write ``summary.json`` into ``out`` (the tests read it back) and return its path."""
    path = Path(out) / "summary.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return path
