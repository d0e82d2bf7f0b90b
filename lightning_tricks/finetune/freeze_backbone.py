"""``FreezeBackbone``: freeze part of a model, optionally unfreeze it later (at once or gradually)."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any, Literal

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import Logger
from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from lightning.pytorch.utilities.rank_zero import rank_zero_info
from torch import nn

from lightning_tricks.functional._checks import (
    check_bool,
    check_choice,
    check_number,
    check_optional_int,
    check_str_sequence,
)
from lightning_tricks.functional.finetune.freeze import (
    _unfreeze,
    batchnorm_eval,
    freeze_modules,
    select_modules,
    unfreeze_units,
)
from lightning_tricks.functional.finetune.params import count_parameters
from lightning_tricks.functional.optim.param_groups import add_param_groups

__all__ = ["FreezeBackbone", "log_parameter_counts"]


def log_parameter_counts(model: nn.Module, loggers: Logger | Sequence[Logger]) -> dict[str, int]:
    """Log total, trainable and frozen parameter counts to the loggers' hyperparameters.

    Args:
        model: the model to count (see :func:`lightning_tricks.functional.count_parameters`).
        loggers: one Lightning logger or several (e.g. ``trainer.loggers``).

    Returns:
        The counts that were logged, as ``params/total``, ``params/trainable``, ``params/frozen``.

    Example:
        >>> from lightning.pytorch.loggers import CSVLogger
        >>> from torch import nn
        >>> log_parameter_counts(nn.Linear(3, 2), CSVLogger("logs"))
        {'params/total': 8, 'params/trainable': 8, 'params/frozen': 0}
    """
    counts = {f"params/{k}": v for k, v in count_parameters(model).items()}
    for logger in [loggers] if isinstance(loggers, Logger) else list(loggers):
        logger.log_hyperparams(counts)
    return counts


class FreezeBackbone(Callback):
    """Freeze a backbone for fine-tuning and optionally unfreeze it at an epoch.

    While frozen, the backbone's parameters have ``requires_grad=False`` and are in no
    optimizer group, so nothing changes them: no gradient, momentum or weight decay.
    With ``train_bn=False`` its BatchNorm layers also stay in eval mode (running
    statistics frozen), although Lightning calls ``model.train()`` every epoch.

    At ``unfreeze_at_epoch`` the backbone becomes trainable, all at once or gradually
    (one more child block per epoch, starting at the output end; blocks without
    parameters are unfrozen with the next one, see
    :func:`lightning_tricks.functional.unfreeze_units`). The unfrozen
    parameters join the first optimizer as new parameter groups that copy the
    hyperparameters of its first group with the largest weight decay (the "head"
    group) and follow its learning rate at a fixed ratio, also when it is 0 at that
    moment (a warm-up from 0); every LR scheduler of that optimizer is extended to the
    new groups (see :func:`lightning_tricks.functional.add_param_groups`).
    If the LightningModule has ``split_param_group(group)`` (e.g. the ``NoBiasDecay``
    mixin), the new groups are split with it. Under DDP the model is re-wrapped after
    unfreezing, so that the new parameters' gradients are all-reduced and all ranks stay
    identical. The number of unfrozen blocks is saved in checkpoints; resuming rebuilds
    the same groups before the optimizer state is loaded.

    Trainable and frozen parameter counts are logged (``params/trainable``,
    ``params/frozen``) whenever they change.

    Your ``configure_optimizers`` must leave frozen parameters out (``filter(lambda p:
    p.requires_grad, self.parameters())``); if it does not, they are moved into the new
    groups when unfrozen.

    Args:
        backbone: attribute path(s) or glob(s) over ``named_modules()`` to freeze.
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
        log_counts: log parameter counts whenever they change.

    Raises:
        ValueError: bad arguments; in ``setup``, a name that matches no submodule (the
            message lists the available ones), or a ``backbone`` that covers every
            trainable parameter (nothing would be left to train).
        MisconfigurationException: unfreezing under a strategy other than single-device
            or DDP (of ``lightning.pytorch`` or of the standalone ``pytorch_lightning``
            package, both supported).

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
        unfreeze_mode: Literal["all", "gradual"] = "all",
        backbone_lr: float | None = None,
        backbone_lr_factor: float = 0.1,
        train_bn: bool = False,
        log_counts: bool = True,
    ) -> None:
        self.backbone = check_str_sequence("backbone", backbone)
        self.unfreeze_at_epoch = check_optional_int("unfreeze_at_epoch", unfreeze_at_epoch, minimum=0)
        self.unfreeze_mode = check_choice("unfreeze_mode", unfreeze_mode, ("all", "gradual"))
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
        self._report(trainer, pl_module)

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
        while self._unfrozen < target:
            unit = self._units[self._unfrozen]
            params = _unfreeze(unit, pl_module.training)
            unit_bns = {id(m) for module in unit for m in module.modules()}
            self._bns = [bn for bn in self._bns if id(bn) not in unit_bns]
            if params and trainer.optimizers:
                self._add_to_optimizer(params, trainer, pl_module)
            self._unfrozen += 1
        _rewrap_ddp(trainer)
        self._report(trainer, pl_module)

    def _add_to_optimizer(
        self, params: list[nn.Parameter], trainer: pl.Trainer, pl_module: pl.LightningModule
    ) -> None:
        optimizer = trainer.optimizers[0]
        ids = {id(p) for p in params}
        for group in optimizer.param_groups:  # matched by identity, never by value
            if any(id(p) in ids for p in group["params"]):
                group["params"] = [p for p in group["params"] if id(p) not in ids]
        decays = [float(g.get("weight_decay", 0.0) or 0.0) for g in optimizer.param_groups]
        like = decays.index(max(decays))
        template = optimizer.param_groups[like]
        ratio = self._lr_ratio(template)
        group = {k: v for k, v in template.items() if k != "params"}
        group.update(params=params, lr=ratio * template["lr"])
        split = getattr(pl_module, "split_param_group", None)
        groups = split(group) if callable(split) else [group]
        # parts that keep the group's lr follow the head at ``ratio`` (which ``lr`` alone
        # cannot say when the head is at 0); a part with an lr of its own keeps it
        groups = [
            {k: v for k, v in g.items() if k != "lr"}
            if isinstance(g, dict) and g.get("lr") is group["lr"]
            else g
            for g in groups
        ]
        schedulers = [c.scheduler for c in trainer.lr_scheduler_configs if c.scheduler.optimizer is optimizer]
        add_param_groups(optimizer, groups, schedulers, like=like, ratio=ratio)

    def _lr_ratio(self, head: dict[str, Any]) -> float:
        """The unfrozen groups' learning rate as a multiple of the head group's, for good.

        ``backbone_lr`` is relative to the head's learning rate now or, when that is 0 (a
        warm-up from 0, a cosine at its end), to its base learning rate (the scheduler's
        ``initial_lr``): the backbone reaches ``backbone_lr`` when the head reaches its base.
        """
        if self.backbone_lr is None:
            return self.backbone_lr_factor
        ref = float(head["lr"]) or float(head.get("initial_lr", 0.0) or 0.0)
        if ref == 0.0:
            raise MisconfigurationException(
                f"FreezeBackbone: `backbone_lr`={self.backbone_lr} cannot follow the head group's "
                "learning rate, which is 0 and has no schedule; use `backbone_lr_factor` or give "
                "the head a non-zero learning rate"
            )
        return self.backbone_lr / ref

    def _report(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.log_counts:
            return
        counts = count_parameters(pl_module)
        if counts == self._last_counts:
            return
        self._last_counts = counts
        rank_zero_info(
            f"FreezeBackbone: {counts['trainable']:,} trainable and {counts['frozen']:,} frozen parameters"
        )
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics(
                    {
                        "params/trainable": float(counts["trainable"]),
                        "params/frozen": float(counts["frozen"]),
                    },
                    step=trainer.global_step,
                )


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
        strategy.model = strategy._setup_model(strategy.model.module)
        strategy._register_ddp_hooks()


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
