"""The model zoo: third-party architectures (HuggingFace ``transformers``) that we did not write.

Every model is built from a small random-init config (nothing is downloaded) and wrapped
in a LightningModule the way users write them: ``self.model = ...`` and
``self.model(pixel_values=x).logits``. They break the assumptions of our own tiny models:
no ``backbone``/``head`` attributes, keyword forwards, ``ModelOutput`` returns, dense
outputs at a fraction of the input resolution, tied weights, LayerNorm and BatchNorm in
places we did not choose.

Use :data:`ZOO` (name -> builder of the bare ``transformers`` model) and the
LightningModules below; :func:`zoo_module` builds the LightningModule for a zoo name.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

NUM_LABELS = 4
IMAGE_SIZE = 32  # ResNet/ConvNeXt/Segformer downsample by 4 in their stem
VIT_IMAGE_SIZE = 16
SEG_LABELS = 3
VOCAB = 40
SEQ_LEN = 12


# --------------------------------------------------------------------------- bare models


def hf_resnet(num_labels: int = NUM_LABELS) -> nn.Module:
    """``ResNetForImageClassification``: BatchNorm everywhere, a parameter-free pooler,
    the classifier at ``classifier.1``."""
    from transformers import ResNetConfig, ResNetForImageClassification

    cfg = ResNetConfig(
        num_channels=3,
        embedding_size=8,
        hidden_sizes=[8, 16],
        depths=[1, 1],
        layer_type="basic",
        num_labels=num_labels,
    )
    return ResNetForImageClassification(cfg)


def hf_convnext(num_labels: int = NUM_LABELS) -> nn.Module:
    """``ConvNextForImageClassification``: LayerNorm on channels-first maps, layer scale."""
    from transformers import ConvNextConfig, ConvNextForImageClassification

    cfg = ConvNextConfig(
        num_channels=3, num_stages=2, hidden_sizes=[8, 16], depths=[1, 1], num_labels=num_labels
    )
    return ConvNextForImageClassification(cfg)


def hf_vit(num_labels: int = NUM_LABELS) -> nn.Module:
    """``ViTForImageClassification``: (B, T, F) activations, a CLS token, LayerNorm."""
    from transformers import ViTConfig, ViTForImageClassification

    cfg = ViTConfig(
        image_size=VIT_IMAGE_SIZE,
        patch_size=4,
        num_channels=3,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        num_labels=num_labels,
    )
    return ViTForImageClassification(cfg)


def hf_segformer(num_labels: int = SEG_LABELS) -> nn.Module:
    """``SegformerForSemanticSegmentation``: logits at 1/4 of the input resolution."""
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    cfg = SegformerConfig(
        num_channels=3,
        num_encoder_blocks=2,
        depths=[1, 1],
        sr_ratios=[2, 1],
        hidden_sizes=[8, 16],
        patch_sizes=[7, 3],
        strides=[4, 2],
        num_attention_heads=[1, 2],
        mlp_ratios=[2, 2],
        decoder_hidden_size=16,
        num_labels=num_labels,
    )
    return SegformerForSemanticSegmentation(cfg)


def _bert_config(**kw: Any):
    from transformers import BertConfig

    return BertConfig(
        vocab_size=VOCAB,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        **kw,
    )


def hf_bert(num_labels: int = NUM_LABELS) -> nn.Module:
    """``BertForSequenceClassification``: keyword forward, ``ModelOutput`` with ``loss``."""
    from transformers import BertForSequenceClassification

    return BertForSequenceClassification(_bert_config(num_labels=num_labels))


def hf_bert_mlm() -> nn.Module:
    """``BertForMaskedLM``: the decoder weight is tied to the word embeddings."""
    from transformers import BertForMaskedLM

    model = BertForMaskedLM(_bert_config())
    assert model.cls.predictions.decoder.weight is model.bert.embeddings.word_embeddings.weight
    return model


ZOO = {
    "resnet": hf_resnet,
    "convnext": hf_convnext,
    "vit": hf_vit,
    "segformer": hf_segformer,
    "bert": hf_bert,
    "bert_mlm": hf_bert_mlm,
}
IMAGE_ZOO = ("resnet", "convnext", "vit")


def image_size(name: str) -> int:
    return VIT_IMAGE_SIZE if name == "vit" else IMAGE_SIZE


# --------------------------------------------------------------------------- data


def make_zoo_images(n: int = 32, size: int = IMAGE_SIZE, seed: int = 0, num_labels: int = NUM_LABELS):
    """Learnable images: the class decides which quadrant is bright. Returns (x, y)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % num_labels
    y = y[torch.randperm(n, generator=g)]
    x = 0.5 * torch.randn(n, 3, size, size, generator=g)
    h = size // 2
    for c in range(num_labels):
        r, col = divmod(c % 4, 2)
        x[y == c, :, r * h : r * h + h, col * h : col * h + h] += 1.0
    return x, y


def make_zoo_masks(n: int = 8, size: int = IMAGE_SIZE, seed: int = 0, num_labels: int = SEG_LABELS):
    """Images with a bright square; the mask labels square pixels by the image's class."""
    g = torch.Generator().manual_seed(seed)
    x = 0.3 * torch.randn(n, 3, size, size, generator=g)
    mask = torch.zeros(n, size, size, dtype=torch.long)
    for i in range(n):
        c = 1 + i % (num_labels - 1)
        r0, c0 = (int(v) for v in torch.randint(0, size // 2, (2,), generator=g))
        x[i, :, r0 : r0 + size // 2, c0 : c0 + size // 2] += float(c)
        mask[i, r0 : r0 + size // 2, c0 : c0 + size // 2] = c
    return x, mask


class TokenDataset(Dataset):
    """Dict samples ``{input_ids, attention_mask, labels}``: the HF batch habit.

    The label is decided by which token range dominates the sequence, so it is learnable.
    """

    def __init__(self, n: int = 32, seed: int = 0, num_labels: int = NUM_LABELS, mlm: bool = False):
        g = torch.Generator().manual_seed(seed)
        self.labels = torch.arange(n) % num_labels
        span = (VOCAB - 2) // num_labels
        low = 2 + self.labels[:, None] * span
        self.input_ids = low + torch.randint(0, span, (n, SEQ_LEN), generator=g)
        self.input_ids[:, 0] = 1  # a [CLS]-like token
        self.attention_mask = torch.ones(n, SEQ_LEN, dtype=torch.long)
        self.attention_mask[n // 2 :, -3:] = 0  # some padding
        self.mlm = mlm

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        ids = self.input_ids[i]
        if self.mlm:
            labels = ids.clone()
            labels[1::2] = -100
            return {"input_ids": ids, "attention_mask": self.attention_mask[i], "labels": labels}
        return {"input_ids": ids, "attention_mask": self.attention_mask[i], "labels": self.labels[i]}


# --------------------------------------------------------------------------- LightningModules


class _ZooBase(L.LightningModule):
    def __init__(self, lr: float = 0.05, optimizer: str = "sgd", weight_decay: float = 0.0):
        super().__init__()
        self.lr, self.optimizer_name, self.weight_decay = lr, optimizer, weight_decay

    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        if self.optimizer_name == "sgd":
            return torch.optim.SGD(params, lr=self.lr, momentum=0.9, weight_decay=self.weight_decay)
        return torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)


class HFImageClassifier(_ZooBase):
    """A ``transformers`` image classifier the way users wrap one.

    ``forward(x)`` returns ``self.model(pixel_values=x).logits``; batches are ``(x, y)``.

    Args:
        arch: ``"resnet"``, ``"convnext"`` or ``"vit"``.
    """

    def __init__(self, arch: str = "resnet", num_labels: int = NUM_LABELS, **kw: Any):
        super().__init__(**kw)
        self.save_hyperparameters()
        self.model = ZOO[arch](num_labels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=x).logits

    def _step(self, batch, stage: str):
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits.float(), y)
        self.log(f"{stage}_loss", loss, sync_dist=stage != "train")
        if stage != "train":
            self.log(f"{stage}_acc", (logits.argmax(-1) == y).float().mean(), sync_dist=True)
        return loss

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx):
        return self._step(batch, "val")

    def test_step(self, batch, batch_idx):
        return self._step(batch, "test")

    def predict_step(self, batch, batch_idx, dataloader_idx=0):
        return self(batch[0])


class HFSegmenter(_ZooBase):
    """Segformer: ``forward(x)`` returns logits at H/4 x W/4; the loss upsamples them."""

    def __init__(self, num_labels: int = SEG_LABELS, **kw: Any):
        super().__init__(**kw)
        self.save_hyperparameters()
        self.model = hf_segformer(num_labels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=x).logits

    def training_step(self, batch, batch_idx):
        x, mask = batch
        logits = F.interpolate(self(x), size=mask.shape[-2:], mode="bilinear", align_corners=False)
        loss = F.cross_entropy(logits.float(), mask)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, mask = batch
        logits = F.interpolate(self(x), size=mask.shape[-2:], mode="bilinear", align_corners=False)
        self.log("val_loss", F.cross_entropy(logits.float(), mask), sync_dist=True)

    def predict_step(self, batch, batch_idx, dataloader_idx=0):
        return self(batch[0])


class HFTextClassifier(_ZooBase):
    """BERT with the HF habit: ``forward(self, **batch)`` takes keyword arguments and
    returns the ``ModelOutput``; batches are dicts with ``input_ids``, ``attention_mask``
    and ``labels``.

    Args:
        mlm: use ``BertForMaskedLM`` (tied decoder/embedding weights) instead of
            ``BertForSequenceClassification``.
    """

    def __init__(self, mlm: bool = False, num_labels: int = NUM_LABELS, **kw: Any):
        super().__init__(**kw)
        self.save_hyperparameters()
        self.model = hf_bert_mlm() if mlm else hf_bert(num_labels)

    def forward(self, **batch: torch.Tensor):
        return self.model(**batch)

    def training_step(self, batch, batch_idx):
        loss = self(**batch).loss
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", self(**batch).loss, sync_dist=True)

    def predict_step(self, batch, batch_idx, dataloader_idx=0):
        batch = {k: v for k, v in batch.items() if k != "labels"}
        return self(**batch).logits


class TupleOutputNet(nn.Module):
    """A plain conv net whose forward returns a tuple ``(logits, features)`` (no ModelOutput)."""

    def __init__(self, num_labels: int = NUM_LABELS):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, num_labels)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.pool(self.stem(x)).flatten(1)
        return self.fc(feats), feats


class TupleOutputClassifier(HFImageClassifier):
    """A LightningModule whose inner model returns a tuple; ``forward`` picks element 0."""

    def __init__(self, num_labels: int = NUM_LABELS, **kw: Any):
        _ZooBase.__init__(self, **kw)
        self.save_hyperparameters()
        self.model = TupleOutputNet(num_labels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)[0]


MODULES = {
    "resnet": lambda **kw: HFImageClassifier("resnet", **kw),
    "convnext": lambda **kw: HFImageClassifier("convnext", **kw),
    "vit": lambda **kw: HFImageClassifier("vit", **kw),
    "segformer": lambda **kw: HFSegmenter(**kw),
    "bert": lambda **kw: HFTextClassifier(**kw),
    "bert_mlm": lambda **kw: HFTextClassifier(mlm=True, **kw),
    "tuple": lambda **kw: TupleOutputClassifier(**kw),
}


def zoo_module(name: str, **kw: Any) -> L.LightningModule:
    """The LightningModule for a zoo name (see :data:`MODULES`)."""
    return MODULES[name](**kw)


def zoo_loaders(name: str, n: int = 16, batch_size: int = 8) -> tuple[DataLoader, DataLoader]:
    """(train, val) loaders that fit :func:`zoo_module` ``name``."""
    if name in ("bert", "bert_mlm"):
        mlm = name == "bert_mlm"
        train, val = TokenDataset(n, seed=0, mlm=mlm), TokenDataset(n, seed=1, mlm=mlm)
    elif name == "segformer":
        train, val = TensorDataset(*make_zoo_masks(n, seed=0)), TensorDataset(*make_zoo_masks(n, seed=1))
    else:
        size = image_size(name)
        train = TensorDataset(*make_zoo_images(n, size, seed=0))
        val = TensorDataset(*make_zoo_images(n, size, seed=1))
    return DataLoader(train, batch_size=batch_size), DataLoader(val, batch_size=batch_size)
