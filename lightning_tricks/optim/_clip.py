"""What the gradient-clipping callbacks share: when to clip, what to leave out, what to log.

Both clip in ``on_before_optimizer_step``. Lightning calls that hook after the closure
ran ``backward`` (so, under DDP, after the gradients were all-reduced) and, under
``precision="16-mixed"``, after ``GradScaler.unscale_``: the clipping decision is made
on the true, unscaled gradients. Lightning's own ``gradient_clip_val`` clipping runs
right after this hook.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch import Callback
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from lightning.pytorch.utilities.rank_zero import rank_zero_info

from lightning_tricks._compat import should_update_logs
from lightning_tricks._logging import log_scalars
from lightning_tricks.functional._modules import name_entries
from lightning_tricks.functional.optim._clip import ClipResult, check_norm_type, combine_norms, total_norm

__all__: list[str] = []


def _check_strategy(trainer: pl.Trainer, name: str) -> None:
    from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy, ModelParallelStrategy

    if isinstance(trainer.strategy, DeepSpeedStrategy | FSDPStrategy | ModelParallelStrategy):
        raise MisconfigurationException(
            f"`{name}` needs whole (unsharded) gradients on every rank; got strategy"
            f" {type(trainer.strategy).__name__}. Use it with single-device or DDP training."
        )


class _ClippingCallback(Callback):
    """Shared logic: when to clip, bookkeeping of clipped steps, logging on logging steps.

    Scalars are logged through ``LightningModule.log`` under ``<component>/<key>``
    (``adaptive_gradient_clipping/...``, ``auto_clip/...``).
    """

    def __init__(self, norm_type: float, exclude: str | Sequence[str]) -> None:
        self.norm_type = check_norm_type(norm_type)
        # a lone string is one entry; names are resolved against the model in `setup`
        self.exclude: list[str | type] = list(name_entries("exclude", exclude, allow_empty=True))
        self._excluded_ids: set[int] = set()
        self._reset_counters()

    def _reset_counters(self) -> None:
        self._n_clipped: torch.Tensor | None = None  # device counters since the last log
        self._n_steps: torch.Tensor | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            _check_strategy(trainer, type(self).__name__)
            self._reset_counters()
            named = dict(pl_module.named_parameters())
            names = self._excluded_names(pl_module)
            self._excluded_ids = {id(named[n]) for n in names}
            if names:
                rank_zero_info(f"{type(self).__name__} leaves out: {', '.join(names)}")
            self._reset_fit_state(pl_module)

    def _excluded_names(self, pl_module: pl.LightningModule) -> list[str]:
        raise NotImplementedError

    def _reset_fit_state(self, pl_module: pl.LightningModule) -> None:
        pass

    def _clip(self, params: list[torch.Tensor]) -> ClipResult:
        raise NotImplementedError

    def _extra_logs(self) -> dict[str, torch.Tensor]:
        return {}

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        excluded = self._excluded_ids
        params: list[torch.Tensor] = []
        skipped: list[torch.Tensor] = []
        for group in optimizer.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    (skipped if id(p) in excluded else params).append(p)
        result = self._clip(params)
        finite = torch.isfinite(result.norm_before)  # GradScaler skips non-finite steps
        if self._n_clipped is None or self._n_steps is None:
            self._n_clipped = torch.zeros((), device=finite.device)
            self._n_steps = torch.zeros((), device=finite.device)
        self._n_clipped += (result.clipped & finite).float()
        self._n_steps += finite.float()
        if not (should_update_logs(trainer) and trainer.loggers):
            return
        before, after = result.norm_before, result.norm_after
        if skipped:  # the excluded gradients are unchanged: fold their norm in
            rest = total_norm([p.grad for p in skipped if p.grad is not None], self.norm_type)
            before = combine_norms(before, rest, self.norm_type)
            after = combine_norms(after, rest, self.norm_type)
        metrics = {
            "grad_norm_pre_clip": before,
            "grad_norm_post_clip": after,
            "clipped_fraction": self._n_clipped / self._n_steps.clamp(min=1.0),
            **self._extra_logs(),
        }
        log_scalars(pl_module, self, {k: v.detach().float() for k, v in metrics.items()})
        self._reset_counters()

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_excluded_ids"] = set()  # ids are per process; recomputed in setup
        return state
