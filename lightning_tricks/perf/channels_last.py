"""Lightning layer of channels-last: convert the model at setup and every 4-D batch after transfer.

A documented pair: [`ChannelsLast`][lightning_tricks.ChannelsLast] <-> [`model_to_channels_last`][lightning_tricks.functional.model_to_channels_last]
(``lightning_tricks.functional.perf.channels_last``, with
[`batch_to_channels_last`][lightning_tricks.functional.batch_to_channels_last] for the batches).
"""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch import Callback
from lightning.pytorch.utilities.rank_zero import rank_zero_warn

from lightning_tricks.functional._checks import check_bool
from lightning_tricks.functional.perf.channels_last import batch_to_channels_last, model_to_channels_last

__all__ = ["ChannelsLast"]


class _ChannelsLastTransfer:
    """Replaces ``strategy.batch_to_device`` on the instance: transfer, then convert."""

    def __init__(self, original: Any) -> None:
        self.original = original

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return batch_to_channels_last(self.original(*args, **kwargs))


class ChannelsLast(Callback):
    """Train in the channels-last (NHWC) memory format.

    In ``setup`` the model's 4-D parameters are converted (before the optimizer is
    created and before DDP wraps the model); with ``batches=True`` every 4-D floating
    batch tensor is converted right after it reaches the device, in every stage (the
    callback wraps the strategy's ``batch_to_device``, so it works with whatever
    ``on_after_batch_transfer`` hooks the model or datamodule define, and it is removed
    in ``teardown``, and when the run fails). The model keeps its ``state_dict`` keys and values.

    Channels-last pays off for convolutions with cuDNN and Tensor Cores under AMP; on a
    CPU it can be slower (see the benchmark in the docs). A model without 4-D
    parameters gets one warning: there is nothing to gain.

    Args:
        batches: also convert the 4-D tensors of each batch (the input layout decides
            the layout of the first convolution's output).

    Raises:
        TypeError: if ``batches`` is not a bool.

    Example:
        >>> import lightning as L
        >>> trainer = L.Trainer(callbacks=[ChannelsLast()], accelerator="cpu", logger=False)
    """

    def __init__(self, batches: bool = True) -> None:
        self.batches = check_bool("batches", batches)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if model_to_channels_last(pl_module) == 0:
            rank_zero_warn(
                "ChannelsLast: the model has no 4-D parameters (no 2-D convolutions): "
                "the channels-last format has nothing to speed up; remove the callback."
            )
        strategy = trainer.strategy
        if self.batches and not isinstance(strategy.__dict__.get("batch_to_device"), _ChannelsLastTransfer):
            strategy.batch_to_device = _ChannelsLastTransfer(strategy.batch_to_device)  # type: ignore[method-assign]

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        # Lightning does not call ``teardown`` when a run fails: restore the strategy here.
        self._restore(trainer)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._restore(trainer)

    def _restore(self, trainer: L.Trainer) -> None:
        strategy = trainer.strategy
        hook = strategy.__dict__.get("batch_to_device")
        if isinstance(hook, _ChannelsLastTransfer):
            strategy.batch_to_device = hook.original  # type: ignore[method-assign]
            if getattr(hook.original, "__self__", None) is strategy:
                del strategy.__dict__["batch_to_device"]
