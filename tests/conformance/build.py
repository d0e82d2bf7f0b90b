"""Build components, models, datamodules and trainers from a :class:`Spec`."""

from __future__ import annotations

import inspect
import sys
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch import Callback, LightningDataModule
from lightning.pytorch.loggers import TensorBoardLogger

import lightning_tricks
from lightning_tricks import LightningMixin
from tests.conformance.spec import Kind, Spec
from tests.helpers import ClassifierModule, ImageDataModule

try:  # the plugin base classes a Trainer accepts in ``plugins=[...]``
    from lightning.pytorch.plugins import CheckpointIO, ClusterEnvironment, LayerSync, Precision

    PLUGIN_BASES: tuple[type, ...] = (Precision, CheckpointIO, ClusterEnvironment, LayerSync)
except ImportError:  # pragma: no cover
    PLUGIN_BASES = ()

COMPOSED_MODULE = "tests.conformance.build"


def exported_classes() -> dict[str, type]:
    """Every class in ``lightning_tricks.__all__``, by exported name."""
    out = {}
    for name in lightning_tricks.__all__:
        obj = getattr(lightning_tricks, name)
        if inspect.isclass(obj):
            out[name] = obj
    return out


def resolve(name: str) -> type:
    """An exported class, or one of the deliberately broken test components."""
    from tests.conformance import broken

    exported = exported_classes()
    return exported[name] if name in exported else broken.CLASSES[name]


def kind_of(cls: type) -> Kind | None:
    if issubclass(cls, Callback):
        return "callback"
    if issubclass(cls, LightningMixin) and cls is not LightningMixin:
        return "mixin"
    if PLUGIN_BASES and issubclass(cls, PLUGIN_BASES):
        return "plugin"
    if issubclass(cls, LightningDataModule):
        return "datamodule"
    return None


def composed_class(mixin: type, spec: Spec) -> type:
    """A module-level (so picklable and CLI-addressable) ``mixin + ClassifierModule`` class."""
    attrs = "_".join(f"{k}" for k in sorted(spec.init_args))
    name = f"Composed_{mixin.__name__}_{spec.id or 'default'}_{attrs}".replace("-", "_").replace(".", "_")
    module = sys.modules[COMPOSED_MODULE]
    existing = getattr(module, name, None)
    if existing is not None:
        return existing
    cls = type(name, (mixin, ClassifierModule), dict(spec.init_args))
    cls.__module__ = COMPOSED_MODULE
    cls.__qualname__ = name
    setattr(module, name, cls)
    return cls


def build_component(name: str, spec: Spec) -> Any:
    """The component itself: a callback/plugin/datamodule instance, or a composed model class."""
    cls = resolve(name)
    kind = kind_of(cls)
    if kind == "mixin":
        return composed_class(cls, spec)
    if spec.factory is not None:
        return spec.factory()
    return cls(**spec.init_args)


# zoo name -> (LightningModule class path, its init_args): what tests.helpers.zoo.zoo_module
# builds, spelled so that the LightningCLI config can build the same module
ZOO_MODELS: dict[str, tuple[str, dict[str, Any]]] = {
    "resnet": ("tests.helpers.zoo.HFImageClassifier", {"arch": "resnet"}),
    "convnext": ("tests.helpers.zoo.HFImageClassifier", {"arch": "convnext"}),
    "vit": ("tests.helpers.zoo.HFImageClassifier", {"arch": "vit"}),
    "segformer": ("tests.helpers.zoo.HFSegmenter", {}),
    "bert": ("tests.helpers.zoo.HFTextClassifier", {}),
    "bert_mlm": ("tests.helpers.zoo.HFTextClassifier", {"mlm": True}),
    "tuple": ("tests.helpers.zoo.TupleOutputClassifier", {}),
}


class ZooDataModule(LightningDataModule):
    """The (train, val) loaders of :func:`tests.helpers.zoo.zoo_loaders` as a datamodule
    (so that the LightningCLI config can name them)."""

    def __init__(self, name: str = "resnet", n: int = 16, batch_size: int = 8):
        super().__init__()
        self.name, self.n, self.batch_size = name, n, batch_size

    def setup(self, stage: str | None = None) -> None:
        from tests.helpers.zoo import zoo_loaders

        self._train, self._val = zoo_loaders(self.name, n=self.n, batch_size=self.batch_size)

    def train_dataloader(self):
        return self._train

    def val_dataloader(self):
        return self._val


def zoo_model(spec: Spec) -> L.LightningModule:
    """The spec's zoo LightningModule (``spec.model_args`` passed on)."""
    import importlib

    if spec.zoo not in ZOO_MODELS:
        raise ValueError(f"Spec.zoo {spec.zoo!r} is not a zoo name; allowed: {sorted(ZOO_MODELS)}")
    path, kwargs = ZOO_MODELS[spec.zoo]
    module, _, cls_name = path.rpartition(".")
    return getattr(importlib.import_module(module), cls_name)(**kwargs, **spec.model_args)


def build_run(name: str, spec: Spec, component: Any = None, seed: int = 0):
    """(model, datamodule, callbacks, plugins, component) for one fit; seeds before building the model."""
    cls = resolve(name)
    kind = kind_of(cls)
    if spec.zoo is not None and kind in ("mixin", "datamodule"):
        raise ValueError(f"Spec.zoo is for callbacks and plugins; {name} is a {kind}")
    if component is None:
        component = build_component(name, spec)
    L.seed_everything(seed, verbose=False)
    if spec.zoo is not None:
        model = zoo_model(spec)
        datamodule = ZooDataModule(spec.zoo, **spec.data_args)
    else:
        model_cls = component if kind == "mixin" else ClassifierModule
        model = model_cls(arch=spec.arch, **spec.model_args)
        datamodule = component if kind == "datamodule" else ImageDataModule(**spec.data_args)
    callbacks = [component] if kind == "callback" else []
    plugins = [component] if kind == "plugin" else []
    return model, datamodule, callbacks, plugins, component


def trainer_kwargs(spec: Spec, tmp: Path, **overrides: Any) -> dict[str, Any]:
    kwargs: dict[str, Any] = dict(
        accelerator="cpu",
        devices=1,
        max_epochs=2,
        logger=TensorBoardLogger(str(tmp), name="logs"),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        deterministic=True,
        log_every_n_steps=2,
        num_sanity_val_steps=0,
        default_root_dir=str(tmp),
    )
    kwargs.update(spec.trainer_args)
    kwargs.update(overrides)
    return kwargs
