"""Quick start: train a small CNN on scikit-learn's handwritten digits and print its accuracy.

The data (1,797 8x8 images) ships inside scikit-learn: nothing is downloaded.

    python examples/digits/quickstart.py            # CPU
    python examples/digits/quickstart.py --gpu      # one GPU, 16-mixed
"""

from __future__ import annotations

import argparse

import lightning as L
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset, random_split


class DigitsCNN(L.LightningModule):
    def __init__(self, lr: float = 3e-3):
        super().__init__()
        self.save_hyperparameters()
        self.backbone = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        )  # fmt: skip
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(32 * 4 * 4, 10))

    def forward(self, x):
        return self.head(self.backbone(x))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_acc", (self(x).argmax(-1) == y).float().mean(), prog_bar=True)

    def test_step(self, batch, batch_idx):
        x, y = batch
        self.log("test_acc", (self(x).argmax(-1) == y).float().mean())

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=self.hparams.lr)


def digits_splits(seed: int = 0):
    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x, dtype=torch.float32).view(-1, 1, 8, 8) / 16.0
    data = TensorDataset(x, torch.tensor(y))
    return random_split(data, [0.7, 0.15, 0.15], generator=torch.Generator().manual_seed(seed))


def main(argv=None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--gpu", action="store_true", help="train on one GPU with 16-mixed precision")
    args = parser.parse_args(argv)
    L.seed_everything(0, verbose=False)
    train, val, test = digits_splits()
    trainer = L.Trainer(
        max_epochs=args.epochs,
        accelerator="gpu" if args.gpu else "cpu",
        devices=1,
        precision="16-mixed" if args.gpu else "32-true",
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
    )
    model = DigitsCNN()
    trainer.fit(model, DataLoader(train, batch_size=64, shuffle=True), DataLoader(val, batch_size=256))
    acc = trainer.test(model, DataLoader(test, batch_size=256), verbose=False)[0]["test_acc"]
    print(f"digits test accuracy after {args.epochs} epochs: {acc:.3f}")
    return acc


if __name__ == "__main__":
    main()
