from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import ModelCheckpoint
from safetensors import safe_open
from safetensors.torch import load_file

from lightning_tricks import ExportWeights
from lightning_tricks.functional import load_weights
from tests.helpers import ClassifierModule, ImageDataModule, cpu_trainer


def test_final_weights_exported_atomically(tmp_path):
    model = ClassifierModule(arch="cnn")
    cb = ExportWeights(dirpath=str(tmp_path))
    cpu_trainer(max_epochs=2, callbacks=[cb]).fit(model, datamodule=ImageDataModule(n_train=16))
    out = load_file(str(tmp_path / "weights.safetensors"))
    expected = model.state_dict()
    assert out.keys() == expected.keys()
    assert all(torch.equal(out[k], expected[k]) for k in expected)
    with safe_open(str(tmp_path / "weights.safetensors"), "pt") as f:
        assert f.metadata()["source"] == "final" and f.metadata()["global_step"] == "2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["weights.safetensors"]  # no temp files
    assert cb.last_path == str(tmp_path / "weights.safetensors")


def test_best_checkpoint_weights_with_submodule(tmp_path):
    model = ClassifierModule(arch="mlp", lr=0.2)
    # "best" = highest val_loss, so that it is not the last epoch
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ck", monitor="val_loss", mode="max", save_top_k=1)
    cb = ExportWeights(
        dirpath=str(tmp_path), filename="best.safetensors", source="best", submodule="backbone"
    )
    trainer = cpu_trainer(max_epochs=3, callbacks=[ckpt, cb], enable_checkpointing=True)
    trainer.fit(model, datamodule=ImageDataModule(n_train=32))
    best = torch.load(ckpt.best_model_path, weights_only=True)["state_dict"]
    out = load_file(str(tmp_path / "best.safetensors"))
    assert sorted(out) == sorted(k.removeprefix("backbone.") for k in best if k.startswith("backbone."))
    assert all(torch.equal(out[k], best[f"backbone.{k}"]) for k in out)
    final = model.backbone.state_dict()
    assert any(not torch.equal(out[k], final[k]) for k in out)  # really the best, not the last
    with safe_open(str(tmp_path / "best.safetensors"), "pt") as f:
        assert f.metadata()["source"].startswith("best:")


def test_best_without_checkpoint_falls_back_with_a_warning(tmp_path):
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ck", every_n_epochs=5)
    cb = ExportWeights(dirpath=str(tmp_path), source="best")
    with pytest.warns(UserWarning, match="no best checkpoint"):
        cpu_trainer(max_epochs=1, callbacks=[ckpt, cb], enable_checkpointing=True).fit(
            ClassifierModule(arch="mlp"), datamodule=ImageDataModule(n_train=16)
        )
    with safe_open(str(tmp_path / "weights.safetensors"), "pt") as f:
        assert f.metadata()["source"] == "final"


def test_prerequisites_checked_in_setup(tmp_path):
    with pytest.raises(MisconfigurationException, match="`source='best'` needs a ModelCheckpoint"):
        cpu_trainer(callbacks=[ExportWeights(dirpath=str(tmp_path), source="best")]).fit(
            ClassifierModule(arch="mlp"), datamodule=ImageDataModule(n_train=16)
        )
    with pytest.raises(
        MisconfigurationException, match=r"`submodule` names no submodule 'encodr'.*backbone, head"
    ):
        cpu_trainer(callbacks=[ExportWeights(dirpath=str(tmp_path), submodule="encodr")]).fit(
            ClassifierModule(arch="mlp"), datamodule=ImageDataModule(n_train=16)
        )
    assert not list(tmp_path.iterdir())


def test_constructor_errors_name_the_argument():
    with pytest.raises(ValueError, match="`filename`"):
        ExportWeights(filename="weights.pt")
    with pytest.raises(ValueError, match="`source`"):
        ExportWeights(source="last")
    with pytest.raises(TypeError, match="`dirpath`"):
        ExportWeights(dirpath=3)


def _metadata(path) -> dict[str, str]:
    with safe_open(str(path), "pt") as f:
        return f.metadata()


def test_best_export_records_the_epoch_and_step_of_the_best_checkpoint_on_a_zoo_model(tmp_path):
    from tests.helpers.zoo import zoo_loaders, zoo_module

    torch.manual_seed(0)
    model = zoo_module("resnet", lr=0.1)
    # every epoch is kept, named the Lightning way; "best" = highest val_loss, so it is not the last
    ckpt = ModelCheckpoint(
        dirpath=tmp_path / "ck", monitor="val_loss", mode="max", save_top_k=-1, filename="{epoch}-{step}"
    )
    best = ExportWeights(dirpath=str(tmp_path), filename="best.safetensors", source="best", submodule="model")
    final = ExportWeights(dirpath=str(tmp_path), filename="final.safetensors")
    trainer = cpu_trainer(
        max_epochs=3, limit_train_batches=2, callbacks=[ckpt, best, final], enable_checkpointing=True
    )
    train, val = zoo_loaders("resnet", n=16, batch_size=8)
    trainer.fit(model, train, val)
    saved = torch.load(ckpt.best_model_path, weights_only=True)
    meta = _metadata(tmp_path / "best.safetensors")
    assert (meta["epoch"], meta["global_step"]) == (str(saved["epoch"]), str(saved["global_step"]))
    assert f"epoch={meta['epoch']}-step={meta['global_step']}.ckpt" == Path(ckpt.best_model_path).name
    assert meta["global_step"] != str(trainer.global_step)  # the best is not the end of fit here
    # the exported HF weights load into a fresh HF model
    fresh = zoo_module("resnet").model
    assert load_weights(fresh, tmp_path / "best.safetensors", strict=True).ok
    # the final export names the last completed epoch, as Lightning names its checkpoints
    last = max(ckpt.best_k_models, key=lambda p: torch.load(p, weights_only=True)["global_step"])
    meta = _metadata(tmp_path / "final.safetensors")
    assert f"epoch={meta['epoch']}-step={meta['global_step']}.ckpt" == Path(last).name
    assert meta["epoch"] == "2" and meta["global_step"] == str(trainer.global_step)
