"""No weight decay for biases, normalization layers and other 1-d parameters.

Weight decay pulls weights towards zero to limit capacity; applied to biases, norm
gains/shifts, positional embeddings or scalars it only hurts. The usual recipe (the
PyTorch Lightning cheat sheet's ``add_weight_decay``, timm's
``param_groups_weight_decay``) puts those parameters in a group with ``weight_decay=0``.

Groups come in timm's order everywhere, no-decay first:
``[{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": wd}]``.

Pair: the mixin [`NoBiasDecay`][lightning_tricks.NoBiasDecay] calls
[`split_by_weight_decay`][lightning_tricks.functional.split_by_weight_decay] on every group of the user's optimizer (its
``parameter_groups()`` is [`no_bias_decay_groups`][lightning_tricks.functional.no_bias_decay_groups]).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from lightning_tricks._compat import norm_base_class
from lightning_tricks.functional._checks import check_bool, check_module, check_number, check_param_group
from lightning_tricks.functional._modules import glob_match, resolve_parameters

__all__ = ["no_bias_decay_groups", "no_weight_decay_names", "split_by_weight_decay"]

NORM_LAYERS: tuple[type[nn.Module], ...] = (
    norm_base_class(),  # BatchNorm*, SyncBatchNorm, InstanceNorm*
    nn.LayerNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
    *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()),
)
EMBEDDINGS: tuple[type[nn.Module], ...] = (nn.Embedding, nn.EmbeddingBag)


def _model_skip_list(model: nn.Module) -> set[str]:
    """Names from ``no_weight_decay()`` (timm's convention) of the model or any submodule,
    made absolute. Entries are names or segment-wise globs relative to that submodule;
    names the model does not have are ignored (timm lists e.g. ``dist_token`` whether or
    not the model has one)."""
    names: set[str] = set()
    for prefix, module in model.named_modules():
        fn = getattr(module, "no_weight_decay", None)
        if callable(fn):
            for name in fn() or ():
                names.add(f"{prefix}.{name}" if prefix else str(name))
    return names


def no_weight_decay_names(
    model: nn.Module, *, embeddings: bool = False, extra: str | Sequence[str] = ()
) -> list[str]:
    """Names of the parameters that must not be weight-decayed (frozen ones included).

    A parameter is excluded when it is a bias (name ends with ``bias``), has ``ndim <= 1``,
    belongs to a normalization layer (BatchNorm, SyncBatchNorm, InstanceNorm, LayerNorm,
    GroupNorm, LocalResponseNorm, RMSNorm), belongs to an embedding layer (if
    ``embeddings``), is selected by ``extra``, or is named by a ``no_weight_decay()``
    method of the model or a submodule (names relative to that submodule). Tied
    parameters are listed once, under their first name.

    ``extra`` follows the package's naming rule: parameter or module names and
    segment-wise globs, where ``*`` stays within one dotted segment and ``**`` crosses
    segments (``"**.pos_embed"``: every ``pos_embed``; ``"backbone.*"``: the parameters
    of ``backbone``'s direct children and its own direct parameters), or class names
    (``"LayerScale"``: every parameter of such modules).

    Args:
        model: the model.
        embeddings: also exclude ``nn.Embedding``/``nn.EmbeddingBag`` weights.
        extra: further parameters or modules to exclude, e.g. ``"**.pos_embed"``.

    Returns:
        Parameter names in ``named_parameters()`` order.

    Raises:
        TypeError: bad argument types.
        ValueError: an ``extra`` entry names nothing (with near-name suggestions).

    Example:
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.Linear(4, 2, bias=False))
        >>> no_weight_decay_names(net)
        ['0.bias', '1.weight', '1.bias']
    """
    model = check_module("model", model)
    embeddings = check_bool("embeddings", embeddings)
    chosen = set(resolve_parameters(model, extra, "extra", allow_empty=True))
    skip = _model_skip_list(model)
    owner: dict[int, nn.Module] = {}
    for module in model.modules():
        for p in module.parameters(recurse=False):
            owner.setdefault(id(p), module)
    skip_types = NORM_LAYERS + (EMBEDDINGS if embeddings else ())
    out = []
    for name, p in model.named_parameters():
        if (
            p.ndim <= 1
            or name.endswith("bias")
            or isinstance(owner.get(id(p)), skip_types)
            or name in chosen
            or name in skip
            or any(glob_match(name, pat) for pat in skip)
        ):
            out.append(name)
    return out


def _no_decay_ids(model: nn.Module, embeddings: bool, extra: str | Sequence[str]) -> set[int]:
    params = dict(model.named_parameters())
    return {id(params[n]) for n in no_weight_decay_names(model, embeddings=embeddings, extra=extra)}


def no_bias_decay_groups(
    model: nn.Module,
    weight_decay: float,
    *,
    embeddings: bool = False,
    extra: str | Sequence[str] = (),
    trainable_only: bool = True,
) -> list[dict[str, Any]]:
    """Two parameter groups: ``[no-decay (weight_decay=0), decay (weight_decay)]``.

    The same order and content as the cheat sheet's ``add_weight_decay`` and timm's
    ``param_groups_weight_decay`` where their rules coincide; see
    [`no_weight_decay_names`][lightning_tricks.functional.no_weight_decay_names] for the rule.

    Args:
        model: the model.
        weight_decay: weight decay of the decayed group.
        embeddings: also exclude embedding weights from decay.
        extra: further parameters or modules to exclude from decay (see
            [`no_weight_decay_names`][lightning_tricks.functional.no_weight_decay_names]).
        trainable_only: skip parameters with ``requires_grad=False``.

    Returns:
        ``[{"params": [...], "weight_decay": 0.0}, {"params": [...], "weight_decay": wd}]``.

    Raises:
        ValueError: ``weight_decay`` negative or not finite.
        TypeError: bad argument types.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
        >>> groups = no_bias_decay_groups(net, 0.05)
        >>> print([(len(g["params"]), g["weight_decay"]) for g in groups])
        [(4, 0.0), (2, 0.05)]
        >>> opt = torch.optim.AdamW(groups, lr=1e-3)
    """
    model = check_module("model", model)
    weight_decay = check_number("weight_decay", weight_decay, minimum=0.0)
    trainable_only = check_bool("trainable_only", trainable_only)
    skip = _no_decay_ids(model, embeddings, extra)
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for _, p in model.named_parameters():
        if trainable_only and not p.requires_grad:
            continue
        (no_decay if id(p) in skip else decay).append(p)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


def split_by_weight_decay(
    group: dict[str, Any],
    model: nn.Module,
    *,
    embeddings: bool = False,
    extra: str | Sequence[str] = (),
    trainable_only: bool = True,
) -> list[dict[str, Any]]:
    """Split one optimizer group into a no-decay part (``weight_decay=0``) and a decay part.

    Both parts keep the group's other keys (lr, betas, momentum, ...); empty parts are
    dropped; a group whose weight decay is already 0 is returned unchanged (so splitting
    is idempotent).

    Args:
        group: a parameter group (dict with ``"params"``).
        model: the model the parameters belong to (to apply the rule of
            [`no_weight_decay_names`][lightning_tricks.functional.no_weight_decay_names]).
        embeddings: also exclude embedding weights from decay.
        extra: further parameters or modules to exclude from decay (see
            [`no_weight_decay_names`][lightning_tricks.functional.no_weight_decay_names]).
        trainable_only: drop parameters with ``requires_grad=False`` from both parts.

    Returns:
        ``[no-decay part, decay part]`` minus empty parts.

    Raises:
        TypeError: ``group`` is not a dict with ``"params"`` holding tensors, or
            ``model`` not a module.
        ValueError: ``group`` holds a non-leaf or integer tensor, or a NaN, infinite or
            negative hyperparameter (``lr``, ``weight_decay``, ...).

    Example:
        >>> from torch import nn
        >>> net = nn.Linear(3, 2)
        >>> parts = split_by_weight_decay({"params": list(net.parameters()), "lr": 0.1,
        ...                                "weight_decay": 0.01}, net)
        >>> print([(len(p["params"]), p["lr"], p["weight_decay"]) for p in parts])
        [(1, 0.1, 0.0), (1, 0.1, 0.01)]
    """
    group = check_param_group("group", group)
    model = check_module("model", model)
    trainable_only = check_bool("trainable_only", trainable_only)
    skip = _no_decay_ids(model, embeddings, extra)  # checks `embeddings` and `extra` too
    params = [p for p in group["params"] if p.requires_grad or not trainable_only]
    if not group.get("weight_decay", 0.0):
        return [{**group, "params": params}] if params else []
    decay = [p for p in params if id(p) not in skip]
    no_decay = [p for p in params if id(p) in skip]
    parts = [{**group, "params": no_decay, "weight_decay": 0.0}, {**group, "params": decay}]
    return [part for part in parts if part["params"]]
