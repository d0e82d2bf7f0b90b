"""TTAPredict: a LightningModule mixin whose ``predict`` (and optionally ``test``) use TTA."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from lightning_tricks._base import LightningMixin
from lightning_tricks.functional.inference.tta import MERGE_MODES, tta_predict
from lightning_tricks.functional.inference.views import parse_views

__all__ = ["TTAPredict", "batch_input"]


def batch_input(batch: Any, owner: str) -> torch.Tensor:
    """The input tensor of a batch: the batch itself, or the first element of a tuple/list."""
    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, list | tuple) and batch and isinstance(batch[0], torch.Tensor):
        return batch[0]
    raise TypeError(
        f"{owner} cannot find the input in a batch of type {type(batch).__name__}; it expects a tensor or "
        "a tuple/list whose first element is the input. Override `tta_input(batch)` to pick it."
    )


class TTAPredict(LightningMixin):
    """Test-time augmentation in ``trainer.predict`` (and, optionally, ``trainer.test``).

    While predicting (and testing, with ``tta_on_test``), every call ``self(x)`` with a
    single tensor runs :func:`~lightning_tricks.functional.tta_predict`: all views of the
    batch go through ``forward`` in one (chunked) pass and are merged. Your own
    ``predict_step``/``test_step`` therefore get TTA without changes; the mixin's default
    ``predict_step`` returns ``self(tta_input(batch))``. Training and validation are
    untouched. Under DDP each rank augments its own batches.

    Class attributes (set them in the class body or in ``__init__``):

    * ``tta_views`` (``("identity", "hflip")``): view strings, see
      :func:`~lightning_tricks.functional.parse_view`.
    * ``tta_merge`` (``"mean"``): one of ``mean``, ``mean_softmax``, ``mean_sigmoid``,
      ``gmean_softmax``, ``gmean_sigmoid``, ``max``, ``vote``.
    * ``tta_chunk_size`` (``None``): most images per forward pass.
    * ``tta_include_identity`` (``True``): add the identity view if missing.
    * ``tta_on_test`` (``False``): also apply TTA during ``trainer.test``.

    If you override ``on_predict_start``/``on_predict_end`` (or the test ones), call
    ``super()``. Forward hooks of the module run once per TTA forward pass.

    Example:
        >>> import lightning as L, torch
        >>> class Net(TTAPredict, L.LightningModule):
        ...     tta_views = ("hflip", "vflip")
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.fc = torch.nn.Linear(4, 2)
        ...     def forward(self, x):
        ...         return self.fc(x.mean((2, 3)))
        >>> net = Net()
        >>> net.tta_forward(torch.randn(5, 4, 6, 6)).shape
        torch.Size([5, 2])
    """

    tta_views: Sequence[str] = ("identity", "hflip")
    tta_merge: str = "mean"
    tta_chunk_size: int | None = None
    tta_include_identity: bool = True
    tta_on_test: bool = False

    def _tta_check(self) -> None:
        name = type(self).__name__
        try:
            parse_views(self.tta_views)
        except (TypeError, ValueError) as err:
            raise type(err)(f"{name}.tta_views: {err}") from None
        if self.tta_merge not in MERGE_MODES:
            raise ValueError(
                f"{name}.tta_merge must be one of {', '.join(MERGE_MODES)}; got {self.tta_merge!r}"
            )
        c = self.tta_chunk_size
        if c is not None and (isinstance(c, bool) or not isinstance(c, int) or c < 1):
            raise ValueError(f"{name}.tta_chunk_size must be None or an int >= 1; got {c!r}")
        for attr in ("tta_include_identity", "tta_on_test"):
            if not isinstance(getattr(self, attr), bool):
                raise TypeError(f"{name}.{attr} must be a bool; got {getattr(self, attr)!r}")

    def tta_input(self, batch: Any) -> torch.Tensor:
        """The tensor to augment in ``batch`` (override for dict batches)."""
        return batch_input(batch, type(self).__name__)

    def tta_forward(self, x: torch.Tensor) -> torch.Tensor:
        """Merged TTA output of ``x`` (works outside the Trainer as well).

        Example:
            >>> import lightning as L
            >>> class Net(TTAPredict, L.LightningModule):
            ...     def forward(self, x):
            ...         return x.mean((1, 2, 3))[:, None]
            >>> Net().tta_forward(torch.ones(2, 1, 4, 4))
            tensor([[1.],
                    [1.]])
        """
        self._tta_check()
        return tta_predict(
            self,  # type: ignore[arg-type]
            x,
            list(self.tta_views),
            self.tta_merge,
            self.tta_chunk_size,
            include_identity=self.tta_include_identity,
        )

    # -- forward swap: ``self(x)`` runs TTA during predict/test --------------------------------
    def _tta_install(self) -> None:
        self._tta_check()
        busy = [False]
        plain = type(self).forward

        def forward(*args: Any, **kwargs: Any) -> Any:
            if busy[0] or kwargs or len(args) != 1 or not isinstance(args[0], torch.Tensor):
                return plain(self, *args, **kwargs)
            busy[0] = True
            try:
                return self.tta_forward(args[0])
            finally:
                busy[0] = False

        self.__dict__["forward"] = forward

    def _tta_uninstall(self) -> None:
        self.__dict__.pop("forward", None)

    def on_predict_start(self) -> None:
        super().on_predict_start()  # type: ignore[misc]
        self._tta_install()

    def on_predict_end(self) -> None:
        self._tta_uninstall()
        super().on_predict_end()  # type: ignore[misc]

    def on_test_start(self) -> None:
        super().on_test_start()  # type: ignore[misc]
        if self.tta_on_test:
            self._tta_install()

    def on_test_end(self) -> None:
        self._tta_uninstall()
        super().on_test_end()  # type: ignore[misc]

    def predict_step(self, batch: Any, batch_idx: int = 0, dataloader_idx: int = 0) -> Any:
        """``self(tta_input(batch))``, which is TTA-merged during ``trainer.predict``."""
        return self(self.tta_input(batch))  # type: ignore[operator]
