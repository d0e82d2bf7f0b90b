"""Per-step overhead of the gradient clipping cores, measured side by side in one run.

Usage: python benchmarks/gradient_clipping.py [--steps 20] [--rounds 5] [--device cpu|cuda]

Prints a markdown table: time of forward + backward + clipping + SGD step, as a ratio
to the same step without clipping. Every run starts from a fresh, identically
initialised model, optimizer and clipper (no state carries over between variants), the
variants run in a shuffled order every round (seeded), and each figure is the median
over rounds.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn
from tqdm import tqdm

from lightning_tricks.functional import AutoClipper, adaptive_clip_grad_, auto_clip_


def make_model(device: str) -> nn.Module:
    layers: list[nn.Module] = [nn.Conv2d(3, 32, 3, padding=1), nn.ReLU()]
    for _ in range(6):
        layers += [nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU()]
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10)]
    return nn.Sequential(*layers).to(device)


def make_clip(name: str, params: list[nn.Parameter]) -> Callable[[], object]:
    """A fresh clipping closure over ``params`` (a fresh AutoClipper history for each run)."""
    if name == "none":
        return lambda: None
    if name.startswith("clip_grad_norm_"):
        return lambda: torch.nn.utils.clip_grad_norm_(params, 1.0)
    if name.startswith("adaptive_clip_grad_"):
        return lambda: adaptive_clip_grad_(params[:-2], 0.01)
    clipper = AutoClipper(percentile=10, history_size=10_000)
    return lambda: auto_clip_(params, clipper)


VARIANTS = [
    "none",
    "clip_grad_norm_ (Lightning's gradient_clip_val)",
    "adaptive_clip_grad_ (AGC)",
    "auto_clip_",
]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    torch.manual_seed(0)
    x = torch.randn(32, 3, 32, 32, device=args.device)
    y = torch.randint(0, 10, (32,), device=args.device)

    def sync() -> None:
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    def run(name: str, steps: int, warmup: int = 3) -> tuple[float, int]:
        torch.manual_seed(0)  # identical initial weights for every variant and round
        model = make_model(args.device)
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        params = list(model.parameters())
        clip = make_clip(name, params)

        def step() -> None:
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            clip()
            opt.step()

        for _ in range(warmup):
            step()
        sync()
        start = time.perf_counter()
        for _ in range(steps):
            step()
        sync()
        return (time.perf_counter() - start) / steps, sum(p.numel() for p in params)

    for name in VARIANTS:  # warm-up (allocator, kernels)
        run(name, 3)
    times: dict[str, list[float]] = {k: [] for k in VARIANTS}
    order = list(VARIANTS)
    rng = random.Random(0)
    n_params = 0
    for _ in tqdm(range(args.rounds), desc="rounds", unit="round"):
        rng.shuffle(order)
        for name in order:
            t, n_params = run(name, args.steps)
            times[name].append(t)
    base = statistics.median(times["none"])
    print(f"device: {args.device}, torch {torch.__version__}, {n_params} parameters")
    print("| variant | ms / step | ratio to no clipping |")
    print("|---|---|---|")
    for name, ts in times.items():
        t = statistics.median(ts)
        print(f"| {name} | {1000 * t:.2f} | {t / base:.3f} |")


if __name__ == "__main__":
    main()
