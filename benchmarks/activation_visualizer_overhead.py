"""Fit time with ActivationVisualizer capturing every epoch, and GradientMonitor, vs a bare Trainer.

Runs the configurations side by side (interleaved, best of ``--repeats``) in one process
and prints a markdown table of ratios to the bare fit.

    python benchmarks/activation_visualizer_overhead.py --epochs 5 --repeats 3
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from tqdm import tqdm

from lightning_tricks import ActivationVisualizer, GradientMonitor
from tests.helpers import ClassifierModule, ImageDataModule

warnings.filterwarnings("ignore")


def fit_seconds(callbacks, epochs: int, tb: bool) -> float:
    torch.manual_seed(0)
    model = ClassifierModule("cnn")
    dm = ImageDataModule(n_train=4096, n_val=64, batch_size=64)
    logger = TensorBoardLogger(tempfile.mkdtemp(), name="bench") if tb else False
    trainer = L.Trainer(
        accelerator="auto",
        devices=1,
        max_epochs=epochs,
        logger=logger,
        callbacks=callbacks,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        log_every_n_steps=1,  # GradientMonitor "every step" then logs every step
        default_root_dir=tempfile.mkdtemp(),
    )
    start = time.perf_counter()
    trainer.fit(model, dm)
    return time.perf_counter() - start


CONFIGS = {
    "bare Trainer": lambda: [],
    "ActivationVisualizer, every epoch": lambda: [ActivationVisualizer(every_n_epochs=1)],
    "GradientMonitor, idle (every 10000 steps)": lambda: [GradientMonitor(every_n_steps=10_000)],
    "GradientMonitor, every step": lambda: [GradientMonitor(every_n_steps=1)],
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    best = {name: float("inf") for name in CONFIGS}
    fit_seconds([], 1, tb=True)  # warm-up: imports, allocator, thread pools
    for _ in tqdm(range(args.repeats), desc="repeats", unit="repeat"):
        for name, make in tqdm(CONFIGS.items(), desc="configurations", leave=False):
            best[name] = min(best[name], fit_seconds(make(), args.epochs, tb=True))
    base = best["bare Trainer"]
    print(
        f"{args.epochs} epochs x 64 steps (batch 64), small CNN, TensorBoard logger, best of {args.repeats}\n"
    )
    print("| configuration | fit time (s) | ratio to bare |")
    print("|---|---|---|")
    for name, t in best.items():
        print(f"| {name} | {t:.2f} | {t / base:.3f} |")


if __name__ == "__main__":
    main()
