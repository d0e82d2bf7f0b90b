"""Add or split optimizer parameter groups while keeping LR schedulers consistent.

``optimizer.add_param_group`` alone leaves every scheduler attached to the optimizer with
per-group lists (``base_lrs``, ``lr_lambdas``, ``min_lrs``, ...) one entry short, which
breaks LambdaLR, ReduceLROnPlateau and OneCycleLR (pytorch #62475, pytorch-lightning
#8720). The two functions here change the groups and the schedulers' per-group state
together. Every new group is derived from an existing *template* group: it follows the
same schedule, scaled by ``new lr / template lr``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer
from torch.optim import lr_scheduler as lrs

from lightning_tricks.functional._checks import (
    check_int,
    check_number,
    check_optimizer,
    check_param_groups,
    describe,
)

__all__ = ["add_param_groups", "split_param_groups"]

# Per-group lists kept by torch's schedulers: attribute -> scaled with the group's lr?
_LIST_ATTRS: dict[str, bool] = {
    "base_lrs": True,
    "_last_lr": True,
    "max_lrs": True,  # CyclicLR
    "min_lrs": True,  # ReduceLROnPlateau
    "lr_lambdas": False,  # LambdaLR, MultiplicativeLR
    "base_momentums": False,  # CyclicLR
    "max_momentums": False,  # CyclicLR
}
# Group keys that schedulers derive from the learning rate (scaled with it).
_LR_KEYS = ("initial_lr", "max_lr", "min_lr")

_SUPPORTED: tuple[type, ...] = (
    lrs.LambdaLR,
    lrs.MultiplicativeLR,
    lrs.StepLR,
    lrs.MultiStepLR,
    lrs.ConstantLR,
    lrs.LinearLR,
    lrs.ExponentialLR,
    lrs.PolynomialLR,
    lrs.CosineAnnealingLR,
    lrs.CosineAnnealingWarmRestarts,
    lrs.CyclicLR,
    lrs.OneCycleLR,
    lrs.ReduceLROnPlateau,
    lrs.SequentialLR,
    lrs.ChainedScheduler,
)


def _check_schedulers(optimizer: Optimizer, schedulers: Iterable[Any]) -> list[Any]:
    if isinstance(schedulers, str | bytes | Mapping) or not isinstance(schedulers, Iterable):
        raise TypeError(f"`schedulers` must be a sequence of LR schedulers; got {describe(schedulers)}")
    out = []
    for s in schedulers:
        if not isinstance(s, _SUPPORTED):
            names = ", ".join(c.__name__ for c in _SUPPORTED)
            raise TypeError(
                f"`schedulers` contains a {type(s).__name__}, whose per-group state cannot be "
                f"extended to new parameter groups; supported: {names}"
            )
        if isinstance(s, lrs.SequentialLR | lrs.ChainedScheduler):
            _check_schedulers(optimizer, s._schedulers)
        if getattr(s, "optimizer", optimizer) is not optimizer:
            raise ValueError(f"`schedulers`: the {type(s).__name__} belongs to another optimizer")
        out.append(s)
    return out


def _scale(value: Any, ratio: float) -> Any:
    if isinstance(value, torch.Tensor):
        return value * ratio
    return value * ratio if isinstance(value, float | int) else value


def _remap(optimizer: Optimizer, plan: Sequence[tuple[int, float, dict]], schedulers: list[Any]) -> None:
    """Make ``optimizer.param_groups`` the groups of ``plan``: (template index, lr ratio, group)."""
    old = optimizer.param_groups
    new_groups = []
    for src, ratio, group in plan:
        full = {k: v for k, v in old[src].items() if k != "params"}
        full.update({k: v for k, v in group.items() if k not in _LR_KEYS})
        for key in _LR_KEYS:
            if key in old[src]:
                full[key] = _scale(old[src][key], ratio)
        full["params"] = list(group["params"])
        new_groups.append(full)

    def fix(s: Any) -> None:
        if isinstance(s, lrs.SequentialLR | lrs.ChainedScheduler):
            for inner in s._schedulers:
                fix(inner)
        for attr, scaled in _LIST_ATTRS.items():
            values = getattr(s, attr, None)
            if not isinstance(values, list) or len(values) != len(old):
                continue
            setattr(s, attr, [_scale(values[src], r) if scaled else values[src] for src, r, _ in plan])

    for s in schedulers:
        fix(s)
    optimizer.param_groups[:] = new_groups


def add_param_groups(
    optimizer: Optimizer,
    groups: Sequence[dict[str, Any]],
    schedulers: Iterable[Any] = (),
    *,
    like: int = 0,
    ratio: float | None = None,
) -> list[int]:
    """Append parameter groups to ``optimizer`` and extend its LR schedulers to match.

    Each new group takes the hyperparameters it does not set from group ``like`` (the
    template) and follows the template's schedule scaled by ``lr / template lr``: its
    scheduler entries (``base_lrs``, OneCycleLR's ``initial_lr``/``max_lr``/``min_lr``,
    ReduceLROnPlateau's ``min_lrs``, CyclicLR's ``max_lrs``) are the template's times that
    ratio, and function lists (LambdaLR's ``lr_lambdas``) repeat the template's entry. So
    ``lr`` is the group's learning rate *now*, and schedulers keep stepping it.

    When the template's learning rate is 0 at the moment (a warm-up from 0, a cosine at
    its end), ``lr`` cannot express a ratio: pass ``ratio`` instead, and the groups without
    ``"lr"`` follow the template's schedule at ``ratio`` times its learning rate (from 0
    now). A group with ``"lr": 0`` under a template at 0 that has a schedule is refused
    rather than silently kept at 0 forever.

    Args:
        optimizer: the optimizer to extend (in place).
        groups: new groups, each a dict with ``"params"`` and optionally ``"lr"`` and other
            hyperparameters. Parameters are compared by identity.
        schedulers: every LR scheduler attached to ``optimizer``.
        like: index of the template group.
        ratio: the new groups' learning rate as a multiple of the template's, for the
            groups that do not set ``"lr"`` (their ``lr`` is ``ratio`` times the template's).

    Returns:
        The indices of the new groups.

    Raises:
        TypeError: ``optimizer`` is not an optimizer, ``groups`` not dicts with
            ``"params"`` holding tensors, or a scheduler whose per-group state cannot be
            extended.
        ValueError: ``like`` out of range, ``ratio`` not positive, a non-leaf or integer
            tensor, a NaN/inf/negative hyperparameter, a parameter already in the
            optimizer (or in two new groups), or a template with learning rate 0 and a new group with a
            non-zero one (without a schedule) or with 0 (with a schedule: give ``ratio``).

    Example:
        >>> import torch
        >>> a, b = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
        >>> opt = torch.optim.SGD(a.parameters(), lr=0.1, momentum=0.9)
        >>> sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda e: 0.5**e)
        >>> sched.step()
        >>> add_param_groups(opt, [{"params": b.parameters(), "lr": 0.01}], [sched])
        [1]
        >>> sched.step()
        >>> print([round(g["lr"], 4) for g in opt.param_groups])
        [0.025, 0.005]
        >>> warm = torch.optim.SGD(a.parameters(), lr=0.1)  # a warm-up: lr 0 at step 0
        >>> ramp = torch.optim.lr_scheduler.LambdaLR(warm, lambda step: min(step / 4, 1.0))
        >>> add_param_groups(warm, [{"params": b.parameters()}], [ramp], ratio=0.5)
        [1]
        >>> for _ in range(2):
        ...     ramp.step()
        >>> print([g["lr"] for g in warm.param_groups])
        [0.05, 0.025]
    """
    optimizer = check_optimizer("optimizer", optimizer)
    groups = check_param_groups("groups", groups)
    n = len(optimizer.param_groups)
    like = check_int("like", like, minimum=-n, maximum=n - 1) % n
    if ratio is not None:
        ratio = check_number("ratio", ratio, minimum=0.0, exclusive_minimum=True)
    schedulers = _check_schedulers(optimizer, schedulers)
    present = {id(p) for g in optimizer.param_groups for p in g["params"]}
    for i, group in enumerate(groups):
        if any(id(p) in present for p in group["params"]):
            raise ValueError(f"`groups[{i}]` holds a parameter that is already in the optimizer")
    template = optimizer.param_groups[like]
    plan: list[tuple[int, float, dict]] = [(i, 1.0, g) for i, g in enumerate(optimizer.param_groups)]
    for group in groups:
        if "lr" not in group:
            scale = 1.0 if ratio is None else float(ratio)
            group["lr"] = _scale(template["lr"], scale)
        else:
            lr, base = float(group["lr"]), float(template["lr"])
            if base == 0.0 and "initial_lr" in template:  # e.g. a warm-up that starts at 0
                base = float(template["initial_lr"])
                if lr == 0.0 and base != 0.0:
                    raise ValueError(
                        f"group {like} (`like`) has learning rate 0 now, so a new group with lr 0 "
                        "would stay at 0 for its whole schedule; leave out the group's 'lr' "
                        "and pass `ratio` (its learning rate as a multiple of the template's)"
                    )
            if base == 0.0 and lr != 0.0:
                raise ValueError(
                    f"group {like} (`like`) has learning rate 0, so a new group with lr {lr} "
                    "cannot follow its schedule; pick another `like`"
                )
            scale = lr / base if base else 1.0
        plan.append((like, scale, group))
    start = len(optimizer.param_groups)
    _remap(optimizer, plan, schedulers)
    return list(range(start, len(optimizer.param_groups)))


def split_param_groups(
    optimizer: Optimizer,
    split: Callable[[dict[str, Any]], list[dict[str, Any]]],
    schedulers: Iterable[Any] = (),
) -> None:
    """Replace every group of ``optimizer`` by the groups ``split(group)`` returns.

    The parts keep their group's learning rate schedule (scheduler lists are repeated per
    part, OneCycleLR's per-group keys copied) and every hyperparameter they do not
    override. Optimizer state is keyed by parameter, so it survives the split. A group
    for which ``split`` returns ``[]`` is removed.

    Args:
        optimizer: the optimizer to change (in place).
        split: maps a group dict to a list of group dicts (each with ``"params"``).
        schedulers: every LR scheduler attached to ``optimizer``.

    Raises:
        TypeError: ``optimizer`` is not an optimizer, ``split`` not a function or what it
            returns not a list of dicts with ``"params"`` holding tensors, or a scheduler
            whose per-group state cannot be extended.
        ValueError: ``split`` puts a parameter in two groups, or returns a non-leaf or
            integer tensor or a NaN/inf/negative hyperparameter.

    Example:
        >>> import torch
        >>> lin = torch.nn.Linear(2, 2)
        >>> opt = torch.optim.AdamW(lin.parameters(), lr=0.1, weight_decay=0.05)
        >>> def by_ndim(g):
        ...     return [{**g, "params": [p for p in g["params"] if p.ndim > 1]},
        ...             {**g, "params": [p for p in g["params"] if p.ndim <= 1], "weight_decay": 0.0}]
        >>> split_param_groups(opt, by_ndim)
        >>> print([(len(g["params"]), g["weight_decay"], g["lr"]) for g in opt.param_groups])
        [(1, 0.05, 0.1), (1, 0.0, 0.1)]
    """
    optimizer = check_optimizer("optimizer", optimizer)
    if not callable(split) or isinstance(split, nn.Module):
        raise TypeError(f"`split` must be a function group -> list of groups; got {describe(split)}")
    schedulers = _check_schedulers(optimizer, schedulers)
    plan: list[tuple[int, float, dict]] = []
    for i, group in enumerate(optimizer.param_groups):
        parts = split({**group, "params": list(group["params"])})  # the optimizer's group stays as it is
        if not isinstance(parts, Sequence) or isinstance(parts, str | bytes | Mapping):
            raise TypeError(f"`split` must return a list of group dicts; got {describe(parts)} for group {i}")
        for part in check_param_groups(f"split(group {i})", parts):
            plan.append((i, 1.0, {k: v for k, v in part.items() if k != "lr"}))
    ids = [id(p) for _, _, part in plan for p in part["params"]]
    if len(ids) != len(set(ids)):
        raise ValueError("`split` put a parameter in more than one group")
    _remap(optimizer, plan, schedulers)
