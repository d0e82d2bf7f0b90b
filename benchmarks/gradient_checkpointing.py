"""Gradient checkpointing: bytes saved for backward and step time, plain vs checkpointed.

A 12-block pre-norm transformer (dim 128, 64 tokens, batch 16), one training step =
forward + backward + SGD step. Saved bytes are counted with
``torch.autograd.graph.saved_tensors_hooks`` (every tensor autograd keeps for backward,
parameters included); step times are medians of interleaved runs in one process.
Target from issue 7: >= 50% fewer saved bytes at <= 1.4x the step time.

Run: python benchmarks/gradient_checkpointing.py [--depth 12] [--repeats 5] [--device cuda]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

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


def _sync(x: torch.Tensor) -> None:
    if x.is_cuda:
        torch.cuda.synchronize(x.device)


def step(model, opt, x, y) -> float:
    _sync(x)
    t0 = time.perf_counter()
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    _sync(x)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--depth", type=int, default=12)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    args = parser.parse_args()
    torch.manual_seed(0)
    device = torch.device(args.device)
    plain = Net(args.depth, args.dim).to(device)
    every = copy.deepcopy(plain)
    apply_gradient_checkpointing(every, "ResidualBlock")
    alternate = copy.deepcopy(plain)
    apply_gradient_checkpointing(alternate, "blocks.*[02468]")  # blocks 0, 2, 4, ...
    models = {"plain": plain, "every block checkpointed": every, "every other block": alternate}
    x = torch.randn(args.batch, args.tokens, args.dim, device=device)
    y = torch.randint(0, 10, (args.batch,), device=device)
    nbytes = {k: saved_bytes(m, x, y) for k, m in tqdm(models.items(), desc="saved bytes", leave=False)}
    opts = {k: torch.optim.SGD(m.parameters(), lr=1e-3) for k, m in models.items()}
    times: dict[str, list[float]] = {k: [] for k in models}
    fwd: list[float] = []
    for _ in tqdm(range(2), desc="warm-up", leave=False):
        for k, m in models.items():
            step(m, opts[k], x, y)
    for _ in tqdm(range(args.repeats), desc="interleaved steps", unit="round"):  # load hits all alike
        for k, m in models.items():
            times[k].append(step(m, opts[k], x, y))
        with torch.no_grad():
            _sync(x)
            t0 = time.perf_counter()
            plain(x)
            _sync(x)
            fwd.append(time.perf_counter() - t0)
    t = {k: statistics.median(v) for k, v in times.items()}
    print(
        f"{args.depth} blocks (attention + MLP, dropout 0.1), dim {args.dim}, {args.tokens} tokens, "
        f"batch {args.batch}; {args.device}; torch {torch.__version__}, {torch.get_num_threads()} threads; "
        f"median of {args.repeats} interleaved steps\n"
    )
    print(
        "| variant | activation bytes saved for backward | vs plain | median step | vs plain | target met |"
    )
    print("|---|---|---|---|---|---|")
    for k in models:
        b_ratio, t_ratio = nbytes[k] / nbytes["plain"], t[k] / t["plain"]
        met = "-" if k == "plain" else ("yes" if b_ratio <= 0.5 and t_ratio <= 1.4 else "no")
        print(
            f"| {k} | {nbytes[k] / 2**20:.1f} MiB | {b_ratio:.2f}x | {1000 * t[k]:.0f} ms | {t_ratio:.2f}x | {met} |"
        )
    print(
        f"\nA no-grad forward of the plain model takes {statistics.median(fwd) / t['plain']:.0%} of its "
        "training step here (checkpointing every block re-runs it once in backward; the plain model "
        "in turn allocates and touches all the saved activations).\n"
        "Target (issue 7): >= 50% fewer saved bytes (<= 0.50x) at <= 1.40x the step time."
    )


if __name__ == "__main__":
    main()
