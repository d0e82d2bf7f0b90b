"""Test-time augmentation with all views of a batch in one (chunked) forward pass."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from lightning_tricks.functional._checks import check_bool, check_choice, check_optional_int
from lightning_tricks.functional.inference.views import View, parse_views

__all__ = ["MERGE_MODES", "merge_outputs", "tta_predict"]

MergeMode = Literal["mean", "mean_softmax", "mean_sigmoid", "gmean_softmax", "gmean_sigmoid", "max", "vote"]
MERGE_MODES: tuple[str, ...] = (
    "mean",
    "mean_softmax",
    "mean_sigmoid",
    "gmean_softmax",
    "gmean_sigmoid",
    "max",
    "vote",
)


def merge_outputs(outputs: torch.Tensor, merge: str = "mean") -> torch.Tensor:
    """Merge per-view outputs of shape ``(V, B, K, ...)`` (class dimension 2) into ``(B, K, ...)``.

    Modes:

    * ``"mean"``: mean of the raw outputs (logits).
    * ``"mean_softmax"`` / ``"mean_sigmoid"``: mean of the probabilities.
    * ``"gmean_softmax"`` / ``"gmean_sigmoid"``: geometric mean of the probabilities,
      ``exp(mean(log p))`` computed from ``log_softmax``/``logsigmoid`` (stable). It is not
      renormalised: for softmax the rows sum to at most 1 and the argmax is that of the
      mean logits.
    * ``"max"``: element-wise maximum of the raw outputs.
    * ``"vote"``: majority vote: for each sample (and pixel) the number of views whose
      argmax over the class dimension is each class, as a float tensor of the output's
      shape (the counts sum to ``V``). ``argmax`` of it is the majority label, ties going
      to the lowest class index; divide by ``V`` for vote fractions.

    Args:
        outputs: stacked per-view outputs, views first.
        merge: one of :data:`MERGE_MODES`.

    Returns:
        The merged output (float32 for the probability, vote and gmean modes when the input
        is a lower precision).

    Raises:
        ValueError: for an unknown mode or outputs without a class dimension.

    Example:
        >>> import torch
        >>> out = torch.tensor([[[2.0, 0.0]], [[0.0, 1.0]], [[3.0, 0.0]]])  # 3 views, 1 sample
        >>> merge_outputs(out, "mean")
        tensor([[1.6667, 0.3333]])
        >>> merge_outputs(out, "vote")
        tensor([[2., 1.]])
    """
    check_choice("merge", merge, MERGE_MODES)
    if merge == "mean":
        return outputs.mean(0)
    if merge == "max":
        return outputs.amax(0)
    if outputs.ndim < 3:
        raise ValueError(
            f"`merge`={merge!r} needs outputs with a class dimension (B, K, ...); got per-sample "
            f"shape {tuple(outputs.shape[1:])}"
        )
    x = outputs.float()
    if merge == "mean_softmax":
        return x.softmax(2).mean(0)
    if merge == "mean_sigmoid":
        return x.sigmoid().mean(0)
    if merge == "gmean_softmax":
        return x.log_softmax(2).mean(0).exp()
    if merge == "gmean_sigmoid":
        return F.logsigmoid(x).mean(0).exp()
    labels = x.argmax(2)  # (V, B, ...)
    votes = F.one_hot(labels, x.shape[2]).sum(0)  # (B, ..., K)
    return votes.movedim(-1, 1).float()


def _forward_chunked(model: Callable, x: torch.Tensor, chunk_size: int | None) -> torch.Tensor:
    if chunk_size is None or chunk_size >= x.shape[0]:
        out = model(x)
    else:
        out = torch.cat([model(c) for c in x.split(chunk_size)], dim=0)
    if not isinstance(out, torch.Tensor):
        raise TypeError(
            f"tta_predict needs a model that returns a tensor; got {type(out).__name__}. "
            "Wrap the model so that it returns the tensor to merge."
        )
    return out


def tta_predict(
    model: nn.Module | Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    views: str | View | Sequence[str | View] = ("identity", "hflip"),
    merge: str = "mean",
    chunk_size: int | None = None,
    *,
    include_identity: bool = True,
    dense: bool | None = None,
    return_views: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Predict with test-time augmentation, all views of the batch in one forward pass.

    The views of the whole batch are concatenated along the batch dimension and run
    through the model together (views that change the image size, such as crops and
    rescales, form one forward pass per distinct size), split into chunks of at most
    ``chunk_size`` images to bound memory. Dense outputs are mapped back by each view's
    inverse before merging. The call runs under ``torch.inference_mode()`` with every
    submodule in eval mode and restores each submodule's previous mode afterwards.

    Input may also be pre-cropped, of shape ``(B, n_crops, C, H, W)`` (torchvision's
    ``TenCrop`` + ``stack`` recipe): the crops are treated as further views of each sample
    and merged together with ``views``.

    Args:
        model: a module or any callable mapping ``(N, C, H, W)`` to a tensor ``(N, ...)``.
        x: images ``(B, C, H, W)`` or pre-cropped ``(B, n_crops, C, H, W)``.
        views: views as strings (``"hflip"``, ``"rot90"``, ``"scale:0.9"``, ``"ten_crop:6"``,
            ``"hflip+rot90"``, ...) or :class:`View` objects.
        merge: how to merge the views, see :func:`merge_outputs`.
        chunk_size: most images per forward pass; ``None`` runs each size group at once.
        include_identity: add the identity view when ``views`` lacks it.
        dense: whether outputs are dense maps to invert; ``None`` decides from the output:
            dense if it has at least 3 dimensions and the spatial size of the view's input.
        return_views: also return the per-view outputs ``(V, B, ...)`` (after inversion)
            for uncertainty estimates.

    Returns:
        The merged output ``(B, ...)``, or ``(merged, per_view)`` with ``return_views``.

    Raises:
        ValueError: for bad arguments, or a non-invertible view (crop) on dense outputs.
        TypeError: if the model does not return a tensor.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Conv2d(3, 2, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        >>> x = torch.randn(4, 3, 8, 8)
        >>> out, per_view = tta_predict(model, x, ["hflip", "rot90"], "mean_softmax", return_views=True)
        >>> out.shape, per_view.shape
        (torch.Size([4, 2]), torch.Size([3, 4, 2]))
        >>> seg = nn.Conv2d(3, 2, 1)  # dense output: views are inverted before merging
        >>> torch.allclose(tta_predict(seg, x, ["hflip", "vflip+rot90"]), seg(x), atol=1e-5)
        True
    """
    view_list = parse_views(views)
    check_choice("merge", merge, MERGE_MODES)
    chunk_size = check_optional_int("chunk_size", chunk_size, minimum=1)
    check_bool("include_identity", include_identity)
    check_bool("return_views", return_views)
    if dense is not None:
        check_bool("dense", dense)
    if include_identity and not any(v.name == "identity" for v in view_list):
        view_list = parse_views(["identity", *view_list])
    if not isinstance(x, torch.Tensor) or x.ndim not in (4, 5):
        raise ValueError(
            f"`x` must be a tensor of shape (B, C, H, W) or (B, n_crops, C, H, W); got "
            f"{getattr(x, 'shape', type(x).__name__)}"
        )
    b = x.shape[0]
    n_pre = 1
    if x.ndim == 5:  # pre-cropped: crops become the fastest-varying part of the batch
        n_pre = x.shape[1]
        x = x.reshape(b * n_pre, *x.shape[2:])

    modes = {m: m.training for m in model.modules()} if isinstance(model, nn.Module) else {}
    try:
        for m in modes:
            m.training = False
        with torch.inference_mode():
            per_view = _run_views(model, x, view_list, chunk_size, dense, pre_cropped=n_pre > 1)
    finally:
        for m, mode in modes.items():
            m.training = mode
    # (sum_v n_v * b * n_pre, ...) -> (V_total, B, ...)
    per_view = per_view.reshape(-1, b, n_pre, *per_view.shape[1:]).transpose(1, 2)
    per_view = per_view.reshape(-1, b, *per_view.shape[3:])
    merged = merge_outputs(per_view, merge)
    return (merged, per_view) if return_views else merged


def _run_views(
    model: Callable,
    x: torch.Tensor,
    views: list[View],
    chunk_size: int | None,
    dense: bool | None,
    pre_cropped: bool,
) -> torch.Tensor:
    size = tuple(x.shape[-2:])
    augmented = [v.apply(x) for v in views]
    # One forward per distinct augmented shape (all flips/rotations of square images share one).
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, a in enumerate(augmented):
        groups.setdefault(tuple(a.shape[1:]), []).append(i)
    outputs: list[torch.Tensor | None] = [None] * len(views)
    for idx in groups.values():
        batch = torch.cat([augmented[i] for i in idx], dim=0) if len(idx) > 1 else augmented[idx[0]]
        out = _forward_chunked(model, batch, chunk_size)
        for i, o in zip(idx, out.split([augmented[i].shape[0] for i in idx], dim=0)):
            outputs[i] = o
    result = []
    for v, a, o in zip(views, augmented, outputs):
        assert o is not None
        is_dense = (
            dense if dense is not None else (o.ndim >= 3 and tuple(o.shape[-2:]) == tuple(a.shape[-2:]))
        )
        if is_dense:
            if pre_cropped:
                raise ValueError(
                    "pre-cropped input (B, n_crops, C, H, W) cannot be merged for dense outputs: crops "
                    "are not invertible; pass `dense=False` if the outputs are not spatial maps"
                )
            o = v.invert(o, size)
        result.append(o)
    shapes = {tuple(r.shape[1:]) for r in result}
    if len(shapes) > 1:
        raise ValueError(
            f"the views give outputs of different shapes {sorted(shapes)}; dense outputs need invertible "
            "views (pass `dense=True` to force inversion, or `dense=False` if they are not spatial maps)"
        )
    return torch.cat(result, dim=0)
