"""Per-step overhead of the gradient clipping cores, measured side by side in one run.

Usage: python benchmarks/gradient_clipping.py [--steps 30] [--device cpu|cuda]

Prints a markdown table: time of forward + backward + clipping + SGD step, as a ratio
to the same step without clipping (interleaved rounds, median of rounds).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn
from tqdm import tqdm

from lightning_tricks.functional import AutoClipper, adaptive_clip_grad_


def make_model(device: str) -> nn.Module:
    layers: list[nn.Module] = [nn.Conv2d(3, 32, 3, padding=1), nn.ReLU()]
    for _ in range(6):
        layers += [nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU()]
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10)]
    return nn.Sequential(*layers).to(device)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = make_model(args.device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x = torch.randn(32, 3, 32, 32, device=args.device)
    y = torch.randint(0, 10, (32,), device=args.device)
    params = list(model.parameters())
    clipper = AutoClipper(percentile=10, history_size=10_000)
    variants = {
        "none": lambda: None,
        "clip_grad_norm_ (Lightning's gradient_clip_val)": lambda: torch.nn.utils.clip_grad_norm_(
            params, 1.0
        ),
        "adaptive_clip_grad_ (AGC)": lambda: adaptive_clip_grad_(params[:-2], 0.01),
        "AutoClipper.clip_": lambda: clipper.clip_(params),
    }

    def sync() -> None:
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    def run(clip, steps: int) -> float:
        sync()
        start = time.perf_counter()
        for _ in range(steps):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            clip()
            opt.step()
        sync()
        return (time.perf_counter() - start) / steps

    for clip in variants.values():  # warm-up
        run(clip, 3)
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in tqdm(range(args.rounds), desc="rounds", unit="round"):
        for name, clip in variants.items():
            times[name].append(run(clip, args.steps))
    base = statistics.median(times["none"])
    print(f"device: {args.device}, torch {torch.__version__}, {sum(p.numel() for p in params)} parameters")
    print("| variant | ms / step | ratio to no clipping |")
    print("|---|---|---|")
    for name, ts in times.items():
        t = statistics.median(ts)
        print(f"| {name} | {1000 * t:.2f} | {t / base:.3f} |")


if __name__ == "__main__":
    main()
