"""Deliberately broken components: the conformance suite must catch each of them.

``GoodLRDecay`` is the control: the same idea done right, which must pass.
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch import Callback

from tests.conformance.spec import Spec


class GoodLRDecay(Callback):
    """Halves the learning rate at the start of every epoch after the first, keeping
    its count of epochs seen in ``state_dict`` so that a resumed run continues it. The count
    starts again in ``setup`` (before a checkpoint's state is loaded), so a fit after a
    failed one starts from the beginning."""

    def __init__(self, factor: float = 0.5):
        self.factor = factor
        self.epochs_seen = 0
        self.base_lrs: list[float] = []

    def setup(self, trainer, pl_module, stage):
        if stage == "fit":
            self.epochs_seen = 0

    def on_fit_start(self, trainer, pl_module):
        self.base_lrs = [g["lr"] for g in trainer.optimizers[0].param_groups]

    def on_train_epoch_start(self, trainer, pl_module):
        for g, base in zip(trainer.optimizers[0].param_groups, self.base_lrs):
            g["lr"] = base * self.factor**self.epochs_seen
        self.epochs_seen += 1

    def state_dict(self) -> dict[str, Any]:
        return {"epochs_seen": self.epochs_seen}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.epochs_seen = state_dict.get("epochs_seen", 0)


class ForgetfulLRDecay(GoodLRDecay):
    """Broken: forgets how many epochs it has seen when a run resumes."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        pass


class OneRankNudge(Callback):
    """Broken: changes the weights on global rank 1 only."""

    def on_train_end(self, trainer, pl_module):
        if trainer.global_rank == 1:
            with torch.no_grad():
                next(pl_module.parameters()).add_(1e-3)


class StaleAfterFirstFit(Callback):
    """Broken: keeps state from the first fit, so a second fit behaves differently."""

    def __init__(self):
        self.fits = 0

    def on_fit_start(self, trainer, pl_module):
        self.fits += 1
        if self.fits > 1:
            for g in trainer.optimizers[0].param_groups:
                g["lr"] *= 0.1


class ForgetfulStepCounter(Callback):
    """Broken: counts optimizer steps in ``state_dict`` but ignores it on load. The
    weights of a resumed run are right; only the callback's state is wrong."""

    def __init__(self):
        self.steps = 0

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.steps += 1

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        pass


class ForgetfulGradEMA(Callback):
    """Broken: keeps an EMA of every gradient in the optimizer's state (which the
    checkpoint restores) but re-initialises it when training starts, so a resumed run
    loses it. SGD ignores the extra entry: the weights of a resumed run are right."""

    def on_train_start(self, trainer, pl_module):
        opt = trainer.optimizers[0]
        for group in opt.param_groups:
            for p in group["params"]:
                opt.state[p]["grad_ema"] = torch.zeros_like(p)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        for group in optimizer.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    optimizer.state[p]["grad_ema"].mul_(0.9).add_(p.grad, alpha=0.1)


class OneRankBufferNudge(Callback):
    """Broken: changes a BatchNorm running mean on global rank 1 only (weights stay equal)."""

    def on_train_end(self, trainer, pl_module):
        if trainer.global_rank == 1:
            buf = next(b for n, b in pl_module.named_buffers() if n.endswith("running_mean"))
            buf.add_(1e-3)


class RunningNormScaler(Callback):
    """Broken under fp16 loss scaling: rescales gradients to the running mean of the
    gradient norms it has seen, counting the norm of a step the scaler skips (inf).

    ``where="before_step"`` rescales in ``on_before_optimizer_step``, after the scaler
    has checked the gradients: the inf/NaN gradients reach the weights.
    ``where="backward"`` rescales the next step's gradients in ``on_after_backward``,
    before the scaler checks them: every later step is skipped, training stalls.
    """

    def __init__(self, where: str = "before_step"):
        self.where = where
        self.mean_norm: torch.Tensor | None = None
        self.last_norm: torch.Tensor | None = None

    def on_fit_start(self, trainer, pl_module):
        self.mean_norm = self.last_norm = None

    @staticmethod
    def _grads(pl_module) -> list[torch.Tensor]:
        return [p.grad for p in pl_module.parameters() if p.grad is not None]

    def on_after_backward(self, trainer, pl_module):
        if self.where == "backward" and self.mean_norm is not None:
            for g in self._grads(pl_module):
                g.mul_(self.mean_norm / self.last_norm)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        grads = self._grads(pl_module)
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
        self.mean_norm = norm if self.mean_norm is None else 0.9 * self.mean_norm + 0.1 * norm
        self.last_norm = norm
        if self.where == "before_step":
            for g in grads:
                g.mul_(self.mean_norm / (norm + 1e-12))


class ScaledGradNormLogger(Callback):
    """Broken under fp16 loss scaling: logs the gradient norm in ``on_after_backward``,
    where the gradients are still multiplied by the loss scale."""

    def on_after_backward(self, trainer, pl_module):
        grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
        for logger in trainer.loggers:
            logger.log_metrics({"scaled/grad_norm": float(norm)}, step=trainer.global_step)


class HookUntilBatchEnd(Callback):
    """Broken: puts a forward hook on the backbone for every training step and removes it at
    the end of the step only, so a step that fails leaves it behind."""

    def __init__(self):
        self._handle: Any = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._handle = pl_module.backbone.register_forward_hook(lambda module, args, out: None)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def __getstate__(self):
        return {**self.__dict__, "_handle": None}


class CautiousAfterFailure(Callback):
    """Broken: cleans up after a failure, but from then on cuts the learning rate of every
    later fit, so a fit after a failure differs from one with a fresh instance."""

    def __init__(self):
        self.failed = False

    def on_exception(self, trainer, pl_module, exception):
        self.failed = True

    def on_fit_start(self, trainer, pl_module):
        if self.failed:
            for g in trainer.optimizers[0].param_groups:
                g["lr"] *= 0.1


CLASSES: dict[str, type] = {
    c.__name__: c
    for c in (
        GoodLRDecay,
        ForgetfulLRDecay,
        OneRankNudge,
        StaleAfterFirstFit,
        ForgetfulStepCounter,
        ForgetfulGradEMA,
        OneRankBufferNudge,
        RunningNormScaler,
        ScaledGradNormLogger,
        HookUntilBatchEnd,
        CautiousAfterFailure,
    )
}

BROKEN_SPECS: dict[str, tuple[str, Spec]] = {
    "broken:GoodLRDecay": ("GoodLRDecay", Spec()),
    "broken:OneRankNudge": ("OneRankNudge", Spec()),
    "broken:OneRankBufferNudge": ("OneRankBufferNudge", Spec()),
}
