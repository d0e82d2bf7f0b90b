"""FeaturePredict: ``trainer.predict`` returns named intermediate outputs of the model.

The Lightning layer of [`FeatureExtractor`][lightning_tricks.functional.FeatureExtractor] and
[`extract_features`][lightning_tricks.functional.extract_features] (the documented pair of
``functional/inference/features.py``): the mixin only decides when to capture.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch

from lightning_tricks._base import LightningMixin

if TYPE_CHECKING:  # the mixin is only mixed into LightningModules: type-check it as one
    from lightning.pytorch import LightningModule as _ModuleBase
else:
    _ModuleBase = object
from lightning_tricks.functional.inference.features import FeatureExtractor
from lightning_tricks.inference.tta_predict import batch_input

__all__ = ["FeaturePredict"]


class FeaturePredict(LightningMixin, _ModuleBase):
    """A ``predict_step`` that returns ``{layer: output}`` for the layers you name.

    The intermediate outputs are captured with forward hooks by
    [`FeatureExtractor`][lightning_tricks.functional.FeatureExtractor] (so models ``torch.fx`` cannot
    trace work too); hooks exist only during each ``predict_step``. ``trainer.predict``
    then returns (or a [`PredictionWriter`][lightning_tricks.PredictionWriter] writes) one dict of
    tensors per batch. Training, validation and testing are untouched.

    Class attributes:

    * ``feature_layers`` (``()``): the submodules to capture, by the naming rule of
      [`FeatureExtractor`][lightning_tricks.functional.FeatureExtractor]: qualified names from
      ``self.named_modules()`` (``("backbone.0", "head")``), segment globs
      (``"backbone.*"``), class names or classes; a lone string is one entry. Checked when
      prediction starts; the features are keyed by qualified name.
    * ``feature_stop_early`` (``True``): stop the forward pass once every requested layer
      has run, so later layers cost nothing.
    * ``feature_include_output`` (``False``): also return the model's output under the
      key ``"output"`` (the forward pass then runs to the end).

    The input is the batch or its first element; override [`feature_input`][lightning_tricks.FeaturePredict.feature_input] for dict
    batches (return a dict of keyword arguments, called as ``self(**inputs)``).

    Example:
        >>> import lightning as L, torch
        >>> class Net(FeaturePredict, L.LightningModule):
        ...     feature_layers = ("body",)
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.body, self.out = torch.nn.Linear(4, 8), torch.nn.Linear(8, 2)
        ...     def forward(self, x):
        ...         return self.out(self.body(x))
        >>> net = Net()
        >>> net.on_predict_start()
        >>> {k: tuple(v.shape) for k, v in net.predict_step((torch.randn(3, 4),), 0).items()}
        {'body': (3, 8)}
    """

    feature_layers: str | type | Sequence[str | type] = ()
    feature_stop_early: bool = True
    feature_include_output: bool = False

    def _feature_extractor(self) -> FeatureExtractor:
        name = type(self).__name__
        layers = self.feature_layers
        if not layers:
            raise ValueError(f"{name}.feature_layers names no layer; set it to names from named_modules()")
        for attr in ("feature_stop_early", "feature_include_output"):
            if not isinstance(getattr(self, attr), bool):
                raise TypeError(f"{name}.{attr} must be a bool; got {getattr(self, attr)!r}")
        try:
            return FeatureExtractor(
                self,
                layers,
                stop_early=self.feature_stop_early and not self.feature_include_output,
            )
        except (TypeError, ValueError) as err:
            raise type(err)(f"{name}.feature_layers: {err}") from None

    def on_predict_start(self) -> None:
        super().on_predict_start()
        self._feature_extractor()  # fail before the first batch if a name is wrong

    def feature_input(self, batch: Any) -> torch.Tensor | Mapping[str, Any]:
        """The model input in ``batch``: a tensor (``self(x)``) or a dict of keyword arguments
        (``self(**inputs)``); override it for dict batches."""
        return batch_input(batch, type(self).__name__, hook="feature_input")

    def predict_step(self, batch: Any, batch_idx: int = 0, dataloader_idx: int = 0) -> dict[str, Any]:
        """``{layer: output}`` for ``feature_layers`` (plus ``"output"`` if requested)."""
        fx = self._feature_extractor()
        x = self.feature_input(batch)
        args, kwargs = ((), dict(x)) if isinstance(x, Mapping) else ((x,), {})
        if not self.feature_include_output:
            return fx(*args, **kwargs)
        with fx:
            out = self(*args, **kwargs)
        return {**{n: fx.features[n] for n in fx.layers}, "output": out}
