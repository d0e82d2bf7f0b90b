from __future__ import annotations

import pytest
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import ModelCheckpoint
from safetensors import safe_open
from safetensors.torch import load_file

from lightning_tricks import ExportWeights
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
