"""torch.compile and channels-last on this CPU: training-step time of a small CNN.

Four variants side by side in one process: eager/compiled (inductor) x NCHW/NHWC.
One step = forward + backward + SGD step on a batch of 32 RGB 32x32 images through
a 4-stage conv/BatchNorm/ReLU net. Compile time (first steps minus steady steps) is
reported apart from the steady-state medians of interleaved runs.

Run: python benchmarks/compile_channels_last_cpu.py [--repeats 10] [--device cuda --batch 256]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lightning_tricks.functional import (
    batch_to_channels_last,
    compile_modules,
    model_to_channels_last,
)


def make_net() -> nn.Module:
    layers, c_in = [], 3
    for c in (32, 64, 128, 128):
        layers += [
            nn.Conv2d(c_in, c, 3, padding=1, bias=False),
            nn.BatchNorm2d(c),
            nn.ReLU(),
            nn.MaxPool2d(2),
        ]
        c_in = c
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(128 * 2 * 2, 10))


def step(model, opt, x, y) -> float:
    if x.is_cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    with torch.autocast(x.device.type, dtype=torch.float16, enabled=x.is_cuda):
        loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    if x.is_cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--device", default="cpu", help="cpu, or cuda (then with fp16 autocast)")
    args = parser.parse_args()
    torch.manual_seed(0)
    base = make_net().to(args.device)
    x = torch.randn(args.batch, 3, 32, 32, device=args.device)
    y = torch.randint(0, 10, (args.batch,), device=args.device)
    variants = {}
    combos = [(compiled, nhwc) for compiled in (False, True) for nhwc in (False, True)]
    for compiled, nhwc in tqdm(combos, desc="set up + first steps (compiles)", unit="variant"):
        model = copy.deepcopy(base)
        xb = x
        if nhwc:
            model_to_channels_last(model)
            xb = batch_to_channels_last(x)
        if compiled:
            compile_modules(model, backend="inductor")
        name = f"{'compiled' if compiled else 'eager'} {'NHWC' if nhwc else 'NCHW'}"
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        first = step(model, opt, xb, y) + step(model, opt, xb, y)  # compile happens here
        variants[name] = (model, opt, xb, first)
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in tqdm(range(args.repeats), desc="interleaved repeats", unit="repeat"):
        for name, (model, opt, xb, _) in variants.items():
            times[name].append(step(model, opt, xb, y))
    ref = statistics.median(times["eager NCHW"])
    print(
        f"batch {args.batch}x3x32x32 on {args.device}; torch {torch.__version__}, {torch.get_num_threads()} threads\n"
    )
    print("| variant | median step | vs eager NCHW | compile time (first 2 steps - 2 x median) |")
    print("|---|---|---|---|")
    for name, (_, _, _, first) in variants.items():
        med = statistics.median(times[name])
        comp = f"{first - 2 * med:.1f} s" if name.startswith("compiled") else "-"
        print(f"| {name} | {1000 * med:.1f} ms | {med / ref:.2f}x | {comp} |")


if __name__ == "__main__":
    main()
