"""Capture layer outputs with temporary forward hooks, and turn them into images and statistics.

The functional core of [`ActivationVisualizer`][lightning_tricks.ActivationVisualizer]: the callback picks
layers with [`select_layers`][lightning_tricks.functional.select_layers], runs [`capture_activations`][lightning_tricks.functional.capture_activations] on a fixed sample and
summarises each output with [`activation_stats`][lightning_tricks.functional.activation_stats], [`activation_histogram`][lightning_tricks.functional.activation_histogram],
[`feature_map_grid`][lightning_tricks.functional.feature_map_grid] and [`histogram_image`][lightning_tricks.functional.histogram_image].
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from lightning_tricks.functional._checks import (
    check_int,
    check_module,
    check_number,
    check_optional_int,
    check_tensor,
    describe,
)
from lightning_tricks.functional._model_errors import model_errors
from lightning_tricks.functional._modules import resolve_modules

__all__ = [
    "activation_histogram",
    "activation_stats",
    "call_with_batch",
    "capture_activations",
    "feature_dim_of",
    "feature_map_grid",
    "histogram_image",
    "select_layers",
]

STAT_NAMES = ("mean", "std", "near_zero_fraction", "dead_fraction")
#: the most histogram bins and the widest padding between tiles the image helpers take
MAX_BINS = 2**20
MAX_PADDING = 64

# A few stops of the viridis colour map (dark purple -> yellow), interpolated linearly.
_VIRIDIS = torch.tensor(
    [
        [0.267, 0.005, 0.329],
        [0.229, 0.322, 0.546],
        [0.128, 0.567, 0.551],
        [0.369, 0.789, 0.383],
        [0.993, 0.906, 0.144],
    ]
)


def select_layers(
    model: nn.Module, layers: Sequence[str] | str | None = None, max_layers: int = 8
) -> list[str]:
    """Names of the submodules whose outputs to capture.

    By default the ``Conv2d`` layers (the first ``max_layers`` of them); for a model
    without convolutions, its ``Linear`` layers. Otherwise ``layers`` names modules by
    the library's one naming rule (`lightning_tricks.functional._modules`):
    qualified names, segment-wise globs (``"backbone.*.0"``: ``*`` stays within a dotted
    segment, ``**`` spans several), class names (``"Conv2d"``) or classes; a lone
    string is one entry. The result is in model order.

    Args:
        model: the network.
        layers: names, globs or classes, or ``None`` for the default.
        max_layers: at most this many layers are returned.

    Returns:
        Qualified module names, in model order.

    Raises:
        TypeError: ``model`` is not a module, ``layers`` not names or ``max_layers`` not an int.
        ValueError: if an entry of ``layers`` matches no submodule, or ``max_layers`` < 1.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3))
        >>> select_layers(net)
        ['0', '2']
        >>> select_layers(net, "1"), select_layers(net, "ReLU")
        (['1'], ['1'])
    """
    check_module("model", model)
    max_layers = check_int("max_layers", max_layers, minimum=1)
    if layers is None:
        named = [(n, m) for n, m in model.named_modules() if n]
        chosen = [n for n, m in named if isinstance(m, nn.Conv2d)]
        if not chosen:
            chosen = [n for n, m in named if isinstance(m, nn.Linear)]
        return chosen[:max_layers]
    return list(resolve_modules(model, layers, "layers"))[:max_layers]


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, mode in modes:
            m.training = mode


def _first_tensor(output: object) -> torch.Tensor | None:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (list, tuple)):
        for item in output:
            if isinstance(item, torch.Tensor):
                return item
    if isinstance(output, dict):
        for item in output.values():
            if isinstance(item, torch.Tensor):
                return item
    return None


def _accepts_keywords(forward: Callable[..., Any], keys: Sequence[str]) -> bool:
    try:
        params = inspect.signature(forward).parameters.values()
    except (TypeError, ValueError):  # builtins, C extensions: no signature to read
        return True
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return True
    names = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return all(k in names for k in keys)


def call_with_batch(model: nn.Module, batch: Any, arg: str = "batch") -> Any:
    """Run ``model`` on a batch the way training steps usually do.

    * a tensor: ``model(batch)``;
    * a mapping (``{"input_ids": ..., "attention_mask": ...}``, the HuggingFace habit):
      ``model(**batch)`` when ``model.forward`` takes those keywords (or ``**kwargs``),
      else ``model(first tensor)``;
    * a list or tuple (``(x, y)``): ``model(batch[0])``, the input first.

    For anything else, give the model a method (see ``ActivationVisualizer``) or pass
    your own ``forward_fn`` to [`capture_activations`][lightning_tricks.functional.capture_activations].

    Args:
        model: the network.
        batch: the batch.
        arg: how the batch is named in error messages.

    Returns:
        Whatever the model returns.

    Raises:
        TypeError: if ``batch`` holds no tensor to feed.

    Example:
        >>> class KeywordNet(nn.Module):
        ...     def forward(self, input_ids, attention_mask=None):
        ...         return input_ids * attention_mask
        >>> call_with_batch(KeywordNet(), {"input_ids": torch.ones(2), "attention_mask": torch.zeros(2)})
        tensor([0., 0.])
    """
    if isinstance(batch, torch.Tensor):
        return model(batch)
    if isinstance(batch, Mapping):
        if _accepts_keywords(model.forward, [str(k) for k in batch]):
            return model(**batch)
        first = _first_tensor(dict(batch))
        if first is not None:
            return model(first)
    if isinstance(batch, (list, tuple)) and batch:
        head = batch[0]
        if isinstance(head, torch.Tensor):
            return model(head)
        if isinstance(head, Mapping | list | tuple):
            return call_with_batch(model, head, arg)
    raise TypeError(
        f"`{arg}` must be a tensor, or a mapping/list/tuple holding one (the input first); got {describe(batch)}"
    )


def feature_dim_of(module: nn.Module | None, activation: torch.Tensor) -> int:
    """The dimension of ``activation`` (an output of ``module``) that indexes features (units).

    Convolutions, BatchNorm and GroupNorm put channels at dimension 1 (``(B, C, H, W)``,
    ``(B, C, L)``); Linear, LayerNorm and Embedding put features last (``(B, F)``,
    ``(B, T, F)``, channels-last ``(B, H, W, C)``). For any other module: dimension 1 for
    outputs with 4+ dimensions (conv feature maps), the last dimension otherwise (token
    sequences ``(B, T, F)`` of transformer blocks, ``(B, F)`` vectors).

    Example:
        >>> feature_dim_of(nn.Conv1d(3, 4, 1), torch.zeros(2, 4, 9)), feature_dim_of(nn.GELU(), torch.zeros(2, 9, 4))
        (1, 2)
    """
    nd = activation.dim()
    if nd <= 2:
        return nd - 1 if nd else 0
    channels_first = (nn.modules.conv._ConvNd, nn.modules.batchnorm._NormBase, nn.GroupNorm)
    if isinstance(module, channels_first):
        return 1
    if isinstance(module, (nn.Linear, nn.LayerNorm, nn.Embedding, nn.RMSNorm)):
        return nd - 1
    return 1 if nd >= 4 else nd - 1


def _eager() -> contextlib.AbstractContextManager[Any]:
    """Run compiled code eagerly for the capture: dynamo does not guard on module hooks, so a
    graph compiled before the hooks were added would run without calling them."""
    set_stance = getattr(torch.compiler, "set_stance", None)  # torch >= 2.6
    return set_stance("force_eager") if set_stance is not None else contextlib.nullcontext()


def capture_activations(
    model: nn.Module,
    inputs: Any,
    layers: Sequence[str] | str,
    forward_context: Callable[[], Any] | None = None,
    forward_fn: Callable[[Any], Any] | None = None,
) -> dict[str, torch.Tensor]:
    """Run the model on ``inputs`` in eval mode without gradients and return the named layers' outputs.

    Forward hooks exist only during this call; every module's train/eval flag is
    restored afterwards, and the global RNG state is left untouched.

    Args:
        model: the network (or LightningModule).
        inputs: the input batch: a tensor, or a whole batch (see `call_with_batch`).
        layers: the modules to capture, by the naming rule of [`select_layers`][lightning_tricks.functional.select_layers]
            (names, globs, class names; a lone string is one name), e.g. from
            [`select_layers`][lightning_tricks.functional.select_layers].
        forward_context: optional context manager factory wrapping the forward pass
            (e.g. autocast).
        forward_fn: how to run the model on ``inputs`` (called as ``forward_fn(inputs)``);
            by default `call_with_batch`.

    Returns:
        Layer name -> detached output (the first tensor when a layer returns several), for
        every layer ``layers`` selects.

    Raises:
        TypeError: ``model`` is not a module, ``layers`` not names, ``forward_context`` or
            ``forward_fn`` not callable, or ``inputs`` holds no tensor to feed.
        ValueError: an entry of ``layers`` selects no submodule, a selected layer did not
            run in the forward pass or returned no tensor (as [`FeatureExtractor`][lightning_tricks.functional.FeatureExtractor]), or
            the model raised a ``RuntimeError`` on ``inputs`` (chained as the cause).

    Example:
        >>> net = nn.Sequential(nn.Linear(4, 3), nn.ReLU())
        >>> acts = capture_activations(net, torch.randn(2, 4), ["0"])
        >>> acts["0"].shape, net.training, len(net[0]._forward_hooks)
        (torch.Size([2, 3]), True, 0)
    """
    check_module("model", model)
    for arg, value in (("forward_context", forward_context), ("forward_fn", forward_fn)):
        if value is not None and not callable(value):
            raise TypeError(f"`{arg}` must be a callable or None; got {describe(value)}")
    if forward_fn is None and _first_tensor(inputs) is None and not _nested_tensor(inputs):
        raise TypeError(
            f"`inputs` must be a tensor, or a mapping/list/tuple holding one (the input first), or pass "
            f"`forward_fn`; got {describe(inputs)}"
        )
    modules = resolve_modules(model, layers, "layers")
    context = forward_context() if forward_context is not None else contextlib.nullcontext()
    if not (hasattr(context, "__enter__") and hasattr(context, "__exit__")):
        raise TypeError(
            f"`forward_context` must return a context manager (e.g. torch.autocast(...)); got {describe(context)}"
        )
    captured: dict[str, torch.Tensor] = {}
    returned: dict[str, str] = {}
    handles = []

    def make_hook(name: str):
        def hook(module: nn.Module, args: object, output: object) -> None:
            tensor = _first_tensor(output)
            if tensor is not None:
                captured[name] = tensor.detach()
            else:
                returned[name] = type(output).__name__

        return hook

    first = inputs if isinstance(inputs, torch.Tensor) else _first_tensor(inputs)
    devices = [first.device] if first is not None and first.device.type == "cuda" else []
    try:
        for name, module in modules.items():
            handles.append(module.register_forward_hook(make_hook(name)))
        with (
            torch.random.fork_rng(devices=devices),
            _eval_mode(model),
            torch.no_grad(),
            context,
            _eager(),
        ):
            if forward_fn is not None:
                with model_errors(f"`forward_fn` on `inputs` ({describe(inputs)})"):
                    forward_fn(inputs)
            else:
                with model_errors(f"running `model` on `inputs` ({describe(inputs)})"):
                    call_with_batch(model, inputs, "inputs")
    finally:
        for h in handles:
            h.remove()
    missing = [n for n in modules if n not in captured]
    if missing:
        no_tensor = [f"{n!r} returned {returned[n]}" for n in missing if n in returned]
        not_run = [n for n in missing if n not in returned]
        problems = ([f"{not_run} did not run in the forward pass"] if not_run else []) + (
            [f"{', '.join(no_tensor)} (no tensor)"] if no_tensor else []
        )
        raise ValueError(
            f"`layers` selects layers the forward pass of {type(model).__name__} gives no output for: "
            f"{'; '.join(problems)}; choose layers that run on these `inputs`"
        )
    return {n: captured[n] for n in modules}


def _nested_tensor(batch: Any) -> bool:
    """Whether ``call_with_batch`` finds a tensor in the first element of nested lists/tuples/mappings."""
    for _ in range(4):
        if isinstance(batch, Mapping):
            batch = next(iter(batch.values()), None)
        elif isinstance(batch, list | tuple) and batch:
            batch = batch[0]
        else:
            break
        if isinstance(batch, torch.Tensor):
            return True
    return False


def _check_activation(activation: Any) -> torch.Tensor:
    """A non-empty real tensor (statistics of nothing would be NaN); no values are read."""
    check_tensor("activation", activation, nonempty=True)
    if activation.is_complex():
        raise TypeError(f"`activation` must be a real (not complex) tensor; got {describe(activation)}")
    return activation


def activation_stats(
    activation: torch.Tensor, near_zero: float = 1e-3, feature_dim: int | None = None
) -> torch.Tensor:
    """Mean, std, fraction of near-zero values and fraction of dead units, as one tensor.

    A unit is one index of ``feature_dim``: a channel of a conv feature map
    ``(B, C, H, W)``, a feature of a token sequence ``(B, T, F)`` or of a vector
    ``(B, F)``. It is dead when it is near zero for every sample and every position
    (pixel or token). The result stays on the activation's device (no host sync), so
    several layers can be stacked and transferred at once.

    Args:
        activation: a layer output, batch first.
        near_zero: absolute threshold below which a value counts as zero.
        feature_dim: the dimension that indexes units; by default dimension 1 for outputs
            with 4+ dimensions and the last dimension otherwise (see `feature_dim_of`,
            which also looks at the module type).

    Returns:
        A float tensor of 4 values, in the order ``mean, std, near_zero_fraction, dead_fraction``.

    Raises:
        TypeError: ``activation`` is not a real (non-complex) tensor, or an argument of the wrong type.
        ValueError: ``activation`` is empty, ``near_zero`` < 0 or ``feature_dim`` out of range.

    Example:
        >>> tuple(round(v, 3) for v in activation_stats(torch.tensor([[0.0, 2.0], [0.0, 4.0]])).tolist())
        (1.5, 1.915, 0.5, 0.5)
    """
    _check_activation(activation)
    near_zero = check_number("near_zero", near_zero, minimum=0.0)
    feature_dim = check_optional_int("feature_dim", feature_dim)
    a = activation.detach().float()
    zero = a.abs() <= near_zero
    if a.dim() == 0:
        zero = zero.reshape(1)
    fd = feature_dim_of(None, a) if feature_dim is None else feature_dim
    if not -max(zero.dim(), 1) <= fd < max(zero.dim(), 1):
        raise ValueError(
            f"`feature_dim` must index a dimension of the activation of shape {tuple(a.shape)}; got {fd}"
        )
    per_unit = zero.movedim(fd, 0).reshape(zero.shape[fd], -1)
    dead = per_unit.all(dim=1).float().mean()
    std = a.std() if a.numel() > 1 else torch.zeros((), device=a.device)
    return torch.stack([a.mean(), std, zero.float().mean(), dead])


def activation_histogram(activation: torch.Tensor, bins: int, low: float, high: float) -> torch.Tensor:
    """Counts of ``activation`` in ``bins`` equal bins over ``[low, high]``; outliers go to the edge bins.

    Args:
        activation: any tensor.
        bins: number of bins (at most ``2**20``).
        low: lower edge.
        high: upper edge (> ``low``).

    Returns:
        A float tensor of ``bins`` counts, on the activation's device.

    Raises:
        TypeError: ``activation`` is not a real tensor, or an argument of the wrong type.
        ValueError: ``activation`` is empty, ``bins`` < 1, ``low``/``high`` not finite float32
            numbers, or ``high`` <= ``low``.

    Example:
        >>> activation_histogram(torch.tensor([-5.0, 0.1, 0.2, 9.0]), 2, 0.0, 1.0).tolist()
        [3.0, 1.0]
    """
    _check_activation(activation)
    bins = check_int("bins", bins, minimum=1, maximum=MAX_BINS)
    big = torch.finfo(torch.float32).max
    low = check_number("low", low, minimum=-big, maximum=big)
    high = check_number("high", high, minimum=-big, maximum=big)
    if not high > low:
        raise ValueError(f"`high` must be > `low`; got low={low!r}, high={high!r}")
    a = activation.detach().float().flatten()
    if (high - low) * bins > big / 4:  # histc's float32 bin arithmetic would overflow: count on [0, 1]
        unit = (a * 0.5 - low * 0.5) / ((high - low) * 0.5)  # every term fits in float32
        return torch.histc(unit.clamp(0.0, 1.0), bins=bins, min=0.0, max=1.0)
    return torch.histc(a.clamp(low, high), bins=bins, min=low, max=high)


def feature_map_grid(
    activation: torch.Tensor, max_channels: int = 16, padding: int = 1, feature_dim: int | None = None
) -> torch.Tensor:
    """An image of a layer output, normalised to [0, 1].

    * Feature maps ``(B, C, H, W, ...)`` (``feature_dim`` 1): the first ``max_channels``
      maps of the first sample, each normalised, tiled in a near-square grid.
    * Token sequences ``(B, T, F)`` (``feature_dim`` last): one ``T x F`` heat map
      (rows: tokens, columns: features) per sample for the first ``max_channels // 4``
      samples (at least 1, at most 4), stacked vertically, each normalised.
      Channels-last maps ``(B, H, W, C)`` are shown as feature maps.
    * Vectors ``(B, F)``: the batch-by-features matrix, normalised as a whole.

    Args:
        activation: a layer output, batch first.
        max_channels: how many channels to show.
        padding: pixels between tiles (at most 64).
        feature_dim: the dimension that indexes features (see [`activation_stats`][lightning_tricks.functional.activation_stats]).

    Returns:
        A ``(1, H, W)`` float image in ``[0, 1]`` (channels first, as TensorBoard expects).

    Raises:
        TypeError: ``activation`` is not a real tensor, or an argument of the wrong type.
        ValueError: ``activation`` is empty, ``max_channels`` < 1, ``padding`` < 0 or
            ``feature_dim`` out of range.

    Example:
        >>> feature_map_grid(torch.randn(2, 5, 4, 4), max_channels=4).shape
        torch.Size([1, 9, 9])
    """
    _check_activation(activation)
    max_channels = check_int("max_channels", max_channels, minimum=1)
    padding = check_int("padding", padding, minimum=0, maximum=MAX_PADDING)
    feature_dim = check_optional_int("feature_dim", feature_dim)
    if feature_dim is not None and not -max(activation.dim(), 1) <= feature_dim < max(activation.dim(), 1):
        raise ValueError(
            f"`feature_dim` must index a dimension of the activation of shape {tuple(activation.shape)}; "
            f"got {feature_dim}"
        )
    a = activation.detach().float()

    def norm(t: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
        lo = t.amin(dim=dims, keepdim=True)
        hi = t.amax(dim=dims, keepdim=True)
        return ((t - lo) / (hi - lo).clamp_min(1e-12)).nan_to_num(0.0)

    if a.dim() <= 2:
        mat = a.reshape(a.shape[0], -1) if a.dim() == 2 else a.reshape(1, -1)
        return norm(mat, (0, 1)).unsqueeze(0)
    fd = feature_dim_of(None, a) if feature_dim is None else feature_dim % a.dim()
    if a.dim() == 3 and fd == 2:  # (B, T, F): a tokens x features heat map per sample
        n = max(1, min(4, max_channels // 4, a.shape[0]))
        maps = norm(a[:n], (1, 2))
        t, f = maps.shape[1:]
        grid = torch.zeros(n * (t + padding) - padding, f, device=a.device)
        for i in range(n):
            grid[i * (t + padding) : i * (t + padding) + t] = maps[i]
        return grid.unsqueeze(0)
    a = a.movedim(fd, 1)
    maps = a[0, :max_channels]
    maps = maps.reshape(maps.shape[0], maps.shape[1], -1)  # fold extra spatial dims into width
    maps = norm(maps, (1, 2))
    n, h, w = maps.shape
    cols = int(n**0.5 + 0.9999)
    rows = (n + cols - 1) // cols
    grid = torch.zeros(rows * (h + padding) - padding, cols * (w + padding) - padding, device=a.device)
    for i in range(n):
        r, c = divmod(i, cols)
        grid[r * (h + padding) : r * (h + padding) + h, c * (w + padding) : c * (w + padding) + w] = maps[i]
    return grid.unsqueeze(0)


def histogram_image(history: torch.Tensor) -> torch.Tensor:
    """Render histograms over time ("colorful dimension") as an RGB image.

    Args:
        history: ``(T, bins)`` counts, one row per capture.

    Returns:
        A ``(3, bins, T)`` image in ``[0, 1]``: time runs left to right, the lowest bin is
        at the bottom, and colour is ``log1p(count)`` on a viridis-like scale.

    Raises:
        TypeError: ``history`` is not a real tensor (or nested lists of numbers).
        ValueError: ``history`` is not a non-empty ``(T, bins)`` table of finite counts >= 0.

    Example:
        >>> histogram_image(torch.tensor([[1.0, 0.0], [0.0, 5.0], [2.0, 2.0]])).shape
        torch.Size([3, 2, 3])
    """
    if not isinstance(history, torch.Tensor):
        try:
            history = torch.as_tensor(history)
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(
                f"`history` must be a (T, bins) tensor of counts or nested lists of numbers; got {describe(history)}"
            ) from None
    if history.is_complex() or history.dtype == torch.bool:
        raise TypeError(f"`history` must hold real counts; got {describe(history)}")
    h = history.detach().to("cpu", torch.float32)
    if h.dim() != 2 or h.numel() == 0:
        raise ValueError(f"`history` must be a non-empty (T, bins) tensor; got shape {tuple(h.shape)}")
    if not bool(torch.isfinite(h).all()) or bool((h < 0).any()):
        raise ValueError(f"`history` must hold finite counts >= 0; got values in [{h.min():g}, {h.max():g}]")
    v = h.log1p().t().flip(0)
    v = v / v.max().clamp_min(1e-12)
    pos = v * (len(_VIRIDIS) - 1)
    idx = pos.floor().long().clamp(max=len(_VIRIDIS) - 2)
    frac = (pos - idx).unsqueeze(-1)
    rgb = _VIRIDIS[idx] * (1 - frac) + _VIRIDIS[idx + 1] * frac
    return rgb.permute(2, 0, 1).contiguous()
