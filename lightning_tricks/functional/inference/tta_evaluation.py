"""What test-time augmentation gains: plain and TTA predictions of one batch, and the flips.

The functional core of [`TTAEvaluation`][lightning_tricks.TTAEvaluation] (``TTAEvaluation`` ->
[`tta_evaluation`][lightning_tricks.functional.tta_evaluation], plus [`tta_flips`][lightning_tricks.functional.tta_flips]): the callback only decides on which
batches to call it and accumulates metrics over the epoch (synchronised across ranks).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
from torch import nn

from lightning_tricks.functional._checks import check_bool, check_choice, check_tensor
from lightning_tricks.functional.inference._tta_model import OutputSelector
from lightning_tricks.functional.inference.tta_predict import (
    MERGE_MODES,
    MergeMode,
    merge_outputs,
    tta_predict,
)
from lightning_tricks.functional.inference.views import View, parse_view, parse_views

__all__ = ["tta_evaluation", "tta_flips"]


def tta_evaluation(
    model: nn.Module | Callable[[torch.Tensor], Any],
    x: torch.Tensor,
    views: str | View | Sequence[str | View] = ("hflip",),
    merge: MergeMode = "mean",
    chunk_size: int | Literal["auto"] | None = "auto",
    *,
    include_identity: bool = True,
    output: OutputSelector = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain and TTA outputs of ``x``, from one batched forward pass of all views.

    The identity view's output is the plain prediction (the model run once, in eval
    mode); the TTA prediction merges ``views`` (with the identity view when
    ``include_identity``) as [`tta_predict`][lightning_tricks.functional.tta_predict] would.

    Args:
        model: a module or callable, as for [`tta_predict`][lightning_tricks.functional.tta_predict].
        x: images ``(B, C, H, W)``.
        views: the TTA views (view strings, see [`parse_view`][lightning_tricks.functional.parse_view],
            or [`View`][lightning_tricks.functional.View] objects); a lone string is one view.
        merge: how to merge the views, see [`merge_outputs`][lightning_tricks.functional.merge_outputs].
        chunk_size: most images per forward pass (``"auto"`` plans it).
        include_identity: whether the TTA prediction includes the identity view.
        output: which tensor of the model's output to use (see ``tta_predict``).

    Returns:
        ``(plain, tta)``, both float32 of the model's output shape.

    Raises:
        ValueError: for bad arguments (see ``tta_predict``), or no view besides the identity
            with ``include_identity=False``.
        TypeError: for arguments of the wrong type (see ``tta_predict``).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        >>> x = torch.randn(8, 3, 8, 8)
        >>> plain, tta = tta_evaluation(model, x, ["hflip", "vflip"])
        >>> torch.allclose(plain, model.eval()(x), atol=1e-6), tta.shape
        (True, torch.Size([8, 4]))
    """
    check_choice("merge", merge, MERGE_MODES)
    check_bool("include_identity", include_identity)
    others = [v for v in parse_views(views) if v.name != "identity"]
    if not include_identity and not others:
        raise ValueError(
            f"`views` must hold a view besides 'identity' when `include_identity`=False (the TTA prediction "
            f"would merge no view); got {views!r}"
        )
    _, per_view = tta_predict(
        model,
        x,
        [parse_view("identity"), *others],
        "mean",
        chunk_size,
        include_identity=True,
        return_views=True,
        output=output,
    )
    per_view = per_view.float()
    tta = merge_outputs(per_view if include_identity else per_view[1:], merge)
    return per_view[0], tta


def tta_flips(
    plain: torch.Tensor, tta: torch.Tensor, target: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Which samples (pixels, for dense outputs) TTA turned from right to wrong and back.

    Args:
        plain: plain class scores ``(B, K, ...)``.
        tta: TTA class scores of the same shape.
        target: labels ``(B, ...)``.

    Returns:
        ``(correct_to_wrong, wrong_to_correct)``: boolean masks of ``target``'s shape,
        comparing the argmax over the class dimension with ``target``.

    Raises:
        TypeError: ``plain``/``tta`` are not floating-point tensors or ``target`` not an
            integer tensor.
        ValueError: if the shapes do not fit.

    Example:
        >>> plain = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
        >>> tta = torch.tensor([[0.0, 2.0], [0.0, 1.0], [0.0, 1.0]])
        >>> c2w, w2c = tta_flips(plain, tta, torch.tensor([0, 1, 1]))
        >>> c2w.tolist(), w2c.tolist()
        ([True, False, False], [False, False, True])
    """
    check_tensor("plain", plain, dtype="float")
    check_tensor("tta", tta, dtype="float")
    check_tensor("target", target, dtype="integer")
    if (
        plain.shape != tta.shape
        or plain.ndim < 2
        or plain.shape[1] == 0
        or plain.shape[:1] + plain.shape[2:] != target.shape
    ):
        raise ValueError(
            f"`plain` and `tta` must be class scores (B, K, ...) of one shape and `target` (B, ...); got "
            f"{tuple(plain.shape)}, {tuple(tta.shape)} and {tuple(target.shape)}"
        )
    target = target.to(plain.device)
    ok_plain, ok_tta = plain.argmax(1) == target, tta.argmax(1) == target
    return ok_plain & ~ok_tta, ~ok_plain & ok_tta
