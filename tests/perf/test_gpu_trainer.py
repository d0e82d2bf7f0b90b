"""The GPU preset: its CPU fallback, its arguments, and its LightningCLI config run for real."""

from __future__ import annotations

import warnings

import lightning as L
import pytest
import torch
import yaml

from lightning_tricks import gpu_trainer, gpu_trainer_kwargs
from lightning_tricks.perf.gpu_trainer import CPU_FALLBACK, GPU_CONFIG
from tests.helpers import ClassifierModule, ImageDataModule

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="tests the fallback without CUDA")


def test_config_file_is_the_preset():
    trainer = yaml.safe_load(GPU_CONFIG.read_text())["trainer"]
    assert (
        trainer["precision"] == "16-mixed" and trainer["strategy"] == "ddp" and trainer["benchmark"] is True
    )


@no_cuda
def test_cpu_fallback_warns_and_uses_bf16():
    with pytest.warns(UserWarning, match=r"no CUDA device.*precision='bf16-mixed'"):
        kwargs = gpu_trainer_kwargs()
    assert {k: kwargs[k] for k in CPU_FALLBACK} == CPU_FALLBACK
    with pytest.warns(UserWarning, match="no CUDA"):
        trainer = gpu_trainer(max_epochs=1, logger=False, enable_checkpointing=False)
    assert trainer.precision == "bf16-mixed" and trainer.accelerator.__class__.__name__ == "CPUAccelerator"
    trainer.fit(ClassifierModule(), datamodule=ImageDataModule())
    assert trainer.state.finished


def test_overrides_win_and_deterministic_turns_off_benchmark():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert gpu_trainer_kwargs(deterministic=True)["benchmark"] is False
        assert gpu_trainer_kwargs(deterministic=True, benchmark=True)["benchmark"] is True
        explicit = gpu_trainer_kwargs(accelerator="cpu", precision="32-true", strategy="auto")
        assert explicit["precision"] == "32-true" and explicit["benchmark"] is True
        assert gpu_trainer_kwargs(find_unused_parameters=True, accelerator="cpu")["strategy"] == (
            "ddp_find_unused_parameters_true"
        )
    with pytest.raises(TypeError, match="find_unused_parameters"):
        gpu_trainer_kwargs(find_unused_parameters="yes")


def _run_cli(tmp_path, extra):
    from lightning.pytorch.cli import LightningCLI

    run = tmp_path / "run.yaml"
    run.write_text(
        yaml.safe_dump(
            {
                "seed_everything": 0,
                "trainer": {
                    "max_epochs": 1,
                    "logger": False,
                    "enable_checkpointing": False,
                    "enable_progress_bar": False,
                    "default_root_dir": str(tmp_path),
                },
                "model": {"class_path": "tests.helpers.ClassifierModule", "init_args": {"arch": "cnn"}},
                "data": {"class_path": "tests.helpers.ImageDataModule"},
            }
        )
    )
    args = ["fit", "--config", str(GPU_CONFIG), "--config", str(run), *extra]
    return LightningCLI(
        L.LightningModule,
        L.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        args=args,
        save_config_callback=None,
    )


def test_lightning_cli_config_with_the_cpu_fallback(tmp_path):
    overrides = [
        f"--trainer.{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in CPU_FALLBACK.items()
    ]
    cli = _run_cli(tmp_path, overrides)
    assert cli.trainer.state.finished and cli.trainer.precision == "bf16-mixed"


@pytest.mark.gpu
def test_lightning_cli_config_on_gpu(tmp_path):
    cli = _run_cli(tmp_path, ["--trainer.devices=1"])
    assert cli.trainer.state.finished and cli.trainer.precision == "16-mixed"
    assert cli.trainer.strategy.__class__.__name__ == "DDPStrategy"


@pytest.mark.gpu
def test_gpu_trainer_on_gpu():
    trainer = gpu_trainer(devices=1, max_epochs=1, logger=False, enable_checkpointing=False)
    assert trainer.precision == "16-mixed" and torch.backends.cudnn.benchmark
    trainer.fit(ClassifierModule(), datamodule=ImageDataModule())
    assert trainer.state.finished
