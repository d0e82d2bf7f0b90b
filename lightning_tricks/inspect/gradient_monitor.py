"""GradientMonitor: per-layer gradient norms, non-finite detection and intermediate gradients."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch import Callback
from lightning.pytorch.utilities import rank_zero_warn

from lightning_tricks.functional._checks import (
    check_bool,
    check_choice,
    check_int,
    check_number,
    check_str_sequence,
)
from lightning_tricks.functional.inspect.gradients import IntermediateGrads, first_nonfinite, layer_grad_norms

__all__ = ["GradientMonitor", "NonFiniteGradientError"]


class NonFiniteGradientError(RuntimeError):
    """Raised by :class:`GradientMonitor` with ``detect_nonfinite="raise"``.

    Example:
        >>> str(NonFiniteGradientError("layer 'head' has a NaN gradient"))
        "layer 'head' has a NaN gradient"
    """


class GradientMonitor(Callback):
    """Log per-layer gradient norms every N optimizer steps, and catch NaN/Inf gradients.

    Norms are computed in ``on_before_optimizer_step``, i.e. after the AMP gradient
    scaler has unscaled the gradients (Lightning unscales before that hook), for all
    layers at once on the device, and moved to the host in one transfer on sampled steps
    only: on other steps the callback does nothing. Non-finite detection reads the same
    transferred norms, so it is also only done on sampled steps (use ``every_n_steps=1``
    to check every step, at the cost of one host sync per step).

    Logged (global rank 0): ``grad_norm/<layer>``, ``grad_norm/total`` and, for each
    module named in ``intermediate``, ``grad_norm/output/<name>``; with a TensorBoard
    logger and ``log_histograms=True`` also ``grad_hist/<layer>``. The latest values
    are kept in :attr:`last_norms` and the latest output gradients in
    :attr:`intermediate_grads`.

    Args:
        every_n_steps: sample every N-th optimizer step (step 0 included).
        norm_type: p of the p-norm (``inf`` for the max norm).
        log_histograms: also log gradient histograms (TensorBoard only).
        detect_nonfinite: ``"warn"`` or ``"raise"`` when a sampled step has a NaN/Inf
            gradient, naming the first such layer in model order; ``None`` to only log.
        intermediate: names of modules whose output gradients to keep and log.

    Example:
        >>> from lightning_tricks import GradientMonitor
        >>> GradientMonitor(every_n_steps=10, detect_nonfinite="raise").detect_nonfinite
        'raise'
    """

    def __init__(
        self,
        every_n_steps: int = 50,
        norm_type: float = 2.0,
        log_histograms: bool = False,
        detect_nonfinite: Literal["warn", "raise"] | None = "warn",
        intermediate: Sequence[str] = (),
    ) -> None:
        self.every_n_steps = check_int("every_n_steps", every_n_steps, minimum=1)
        if isinstance(norm_type, float) and norm_type == math.inf:
            self.norm_type = math.inf
        else:
            self.norm_type = check_number("norm_type", norm_type, minimum=1.0)
        self.log_histograms = check_bool("log_histograms", log_histograms)
        if detect_nonfinite is not None:
            check_choice("detect_nonfinite", detect_nonfinite, ("warn", "raise"))
        self.detect_nonfinite = detect_nonfinite
        self.intermediate = check_str_sequence("intermediate", intermediate, allow_empty=True)
        self.last_norms: dict[str, float] = {}
        self._tracker: IntermediateGrads | None = None

    @property
    def intermediate_grads(self) -> dict[str, torch.Tensor]:
        """Latest gradients of the outputs of the modules named in ``intermediate``."""
        return self._tracker.grads if self._tracker is not None else {}

    def _sampled(self, trainer: L.Trainer) -> bool:
        return trainer.global_step % self.every_n_steps == 0

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":  # keep the last fit's norms readable after trainer.test/validate
            return
        self.last_norms = {}
        self._tracker = IntermediateGrads(pl_module, self.intermediate) if self.intermediate else None

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ):
        if self._tracker is not None and self._sampled(trainer):
            self._tracker.attach()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._tracker is not None:
            self._tracker.detach()

    def on_exception(self, trainer, pl_module, exception) -> None:
        if self._tracker is not None:
            self._tracker.detach()

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer) -> None:
        if not self._sampled(trainer):
            return
        log = trainer.is_global_zero
        if not log and self.detect_nonfinite is None:
            return
        names, norms = layer_grad_norms(pl_module, self.norm_type)
        if not names:
            return
        extra = [] if self._tracker is None else [n for n in self.intermediate if n in self._tracker.grads]
        parts = [norms.float()]
        if extra:
            grads = [self._tracker.grads[n].float() for n in extra]
            inter = torch.stack(torch._foreach_norm(grads, self.norm_type)).to(norms.device)
            scaler = getattr(trainer.precision_plugin, "scaler", None)
            if scaler is not None:  # backward hooks saw loss-scaled gradients; report them unscaled
                inter = inter / scaler.get_scale()
            parts.append(inter)
        total = norms.norm(self.norm_type) if not math.isinf(self.norm_type) else norms.max()
        values = torch.cat([*parts, total.reshape(1)]).tolist()  # the one host transfer
        layer_values = values[: len(names)]
        self.last_norms = dict(zip(names, layer_values))
        self.last_norms["total"] = values[-1]
        for i, n in enumerate(extra):
            self.last_norms[f"output/{n}"] = values[len(names) + i]
        if log:
            metrics = {f"grad_norm/{k}": v for k, v in self.last_norms.items()}
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=trainer.global_step)
            if self.log_histograms:
                self._log_histograms(trainer, pl_module)
        if self.detect_nonfinite is not None:
            bad = first_nonfinite(names, layer_values)
            if bad is not None:
                value = self.last_norms[bad]
                msg = (
                    f"GradientMonitor: the gradient of layer {bad!r} is "
                    f"{'NaN' if math.isnan(value) else 'infinite'} at step {trainer.global_step} "
                    f"(first such layer in model order)."
                )
                if getattr(trainer.precision_plugin, "scaler", None) is not None:
                    msg += " Under fp16 AMP the GradScaler skips this step and lowers the loss scale."
                if self.detect_nonfinite == "raise":
                    raise NonFiniteGradientError(msg)
                rank_zero_warn(msg)

    def _log_histograms(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for logger in trainer.loggers:
            experiment = getattr(logger, "experiment", None)
            if hasattr(experiment, "add_histogram"):
                for n, p in pl_module.named_parameters():
                    if p.grad is not None:
                        g = p.grad.detach().float().cpu()
                        if torch.isfinite(g).all():
                            experiment.add_histogram(f"grad_hist/{n}", g, trainer.global_step)
