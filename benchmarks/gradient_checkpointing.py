"""Gradient checkpointing: memory kept for backward and step time, side by side in one run.

Variants of each model, all in one process, steps interleaved round by round (so that
load from other processes hits all alike), medians over the rounds:

* ``plain``: no checkpointing;
* ``torch.utils.checkpoint``: plain ``checkpoint(block, x, use_reentrant=False)`` per block
  (the baseline; RNG state always preserved, BatchNorm statistics updated twice);
* ``full``: ``apply_gradient_checkpointing(model, blocks, mode="full")``;
* ``selective``: ``apply_gradient_checkpointing(model, blocks, mode="selective")``.

Models: ``mlp`` (12 x Linear-GELU-Linear-GELU, dim 128, hidden 512, batch 256), ``transformer``
(12 pre-norm attention + MLP blocks with dropout 0.1, dim 128, 64 tokens, batch 16) and ``bert``
(a 4-layer HF ``BertModel`` from a config: hidden 256, 4 heads, 128 tokens, batch 16, dropout
0.1; checkpointing ``bert.encoder.layer.*``). One step = forward + backward + SGD step.

Memory, two counts: "held" is every activation storage still alive when the forward returns
(counted from the storages, so it includes the outputs cached by selective checkpointing);
"hooks" is what ``torch.autograd.graph.saved_tensors_hooks`` packs (it does not see the
selective cache). Parameters are never counted.

Goals (issue 12), MLP on CPU: full <= 1.40x the plain step at <= 0.5x the bytes; selective
<= 1.20x at <= 0.7x; gradients equal to plain (checked here too).

Run: python benchmarks/gradient_checkpointing.py [--models mlp transformer bert] [--rounds 15]
     [--threads 1] [--device cuda] [--out results.md]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lightning_tricks.functional.perf.gradient_checkpointing import apply_gradient_checkpointing
from tests.helpers.models import ResidualBlock
from tests.helpers.zoo_ckpt import GeluMLP, TorchCheckpointed, held_bytes, hooks_bytes

GOALS = {"full": (1.40, 0.5), "selective": (1.20, 0.7)}


class Transformer(nn.Module):
    def __init__(self, depth: int = 12, dim: int = 128):
        super().__init__()
        self.blocks = nn.Sequential(*[ResidualBlock(dim, heads=4, dropout=0.1) for _ in range(depth)])
        self.head = nn.Linear(dim, 10)

    def forward(self, x):
        return self.head(self.blocks(x).mean(1))


class Bert(nn.Module):
    def __init__(self, layers: int = 4, hidden: int = 256):
        super().__init__()
        from transformers import BertConfig, BertModel

        cfg = BertConfig(
            vocab_size=1000,
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=4,
            intermediate_size=4 * hidden,
            max_position_embeddings=512,
            hidden_dropout_prob=0.1,
            attention_probs_dropout_prob=0.1,
        )
        self.bert = BertModel(cfg, add_pooling_layer=False)
        self.head = nn.Linear(hidden, 10)

    def forward(self, ids):
        return self.head(self.bert(input_ids=ids).last_hidden_state[:, 0])


def build(name: str, args, device) -> tuple[nn.Module, str, torch.Tensor]:
    """(model, target glob, input)."""
    if name == "mlp":
        m = GeluMLP(depth=12, dim=args.dim_mlp, hidden=4 * args.dim_mlp)
        return m, "blocks.*", torch.randn(args.batch_mlp, args.dim_mlp, device=device)
    if name == "transformer":
        return Transformer(), "blocks.*", torch.randn(16, 64, 128, device=device)
    return Bert(), "bert.encoder.layer.*", torch.randint(0, 1000, (16, 128), device=device)


def variants(name: str, args, device) -> tuple[dict[str, nn.Module], torch.Tensor]:
    torch.manual_seed(0)
    plain, target, x = build(name, args, device)
    plain.to(device)
    out = {"plain": plain}
    base = copy.deepcopy(plain)
    for container in build_containers(base, name):
        for i in range(len(container)):
            container[i] = TorchCheckpointed(container[i])
    out["torch.utils.checkpoint"] = base
    for mode in ("full", "selective"):
        m = copy.deepcopy(plain)
        apply_gradient_checkpointing(m, target, mode=mode)
        out[mode] = m
    return out, x


def build_containers(model: nn.Module, name: str) -> list:
    return [model.bert.encoder.layer] if name == "bert" else [model.blocks]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def loss_of(x: torch.Tensor, seed: int = 0) -> Callable[[nn.Module], torch.Tensor]:
    def fn(model: nn.Module) -> torch.Tensor:
        torch.manual_seed(seed)  # the same dropout masks in every variant
        y = torch.arange(x.shape[0], device=x.device) % 10
        return F.cross_entropy(model(x), y)

    return fn


def step(model, opt, loss_fn, device) -> float:
    _sync(device)
    t0 = time.perf_counter()
    loss_fn(model).backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    _sync(device)
    return time.perf_counter() - t0


def grads_equal(models: dict[str, nn.Module], loss_fn) -> dict[str, bool]:
    grads = {}
    for k, m in models.items():
        loss_fn(m).backward()
        grads[k] = [p.grad.clone() for p in m.parameters()]
        m.zero_grad(set_to_none=True)
    return {k: all(torch.equal(a, b) for a, b in zip(grads["plain"], g)) for k, g in grads.items()}


def run(name: str, args, device) -> None:
    models, x = variants(name, args, device)
    loss_fn = loss_of(x)
    same = grads_equal(models, loss_fn)
    held = {k: held_bytes(m, loss_fn, exclude=[x]) for k, m in models.items()}
    hooked = {k: hooks_bytes(m, loss_fn) for k, m in models.items()}
    opts = {k: torch.optim.SGD(m.parameters(), lr=1e-4) for k, m in models.items()}
    times: dict[str, list[float]] = {k: [] for k in models}
    for _ in range(2):  # warm-up
        for k, m in models.items():
            step(m, opts[k], loss_fn, device)
    order = list(models)
    for r in tqdm(range(args.rounds), desc=f"{name}: interleaved rounds", unit="round", leave=False):
        for k in order[r % len(order) :] + order[: r % len(order)]:  # rotate who goes first
            times[k].append(step(models[k], opts[k], loss_fn, device))
    med = {k: statistics.median(v) for k, v in times.items()}
    # noise: spread of the plain model's own step times (interquartile range / median)
    q = statistics.quantiles(times["plain"], n=4) if len(times["plain"]) >= 2 else [med["plain"]] * 3
    desc = DESCRIPTION[name] + (f", d={args.dim_mlp}, batch {args.batch_mlp}" if name == "mlp" else "")
    print(f"\n### {name}: {desc}\n")
    print(
        f"{device.type}; torch {torch.__version__}, {torch.get_num_threads()} threads; median of {args.rounds} "
        f"interleaved rounds; plain step IQR {100 * (q[2] - q[0]) / med['plain']:.0f}% of its median\n"
    )
    low = {k: min(v) for k, v in times.items()}
    print(
        "| variant | held for backward | vs plain | hooks count | median step | vs plain | fastest step | vs plain "
        "| grads == plain | goal (median) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for k in models:
        b, t = held[k] / held["plain"], med[k] / med["plain"]
        goal = "-"
        if name == "mlp" and args.batch_mlp == 256 and k in GOALS:  # the goals' batch
            tg, bg = GOALS[k]
            goal = f"<= {tg:.2f}x, <= {bg:.1f}x: " + ("met" if t <= tg and b <= bg else "NOT met")
        print(
            f"| {k} | {held[k] / 2**20:.1f} MiB | {b:.2f}x | {hooked[k] / 2**20:.1f} MiB | "
            f"{1000 * med[k]:.1f} ms | {t:.2f}x | {1000 * low[k]:.1f} ms | {low[k] / low['plain']:.2f}x | "
            f"{'yes' if same[k] else 'NO'} | {goal} |"
        )


DESCRIPTION = {
    "mlp": "12 x (Linear(d, 4d)-GELU-Linear(4d, d)-GELU), blocks checkpointed",
    "transformer": "12 pre-norm blocks (attention + MLP, dropout 0.1), dim 128, 64 tokens, batch 16",
    "bert": "HF BertModel, 4 layers, hidden 256, 128 tokens, batch 16, dropout 0.1; bert.encoder.layer.*",
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--models", nargs="+", default=["mlp", "transformer", "bert"], choices=list(DESCRIPTION)
    )
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--batch-mlp", type=int, default=256)
    parser.add_argument("--dim-mlp", type=int, default=128, help="MLP width (hidden layer: 4x)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--out", default=None, help="also write the tables to this markdown file")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        for name in args.models:
            run(name, args, device)
            sys.__stdout__.write(buf.getvalue()[printed[0] :])
            printed[0] = len(buf.getvalue())
    if args.out:
        Path(args.out).write_text(buf.getvalue())


printed = [0]


if __name__ == "__main__":
    main()
