"""Grad-CAM: where in the image a classifier looked (pair: ``ClassActivationMaps`` <-> [`grad_cam`][lightning_tricks.functional.grad_cam]).

Convention (Selvaraju et al., 2017): for the score ``y`` (the logit of the target class,
by default the predicted one) and the feature maps ``A`` of shape ``(B, K, h, w)`` of the
chosen layer, the channel weights are ``w_k = mean_{i,j} dy/dA_k[i, j]``; the map is
``ReLU(sum_k w_k A_k)``, upsampled bilinearly (``align_corners=False``) to the input's
``H x W`` and min-max normalised to ``[0, 1]`` per image (a constant map becomes zeros).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lightning_tricks.functional._checks import check_module, check_tensor, describe
from lightning_tricks.functional._model_errors import model_errors
from lightning_tricks.functional._modules import ModuleSpec, resolve_modules

__all__ = ["grad_cam", "image_grid", "logits_of", "model_untouched", "overlay_heatmaps", "resolve_one_layer"]


def resolve_one_layer(model: nn.Module, layer: ModuleSpec, arg: str = "layer") -> tuple[str, nn.Module]:
    """The one submodule that ``layer`` names (the library's naming rule).

    Raises:
        ValueError: ``layer`` selects nothing or more than one submodule.
        TypeError: ``layer`` is not a name or class.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU())
        >>> resolve_one_layer(net, "Conv2d")[0]
        '0'
    """
    found = resolve_modules(model, layer, arg)
    if len(found) != 1:
        raise ValueError(
            f"`{arg}` must select exactly one submodule; got {layer!r}, which selects {len(found)}: "
            f"{', '.join(list(found)[:10])}"
        )
    return next(iter(found.items()))


def logits_of(output: Any) -> torch.Tensor:
    """The logits in a model's output: a tensor, a ``ModelOutput``'s ``.logits``, or the
    first element of a tuple/list.

    Raises:
        TypeError: when none of these is a tensor.

    Example:
        >>> logits_of((torch.ones(2, 3), None)).shape
        torch.Size([2, 3])
    """
    if isinstance(output, torch.Tensor):
        return output
    logits = getattr(output, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(output, Sequence) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise TypeError(
        f"cannot find logits in the model output of type {type(output).__name__}: expected a tensor, "
        f"an object with `.logits` or a tuple whose first element is the logits; pass `output=` to pick them"
    )


@contextlib.contextmanager
def model_untouched(model: nn.Module, devices: Sequence[torch.device] = ()) -> Iterator[None]:
    """Inside: the model in eval mode with every parameter's ``requires_grad`` off; after:
    train/eval flags, ``requires_grad``, parameter ``.grad`` and the global RNG streams
    (CPU and the CUDA ``devices``) as they were before."""
    modes = [(m, m.training) for m in model.modules()]
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    grads = [p.grad for p in params]
    cuda = sorted({d.index or 0 for d in devices if d.type == "cuda"})
    try:
        with torch.random.fork_rng(devices=cuda):
            model.eval()
            for p in params:
                p.requires_grad_(False)
            yield
    finally:
        for m, training in modes:
            m.training = training
        for p, flag, grad in zip(params, flags, grads):
            p.requires_grad_(flag)
            p.grad = grad


def _spatial_error(name: str, shape: tuple[int, ...]) -> ValueError:
    return ValueError(
        f"`layer` {name!r} outputs a tensor of shape {shape}; Grad-CAM needs feature maps of shape "
        f"(B, C, H, W) with spatial dimensions (a convolution, a CNN stage or block). Layers without "
        f"spatial dimensions (Linear, pooled features, token sequences (B, T, F)) have no map to weight"
    )


def grad_cam(
    model: nn.Module,
    x: torch.Tensor,
    layer: ModuleSpec,
    targets: int | Sequence[int] | torch.Tensor | None = None,
    output: Callable[[Any], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Grad-CAM heatmaps of ``model`` on images ``x`` at ``layer``, in ``[0, 1]``, shape ``(B, H, W)``.

    The model runs once in eval mode, with gradients only with respect to the layer's
    output; afterwards its train/eval flags, ``requires_grad`` flags, parameter ``.grad``
    and the global RNG streams are as before, and no hook is left behind. Weights and
    buffers are not written.

    Args:
        model: a classifier called as ``model(x)``; it may return logits ``(B, classes)``,
            a HuggingFace ``ModelOutput`` with ``.logits``, or a tuple starting with them.
        x: images ``(B, C, H, W)``.
        layer: the submodule whose output feature maps ``(B, K, h, w)`` are weighted, by the
            library's naming rule (must select exactly one), e.g. ``"backbone.1"``,
            ``"model.resnet.encoder.stages.1"``.
        targets: the class whose logit is explained, one for all images or one per image;
            by default each image's predicted class.
        output: picks the logits from the model's output when the default does not.

    Returns:
        ``(B, H, W)`` float32 maps on ``x``'s device, each min-max normalised to ``[0, 1]``.

    Raises:
        ValueError: ``layer`` selects no or several modules, its output has no spatial
            dimensions, ``x`` is not 4-D or empty, ``targets`` is out of range or of the
            wrong length, or the model raised a ``RuntimeError`` on ``x`` (chained).
        TypeError: ``model`` is not a module, ``x`` not a floating-point tensor, ``targets``
            not class indices, ``output`` not callable, or the logits cannot be found.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        ...                     nn.Flatten(), nn.Linear(4, 2))
        >>> grad_cam(net, torch.randn(2, 3, 8, 8), layer="0").shape
        torch.Size([2, 8, 8])
    """
    check_module("model", model)
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        raise TypeError(f"`x` must be a tensor of images (B, C, H, W); got {describe(x)}")
    check_tensor("x", x, dtype="float", nonempty=True)
    if output is not None and (not callable(output) or isinstance(output, type)):
        raise TypeError(
            f"`output` must be a callable picking the logits from the model's output, or None; got {describe(output)}"
        )
    _check_targets(targets, x.shape[0])
    name, module = resolve_one_layer(model, layer)
    pick = output if output is not None else logits_of
    captured: list[torch.Tensor] = []

    def hook(mod: nn.Module, args: object, out: object) -> object:
        tensor = out[0] if isinstance(out, tuple) and out else out
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"`layer` {name!r} returned {type(out).__name__}, not a tensor")
        if tensor.dim() != 4:
            raise _spatial_error(name, tuple(tensor.shape))
        # a fresh leaf: gradients stop here, and exist even when every parameter is frozen
        act = tensor.detach().requires_grad_(True)
        captured.append(act)
        return (act, *out[1:]) if isinstance(out, tuple) else act

    with model_untouched(model, [x.device]), torch.enable_grad():
        handle = module.register_forward_hook(hook)
        try:
            with model_errors(f"running `model` on `x` ({describe(x)})"):
                raw = model(x)
            with model_errors(f"the `output` callable on the model's {type(raw).__name__}"):
                logits = pick(raw)
        finally:
            handle.remove()
        if not captured:
            raise ValueError(f"`layer` {name!r} was not called in the model's forward")
        act = captured[-1]
        if not isinstance(logits, torch.Tensor):
            raise TypeError(f"`output` must return the logits tensor; got {describe(logits)}")
        if logits.dim() != 2 or logits.shape[0] != x.shape[0]:
            raise ValueError(
                f"the logits must have shape (B, classes) with B={x.shape[0]}; got {tuple(logits.shape)}"
            )
        idx = _targets(targets, logits)
        score = logits.float().gather(1, idx[:, None]).sum()
        (grad,) = torch.autograd.grad(score, act)
    a, g = act.detach().float(), grad.float()
    weights = g.mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * a).sum(dim=1, keepdim=True))
    cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    flat = cam.flatten(1)
    low = flat.min(dim=1).values[:, None, None]
    span = flat.max(dim=1).values[:, None, None] - low
    return torch.where(
        span > 0, (cam - low) / span.clamp_min(torch.finfo(cam.dtype).tiny), torch.zeros_like(cam)
    )


def _check_targets(targets: Any, batch: int) -> None:
    """Types and count of ``targets`` (before the model runs); the range is checked against the logits."""
    if targets is None:
        return
    what = "`targets` must be a class index, a sequence of them (one per image), an integer tensor or None"
    if isinstance(targets, torch.Tensor):
        if targets.is_floating_point() or targets.is_complex() or targets.dtype == torch.bool:
            raise TypeError(f"{what}; got {describe(targets)}")
        count = targets.numel()
    elif isinstance(targets, Sequence | int) and not isinstance(targets, str | bytes | bool):
        values = [targets] if isinstance(targets, int) else list(targets)
        if any(isinstance(t, bool) or not isinstance(t, int) for t in values):
            raise TypeError(f"{what}; got {describe(targets)}")
        if any(not 0 <= t < 2**31 for t in values):
            raise ValueError(f"`targets` must be class indices >= 0; got {describe(targets)}")
        count = len(values)
    else:
        raise TypeError(f"{what}; got {describe(targets)}")
    if count not in (1, batch):
        raise ValueError(f"`targets` must give one class or one per image ({batch}); got {count}")


def _targets(targets: int | Sequence[int] | torch.Tensor | None, logits: torch.Tensor) -> torch.Tensor:
    batch, classes = logits.shape
    if targets is None:
        return logits.detach().argmax(dim=1)
    idx = torch.as_tensor(targets, device=logits.device).long().reshape(-1)
    if idx.numel() == 1:
        idx = idx.expand(batch)
    if bool(((idx < 0) | (idx >= classes)).any()):
        raise ValueError(f"`targets` must lie in [0, {classes}); got {idx.tolist()}")
    return idx.contiguous()


def _display(images: torch.Tensor) -> torch.Tensor:
    """``(B, 3, H, W)`` in ``[0, 1]``: the first 3 channels (grey repeated), min-max per image."""
    img = images.detach().float()
    img = img[:, :3] if img.shape[1] >= 3 else img[:, :1].expand(-1, 3, -1, -1)
    flat = img.flatten(1)
    low = flat.min(dim=1).values[:, None, None, None]
    span = (flat.max(dim=1).values[:, None, None, None] - low).clamp_min(1e-12)
    return (img - low) / span


def _jet(cam: torch.Tensor) -> torch.Tensor:
    """A jet-like colour map: ``(B, H, W)`` in ``[0, 1]`` -> ``(B, 3, H, W)``."""
    c = cam.clamp(0, 1)[:, None]
    return torch.cat([(1.5 - (4 * c - s).abs()).clamp(0, 1) for s in (3.0, 2.0, 1.0)], dim=1)


def overlay_heatmaps(images: torch.Tensor, cams: torch.Tensor, alpha: float = 0.5) -> torch.Tensor:
    """A ``(3, H', W')`` grid in ``[0, 1]``: the images on top, their heatmaps blended in below.

    Args:
        images: ``(B, C, H, W)``, any range (each is min-max scaled for display).
        cams: ``(B, H, W)`` maps in ``[0, 1]`` (as [`grad_cam`][lightning_tricks.functional.grad_cam] returns them).
        alpha: weight of the heat colour in the blend.

    Example:
        >>> overlay_heatmaps(torch.rand(2, 1, 4, 4), torch.rand(2, 4, 4)).shape
        torch.Size([3, 9, 9])
    """
    shown = _display(images)
    blended = (1 - alpha) * shown + alpha * _jet(cams.to(shown))
    return image_grid(torch.cat([shown, blended]), nrow=shown.shape[0])


def image_grid(images: torch.Tensor, nrow: int, pad: int = 1) -> torch.Tensor:
    """Tile ``(N, 3, H, W)`` images into a ``(3, H', W')`` grid, ``nrow`` images per row,
    separated by ``pad`` white pixels.

    Example:
        >>> image_grid(torch.zeros(5, 3, 2, 2), nrow=3).shape
        torch.Size([3, 5, 8])
    """
    n, c, h, w = images.shape
    rows = -(-n // nrow)
    grid = torch.ones(
        c, rows * (h + pad) - pad, nrow * (w + pad) - pad, dtype=images.dtype, device=images.device
    )
    for i in range(n):
        r, col = divmod(i, nrow)
        grid[:, r * (h + pad) : r * (h + pad) + h, col * (w + pad) : col * (w + pad) + w] = images[i]
    return grid
