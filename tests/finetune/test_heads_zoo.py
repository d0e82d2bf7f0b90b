"""Head surgery on third-party (HF ``transformers``) models: the model stays usable as an HF model."""

from __future__ import annotations

import pytest
import torch

from lightning_tricks.functional import find_head, replace_head, strip_head
from tests.helpers.zoo import IMAGE_SIZE, SEQ_LEN, VIT_IMAGE_SIZE, VOCAB, ZOO, HFImageClassifier


def _inputs(name: str, n: int = 3) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    if name.startswith("bert"):
        return {"input_ids": torch.randint(0, VOCAB, (n, SEQ_LEN), generator=g)}
    size = VIT_IMAGE_SIZE if name == "vit" else IMAGE_SIZE
    return {"pixel_values": torch.randn(n, 3, size, size, generator=g)}


@pytest.mark.parametrize(
    ("name", "head"),
    [("resnet", "classifier.1"), ("vit", "classifier"), ("bert", "classifier"), ("convnext", "classifier")],
)
def test_find_head_on_zoo_models(name, head):
    assert find_head(ZOO[name]()) == head


@pytest.mark.parametrize("name", ["resnet", "vit", "bert"])
def test_replace_head_keeps_hf_labels_loss_and_save_pretrained_working(tmp_path, name):
    torch.manual_seed(0)
    model = ZOO[name]()
    replace_head(model, 7)
    assert model.num_labels == 7 and model.config.num_labels == 7
    assert len(model.config.id2label) == 7 and model.config.label2id == {
        v: k for k, v in model.config.id2label.items()
    }
    labels = torch.tensor([0, 6, 3])
    out = model(**_inputs(name), labels=labels)
    assert out.logits.shape == (3, 7) and torch.isfinite(out.loss)
    model.save_pretrained(tmp_path)
    back = type(model).from_pretrained(tmp_path)
    assert back.config.num_labels == 7 and back.num_labels == 7
    mine, theirs = model.state_dict(), back.state_dict()
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)


def test_replace_head_through_a_lightning_module_updates_the_inner_hf_model():
    module = HFImageClassifier("resnet")
    replace_head(module, 5)
    assert find_head(module) == "model.classifier.1"
    assert module.model.num_labels == 5 and module.model.config.num_labels == 5
    out = module.model(**_inputs("resnet"), labels=torch.tensor([4, 0, 1]))
    assert out.logits.shape == (3, 5) and torch.isfinite(out.loss)


def test_strip_head_on_hf_models_gives_features_and_a_consistent_config(tmp_path):
    model = ZOO["resnet"]()
    strip_head(model)
    assert model(**_inputs("resnet")).logits.shape == (3, 16)  # the pooled features
    assert model.num_labels == 0 and model.config.num_labels == 0  # HF's "no classifier" convention
    model.save_pretrained(tmp_path)
    back = type(model).from_pretrained(tmp_path)
    assert back(**_inputs("resnet")).logits.shape == (3, 16)
    mlm = ZOO["bert_mlm"]()
    strip_head(mlm)  # the decoder goes; the word embeddings it was tied to stay
    assert mlm(**_inputs("bert_mlm")).logits.shape == (3, SEQ_LEN, 16)


def test_replace_head_refuses_to_untie_tied_weights_silently():
    mlm = ZOO["bert_mlm"]()
    assert find_head(mlm) == "cls.predictions.decoder"
    emb = mlm.bert.embeddings.word_embeddings.weight
    with pytest.raises(ValueError, match=r"tied.*bert\.embeddings\.word_embeddings\.weight"):
        replace_head(mlm, 7)
    assert mlm.cls.predictions.decoder.weight is emb  # unchanged


def test_segformer_head_is_the_1x1_classifier_conv_and_can_be_replaced():
    model = ZOO["segformer"]()
    assert find_head(model) == "decode_head.classifier"  # not the last Linear (an MLP projection)
    old = replace_head(model, 5)
    assert isinstance(old, torch.nn.Conv2d) and model.decode_head.classifier.out_channels == 5
    assert model.config.num_labels == 5
    x = _inputs("segformer")["pixel_values"]
    out = model(pixel_values=x, labels=torch.randint(0, 5, (3, IMAGE_SIZE, IMAGE_SIZE)))
    assert out.logits.shape == (3, 5, IMAGE_SIZE // 4, IMAGE_SIZE // 4) and torch.isfinite(out.loss)
