"""Capture layer outputs with temporary forward hooks, and turn them into images and statistics."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import nn

from lightning_tricks.functional._checks import check_int, check_number
from lightning_tricks.functional._modules import match_modules, unknown_module_error

__all__ = [
    "activation_histogram",
    "activation_stats",
    "capture_activations",
    "feature_map_grid",
    "histogram_image",
    "select_layers",
]

STAT_NAMES = ("mean", "std", "near_zero_fraction", "dead_fraction")

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


def select_layers(model: nn.Module, layers: Sequence[str] | None = None, max_layers: int = 8) -> list[str]:
    """Names of the submodules whose outputs to capture.

    By default the ``Conv2d`` layers (the first ``max_layers`` of them); for a model
    without convolutions, its ``Linear`` layers. Otherwise ``layers`` are module names
    or globs (``"backbone.*.0"``; ``*`` stays within a dotted segment, ``**`` spans
    several: the rule of :func:`lightning_tricks.functional.select_modules`), in model order.

    Args:
        model: the network.
        layers: names or globs, or ``None`` for the default.
        max_layers: at most this many layers are returned.

    Returns:
        Qualified module names, in model order.

    Raises:
        ValueError: if an entry of ``layers`` matches no submodule.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3))
        >>> select_layers(net)
        ['0', '2']
        >>> select_layers(net, ["1"])
        ['1']
    """
    max_layers = check_int("max_layers", max_layers, minimum=1)
    named = [(n, m) for n, m in model.named_modules() if n]
    if layers is None:
        chosen = [n for n, m in named if isinstance(m, nn.Conv2d)]
        if not chosen:
            chosen = [n for n, m in named if isinstance(m, nn.Linear)]
        return chosen[:max_layers]
    chosen = []
    for pattern in layers:
        hits = match_modules(model, pattern)
        if not hits:
            raise unknown_module_error("layers", pattern, model)
        chosen.extend(h for h in hits if h not in chosen)
    order = {n: i for i, (n, _) in enumerate(named)}
    return sorted(chosen, key=order.__getitem__)[:max_layers]


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


def capture_activations(
    model: nn.Module,
    inputs: torch.Tensor,
    layers: Sequence[str],
    forward_context: Callable[[], Any] | None = None,
) -> dict[str, torch.Tensor]:
    """Run ``model(inputs)`` in eval mode without gradients and return the named layers' outputs.

    Forward hooks exist only during this call; every module's train/eval flag is
    restored afterwards, and the global RNG state is left untouched.

    Args:
        model: the network (or LightningModule).
        inputs: the input batch.
        layers: qualified module names, e.g. from :func:`select_layers`.
        forward_context: optional context manager factory wrapping the forward pass
            (e.g. autocast).

    Returns:
        Layer name -> detached output (the first tensor when a layer returns several).

    Example:
        >>> net = nn.Sequential(nn.Linear(4, 3), nn.ReLU())
        >>> acts = capture_activations(net, torch.randn(2, 4), ["0"])
        >>> acts["0"].shape, net.training, len(net[0]._forward_hooks)
        (torch.Size([2, 3]), True, 0)
    """
    modules = dict(model.named_modules())
    missing = [n for n in layers if n not in modules]
    if missing:
        raise unknown_module_error("layers", missing[0], model)
    captured: dict[str, torch.Tensor] = {}
    handles = []

    def make_hook(name: str):
        def hook(module: nn.Module, args: object, output: object) -> None:
            tensor = _first_tensor(output)
            if tensor is not None:
                captured[name] = tensor.detach()

        return hook

    devices = [inputs.device] if inputs.device.type == "cuda" else []
    try:
        for name in layers:
            handles.append(modules[name].register_forward_hook(make_hook(name)))
        with (
            torch.random.fork_rng(devices=devices),
            _eval_mode(model),
            torch.no_grad(),
            forward_context() if forward_context is not None else contextlib.nullcontext(),
        ):
            model(inputs)
    finally:
        for h in handles:
            h.remove()
    return captured


def activation_stats(activation: torch.Tensor, near_zero: float = 1e-3) -> torch.Tensor:
    """Mean, std, fraction of near-zero values and fraction of dead units, as one tensor.

    A unit is a channel (dimension 1) for outputs with 3+ dimensions, a feature (last
    dimension) otherwise; it is dead when it is near zero for every sample and position.
    The result stays on the activation's device (no host sync), so several layers can be
    stacked and transferred at once.

    Args:
        activation: a layer output, batch first.
        near_zero: absolute threshold below which a value counts as zero.

    Returns:
        A float tensor of 4 values, in the order ``mean, std, near_zero_fraction, dead_fraction``.

    Example:
        >>> tuple(round(v, 3) for v in activation_stats(torch.tensor([[0.0, 2.0], [0.0, 4.0]])).tolist())
        (1.5, 1.915, 0.5, 0.5)
    """
    near_zero = check_number("near_zero", near_zero, minimum=0.0)
    a = activation.detach().float()
    zero = a.abs() <= near_zero
    if a.dim() >= 3:
        per_unit = zero.transpose(0, 1).reshape(a.shape[1], -1)
    else:
        per_unit = zero.reshape(-1, a.shape[-1]).t()
    dead = per_unit.all(dim=1).float().mean()
    std = a.std() if a.numel() > 1 else torch.zeros((), device=a.device)
    return torch.stack([a.mean(), std, zero.float().mean(), dead])


def activation_histogram(activation: torch.Tensor, bins: int, low: float, high: float) -> torch.Tensor:
    """Counts of ``activation`` in ``bins`` equal bins over ``[low, high]``; outliers go to the edge bins.

    Args:
        activation: any tensor.
        bins: number of bins.
        low: lower edge.
        high: upper edge (> ``low``).

    Returns:
        A float tensor of ``bins`` counts, on the activation's device.

    Example:
        >>> activation_histogram(torch.tensor([-5.0, 0.1, 0.2, 9.0]), 2, 0.0, 1.0).tolist()
        [3.0, 1.0]
    """
    bins = check_int("bins", bins, minimum=1)
    if not high > low:
        raise ValueError(f"`high` must be > `low`; got low={low!r}, high={high!r}")
    a = activation.detach().float().flatten().clamp(low, high)
    return torch.histc(a, bins=bins, min=low, max=high)


def feature_map_grid(activation: torch.Tensor, max_channels: int = 16, padding: int = 1) -> torch.Tensor:
    """An image of the first ``max_channels`` feature maps of the first sample, each normalised to [0, 1].

    For outputs with spatial dimensions ``(B, C, H, W, ...)`` the maps are tiled in a
    near-square grid; for ``(B, F)`` outputs the image is the batch-by-features matrix,
    normalised as a whole.

    Args:
        activation: a layer output, batch first.
        max_channels: how many channels to show.
        padding: pixels between tiles.

    Returns:
        A ``(1, H, W)`` float image in ``[0, 1]`` (channels first, as TensorBoard expects).

    Example:
        >>> feature_map_grid(torch.randn(2, 5, 4, 4), max_channels=4).shape
        torch.Size([1, 9, 9])
    """
    max_channels = check_int("max_channels", max_channels, minimum=1)
    a = activation.detach().float()

    def norm(t: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
        lo = t.amin(dim=dims, keepdim=True)
        hi = t.amax(dim=dims, keepdim=True)
        return ((t - lo) / (hi - lo).clamp_min(1e-12)).nan_to_num(0.0)

    if a.dim() <= 2:
        mat = a.reshape(a.shape[0], -1) if a.dim() == 2 else a.reshape(1, -1)
        return norm(mat, (0, 1)).unsqueeze(0)
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

    Example:
        >>> histogram_image(torch.tensor([[1.0, 0.0], [0.0, 5.0], [2.0, 2.0]])).shape
        torch.Size([3, 2, 3])
    """
    h = torch.as_tensor(history, dtype=torch.float32).cpu()
    if h.dim() != 2 or h.numel() == 0:
        raise ValueError(f"`history` must be a non-empty (T, bins) tensor; got shape {tuple(h.shape)}")
    v = h.log1p().t().flip(0)
    v = v / v.max().clamp_min(1e-12)
    pos = v * (len(_VIRIDIS) - 1)
    idx = pos.floor().long().clamp(max=len(_VIRIDIS) - 2)
    frac = (pos - idx).unsqueeze(-1)
    rgb = _VIRIDIS[idx] * (1 - frac) + _VIRIDIS[idx + 1] * frac
    return rgb.permute(2, 0, 1).contiguous()
