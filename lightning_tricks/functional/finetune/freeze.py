"""Freeze and unfreeze submodules selected by attribute path or glob pattern.

Parameters are always matched by identity (never by value, unlike Lightning's
``BaseFinetuning.filter_on_optimizer``, which compares tensors with ``torch.equal``).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from lightning_tricks.functional._checks import check_bool, check_str_sequence
from lightning_tricks.functional._modules import match_modules, unknown_module_error

__all__ = [
    "batchnorm_eval",
    "freeze_modules",
    "select_modules",
    "set_train_mode",
    "unfreeze_modules",
    "unfreeze_units",
]

# Marks a BatchNorm layer whose running statistics ``freeze_modules`` froze; read by
# ``set_train_mode`` and cleared by ``unfreeze_modules``. A plain attribute (no patched
# method), so it survives pickling and ``deepcopy`` and changes nothing else.
_FROZEN_BN = "_lightning_tricks_frozen_bn"


def select_modules(
    model: nn.Module, names: str | Sequence[str] = "backbone", *, arg: str = "names"
) -> dict[str, nn.Module]:
    """Resolve attribute paths (``"backbone.blocks"``) or globs (``"encoder.layer.*"``).

    Args:
        model: the root module.
        names: one name/pattern or several; globs match the names of ``named_modules()``
            one dotted segment at a time (``*`` stays within a segment, ``**`` spans any
            number of segments), the rule every trick shares.
        arg: the argument name used in error messages.

    Returns:
        Selected modules by qualified name, in ``named_modules()`` order for globs.

    Raises:
        ValueError: a name that resolves to no submodule; the message lists the
            available ones.

    Example:
        >>> from torch import nn
        >>> net = nn.Sequential()
        >>> net.add_module("backbone", nn.Sequential(nn.Linear(2, 2), nn.ReLU()))
        >>> list(select_modules(net, ["backbone.0", "backbone.*"]))
        ['backbone.0', 'backbone.1']
    """
    names = check_str_sequence(arg, names)
    selected: dict[str, nn.Module] = {}
    for name in names:
        hits = match_modules(model, name)
        if not hits:
            raise unknown_module_error(arg, name, model)
        selected.update((n, model.get_submodule(n)) for n in hits)
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


def batchnorm_eval(modules: Sequence[nn.Module]) -> list[nn.Module]:
    """Put every BatchNorm layer inside ``modules`` in eval mode (frozen running statistics).

    Call it again after ``model.train()``, which switches them back.

    Args:
        modules: modules to search.

    Returns:
        The BatchNorm layers found.

    Example:
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
        >>> print([bn.training for bn in batchnorm_eval([net])])
        [False]
    """
    bns = [m for module in modules for m in module.modules() if isinstance(m, _BatchNorm)]
    for bn in bns:
        bn.eval()
    return bns


def freeze_modules(
    model: nn.Module, names: str | Sequence[str] = "backbone", *, train_bn: bool = False
) -> list[nn.Parameter]:
    """Freeze the selected submodules: ``requires_grad=False`` and, unless ``train_bn``,
    BatchNorm layers in eval mode.

    Frozen parameters get no gradient, so optimizers skip them entirely (no momentum, no
    weight decay). ``model.train()`` puts every BatchNorm layer back in training mode; in a
    hand-written loop call :func:`set_train_mode` instead, which keeps the BatchNorm layers
    frozen here in eval mode (the ``FreezeBackbone`` callback does it for you).

    Args:
        model: the root module.
        names: attribute paths or globs, see :func:`select_modules`.
        train_bn: leave BatchNorm layers in training mode (running statistics update).

    Returns:
        The parameters that were trainable and are now frozen.

    Raises:
        ValueError: an unknown name.

    Example:
        >>> from lightning_tricks.functional.finetune.params import count_parameters
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
    """``model.train(mode)`` that leaves the BatchNorm layers frozen by :func:`freeze_modules`
    in eval mode.

    ``model.train()`` switches every BatchNorm layer back to training mode, so a frozen
    backbone's running statistics would drift with every batch. Call this at the start of
    each training epoch of a hand-written (or Fabric) loop instead; :func:`unfreeze_modules`
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
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be an nn.Module; got {type(model).__name__}")
    mode = check_bool("mode", mode)
    model.train(mode)
    if mode:
        for m in model.modules():
            if getattr(m, _FROZEN_BN, False) and isinstance(m, _BatchNorm):
                m.eval()
    return model


def unfreeze_modules(model: nn.Module, names: str | Sequence[str] = "backbone") -> list[nn.Parameter]:
    """Make the selected submodules trainable again and give BatchNorm back the model's mode.

    Args:
        model: the root module.
        names: attribute paths or globs, see :func:`select_modules`.

    Returns:
        The parameters that were frozen and are now trainable (add these to the optimizer,
        e.g. with :func:`lightning_tricks.functional.add_param_groups`).

    Raises:
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


def unfreeze_units(modules: Sequence[nn.Module]) -> list[nn.Module]:
    """The units of gradual unfreezing, top (output end) first.

    The units are the child blocks of each selected module, last child first, modules
    listed later first; a module with no children is a unit as a whole, and parameters
    owned by a module itself go with its first child (the last of its units to be
    unfrozen). Every unit holds parameters: a parameter-free block (a pooling layer, an
    activation, dropout, or a block whose parameters are all tied to an earlier unit's)
    is merged into the next unit, or into the previous one at the end, so that each
    step of gradual unfreezing trains something new.

    Args:
        modules: the frozen modules, in input-to-output order.

    Returns:
        The modules to unfreeze one per step; a step unfreezes the unit's parameters.

    Raises:
        TypeError: ``modules`` is not a sequence of modules.

    Example:
        >>> from torch import nn
        >>> body = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 2), nn.Dropout())
        >>> units = unfreeze_units([body])
        >>> print([sorted(type(m).__name__ for m in u.modules() if m in body.children()) for u in units])
        [['Dropout', 'Linear'], ['Linear', 'ReLU']]
    """
    if isinstance(modules, nn.Module) or not isinstance(modules, Sequence):
        raise TypeError(f"`modules` must be a sequence of modules; got {type(modules).__name__}")
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
