"""Test-time augmentation with all views of a batch in one (chunked) forward pass.

The functional core of [`TTAPredict`][lightning_tricks.TTAPredict] (``TTAPredict`` ->
[`tta_predict`][lightning_tricks.functional.tta_predict]); [`TTAEvaluation`][lightning_tricks.TTAEvaluation] compares plain and TTA
predictions with [`merge_outputs`][lightning_tricks.functional.merge_outputs]. Views live in ``views.py``, output selection and
eval-mode switching in ``_tta_model.py``, chunk-size planning in ``_tta_plan.py``.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from collections.abc import Callable, Sequence
from typing import Any, Literal, get_args, overload

import torch
import torch.nn.functional as F
from torch import nn

from lightning_tricks.functional._checks import (
    check_bool,
    check_choice,
    check_optional_int,
    check_tensor,
    describe,
)
from lightning_tricks.functional._model_errors import model_errors
from lightning_tricks.functional.inference._tta_model import (
    OutputSelector,
    _check_output,
    _eval_mode,
    modules_of,
    select_output,
)
from lightning_tricks.functional.inference._tta_plan import forward_in_chunks, planned_chunk_size
from lightning_tricks.functional.inference.views import View, parse_view, parse_views

__all__ = [
    "MERGE_MODES",
    "MergeMode",
    "check_chunk_size",
    "merge_outputs",
    "select_output",
    "tta_predict",
]

MergeMode = Literal["mean", "mean_softmax", "mean_sigmoid", "gmean_softmax", "gmean_sigmoid", "max", "vote"]
"""How TTA merges the views; the one list of merge modes (see [`merge_outputs`][lightning_tricks.functional.merge_outputs])."""
MERGE_MODES: tuple[str, ...] = get_args(MergeMode)


def merge_outputs(outputs: torch.Tensor, merge: MergeMode = "mean") -> torch.Tensor:
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
        merge: one of [`MERGE_MODES`][lightning_tricks.functional.inference.tta_predict.MergeMode].

    Returns:
        The merged output (float32 for the probability, vote and gmean modes when the input
        is a lower precision).

    Raises:
        TypeError: ``outputs`` is not a floating-point tensor.
        ValueError: for an unknown mode, empty outputs, or outputs without a batch dimension
            (or without a class dimension for the probability and vote modes).

    Example:
        >>> import torch
        >>> out = torch.tensor([[[2.0, 0.0]], [[0.0, 1.0]], [[3.0, 0.0]]])  # 3 views, 1 sample
        >>> merge_outputs(out, "mean")
        tensor([[1.6667, 0.3333]])
        >>> merge_outputs(out, "vote")
        tensor([[2., 1.]])
    """
    check_choice("merge", merge, MERGE_MODES)
    check_tensor("outputs", outputs, dtype="float", nonempty=True)
    if outputs.ndim < 2:
        raise ValueError(f"`outputs` must be stacked per-view outputs (V, B, ...); got {describe(outputs)}")
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


def check_chunk_size(chunk_size: Any) -> int | Literal["auto"] | None:
    """``chunk_size`` if it is ``"auto"``, ``None`` or an int >= 1, else an error naming it."""
    if chunk_size == "auto" or chunk_size is None:
        return chunk_size
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int):
        raise TypeError(f"`chunk_size` must be 'auto', None or an int >= 1; got {chunk_size!r}")
    return check_optional_int("chunk_size", chunk_size, minimum=1)


# ----------------------------------------------------------------------------- tta_predict


@functools.lru_cache(maxsize=256)
def _parse_cached(views: tuple[str, ...], include_identity: bool) -> tuple[View, ...]:
    parsed = parse_views(list(views))
    if include_identity and not any(v.name == "identity" for v in parsed):
        parsed = parse_views(["identity", *views])
    return tuple(parsed)


def _views(views: Any, include_identity: bool) -> list[View]:
    if isinstance(views, str):
        views = (views,)
    if isinstance(views, Sequence) and views and all(isinstance(v, str) for v in views):
        return list(_parse_cached(tuple(views), include_identity))
    view_list = parse_views(views)
    if include_identity and not any(v.name == "identity" for v in view_list):
        view_list = [parse_view("identity"), *view_list]
    return view_list


@overload
def tta_predict(
    model: nn.Module | Callable[[torch.Tensor], Any],
    x: torch.Tensor,
    views: str | View | Sequence[str | View] = ...,
    merge: MergeMode = ...,
    chunk_size: int | Literal["auto"] | None = ...,
    *,
    include_identity: bool = ...,
    dense: bool | None = ...,
    return_views: Literal[False] = ...,
    output: OutputSelector = ...,
) -> torch.Tensor: ...


@overload
def tta_predict(
    model: nn.Module | Callable[[torch.Tensor], Any],
    x: torch.Tensor,
    views: str | View | Sequence[str | View] = ...,
    merge: MergeMode = ...,
    chunk_size: int | Literal["auto"] | None = ...,
    *,
    include_identity: bool = ...,
    dense: bool | None = ...,
    return_views: Literal[True],
    output: OutputSelector = ...,
) -> tuple[torch.Tensor, torch.Tensor]: ...


@overload
def tta_predict(
    model: nn.Module | Callable[[torch.Tensor], Any],
    x: torch.Tensor,
    views: str | View | Sequence[str | View] = ...,
    merge: MergeMode = ...,
    chunk_size: int | Literal["auto"] | None = ...,
    *,
    include_identity: bool = ...,
    dense: bool | None = ...,
    return_views: bool = ...,
    output: OutputSelector = ...,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]: ...


def tta_predict(
    model: nn.Module | Callable[[torch.Tensor], Any],
    x: torch.Tensor,
    views: str | View | Sequence[str | View] = ("identity", "hflip"),
    merge: MergeMode = "mean",
    chunk_size: int | Literal["auto"] | None = "auto",
    *,
    include_identity: bool = True,
    dense: bool | None = None,
    return_views: bool = False,
    output: OutputSelector = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Predict with test-time augmentation, all views of the batch in as few forward passes as pay.

    The views of the whole batch are stacked along the batch dimension and run through
    the model in chunks of ``chunk_size`` images (views that change the image size, such
    as crops and rescales, form one group per distinct size). By default the chunk size is
    planned: the first call for a model, image shape, dtype and device times a few
    candidates and caches the fastest (see [`clear_tta_plans`][lightning_tricks.functional.clear_tta_plans]). Dense outputs are
    mapped back by each view's inverse before merging. The call runs under
    ``torch.inference_mode()`` with every submodule of the model in eval mode (also the
    modules a function or lambda refers to); the modes that were switched are restored.

    Input may also be pre-cropped, of shape ``(B, n_crops, C, H, W)`` (torchvision's
    ``TenCrop`` + ``stack`` recipe): the crops are treated as further views of each sample
    and merged together with ``views``.

    Args:
        model: a module or any callable mapping ``(N, C, H, W)`` to a tensor ``(N, ...)``, a
            ``ModelOutput``/dict or a tuple (see ``output``).
        x: images ``(B, C, H, W)`` or pre-cropped ``(B, n_crops, C, H, W)``.
        views: views as strings (``"hflip"``, ``"rot90"``, ``"scale:0.9"``, ``"ten_crop:6"``,
            ``"hflip+rot90"``, ...) or [`View`][lightning_tricks.functional.View] objects.
        merge: how to merge the views, see [`merge_outputs`][lightning_tricks.functional.merge_outputs].
        chunk_size: most images per forward pass; ``"auto"`` (default) plans it per model,
            image shape, dtype and device; ``None`` runs each size group in one pass.
        include_identity: add the identity view when ``views`` lacks it.
        dense: whether outputs are dense maps to invert; ``None`` decides from the output:
            ``(N, K, h, w)`` whose ``h, w`` are the view's input size, a whole fraction
            (``ceil`` or ``floor`` of ``H/s``, e.g. Segformer's ``H/4``) or a whole
            multiple of it; ``(N, h, w)`` only at the input size. ``True`` also inverts
            maps cropped by one border on every side (``H - h == W - w``, unpadded
            convolutions); on other outputs (class scores ``(N, K)``, ``(N, T, K)``) it is an
            error, since inverting a flip there would flip the class axis.
        return_views: also return the per-view outputs ``(V, B, ...)`` (after inversion)
            for uncertainty estimates.
        output: which tensor of the model's output to merge: ``None`` takes a tensor as
            is, the ``"logits"`` of a ``ModelOutput``/dict and element 0 of a tuple/list;
            a key, an index or a callable ``output(model_output) -> tensor`` picks another.

    Returns:
        The merged output ``(B, ...)``, or ``(merged, per_view)`` with ``return_views``.

    Raises:
        ValueError: for bad arguments, empty ``x``, a non-invertible view (crop) on dense
            outputs, ``dense=True`` on outputs that are not dense maps of the input (see
            ``dense``), or a ``RuntimeError`` the model raised on the views (chained as the
            cause).
        TypeError: ``model`` is not callable, ``x`` not a floating-point tensor, or no
            tensor can be picked from the model's output.

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
        >>> strided = nn.Conv2d(3, 2, 4, stride=4)  # dense at H/4 (like Segformer): inverted too
        >>> tta_predict(strided, x, ["hflip", "scale:0.5"]).shape
        torch.Size([4, 2, 2, 2])
    """
    if not callable(model) or isinstance(model, type):
        raise TypeError(
            f"`model` must be a torch.nn.Module or a callable (not a class); got {describe(model)}"
        )
    check_choice("merge", merge, MERGE_MODES)
    chunk_size = check_chunk_size(chunk_size)
    check_bool("include_identity", include_identity)
    check_bool("return_views", return_views)
    if dense is not None:
        check_bool("dense", dense)
    _check_output(output)
    view_list = _views(views, include_identity)
    if not isinstance(x, torch.Tensor) or x.ndim not in (4, 5):
        raise ValueError(
            f"`x` must be a tensor of shape (B, C, H, W) or (B, n_crops, C, H, W); got {describe(x)}"
        )
    check_tensor("x", x, dtype="float", nonempty=True)
    b = x.shape[0]
    n_pre = 1
    if x.ndim == 5:  # pre-cropped: crops become the fastest-varying part of the batch
        n_pre = x.shape[1]
        x = x.reshape(b * n_pre, *x.shape[2:])

    roots = modules_of(model)
    if not roots:
        warnings.warn(
            f"tta_predict finds no nn.Module behind {model!r}, so it cannot switch the model to eval mode "
            "(BatchNorm/Dropout would run in training mode); pass the module itself and pick its output "
            "with `output=`",
            UserWarning,
            stacklevel=2,
        )

    def call(t: torch.Tensor) -> torch.Tensor:
        with model_errors(f"running `model` on views of `x` of shape {tuple(t.shape)}"):
            raw = model(t)
        out = select_output(raw, output)
        if out.shape[:1] != t.shape[:1]:
            raise ValueError(
                f"the model's output {tuple(out.shape)} does not have the batch size {t.shape[0]} of its input "
                f"{tuple(t.shape)} first; tta_predict needs one output row per image"
            )
        return out

    plan = _Planning(
        roots[0] if roots else model, getattr(model, "__code__", None) or type(model), chunk_size
    )
    with _eval_mode(roots), torch.inference_mode():
        per_view = _run_views(call, x, view_list, plan, dense, pre_cropped=n_pre > 1)
    # (sum_v n_v * b * n_pre, ...) -> (V_total, B, ...)
    per_view = per_view.reshape(-1, b, n_pre, *per_view.shape[1:]).transpose(1, 2)
    per_view = per_view.reshape(-1, b, *per_view.shape[3:])
    merged = merge_outputs(per_view, merge)
    return (merged, per_view) if return_views else merged


@dataclasses.dataclass
class _Planning:
    owner: Any
    forward: Any
    chunk_size: int | str | None

    def chunk(self, call: Callable, pieces: list[torch.Tensor], per_view: int) -> int:
        total = sum(p.shape[0] for p in pieces)
        if self.chunk_size is None:
            return total
        if self.chunk_size != "auto":
            return int(self.chunk_size)
        a = pieces[0]
        key = (tuple(a.shape[1:]), a.dtype, a.device, self.forward)
        return planned_chunk_size(self.owner, key, call, pieces, per_view)


def _is_dense(out: torch.Tensor, inp: Sequence[int]) -> bool:
    """Whether ``out`` (N, ...) looks like a dense map of an image of spatial size ``inp``."""
    if out.ndim < 3:
        return False
    (oh, ow), (ah, aw) = out.shape[-2:], tuple(inp)
    if (oh, ow) == (ah, aw):
        return True
    if out.ndim < 4 or oh < 1 or ow < 1:
        return False
    if oh % ah == 0 and oh // ah >= 2 and ow == aw * (oh // ah):  # upsampled by a whole factor
        return True
    for s in {max(1, ah // oh), ah // oh + 1, max(1, -(-ah // oh))}:  # downsampled by a stride s
        if oh in (ah // s, -(-ah // s)) and ow in (aw // s, -(-aw // s)):
            return True
    return False


def _cropped(out: torch.Tensor, inp: Sequence[int]) -> bool:
    """Whether ``out`` (N, ..., h, w) is a map of an image of size ``inp`` cropped by one border on
    every side (what unpadded convolutions give): ``H - h == W - w >= 0``."""
    (oh, ow), (ah, aw) = out.shape[-2:], tuple(inp)
    return out.ndim >= 3 and 0 < oh <= ah and 0 < ow <= aw and ah - oh == aw - ow


@functools.lru_cache(maxsize=512)
def _transposes(view: View) -> bool | None:
    """True/False if ``view`` maps (7, 11) images to (11, 7)/(7, 11); None if it resizes."""
    try:
        shape = tuple(view.apply(torch.empty(1, 1, 7, 11, device="meta")).shape[-2:])
    except Exception:
        return None
    return {(11, 7): True, (7, 11): False}.get((shape[0], shape[1]))


def _target_size(
    views: list[View], outs: list[torch.Tensor], augmented: list[Sequence[int]], size: Sequence[int]
) -> tuple[int, int]:
    """Spatial size of the un-augmented output: read off a flip/rotation, else scaled from a resize."""
    for v, o in zip(views, outs):
        t = _transposes(v)
        if t is not None:
            oh, ow = o.shape[-2:]
            return (ow, oh) if t else (oh, ow)
    o, a = outs[0], augmented[0]
    return (round(size[0] * o.shape[-2] / a[0]), round(size[1] * o.shape[-1] / a[1]))


def _run_views(
    call: Callable, x: torch.Tensor, views: list[View], plan: _Planning, dense: bool | None, pre_cropped: bool
) -> torch.Tensor:
    size = tuple(x.shape[-2:])
    augmented = [v.apply(x) for v in views]
    # One group per distinct augmented shape (all flips/rotations of square images share one).
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, a in enumerate(augmented):
        groups.setdefault(tuple(a.shape[1:]), []).append(i)
    outputs: list[torch.Tensor] = [x] * len(views)  # placeholders
    for idx in groups.values():
        pieces = [augmented[i] for i in idx]
        outs = forward_in_chunks(call, pieces, plan.chunk(call, pieces, x.shape[0]))
        out = outs[0] if len(outs) == 1 else torch.cat(outs)
        for i, o in zip(idx, out.split([augmented[i].shape[0] for i in idx], dim=0)):
            outputs[i] = o
    shapes_in = [tuple(a.shape[-2:]) for a in augmented]
    if dense is True and outputs[0].ndim < 3:
        raise ValueError(
            f"`dense`=True, but the model's outputs have shape {tuple(outputs[0].shape)}: dense outputs need "
            "spatial dimensions (N, ..., h, w) to invert the views on; class scores (N, K) are merged as "
            "they are, pass `dense=None` or `dense=False`"
        )
    if dense is True:
        for v, o, s in zip(views, outputs, shapes_in):
            if not (_is_dense(o, s) or _cropped(o, s)):
                raise ValueError(
                    f"`dense`=True, but the output of view {v.name!r} has shape {tuple(o.shape)} for images of "
                    f"spatial size {s}: its last two dimensions are not a map of the image (its size, a whole "
                    "fraction or multiple of it, or cropped by one border), so inverting the view would "
                    "permute other axes (e.g. classes); pass `dense=None` or `dense=False`"
                )
    is_dense = [dense if dense is not None else _is_dense(o, s) for o, s in zip(outputs, shapes_in)]
    if any(is_dense):
        if pre_cropped:
            raise ValueError(
                "pre-cropped input (B, n_crops, C, H, W) cannot be merged for dense outputs: crops "
                "are not invertible; pass `dense=False` if the outputs are not spatial maps"
            )
        dense_idx = [i for i, d in enumerate(is_dense) if d]
        target = _target_size(
            [views[i] for i in dense_idx],
            [outputs[i] for i in dense_idx],
            [shapes_in[i] for i in dense_idx],
            size,
        )
        for i in dense_idx:
            outputs[i] = views[i].invert(outputs[i], target)
    shapes = {tuple(r.shape[1:]) for r in outputs}
    if len(shapes) > 1:
        hint = (
            "the model's output size is not a fixed fraction of its input size for these views"
            if dense
            else "pass `dense=True` to force inversion, or `dense=False` if they are not spatial maps"
        )
        raise ValueError(
            f"the views give outputs of different shapes {sorted(shapes)} after inversion; {hint}"
        )
    return torch.cat(outputs, dim=0)
