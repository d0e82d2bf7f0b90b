"""``FreezeBackbone``: freeze part of a model, optionally unfreeze it later (at once or gradually).

The callback decides when to freeze and unfreeze, on which rank to log and what; the work
is done by the functional core in `lightning_tricks.functional.finetune.freeze_backbone`
([`freeze_modules`][lightning_tricks.functional.freeze_modules] when the fit starts,
[`unfreeze_units`][lightning_tricks.functional.unfreeze_units] for gradual unfreezing, and
[`unfreeze_into_optimizer`][lightning_tricks.functional.unfreeze_into_optimizer] at each unfreezing step).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any, Literal, get_args

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from lightning.pytorch.utilities.rank_zero import rank_zero_info
from torch import nn

from lightning_tricks._compat import rewrap_ddp_model
from lightning_tricks._logging import log_scalars
from lightning_tricks.functional._checks import check_bool, check_choice, check_number, check_optional_int
from lightning_tricks.functional._modules import name_entries
from lightning_tricks.functional.finetune.freeze_backbone import (
    batchnorm_eval,
    freeze_modules,
    select_modules,
    unfreeze_into_optimizer,
    unfreeze_units,
)
from lightning_tricks.functional.finetune.parameter_counts import count_parameters

__all__ = ["FreezeBackbone"]

UnfreezeMode = Literal["all", "gradual"]


class FreezeBackbone(Callback):
    """Freeze a backbone for fine-tuning and optionally unfreeze it at an epoch.

    While frozen, the backbone's parameters have ``requires_grad=False`` and are in no
    optimizer group, so nothing changes them: no gradient, momentum or weight decay.
    With ``train_bn=False`` its BatchNorm layers also stay in eval mode (running
    statistics frozen), although Lightning calls ``model.train()`` every epoch.

    At ``unfreeze_at_epoch`` the backbone becomes trainable, all at once or gradually
    (one more child block per epoch, starting at the output end; blocks without
    parameters are unfrozen with the next one, see
    [`lightning_tricks.functional.unfreeze_units`][lightning_tricks.functional.unfreeze_units]). The unfrozen
    parameters join the first optimizer as new parameter groups that copy the
    hyperparameters of its first group with the largest weight decay (the "head"
    group) and follow its learning rate at a fixed ratio, also when it is 0 at that
    moment (a warm-up from 0); every LR scheduler of that optimizer is extended to the
    new groups (see [`lightning_tricks.functional.unfreeze_into_optimizer`][lightning_tricks.functional.unfreeze_into_optimizer], the
    functional entry point that does this). If the LightningModule has
    ``split_param_group(group)`` (e.g. the ``NoBiasDecay`` mixin), the new groups are
    split with it. Under DDP the model is re-wrapped after
    unfreezing, so that the new parameters' gradients are all-reduced and all ranks stay
    identical. The number of unfrozen blocks is saved in checkpoints; resuming rebuilds
    the same groups before the optimizer state is loaded.

    Trainable and frozen parameter counts are logged once per change, through
    ``LightningModule.log`` (so every logger, ``EarlyStopping`` and ``ModelCheckpoint``
    see them): ``freeze_backbone/params_trainable`` and ``freeze_backbone/params_frozen``,
    at the end of the first epoch and of every epoch in which unfreezing changed them.
    For the model's size in the hyperparameters, call
    [`lightning_tricks.log_parameter_counts`][lightning_tricks.log_parameter_counts] yourself (the callback does not).

    Your ``configure_optimizers`` must leave frozen parameters out (``filter(lambda p:
    p.requires_grad, self.parameters())``); if it does not, they are moved into the new
    groups when unfrozen.

    Args:
        backbone: the submodules to freeze: qualified names (``"backbone"``), globs over
            ``named_modules()`` (``"encoder.layer.*"``; ``*`` stays within a dotted
            segment, ``**`` spans segments), or class names (``"ResNetStage"``); a lone
            string is one name. Gradual unfreezing goes from the last entry to the first.
        unfreeze_at_epoch: epoch at which to start unfreezing; ``None`` keeps it frozen.
        unfreeze_mode: ``"all"`` at once, or ``"gradual"``: one child block per epoch.
        backbone_lr: learning rate of the unfrozen groups at the moment they are added;
            they then follow the head group's schedule at that ratio. If the head's
            learning rate is 0 at that moment (a warm-up from 0), ``backbone_lr`` is taken
            relative to the head's base learning rate (its scheduler's ``initial_lr``).
        backbone_lr_factor: used when ``backbone_lr`` is ``None``: the unfrozen groups'
            learning rate is this factor times the head group's, at every step (also
            when the head's learning rate is 0 at the moment of unfreezing).
        train_bn: let frozen BatchNorm layers update their running statistics.
        log_counts: log the trainable and frozen parameter counts whenever they change.

    Raises:
        ValueError: bad arguments; in ``setup``, a name that matches no submodule (the
            message lists the available ones), or a ``backbone`` that covers every
            trainable parameter (nothing would be left to train).
        MisconfigurationException: unfreezing under a strategy other than single-device
            or DDP (of ``lightning.pytorch`` or of the standalone ``pytorch_lightning``
            package, both supported); ``backbone_lr`` while the head group's learning
            rate is 0 and has no schedule.

    Example:
        >>> from lightning_tricks.finetune.freeze_backbone import FreezeBackbone
        >>> cb = FreezeBackbone("backbone", unfreeze_at_epoch=5, backbone_lr_factor=0.1)
        >>> cb.state_key
        "FreezeBackbone{'backbone': ('backbone',)}"
    """

    def __init__(
        self,
        backbone: str | Sequence[str] = "backbone",
        unfreeze_at_epoch: int | None = None,
        unfreeze_mode: UnfreezeMode = "all",
        backbone_lr: float | None = None,
        backbone_lr_factor: float = 0.1,
        train_bn: bool = False,
        log_counts: bool = True,
    ) -> None:
        self.backbone = name_entries("backbone", backbone)
        self.unfreeze_at_epoch = check_optional_int("unfreeze_at_epoch", unfreeze_at_epoch, minimum=0)
        self.unfreeze_mode = check_choice("unfreeze_mode", unfreeze_mode, get_args(UnfreezeMode))
        self.backbone_lr = (
            None
            if backbone_lr is None
            else check_number("backbone_lr", backbone_lr, minimum=0.0, exclusive_minimum=True)
        )
        self.backbone_lr_factor = check_number(
            "backbone_lr_factor", backbone_lr_factor, minimum=0.0, exclusive_minimum=True
        )
        self.train_bn = check_bool("train_bn", train_bn)
        self.log_counts = check_bool("log_counts", log_counts)
        self._unfrozen = 0  # number of units unfrozen so far (saved in checkpoints)
        self._units: list[list[nn.Module]] = []
        self._bns: list[nn.Module] = []
        self._last_counts: dict[str, int] | None = None
        self._recheck_bn = False

    @property
    def state_key(self) -> str:
        return self._generate_state_key(backbone=self.backbone)

    def state_dict(self) -> dict[str, Any]:
        return {"unfrozen_units": self._unfrozen}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._unfrozen = int(state_dict.get("unfrozen_units", 0))

    def params_frozen_at_setup(self, pl_module: pl.LightningModule) -> list[nn.Parameter]:
        """The parameters of ``pl_module`` this callback freezes when a fit sets up.

        Components that leave frozen parameters alone ([`WeightInit`][lightning_tricks.WeightInit])
        ask every callback for them, so they see the same frozen set whether they are listed
        before or after this one.

        Example:
            >>> from lightning_tricks.demos import ClassifierModule
            >>> model = ClassifierModule(arch="mlp")
            >>> len(FreezeBackbone("backbone").params_frozen_at_setup(model))
            4
        """
        modules = select_modules(pl_module, self.backbone, arg="backbone").values()
        unique = {id(p): p for m in modules for p in m.parameters()}  # what freeze_modules freezes
        return [p for p in unique.values() if p.requires_grad]

    # ------------------------------------------------------------------ hooks
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":  # trainer.test/validate/predict after a fit must not freeze again
            return
        modules = list(select_modules(pl_module, self.backbone, arg="backbone").values())
        if self.unfreeze_at_epoch is not None and not isinstance(
            trainer.strategy, _strategy_types("single") + _strategy_types("ddp")
        ):
            raise MisconfigurationException(
                f"FreezeBackbone cannot unfreeze under {type(trainer.strategy).__name__}; "
                "use a single-device or DDP strategy, or `unfreeze_at_epoch=None`"
            )
        selected = {id(p) for m in modules for p in m.parameters()}
        if not any(p.requires_grad and id(p) not in selected for p in pl_module.parameters()):
            value = self.backbone[0] if len(self.backbone) == 1 else list(self.backbone)
            children = ", ".join(n for n, _ in pl_module.named_children()) or "(none)"
            raise ValueError(
                f"`backbone`={value!r} covers every trainable parameter of "
                f"{type(pl_module).__name__}: nothing would be left to train while it is frozen "
                "(and the optimizer would get an empty parameter list); name the part to freeze, "
                f"not the whole model (its submodules: {children})"
            )
        self._unfrozen = 0
        self._last_counts = None
        freeze_modules(pl_module, self.backbone, train_bn=self.train_bn)
        self._bns = [] if self.train_bn else batchnorm_eval(modules)
        if self.unfreeze_mode == "all":
            self._units = [modules]
        else:
            self._units = [[unit] for unit in unfreeze_units(modules)]

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # resuming after (part of) the unfreezing: rebuild the groups before the
        # optimizer state is loaded (it is loaded after this hook).
        done, self._unfrozen = self._unfrozen, 0
        if done:
            self._unfreeze_to(done, trainer, pl_module)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        target = self._target(trainer.current_epoch)
        if target > self._unfrozen:
            self._unfreeze_to(target, trainer, pl_module)
        self._keep_bn_eval()
        self._log_counts(trainer, pl_module)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Lightning restores the train/eval modes after validation, but a user's
        # ``on_validation_model_train`` may call ``self.train()``: check once, on the next
        # training batch (not on every batch).
        self._recheck_bn = bool(self._bns)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        if self._recheck_bn:
            self._recheck_bn = False
            self._keep_bn_eval()

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._units, self._bns = [], []

    # ------------------------------------------------------------------ internals
    def _target(self, epoch: int) -> int:
        if self.unfreeze_at_epoch is None or epoch < self.unfreeze_at_epoch:
            return 0
        return min(len(self._units), epoch - self.unfreeze_at_epoch + 1)

    def _keep_bn_eval(self) -> None:
        for bn in self._bns:
            if bn.training:
                bn.eval()

    def _unfreeze_to(self, target: int, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        target = min(target, len(self._units))
        optimizer = trainer.optimizers[0] if trainer.optimizers else None
        schedulers = [c.scheduler for c in trainer.lr_scheduler_configs if c.scheduler.optimizer is optimizer]
        split = getattr(pl_module, "split_param_group", None)
        while self._unfrozen < target:
            unit = self._units[self._unfrozen]
            try:
                unfreeze_into_optimizer(
                    pl_module,
                    unit,
                    optimizer,
                    schedulers,
                    lr=self.backbone_lr,
                    lr_factor=self.backbone_lr_factor,
                    split=split if callable(split) else None,
                )
            except ValueError as err:  # the learning-rate arguments, named as the callback names them
                raise MisconfigurationException(
                    f"FreezeBackbone (`backbone_lr`={self.backbone_lr}, "
                    f"`backbone_lr_factor`={self.backbone_lr_factor}): {err}"
                ) from err
            unit_bns = {id(m) for module in unit for m in module.modules()}
            self._bns = [bn for bn in self._bns if id(bn) not in unit_bns]
            self._unfrozen += 1
        _rewrap_ddp(trainer)

    def _log_counts(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Log the counts when they changed (from a hook where ``LightningModule.log`` is allowed)."""
        if not self.log_counts:
            return
        counts = count_parameters(pl_module)
        if counts == self._last_counts:
            return
        self._last_counts = counts
        rank_zero_info(
            f"FreezeBackbone: {counts['trainable']:,} trainable and {counts['frozen']:,} frozen parameters"
        )
        # float64 keeps counts above 2**24 exact (MPS has no float64); the tensors are on the
        # module's device, as a sync under DDP needs: the counts are identical on every rank, so
        # that one all-reduce per change only spares Lightning's epoch-level warning
        device = pl_module.device
        dtype = torch.float32 if device.type == "mps" else torch.float64
        values = {
            f"params_{k}": torch.tensor(float(counts[k]), dtype=dtype, device=device)
            for k in ("trainable", "frozen")
        }
        log_scalars(pl_module, self, values, on_step=False, on_epoch=True, sync_dist=trainer.world_size > 1)


def _rewrap_ddp(trainer: pl.Trainer) -> None:
    """Wrap the model in a fresh ``DistributedDataParallel``.

    DDP registers only the parameters that require grad when it is built; parameters
    unfrozen later would get local gradients only, and the ranks would drift apart
    (pytorch-lightning #20340). A new wrapper registers them (and broadcasts rank 0's
    weights, which are identical anyway).
    """
    from torch.nn.parallel import DistributedDataParallel

    strategy = trainer.strategy
    if isinstance(strategy, _strategy_types("ddp")) and isinstance(strategy.model, DistributedDataParallel):
        rewrap_ddp_model(strategy)


def _strategy_types(kind: Literal["single", "ddp"]) -> tuple[type, ...]:
    """The single-device or DDP strategy classes of ``lightning.pytorch`` and, when the
    standalone ``pytorch_lightning`` package (a separate namespace with its own classes)
    is in use, of that package too.
    """
    name = "SingleDeviceStrategy" if kind == "single" else "DDPStrategy"
    types: list[type] = [SingleDeviceStrategy if kind == "single" else DDPStrategy]
    standalone = getattr(sys.modules.get("pytorch_lightning"), "strategies", None)
    if standalone is not None and isinstance(getattr(standalone, name, None), type):
        types.append(getattr(standalone, name))
    return tuple(types)
