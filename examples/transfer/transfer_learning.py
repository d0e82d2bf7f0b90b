"""Transfer learning: pretrain on the digits 0-4, fine-tune on a few labelled 5-9s, compare with scratch.

1. Pretrain the digits CNN on 0-4 and export its weights (``ExportWeights``).
2. Fine-tune on 5-9 with only ``--shots`` labelled images per class: a fresh model gets
   the pretrained weights with ``load_weights``, a new 5-way head with ``replace_head``
   (``WeightInit`` then initialises only the head: loaded tensors are left alone), and
   ``FreezeBackbone`` trains the head alone first, then unfreezes the backbone at a
   tenth of the head's learning rate (weight decay split by ``NoBiasDecay``).
3. Train the same model from scratch on the same few images, for the same steps.

Both are tested on all the other 5-9 images. Run from the repository root::

    python examples/transfer/transfer_learning.py                     # CPU
    python examples/transfer/transfer_learning.py --gpu --devices 2   # DDP, 16-mixed
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import lightning as L
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only

from examples.digits.common import (
    DigitsClassifier,
    DigitsDataset,
    add_common_args,
    configure_cpu,
    trainer_kwargs,
    write_summary,
)
from lightning_tricks import ExportWeights, FreezeBackbone, SplitDataModule, WeightInit
from lightning_tricks.functional import count_parameters, load_weights, replace_head


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser, epochs=24, out="runs/transfer")
    parser.add_argument("--pretrain-epochs", type=int, default=5)
    parser.add_argument("--shots", type=int, default=10, help="labelled training images per class of 5-9")
    parser.add_argument("--unfreeze-at", type=int, default=8, help="epoch at which the backbone unfreezes")
    parser.add_argument("--finetune-lr", type=float, default=3e-2, help="peak learning rate of the new head")
    parser.add_argument("--scratch-lr", type=float, default=3e-3, help="peak learning rate from scratch")
    return parser.parse_args(argv)


def _trainer(args: argparse.Namespace, out: Path, name: str, epochs: int, callbacks: list) -> L.Trainer:
    kwargs = {**trainer_kwargs(args), "max_epochs": epochs, "log_every_n_steps": 5}
    logger = TensorBoardLogger(str(out), name=name)
    return L.Trainer(**kwargs, logger=logger, callbacks=callbacks, enable_checkpointing=False)


def pretrain(args: argparse.Namespace, out: Path) -> tuple[str, float]:
    """Train on 0-4 (stratified 80/20 split); return the exported weights file and val accuracy."""
    L.seed_everything(args.seed, verbose=False)
    data = SplitDataModule(
        DigitsDataset(classes=range(5)),
        val=0.2,
        labels="targets",
        seed=args.seed,
        batch_size=64,
        num_workers=0,
    )
    model = DigitsClassifier(num_classes=5)
    export = ExportWeights(dirpath=str(out / "weights"), filename="pretrained_0-4.safetensors")
    trainer = _trainer(
        args, out, "pretrain", args.pretrain_epochs, [WeightInit(zero_init_last_bn=True), export]
    )
    trainer.fit(model, datamodule=data)
    return export.last_path, float(trainer.callback_metrics["val_acc"])


def finetune_data(args: argparse.Namespace) -> SplitDataModule:
    """5-9 relabelled 0-4: ``shots`` images per class to train, as many to validate, the rest to test."""
    return SplitDataModule(
        DigitsDataset(classes=range(5, 10)),
        train=5 * args.shots,
        val=5 * args.shots,
        test=None,
        labels="targets",
        seed=args.seed,
        batch_size=16,
        eval_batch_size=512,
        num_workers=0,
    )


def finetune(args: argparse.Namespace, out: Path, weights: str) -> dict[str, Any]:
    L.seed_everything(args.seed, verbose=False)
    model = DigitsClassifier(num_classes=5, lr=args.finetune_lr)
    report = load_weights(model, weights, strict=True)  # everything, including the 0-4 head...
    replace_head(model, 5, attr="head")  # ...which is replaced by a fresh one for 5-9
    freeze = FreezeBackbone("backbone", unfreeze_at_epoch=args.unfreeze_at, backbone_lr_factor=0.1)
    # Initialises only the new head: the tensors load_weights loaded are skipped
    # (skip_pretrained=True), and replace_head's fresh layer is not among them.
    init = WeightInit("trunc_normal", std=0.02, seed=args.seed)
    trainer = _trainer(args, out, "finetune", args.epochs, [init, freeze])
    data = finetune_data(args)
    trainer.fit(model, datamodule=data)
    test = trainer.test(model, datamodule=data, verbose=False)[0]
    return {
        "test_acc": test["test_acc"],
        "loaded_tensors": len(report.loaded),
        "initialised": sorted(init.report.initialized) if init.report else [],
        "params": count_parameters(model),
    }


def scratch(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    L.seed_everything(args.seed, verbose=False)
    model = DigitsClassifier(num_classes=5, lr=args.scratch_lr)
    trainer = _trainer(
        args, out, "scratch", args.epochs, [WeightInit(zero_init_last_bn=True, seed=args.seed)]
    )
    data = finetune_data(args)
    trainer.fit(model, datamodule=data)
    return {"test_acc": trainer.test(model, datamodule=data, verbose=False)[0]["test_acc"]}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Pretrain, fine-tune, train from scratch; print and return the comparison."""
    args = parse_args(argv)
    started = time.perf_counter()
    configure_cpu(args)
    out = Path(args.out)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*smaller than the logging interval.*")
        weights, pre_acc = pretrain(args, out)
        tuned = finetune(args, out, weights)
        fresh = scratch(args, out)
    summary = {
        "pretrain_val_acc": pre_acc,
        "weights": weights,
        "finetune": tuned,
        "scratch": fresh,
        "shots": args.shots,
        "epochs": args.epochs,
        "seconds": round(time.perf_counter() - started, 1),
    }
    if rank_zero_only.rank == 0:
        write_summary(out, summary)
        print(
            f"""
=== transfer learning: digits 0-4 -> 5-9 with {args.shots} labelled images per class ({summary["seconds"]} s)
pretrained on 0-4     val accuracy {pre_acc:.4f}, weights {weights}
fine-tuned on 5-9     test accuracy {tuned["test_acc"]:.4f}  (loaded {tuned["loaded_tensors"]} tensors, new head \
initialised: {", ".join(tuned["initialised"])}; backbone frozen for {args.unfreeze_at} epochs, then lr x0.1)
from scratch on 5-9   test accuracy {fresh["test_acc"]:.4f}  (same images, same {args.epochs} epochs)
TensorBoard logs      {out}/pretrain, {out}/finetune, {out}/scratch
"""
        )
    return summary


if __name__ == "__main__":
    main()
