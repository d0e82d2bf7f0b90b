"""PredictionWriter: one merged file in dataset order, every sample once, also under DDP."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from lightning_tricks import FeaturePredict, PredictionWriter, TTAPredict, load_predictions
from lightning_tricks.functional import tta_predict
from tests.helpers import ClassifierModule, cpu_trainer, make_image_dataset

N = 23  # odd: not divisible by 2 ranks nor by the batch size


class IndexedModel(ClassifierModule):
    """Predicts its input's label and sample id, so that order and uniqueness can be checked."""

    def predict_step(self, batch, batch_idx, dataloader_idx=0):
        x, _y, ids = batch
        return {"logits": self(x), "ids": ids}


class TTAIndexed(TTAPredict, ClassifierModule):
    tta_views = ("hflip",)


class Features(FeaturePredict, ClassifierModule):
    feature_layers = ("backbone.0",)


class Data(L.LightningDataModule):
    def __init__(self, own_sampler: bool = False, with_ids: bool = True):
        super().__init__()
        self.own_sampler, self.with_ids = own_sampler, with_ids

    def predict_dataloader(self):
        x, y = make_image_dataset(N, seed=1).tensors
        ds = TensorDataset(x, y, torch.arange(N)) if self.with_ids else TensorDataset(x, y)
        if self.own_sampler:  # a plain DistributedSampler pads with duplicates
            return DataLoader(ds, batch_size=4, sampler=DistributedSampler(ds, shuffle=True, seed=3))
        return DataLoader(ds, batch_size=4, shuffle=False)


def _ddp_trainer(tmp_path, writer, **kw):
    return L.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp_spawn",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(tmp_path),
        callbacks=[writer],
        **kw,
    )


def _check_complete(path):
    out = load_predictions(path)
    assert torch.equal(out["indices"], torch.arange(N))
    return out


def test_single_process_writes_dataset_order(tmp_path):
    writer = PredictionWriter(str(tmp_path), filename="p.pt")
    cpu_trainer(callbacks=[writer]).predict(IndexedModel(), datamodule=Data(), return_predictions=False)
    out = _check_complete(tmp_path / "p.pt")
    assert torch.equal(out["predictions"]["ids"], torch.arange(N))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.pt"]  # rank files cleaned up


@pytest.mark.ddp
def test_ddp_union_holds_every_sample_once_in_order(tmp_path):
    own_sampler = True  # a DistributedSampler that pads; Lightning's own predict sampler does not
    writer = PredictionWriter(str(tmp_path / "out"), keep_rank_files=True)
    trainer = _ddp_trainer(tmp_path, writer, use_distributed_sampler=not own_sampler)
    torch.manual_seed(0)
    model = IndexedModel()
    trainer.predict(model, datamodule=Data(own_sampler=own_sampler), return_predictions=False)
    out = _check_complete(tmp_path / "out" / "predictions.pt")
    assert torch.equal(out["predictions"]["ids"], torch.arange(N))
    ranks = [load_predictions(tmp_path / "out" / f"predictions.rank{r}.pt")["indices"] for r in range(2)]
    assert sum(len(r) for r in ranks) == (24 if own_sampler else N)  # padding duplicated one sample
    assert set(ranks[0].tolist()) | set(ranks[1].tolist()) == set(range(N))
    x = make_image_dataset(N, seed=1).tensors[0]
    with torch.no_grad():
        torch.testing.assert_close(out["predictions"]["logits"], model.eval()(x), rtol=1e-5, atol=1e-6)


@pytest.mark.ddp
def test_ddp_with_tta(tmp_path):
    torch.manual_seed(0)
    model = TTAIndexed()
    trainer = _ddp_trainer(tmp_path, PredictionWriter(str(tmp_path / "tta")))
    trainer.predict(model, datamodule=Data(with_ids=False), return_predictions=False)
    out = _check_complete(tmp_path / "tta" / "predictions.pt")
    x = make_image_dataset(N, seed=1).tensors[0]
    torch.testing.assert_close(out["predictions"], tta_predict(model, x, ["hflip"]), rtol=1e-5, atol=1e-6)
    assert not (tmp_path / "tta" / "predictions.rank0.pt").exists()


def test_feature_dicts(tmp_path):
    cpu_trainer(callbacks=[PredictionWriter(str(tmp_path))]).predict(
        Features(), datamodule=Data(with_ids=False), return_predictions=False
    )
    out = _check_complete(tmp_path / "predictions.pt")
    assert out["predictions"]["backbone.0"].shape == (N, 8, 8, 8)


def test_bad_arguments():
    with pytest.raises(ValueError, match="filename"):
        PredictionWriter("x", filename="p.npy")
    with pytest.raises(TypeError, match="output_dir"):
        PredictionWriter(None)
