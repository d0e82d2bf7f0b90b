"""The zoo itself: each model has the property that makes it a useful test subject."""

from __future__ import annotations

import pytest
import torch

from tests.helpers.zoo import IMAGE_SIZE, MODULES, zoo_loaders, zoo_module


def test_segformer_logits_are_a_quarter_of_the_input():
    model = zoo_module("segformer").eval()
    x = torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE)
    assert model(x).shape[-2:] == (IMAGE_SIZE // 4, IMAGE_SIZE // 4)


def test_bert_mlm_ties_decoder_and_embeddings():
    inner = zoo_module("bert_mlm").model
    assert inner.cls.predictions.decoder.weight is inner.bert.embeddings.word_embeddings.weight


@pytest.mark.parametrize("name", sorted(MODULES))
def test_every_zoo_module_takes_its_batches(name):
    model = zoo_module(name)
    train, _ = zoo_loaders(name)
    loss = model.training_step(next(iter(train)), 0)
    assert loss.ndim == 0 and torch.isfinite(loss)
