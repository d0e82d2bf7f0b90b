"""Automatic ``chunk_size`` for [`tta_predict`][lightning_tricks.functional.tta_predict]: time a few chunk sizes once, cache the fastest.

Like ``torch.backends.cudnn.benchmark``: the first call for a given model, image shape,
dtype and device times a handful of candidate chunk sizes (images per forward pass) on the
call's own augmented images and keeps the one with the best throughput; later calls with
the same key reuse it. The cache holds the model weakly, so it disappears with the model.
"""

from __future__ import annotations

import contextlib
import random
import time
import weakref
from collections.abc import Callable, Hashable
from dataclasses import dataclass

import torch

from lightning_tricks.functional._checks import describe

__all__ = ["clear_tta_plans", "forward_in_chunks", "planned_chunk_size", "tta_plans"]

#: timed rounds per candidate after one untimed warm-up round; the minimum is kept
_ROUNDS = 3
#: a chunk other than one view of the batch (what a per-view loop runs) must be this much faster
_MARGIN = 0.9
#: images each candidate is timed on (at least one chunk)
_SAMPLE = 64
#: the largest chunk timed, unless one view of the batch is larger
_MAX_CHUNK = 256


@dataclass
class _Plan:
    best: int  # images per forward pass
    tested: int  # the largest candidate timed


_PLANS: weakref.WeakKeyDictionary[object, dict[Hashable, _Plan]] = weakref.WeakKeyDictionary()


def forward_in_chunks(call: Callable, pieces: list[torch.Tensor], chunk: int) -> list[torch.Tensor]:
    """Run ``call`` on the images of ``pieces`` (concatenated) in chunks of ``chunk`` images.

    Chunks are assembled lazily, so a chunk inside one piece is a view (no copy) and the
    whole concatenation is never materialised unless one chunk spans it.
    """
    outs: list[torch.Tensor] = []
    buf: list[torch.Tensor] = []
    filled = 0
    for p in pieces:
        start, n = 0, p.shape[0]
        while start < n:
            take = min(chunk - filled, n - start)
            buf.append(p if take == n else p[start : start + take])
            filled += take
            start += take
            if filled == chunk:
                outs.append(call(buf[0] if len(buf) == 1 else torch.cat(buf)))
                buf, filled = [], 0
    if buf:
        outs.append(call(buf[0] if len(buf) == 1 else torch.cat(buf)))
    return outs


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type != "cpu":
        mod = getattr(torch, device.type, None)
        if mod is not None and hasattr(mod, "synchronize"):
            mod.synchronize()


def _candidates(total: int, per_view: int) -> list[int]:
    """Powers of two up to ``_MAX_CHUNK`` images, one view of the batch, and everything at
    once when that is no more; none below min(per_view, 4).

    Capping the candidates keeps planning a large call to a few passes over at most
    ``_MAX_CHUNK`` images each (timing chunks of thousands of images cost more than the
    call itself), while one view of the batch, what a per-view loop runs, is always timed.
    """
    top = min(total, max(_MAX_CHUNK, per_view))
    cands = {top, per_view}
    c = 1
    while c < top:
        cands.add(c)
        c *= 2
    return sorted(c for c in cands if min(per_view, 4) <= c <= top)


def _time(
    call: Callable, pieces: list[torch.Tensor], cands: list[int], device: torch.device
) -> dict[int, float]:
    """Seconds per image of each candidate: the minimum over interleaved rounds.

    Each candidate runs on ``max(c, 64)`` of the call's images (whole chunks of ``c``), not
    on all of them, so that planning a large call costs a few passes, not one per candidate.
    """
    total = sum(p.shape[0] for p in pieces)
    sample_n = min(total, max(max(cands), _SAMPLE))
    sample = torch.cat(pieces)[:sample_n] if len(pieces) > 1 else pieces[0][:sample_n]
    best = dict.fromkeys(cands, float("inf"))
    for rnd in range(_ROUNDS + 1):
        order = list(cands)
        random.Random(rnd).shuffle(order)  # interleaved, not one candidate after the other
        for c in order:
            n = c * max(1, min(total, _SAMPLE) // c)
            _sync(device)
            t0 = time.perf_counter()
            for start in range(0, n, c):
                call(sample[start : start + c])
            _sync(device)
            if rnd:  # round 0 warms up every candidate
                best[c] = min(best[c], (time.perf_counter() - t0) / n)
    return best


def planned_chunk_size(
    owner: object, key: Hashable, call: Callable, pieces: list[torch.Tensor], per_view: int
) -> int:
    """The cached chunk size for ``(owner, key)``; times candidates first if there is none yet.

    A plan is re-made when a call has more images than were timed so far (at most once per
    doubling of the number of images, so a handful of times over a model's life). The chunk
    of one view of the batch (what a per-view loop runs) is kept unless another candidate
    is at least 10% faster, so that timing noise does not pick a worse plan than the loop.
    """
    total = sum(p.shape[0] for p in pieces)
    try:
        plans = _PLANS.setdefault(owner, {})
    except TypeError:  # not weak-referenceable: no cache, no timing
        return total
    plan = plans.get(key)
    if plan is not None and total <= plan.tested:
        return plan.best
    times = _time(call, pieces, _candidates(total, per_view), pieces[0].device)
    best = min(times, key=lambda c: (times[c], -c))
    if times[best] > _MARGIN * times[per_view]:
        best = per_view
    plans[key] = _Plan(best=best, tested=total)
    return best


def clear_tta_plans(model: object | None = None) -> None:
    """Forget the automatic ``chunk_size`` plans of ``model`` (or of every model).

    Plans are keyed by the model (held weakly), the shape of one augmented image
    ``(C, H, W)``, its dtype and device. Clear them after changing what makes a chunk size
    fast (``torch.compile``, ``channels_last``, thread count, another process now sharing
    the device), so that the next call times the candidates again.

    Args:
        model: the model (or callable) passed to ``tta_predict``; ``None`` clears all plans.

    Raises:
        TypeError: ``model`` is neither ``None`` nor a module or callable.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from lightning_tricks.functional.inference.tta_predict import tta_predict
        >>> model = nn.Sequential(nn.Conv2d(3, 2, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        >>> _ = tta_predict(model, torch.randn(2, 3, 8, 8), ["hflip"])  # plans once
        >>> list(tta_plans(model).values())[0] in (1, 2, 4)
        True
        >>> clear_tta_plans(model)
        >>> tta_plans(model)
        {}
    """
    if model is None:
        _PLANS.clear()
        return
    _check_model(model, "or None (every plan)")
    for owner in _owners(model):
        with contextlib.suppress(TypeError):  # not weak-referenceable: it never had a plan
            _PLANS.pop(owner, None)


def tta_plans(model: object) -> dict[Hashable, int]:
    """The automatic chunk sizes chosen so far for ``model``: ``{key: images per forward}``.

    Each key is ``(shape of one augmented image, dtype, device, forward)``, where
    ``forward`` tells apart different callables over the same module.

    Args:
        model: the model (or callable) passed to ``tta_predict``.

    Raises:
        TypeError: ``model`` is not a module or callable.

    Example:
        >>> from torch import nn
        >>> tta_plans(nn.Linear(2, 2))
        {}
    """
    _check_model(model)
    out: dict[Hashable, int] = {}
    for owner in _owners(model):
        try:
            plans = _PLANS.get(owner, {})
        except TypeError:
            continue
        out.update({k: p.best for k, p in plans.items()})
    return out


def _check_model(model: object, extra: str = "") -> None:
    if not callable(model):
        raise TypeError(
            f"`model` must be the torch.nn.Module or callable passed to tta_predict{' ' + extra if extra else ''}; "
            f"got {describe(model)}"
        )


def _owners(model: object) -> list[object]:
    from lightning_tricks.functional.inference._tta_model import modules_of

    return [*modules_of(model)[:1], model]
