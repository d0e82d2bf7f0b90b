"""Transfer learning: pretrain on the digits 0-4, fine-tune on a few labelled 5-9s, compare with scratch.

1. Pretrain the digits CNN on 0-4 (90% of their images) with the flagship's recipe
   (``NoBiasDecay``, ``AdaptiveGradientClipping``) and export its weights (``ExportWeights``).
2. Fine-tune on 5-9 with only ``--shots`` labelled images per class: a fresh model gets
   the pretrained weights with ``load_weights`` and a new 5-way head with ``replace_head``;
   ``FreezeBackbone`` trains the head alone for ``--unfreeze-at`` epochs, so that its
   random start does not disturb the pretrained features, then the whole network (the
   backbone's new parameter groups split by ``NoBiasDecay``).
3. Train the same model from scratch on the same few images for the same number of
   epochs, with the same recipe and learning rate.

Both are tested on every other 5-9 image; the summary gives their test errors. Run from
the repository root::

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
from lightning_tricks import AdaptiveGradientClipping, ExportWeights, FreezeBackbone, SplitDataModule
from lightning_tricks.functional import count_parameters, load_weights, replace_head


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser, epochs=30, out="runs/transfer")
    parser.add_argument("--pretrain-epochs", type=int, default=15)
    parser.add_argument("--shots", type=int, default=2, help="labelled training images per class of 5-9")
    parser.add_argument(
        "--unfreeze-at", type=int, default=2, help="fine-tuning epoch at which the backbone unfreezes"
    )
    parser.add_argument(
        "--lr", type=float, default=3e-3, help="peak learning rate, the same for fine-tuning and from scratch"
    )
    parser.add_argument(
        "--backbone-lr-factor",
        type=float,
        default=1.0,
        help="learning rate of the unfrozen backbone, as a fraction of the head's",
    )
    return parser.parse_args(argv)


def _trainer(args: argparse.Namespace, out: Path, name: str, epochs: int, callbacks: list) -> L.Trainer:
    kwargs = {**trainer_kwargs(args), "max_epochs": epochs, "log_every_n_steps": 5}
    logger = TensorBoardLogger(str(out), name=name)
    return L.Trainer(**kwargs, logger=logger, callbacks=callbacks, enable_checkpointing=False)


def pretrain(args: argparse.Namespace, out: Path) -> tuple[str, int, int]:
    """Train on 0-4 (stratified 90/10 split); return the exported weights file and the
    validation errors and images."""
    L.seed_everything(args.seed, verbose=False)
    data = SplitDataModule(
        DigitsDataset(classes=range(5)),
        val=0.1,
        labels="targets",
        seed=args.seed,
        batch_size=64,
        num_workers=0,
    )
    model = DigitsClassifier(num_classes=5)
    export = ExportWeights(dirpath=str(out / "weights"), filename="pretrained_0-4.safetensors")
    trainer = _trainer(args, out, "pretrain", args.pretrain_epochs, [AdaptiveGradientClipping(), export])
    trainer.fit(model, datamodule=data)
    n_val = len(data.val_set)
    return export.last_path, errors(trainer.callback_metrics["val_acc"], n_val), n_val


def errors(accuracy: Any, n: int) -> int:
    """The number of wrong answers among ``n`` images, from an accuracy."""
    return round((1.0 - float(accuracy)) * n)


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
    model = DigitsClassifier(num_classes=5, lr=args.lr)
    report = load_weights(model, weights, strict=True)  # everything, including the 0-4 head...
    replace_head(model, 5, attr="head")  # ...which is replaced by a fresh nn.Linear for 5-9
    freeze = FreezeBackbone(
        "backbone", unfreeze_at_epoch=args.unfreeze_at, backbone_lr_factor=args.backbone_lr_factor
    )
    trainer = _trainer(args, out, "finetune", args.epochs, [freeze, AdaptiveGradientClipping()])
    return {
        **_fit_and_test(trainer, model, finetune_data(args)),
        "loaded_tensors": len(report.loaded),
        "params": count_parameters(model),
    }


def scratch(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    L.seed_everything(args.seed, verbose=False)
    model = DigitsClassifier(num_classes=5, lr=args.lr)
    trainer = _trainer(args, out, "scratch", args.epochs, [AdaptiveGradientClipping()])
    return _fit_and_test(trainer, model, finetune_data(args))


def _fit_and_test(trainer: L.Trainer, model: L.LightningModule, data: Any) -> dict[str, Any]:
    """Fit, test, and report the test accuracy and error count."""
    trainer.fit(model, datamodule=data)
    test = trainer.test(model, datamodule=data, verbose=False)[0]
    n_test = len(data.test_set)
    return {
        "test_acc": test["test_acc"],
        "test_errors": errors(test["test_acc"], n_test),
        "test_images": n_test,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Pretrain, fine-tune, train from scratch; print and return the comparison."""
    args = parse_args(argv)
    started = time.perf_counter()
    configure_cpu(args)
    out = Path(args.out)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*smaller than the logging interval.*")
        weights, pre_errors, pre_images = pretrain(args, out)
        tuned = finetune(args, out, weights)
        fresh = scratch(args, out)
    summary = {
        "pretrain_val_errors": pre_errors,
        "pretrain_val_images": pre_images,
        "weights": weights,
        "finetune": tuned,
        "scratch": fresh,
        "shots": args.shots,
        "epochs": args.epochs,
        "seconds": round(time.perf_counter() - started, 1),
    }
    if rank_zero_only.rank == 0:
        write_summary(out, summary)
        n = tuned["test_images"]
        print(
            f"=== transfer learning: digits 0-4 -> 5-9 with {args.shots} labelled images per class\n"
            f"pretrained on 0-4     {args.pretrain_epochs} epochs, validation errors {pre_errors} / {pre_images}, "
            f"weights {weights}\n"
            f"test errors on 5-9    fine-tuned {tuned['test_errors']} / {n}, from scratch "
            f"{fresh['test_errors']} / {n} (same {5 * args.shots} images, same {args.epochs} epochs)\n"
            f"fine-tuning           loaded {tuned['loaded_tensors']} tensors, new head; head alone for "
            f"{args.unfreeze_at} epochs (FreezeBackbone), then the backbone at x{args.backbone_lr_factor:g} "
            "the head's learning rate\n"
            f"TensorBoard logs      {out}/pretrain, {out}/finetune, {out}/scratch"
        )
    return summary


if __name__ == "__main__":
    main()
