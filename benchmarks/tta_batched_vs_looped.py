"""TTA: all views in one batched forward pass vs one forward per view (ttach's loop).

Run: ``python benchmarks/tta_batched_vs_looped.py`` from the repository root. Prints a
markdown table: time per call of both, their ratio, and the largest output difference.
"""

from __future__ import annotations

import platform
import sys
import time
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lightning_tricks.functional import merge_outputs, parse_views, tta_predict

VIEWS = ["hflip", "vflip", "rot90", "rot180", "rot270", "hflip+rot90", "vflip+rot90"]  # + identity = 8


def small_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1, stride=2), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10),
    ).eval()  # fmt: skip


def looped(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """One forward per view in a Python loop, as ttach does."""
    with torch.inference_mode():
        outs = [model(v.apply(x)) for v in parse_views(["identity", *VIEWS])]
        return merge_outputs(torch.stack(outs), "mean")


def timeit(fn, reps: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        best = min(best, (time.perf_counter() - t0) / reps)
    return best


def main() -> None:
    torch.manual_seed(0)
    model = small_cnn()
    rows = []
    for b in tqdm((1, 8, 64), desc="batch sizes", unit="batch size"):
        x = torch.randn(b, 3, 32, 32)
        ref = looped(model, x)
        out = tta_predict(model, x, VIEWS, "mean")
        diff = (out - ref).abs().max().item()
        assert torch.allclose(out, ref, rtol=1e-4, atol=1e-5), diff
        reps = 20 if b < 64 else 5
        t_loop = timeit(lambda x=x: looped(model, x), reps)
        t_batch = timeit(lambda x=x: tta_predict(model, x, VIEWS, "mean"), reps)
        chunk = max(64, b)
        t_chunk = timeit(lambda x=x, c=chunk: tta_predict(model, x, VIEWS, "mean", chunk_size=c), reps)
        rows.append(
            f"| {b} | {1e3 * t_loop:.2f} | {1e3 * t_batch:.2f} | {t_loop / t_batch:.2f}x "
            f"| {1e3 * t_chunk:.2f} | {t_loop / t_chunk:.2f}x | {diff:.1e} |"
        )
    print(
        f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    )
    print(f"model: small CNN (3 conv + BN), 32x32 input, {len(VIEWS) + 1} views, merge=mean\n")
    print(
        "| batch | looped ms | batched ms | looped / batched | batched, chunk_size=max(64, batch) ms "
        "| looped / chunked | max abs diff |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
