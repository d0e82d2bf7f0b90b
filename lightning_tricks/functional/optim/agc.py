"""Adaptive gradient clipping (AGC) of Brock et al. 2021, "High-Performance Large-Scale Image
Recognition Without Normalization" (https://arxiv.org/abs/2102.06171).

Each *unit* (one output row of a weight: dims 1.. of a tensor with ``ndim > 1``, or the
whole tensor for biases and gains) has its gradient rescaled so that
``||G_i|| <= clip_factor * max(||W_i||, eps)``. The formula is that of the NFNet reference
and of timm's ``adaptive_clip_grad``.

Pair: the callback [`AdaptiveGradientClipping`][lightning_tricks.AdaptiveGradientClipping] runs
[`adaptive_clip_grad_`][lightning_tricks.functional.adaptive_clip_grad_] on every parameter that [`adaptive_clip_exclusions`][lightning_tricks.functional.adaptive_clip_exclusions]
does not leave out.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from lightning_tricks.functional._checks import (
    check_bool,
    check_module,
    check_norm_type,
    check_number,
    check_tensor,
    check_tensors,
)
from lightning_tricks.functional._modules import ModuleSpec, resolve_parameters
from lightning_tricks.functional.finetune.heads import find_head
from lightning_tricks.functional.optim._clip import ClipResult, empty_result

__all__ = ["adaptive_clip_exclusions", "adaptive_clip_grad_", "unitwise_norm"]


def unitwise_norm(x: torch.Tensor, norm_type: float = 2.0) -> torch.Tensor:
    """Norm of every unit of ``x``: over all dims but the first, or of the whole tensor if ``ndim <= 1``.

    Args:
        x: a weight or gradient tensor.
        norm_type: the order of the norm (``2.0``, ``1.0``, ``inf``...).

    Returns:
        A tensor broadcastable against ``x``: shape ``(x.shape[0], 1, ...)``, or 0-d.

    Raises:
        TypeError: ``x`` is not a floating-point tensor.
        ValueError: ``norm_type`` is not in [1, 32] or inf.

    Example:
        >>> import torch
        >>> unitwise_norm(torch.tensor([[3.0, 4.0], [0.0, 1.0]])).flatten().tolist()
        [5.0, 1.0]
    """
    x = check_tensor("x", x, dtype="float")
    norm_type = check_norm_type("norm_type", norm_type)
    if x.ndim <= 1:
        return torch.linalg.vector_norm(x, norm_type)
    return torch.linalg.vector_norm(x, norm_type, dim=tuple(range(1, x.ndim)), keepdim=True)


def adaptive_clip_exclusions(
    model: nn.Module, *, skip_classifier: bool = True, exclude: ModuleSpec = ()
) -> list[str]:
    """Names of the parameters that AGC leaves out, in ``named_parameters()`` order.

    NFNets leave the final classifier out of AGC. The classifier is the layer that
    [`find_head`][lightning_tricks.functional.find_head] finds (the module returned by a
    timm-style ``get_classifier()``, else the last ``nn.Linear`` that is not an attention
    projection); a model without one has nothing left out for it. ``exclude`` names more
    parameters or modules by the package's naming rule (qualified names, segment-wise
    globs such as ``"backbone.*"`` or ``"**.bias"``, class names).

    Args:
        model: the model.
        skip_classifier: leave out the parameters of the classifier layer.
        exclude: further parameters or modules to leave out.

    Returns:
        The parameter names left out (a tied parameter under its first name).

    Raises:
        TypeError: ``model`` is not a module, ``skip_classifier`` not a bool or
            ``exclude`` not names.
        ValueError: an ``exclude`` entry names nothing (with suggestions).

    Example:
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 3))
        >>> adaptive_clip_exclusions(net)
        ['2.weight', '2.bias']
        >>> adaptive_clip_exclusions(net, skip_classifier=False, exclude="1")
        ['1.weight', '1.bias']
    """
    model = check_module("model", model)
    skip_classifier = check_bool("skip_classifier", skip_classifier)
    chosen = {id(p) for p in resolve_parameters(model, exclude, "exclude", allow_empty=True).values()}
    if skip_classifier:
        try:
            head: str | None = find_head(model)
        except ValueError:  # no classifier layer: nothing to leave out for it
            head = None
        if head:
            chosen.update(id(p) for p in model.get_submodule(head).parameters())
    return [n for n, p in model.named_parameters() if id(p) in chosen]


@torch.no_grad()
def adaptive_clip_grad_(
    parameters: torch.Tensor | Iterable[torch.Tensor],
    clip_factor: float = 0.01,
    eps: float = 1e-3,
    norm_type: float = 2.0,
) -> ClipResult:
    """Clip the gradients of ``parameters`` in place, unit by unit, relative to the weights.

    For every unit ``i``, ``max_norm = max(||W_i||, eps) * clip_factor``; where
    ``||G_i|| >= max_norm`` the gradient becomes ``G_i * max_norm / max(||G_i||, 1e-6)``.
    Call it on *unscaled* gradients (after ``GradScaler.unscale_``) and, under DDP, after
    the gradients were reduced. Nothing is copied to the host.

    Args:
        parameters: tensors (or one tensor) whose ``.grad`` is clipped; those without a
            gradient are ignored. NFNets leave the final classifier out.
        clip_factor: the clipping threshold λ (0.01 for batch size 4096 in the paper,
            larger for smaller batches).
        eps: lower bound of the weight norm, so that zero-initialised weights can move.
        norm_type: order of the unit-wise norms.

    Returns:
        A [`ClipResult`][lightning_tricks.functional.ClipResult]: the total gradient norm before and after (computed from
        the unit norms) and whether any unit was clipped.

    Raises:
        TypeError: ``parameters`` is not a tensor or an iterable of tensors.
        ValueError: if ``clip_factor``/``eps`` are not numbers > 0 or ``norm_type`` is
            not in [1, 32] or inf.

    Example:
        >>> import torch
        >>> w = torch.nn.Parameter(torch.ones(2, 3))
        >>> w.grad = torch.tensor([[1.0, 0.0, 0.0], [0.001, 0.0, 0.0]])
        >>> res = adaptive_clip_grad_([w], clip_factor=0.1)
        >>> [round(v, 4) for v in w.grad[:, 0].tolist()]  # row 0 clipped to 0.1 * sqrt(3)
        [0.1732, 0.001]
        >>> bool(res.clipped)
        True
    """
    clip_factor = check_number("clip_factor", clip_factor, minimum=0.0, exclusive_minimum=True)
    eps = check_number("eps", eps, minimum=0.0, exclusive_minimum=True)
    norm_type = check_norm_type("norm_type", norm_type)
    pairs = [(p, p.grad) for p in check_tensors("parameters", parameters) if p.is_leaf and p.grad is not None]
    if not pairs:
        return empty_result()
    device = pairs[0][1].device  # the result's device; per-parameter work stays on each one's
    before, after, clipped = [], [], []
    for p, g in pairs:
        grad = g.detach()
        max_norm = unitwise_norm(p.detach(), norm_type).clamp(min=eps).mul_(clip_factor)
        grad_norm = unitwise_norm(grad, norm_type)
        keep = grad_norm < max_norm
        scale = torch.where(keep, torch.ones_like(grad_norm), max_norm / grad_norm.clamp(min=1e-6))
        grad.copy_(grad * scale)
        new_norm = grad_norm * scale
        if math.isinf(norm_type):
            before.append(grad_norm.float().amax().to(device))
            after.append(new_norm.float().amax().to(device))
        else:
            before.append(grad_norm.float().pow(norm_type).sum().to(device))
            after.append(new_norm.float().pow(norm_type).sum().to(device))
        clipped.append((~keep).any().to(device))
    if math.isinf(norm_type):
        norm_before, norm_after = torch.stack(before).amax(), torch.stack(after).amax()
    else:
        power = 1.0 / norm_type
        norm_before, norm_after = torch.stack(before).sum().pow(power), torch.stack(after).sum().pow(power)
    return ClipResult(norm_before, norm_after, torch.stack(clipped).any())
