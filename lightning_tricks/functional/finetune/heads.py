"""Find, replace and strip the classifier head of a model.

Fine-tuning on a new label set needs a new last layer with the right number of
outputs; feature extraction needs the model without it. Slicing ``model.children()``
into an ``nn.Sequential`` breaks every model whose ``forward`` is not a plain chain
(pooling in ``forward``, residual connections, several inputs), so these functions
swap the head *in place*, at the attribute where it lives.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from lightning_tricks.functional._checks import check_int, check_module
from lightning_tricks.functional._modules import resolve_modules
from lightning_tricks.functional.finetune.weights_io import PRETRAINED_ATTR

__all__ = ["find_head", "replace_head", "strip_head"]


def _children_names(module: nn.Module) -> str:
    names = [n for n, _ in module.named_children()]
    return ", ".join(names) if names else "(none)"


def _resolve(model: nn.Module, attr: str | type[nn.Module]) -> tuple[str, nn.Module]:
    """The one submodule that ``attr`` selects by the naming rule: its qualified name and itself."""
    if not isinstance(attr, str | type) or not attr:
        raise TypeError(
            f"`attr` must be a submodule name, glob or class name (a non-empty string), a class, or None; "
            f"got {attr!r}"
        )
    found = resolve_modules(model, attr, "attr")
    if len(found) != 1:
        shown = ", ".join(list(found)[:8]) + (", ..." if len(found) > 8 else "")
        raise ValueError(
            f"`attr` must select exactly one submodule (the head); {attr!r} selects {len(found)}: {shown}"
        )
    return next(iter(found.items()))


def _last_linear(module: nn.Module) -> str | None:
    """Dotted name (relative to ``module``) of its last registered ``nn.Linear``."""
    found = None
    for name, sub in module.named_modules():
        if isinstance(sub, nn.Linear) and not isinstance(
            sub, nn.modules.linear.NonDynamicallyQuantizableLinear
        ):
            found = name
    return found


_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _out_count(layer: nn.Module) -> int | None:
    """Outputs of a classifier layer: a Linear's ``out_features``, a 1x1 Conv's ``out_channels``."""
    if isinstance(layer, nn.Linear) and not isinstance(
        layer, nn.modules.linear.NonDynamicallyQuantizableLinear
    ):
        return layer.out_features
    if type(layer) in _CONVS and layer.groups == 1 and all(k == 1 for k in layer.kernel_size):  # type: ignore[union-attr]
        return int(layer.out_channels)  # type: ignore[arg-type]
    return None


def _hf_label_layer(model: nn.Module) -> str | None:
    """In the outermost HF-style model (a ``config`` with ``num_labels``) inside ``model``, the
    last Linear or 1x1 Conv with ``num_labels`` outputs: e.g. Segformer's ``decode_head.classifier``."""
    for root_name, root in model.named_modules():
        count = getattr(getattr(root, "config", None), "num_labels", None)
        if not isinstance(count, int) or isinstance(count, bool) or count < 1:
            continue
        found = None
        for name, sub in root.named_modules():
            if name and _out_count(sub) == count:
                found = name
        if found is None:
            return None
        return f"{root_name}.{found}" if root_name else found
    return None


def find_head(model: nn.Module, attr: str | type[nn.Module] | None = None) -> str:
    """Return the dotted name of the model's last classifier layer.

    With ``attr`` given, the head is that submodule; if it is a container (an
    ``nn.Sequential`` such as ``pool -> flatten -> linear``, or a head module with a
    norm and an ``fc``), the last ``nn.Linear`` inside it. Without ``attr``: the module
    returned by a timm-style ``model.get_classifier()`` if the model has one; else, in an
    HF ``transformers`` model (found at any depth by its ``config.num_labels``), the last
    ``nn.Linear`` or 1x1 convolution with ``num_labels`` outputs (Segformer's
    ``decode_head.classifier``); else the last registered ``nn.Linear`` of the model
    (attention projections excluded).

    Args:
        model: the network.
        attr: the head, by the naming rule: a qualified name (``"head"``,
            ``"classifier.fc"``), a segment glob (``"**.classifier"``), a class name or a
            class; it must select exactly one submodule. ``None`` to search.

    Returns:
        The dotted name of the layer, relative to ``model``.

    Raises:
        TypeError: ``model`` is not a module, or ``attr`` is not a name or class.
        ValueError: ``attr`` selects no submodule (with near-name suggestions) or more
            than one, or no classifier layer can be found.

    Example:
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Sequential(nn.Dropout(), nn.Linear(8, 3)))
        >>> find_head(net)
        '2.1'
        >>> find_head(net, attr="2")
        '2.1'
        >>> find_head(net, attr="Dropout")  # a class name selecting one module
        '2.0'
    """
    check_module("model", model)
    if attr is not None:
        name, target = _resolve(model, attr)
        if isinstance(target, nn.Linear) or not list(target.children()):
            return name
        inner = _last_linear(target)
        if inner is None:
            raise ValueError(
                f"`attr` {attr!r} names a {type(target).__name__} that contains no nn.Linear; "
                f"name the layer to replace itself (its children: {_children_names(target)})"
            )
        return f"{name}.{inner}"
    get_classifier = getattr(model, "get_classifier", None)
    if callable(get_classifier):
        head = get_classifier()
        if isinstance(head, nn.Module):
            for name, sub in model.named_modules():
                if sub is head and name:
                    return name
    hf = _hf_label_layer(model)
    if hf is not None:
        return hf
    last = _last_linear(model)
    if not last:
        raise ValueError(
            f"could not find a classifier head in {type(model).__name__}: it has no nn.Linear submodule "
            f"and no get_classifier(); pass `attr` naming the head (top-level children: "
            f"{_children_names(model)})"
        )
    return last


def _swap(model: nn.Module, name: str, new: nn.Module) -> nn.Module:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    old = parent._modules[child]
    if old is None:  # a slot registered as None holds no layer to swap
        raise ValueError(f"the head {name!r} is None in {type(model).__name__}; pass `attr` naming a layer")
    parent._modules[child] = new
    # The new layer was not loaded from a file: forget the old layer's keys among those
    # that ``load_weights`` marked as pretrained, so ``init_weights`` initialises it.
    loaded = getattr(model, PRETRAINED_ATTR, None)
    if loaded:
        setattr(model, PRETRAINED_ATTR, frozenset(k for k in loaded if not k.startswith(f"{name}.")))
    return old


def _tied_elsewhere(model: nn.Module, name: str) -> dict[str, str]:
    """Own parameters of the layer ``name`` that are also registered outside it: own -> other name."""
    layer = model.get_submodule(name)
    own = {id(p): f"{name}.{pn}" for pn, p in layer.named_parameters()}
    tied: dict[str, str] = {}
    for other, p in model.named_parameters(remove_duplicate=False):
        if id(p) in own and not other.startswith(f"{name}."):
            tied.setdefault(own[id(p)], other)
    return tied


def _ancestors(model: nn.Module, name: str) -> list[nn.Module]:
    """``model`` and every module on the way down to the layer ``name`` (excluded), deepest first."""
    parts = name.split(".")
    return [model.get_submodule(".".join(parts[:i])) if i else model for i in range(len(parts))][::-1]


def _set_num_labels(model: nn.Module, name: str, old_count: int, new_count: int) -> None:
    """Keep the label counts of the models holding the head consistent with its new size.

    HF ``transformers`` models keep ``config.num_labels`` (which sizes the loss and
    ``save_pretrained``/``from_pretrained``; setting it rebuilds ``id2label``/``label2id``)
    and a ``num_labels`` attribute; timm models keep ``num_classes``. Only counts that
    described the old head (equal to its old size) are changed.
    """
    for module in _ancestors(model, name):
        config = getattr(module, "config", None)
        count = getattr(config, "num_labels", None)
        if isinstance(count, int) and not isinstance(count, bool) and count == old_count:
            config.num_labels = new_count  # type: ignore[union-attr]
        for attr in ("num_labels", "num_classes"):
            value = getattr(module, attr, None)
            if (
                isinstance(value, int)
                and not isinstance(value, bool)
                and (value == old_count or (module is model and attr == "num_classes"))
            ):
                setattr(module, attr, new_count)


def replace_head(model: nn.Module, num_outputs: int, attr: str | type[nn.Module] | None = None) -> nn.Module:
    """Replace the classifier layer by a fresh ``nn.Linear`` with ``num_outputs`` outputs.

    The new layer has the old one's ``in_features``, bias setting, device and dtype
    (a 1x1 convolution head, as in dense-prediction models, becomes a new one with
    ``num_outputs`` channels),
    and PyTorch's default initialisation (see [`init_weights`][lightning_tricks.functional.init_weights] for others). The
    model is changed in place. Label counts that described the old head are updated on
    ``model`` and on every module holding the head: a timm-style integer
    ``num_classes``, and for HF ``transformers`` models ``num_labels`` and
    ``config.num_labels`` (with ``config.id2label``/``label2id`` rebuilt), so that
    ``model(..., labels=y)`` and ``save_pretrained``/``from_pretrained`` keep working.
    A head whose parameters are shared with another layer (tied weights, such as a
    masked-LM decoder tied to the word embeddings) is refused rather than untied.

    Args:
        model: the network.
        num_outputs: number of outputs of the new layer (classes), at least 1.
        attr: the head, by the naming rule (see [`find_head`][lightning_tricks.functional.find_head]); ``None`` to find it.

    Returns:
        The old head layer (for example to reuse some of its rows).

    Raises:
        TypeError: bad argument types.
        ValueError: ``num_outputs < 1``, or no head can be found, or the head is not an
            ``nn.Linear`` (so its input size is unknown), or its parameters are tied to
            another layer's.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
        >>> old = replace_head(net, 10)
        >>> old.out_features, net(torch.zeros(2, 4)).shape
        (3, torch.Size([2, 10]))
    """
    check_module("model", model)
    num_outputs = check_int("num_outputs", num_outputs, minimum=1, maximum=2**31 - 1)
    name = find_head(model, attr)
    old = model.get_submodule(name)
    old_count = _out_count(old)
    if old_count is None:
        raise ValueError(
            f"the head {name!r} is a {type(old).__name__}, not an nn.Linear (or a 1x1 convolution), so "
            f"its input size is unknown; pass `attr` naming the final nn.Linear layer"
        )
    tied = _tied_elsewhere(model, name)
    if tied:
        shown = ", ".join(f"{k} is {v}" for k, v in tied.items())
        raise ValueError(
            f"the head {name!r} shares parameters with other layers (tied weights: {shown}); a new "
            f"layer would silently untie them. Resize the tied layers together (for HF models, "
            f"`resize_token_embeddings`), or pass `attr` naming a layer whose weights are its own"
        )
    weight, bias = old.weight, old.bias is not None
    new: nn.Module
    if isinstance(old, nn.Linear):
        new = nn.Linear(old.in_features, num_outputs, bias=bias, device=weight.device, dtype=weight.dtype)
    else:  # a 1x1 convolution (dense classifier): same geometry, new number of channels
        conv: Any = old
        new = type(conv)(
            conv.in_channels,
            num_outputs,
            conv.kernel_size,
            stride=conv.stride,
            padding=conv.padding,
            dilation=conv.dilation,
            bias=bias,
            padding_mode=conv.padding_mode,
            device=weight.device,
            dtype=weight.dtype,
        )
    new.train(old.training)
    _swap(model, name, new)
    _set_num_labels(model, name, old_count, num_outputs)
    return old


def strip_head(model: nn.Module, attr: str | type[nn.Module] | None = None) -> nn.Module:
    """Turn a classifier into a feature extractor: replace the head by ``nn.Identity``.

    Only the final layer is swapped, in place, so the model's own ``forward`` (pooling,
    residual paths, extra inputs) keeps working and now returns the features that fed
    the head. Label counts that described the head are set to 0: a timm-style integer
    ``num_classes``, and the ``num_labels``/``config.num_labels`` of HF ``transformers``
    models (their own convention for "no classifier", so ``from_pretrained`` rebuilds
    the stripped model). A layer tied to another keeps the other one intact.

    Args:
        model: the network.
        attr: the head, by the naming rule (see [`find_head`][lightning_tricks.functional.find_head]); ``None`` to find it.

    Returns:
        The removed head.

    Raises:
        TypeError: bad argument types.
        ValueError: no head can be found.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
        >>> head = strip_head(net)
        >>> net(torch.zeros(2, 4)).shape
        torch.Size([2, 8])
    """
    check_module("model", model)
    name = find_head(model, attr)
    old = _swap(model, name, nn.Identity())
    out = _out_count(old)
    if out is not None:
        _set_num_labels(model, name, out, 0)
    else:
        count = getattr(model, "num_classes", None)
        if isinstance(count, int) and not isinstance(count, bool):
            setattr(model, "num_classes", 0)  # noqa: B010 - an int attribute, not a submodule
    return old
