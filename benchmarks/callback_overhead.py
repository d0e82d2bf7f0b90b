"""Overhead of every monitoring callback, idle and capturing, against a bare Trainer.

"Idle" means the callback is attached but its interval is never reached during the run
(what a user pays on the steps where it does not capture or log); "capturing" means it
captures or logs on every step (or every epoch, for per-epoch callbacks). Every
configuration is fitted in each round, in a shuffled order, so that the machine's noise
hits all of them alike.

Two figures per configuration, both as ratios to the bare Trainer of the same rounds:

* **step**: the median period between consecutive ``on_train_batch_start`` calls, i.e. a
  whole training-loop iteration with every hook; robust to the machine's noise. Per-epoch
  work (a capture at epoch end) does not show here.
* **fit**: the median wall time of ``trainer.fit`` (includes per-epoch captures and the
  fit's fixed costs).

    python benchmarks/callback_overhead.py                 # about 3-4 minutes on 2 CPU cores
    python benchmarks/callback_overhead.py --rounds 3 --steps 20   # quicker, noisier
    python benchmarks/callback_overhead.py --accelerator gpu      # on a GPU

Target (issue 8): idle overhead under 2%.
"""

from __future__ import annotations

import argparse
import platform
import random
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import TensorBoardLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from tqdm import tqdm

import lightning_tricks as lt

NEVER = 10**9


class Net(L.LightningModule):
    def __init__(self, width: int = 16):
        super().__init__()
        self.backbone = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(),
        )  # fmt: skip
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * width, 10))

    def forward(self, x):
        return self.head(self.backbone(x))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", F.cross_entropy(self(x), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01, momentum=0.9)


def configurations() -> dict[str, Callable[[], list]]:
    """name -> factory of the callbacks list. Idle configurations never reach their interval."""
    # The bare Trainer twice: the second row shows the measurement noise of this machine.
    cfg: dict[str, Callable[[], list]] = {
        "bare Trainer": lambda: [],
        "bare Trainer (again: noise)": lambda: [],
    }
    pairs = {
        "GradientMonitor": (
            lambda: lt.GradientMonitor(every_n_steps=NEVER),
            lambda: lt.GradientMonitor(every_n_steps=1),
        ),
        "SyncDetector": (
            lambda: lt.SyncDetector(on_error="ignore", every_n_steps=NEVER, start_step=NEVER),
            lambda: lt.SyncDetector(on_error="ignore", every_n_steps=1),
        ),
        "RetainedGraphGuard": (
            lambda: lt.RetainedGraphGuard(every_n_steps=NEVER),
            lambda: lt.RetainedGraphGuard(every_n_steps=1),
        ),
        "AliasingGuard": (
            lambda: lt.AliasingGuard(every_n_steps=NEVER),
            lambda: lt.AliasingGuard(every_n_steps=1),
        ),
        "MemorySnapshot": (
            lambda: lt.MemorySnapshot(start_step=NEVER, html=False),
            lambda: lt.MemorySnapshot(start_step=1, num_steps=3, html=False),
        ),
        "ActivationVisualizer": (
            # captures once at the end of fit even when idle; "capturing" = every epoch
            lambda: lt.ActivationVisualizer(every_n_epochs=NEVER),
            lambda: lt.ActivationVisualizer(every_n_epochs=1),
        ),
    }
    pairs["DataStallMonitor"] = (
        lambda: lt.DataStallMonitor(log_every_n_steps=NEVER, on_error="ignore"),
        lambda: lt.DataStallMonitor(log_every_n_steps=1, on_error="ignore"),
    )
    for name, (idle, capturing) in pairs.items():
        cfg[f"{name} idle"] = lambda f=idle: [f()]
        cfg[f"{name} capturing"] = lambda f=capturing: [f()]
    cfg["ReproducibilityCheck (per epoch)"] = lambda: [lt.ReproducibilityCheck(dirpath=tempfile.mkdtemp())]
    return cfg


class StepClock(L.Callback):
    """Records the time of every ``on_train_batch_start`` (first in the callback list)."""

    def __init__(self, sync: bool):
        self.sync = sync
        self.stamps: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.sync:
            torch.cuda.synchronize()
        self.stamps.append(time.perf_counter())

    def median_period(self) -> float:
        return statistics.median(b - a for a, b in zip(self.stamps, self.stamps[1:]))


def fit_seconds(
    make_callbacks: Callable[[], list], loaders, epochs: int, logdir: str, accelerator: str, width: int = 16
):
    L.seed_everything(0, verbose=False)
    model = Net(width)
    clock = StepClock(sync=accelerator == "gpu")
    trainer = L.Trainer(
        accelerator=accelerator,
        devices=1,
        precision="16-mixed" if accelerator == "gpu" else "32-true",
        max_epochs=epochs,
        callbacks=[clock, *make_callbacks()],
        logger=TensorBoardLogger(logdir, name="bench"),
        log_every_n_steps=50,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    start = time.perf_counter()
    trainer.fit(model, *loaders)
    return time.perf_counter() - start, clock.median_period()


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20, help="training steps per epoch")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--width", type=int, default=32, help="channels of the CNN's first stage")
    parser.add_argument("--accelerator", default="cpu", choices=["cpu", "gpu"])
    parser.add_argument("--out", default=None, help="also write the table to this markdown file")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    g = torch.Generator().manual_seed(0)
    n = args.steps * args.batch_size
    train = TensorDataset(torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g))
    val = TensorDataset(torch.randn(64, 3, 32, 32, generator=g), torch.randint(0, 10, (64,), generator=g))
    loaders = (DataLoader(train, batch_size=args.batch_size), DataLoader(val, batch_size=64))
    cfg = configurations()
    times: dict[str, list[float]] = {k: [] for k in cfg}
    steps: dict[str, list[float]] = {k: [] for k in cfg}
    order = list(cfg)
    rng = random.Random(0)
    with tempfile.TemporaryDirectory() as logdir:
        for name in tqdm(order, desc="warm-up (imports, first logger writes)", leave=False):
            fit_seconds(cfg[name], loaders, 1, logdir, args.accelerator, args.width)
        for _ in tqdm(range(args.rounds), desc="rounds", unit="round"):
            rng.shuffle(order)
            for name in tqdm(order, desc="configurations", leave=False):
                fit_time, step_time = fit_seconds(
                    cfg[name], loaders, args.epochs, logdir, args.accelerator, args.width
                )
                times[name].append(fit_time)
                steps[name].append(step_time)
    bare = statistics.median(times["bare Trainer"])
    bare_step = statistics.median(steps["bare Trainer"])
    device = (
        torch.cuda.get_device_name()
        if args.accelerator == "gpu"
        else f"CPU, {torch.get_num_threads()} threads"
    )
    lines = [
        f"Machine: {platform.machine()} {device}, torch {torch.__version__}, lightning {L.__version__}. "
        f"{args.rounds} rounds x {args.epochs} epochs x {args.steps} steps, batch {args.batch_size}, "
        f"3x32x32 CNN of width {args.width}; "
        f"bare Trainer: step {1000 * bare_step:.1f} ms, fit {bare:.2f} s.",
        "",
        "| configuration | step (ms) | step ratio | fit (s) | fit ratio |",
        "|---|---:|---:|---:|---:|",
    ]
    for name in cfg:
        med, step = statistics.median(times[name]), statistics.median(steps[name])
        lines.append(
            f"| {name} | {1000 * step:.2f} | {step / bare_step:.3f} | {med:.3f} | {med / bare:.3f} |"
        )
    table = "\n".join(lines)
    print(table)
    if args.out:
        Path(args.out).write_text(table + "\n")
    return table


if __name__ == "__main__":
    main()
