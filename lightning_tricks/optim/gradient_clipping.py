"""Gradient clipping callbacks beyond ``Trainer(gradient_clip_val=...)``: AGC and AutoClip.

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

from lightning_tricks.functional._checks import (
    check_bool,
    check_number,
    check_optional_int,
    check_str_sequence,
)
from lightning_tricks.functional.optim._clip import ClipResult, combine_norms, total_norm
from lightning_tricks.functional.optim.agc import _check_norm_type, adaptive_clip_grad_
from lightning_tricks.functional.optim.autoclip import AutoClipper

__all__ = ["AdaptiveGradientClipping", "AutoClip"]


def _check_strategy(trainer: pl.Trainer, name: str) -> None:
    from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy, ModelParallelStrategy

    if isinstance(trainer.strategy, DeepSpeedStrategy | FSDPStrategy | ModelParallelStrategy):
        raise MisconfigurationException(
            f"`{name}` needs whole (unsharded) gradients on every rank; got strategy"
            f" {type(trainer.strategy).__name__}. Use it with single-device or DDP training."
        )


class _ClippingCallback(Callback):
    """Shared logic: when to clip, bookkeeping of clipped steps, logging on logging steps."""

    prefix = "clip"

    def __init__(self, norm_type: float) -> None:
        self.norm_type = _check_norm_type(norm_type)
        self._reset_counters()

    def _reset_counters(self) -> None:
        self._n_clipped: torch.Tensor | None = None  # device counters since the last log
        self._n_steps: torch.Tensor | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            _check_strategy(trainer, type(self).__name__)
            self._reset_counters()
            self._reset_fit_state(pl_module)

    def _reset_fit_state(self, pl_module: pl.LightningModule) -> None:
        pass

    def _clip(self, params: list[torch.Tensor], pl_module: pl.LightningModule) -> ClipResult:
        raise NotImplementedError

    def _excluded(self, pl_module: pl.LightningModule) -> set[int]:
        return set()

    def _extra_logs(self) -> dict[str, torch.Tensor]:
        return {}

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        excluded = self._excluded(pl_module)
        params, skipped = [], []
        for group in optimizer.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    (skipped if id(p) in excluded else params).append(p)
        result = self._clip(params, pl_module)
        finite = torch.isfinite(result.norm_before)  # GradScaler skips non-finite steps
        if self._n_clipped is None:
            self._n_clipped = torch.zeros((), device=finite.device)
            self._n_steps = torch.zeros((), device=finite.device)
        self._n_clipped += (result.clipped & finite).float()
        self._n_steps += finite.float()
        logging = trainer._logger_connector.should_update_logs or trainer.fast_dev_run
        if not (logging and trainer.loggers):
            return
        before, after = result.norm_before, result.norm_after
        if skipped:  # the excluded gradients are unchanged: fold their norm in
            rest = total_norm([p.grad for p in skipped], self.norm_type)
            before = combine_norms(before, rest, self.norm_type)
            after = combine_norms(after, rest, self.norm_type)
        metrics = {
            f"{self.prefix}/grad_norm_pre_clip": before,
            f"{self.prefix}/grad_norm_post_clip": after,
            f"{self.prefix}/clipped_fraction": self._n_clipped / self._n_steps.clamp(min=1.0),
            **self._extra_logs(),
        }
        for key, value in metrics.items():
            pl_module.log(key, value.detach().float(), on_step=True, on_epoch=False, batch_size=1)
        self._reset_counters()


class AdaptiveGradientClipping(_ClippingCallback):
    """Adaptive gradient clipping (AGC, Brock et al. 2021): clip each unit's gradient
    relative to the norm of its weights, as NFNets do.

    Runs :func:`~lightning_tricks.functional.adaptive_clip_grad_` on the unscaled,
    all-reduced gradients of every optimizer step. On logging steps it logs
    ``agc/grad_norm_pre_clip``, ``agc/grad_norm_post_clip`` (whole model) and
    ``agc/clipped_fraction`` (share of optimizer steps since the last log where a unit
    was clipped, steps skipped by ``GradScaler`` left out); other steps do not sync.

    Args:
        clip_factor: the threshold λ: a unit's gradient norm is kept below
            ``clip_factor * max(||W||, eps)``. The paper uses 0.01 at batch size 4096,
            larger values for smaller batches.
        eps: lower bound of the weight norm.
        norm_type: order of the unit-wise norms.
        skip_classifier: leave the final classifier out, as the paper does: the module
            returned by the model's ``get_classifier()`` (timm convention) if it has one,
            else the last ``nn.Linear`` registered in the model.
        exclude: further parameter-name prefixes to leave out (e.g. ``["head"]``).

    Raises:
        ValueError: for a bad argument, or (in ``setup``) if ``exclude`` names nothing.
        MisconfigurationException: with a strategy that shards gradients (FSDP, DeepSpeed).

    Example:
        >>> import lightning as L
        >>> trainer = L.Trainer(callbacks=[AdaptiveGradientClipping(clip_factor=0.02)], logger=False)
    """

    prefix = "agc"

    def __init__(
        self,
        clip_factor: float = 0.01,
        eps: float = 1e-3,
        norm_type: float = 2.0,
        skip_classifier: bool = True,
        exclude: Sequence[str] = (),
    ) -> None:
        self.clip_factor = check_number("clip_factor", clip_factor, minimum=0.0, exclusive_minimum=True)
        self.eps = check_number("eps", eps, minimum=0.0, exclusive_minimum=True)
        self.skip_classifier = check_bool("skip_classifier", skip_classifier)
        self.exclude = check_str_sequence("exclude", exclude, allow_empty=True)
        super().__init__(norm_type)
        self._excluded_ids: set[int] = set()

    def _reset_fit_state(self, pl_module: pl.LightningModule) -> None:
        names: list[str] = []
        named = dict(pl_module.named_parameters())
        for prefix in self.exclude:
            hits = [n for n in named if n == prefix or n.startswith(prefix + ".")]
            if not hits:
                raise ValueError(
                    f"`exclude` entry {prefix!r} names no parameter or module of"
                    f" {type(pl_module).__name__}; top-level modules: "
                    + ", ".join(n for n, _ in pl_module.named_children())
                )
            names += hits
        if self.skip_classifier:
            classifier = _find_classifier(pl_module)
            if classifier is not None:
                ids = {id(p) for p in classifier.parameters()}
                names += [n for n, p in named.items() if id(p) in ids]
        self._excluded_ids = {id(named[n]) for n in names}
        if names:
            rank_zero_info(f"AdaptiveGradientClipping leaves out: {', '.join(sorted(set(names)))}")

    def _excluded(self, pl_module: pl.LightningModule) -> set[int]:
        return self._excluded_ids

    def _clip(self, params: list[torch.Tensor], pl_module: pl.LightningModule) -> ClipResult:
        return adaptive_clip_grad_(params, self.clip_factor, self.eps, self.norm_type)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_excluded_ids"] = set()  # ids are per process; recomputed in setup
        return state


def _find_classifier(module: torch.nn.Module) -> torch.nn.Module | None:
    get = getattr(module, "get_classifier", None)
    if callable(get):
        found = get()
        if isinstance(found, torch.nn.Module):
            return found
    linears = [m for m in module.modules() if isinstance(m, torch.nn.Linear)]
    return linears[-1] if linears else None


class AutoClip(_ClippingCallback):
    """AutoClip (Seetharaman et al. 2020): clip the gradient norm to a percentile of the
    gradient norms seen so far.

    Runs an :class:`~lightning_tricks.functional.AutoClipper` on the unscaled,
    all-reduced gradients of every optimizer step. Norms of steps that ``GradScaler``
    skips (inf/NaN) are not recorded. The history is saved in checkpoints and, because
    DDP's gradients are identical on every rank, it is identical on every rank. On
    logging steps it logs ``autoclip/grad_norm_pre_clip``, ``autoclip/grad_norm_post_clip``,
    ``autoclip/clip_value`` and ``autoclip/clipped_fraction``; other steps do not sync.

    Args:
        percentile: percentile (0-100) of past gradient norms to clip to (paper: 10).
        history_size: keep the last ``history_size`` norms only; ``None`` keeps all.
        norm_type: order of the total gradient norm.

    Raises:
        ValueError: for a bad argument.
        MisconfigurationException: with a strategy that shards gradients (FSDP, DeepSpeed).

    Example:
        >>> import lightning as L
        >>> trainer = L.Trainer(callbacks=[AutoClip(percentile=10)], logger=False)
    """

    prefix = "autoclip"

    def __init__(
        self, percentile: float = 10.0, history_size: int | None = None, norm_type: float = 2.0
    ) -> None:
        self.percentile = check_number("percentile", percentile, minimum=0.0, maximum=100.0)
        self.history_size = check_optional_int("history_size", history_size, minimum=1)
        super().__init__(norm_type)
        self.clipper = AutoClipper(self.percentile, self.history_size, self.norm_type)

    @property
    def state_key(self) -> str:
        return self._generate_state_key(percentile=self.percentile, history_size=self.history_size)

    def _reset_fit_state(self, pl_module: pl.LightningModule) -> None:
        self.clipper.reset()  # a checkpoint, if any, is loaded after setup

    def _clip(self, params: list[torch.Tensor], pl_module: pl.LightningModule) -> ClipResult:
        return self.clipper.clip_(params)

    def _extra_logs(self) -> dict[str, torch.Tensor]:
        threshold = self.clipper.last_threshold
        return {} if threshold is None else {f"{self.prefix}/clip_value": threshold}

    def state_dict(self) -> dict[str, Any]:
        return {"clipper": self.clipper.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.clipper.load_state_dict(state_dict.get("clipper", {}))
