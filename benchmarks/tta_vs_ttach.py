"""TTA: ``tta_predict`` at its defaults and with manual chunking, against ttach's per-view loop.

Run from the repository root::

    PYTHONPATH=. python benchmarks/tta_vs_ttach.py                 # CPU
    PYTHONPATH=. python benchmarks/tta_vs_ttach.py --device cuda   # GPU

Model: a small CNN with BatchNorm (3 conv layers), 32x32 images, ttach's d4 (8 views),
merge ``mean``. Variants, all under ``torch.inference_mode()`` with the model in eval:

* ``ttach``: ``ttach.ClassificationTTAWrapper(model, d4_transform())`` (one forward per view);
* ``default``: ``tta_predict(model, x, D4)``: ``chunk_size="auto"``, planned on the first call
  (the planning call is timed separately and not in the medians);
* ``chunk=batch``: ``chunk_size=batch`` (one forward per view, like the loop);
* ``all at once``: ``chunk_size=None`` (every view in one forward).

Every round runs each variant ``reps`` times, in a shuffled order, so that the machine's
noise hits all of them alike; the table gives the median per call over rounds and
``ttach / variant`` (above 1: faster than ttach). Prints the tables; ``--out FILE`` also
writes them to FILE (the recorded runs are in ``benchmarks/results/tta_vs_ttach.md``, which
a run never overwrites).
"""

from __future__ import annotations

import argparse
import platform
import random
import statistics
import sys
import time
from pathlib import Path

import torch
import ttach as tta
from torch import nn
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lightning_tricks.functional import clear_tta_plans, tta_plans, tta_predict  # noqa: E402
from lightning_tricks.functional._io import atomic_write_text  # noqa: E402

D4 = ["identity", "rot90", "rot180", "rot270", "hflip", "hflip+rot90", "hflip+rot180", "hflip+rot270"]
BATCHES = (1, 8, 64)


def small_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1, stride=2), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10),
    )  # fmt: skip


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--out", default=None, help="also write the tables to this markdown file")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = small_cnn().to(device).eval()
    for m in model.modules():  # non-trivial BatchNorm statistics
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    wrapper = tta.ClassificationTTAWrapper(model, tta.aliases.d4_transform(), merge_mode="mean")

    def run_ttach(x):
        with torch.inference_mode():
            return wrapper(x)

    variants = {
        "ttach": run_ttach,
        "default": lambda x: tta_predict(model, x, D4, "mean"),
        "chunk=batch": lambda x: tta_predict(model, x, D4, "mean", chunk_size=x.shape[0]),
        "all at once": lambda x: tta_predict(model, x, D4, "mean", chunk_size=None),
    }
    clear_tta_plans(model)
    rows, plan_rows = [], []
    for b in tqdm(BATCHES, desc="batch sizes", unit="batch size"):
        x = torch.randn(b, 3, 32, 32, device=device)
        sync(device)
        t0 = time.perf_counter()
        out = tta_predict(model, x, D4, "mean")  # the planning call (first call of this batch size)
        sync(device)
        t_plan = time.perf_counter() - t0
        plan_rows.append((b, t_plan, dict(tta_plans(model))))
        ref = run_ttach(x)
        diffs = {name: (fn(x) - ref).abs().max().item() for name, fn in variants.items()}
        reps = {1: 20, 8: 10, 64: 3}[b] * (5 if device.type == "cuda" else 1)
        for fn in variants.values():  # warm-up
            fn(x)
        times: dict[str, list[float]] = {name: [] for name in variants}
        for r in range(args.rounds):
            order = list(variants)
            random.Random(r).shuffle(order)
            for name in order:
                fn = variants[name]
                sync(device)
                t0 = time.perf_counter()
                for _ in range(reps):
                    fn(x)
                sync(device)
                times[name].append((time.perf_counter() - t0) / reps)
        med = {name: statistics.median(t) for name, t in times.items()}
        rows.append((b, med, diffs))
        assert max(diffs.values()) <= 1e-5, diffs
        del out

    names = list(variants)
    lines = [
        "| batch | " + " | ".join(f"{n} ms" for n in names) + " | "
        + " | ".join(f"ttach / {n}" for n in names[1:]) + " | max abs diff vs ttach |",
        "|---:|" + "---:|" * (2 * len(names)),
    ]  # fmt: skip
    for b, med, diffs in rows:
        ms = " | ".join(f"{1e3 * med[n]:.3f}" for n in names)
        ratios = " | ".join(
            f"**{med['ttach'] / med[n]:.2f}x**" if n == "default" else f"{med['ttach'] / med[n]:.2f}x"
            for n in names[1:]
        )
        lines.append(f"| {b} | {ms} | {ratios} | {max(d for n, d in diffs.items() if n != 'ttach'):.1e} |")
    plans = "\n".join(
        f"* batch {b}: first call (planning) {1e3 * t:.1f} ms; plans now {{image shape: chunk}} = "
        + ", ".join(f"{tuple(k[0])}: {v}" for k, v in p.items())
        for b, t, p in plan_rows
    )
    machine = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"{platform.machine()} CPU, {torch.get_num_threads()} threads"
    )
    text = (
        "# TTA: tta_predict vs ttach\n\n"
        f"Machine: {machine}, torch {torch.__version__}, ttach 0.0.3.\n"
        f"Command: `PYTHONPATH=. python benchmarks/tta_vs_ttach.py --device {args.device} --rounds {args.rounds}`\n\n"
        "Model: small CNN (3 conv + BatchNorm), 32x32 input, d4 (8 views), merge=mean, inference_mode, eval. "
        f"Median time per call over {args.rounds} shuffled rounds; `ttach / x` above 1 means faster than ttach.\n\n"
        + "\n".join(lines)
        + "\n\nAutomatic chunk size (`default`), planned on the first call of each batch size "
        "(the batch sizes run in the order 1, 8, 64; a plan is re-made when a call has more images "
        "than were timed before):\n\n" + plans + "\n"
    )
    print(text)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out, text)


if __name__ == "__main__":
    main()
