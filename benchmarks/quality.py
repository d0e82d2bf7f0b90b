"""Model quality: what each trick does to the test errors of the flagship model, over several seeds.

Two settings, both the examples' own (``examples/digits``, ``examples/transfer``):

* **digits**: the flagship model and recipe (the small ResNet on scikit-learn's digits,
  stratified 50/20/30 split, AdamW at 3e-3 with a one-cycle schedule, weight decay 0.05,
  random shifts of up to 2 pixels, 15 epochs, batch 64; PyTorch's default
  initialisation, ``NoBiasDecay`` and ``AdaptiveGradientClipping``), trained once per seed
  as is and once per seed with one thing changed: no ``NoBiasDecay`` (decay on biases and
  BatchNorm too), no clipping, ``AutoClip`` instead of AGC, a ``WeightInit`` scheme. TTA
  (the eight one-pixel shifts) is measured on the flagship's own models, always applied
  and applied only when it makes fewer errors on the validation set (the flagship's rule),
  and on the models trained without clipping.
* **transfer**: the transfer example: pretrain on the digits 0-4 (15 epochs), then 30
  epochs on 2 labelled images per class of 5-9, with ``FreezeBackbone`` unfreezing all at
  once after 2 epochs (the example's recipe), gradually (one block per epoch), never, or
  without freezing; and from scratch. The same with 5 labelled images per class, from
  scratch and with the example's recipe.

The training is the examples' (a real ``Trainer``, the real callbacks) without their
monitoring callbacks, logger and per-epoch validation. Each seed seeds the split, the
initialisation and the training; every variant of a seed sees the same split, so the
differences are paired. Prints a markdown table of test errors (per seed, mean +- sample
std, and the paired difference to the row each is compared with) and writes it, with
the machine and the command, to ``benchmarks/results/quality.md`` and every figure to
``quality.json``.

    PYTHONPATH=. python benchmarks/quality.py [--seeds 5] [--epochs 15] [--only digits|transfer]
"""

from __future__ import annotations

import argparse
import copy
import importlib.metadata
import json
import logging
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from examples.digits.common import DigitsClassifier, DigitsDataset, DigitsModule
from lightning_tricks import AdaptiveGradientClipping, AutoClip, FreezeBackbone, SplitDataModule, WeightInit
from lightning_tricks.demos import cpu_trainer
from lightning_tricks.functional import replace_head

RESULTS = Path(__file__).resolve().parent / "results"
FLAGSHIP = "flagship"

# key -> (description, model class, callbacks(seed))
DIGITS: dict[str, tuple[str, type[DigitsModule], Callable[[int], list[L.Callback]]]] = {
    FLAGSHIP: (
        "flagship recipe: NoBiasDecay, AdaptiveGradientClipping, PyTorch's default init",
        DigitsClassifier,
        lambda seed: [AdaptiveGradientClipping()],
    ),
    "decay_on_all": (
        "without NoBiasDecay (weight decay on biases and BatchNorm too)",
        DigitsModule,
        lambda seed: [AdaptiveGradientClipping()],
    ),
    "no_clipping": ("without AdaptiveGradientClipping (no clipping)", DigitsClassifier, lambda seed: []),
    "autoclip": (
        "AutoClip (percentile 10) instead of AGC",
        DigitsClassifier,
        lambda seed: [AutoClip()],
    ),
    "init_kaiming_zero_bn": (
        "+ WeightInit kaiming_normal, last BatchNorm of each block zeroed",
        DigitsClassifier,
        lambda seed: [AdaptiveGradientClipping(), WeightInit(zero_init_last_bn=True, seed=seed)],
    ),
    "init_kaiming": (
        "+ WeightInit kaiming_normal",
        DigitsClassifier,
        lambda seed: [AdaptiveGradientClipping(), WeightInit(seed=seed)],
    ),
    "init_xavier": (
        "+ WeightInit xavier_uniform",
        DigitsClassifier,
        lambda seed: [AdaptiveGradientClipping(), WeightInit("xavier_uniform", seed=seed)],
    ),
}
# what each digits row is compared with (paired, seed by seed); the others: the flagship recipe
DIGITS_REFERENCE = {"autoclip": "no_clipping", "no_clipping_tta_always": "no_clipping"}
# TTA rows: key -> (description, the digits variant whose models get TTA, applied "always" or "chosen")
TTA_ROWS = {
    "tta_always": ("flagship + TTA (8 one-pixel shifts), always", FLAGSHIP, "always"),
    "tta_chosen": (
        "flagship + TTA only if fewer validation errors (the flagship's rule)",
        FLAGSHIP,
        "chosen",
    ),
    "no_clipping_tta_always": (
        "without clipping + TTA (8 one-pixel shifts), always",
        "no_clipping",
        "always",
    ),
}
SHORT = {
    FLAGSHIP: "flagship recipe",
    "no_clipping": "no clipping",
    "transfer_freeze_all": "the example's recipe",
    "transfer5_freeze_all": "the example's recipe",
}
# key -> (description, labelled images per class, (unfreeze_at_epoch, unfreeze_mode) or "scratch"
# or None for no FreezeBackbone)
TRANSFER: dict[str, tuple[str, int, Any]] = {
    "transfer_scratch": ("from scratch (flagship recipe)", 2, "scratch"),
    "transfer_no_freeze": ("pretrained, nothing frozen", 2, None),
    "transfer_freeze_all": (
        "pretrained, FreezeBackbone: head alone 2 epochs, then all at once (the example)",
        2,
        (2, "all"),
    ),
    "transfer_gradual": (
        "pretrained, FreezeBackbone: head alone 2 epochs, then gradual (a block per epoch)",
        2,
        (2, "gradual"),
    ),
    "transfer_frozen": ("pretrained, FreezeBackbone never unfrozen (head only)", 2, (None, "all")),
    "transfer5_scratch": ("from scratch (flagship recipe)", 5, "scratch"),
    "transfer5_freeze_all": ("pretrained, FreezeBackbone as in the example", 5, (2, "all")),
}
REFERENCES = {"digits": FLAGSHIP, 2: "transfer_freeze_all", 5: "transfer5_freeze_all"}


def trainer(epochs: int, callbacks: list[L.Callback]) -> L.Trainer:
    # errors are counted after training: no validation loop
    return cpu_trainer(max_epochs=epochs, limit_val_batches=0, callbacks=callbacks)


def tensors(dataset: Any) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.stack([dataset[i][0] for i in range(len(dataset))]), torch.tensor(
        [dataset[i][1] for i in range(len(dataset))]
    )


def count_errors(model: DigitsModule, data: tuple[torch.Tensor, torch.Tensor], tta: bool = False) -> int:
    x, y = data
    model.eval()
    with torch.inference_mode():
        logits = model.tta_forward(x) if tta else model(x)
    return int((logits.argmax(-1) != y).sum())


def run_digits(seed: int, epochs: int, keys: list[str], bar: tqdm) -> dict[str, tuple[int, int]]:
    """Test errors (and the number of test images) of every digits variant for one seed."""
    dataset = DigitsDataset()
    out: dict[str, tuple[int, int]] = {}
    for key in keys:
        _, cls, callbacks = DIGITS[key]
        L.seed_everything(seed, verbose=False)
        data = SplitDataModule(
            dataset, val=0.2, test=0.3, labels="targets", seed=seed, batch_size=64, num_workers=0
        )
        model = cls()
        trainer(epochs, callbacks(seed)).fit(model, datamodule=data)
        val, test = tensors(data.val_set), tensors(data.test_set)
        out[key] = (count_errors(model, test), len(data.test_set))
        for tta_key, (_, base, rule) in TTA_ROWS.items():
            if base == key:
                with_tta = count_errors(model, test, tta=True)
                use = rule == "always" or count_errors(model, val, tta=True) < count_errors(model, val)
                out[tta_key] = (with_tta if use else out[key][0], len(data.test_set))
        bar.update()
    return out


def run_transfer(
    seed: int, pretrain_epochs: int, epochs: int, keys: list[str], bar: tqdm
) -> dict[str, tuple[int, int]]:
    """Test errors on 5-9 (and the number of test images) of every transfer variant for one seed."""
    L.seed_everything(seed, verbose=False)
    pre_data = SplitDataModule(
        DigitsDataset(classes=range(5)), val=0.1, labels="targets", seed=seed, batch_size=64, num_workers=0
    )
    pretrained = DigitsClassifier(num_classes=5)
    trainer(pretrain_epochs, [AdaptiveGradientClipping()]).fit(pretrained, datamodule=pre_data)
    bar.update()
    target = DigitsDataset(classes=range(5, 10))
    out: dict[str, tuple[int, int]] = {}
    for key in keys:
        _, shots, freeze = TRANSFER[key]
        L.seed_everything(seed, verbose=False)
        data = SplitDataModule(  # as examples/transfer: shots per class to train, as many to validate
            target,
            train=5 * shots,
            val=5 * shots,
            test=None,
            labels="targets",
            seed=seed,
            batch_size=16,
            num_workers=0,
        )
        callbacks: list[L.Callback] = [AdaptiveGradientClipping()]
        if freeze == "scratch":
            model = DigitsClassifier(num_classes=5)
        else:
            model = copy.deepcopy(pretrained)
            replace_head(model, 5, attr="head")  # a fresh nn.Linear (PyTorch's default init)
            if freeze is not None:
                at, mode = freeze
                callbacks.append(
                    FreezeBackbone(
                        "backbone",
                        unfreeze_at_epoch=at,
                        unfreeze_mode=mode,
                        backbone_lr_factor=1.0,
                        log_counts=False,
                    )
                )
        trainer(epochs, callbacks).fit(model, datamodule=data)
        out[key] = (count_errors(model, tensors(data.test_set)), len(data.test_set))
        bar.update()
    return out


def machine_line() -> str:
    where = f"{platform.machine()} CPU, {os.cpu_count()} cores, {torch.get_num_threads()} torch thread(s)"
    load = ""
    if hasattr(os, "getloadavg"):
        load = " Load average at start: {:.2f} / {:.2f} / {:.2f} (1 / 5 / 15 min).".format(*os.getloadavg())
    lightning = importlib.metadata.version("lightning")
    return f"Machine: {where}, torch {torch.__version__}, lightning {lightning}.{load}"


def summarise(
    key: str, description: str, group: str, reference: str, per_seed: list[dict[str, tuple[int, int]]]
) -> dict[str, Any]:
    errors = [s[key][0] for s in per_seed]
    diffs = [s[key][0] - s[reference][0] for s in per_seed]
    spread = statistics.stdev if len(errors) > 1 else (lambda _: 0.0)
    fewer, more = sum(d < 0 for d in diffs), sum(d > 0 for d in diffs)
    same, n = len(diffs) - fewer - more, len(diffs)
    if key == reference:
        verdict = "reference"
    elif n in (fewer, more, same):
        verdict = f"{'fewer errors' if fewer else 'more errors' if more else 'same'} on all {n} seeds"
    else:
        counts = ((fewer, "fewer"), (more, "more"), (same, "same"))
        verdict = ", ".join(f"{what} on {k}" for k, what in counts if k) + f" of {n} seeds"
    return {
        "key": key,
        "group": group,
        "variant": description,
        "reference": reference,
        "test_images": per_seed[0][key][1],
        "errors": errors,
        "mean": statistics.fmean(errors),
        "std": spread(errors),
        "diff_mean": statistics.fmean(diffs),
        "diff_std": spread(diffs),
        "verdict": verdict,
    }


def table(rows: list[dict[str, Any]], seeds: list[int]) -> list[str]:
    lines = [
        f"| setting | variant | test errors, seeds {', '.join(map(str, seeds))} | mean +- std "
        "| compared with | difference, paired (mean +- std) | verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ref = "-" if r["key"] == r["reference"] else SHORT[r["reference"]]
        diff = "-" if r["key"] == r["reference"] else f"{r['diff_mean']:+.1f} +- {r['diff_std']:.1f}"
        lines.append(
            f"| {r['group']} | {r['variant']} | {', '.join(map(str, r['errors']))} / {r['test_images']} | "
            f"{r['mean']:.1f} +- {r['std']:.1f} | {ref} | {diff} | {r['verdict']} |"
        )
    return lines


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5, help="seeds 0 .. N-1 (default 5)")
    parser.add_argument("--epochs", type=int, default=15, help="digits training epochs (the flagship's 15)")
    parser.add_argument("--pretrain-epochs", type=int, default=15, help="transfer: pretraining epochs on 0-4")
    parser.add_argument("--finetune-epochs", type=int, default=30, help="transfer: epochs on 5-9")
    parser.add_argument("--only", choices=["digits", "transfer"], default=None)
    parser.add_argument("--out", default=str(RESULTS / "quality"), help="writes <out>.md and <out>.json")
    args = parser.parse_args(argv)
    command = " ".join(
        ["PYTHONPATH=. python benchmarks/quality.py", *(sys.argv[1:] if argv is None else argv)]
    )
    torch.set_num_threads(1)  # the examples' default: these models gain nothing from a second thread
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", ".*(does not have many workers|smaller than the logging interval).*")
    # FreezeBackbone keeps the frozen BatchNorm in eval mode; LeafSpec: a deprecation inside lightning
    warnings.filterwarnings("ignore", ".*(module\\(s\\) in eval mode|LeafSpec).*")
    header = machine_line()
    seeds = list(range(args.seeds))
    digits_keys = [] if args.only == "transfer" else list(DIGITS)
    transfer_keys = [] if args.only == "digits" else list(TRANSFER)
    total = len(seeds) * (len(digits_keys) + (len(transfer_keys) + 1 if transfer_keys else 0))
    started = time.perf_counter()
    digits: list[dict[str, tuple[int, int]]] = []
    transfer: list[dict[str, tuple[int, int]]] = []
    with tqdm(total=total, desc="training runs", unit="run") as bar:
        for seed in seeds:
            if digits_keys:
                digits.append(run_digits(seed, args.epochs, digits_keys, bar))
            if transfer_keys:
                transfer.append(
                    run_transfer(seed, args.pretrain_epochs, args.finetune_epochs, transfer_keys, bar)
                )
    seconds = time.perf_counter() - started
    rows = [
        summarise(k, DIGITS[k][0], "digits", DIGITS_REFERENCE.get(k, FLAGSHIP), digits) for k in digits_keys
    ]
    rows += [
        summarise(k, description, "digits", DIGITS_REFERENCE.get(k, FLAGSHIP), digits)
        for k, (description, base, _) in TTA_ROWS.items()
        if base in digits_keys
    ]
    for k in transfer_keys:
        description, shots, _ = TRANSFER[k]
        rows.append(summarise(k, description, f"transfer, {shots} shots", REFERENCES[shots], transfer))
    lines = [
        "# Model quality: test errors with and without each trick",
        "",
        header,
        f"Command: `{command}` ({seconds / 60:.1f} min).",
        "",
        f"digits: the flagship recipe, {args.epochs} epochs on 899 images, errors on 539 test images. "
        f"transfer: pretrained {args.pretrain_epochs} epochs on the digits 0-4, then {args.finetune_epochs} "
        "epochs on 2 (or 5) labelled images per class of 5-9, errors on the other 5-9 images. "
        f"Seeds {', '.join(map(str, seeds))} (split, initialisation and training); std is the sample "
        "standard deviation over seeds; the difference is taken seed by seed (same split) to the row "
        'named under "compared with"; negative: fewer errors.',
        "",
        *table(rows, seeds),
    ]
    text = "\n".join(lines)
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(text + "\n")
    result = {
        "benchmark": "quality",
        "command": command,
        "machine": header,
        "seconds": round(seconds, 1),
        "seeds": seeds,
        "settings": {
            "epochs": args.epochs,
            "pretrain_epochs": args.pretrain_epochs,
            "finetune_epochs": args.finetune_epochs,
        },
        "rows": rows,
    }
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
