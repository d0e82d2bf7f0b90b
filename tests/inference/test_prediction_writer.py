"""PredictionWriter: one merged file in dataset order, every sample once, also under DDP."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from lightning_tricks import FeaturePredict, PredictionWriter, TTAPredict, load_predictions
from lightning_tricks.functional import load_predictions as load_predictions_functional
from lightning_tricks.functional import merge_rank_predictions, save_rank_predictions, tta_predict
from lightning_tricks.functional.inference.prediction_writer import prediction_to_cpu
from tests.helpers import ClassifierModule, cpu_trainer, make_image_dataset
from tests.helpers.ddp import GlooDDP

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
        strategy=GlooDDP(start_method="spawn"),
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


def test_load_predictions_is_one_function():
    assert load_predictions is load_predictions_functional


def test_bad_arguments():
    with pytest.raises(ValueError, match="filename"):
        PredictionWriter("x", filename="p.npy")
    with pytest.raises(TypeError, match="dirpath"):
        PredictionWriter(3)
    with pytest.raises(ValueError, match="dirpath"):
        PredictionWriter("")


def test_dirpath_none_writes_to_the_log_dir(tmp_path):
    logger = CSVLogger(str(tmp_path), name="run", version=0)
    writer = PredictionWriter(filename="p.pt")
    cpu_trainer(callbacks=[writer], logger=logger).predict(
        IndexedModel(), datamodule=Data(), return_predictions=False
    )
    out = _check_complete(tmp_path / "run" / "version_0" / "prediction_writer" / "p.pt")
    assert torch.equal(out["predictions"]["ids"], torch.arange(N))
    # without a logger: default_root_dir
    cpu_trainer(callbacks=[writer], logger=False, default_root_dir=str(tmp_path / "root")).predict(
        IndexedModel(), datamodule=Data(), return_predictions=False
    )
    _check_complete(tmp_path / "root" / "prediction_writer" / "p.pt")


# ------------------------------------------------------------------------------ functional core


def test_merge_rank_predictions_sorts_dedups_and_cleans_up(tmp_path):
    # two "ranks" that padded with a duplicate of sample 2, nested predictions
    save_rank_predictions(
        tmp_path / "r0.pt",
        [(torch.tensor([4, 2]), {"a": torch.tensor([4.0, 2.0]), "b": [torch.tensor([[4], [2]])]})],
    )
    save_rank_predictions(
        tmp_path / "r1.pt",
        [
            (torch.tensor([0, 3]), {"a": torch.tensor([0.0, 3.0]), "b": [torch.tensor([[0], [3]])]}),
            (torch.tensor([1, 2]), {"a": torch.tensor([1.0, 2.0]), "b": [torch.tensor([[1], [2]])]}),
        ],
    )
    save_rank_predictions(tmp_path / "r2.pt", [])  # a rank without samples
    paths = [tmp_path / f"r{r}.pt" for r in range(3)]
    result = merge_rank_predictions(paths, tmp_path / "all.pt")
    out = load_predictions(tmp_path / "all.pt")
    assert torch.equal(out["indices"], torch.arange(5)) and torch.equal(result["indices"], torch.arange(5))
    assert out["predictions"]["a"].tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert out["predictions"]["b"][0].flatten().tolist() == [0, 1, 2, 3, 4]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["all.pt"]
    assert merge_rank_predictions([], tmp_path / "none.pt") is None
    assert not (tmp_path / "none.pt").exists()


def test_prediction_to_cpu_checks_rows():
    with pytest.raises(ValueError, match="one row per sample"):
        prediction_to_cpu({"a": torch.zeros(3), "b": torch.zeros(2)}, num_rows=3)
    with pytest.raises(TypeError, match="str"):
        prediction_to_cpu("x")
