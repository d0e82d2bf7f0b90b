"""The examples run for real, in reduced configurations, and produce what their summaries claim."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from examples.digits.common import DigitsClassifier, DigitsDataset, random_shift

ROOT = Path(__file__).resolve().parents[2]


def scalars(logdir: str | Path) -> set[str]:
    acc = EventAccumulator(str(logdir))
    acc.Reload()
    return set(acc.Tags()["scalars"])


def test_digits_dataset_and_shift():
    ds = DigitsDataset(classes=[7, 3], per_class=5)
    assert len(ds) == 10 and sorted(set(ds.targets)) == [0, 1]
    x, y = ds[0]
    assert x.shape == (1, 16, 16) and y in (0, 1)
    assert torch.all(x[:, :2] == x.min())  # the padding is the background value
    batch = torch.stack([ds[i][0] for i in range(4)])
    shifted = random_shift(batch, 2)
    assert shifted.shape == batch.shape and not torch.equal(shifted, batch)
    assert torch.equal(random_shift(batch, 0), batch)


def test_flagship(tmp_path, capsys):
    from examples.digits import flagship

    s = flagship.main(["--epochs", "3", "--memory-profile", "--out", str(tmp_path)])
    assert json.loads((tmp_path / "summary.json").read_text())["test_errors"] == s["test_errors"]
    assert (s["train_images"], s["val_images"], s["test_images"]) == (899, 359, 539)
    assert s["test_errors"] < 0.7 * s["test_images"]  # chance makes 90% errors
    # TTA is applied to the test set only if it made fewer errors on the validation set
    assert s["tta_applied"] == (s["val_errors_tta"] < s["val_errors_plain"])
    printed = capsys.readouterr().out.splitlines()
    start = next(i for i, line in enumerate(printed) if line.startswith("=== digits flagship"))
    printed = printed[start:]
    assert all(line.strip() for line in printed)  # no empty line
    assert not any(" - " in line for line in printed)  # no placeholder
    tta_line = next(line for line in printed if line.startswith("TTA "))
    assert ("applied to the test set" in tta_line) == s["tta_applied"]
    if s["tta_applied"]:
        assert f"validation errors {s['val_errors_plain']} -> {s['val_errors_tta']}:" in tta_line
    else:  # the line reports the decision, not the worse TTA figure
        assert f"no fewer validation errors than without ({s['val_errors_plain']})" in tta_line
    # the exported file is the model: reloaded, it makes the same test errors (with the same TTA decision)
    weights = load_file(s["weights"])
    assert set(weights) == set(DigitsClassifier().state_dict())
    assert s["reloaded_tensors"] == len(weights)
    assert s["reloaded_test_errors"] == s["test_errors"]
    tags = scalars(s["tensorboard_dir"])
    assert {
        "test_acc",
        "tta_evaluation/val_accuracy_plain",
        "tta_evaluation/val_accuracy_tta",
        "val_acc",
    } <= tags
    assert s["sync_findings"] == 0
    # the training checkpoint is pickle-free (SafeCheckpointIO) and holds the final epoch
    from lightning_tricks.functional import is_safe_checkpoint, load_checkpoint

    assert Path(s["checkpoint"]).name == "last.ckpt" and is_safe_checkpoint(s["checkpoint"])
    assert load_checkpoint(s["checkpoint"])["epoch"] == 2
    names = {Path(f).name for f in s["memory_files"]}
    assert "memory_profile_rank0_step2.txt" in names and all(Path(f).is_file() for f in s["memory_files"])
    assert (
        s["params"]["total"]
        == s["params"]["trainable"]
        == sum(v.numel() for v in weights.values() if v.is_floating_point())
        - sum(v.numel() for k, v in weights.items() if "running" in k)
    )


def test_flagship_summary_quotes_the_quality_benchmark():
    from examples.digits.flagship import quality_results, summary_text

    s = {
        "epochs": 15,
        "train_images": 899,
        "seconds": 9.0,
        "test_errors": 11,
        "test_images": 539,
        "tta_views": ["hshift:1", "hshift:-1"],
        "val_images": 359,
        "val_errors_plain": 3,
        "val_errors_tta": 4,
        "tta_applied": False,
        "no_decay_tensors": 19,
        "agc_clip_factor": 0.01,
        "params": {"total": 10, "trainable": 10},
        "weights": "w.safetensors",
        "reloaded_tensors": 56,
        "reloaded_test_errors": 11,
        "sync_findings": 0,
        "memory_files": [],
        "last_grad_norm": 0.5,
        "activation_layers": ["a"],
        "tensorboard_dir": "runs/tb/version_0",
    }
    lines = summary_text(s, {}).splitlines()  # without benchmarks/results/quality.json
    tta = next(line for line in lines if line.startswith("TTA "))
    assert tta.endswith("no fewer validation errors than without (3), so the test set ran without it")
    assert "4" not in tta.split("images:")[1]  # the worse TTA figure is not shown
    assert next(line for line in lines if line.startswith("WeightInit")).endswith("default init")
    assert "AdaptiveGradientClipping(clip_factor=0.01)" in next(
        line for line in lines if line.startswith("AGC")
    )
    assert not any(line.startswith("memory profile") for line in lines)  # nothing recorded, no line
    assert all(line.strip() for line in lines)
    # with the results of benchmarks/quality.py, every trick's line quotes its row
    rows = quality_results()
    quoted = {line.split()[0]: line for line in summary_text(s, rows).splitlines()}
    for trick, key, other in [
        ("TTA", "tta_chosen", "flagship"),
        ("AGC", "flagship", "no_clipping"),
        ("NoBiasDecay", "flagship", "decay_on_all"),
        ("WeightInit", "flagship", "init_kaiming_zero_bn"),
    ]:
        n = len(rows[key]["errors"])
        assert f"over {n} seeds (benchmarks/quality.py): {rows[key]['mean']:.1f} +- " in quoted[trick]
        assert f"errors, {rows[other]['mean']:.1f} +- {rows[other]['std']:.1f} " in quoted[trick]


def test_transfer_learning_pretraining_beats_scratch(tmp_path):
    from examples.transfer import transfer_learning

    # less pretraining than the default 15 epochs; on seeds 0-4 this gave 266-378 errors
    # fine-tuned against 428-593 from scratch, out of 876
    s = transfer_learning.main(["--pretrain-epochs", "6", "--out", str(tmp_path)])
    assert Path(s["weights"]).is_file()
    tuned, scratch = s["finetune"], s["scratch"]
    assert tuned["loaded_tensors"] == len(load_file(s["weights"]))
    assert tuned["test_images"] == scratch["test_images"] == 896 - 2 * 5 * 2  # 5-9, less train and val
    assert tuned["test_errors"] < scratch["test_errors"]  # what the example is for: pretraining helps
    assert "freeze_backbone/params_trainable" in scalars(tmp_path / "finetune" / "version_0")
    assert "test_acc" in scalars(tmp_path / "scratch" / "version_0")


def test_cli_fit_from_yaml(tmp_path):
    config = ROOT / "examples" / "cli" / "configs" / "digits.yaml"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [
        sys.executable,
        "-m",
        "examples.cli.main",
        "fit",
        "--config",
        str(config),
        "--trainer.max_epochs=1",
    ]
    cmd += ["--trainer.limit_train_batches=4", "--trainer.limit_val_batches=2"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    weights = load_file(tmp_path / "runs/cli/weights/digits.safetensors")
    assert weights["head.weight"].shape == (10, 64)
    tags = scalars(tmp_path / "runs/cli/tensorboard/version_0")
    assert {"val_acc", "tta_evaluation/val_accuracy_plain", "tta_evaluation/val_accuracy_tta"} <= tags
    assert "WeightInit (kaiming_normal" in proc.stderr + proc.stdout


def test_fabric_loop(tmp_path):
    from examples.fabric import train_fabric

    s = train_fabric.main(
        [
            "--pretrain-epochs",
            "1",
            "--freeze-epochs",
            "1",
            "--epochs",
            "2",
            "--limit-batches",
            "4",
            "--out",
            str(tmp_path),
        ]
    )
    assert s["frozen_tensors"] == 27  # every backbone tensor
    assert s["params_while_frozen"]["trainable"] == 64 * 5 + 5  # the new head only
    assert s["optimizer_groups"] == 4  # head + backbone, each split into decay / no-decay
    assert s["feature_dim"] == 64
    assert s["checkpointed"] == ["backbone.1", "backbone.2", "backbone.3"]
    assert s["nearest_class_mean_acc"] > 0.3  # chance is 0.2
    assert (tmp_path / "summary.json").is_file()


def test_crash_and_resume_ends_bitwise_equal(tmp_path):
    from examples.resume import crash_and_resume

    summary = crash_and_resume.main(["--out", str(tmp_path), "--epochs", "3", "--limit-batches", "3"])
    assert summary["checkpoint_is_pickle_free"] is True
    assert summary["tensors_compared"] > 0 and summary["tensors_differing"] == []
    assert (tmp_path / "crashed" / "checkpoints" / "last.ckpt").exists()
