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
from lightning_tricks.functional.inspect.gradient_monitor import (
    IntermediateGrads,
    NonFiniteTracker,
    layer_grad_norms,
)

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
    only.

    Non-finite gradients are noticed on **every** step without a host sync: each step
    folds "is any gradient NaN/Inf" into a flag on the device (one ``_foreach_norm`` over
    the gradients), which is read on sampled steps (in the same transfer as the norms)
    and at the end of every training epoch. The report names the first step with a
    non-finite gradient and the layer **nearest its origin**: the non-finite layer that
    backward reached first, i.e. the one that ran last in the forward pass (a NaN/Inf
    spreads from where it arose to every layer before it; the forward order is recorded
    once, on the first training step). Under fp16 mixed precision with a loss scaler,
    non-finite gradients are what the scaler expects now and then: it skips those steps
    and lowers the scale. They are then counted in :attr:`skipped_steps` (logged as
    ``gradient_monitor/skipped_steps``) instead of warned about or raised.

    Logged (global rank 0): ``grad_norm/<layer>``, ``grad_norm/total`` and, for each
    module named in ``intermediate``, ``grad_norm/output/<name>``; with a TensorBoard
    logger and ``log_histograms=True`` also ``grad_hist/<layer>``. The latest values
    are kept in :attr:`last_norms` and the latest output gradients in
    :attr:`intermediate_grads`.

    Args:
        every_n_steps: sample every N-th optimizer step (step 0 included).
        norm_type: p of the p-norm (``inf`` for the max norm).
        log_histograms: also log gradient histograms (TensorBoard only).
        detect_nonfinite: ``"warn"`` or ``"raise"`` (:class:`NonFiniteGradientError`) when a
            step had a NaN/Inf gradient, naming the step and the layer nearest its origin;
            ``None`` to only log (and pay nothing on unsampled steps).
        intermediate: names of modules whose output gradients to keep and log. For a module
            returning a tuple, dict or ``ModelOutput``, the gradient of its first tensor that
            requires grad (a transformer layer's hidden states); a module whose output holds
            no such tensor is named in a warning.

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
        self.skipped_steps = 0
        self._tracker: IntermediateGrads | None = None
        self._nonfinite: NonFiniteTracker | None = None
        self._recording: Any = None
        self._order_known = False
        self._scaled = False
        self._warned_without_grad: set[str] = set()

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
        self.skipped_steps = 0
        self._warned_without_grad = set()
        self._tracker = IntermediateGrads(pl_module, self.intermediate) if self.intermediate else None
        self._nonfinite = NonFiniteTracker(pl_module) if self.detect_nonfinite is not None else None
        self._scaled = getattr(trainer.precision_plugin, "scaler", None) is not None

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ):
        if self._tracker is not None and self._sampled(trainer):
            self._tracker.attach()
        if self._nonfinite is not None and self._recording is None and not self._order_known:
            self._recording = self._nonfinite.record_forward_order()  # forward pre-hooks for this step only
            self._recording.__enter__()

    def _stop_recording(self) -> None:
        if self._recording is not None:
            self._recording.__exit__(None, None, None)
            self._recording, self._order_known = None, True

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._stop_recording()
        if self._tracker is not None:
            self._tracker.detach()

    def on_exception(self, trainer, pl_module, exception) -> None:
        self._stop_recording()
        if self._tracker is not None:
            self._tracker.detach()

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._order_known = False

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._nonfinite is not None:
            self._report_nonfinite(trainer, self._nonfinite.read())  # the one host transfer of the epoch

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.on_train_epoch_end(trainer, pl_module)  # a fit stopped mid-epoch (max_steps) is read too

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer) -> None:
        if self._nonfinite is not None:
            self._nonfinite.update(trainer.global_step)  # device ops only, every step
        if not self._sampled(trainer):
            return
        log = trainer.is_global_zero
        if not log and self._nonfinite is None:
            return
        names, norms = layer_grad_norms(pl_module, self.norm_type)
        if not names:
            return
        self._warn_without_grad()
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
        pending = [] if self._nonfinite is None else [t.to(norms.device) for t in self._nonfinite.pending()]
        values = torch.cat([*parts, total.reshape(1), *pending]).tolist()  # the one host transfer
        n_norms = len(names) + len(extra) + 1
        layer_values = values[: len(names)]
        self.last_norms = dict(zip(names, layer_values))
        self.last_norms["total"] = values[n_norms - 1]
        for i, n in enumerate(extra):
            self.last_norms[f"output/{n}"] = values[len(names) + i]
        if self._nonfinite is not None and pending:
            self._report_nonfinite(trainer, self._nonfinite.read(values[n_norms:]))
        if log:
            metrics = {f"grad_norm/{k}": v for k, v in self.last_norms.items()}
            if self._scaled and self._nonfinite is not None:
                metrics["gradient_monitor/skipped_steps"] = float(self.skipped_steps)
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=trainer.global_step)
            if self.log_histograms:
                self._log_histograms(trainer, pl_module)

    def _warn_without_grad(self) -> None:
        if self._tracker is None:
            return
        for name in sorted(self._tracker.without_grad - self._warned_without_grad):
            self._warned_without_grad.add(name)
            rank_zero_warn(
                f"GradientMonitor: the output of `intermediate` module {name!r} holds no tensor that "
                f"requires grad (or the module did not run), so no output gradient is recorded for it."
            )

    def _report_nonfinite(self, trainer: L.Trainer, found: tuple | None) -> None:
        if found is None or self._nonfinite is None:
            return
        self._nonfinite.reset()
        first, layer, bad, kind, num_steps = found
        if self._scaled:
            # the loss scaler skips exactly these steps (the gradients we see are unscaled ones,
            # non-finite iff the scaler found an inf) and lowers its scale: normal under fp16
            self.skipped_steps += num_steps
            return
        msg = (
            f"GradientMonitor: the gradient of layer {layer!r} is {kind} at step {first} (the layer "
            f"nearest the origin: the first in backward order with a non-finite gradient; "
            f"{len(bad)} layer(s) were non-finite at that step; {num_steps} step(s) with non-finite "
            f"gradients since the last check)."
        )
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
