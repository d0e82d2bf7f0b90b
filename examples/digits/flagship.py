"""Flagship example: a small ResNet on scikit-learn's handwritten digits, with the tricks together.

The data (1,797 8x8 images) ships inside scikit-learn: nothing is downloaded. One run
shows, on real data:

* ``SplitDataModule``: a stratified train/val/test split reproducible from a seed;
* ``WeightInit``: Kaiming initialisation with the last BatchNorm of each residual block
  zeroed (each block starts as the identity);
* ``NoBiasDecay``: AdamW with weight decay on the weights only, not biases/BatchNorm;
* ``TTAEvaluation`` / ``TTAPredict``: test accuracy with and without test-time
  augmentation (five shifted crops, softmax-averaged);
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
  ``load_weights`` to check they reproduce the accuracy;
* ``SafeCheckpointIO``: the training checkpoints (``checkpoints/last.ckpt``) written without
  pickle, ready for ``trainer.fit(ckpt_path=...)``;
* TensorBoard logs, and a summary at the end.

Run it from the repository root::

    python examples/digits/flagship.py                        # CPU, about a minute
    python examples/digits/flagship.py --gpu                  # one GPU, 16-mixed
    python examples/digits/flagship.py --gpu --devices 2      # DDP on two GPUs
    tensorboard --logdir runs/flagship                        # the curves
"""

from __future__ import annotations

import argparse
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
    ClassActivationMaps,
    ExportWeights,
    FilterVisualizer,
    GradientMonitor,
    MemorySnapshot,
    SafeCheckpointIO,
    SplitDataModule,
    SyncDetector,
    TTAEvaluation,
    WeightInit,
    log_parameter_counts,
)
from lightning_tricks.functional import count_parameters, load_weights


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


def accuracy_of(model: DigitsClassifier, images: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """Plain and TTA accuracy of ``model`` (eval mode, no gradients) on a batch of images."""
    model.eval()
    with torch.inference_mode():
        plain = (model(images).argmax(-1) == labels).float().mean().item()
        tta = (model.tta_forward(images).argmax(-1) == labels).float().mean().item()
    return plain, tta


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Train, test, export, reload; print and return the summary (also written to ``summary.json``)."""
    args = parse_args(argv)
    started = time.perf_counter()
    configure_cpu(args)
    L.seed_everything(args.seed, verbose=False)
    out = Path(args.out)

    data = SplitDataModule(
        DigitsDataset(),
        val=0.15,
        test=0.15,
        labels="targets",  # stratified: every class in the same proportion in each split
        seed=args.seed,
        batch_size=64,
        eval_batch_size=512,
        num_workers=None if args.gpu else 0,  # the data is a tensor in memory: workers only cost on CPU
    )
    model = DigitsClassifier(width=args.width)
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
        WeightInit("kaiming_normal", zero_init_last_bn=True, seed=args.seed),
        TTAEvaluation(views=list(model.tta_views), merge=model.tta_merge, on_validation=False),
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
    tested = trainer.test(model, datamodule=data, verbose=False)[0]

    summary: dict[str, Any] = {
        "test_acc": tested["test_acc"],
        "test_acc_plain": tested["tta_evaluation/test_accuracy_plain"],
        "test_acc_tta": tested["tta_evaluation/test_accuracy_tta"],
        "tta_wrong_to_correct": tested["tta_evaluation/test_wrong_to_correct"],
        "tta_correct_to_wrong": tested["tta_evaluation/test_correct_to_wrong"],
        "params": count_parameters(model),
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
        # Prove the exported file is the model: load it into a fresh network and re-test.
        fresh = DigitsClassifier(width=args.width)
        report = load_weights(fresh, export.last_path, strict=True)
        test_set = data.test_set
        images = torch.stack([test_set[i][0] for i in range(len(test_set))])
        labels = torch.tensor([test_set[i][1] for i in range(len(test_set))])
        plain, tta = accuracy_of(fresh, images, labels)
        summary.update(reloaded_tensors=len(report.loaded), reloaded_acc_plain=plain, reloaded_acc_tta=tta)
        summary["seconds"] = round(time.perf_counter() - started, 1)
        write_summary(out, summary)
        print_summary(summary)
    return summary


def print_summary(s: dict[str, Any]) -> None:
    p = s["params"]
    found = "none" if not s["sync_findings"] else f"{s['sync_findings']} (see the warning above)"
    print(
        f"""
=== digits flagship: {s["epochs"]} epochs in {s["seconds"]} s
test accuracy         plain {s["test_acc_plain"]:.4f}   with TTA (5 crops) {s["test_acc_tta"]:.4f}
  TTA fixed {s["tta_wrong_to_correct"]:.2%} of the test images and broke {s["tta_correct_to_wrong"]:.2%}
parameters            {p["total"]:,} total, {p["trainable"]:,} trainable
exported weights      {s["weights"]}
  reloaded with load_weights ({s["reloaded_tensors"]} tensors): plain {s["reloaded_acc_plain"]:.4f}, TTA {s["reloaded_acc_tta"]:.4f}
host-device syncs     in training_step: {found}
memory profile        {", ".join(Path(f).name for f in s["memory_files"]) or "-"} in {Path(s["memory_files"][0]).parent if s["memory_files"] else "-"}
gradients             gradient_monitor/grad_norm/<layer> and gradient_monitor/grad_hist/<layer> in TensorBoard (last total norm {s["last_grad_norm"]:.3g})
activation pictures   activation_visualizer/<layer>/ in TensorBoard's IMAGES tab, {len(s["activation_layers"])} layers: \
{", ".join(s["activation_layers"])}
filter images         filter_visualizer/<layer> in TensorBoard's IMAGES tab (what each channel responds to most)
class activation maps class_activation_maps/backbone.2 in TensorBoard's IMAGES tab (Grad-CAM: where it looked)
TensorBoard logs      {s["tensorboard_dir"]}   (tensorboard --logdir {Path(s["tensorboard_dir"]).parent})
"""
    )


if __name__ == "__main__":
    main()
