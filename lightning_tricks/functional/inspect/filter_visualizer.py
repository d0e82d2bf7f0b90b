"""Activation maximisation: the input image a channel responds to most
(pair: ``FilterVisualizer`` <-> [`visualize_filters`][lightning_tricks.functional.visualize_filters]).

An image is optimised from noise with Adam to maximise the mean activation of one
channel of one layer, the way "how to visualise convolutional features" describes it:

* **growing resolution**: ``rounds`` rounds of ``steps`` steps, starting at
  ``size / upscale ** (rounds - 1)`` pixels; between rounds the image is upscaled
  bilinearly, so coarse structure forms first and high frequencies come last;
* **jitter**: each step sees the image shifted by a random offset of up to ``jitter`` pixels;
* **blur**: every ``blur_every`` steps the image is smoothed by a Gaussian of ``blur_sigma``;
* **colour space**: ``"decorrelated"`` optimises in a decorrelated colour basis (the
  ImageNet colour correlation's square root, as torch-lucent does) through a sigmoid, so
  pixels stay in ``[0, 1]``; ``"clamped"`` optimises pixels directly and clamps them to
  ``[0, 1]`` after every step.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import nn

from lightning_tricks.functional._checks import check_choice, check_int, check_module, check_number, describe
from lightning_tricks.functional._model_errors import model_errors
from lightning_tricks.functional._modules import ModuleSpec
from lightning_tricks.functional.inspect.grad_cam import model_untouched, resolve_one_layer

__all__ = [
    "MAX_ROUNDS",
    "MAX_SEED",
    "MAX_SIZE",
    "MAX_STEPS",
    "ColorSpace",
    "layer_channels",
    "visualize_filters",
]

#: the largest image side, number of Adam steps per round, rounds and seed ``visualize_filters`` takes
MAX_SIZE = 4096
MAX_STEPS = 100_000
MAX_ROUNDS = 16
MAX_SEED = 2**64 - 1
_MAX_INDEX = 2**31 - 1
_MAX_VALUES = 2**28  # values in all images together (1 GiB of float32)

ColorSpace = Literal["decorrelated", "clamped"]

# square root of the ImageNet colour correlation matrix (torch-lucent, Olah et al. 2017)
_COLOR_SQRT = torch.tensor([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]])


class _Stop(Exception):
    """Raised by the capture hook: nothing after the layer needs to run."""


def _unit_mean(act: torch.Tensor, channels: torch.Tensor) -> torch.Tensor:
    """Mean activation of channel ``channels[i]`` of row ``i``: (B, C, ...) conv maps,
    (B, F) vectors or (B, T, F) sequences (the feature axis last)."""
    if act.dim() == 3:
        act = act.transpose(1, 2)
    rows = act[torch.arange(act.shape[0], device=act.device), channels.to(act.device)]
    return rows.float().flatten(1).mean(dim=1) if rows.dim() > 1 else rows.float()


def _run_to(model: nn.Module, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The output of ``module`` when ``model(x)`` runs (the rest of the forward is skipped)."""
    out: list[torch.Tensor] = []

    def hook(mod: nn.Module, args: object, output: object) -> None:
        tensor = output[0] if isinstance(output, tuple) and output else output
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"`layer` returned {type(output).__name__}, not a tensor")
        out.append(tensor)
        raise _Stop

    handle = module.register_forward_hook(hook)
    try:
        model(x)
    except _Stop:
        pass
    finally:
        handle.remove()
    if not out:
        raise ValueError("`layer` was not called in the model's forward")
    return out[0]


def layer_channels(model: nn.Module, layer: ModuleSpec, shape: Sequence[int]) -> int:
    """The number of channels (features) of ``layer``'s output for inputs of ``shape`` ``(C, H, W)``.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 5, 3), nn.ReLU())
        >>> layer_channels(net, "0", (3, 8, 8))
        5
    """
    _, module = resolve_one_layer(model, layer)
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    with model_untouched(model, [device]), torch.no_grad():
        act = _run_to(model, module, torch.zeros(1, *shape, device=device))
    return int(act.shape[-1] if act.dim() == 3 else act.shape[1])


def _gaussian_blur(img: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = max(1, round(2 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=img.dtype, device=img.device)
    k = torch.exp(-(t**2) / (2 * sigma**2))
    k = k / k.sum()
    c = img.shape[1]
    pad = F.pad(img, (radius, radius, radius, radius), mode="replicate")
    out = F.conv2d(pad, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(out, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def _to_image(param: torch.Tensor, color: str) -> torch.Tensor:
    if color == "clamped":
        return param
    if param.shape[1] == 3:
        basis = _COLOR_SQRT.to(param) / _COLOR_SQRT.norm(dim=0).max()
        param = torch.einsum("ij,bjhw->bihw", basis, param)
    return torch.sigmoid(param)


def visualize_filters(
    model: nn.Module,
    layer: ModuleSpec,
    channels: int | Sequence[int],
    *,
    size: int = 32,
    in_channels: int = 3,
    steps: int = 64,
    rounds: int = 3,
    upscale: float = 1.5,
    lr: float = 0.05,
    jitter: int = 2,
    blur_every: int = 4,
    blur_sigma: float = 0.5,
    color: ColorSpace = "decorrelated",
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    seed: int = 0,
) -> torch.Tensor:
    """Images in ``[0, 1]`` that maximise the mean activation of ``channels`` of ``layer``.

    All channels are optimised together, one image each, with the model in eval mode
    (so the images are independent). Afterwards the model's train/eval flags,
    ``requires_grad`` flags, parameter ``.grad`` and the global RNG streams are as before
    (noise and jitter come from a private generator seeded by ``seed``); no hook is left.

    Args:
        model: called as ``model(x)``; the forward stops at ``layer``.
        layer: one submodule, by the library's naming rule. Its output may be conv maps
            ``(B, C, H, W)`` (channel ``c`` = map ``c``), vectors ``(B, F)`` or sequences
            ``(B, T, F)`` (feature ``c``).
        channels: one channel index or several.
        size: side of the final square image (at most 4096).
        in_channels: channels of the model's input.
        steps: Adam steps per round (at most 100000).
        rounds: resolutions, growing by ``upscale`` up to ``size`` (1: fixed resolution; at
            most 16).
        upscale: resolution factor between rounds.
        lr: Adam learning rate.
        jitter: largest random shift (pixels) per step; 0 turns it off.
        blur_every: blur the image every so many steps; 0 turns it off.
        blur_sigma: the blur's standard deviation in pixels, at most ``size``.
        color: ``"decorrelated"`` or ``"clamped"`` (see the module docstring).
        mean: per-channel mean subtracted before the model sees the image (its input
            normalisation); default 0.
        std: per-channel standard deviation the image is divided by; default 1.
        seed: seeds the private generator (0 to ``2**64 - 1``).

    Returns:
        ``(len(channels), in_channels, size, size)`` float32 images in ``[0, 1]`` (a leading
        dimension of 1 for a single index).

    Raises:
        ValueError: arguments out of range, ``layer`` selecting no or several modules,
            or a channel the layer does not have.
        TypeError: ``model`` not a module, ``channels`` not integers, or an argument of
            the wrong type.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
        >>> visualize_filters(net, "1", [0, 2], size=8, steps=2, rounds=2).shape
        torch.Size([2, 3, 8, 8])
    """
    check_module("model", model)
    idx = (
        [channels]
        if isinstance(channels, int)
        else list(channels)
        if isinstance(channels, Sequence) and not isinstance(channels, str | bytes)
        else None
    )
    if idx is None or any(isinstance(c, bool) or not isinstance(c, int) for c in idx):
        raise TypeError(
            f"`channels` must be a channel index or a non-empty sequence of them (>= 0); got {describe(channels)}"
        )
    if not idx or min(idx) < 0:
        raise ValueError(
            f"`channels` must be a channel index or a non-empty sequence of them (>= 0); got {channels!r}"
        )
    if max(idx) > _MAX_INDEX:
        raise ValueError(f"`channels` must be channel indices <= {_MAX_INDEX}; got {channels!r}")
    size = check_int("size", size, minimum=1, maximum=MAX_SIZE)
    in_channels = check_int("in_channels", in_channels, minimum=1, maximum=MAX_SIZE)
    if len(idx) * in_channels * size * size > _MAX_VALUES:
        raise ValueError(
            f"the images would hold {len(idx)} x {in_channels} x {size} x {size} values (more than "
            f"{_MAX_VALUES}); ask for fewer `channels`, a smaller `size` or fewer `in_channels`"
        )
    steps = check_int("steps", steps, minimum=1, maximum=MAX_STEPS)
    rounds = check_int("rounds", rounds, minimum=1, maximum=MAX_ROUNDS)
    upscale = check_number("upscale", upscale, minimum=1.0)
    lr = check_number("lr", lr, minimum=0.0, exclusive_minimum=True)
    jitter = check_int("jitter", jitter, minimum=0, maximum=MAX_SIZE)
    blur_every = check_int("blur_every", blur_every, minimum=0)
    blur_sigma = check_number("blur_sigma", blur_sigma, minimum=0.0, maximum=float(size))
    color = check_choice("color", color, get_args(ColorSpace))
    seed = check_int("seed", seed, minimum=0, maximum=MAX_SEED)
    shift, scale = _normalisation(mean, std, in_channels)
    name, module = resolve_one_layer(model, layer)
    param0 = next(model.parameters(), None)
    device = param0.device if param0 is not None else torch.device("cpu")
    dtype = param0.dtype if param0 is not None and param0.is_floating_point() else torch.float32
    shift, scale = shift.to(device), scale.to(device)
    targets = torch.tensor(idx, device=device)
    sizes = [max(1, round(size / upscale ** (rounds - 1 - r))) for r in range(rounds)]
    gen = torch.Generator(device=device).manual_seed(seed)
    with model_untouched(model, [device]), torch.enable_grad():
        if color == "clamped":
            init = 0.5 + 0.1 * torch.randn(
                len(idx), in_channels, sizes[0], sizes[0], generator=gen, device=device
            )
        else:
            init = 0.01 * torch.randn(len(idx), in_channels, sizes[0], sizes[0], generator=gen, device=device)
        param = init.clamp(0, 1) if color == "clamped" else init
        for r, side in enumerate(sizes):
            if r:
                param = F.interpolate(param.detach(), size=(side, side), mode="bilinear", align_corners=False)
            param = param.detach().requires_grad_(True)
            opt = torch.optim.Adam([param], lr=lr)
            for step in range(steps):
                img = _to_image(param, color)
                if jitter:
                    dy, dx = (
                        int(v) for v in torch.randint(-jitter, jitter + 1, (2,), generator=gen, device=device)
                    )
                    img = torch.roll(img, shifts=(dy, dx), dims=(2, 3))
                with model_errors(
                    f"running `model` on images of shape {tuple(img.shape)} (`in_channels`={in_channels})"
                ):
                    act = _run_to(model, module, ((img - shift) / scale).to(dtype))
                if step == 0 and r == 0:
                    available = act.shape[-1] if act.dim() == 3 else act.shape[1]
                    if max(idx) >= available:
                        raise ValueError(
                            f"`channels` must lie in [0, {available}) for `layer` {name!r}; got {idx}"
                        )
                loss = -_unit_mean(act, targets).sum()
                opt.zero_grad(set_to_none=True)
                loss.backward(inputs=[param])
                opt.step()
                with torch.no_grad():
                    if color == "clamped":
                        param.clamp_(0, 1)
                    if (
                        blur_every
                        and blur_sigma > 0
                        and (step + 1) % blur_every == 0
                        and min(param.shape[-2:]) > 2
                    ):
                        param.copy_(_gaussian_blur(param, blur_sigma))
        with torch.no_grad():
            return _to_image(param.detach(), color).float().clamp(0, 1)


def _normalisation(
    mean: Sequence[float] | None, std: Sequence[float] | None, in_channels: int
) -> tuple[torch.Tensor, torch.Tensor]:
    out = []
    for arg, value, default in (("mean", mean, 0.0), ("std", std, 1.0)):
        if value is not None and (not isinstance(value, Sequence) or isinstance(value, str | bytes)):
            raise TypeError(
                f"`{arg}` must be a sequence of 1 or {in_channels} numbers (one per input channel) or None; "
                f"got {describe(value)}"
            )
        values = [default] * in_channels if value is None else list(value)
        if len(values) not in (1, in_channels):
            raise ValueError(
                f"`{arg}` must hold 1 or {in_channels} numbers (one per input channel); got {value!r}"
            )
        values = [
            check_number(arg, v, minimum=0.0 if arg == "std" else None, exclusive_minimum=True)
            for v in values
        ]
        out.append(torch.tensor(values, dtype=torch.float32).expand(in_channels).reshape(1, -1, 1, 1))
    return out[0], out[1]
