"""SyncDetector's overhead: time per training step with and without it, side by side.

A plain PyTorch loop on a small CNN: baseline steps, steps inside ``detect_syncs`` (the
cost of an inspected step), and the amortised cost at ``every_n_steps`` = 10 and 100.
Prints a markdown table of ratios and writes it to benchmarks/results/sync_detector_overhead.md.

    python benchmarks/sync_detector_overhead.py [--steps 30] [--device cpu]
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lightning_tricks.functional import SyncReport, detect_syncs


def make_model() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10),
    )  # fmt: skip


def time_steps(model, opt, x, y, steps: int, inspect: bool, device) -> float:
    report = SyncReport()
    for _ in range(3):  # warm-up
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        if inspect:
            with detect_syncs(report, device=device, cuda_sync_debug=False):
                loss = nn.functional.cross_entropy(model(x), y)
        else:
            loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad()
    if device.type == "cuda":
        torch.cuda.synchronize()
    assert report.total == 0, report.format()
    return (time.perf_counter() - start) / steps


def main() -> str:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "sync_detector_overhead.md"))
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = make_model().to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(32, 3, 32, 32, device=device), torch.randint(0, 10, (32,), device=device)
    with tqdm(total=3, desc="plain / inspected / plain", unit="run") as bar:  # updated between runs only
        base = time_steps(model, opt, x, y, args.steps, False, device)
        bar.update()
        inspected = time_steps(model, opt, x, y, args.steps, True, device)
        bar.update()
        base2 = time_steps(model, opt, x, y, args.steps, False, device)  # bracket the measurement
        bar.update()
    base = min(base, base2)
    rows = [
        ("plain step", base, 1.0),
        ("inspected step (forward under detect_syncs)", inspected, inspected / base),
    ]
    for n in (10, 100):
        amortised = (base * (n - 1) + inspected) / n
        rows.append((f"amortised, every_n_steps={n}", amortised, amortised / base))
    machine = f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}, {device}"
    lines = [
        f"SyncDetector overhead (small CNN, batch 32x3x32x32, {args.steps} steps; {machine})",
        "",
        "| step | ms/step | ratio to plain |",
        "|---|---:|---:|",
    ]
    lines += [f"| {name} | {t * 1e3:.2f} | {r:.3f} |" for name, t, r in rows]
    table = "\n".join(lines)
    print(table)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(table + "\n")
    return table


if __name__ == "__main__":
    main()
