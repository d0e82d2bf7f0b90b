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

__all__ = ["batchnorm_eval", "freeze_modules", "select_modules", "unfreeze_modules", "unfreeze_units"]


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
    weight decay). Keep BatchNorm in eval mode after every ``model.train()`` with
    :func:`batchnorm_eval` (the ``FreezeBackbone`` callback does it for you).

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
        batchnorm_eval(modules)
    return frozen


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
    return thawed


def unfreeze_units(modules: Sequence[nn.Module]) -> list[nn.Module]:
    """The units of gradual unfreezing, top (output end) first.

    The units are the child blocks of each selected module, last child first, modules
    listed later first; a module with no children (or with parameters of its own) is a
    unit as a whole, unfrozen with its last child.

    Args:
        modules: the frozen modules, in input-to-output order.

    Returns:
        The modules to unfreeze one per step; a step unfreezes the unit's parameters.

    Example:
        >>> from torch import nn
        >>> body = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 2))
        >>> print([type(u).__name__ for u in unfreeze_units([body])])
        ['Linear', 'ReLU', 'Linear']
    """
    if isinstance(modules, nn.Module) or not isinstance(modules, Sequence):
        raise TypeError(f"`modules` must be a sequence of modules; got {type(modules).__name__}")
    units: list[nn.Module] = []
    for module in reversed(list(modules)):
        children = list(module.children())
        own = list(module.parameters(recurse=False))
        if not children:
            units.append(module)
            continue
        units.extend(reversed(children))
        if own:  # parameters owned by the container itself go with its first child
            units[-1] = _Pair(units[-1], own)
    return units


class _Pair(nn.Module):
    """A unit made of a child block plus parameters owned directly by its parent."""

    def __init__(self, child: nn.Module, own: list[nn.Parameter]):
        super().__init__()
        self.child = child
        self.own = nn.ParameterList(own)
