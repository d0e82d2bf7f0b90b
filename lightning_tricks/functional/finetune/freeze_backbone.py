"""Freeze and unfreeze submodules, and add unfrozen parameters to an optimizer.

The functional core of [`lightning_tricks.FreezeBackbone`][lightning_tricks.FreezeBackbone], which wires its hooks to
these functions: [`freeze_modules`][lightning_tricks.functional.freeze_modules] when the fit starts, [`set_train_mode`][lightning_tricks.functional.set_train_mode] (in a
hand-written loop; the callback keeps the frozen BatchNorm layers in eval mode itself),
[`unfreeze_units`][lightning_tricks.functional.unfreeze_units] for gradual unfreezing, and [`unfreeze_into_optimizer`][lightning_tricks.functional.unfreeze_into_optimizer], which
makes modules trainable and adds their parameters to an optimizer at a learning-rate
ratio with its schedulers extended to the new groups.

Modules are named by the library's one rule (qualified names, segment-wise globs where
``*`` stays within a dotted segment and ``**`` spans segments, class names or classes; a
lone string is one name). Parameters are always matched by identity (never by value,
unlike Lightning's ``BaseFinetuning.filter_on_optimizer``, which compares tensors with
``torch.equal``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, cast

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.optim import Optimizer

from lightning_tricks.functional._checks import (
    check_bool,
    check_module,
    check_number,
    check_optimizer,
    check_str,
    describe,
)
from lightning_tricks.functional._modules import ModuleSpec, name_entries, resolve_modules
from lightning_tricks.functional.optim.param_groups import _check_schedulers, add_param_groups

__all__ = [
    "batchnorm_eval",
    "freeze_modules",
    "select_modules",
    "set_train_mode",
    "unfreeze_into_optimizer",
    "unfreeze_modules",
    "unfreeze_units",
]

# Marks a BatchNorm layer whose running statistics ``freeze_modules`` froze; read by
# ``set_train_mode`` and cleared by ``unfreeze_modules``. A plain attribute (no patched
# method), so it survives pickling and ``deepcopy`` and changes nothing else.
_FROZEN_BN = "_lightning_tricks_frozen_bn"


def select_modules(
    model: nn.Module, names: ModuleSpec = "backbone", *, arg: str = "names"
) -> dict[str, nn.Module]:
    """Resolve module names by the library's one rule, entries in the order given.

    A thin wrapper over the shared resolver: each entry is a qualified name
    (``"backbone.blocks"``), a glob over the names of ``named_modules()`` matched one
    dotted segment at a time (``*`` stays within a segment, ``**`` spans any number of
    segments), a class name (``"BatchNorm2d"``) or a class. A lone string is one entry.

    Args:
        model: the root module.
        names: one entry or several.
        arg: the argument name used in error messages.

    Returns:
        Selected modules by qualified name: entries in the order given, each entry's
        matches in ``named_modules()`` order, every module once.

    Raises:
        TypeError: ``model`` is not a module, ``names`` not a name, a class or a
            sequence of them.
        ValueError: an entry that selects no submodule; the message lists the available
            ones and suggests near names.

    Example:
        >>> from torch import nn
        >>> net = nn.Sequential()
        >>> net.add_module("backbone", nn.Sequential(nn.Linear(2, 2), nn.ReLU()))
        >>> list(select_modules(net, ["backbone.0", "backbone.*"]))
        ['backbone.0', 'backbone.1']
        >>> list(select_modules(net, "ReLU"))
        ['backbone.1']
    """
    model = check_module("model", model)
    arg = check_str("arg", arg)
    selected: dict[str, nn.Module] = {}
    for entry in name_entries(arg, names):
        for name, module in resolve_modules(model, entry, arg).items():
            selected.setdefault(name, module)
    return selected


def _params(modules: Sequence[nn.Module]) -> list[nn.Parameter]:
    seen: set[int] = set()
    out = []
    for module in modules:
        for p in module.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                out.append(p)
    return out


def _check_modules(name: str, value: Any) -> list[nn.Module]:
    """A module (one entry) or a sequence of modules, as a list."""
    if isinstance(value, nn.Module):
        return [value]
    if not isinstance(value, Sequence) or isinstance(value, str | bytes):
        raise TypeError(f"`{name}` must be a module or a sequence of modules; got {describe(value)}")
    for m in value:
        check_module(f"{name}[...]", m)
    return list(value)


def batchnorm_eval(modules: Sequence[nn.Module]) -> list[nn.Module]:
    """Put every BatchNorm layer inside ``modules`` in eval mode (frozen running statistics).

    Call it again after ``model.train()``, which switches them back.

    Args:
        modules: modules to search (one module is one entry).

    Returns:
        The BatchNorm layers found.

    Raises:
        TypeError: ``modules`` is not a module or a sequence of modules.

    Example:
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
        >>> print([bn.training for bn in batchnorm_eval([net])])
        [False]
    """
    modules = _check_modules("modules", modules)
    bns: list[nn.Module] = [m for module in modules for m in module.modules() if isinstance(m, _BatchNorm)]
    for bn in bns:
        bn.eval()
    return bns


def freeze_modules(
    model: nn.Module, names: ModuleSpec = "backbone", *, train_bn: bool = False
) -> list[nn.Parameter]:
    """Freeze the selected submodules: ``requires_grad=False`` and, unless ``train_bn``,
    BatchNorm layers in eval mode.

    Frozen parameters get no gradient, so optimizers skip them entirely (no momentum, no
    weight decay). ``model.train()`` puts every BatchNorm layer back in training mode; in a
    hand-written loop call [`set_train_mode`][lightning_tricks.functional.set_train_mode] instead, which keeps the BatchNorm layers
    frozen here in eval mode (the ``FreezeBackbone`` callback does it for you).

    Args:
        model: the root module.
        names: qualified names, globs, class names or classes, see [`select_modules`][lightning_tricks.functional.select_modules].
        train_bn: leave BatchNorm layers in training mode (running statistics update).

    Returns:
        The parameters that were trainable and are now frozen.

    Raises:
        TypeError: ``model`` is not a module, or ``names`` not names.
        ValueError: an unknown name.

    Example:
        >>> from lightning_tricks.functional.finetune.parameter_counts import count_parameters
        >>> from torch import nn
        >>> net = nn.Module()
        >>> net.backbone, net.head = nn.Linear(4, 4), nn.Linear(4, 2)
        >>> len(freeze_modules(net))
        2
        >>> count_parameters(net)["frozen"]
        20
    """
    train_bn = check_bool("train_bn", train_bn)
    modules = list(select_modules(model, names).values())
    frozen = [p for p in _params(modules) if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
        p.grad = None
    if not train_bn:
        for bn in batchnorm_eval(modules):
            setattr(bn, _FROZEN_BN, True)
    return frozen


def set_train_mode(model: nn.Module, mode: bool = True) -> nn.Module:
    """``model.train(mode)`` that leaves the BatchNorm layers frozen by [`freeze_modules`][lightning_tricks.functional.freeze_modules]
    in eval mode.

    ``model.train()`` switches every BatchNorm layer back to training mode, so a frozen
    backbone's running statistics would drift with every batch. Call this at the start of
    each training epoch of a hand-written (or Fabric) loop instead; [`unfreeze_modules`][lightning_tricks.functional.unfreeze_modules]
    gives the layers back to the model's mode.

    Args:
        model: the root module (a Fabric-wrapped module works too).
        mode: training mode (``True``) or eval mode (``False``, same as ``model.eval()``).

    Returns:
        ``model``, like ``nn.Module.train``.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``.

    Example:
        >>> from torch import nn
        >>> net = nn.Module()
        >>> net.backbone = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
        >>> net.head = nn.Sequential(nn.Linear(4, 2), nn.BatchNorm1d(2))
        >>> _ = freeze_modules(net, "backbone")
        >>> _ = set_train_mode(net)
        >>> net.backbone[1].training, net.head[1].training
        (False, True)
    """
    model = check_module("model", model)
    mode = check_bool("mode", mode)
    model.train(mode)
    if mode:
        for m in model.modules():
            if getattr(m, _FROZEN_BN, False) and isinstance(m, _BatchNorm):
                m.eval()
    return model


def unfreeze_modules(model: nn.Module, names: ModuleSpec = "backbone") -> list[nn.Parameter]:
    """Make the selected submodules trainable again and give BatchNorm back the model's mode.

    Args:
        model: the root module.
        names: qualified names, globs, class names or classes, see [`select_modules`][lightning_tricks.functional.select_modules].

    Returns:
        The parameters that were frozen and are now trainable (add these to the optimizer,
        e.g. with [`lightning_tricks.functional.add_param_groups`][lightning_tricks.functional.add_param_groups], or unfreeze with
        [`unfreeze_into_optimizer`][lightning_tricks.functional.unfreeze_into_optimizer], which does both).

    Raises:
        TypeError: ``model`` is not a module, or ``names`` not names.
        ValueError: an unknown name.

    Example:
        >>> from torch import nn
        >>> net = nn.Module()
        >>> net.backbone, net.head = nn.Linear(4, 4), nn.Linear(4, 2)
        >>> _ = freeze_modules(net)
        >>> print([tuple(p.shape) for p in unfreeze_modules(net)])
        [(4, 4), (4,)]
    """
    modules = list(select_modules(model, names).values())
    return _unfreeze(modules, model.training)


def _unfreeze(modules: Sequence[nn.Module], training: bool) -> list[nn.Parameter]:
    thawed = [p for p in _params(modules) if not p.requires_grad]
    for p in thawed:
        p.requires_grad_(True)
    for module in modules:
        for m in module.modules():
            if isinstance(m, _BatchNorm):
                m.train(training)
                if hasattr(m, _FROZEN_BN):
                    delattr(m, _FROZEN_BN)
    return thawed


def unfreeze_units(
    modules: nn.Module | Sequence[nn.Module], names: ModuleSpec | None = None
) -> list[nn.Module]:
    """The units of gradual unfreezing, top (output end) first.

    The units are the child blocks of each selected module, last child first, modules
    listed later first; a module with no children is a unit as a whole, and parameters
    owned by a module itself go with its first child (the last of its units to be
    unfrozen). Every unit holds parameters: a parameter-free block (a pooling layer, an
    activation, dropout, or a block whose parameters are all tied to an earlier unit's)
    is merged into the next unit, or into the previous one at the end, so that each
    step of gradual unfreezing trains something new.

    Args:
        modules: the frozen modules, in input-to-output order; or, with ``names``, the
            root model.
        names: the frozen modules by name (qualified names, globs, class names or
            classes, see [`select_modules`][lightning_tricks.functional.select_modules]), resolved in ``modules``.

    Returns:
        The modules to unfreeze one per step; a step unfreezes the unit's parameters.

    Raises:
        TypeError: ``modules`` is not a sequence of modules (or, with ``names``, not a
            module).
        ValueError: a name that selects no submodule.

    Example:
        >>> from torch import nn
        >>> body = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 2), nn.Dropout())
        >>> units = unfreeze_units([body])
        >>> print([sorted(type(m).__name__ for m in u.modules() if m in body.children()) for u in units])
        [['Dropout', 'Linear'], ['Linear', 'ReLU']]
        >>> net = nn.Module()
        >>> net.backbone = body
        >>> print([sorted(type(m).__name__ for m in u.modules() if m in body.children())
        ...        for u in unfreeze_units(net, "backbone")])
        [['Dropout', 'Linear'], ['Linear', 'ReLU']]
    """
    if names is not None:
        if not isinstance(modules, nn.Module):
            raise TypeError(
                f"`modules` must be the root module when `names` is given; got {describe(modules)}"
            )
        modules = list(select_modules(modules, names).values())
    if (
        isinstance(modules, nn.Module)
        or not isinstance(modules, Sequence)
        or isinstance(modules, str | bytes)
    ):
        raise TypeError(f"`modules` must be a sequence of modules; got {describe(modules)}")
    if not all(isinstance(m, nn.Module) for m in modules):
        raise TypeError(f"`modules` must be a sequence of modules; got {[type(m).__name__ for m in modules]}")
    raw: list[tuple[list[nn.Module], list[nn.Parameter]]] = []  # (blocks, own parameters)
    for module in reversed(list(modules)):
        children = list(module.children())
        own = list(module.parameters(recurse=False))
        if not children:
            raw.append(([module], []))
            continue
        raw.extend(([child], []) for child in reversed(children))
        if own:  # parameters owned by the container itself go with its first child
            raw[-1] = (raw[-1][0], own)
    # merge units that bring no new parameter into the next one (the previous one at the end)
    seen: set[int] = set()
    merged: list[tuple[list[nn.Module], list[nn.Parameter]]] = []
    pending: tuple[list[nn.Module], list[nn.Parameter]] = ([], [])
    for blocks, own in raw:
        pending = (pending[0] + blocks, pending[1] + own)
        new = {id(p) for p in _params(pending[0]) + pending[1]} - seen
        if new:
            seen |= new
            merged.append(pending)
            pending = ([], [])
    if pending[0]:
        if merged:
            merged[-1] = (merged[-1][0] + pending[0], merged[-1][1] + pending[1])
        else:
            merged.append(pending)
    return [blocks[0] if len(blocks) == 1 and not own else _Unit(blocks, own) for blocks, own in merged]


class _Unit(nn.Module):
    """A unit of gradual unfreezing made of several blocks and/or parameters owned by their parent."""

    def __init__(self, blocks: list[nn.Module], own: list[nn.Parameter]):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.own = nn.ParameterList(own)


def _lr_ratio(template: dict[str, Any], lr: float | None, lr_factor: float) -> float:
    """The new groups' learning rate as a multiple of the template group's, for good.

    ``lr`` is relative to the template's learning rate now or, when that is 0 (a warm-up
    from 0, a cosine at its end), to its base learning rate (the scheduler's
    ``initial_lr``): the new groups reach ``lr`` when the template reaches its base.
    """
    if lr is None:
        return lr_factor
    ref = float(template["lr"]) or float(template.get("initial_lr", 0.0) or 0.0)
    if ref == 0.0:
        raise ValueError(
            f"`lr`={lr} cannot follow the learning rate of the template group (the one with the "
            "largest weight decay), which is 0 and has no schedule; use `lr_factor` or give that "
            "group a non-zero learning rate"
        )
    return lr / ref


def _as_modules(model: nn.Module, modules: ModuleSpec | nn.Module | Sequence[nn.Module]) -> list[nn.Module]:
    if isinstance(modules, nn.Module):
        return [modules]
    if (
        isinstance(modules, Sequence)
        and not isinstance(modules, str)
        and modules
        and all(isinstance(m, nn.Module) for m in modules)
    ):
        return list(cast("Sequence[nn.Module]", modules))
    return list(select_modules(model, cast(ModuleSpec, modules), arg="modules").values())


def unfreeze_into_optimizer(
    model: nn.Module,
    modules: ModuleSpec | nn.Module | Sequence[nn.Module] = "backbone",
    optimizer: Optimizer | None = None,
    schedulers: Iterable[Any] = (),
    *,
    lr: float | None = None,
    lr_factor: float = 0.1,
    split: Callable[[dict[str, Any]], list[dict[str, Any]]] | None = None,
) -> list[nn.Parameter]:
    """Unfreeze modules and add their parameters to ``optimizer``, schedules intact.

    The entry point of [`lightning_tricks.FreezeBackbone`][lightning_tricks.FreezeBackbone]'s unfreezing. The
    parameters that were frozen become trainable (BatchNorm layers get the model's mode
    back, see [`unfreeze_modules`][lightning_tricks.functional.unfreeze_modules]) and join ``optimizer`` as new groups that copy the
    hyperparameters of its first group with the largest weight decay (the "head" group,
    the template) and follow its learning rate at a fixed ratio, also when it is 0 at
    that moment (a warm-up from 0). Every scheduler in ``schedulers`` is extended to the
    new groups (see [`lightning_tricks.functional.add_param_groups`][lightning_tricks.functional.add_param_groups]). Parameters that
    are already in a group of ``optimizer`` are moved, never duplicated (matched by
    identity).

    Under DDP, wrap the model again afterwards: ``DistributedDataParallel`` registers only
    the parameters that required grad when it was built.

    Args:
        model: the root module (its training mode is given back to unfrozen BatchNorm
            layers).
        modules: the modules to unfreeze: names resolved in ``model`` (qualified names,
            globs, class names or classes, see [`select_modules`][lightning_tricks.functional.select_modules]), or the modules
            themselves (e.g. a unit of [`unfreeze_units`][lightning_tricks.functional.unfreeze_units]).
        optimizer: the optimizer to extend; ``None`` only unfreezes.
        schedulers: every LR scheduler attached to ``optimizer``.
        lr: learning rate of the new groups now; they then follow the template's schedule
            at that ratio. If the template's learning rate is 0 now, ``lr`` is taken
            relative to its base learning rate (its scheduler's ``initial_lr``).
        lr_factor: used when ``lr`` is ``None``: the new groups' learning rate is this
            factor times the template's, at every step.
        split: splits the new group into parts (e.g. decay and no-decay, like
            ``NoBiasDecay.split_param_group`` or
            [`lightning_tricks.functional.split_by_weight_decay`][lightning_tricks.functional.split_by_weight_decay]); a part that keeps
            the group's ``lr`` follows the template at the ratio, a part with an ``lr`` of
            its own keeps it.

    Returns:
        The parameters that were frozen and are now trainable.

    Raises:
        TypeError: ``model`` is not a module, ``optimizer`` not an optimizer, ``split`` not
            a function (or its groups not valid groups), or a scheduler whose per-group
            state cannot be extended.
        ValueError: a name that selects no submodule; ``lr``/``lr_factor`` not positive;
            ``lr`` while the template's learning rate is 0 and has no schedule. On any
            error the model and the optimizer are left as they were.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> net = nn.Module()
        >>> net.backbone, net.head = nn.Linear(4, 4), nn.Linear(4, 2)
        >>> _ = freeze_modules(net, "backbone")
        >>> opt = torch.optim.AdamW(net.head.parameters(), lr=1e-3, weight_decay=0.05)
        >>> sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.5**step)
        >>> len(unfreeze_into_optimizer(net, "backbone", opt, [sched], lr_factor=0.1))
        2
        >>> opt.step()
        >>> sched.step()
        >>> print([round(g["lr"], 6) for g in opt.param_groups])
        [0.0005, 5e-05]
    """
    model = check_module("model", model)
    if lr is not None:
        lr = check_number("lr", lr, minimum=0.0, exclusive_minimum=True)
    lr_factor = check_number("lr_factor", lr_factor, minimum=0.0, exclusive_minimum=True)
    if optimizer is not None:
        optimizer = check_optimizer("optimizer", optimizer)
    if split is not None and (not callable(split) or isinstance(split, nn.Module)):
        raise TypeError(f"`split` must be a function group -> list of groups, or None; got {describe(split)}")
    mods = _as_modules(model, modules)
    like, ratio = 0, lr_factor
    if optimizer is not None:  # everything is checked before anything changes
        schedulers = _check_schedulers(optimizer, schedulers)
        decays = [float(g.get("weight_decay", 0.0) or 0.0) for g in optimizer.param_groups]
        like = decays.index(max(decays))
        ratio = _lr_ratio(optimizer.param_groups[like], lr, lr_factor)
    # What may still fail (the user's `split`, the new groups) runs after the unfreezing it
    # needs: on failure, the model and the optimizer are put back as they were.
    bn_modes = [(m, m.training, getattr(m, _FROZEN_BN, None)) for mod in mods for m in mod.modules()]
    groups_before = [] if optimizer is None else [(g, list(g["params"])) for g in optimizer.param_groups]
    n_groups = 0 if optimizer is None else len(optimizer.param_groups)
    thawed = _unfreeze(mods, model.training)
    if optimizer is None or not thawed:
        return thawed
    try:
        ids = {id(p) for p in thawed}
        for group in optimizer.param_groups:  # matched by identity, never by value
            if any(id(p) in ids for p in group["params"]):
                group["params"] = [p for p in group["params"] if id(p) not in ids]
        template = optimizer.param_groups[like]
        group = {k: v for k, v in template.items() if k != "params"}
        group.update(params=thawed, lr=ratio * template["lr"])
        parts = split(group) if split is not None else [group]
        if not isinstance(parts, Sequence) or isinstance(parts, str | bytes | Mapping):
            raise TypeError(f"`split` must return a list of group dicts; got {describe(parts)}")
        # parts that keep the group's lr follow the template at ``ratio`` (which ``lr`` alone
        # cannot say when the template is at 0); a part with an lr of its own keeps it
        parts = [
            {k: v for k, v in p.items() if k != "lr"}
            if isinstance(p, dict) and p.get("lr") is group["lr"]
            else p
            for p in parts
        ]
        add_param_groups(optimizer, parts, schedulers, like=like, ratio=ratio)
    except BaseException:
        del optimizer.param_groups[n_groups:]
        for g, params in groups_before:
            g["params"] = params
        for p in thawed:
            p.requires_grad_(False)
        for m, training, flag in bn_modes:
            m.train(training)
            if flag is not None:
                setattr(m, _FROZEN_BN, flag)
        raise
    return thawed
