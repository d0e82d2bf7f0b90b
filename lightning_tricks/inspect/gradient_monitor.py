"""GradientMonitor: per-layer gradient norms, non-finite detection and intermediate gradients."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import lightning as L
import torch
from lightning.pytorch import Callback
from lightning.pytorch.utilities import rank_zero_warn

from lightning_tricks._compat import foreach_norm, forget_step_values, should_update_logs
from lightning_tricks._logging import component_name, image_writer, log_scalars
from lightning_tricks.functional._checks import (
    OnError,
    check_bool,
    check_norm_type,
    check_on_error,
    check_optional_int,
    check_str_sequence,
    report_problem,
)
from lightning_tricks.functional._modules import resolve_modules
from lightning_tricks.functional.inspect.gradient_monitor import (
    IntermediateGrads,
    NonFiniteTracker,
    layer_grad_norms,
    layer_of,
)

__all__ = ["GradientMonitor", "NonFiniteGradientError"]


class NonFiniteGradientError(RuntimeError):
    """Raised by [`GradientMonitor`][lightning_tricks.GradientMonitor] with ``on_error="raise"``.

    Example:
        >>> str(NonFiniteGradientError("layer 'head' has a NaN gradient"))
        "layer 'head' has a NaN gradient"
    """


class GradientMonitor(Callback):
    """Log per-layer gradient norms on sampled optimizer steps, and catch NaN/Inf gradients.

    Norms are computed in ``on_before_optimizer_step``, i.e. after the AMP gradient
    scaler has unscaled the gradients (Lightning unscales before that hook), for all
    layers at once on the device, and moved to the host in one transfer on sampled steps
    only.

    Non-finite gradients are noticed on **every** step without a host sync: each step
    folds "is any gradient NaN/Inf" into a flag on the device (one fused ``_foreach_norm``
    over the gradients), which is read on sampled steps (in the same transfer as the norms)
    and at the end of every training epoch. The report names the first step with a
    non-finite gradient and the layer **nearest its origin**: the non-finite layer that
    backward reached first, i.e. the one that ran last in the forward pass (a NaN/Inf
    spreads from where it arose to every layer before it; the forward order is recorded
    once, on the first training step). Under fp16 mixed precision with a loss scaler,
    non-finite gradients are what the scaler expects now and then: it skips those steps
    and lowers the scale. They are then counted in `skipped_steps` (logged as
    ``gradient_monitor/skipped_steps``) instead of warned about or raised.

    Logged through ``LightningModule.log`` (so every logger, ``EarlyStopping`` and
    ``ModelCheckpoint`` see them): ``gradient_monitor/grad_norm/<layer>``,
    ``gradient_monitor/grad_norm/total`` and, for each module named in ``intermediate``,
    ``gradient_monitor/grad_norm/output/<name>``; with ``log_histograms=True`` and a
    TensorBoard logger also one histogram per layer, ``gradient_monitor/grad_hist/<layer>``
    (all gradients of the layer's parameters). The latest values are kept in
    `last_norms` and the latest output gradients in [`intermediate_grads`][lightning_tricks.GradientMonitor.intermediate_grads].

    Args:
        every_n_steps: ``None`` (the default) samples on the Trainer's logging steps
            (``log_every_n_steps``), so every sample reaches the loggers under its own
            step. An int N samples every N-th optimizer step (step 0 included); the
            loggers then see a sample only when it falls on a logging step of the
            Trainer (e.g. with ``log_every_n_steps=1``), the others are kept in
            `last_norms` only.
        norm_type: p of the p-norm, in [1, 32] (``inf`` for the max norm).
        log_histograms: also log gradient histograms (TensorBoard only).
        on_error: what to do when a step had a NaN/Inf gradient: ``"warn"`` (the default)
            or ``"raise"`` ([`NonFiniteGradientError`][lightning_tricks.NonFiniteGradientError]), naming the step and the layer
            nearest its origin; ``"ignore"`` skips the every-step check (unsampled steps
            then cost nothing) and leaves the logged norms as the only record.
        intermediate: modules whose output gradients to keep and log, by the library's
            naming rule (qualified names, segment-wise globs, class names; a lone string
            is one name). For a module returning a tuple, dict or ``ModelOutput``, the
            gradient of its first tensor that requires grad (a transformer layer's hidden
            states); a module whose output holds no such tensor is named in a warning.

    Raises:
        ValueError: for an ``on_error`` other than ``"warn"``, ``"raise"``, ``"ignore"``,
            or an ``every_n_steps``/``norm_type`` out of range.

    Example:
        >>> from lightning_tricks import GradientMonitor
        >>> GradientMonitor(every_n_steps=10, on_error="raise").on_error
        'raise'
    """

    def __init__(
        self,
        every_n_steps: int | None = None,
        norm_type: float = 2.0,
        log_histograms: bool = False,
        on_error: OnError = "warn",
        intermediate: Sequence[str] | str = (),
    ) -> None:
        self.every_n_steps = check_optional_int("every_n_steps", every_n_steps, minimum=1)
        self.norm_type = check_norm_type("norm_type", norm_type)
        self.log_histograms = check_bool("log_histograms", log_histograms)
        self.on_error = check_on_error(on_error)
        self.intermediate = check_str_sequence("intermediate", intermediate, allow_empty=True)
        self.last_norms: dict[str, float] = {}
        self.skipped_steps = 0
        self._tracker: IntermediateGrads | None = None
        self._nonfinite: NonFiniteTracker | None = None
        self._recording: Any = None
        self._order_known = False
        self._scaled = False
        self._logged = False
        self._told_unlogged = False
        self._told_no_histograms = False
        self._warned_without_grad: set[str] = set()

    @property
    def intermediate_grads(self) -> dict[str, torch.Tensor]:
        """Latest gradients of the outputs of the modules named in ``intermediate``."""
        return self._tracker.grads if self._tracker is not None else {}

    def _sampled(self, trainer: L.Trainer) -> bool:
        if self.every_n_steps is None:
            return should_update_logs(trainer)
        return trainer.global_step % self.every_n_steps == 0

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":  # keep the last fit's norms readable after trainer.test/validate
            return
        self.last_norms = {}
        self.skipped_steps = 0
        self._warned_without_grad = set()
        if self.intermediate:
            resolve_modules(
                pl_module, self.intermediate, "intermediate"
            )  # errors name this callback's argument
        self._tracker = IntermediateGrads(pl_module, self.intermediate) if self.intermediate else None
        self._nonfinite = NonFiniteTracker(pl_module) if self.on_error != "ignore" else None
        self._scaled = getattr(trainer.precision_plugin, "scaler", None) is not None

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._logged:  # Lightning would send the last sample again on its next logging steps
            forget_step_values(trainer, component_name(self) + "/")
            self._logged = False
        if self._tracker is not None and self._sampled(trainer):
            self._tracker.attach()
        if self._nonfinite is not None and self._recording is None and not self._order_known:
            self._recording = self._nonfinite.record_forward_order()  # forward pre-hooks for this step only
            self._recording.__enter__()

    def _stop_recording(self) -> None:
        if self._recording is not None:
            self._recording.__exit__(None, None, None)
            self._recording, self._order_known = None, True

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._stop_recording()
        if self._tracker is not None:
            self._tracker.detach()

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        self._stop_recording()
        if self._tracker is not None:
            self._tracker.detach()

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._order_known = False
        self._logged = False

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._nonfinite is not None:
            self._report_nonfinite(self._nonfinite.read())  # the one host transfer of the epoch

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.on_train_epoch_end(trainer, pl_module)  # a fit stopped mid-epoch (max_steps) is read too

    def on_before_optimizer_step(
        self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        if self._nonfinite is not None:
            self._nonfinite.update(trainer.global_step)  # device ops only, every step
        if not self._sampled(trainer):
            return
        names, norms = layer_grad_norms(pl_module, self.norm_type)
        if not names:
            return
        self._warn_without_grad()
        tracker = self._tracker
        extra = [] if tracker is None else [n for n in tracker.names if n in tracker.grads]
        parts = [norms.float()]
        if tracker is not None and extra:
            grads = [tracker.grads[n].float() for n in extra]
            inter = torch.stack(foreach_norm(grads, self.norm_type)).to(norms.device)
            scaler = getattr(trainer.precision_plugin, "scaler", None)
            if scaler is not None:  # backward hooks saw loss-scaled gradients; report them unscaled
                inter = inter / scaler.get_scale()
            parts.append(inter)
        total = norms.norm(self.norm_type) if not math.isinf(self.norm_type) else norms.max()
        pending = [] if self._nonfinite is None else [t.to(norms.device) for t in self._nonfinite.pending()]
        values = torch.cat([*parts, total.reshape(1), *pending]).tolist()  # the one host transfer
        n_norms = len(names) + len(extra) + 1
        self.last_norms = dict(zip(names, values[: len(names)]))
        self.last_norms["total"] = values[n_norms - 1]
        for i, n in enumerate(extra):
            self.last_norms[f"output/{n}"] = values[len(names) + i]
        if self._nonfinite is not None and pending:
            self._report_nonfinite(self._nonfinite.read(values[n_norms:]))
        self._log(trainer, pl_module)

    def _log(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Every rank logs the same (all-reduced) norms; Lightning's loggers write on rank 0."""
        if not should_update_logs(trainer):
            if trainer.loggers and not self._told_unlogged:
                self._told_unlogged = True
                rank_zero_warn(
                    f"GradientMonitor: step {trainer.global_step} is sampled (every_n_steps="
                    f"{self.every_n_steps}) but is not a logging step of the Trainer (log_every_n_steps="
                    f"{getattr(trainer, 'log_every_n_steps', '?')}), so its norms reach `last_norms` but no logger. Leave "
                    f"`every_n_steps=None` to sample on the logging steps."
                )
            return
        metrics = {f"grad_norm/{k}": v for k, v in self.last_norms.items()}
        if self._scaled and self._nonfinite is not None:
            metrics["skipped_steps"] = float(self.skipped_steps)
        log_scalars(pl_module, self, metrics, on_step=True, on_epoch=False)
        self._logged = True
        if self.log_histograms and trainer.is_global_zero:
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

    def _report_nonfinite(self, found: tuple[int, str, list[str], str, int] | None) -> None:
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
        if self.on_error == "warn":
            rank_zero_warn(msg)
        else:
            report_problem(self.on_error, msg, NonFiniteGradientError)

    def _log_histograms(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        writer = image_writer(trainer)
        if writer is None:
            if not self._told_no_histograms:
                self._told_no_histograms = True
                rank_zero_warn(
                    "GradientMonitor: `log_histograms=True` needs a logger that takes histograms "
                    "(TensorBoardLogger); none is attached, so no gradient histograms are logged."
                )
            return
        per_layer: dict[str, list[torch.Tensor]] = {}
        for n, p in pl_module.named_parameters():
            if p.grad is not None:
                per_layer.setdefault(layer_of(n), []).append(p.grad.detach().float().flatten())
        for layer, grads in per_layer.items():
            g = torch.cat(grads).cpu()
            if torch.isfinite(g).all():
                writer.add_histogram(f"{component_name(self)}/grad_hist/{layer}", g, trainer.global_step)
