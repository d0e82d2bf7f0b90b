"""``NoBiasDecay``: no weight decay for biases and norm layers, with the user's own optimizer."""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from types import MethodType
from typing import Any, cast

from lightning.pytorch import LightningModule
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn

from lightning_tricks._base import LightningMixin
from lightning_tricks._compat import configure_optimizers_outputs
from lightning_tricks.functional._checks import check_bool
from lightning_tricks.functional._modules import resolve_parameters
from lightning_tricks.functional.optim.no_bias_decay import no_bias_decay_groups, split_by_weight_decay
from lightning_tricks.functional.optim.param_groups import split_param_groups

__all__ = ["NoBiasDecay"]

log = logging.getLogger(__name__)


def _wrap(fn: Any) -> Any:
    if getattr(fn, "_no_bias_decay_wrapped", False):
        return fn

    @functools.wraps(fn)
    def configure_optimizers(self: Any) -> Any:
        conf = fn(self)
        if conf is not None:
            self._apply_no_bias_decay(conf)
        return conf

    configure_optimizers._no_bias_decay_wrapped = True  # type: ignore[attr-defined]  # a marker on the function
    return configure_optimizers


def _instance_configure_optimizers(self: Any, *args: Any, **kwargs: Any) -> Any:
    """Bound on the instance in place of a ``configure_optimizers`` assigned to it
    (LightningCLI's ``--optimizer``): calls it, then splits the groups it built."""
    conf = self._no_bias_decay_replaced(*args, **kwargs)
    if conf is not None:
        self._apply_no_bias_decay(conf)
    return conf


_instance_configure_optimizers.__name__ = "configure_optimizers"  # bound methods pickle by name


class NoBiasDecay(LightningMixin):
    """LightningModule mixin: no weight decay for biases, 1-d parameters and norm layers.

    Keep writing ``configure_optimizers`` as usual, with any optimizer, any parameter
    groups and any LR scheduler. After it returns, every group with a non-zero weight
    decay is split into a no-decay part (``weight_decay=0``) and a decay part, in that
    order (timm's order, the same as [`parameter_groups`][lightning_tricks.NoBiasDecay.parameter_groups]); both keep
    the group's other hyperparameters (lr, betas, momentum, ...) and the schedulers'
    per-group state is extended to match (``base_lrs``, LambdaLR's ``lr_lambdas``,
    OneCycleLR's per-group values, ReduceLROnPlateau's ``min_lrs``). Frozen parameters
    are left out of the groups (``FreezeBackbone`` adds them when it unfreezes, through
    [`split_param_group`][lightning_tricks.NoBiasDecay.split_param_group]). The explicit alternative is [`parameter_groups`][lightning_tricks.NoBiasDecay.parameter_groups].

    A ``configure_optimizers`` set on the instance is split the same way: LightningCLI's
    ``--optimizer AdamW --optimizer.weight_decay 0.05`` (with or without
    ``--lr_scheduler``) replaces the method on the model, and the optimizer it builds
    gets the decay/no-decay groups too, its scheduler extended to match.

    Which parameters are not decayed: see
    [`lightning_tricks.functional.no_weight_decay_names`][lightning_tricks.functional.no_weight_decay_names] (biases, ``ndim <= 1``,
    normalization layers, the model's ``no_weight_decay()`` names, and optionally
    embeddings and further parameters or modules).

    Class attributes (set them on your subclass):
        no_decay_embeddings (bool): also exclude embedding weights. Default ``False``.
        no_decay_extra (str | Sequence[str]): further parameters or modules to exclude,
            by the package's naming rule: qualified names, segment-wise globs (``*``
            within one dotted segment, ``**`` across: ``"**.pos_embed"``), class names.
            Default ``()``. An entry that names nothing raises a ``ValueError`` with
            near-name suggestions.

    Example:
        >>> import lightning as L, torch
        >>> from torch import nn
        >>> class Model(NoBiasDecay, L.LightningModule):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.net = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4), nn.Linear(4, 2))
        ...     def configure_optimizers(self):
        ...         return torch.optim.AdamW(self.parameters(), lr=1e-3, weight_decay=0.05)
        >>> opt = Model().configure_optimizers()
        >>> print([(len(g["params"]), g["weight_decay"]) for g in opt.param_groups])
        [(4, 0.0), (2, 0.05)]
    """

    no_decay_embeddings: bool = False
    no_decay_extra: str | Sequence[str] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        fn = getattr(cls, "configure_optimizers", None)
        # Lightning's own stub is left alone, so `is_overridden` stays False for it
        if callable(fn) and fn is not LightningModule.configure_optimizers:
            cls.configure_optimizers = _wrap(fn)  # type: ignore[attr-defined]  # the mixin is only mixed into LightningModules

    def __setattr__(self, name: str, value: Any) -> None:
        # LightningCLI (`_add_configure_optimizers_method_to_model`) assigns its own
        # `configure_optimizers` to the instance, which bypasses the class-level wrapper
        if (
            name == "configure_optimizers"
            and callable(value)
            and getattr(value, "__func__", None) is not _instance_configure_optimizers
        ):
            super().__setattr__("_no_bias_decay_replaced", value)
            value = MethodType(_instance_configure_optimizers, self)
        super().__setattr__(name, value)

    def _no_decay_options(self) -> dict[str, Any]:
        model = cast(LightningModule, self)
        return {
            "embeddings": check_bool("no_decay_embeddings", self.no_decay_embeddings),
            # resolved here so that an error names the class attribute
            "extra": list(resolve_parameters(model, self.no_decay_extra, "no_decay_extra", allow_empty=True)),
        }

    def parameter_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        """The explicit path: ``[no-decay group, decay group]`` of the trainable parameters.

        Args:
            weight_decay: weight decay of the decayed group.

        Returns:
            Parameter groups for any ``torch.optim`` optimizer.

        Example:
            >>> import lightning as L, torch
            >>> class Model(NoBiasDecay, L.LightningModule):
            ...     def __init__(self):
            ...         super().__init__()
            ...         self.fc = torch.nn.Linear(3, 2)
            ...     def configure_optimizers(self):
            ...         return torch.optim.SGD(self.parameter_groups(1e-4), lr=0.1)
            >>> print([len(g["params"]) for g in Model().configure_optimizers().param_groups])
            [1, 1]
        """
        return no_bias_decay_groups(cast(LightningModule, self), weight_decay, **self._no_decay_options())

    def split_param_group(self, group: dict[str, Any]) -> list[dict[str, Any]]:
        """Split one parameter group into its no-decay part and decay part (in that order).

        The contract ``FreezeBackbone`` uses for parameters it unfreezes: the no-decay
        part gets ``weight_decay=0.0``, the decay part keeps the group's weight decay,
        both keep every other key, empty parts are dropped.

        Args:
            group: a parameter group dict.

        Returns:
            The non-empty parts.

        Example:
            >>> import lightning as L, torch
            >>> class Model(NoBiasDecay, L.LightningModule):
            ...     def __init__(self):
            ...         super().__init__()
            ...         self.fc = torch.nn.Linear(3, 2)
            >>> m = Model()
            >>> parts = m.split_param_group({"params": list(m.parameters()), "weight_decay": 0.1})
            >>> print([p["weight_decay"] for p in parts])
            [0.0, 0.1]
        """
        return split_by_weight_decay(group, cast(LightningModule, self), **self._no_decay_options())

    def _apply_no_bias_decay(self, conf: Any) -> None:
        optimizers, scheduler_confs, _ = configure_optimizers_outputs(conf)
        own = {id(p) for p in cast(LightningModule, self).parameters()}
        foreign = sum(id(p) not in own for opt in optimizers for g in opt.param_groups for p in g["params"])
        if foreign:
            rank_zero_warn(
                f"NoBiasDecay: {foreign} parameters in the optimizer are not parameters of this"
                f" {type(self).__name__} (was the optimizer built for another copy of the model?);"
                " they stay in their groups, decayed as configured"
            )
        schedulers = [s["scheduler"] if isinstance(s, dict) else s for s in scheduler_confs]
        for opt in optimizers:
            mine = [s for s in schedulers if getattr(s, "optimizer", None) is opt]
            split_param_groups(opt, self.split_param_group, mine)
        if not getattr(self, "_no_bias_decay_logged", False):
            self._no_bias_decay_logged = True
            counts = {"decay": [0, 0], "no_decay": [0, 0]}
            for opt in optimizers:
                for g in opt.param_groups:
                    key = "decay" if g.get("weight_decay", 0.0) else "no_decay"
                    counts[key][0] += len(g["params"])
                    counts[key][1] += sum(p.numel() for p in g["params"])
            rank_zero_info(
                f"NoBiasDecay: weight decay on {counts['decay'][0]} tensors ({counts['decay'][1]:,} "
                f"parameters), none on {counts['no_decay'][0]} tensors ({counts['no_decay'][1]:,} parameters)"
            )
