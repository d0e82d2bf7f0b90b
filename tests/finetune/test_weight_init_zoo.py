"""``init_weights`` and weights I/O on third-party (HF ``transformers``) models."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_tricks.functional import init_weights, load_weights, save_weights
from tests.helpers.zoo import SEQ_LEN, VOCAB, ZOO


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _shifted(model: nn.Module) -> nn.Module:
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5)
    return model


@pytest.mark.parametrize("scheme", ["kaiming_normal", "trunc_normal", "orthogonal"])
@pytest.mark.parametrize("name", ["resnet", "vit", "bert"])
def test_schemes_on_zoo_models_handle_their_norm_layers(name, scheme):
    model = _shifted(ZOO[name]())
    report = init_weights(model, scheme, generator=gen())
    norms = [m for m in model.modules() if isinstance(m, nn.LayerNorm | nn.modules.batchnorm._BatchNorm)]
    assert norms
    for m in norms:
        assert torch.all(m.weight == 1) and torch.all(m.bias == 0)
    assert torch.all(model.get_submodule("classifier.1" if name == "resnet" else "classifier").bias == 0)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert report.initialized and not report.frozen


def test_tied_weights_stay_tied_after_init_and_through_save_load(tmp_path):
    mlm = ZOO["bert_mlm"]()
    emb = mlm.bert.embeddings.word_embeddings
    report = init_weights(mlm, "normal", std=0.5, generator=gen())
    assert mlm.cls.predictions.decoder.weight is emb.weight  # still one tensor
    assert "bert.embeddings.word_embeddings.weight" in report.initialized
    for suffix in (".safetensors", ".pt"):
        path = save_weights(mlm, tmp_path / f"mlm{suffix}")
        fresh = ZOO["bert_mlm"]()
        report = load_weights(fresh, path, strict=True)
        assert report.ok
        assert fresh.cls.predictions.decoder.weight is fresh.bert.embeddings.word_embeddings.weight
        assert fresh.cls.predictions.decoder.bias is fresh.cls.predictions.bias
        mine, theirs = mlm.state_dict(), fresh.state_dict()
        assert all(torch.equal(mine[k], theirs[k]) for k in mine)
        ids = torch.randint(0, VOCAB, (2, SEQ_LEN), generator=gen())
        with torch.no_grad():
            assert torch.equal(mlm.eval()(input_ids=ids).logits, fresh.eval()(input_ids=ids).logits)


def test_frozen_parameters_are_left_alone_unless_included():
    model = _shifted(ZOO["resnet"]())
    model.resnet.requires_grad_(False)
    frozen = {k: v.clone() for k, v in model.resnet.state_dict().items()}
    report = init_weights(model, "kaiming_normal", generator=gen())
    assert all(torch.equal(v, frozen[k]) for k, v in model.resnet.state_dict().items())
    assert set(report.initialized) == {"classifier.1.weight", "classifier.1.bias"}
    n_frozen = sum(1 for _ in model.resnet.parameters())
    assert len(report.frozen) == n_frozen and all(k.startswith("resnet.") for k in report.frozen)
    assert f"({n_frozen} frozen)" in str(report)
    report = init_weights(model, "kaiming_normal", include_frozen=True, generator=gen())
    assert not report.frozen and "resnet.embedder.embedder.convolution.weight" in report.initialized
    assert not torch.equal(
        model.resnet.embedder.embedder.convolution.weight, frozen["embedder.embedder.convolution.weight"]
    )
