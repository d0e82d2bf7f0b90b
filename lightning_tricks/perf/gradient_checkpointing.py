"""Lightning layer of gradient checkpointing: wrap chosen submodules before DDP wraps the model."""

from __future__ import annotations

from collections.abc import Sequence

import lightning as L
from lightning.pytorch import Callback
from lightning.pytorch.utilities.rank_zero import rank_zero_info

from lightning_tricks.functional._checks import check_bool, check_choice
from lightning_tricks.functional._modules import name_entries
from lightning_tricks.functional.perf._targets import find_wrapped, unwrap
from lightning_tricks.functional.perf.gradient_checkpointing import (
    MODES,
    CheckpointedForward,
    CheckpointMode,
    apply_gradient_checkpointing,
)

__all__ = ["GradientCheckpointing"]


class GradientCheckpointing(Callback):
    """Recompute the activations of chosen submodules in backward instead of storing them.

    Trades compute for memory. ``mode="full"``: the saved activations of each wrapped
    block shrink to its input, at the cost of running its forward a second time in
    backward. ``mode="selective"``: the outputs of the expensive ops (matmuls,
    convolutions, fused attention) are kept too and only the cheap ops between them
    (activations, norms, dropout) are recomputed: less saving, much less recompute.
    Wrapping happens in ``setup``, so before DDP/FSDP wraps the model; it uses
    non-reentrant checkpointing with the semantics of ``torch.utils.checkpoint``
    (``use_reentrant=False``; a leaner implementation of our own in eager mode, PyTorch's
    under ``torch.compile``), so it works with frozen layers, inputs that do not require
    grad, keyword arguments and DDP. Gradients equal those of the plain
    model: blocks that can draw random numbers (dropout) replay the RNG state in the
    recomputation, and BatchNorm updates its running statistics once per step. Only
    training-mode forwards with grad enabled are checkpointed; validation and prediction
    run the plain forward. The wrappers are removed in ``teardown``, and when the run fails.

    Args:
        targets: the submodules of the LightningModule to wrap, by the one naming rule
            (see the Conventions page): qualified names, globs over them
            (``"backbone.blocks.*"``: ``*`` within one dotted segment, ``**`` across),
            class names (``"ResidualBlock"``) or, in Python, classes. A lone string is
            one entry. Nested matches wrap only the outermost module.
        mode: ``"full"`` (least memory) or ``"selective"`` (keeps matmul/convolution/
            attention outputs, recomputes the rest).
        preserve_rng_state: replay the RNG state in the recomputation. ``None``
            (default): only for blocks that can draw random numbers (see
            [`apply_gradient_checkpointing`][lightning_tricks.functional.apply_gradient_checkpointing]).

    Raises:
        TypeError: if ``targets`` is not a name, a class or a sequence of them, or
            ``preserve_rng_state`` is not ``None`` or a bool.
        ValueError: if ``targets`` is empty or ``mode`` is not ``"full"``/``"selective"``;
            in ``setup``, if an entry of ``targets`` selects no submodule (the message
            lists the available names and suggests the closest ones).

    Example:
        >>> import lightning as L
        >>> callback = GradientCheckpointing(targets="backbone.blocks.*", mode="selective")
        >>> trainer = L.Trainer(callbacks=[callback], accelerator="cpu", logger=False)
    """

    def __init__(
        self,
        targets: str | Sequence[str],
        mode: CheckpointMode = "full",
        preserve_rng_state: bool | None = None,
    ) -> None:
        self.targets = name_entries("targets", targets)
        self.mode = check_choice("mode", mode, MODES)
        self.preserve_rng_state = (
            None if preserve_rng_state is None else check_bool("preserve_rng_state", preserve_rng_state)
        )
        self._installed: set[int] = set()

    @property
    def state_key(self) -> str:
        return self._generate_state_key(targets=self.targets)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        wrapped = apply_gradient_checkpointing(pl_module, self.targets, self.mode, self.preserve_rng_state)
        names = set(wrapped)
        self._installed |= {id(w) for n, w in find_wrapped(pl_module, CheckpointedForward) if n in names}
        if wrapped:
            shown = ", ".join(wrapped[:6]) + (", ..." if len(wrapped) > 6 else "")
            rank_zero_info(
                f"GradientCheckpointing: checkpointing {len(wrapped)} module(s) ({self.mode}): {shown}"
            )

    def _remove(self, pl_module: L.LightningModule) -> None:
        unwrap(pl_module, CheckpointedForward, only=self._installed)
        self._installed = set()

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        # Lightning does not call ``teardown`` when a run fails: leave the model plain here.
        self._remove(pl_module)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._remove(pl_module)
