"""SafeCheckpointIO vs Lightning's TorchCheckpointIO: save time, load time, file size.

Usage: PYTHONPATH=. python benchmarks/safe_checkpoint_io.py [--rounds 7] [--width 2048] [--depth 6]

Builds a real Lightning training checkpoint (``trainer._checkpoint_connector.dump_checkpoint()``
after 2 AdamW steps, so the optimizer state holds ``exp_avg``/``exp_avg_sq`` for every
parameter) of an MLP with >= 25M parameters on CPU, then saves and loads it with both plugins
in interleaved rounds (the order alternates every round), into the same folder. Figures are
medians over the rounds; ratios are SafeCheckpointIO / TorchCheckpointIO. Loading runs right
after the save, so both read from the page cache: the figures compare serialisation cost,
not disk speed. After each load one value per 4 KiB page of every tensor is read (a lazily
mapped file would otherwise look free). TorchCheckpointIO loads as Lightning calls it by default
(``weights_only`` not set, which Lightning turns into ``False``).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time

import lightning as L
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_tricks.finetune.safe_checkpoint_io import SafeCheckpointIO


class Big(L.LightningModule):
    def __init__(self, width: int, depth: int):
        super().__init__()
        self.save_hyperparameters()
        layers: list[nn.Module] = []
        for _ in range(depth):
            layers += [nn.Linear(width, width), nn.GELU()]
        self.net = nn.Sequential(*layers, nn.Linear(width, 10))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.parameters(), lr=1e-4)
        return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.StepLR(opt, 1)}


def checkpoint(width: int, depth: int) -> tuple[dict, int]:
    L.seed_everything(0)
    model = Big(width, depth)
    data = DataLoader(TensorDataset(torch.randn(8, width), torch.randint(0, 10, (8,))), batch_size=4)
    trainer = L.Trainer(
        max_steps=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, data)
    return trainer._checkpoint_connector.dump_checkpoint(), sum(p.numel() for p in model.parameters())


def touch(obj: object) -> None:
    """Read one value per 4 KiB page of every tensor, so that a lazily mapped file is really read."""
    if isinstance(obj, torch.Tensor):
        if obj.numel():
            obj.reshape(-1)[:: max(1, 4096 // obj.element_size())].sum()
    elif isinstance(obj, dict):
        for v in obj.values():
            touch(v)
    elif isinstance(obj, list | tuple):
        for v in obj:
            touch(v)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--width", type=int, default=2048)
    parser.add_argument("--depth", type=int, default=6)
    args = parser.parse_args()

    ckpt, n_params = checkpoint(args.width, args.depth)
    plugins = {"TorchCheckpointIO": TorchCheckpointIO(), "SafeCheckpointIO": SafeCheckpointIO()}
    times: dict[str, dict[str, list[float]]] = {k: {"save": [], "load": []} for k in plugins}
    sizes: dict[str, int] = {}
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as d:
        for r in range(args.rounds):
            order = list(plugins) if r % 2 == 0 else list(plugins)[::-1]
            for name in order:
                io = plugins[name]
                path = os.path.join(d, f"{name}.ckpt")
                t0 = time.perf_counter()
                io.save_checkpoint(ckpt, path)
                t1 = time.perf_counter()
                loaded = io.load_checkpoint(path)
                touch(loaded)
                t2 = time.perf_counter()
                assert torch.equal(loaded["state_dict"]["net.0.weight"], ckpt["state_dict"]["net.0.weight"])
                del loaded
                times[name]["save"].append(t1 - t0)
                times[name]["load"].append(t2 - t1)
                sizes[name] = os.path.getsize(path)
                io.remove_checkpoint(path)

    med = {k: {m: statistics.median(v) for m, v in t.items()} for k, t in times.items()}
    base = med["TorchCheckpointIO"]
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, lightning {L.__version__}; "
        f"{n_params / 1e6:.1f}M parameters + AdamW state; {args.rounds} interleaved rounds, medians\n"
    )
    print("| plugin | save (s) | load (s) | size (MB) | save ratio | load ratio | size ratio |")
    print("|---|---|---|---|---|---|---|")
    for name in plugins:
        m = med[name]
        print(
            f"| {name} | {m['save']:.3f} | {m['load']:.3f} | {sizes[name] / 1e6:.1f} | "
            f"{m['save'] / base['save']:.2f} | {m['load'] / base['load']:.2f} | "
            f"{sizes[name] / sizes['TorchCheckpointIO']:.4f} |"
        )
    print("\nall rounds (s):")
    for name in plugins:
        print(f"  {name}: save {[round(x, 3) for x in times[name]['save']]}")
        print(f"  {name}: load {[round(x, 3) for x in times[name]['load']]}")


if __name__ == "__main__":
    main()
