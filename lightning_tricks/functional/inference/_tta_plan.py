"""Automatic ``chunk_size`` for :func:`tta_predict`: time a few chunk sizes once, cache the fastest.

Like ``torch.backends.cudnn.benchmark``: the first call for a given model, image shape,
dtype and device times a handful of candidate chunk sizes (images per forward pass) on the
call's own augmented images and keeps the one with the best throughput; later calls with
the same key reuse it. The cache holds the model weakly, so it disappears with the model.
"""

from __future__ import annotations

import random
import time
import weakref
from collections.abc import Callable, Hashable
from dataclasses import dataclass

import torch

__all__ = ["clear_tta_plans", "forward_in_chunks", "planned_chunk_size", "tta_plans"]

#: timed rounds per candidate after one untimed warm-up round; the minimum is kept
_ROUNDS = 2


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


def _candidates(total: int, per_view: int, start: int) -> list[int]:
    cands = {total, per_view}
    c = 1
    while c < total:
        cands.add(c)
        c *= 2
    return sorted(c for c in cands if start <= c <= total)


def _time(
    call: Callable, pieces: list[torch.Tensor], cands: list[int], device: torch.device
) -> dict[int, float]:
    best = dict.fromkeys(cands, float("inf"))
    for rnd in range(_ROUNDS + 1):
        order = list(cands)
        random.Random(rnd).shuffle(order)  # interleaved, not one candidate after the other
        for c in order:
            _sync(device)
            t0 = time.perf_counter()
            forward_in_chunks(call, pieces, c)
            _sync(device)
            if rnd:  # round 0 warms up every candidate
                best[c] = min(best[c], time.perf_counter() - t0)
    return best


def planned_chunk_size(
    owner: object, key: Hashable, call: Callable, pieces: list[torch.Tensor], per_view: int
) -> int:
    """The cached chunk size for ``(owner, key)``; times candidates first if there is none yet.

    A plan is re-made when a call has more images than the largest candidate timed so far
    and that largest candidate was the fastest (a larger chunk might be faster still).
    """
    total = sum(p.shape[0] for p in pieces)
    try:
        plans = _PLANS.setdefault(owner, {})
    except TypeError:  # not weak-referenceable: no cache, no timing
        return total
    plan = plans.get(key)
    if plan is not None and (plan.best < plan.tested or total <= plan.tested):
        return plan.best
    start = plan.best if plan is not None else 1
    times = _time(call, pieces, _candidates(total, per_view, start), pieces[0].device)
    best = min(times, key=lambda c: (times[c], -c))
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

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from lightning_tricks.functional.inference.tta import tta_predict
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
    for owner in _owners(model):
        _PLANS.pop(owner, None)


def tta_plans(model: object) -> dict[Hashable, int]:
    """The automatic chunk sizes chosen so far for ``model``: ``{key: images per forward}``.

    Each key is ``(shape of one augmented image, dtype, device, forward)``, where
    ``forward`` tells apart different callables over the same module.

    Args:
        model: the model (or callable) passed to ``tta_predict``.

    Example:
        >>> from torch import nn
        >>> tta_plans(nn.Linear(2, 2))
        {}
    """
    out: dict[Hashable, int] = {}
    for owner in _owners(model):
        try:
            plans = _PLANS.get(owner, {})
        except TypeError:
            continue
        out.update({k: p.best for k, p in plans.items()})
    return out


def _owners(model: object) -> list[object]:
    from lightning_tricks.functional.inference.tta import modules_of

    return [*modules_of(model)[:1], model]
