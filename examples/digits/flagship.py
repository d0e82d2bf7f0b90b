"""Flagship example: a small ResNet on scikit-learn's handwritten digits, with the tricks together.

The data (1,797 8x8 images) ships inside scikit-learn: nothing is downloaded. One run
shows, on real data:

* ``SplitDataModule``: a stratified train/val/test split (50/20/30) reproducible from a seed;
* ``NoBiasDecay``: AdamW with weight decay on the weights only, not biases/BatchNorm;
* ``AdaptiveGradientClipping``: each unit's gradient clipped relative to its weights (AGC);
* ``TTAEvaluation`` / ``TTAPredict``: test-time augmentation that matches the training
  augmentation (the eight one-pixel shifts, softmax-averaged), measured on the validation
  set at the end of training and applied to the test set only if it made fewer errors there;
* ``GradientMonitor``: per-layer gradient norms (and histograms) in TensorBoard, with a
  warning on NaN/Inf gradients;
* ``ActivationVisualizer``: feature maps, histograms and "colorful dimension" plots of
  the convolutions on a fixed validation batch, in TensorBoard's IMAGES tab;
* ``FilterVisualizer`` / ``ClassActivationMaps``: the input each channel of two
  convolution stages responds to most, and Grad-CAM heatmaps of a validation batch;
* ``SyncDetector``: checks ``training_step`` for host-device synchronisations;
* ``MemorySnapshot`` (with ``--gpu``, or ``--memory-profile`` on CPU): a CUDA allocator
  snapshot of one training step (a PyTorch-profiler memory table on CPU);
* ``ExportWeights``: the final weights as ``.safetensors``, loaded back with
  ``load_weights`` to check they make the same test errors;
* ``SafeCheckpointIO``: the training checkpoints (``checkpoints/last.ckpt``) written without
  pickle, ready for ``trainer.fit(ckpt_path=...)``;
* TensorBoard logs, and a summary at the end, in test errors.

What each trick does to the test errors over several seeds is measured by
``benchmarks/quality.py``, and the summary quotes it when ``benchmarks/results/quality.json``
is there. The recipe follows it: ``WeightInit``'s Kaiming initialisation (with or without
the last BatchNorm of each block zeroed) made more test errors than PyTorch's default
initialisation with this model, so the flagship keeps the default.

Run it from the repository root::

    python examples/digits/flagship.py                        # CPU
    python examples/digits/flagship.py --gpu                  # one GPU, 16-mixed
    python examples/digits/flagship.py --gpu --devices 2      # DDP on two GPUs
    tensorboard --logdir runs/flagship                        # the curves
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python examples/digits/flagship.py`: make `examples` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger

from examples.digits.common import (
    DigitsClassifier,
    DigitsDataset,
    add_common_args,
    configure_cpu,
    trainer_kwargs,
    write_summary,
)
from lightning_tricks import (
    ActivationVisualizer,
    AdaptiveGradientClipping,
    ClassActivationMaps,
    ExportWeights,
    FilterVisualizer,
    GradientMonitor,
    MemorySnapshot,
    SafeCheckpointIO,
    SplitDataModule,
    SyncDetector,
    TTAEvaluation,
    log_parameter_counts,
)
from lightning_tricks.functional import count_parameters, load_weights, no_weight_decay_names

#: what benchmarks/quality.py measured over several seeds (read if present)
QUALITY_RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "quality.json"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser, epochs=15, out="runs/flagship")
    parser.add_argument("--width", type=int, default=16, help="channels of the first stage")
    parser.add_argument(
        "--memory-profile",
        action="store_true",
        help="also profile one step's memory on CPU (on by default with --gpu: a CUDA allocator snapshot). "
        "Off on CPU because starting the PyTorch profiler took from 1 s to minutes on a busy 2-core machine",
    )
    return parser.parse_args(argv)


def errors(accuracy: Any, n: int) -> int:
    """The number of wrong answers among ``n`` images, from an accuracy."""
    return round((1.0 - float(accuracy)) * n)


def count_errors(model: DigitsClassifier, images: torch.Tensor, labels: torch.Tensor, tta: bool) -> int:
    """Test errors of ``model`` (eval mode, no gradients), with its TTA or without."""
    model.eval()
    with torch.inference_mode():
        logits = model.tta_forward(images) if tta else model(images)
    return int((logits.argmax(-1) != labels).sum())


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Train, decide on TTA, test, export, reload; print and return the summary (also in ``summary.json``)."""
    args = parse_args(argv)
    started = time.perf_counter()
    configure_cpu(args)
    L.seed_everything(args.seed, verbose=False)
    out = Path(args.out)

    data = SplitDataModule(
        DigitsDataset(),
        val=0.2,
        test=0.3,
        labels="targets",  # stratified: every class in the same proportion in each split
        seed=args.seed,
        batch_size=64,
        eval_batch_size=512,
        num_workers=None if args.gpu else 0,  # the data is a tensor in memory: workers only cost on CPU
    )
    model = DigitsClassifier(width=args.width)
    agc = AdaptiveGradientClipping(clip_factor=0.01)
    # TTA with and without, on the validation set, once: at the end of the last epoch
    tta_check = TTAEvaluation(
        views=list(model.tta_views),
        merge=model.tta_merge,
        chunk_size=model.tta_chunk_size,
        on_validation=True,
        on_test=False,
        every_n_epochs=args.epochs,
    )
    export = ExportWeights(dirpath=str(out / "weights"), filename="digits.safetensors")
    syncs = SyncDetector(on_error="warn", every_n_steps=10)
    grads = GradientMonitor(log_histograms=True, on_error="warn")  # samples on the logging steps
    activations = ActivationVisualizer(every_n_epochs=5, max_layers=6, num_samples=8)
    filters = FilterVisualizer(
        layers=["backbone.1", "backbone.2"],
        channels=8,
        every_n_epochs=5,
        steps=32,
        rounds=2,
        mean=[0.25],
        std=[0.35],
    )
    cams = ClassActivationMaps(layer="backbone.2", num_images=8, every_n_epochs=5)
    memory = MemorySnapshot(start_step=2, num_steps=1, dirpath=str(out / "memory"), html=False)
    checkpoints = ModelCheckpoint(dirpath=str(out / "checkpoints"), save_last=True)
    callbacks: list[L.Callback] = [
        checkpoints,
        agc,
        tta_check,
        grads,
        activations,
        filters,
        cams,
        syncs,
        export,
    ]
    if args.gpu or args.memory_profile:
        callbacks.append(memory)
    logger = TensorBoardLogger(str(out), name="tensorboard")
    trainer = L.Trainer(
        **trainer_kwargs(args), logger=logger, callbacks=callbacks, plugins=[SafeCheckpointIO()]
    )
    log_parameter_counts(model, trainer.loggers)

    with warnings.catch_warnings():
        # the CPU fallback of MemorySnapshot says once that it profiles on CPU instead: expected here
        warnings.filterwarnings("ignore", "MemorySnapshot: CUDA memory snapshots need a GPU")
        trainer.fit(model, datamodule=data)
    last_grad_norm = grads.last_norms.get("total", float("nan"))  # read before test: setup() resets it

    # The decision on TTA is made on the validation set; the test set is run once, with it or without.
    n_val, n_test = len(data.val_set), len(data.test_set)
    val_plain = errors(trainer.callback_metrics["tta_evaluation/val_accuracy_plain"], n_val)
    val_tta = errors(trainer.callback_metrics["tta_evaluation/val_accuracy_tta"], n_val)
    use_tta = val_tta < val_plain
    model.tta_on_test = use_tta  # TTAPredict: trainer.test runs the module with TTA
    tested = trainer.test(model, datamodule=data, verbose=False)[0]

    summary: dict[str, Any] = {
        "test_errors": errors(tested["test_acc"], n_test),
        "test_images": n_test,
        "tta_views": list(model.tta_views),
        "val_errors_plain": val_plain,
        "val_errors_tta": val_tta,
        "val_images": n_val,
        "tta_applied": use_tta,
        "train_images": len(data.train_set),
        "params": count_parameters(model),
        "no_decay_tensors": len(no_weight_decay_names(model)),
        "agc_clip_factor": agc.clip_factor,
        "sync_findings": syncs.report.total,
        "last_grad_norm": last_grad_norm,
        "activation_layers": sorted(activations.history),
        "tensorboard_dir": logger.log_dir,
        "weights": export.last_path,
        "checkpoint": checkpoints.last_model_path,  # pickle-free (SafeCheckpointIO)
        "memory_files": [str(p) for p in memory.files],
        "epochs": args.epochs,
        "seconds": None,
    }
    if trainer.is_global_zero:
        # Prove the exported file is the model: load it into a fresh network and count its test errors.
        fresh = DigitsClassifier(width=args.width)
        report = load_weights(fresh, export.last_path, strict=True)
        test_set = data.test_set
        images = torch.stack([test_set[i][0] for i in range(len(test_set))])
        labels = torch.tensor([test_set[i][1] for i in range(len(test_set))])
        summary.update(
            reloaded_tensors=len(report.loaded),
            reloaded_test_errors=count_errors(fresh, images, labels, use_tta),
        )
        summary["seconds"] = round(time.perf_counter() - started, 1)
        write_summary(out, summary)
        print(summary_text(summary, quality_results()))
    return summary


def quality_results() -> dict[str, dict[str, Any]]:
    """The rows of ``benchmarks/results/quality.json`` by key, or ``{}`` if it is not there."""
    try:
        return {row["key"]: row for row in json.loads(QUALITY_RESULTS.read_text())["rows"]}
    except (OSError, ValueError, KeyError):
        return {}


def _effect(rows: dict[str, dict[str, Any]], key: str, other: str, other_label: str) -> str:
    """``; over 3 seeds: 12.3 +- 3.1 test errors, 14.0 +- 2.0 <other_label>`` from the quality benchmark."""
    if key not in rows or other not in rows:
        return ""
    a, b = rows[key], rows[other]
    return (
        f"; over {len(a['errors'])} seeds (benchmarks/quality.py): {a['mean']:.1f} +- {a['std']:.1f} test "
        f"errors, {b['mean']:.1f} +- {b['std']:.1f} {other_label}"
    )


def summary_text(s: dict[str, Any], rows: dict[str, dict[str, Any]]) -> str:
    """The printed summary: one line per trick, in test errors; no empty line."""
    p = s["params"]
    views = len(s["tta_views"])
    if s["tta_applied"]:
        decision = (
            f"validation errors {s['val_errors_plain']} -> {s['val_errors_tta']}: applied to the test set"
        )
    else:
        decision = (
            f"no fewer validation errors than without ({s['val_errors_plain']}), so the test set ran "
            "without it"
        )
    lines = [
        f"=== digits flagship: {s['epochs']} epochs on {s['train_images']} images",
        f"test errors           {s['test_errors']} / {s['test_images']}"
        + (" (with TTA, chosen on the validation set)" if s["tta_applied"] else " (without TTA)"),
        f"TTA                   {views} one-pixel shifts, softmax-averaged, on {s['val_images']} validation "
        f"images: {decision}" + _effect(rows, "tta_chosen", "flagship", "without TTA"),
        f"AGC                   AdaptiveGradientClipping(clip_factor={s['agc_clip_factor']:g}), the head left out"
        + _effect(rows, "flagship", "no_clipping", "without clipping"),
        f"NoBiasDecay           no weight decay on {s['no_decay_tensors']} bias and BatchNorm tensors"
        + _effect(rows, "flagship", "decay_on_all", "with decay on them too"),
        "WeightInit            not used: PyTorch's default init"
        + _effect(
            rows, "flagship", "init_kaiming_zero_bn", "with kaiming_normal and each block's last BN zeroed"
        ),
        f"parameters            {p['total']:,} total, {p['trainable']:,} trainable",
        f"exported weights      {s['weights']}: reloaded with load_weights ({s['reloaded_tensors']} "
        f"tensors), {s['reloaded_test_errors']} test errors",
        "host-device syncs     "
        + (
            "none in training_step"
            if not s["sync_findings"]
            else f"{s['sync_findings']} (see the warning above)"
        ),
    ]
    if s["memory_files"]:
        files = ", ".join(Path(f).name for f in s["memory_files"])
        lines.append(f"memory profile        {files} in {Path(s['memory_files'][0]).parent}")
    tb = s["tensorboard_dir"]
    lines += [
        "gradients             gradient_monitor/grad_norm/<layer> and gradient_monitor/grad_hist/<layer> in "
        f"TensorBoard (last total norm {s['last_grad_norm']:.3g})",
        f"activation pictures   activation_visualizer/<layer>/ in TensorBoard's IMAGES tab, "
        f"{len(s['activation_layers'])} layers: {', '.join(s['activation_layers'])}",
        "filter images         filter_visualizer/<layer> in TensorBoard's IMAGES tab (what each channel "
        "responds to most)",
        "class activation maps class_activation_maps/backbone.2 in TensorBoard's IMAGES tab (Grad-CAM: where "
        "it looked)",
        f"TensorBoard logs      {tb}   (tensorboard --logdir {Path(tb).parent})",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
