"""Crash mid-fit, resume from the last checkpoint, and end bitwise equal to a run that never crashed.

The digits CNN trains with random-shift augmentation and a shuffled loader, so the
random number generators matter as much as the weights. Two components make the resume
exact and safe:

* ``ExactResume`` saves every rank's generator states (torch, numpy, Python) in each
  checkpoint and restores them, so the resumed epochs draw the same shifts and the same
  batch order as the uninterrupted run;
* ``SafeCheckpointIO`` writes the whole training checkpoint without pickle (safetensors +
  JSON), so loading one never runs code from the file.

The script runs three fits: straight through; the same fit crashing at the start of
``--crash-at-epoch``; and a fit resumed from the crashed run's ``last.ckpt`` (with
``ckpt_path``, as ``python ... fit --ckpt_path`` does in LightningCLI). It then compares
every parameter and buffer of the straight and the resumed model, bit for bit.

Run ``python examples/resume/crash_and_resume.py`` (CPU).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from examples.digits.common import (
    DigitsClassifier,
    DigitsDataset,
    add_common_args,
    configure_cpu,
    trainer_kwargs,
    write_summary,
)
from lightning_tricks import ExactResume, SafeCheckpointIO, SplitDataModule
from lightning_tricks.functional import is_safe_checkpoint


class Crash(L.Callback):
    """Stops the run the way a preempted job or an out-of-memory error would."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch == self.epoch:
            raise RuntimeError(f"simulated crash at the start of epoch {self.epoch}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser, epochs=4, out="runs/resume")
    parser.add_argument("--crash-at-epoch", type=int, default=2, help="the crashed run stops here")
    return parser.parse_args(argv)


def fit(args: argparse.Namespace, out: Path, crash: int | None = None, ckpt_path: str | None = None):
    L.seed_everything(args.seed, verbose=False)
    model = DigitsClassifier(width=8)
    data = SplitDataModule(
        DigitsDataset(), val=0.15, labels="targets", seed=args.seed, batch_size=64, num_workers=0
    )
    callbacks: list[L.Callback] = [
        ExactResume(),
        ModelCheckpoint(dirpath=str(out / "checkpoints"), save_last=True),
    ]
    if crash is not None:
        callbacks.append(Crash(crash))
    trainer = L.Trainer(
        **trainer_kwargs(args),
        callbacks=callbacks,
        plugins=[SafeCheckpointIO()],
        logger=False,
        default_root_dir=str(out),
    )
    try:
        trainer.fit(model, datamodule=data, ckpt_path=ckpt_path)
    except RuntimeError as err:
        if crash is None or "simulated crash" not in str(err):
            raise
        print(f"crashed: {err}")
    return trainer, model


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    configure_cpu(args)
    out = Path(args.out)
    _, straight = fit(args, out / "straight")
    fit(args, out / "crashed", crash=args.crash_at_epoch)
    last = out / "crashed" / "checkpoints" / "last.ckpt"
    resumed_trainer, resumed = fit(args, out / "resumed", ckpt_path=str(last))
    a, b = straight.state_dict(), resumed.state_dict()
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    summary = {
        "epochs": args.epochs,
        "crashed_at_epoch": args.crash_at_epoch,
        "checkpoint": str(last),
        "checkpoint_is_pickle_free": is_safe_checkpoint(last),
        "resumed_epochs": resumed_trainer.current_epoch,
        "tensors_compared": len(a),
        "tensors_differing": differ,
    }
    write_summary(out, summary)
    print(
        f"""
crash and resume      crashed at the start of epoch {args.crash_at_epoch}, resumed from {last}
checkpoint format     {"safetensors + JSON, no pickle" if summary["checkpoint_is_pickle_free"] else "pickle"}
straight vs resumed   {len(a) - len(differ)} of {len(a)} parameters and buffers bitwise equal
"""
    )
    return summary


if __name__ == "__main__":
    main()
