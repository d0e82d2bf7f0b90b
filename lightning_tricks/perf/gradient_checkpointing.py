"""Lightning layer of gradient checkpointing: wrap chosen submodules before DDP wraps the model."""

from __future__ import annotations

from collections.abc import Sequence

import lightning as L
from lightning.pytorch import Callback
from lightning.pytorch.utilities.rank_zero import rank_zero_info

from lightning_tricks.functional._checks import check_str_sequence
from lightning_tricks.functional.perf._targets import find_wrapped, unwrap
from lightning_tricks.functional.perf.checkpointing import CheckpointedForward, apply_gradient_checkpointing

__all__ = ["GradientCheckpointing"]


class GradientCheckpointing(Callback):
    """Recompute the activations of chosen submodules in backward instead of storing them.

    Trades compute for memory: the saved activations of each wrapped block shrink to its
    input, at the cost of running its forward a second time in backward (typically
    20-35% more step time for a whole-network wrap). Wrapping happens in ``setup``, so
    before DDP/FSDP wraps the model; it uses the non-reentrant
    ``torch.utils.checkpoint`` (works with frozen layers, inputs that do not require
    grad, keyword arguments and DDP) and restores the RNG state, so that dropout draws
    the same mask in the recomputation and gradients equal those of the plain model.
    Only training-mode forwards with grad enabled are checkpointed; validation and
    prediction run the plain forward. The wrappers are removed in ``teardown``.

    Args:
        targets: module class names (``"ResidualBlock"``) or globs over qualified
            submodule names of the LightningModule (``"backbone.blocks.*"``). Nested
            matches wrap only the outermost module.

    Raises:
        TypeError: if ``targets`` is not a string or a sequence of strings.
        ValueError: in ``setup``, if ``targets`` matches no submodule.

    Example:
        >>> import lightning as L
        >>> callback = GradientCheckpointing(targets="backbone.blocks.*")
        >>> trainer = L.Trainer(callbacks=[callback], accelerator="cpu", logger=False)
    """

    def __init__(self, targets: str | Sequence[str]) -> None:
        self.targets = check_str_sequence("targets", targets)
        self._installed: set[int] = set()

    @property
    def state_key(self) -> str:
        return self._generate_state_key(targets=self.targets)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        wrapped = apply_gradient_checkpointing(pl_module, self.targets)
        names = set(wrapped)
        self._installed |= {id(w) for n, w in find_wrapped(pl_module, CheckpointedForward) if n in names}
        if wrapped:
            shown = ", ".join(wrapped[:6]) + (", ..." if len(wrapped) > 6 else "")
            rank_zero_info(f"GradientCheckpointing: checkpointing {len(wrapped)} module(s): {shown}")

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        unwrap(pl_module, CheckpointedForward, only=self._installed)
        self._installed = set()
