"""Gradient checkpointing: bytes saved for backward and step time, plain vs checkpointed.

A 12-block pre-norm transformer (dim 128, 64 tokens, batch 16), one training step =
forward + backward + SGD step. Saved bytes are counted with
``torch.autograd.graph.saved_tensors_hooks`` (every tensor autograd keeps for backward,
parameters included); step times are medians of interleaved runs in one process.
Target from issue 7: >= 50% fewer saved bytes at <= 1.4x the step time.

Run: python benchmarks/gradient_checkpointing.py [--depth 12] [--repeats 7]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lightning_tricks.functional import apply_gradient_checkpointing
from tests.helpers.models import ResidualBlock


class Net(torch.nn.Module):
    def __init__(self, depth: int, dim: int):
        super().__init__()
        self.blocks = torch.nn.Sequential(*[ResidualBlock(dim, heads=4, dropout=0.1) for _ in range(depth)])
        self.head = torch.nn.Linear(dim, 10)

    def forward(self, x):
        return self.head(self.blocks(x).mean(1))


def saved_bytes(model, x, y) -> int:
    seen: dict[int, int] = {}

    def pack(t):
        # count storage once (parameters and views are shared between saves)
        key = t.untyped_storage().data_ptr() if t.device.type != "meta" else id(t)
        seen[key] = max(seen.get(key, 0), t.untyped_storage().nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    model.zero_grad(set_to_none=True)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    return sum(v for k, v in seen.items() if k not in params)  # activations only


def step(model, opt, x, y) -> float:
    t0 = time.perf_counter()
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--depth", type=int, default=12)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    torch.manual_seed(0)
    plain = Net(args.depth, args.dim)
    ckpt = copy.deepcopy(plain)
    apply_gradient_checkpointing(ckpt, "ResidualBlock")
    x = torch.randn(args.batch, args.tokens, args.dim)
    y = torch.randint(0, 10, (args.batch,))
    b_plain, b_ckpt = saved_bytes(plain, x, y), saved_bytes(ckpt, x, y)
    opts = {id(m): torch.optim.SGD(m.parameters(), lr=1e-3) for m in (plain, ckpt)}
    times: dict[str, list[float]] = {"plain": [], "ckpt": []}
    for _ in range(3):  # warm-up
        step(plain, opts[id(plain)], x, y)
        step(ckpt, opts[id(ckpt)], x, y)
    for _ in range(args.repeats):  # interleaved, so load changes hit both alike
        times["plain"].append(step(plain, opts[id(plain)], x, y))
        times["ckpt"].append(step(ckpt, opts[id(ckpt)], x, y))
    t_plain, t_ckpt = statistics.median(times["plain"]), statistics.median(times["ckpt"])
    saved_frac = 1 - b_ckpt / b_plain
    ratio = t_ckpt / t_plain
    met = saved_frac >= 0.5 and ratio <= 1.4
    print(
        f"{args.depth} blocks, dim {args.dim}, {args.tokens} tokens, batch {args.batch}; "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads\n"
    )
    print("| variant | activation bytes saved for backward | median step time |")
    print("|---|---|---|")
    print(f"| plain | {b_plain / 2**20:.2f} MiB | {1000 * t_plain:.1f} ms |")
    print(f"| checkpointed blocks | {b_ckpt / 2**20:.2f} MiB | {1000 * t_ckpt:.1f} ms |")
    print(f"| **ratio** | **{b_ckpt / b_plain:.3f}x ({100 * saved_frac:.0f}% fewer)** | **{ratio:.2f}x** |\n")
    print(f"Target (>= 50% fewer saved bytes at <= 1.4x step time): {'MET' if met else 'NOT MET'}")


if __name__ == "__main__":
    main()
