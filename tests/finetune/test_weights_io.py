"""Weights I/O: save/read/load_weights (functional), Lightning checkpoints, and ExportWeights (callback)."""

from __future__ import annotations

import builtins
import pickle
import re
import shutil
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import ModelCheckpoint
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

from lightning_tricks import ExportWeights
from lightning_tricks.functional import LoadReport, load_weights, read_weights, save_weights
from tests.helpers import ClassifierModule, ImageDataModule, SmallCNN, cpu_trainer, make_mlp


def same(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("suffix", [".safetensors", ".pt", ".pth"])
def test_roundtrip_including_buffers(tmp_path, suffix):
    src = SmallCNN()
    src.backbone[0][1].running_mean.normal_()
    src.backbone[0][1].num_batches_tracked.fill_(7)
    path = save_weights(src, tmp_path / f"w{suffix}")
    dst = SmallCNN()
    report = load_weights(dst, path, strict=True)
    assert report.ok and same(src, dst)
    assert not list(tmp_path.glob(".*tmp"))  # no leftovers of the atomic write


def test_safetensors_file_is_standard_and_found_by_content(tmp_path):
    src = make_mlp()
    path = save_weights(src, tmp_path / "w.safetensors", metadata={"note": "hi"})
    assert load_file(str(path)).keys() == src.state_dict().keys()
    renamed = shutil.copy(path, tmp_path / "w.bin")
    dst = make_mlp()
    assert load_weights(dst, renamed).ok and same(src, dst)


class Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, 4)
        self.out = nn.Linear(4, 10, bias=False)
        self.out.weight = self.emb.weight


def test_tied_weights_with_safetensors(tmp_path):
    src = Tied()
    path = save_weights(src, tmp_path / "tied.safetensors")  # safetensors refuses shared storage itself
    assert len(load_file(str(path))) == 1
    dst = Tied()
    report = load_weights(dst, path, strict=True)
    assert report.ok and report.loaded == ["emb.weight", "out.weight"]
    assert torch.equal(dst.emb.weight, src.emb.weight) and dst.out.weight is dst.emb.weight
    untied = nn.ModuleDict({"emb": nn.Embedding(10, 4), "out": nn.Linear(4, 10, bias=False)})
    assert load_weights(untied, path, strict=True).ok  # the alias restores the second name
    assert torch.equal(untied["out"].weight, src.emb.weight)


def test_views_of_one_storage_are_saved_as_copies(tmp_path):
    base = torch.arange(6.0)
    path = save_weights({"a": base[:3], "b": base[3:], "c": base.view(2, 3).T}, tmp_path / "v.safetensors")
    out = read_weights(path)
    assert torch.equal(out["b"], torch.tensor([3.0, 4.0, 5.0])) and torch.equal(out["c"], base.view(2, 3).T)


def test_replaced_head_loads_everything_else_and_reports(tmp_path):
    src = SmallCNN(num_classes=4)
    path = save_weights(src, tmp_path / "w.pt")
    dst = SmallCNN(num_classes=10)
    head_before = dst.head[2].weight.clone()
    report = load_weights(dst, path)
    assert report.mismatched == {"head.2.weight": ((4, 16), (10, 16)), "head.2.bias": ((4,), (10,))}
    assert not report.missing and not report.unexpected
    assert torch.equal(dst.head[2].weight, head_before)
    assert torch.equal(dst.backbone[0][0].weight, src.backbone[0][0].weight)
    assert "shape-mismatched 2" in str(report)


def test_strict_load_raises_before_changing_anything(tmp_path):
    path = save_weights(SmallCNN(num_classes=4), tmp_path / "w.pt")
    dst = SmallCNN(num_classes=10)
    before = {k: v.clone() for k, v in dst.state_dict().items()}
    with pytest.raises(ValueError, match=r"`strict=True`.*head.2.weight"):
        load_weights(dst, path, strict=True)
    assert all(torch.equal(v, before[k]) for k, v in dst.state_dict().items())


def test_prefixes_are_detected_both_ways(tmp_path):
    net = make_mlp()
    wrapped = {f"model.{k}": v for k, v in net.state_dict().items()}
    ckpt = {
        "epoch": 3,
        "state_dict": {**wrapped, "criterion.weight": torch.ones(4)},
        "hyper_parameters": {"lr": 0.1},
    }
    torch.save(ckpt, tmp_path / "fake.ckpt")
    dst = make_mlp()
    report = load_weights(dst, tmp_path / "fake.ckpt")
    assert (
        report.prefix == "strip 'model.'" and report.unexpected == ["criterion.weight"] and not report.missing
    )
    assert same(net, dst)
    holder = nn.Module()
    holder.net = make_mlp()
    report = load_weights(holder, save_weights(net, tmp_path / "plain.safetensors"))
    assert report.prefix == "add 'net.'" and report.ok and same(net, holder.net)
    with pytest.raises(ValueError, match="no key"):
        load_weights(make_mlp(), tmp_path / "fake.ckpt", prefix="")


class Evil:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (builtins.exec, (f"open({self.marker!r}, 'w').write('pwned')",))


@pytest.mark.parametrize("writer", ["torch", "pickle"])
def test_malicious_pickle_is_refused(tmp_path, writer):
    marker = tmp_path / "pwned.txt"
    payload = {"state_dict": {"w": torch.ones(2)}, "evil": Evil(marker)}
    path = tmp_path / "evil.ckpt"
    if writer == "torch":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload))
    # the payload really is malicious: a plain unpickle runs it
    if writer == "pickle":
        pickle.loads(path.read_bytes())
        assert marker.exists()
        marker.unlink()
    with pytest.raises(ValueError, match="refusing to load"):
        load_weights(nn.Linear(2, 1), path)
    with pytest.raises(ValueError, match="refusing to load"):
        read_weights(path)
    assert not marker.exists()


def test_bad_input(tmp_path):
    with pytest.raises(ValueError, match=r"`path` must end in .safetensors"):
        save_weights(make_mlp(), tmp_path / "w.txt")
    with pytest.raises(TypeError, match="`obj`"):
        save_weights({"w": [1, 2]}, tmp_path / "w.pt")
    with pytest.raises(TypeError, match="`path`"):
        save_weights(make_mlp(), 3)
    with pytest.raises(ValueError, match="`metadata`"):
        save_weights(make_mlp(), tmp_path / "w.pt", metadata={"a": "b"})
    with pytest.raises(FileNotFoundError, match="`path`"):
        load_weights(make_mlp(), tmp_path / "missing.pt")
    path = save_weights(make_mlp(), tmp_path / "w.pt")
    with pytest.raises(TypeError, match="`strict`"):
        load_weights(make_mlp(), path, strict="yes")
    with pytest.raises(TypeError, match="`model`"):
        load_weights({}, path)
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="not a state dict"):
        read_weights(tmp_path / "list.pt")
    assert isinstance(LoadReport(), LoadReport) and LoadReport().ok


def _bad_files(tmp_path) -> dict[str, tuple[object, str]]:
    """name -> (path, what the error must say); every one is a file a user might pass by mistake."""
    import json

    import numpy as np

    net = make_mlp()
    zip_pt = save_weights(net, tmp_path / "full.pt").read_bytes()
    legacy = tmp_path / "legacy.pt"
    torch.save(net.state_dict(), legacy, _use_new_zipfile_serialization=False)
    legacy_bytes = legacy.read_bytes()
    st = save_weights(net, tmp_path / "full.safetensors").read_bytes()
    files = {
        "empty.pt": (b"", r"is empty \(0 bytes\)"),
        "truncated.pt": (zip_pt[: len(zip_pt) // 2], r"truncated or corrupt PyTorch"),
        "truncated_legacy.pt": (legacy_bytes[: len(legacy_bytes) // 2], r"truncated or corrupt"),
        "short_legacy.pt": (legacy_bytes[:30], r"truncated or corrupt"),
        # cut inside a global's name: torch reports an "unsupported global" that does not exist
        "cut_in_global.pt": (
            legacy_bytes[: legacy_bytes.index(b"_rebuild_tensor") + 10],
            r"truncated or corrupt PyTorch file \(it names 'torch\._utils\._rebuild_\w*', which does not exist",
        ),
        "notes.pt": (b"hello world\nthese are not weights\n", r"is a text file"),
        "truncated.safetensors": (st[:-10], r"truncated or corrupt \.safetensors"),
        "cut_header.safetensors": (st[:20], r"truncated or corrupt \.safetensors"),
        "weights.json": (json.dumps({"weight": [[1.0, 2.0]]}).encode(), r"is a JSON file"),
        "plain_pickle.pkl": (pickle.dumps({"w": [1.0, 2.0]}), r"not written by torch\.save"),
    }
    np.save(tmp_path / "arr.npy", np.ones(3))
    np.savez(tmp_path / "arrs.npz", a=np.ones(2))
    out = {}
    for name, (data, expected) in files.items():
        (tmp_path / name).write_bytes(data)
        out[name] = (tmp_path / name, expected)
    out["arr.npy"] = (tmp_path / "arr.npy", r"is a NumPy \.npy array")
    out["arrs.npz"] = (tmp_path / "arrs.npz", r"is a NumPy \.npz archive")
    return out


def test_unreadable_files_give_one_clear_value_error(tmp_path):
    for name, (path, expected) in _bad_files(tmp_path).items():
        for fn in (read_weights, lambda p: load_weights(make_mlp(), p)):
            with pytest.raises(ValueError) as info:
                fn(path)
            msg = str(info.value)
            assert str(path) in msg and "`path`" in msg, (name, msg)
            assert re.search(expected, msg), (name, msg)
            # the security wording is for pickles that reference disallowed globals only
            assert "run code" not in msg and "safe_globals" not in msg, (name, msg)


def test_security_wording_names_the_disallowed_global(tmp_path):
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"w": 1.0, "evil": Evil(tmp_path / "x")}))
    with pytest.raises(ValueError, match=r"refusing to load.*builtins\.exec.*could run code"):
        read_weights(path)
    torch.save({"w": torch.ones(2), "evil": Evil(tmp_path / "x")}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match=r"refusing to load.*exec.*could run code"):
        read_weights(tmp_path / "evil.pt")
    assert not (tmp_path / "x").exists()


class Wrapper(L.LightningModule):
    """A LightningModule that holds the network as ``self.model``."""

    def __init__(self):
        super().__init__()
        self.model = make_mlp()
        self.save_hyperparameters()

    def training_step(self, batch, batch_idx):
        return F.cross_entropy(self.model(batch[0]), batch[1])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_lightning_checkpoint_into_plain_net_and_back(tmp_path):
    module = Wrapper()
    ckpt = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    cpu_trainer(max_epochs=1, callbacks=[ckpt], enable_checkpointing=True, limit_val_batches=0).fit(
        module, datamodule=ImageDataModule(n_train=16)
    )
    net = make_mlp()
    report = load_weights(net, tmp_path / "last.ckpt", strict=True)
    assert report.prefix == "strip 'model.'"
    assert all(torch.equal(v, module.model.state_dict()[k]) for k, v in net.state_dict().items())
    # and a plain net's weights into a fresh LightningModule
    back = Wrapper()
    report = load_weights(back, save_weights(net, tmp_path / "net.safetensors"), strict=True)
    assert report.prefix == "add 'model.'"
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in back.model.state_dict().items())


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
        MisconfigurationException, match=r"`submodule` names no submodule 'encodr'.*available: backbone.*head"
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


def test_submodule_follows_the_naming_rule_and_must_select_exactly_one(tmp_path):
    model = ClassifierModule(arch="mlp")
    cb = ExportWeights(dirpath=str(tmp_path), submodule="h*")  # a glob that selects only `head`
    cpu_trainer(max_epochs=1, callbacks=[cb]).fit(model, datamodule=ImageDataModule(n_train=16))
    out = load_file(str(tmp_path / "weights.safetensors"))
    assert sorted(out) == ["bias", "weight"] and torch.equal(out["weight"], model.head.weight)
    with pytest.raises(
        MisconfigurationException, match=r"`submodule` must select exactly one.*'\*'.*backbone"
    ):
        cpu_trainer(callbacks=[ExportWeights(dirpath=str(tmp_path / "x"), submodule="*")]).fit(
            ClassifierModule(arch="mlp"), datamodule=ImageDataModule(n_train=16)
        )
    assert not (tmp_path / "x").exists()


def test_default_dirpath_is_the_component_folder_of_the_log_dir(tmp_path):
    from lightning.pytorch.loggers import CSVLogger

    logger = CSVLogger(tmp_path, name="run")
    cb = ExportWeights()
    cpu_trainer(max_epochs=1, logger=logger, callbacks=[cb]).fit(
        ClassifierModule(arch="mlp"), datamodule=ImageDataModule(n_train=16)
    )
    expected = Path(logger.log_dir) / "export_weights" / "weights.safetensors"
    assert cb.last_path == str(expected) and expected.is_file()
    # without a logger: <default_root_dir>/export_weights/
    cb = ExportWeights()
    cpu_trainer(max_epochs=1, default_root_dir=tmp_path / "root", callbacks=[cb]).fit(
        ClassifierModule(arch="mlp"), datamodule=ImageDataModule(n_train=16)
    )
    assert (tmp_path / "root" / "export_weights" / "weights.safetensors").is_file()
