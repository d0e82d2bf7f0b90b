"""AutoClip of Seetharaman et al. 2020, "AutoClip: Adaptive Gradient Clipping for Source
Separation Networks" (https://arxiv.org/abs/2007.14469): clip the total gradient norm to a
percentile of the norms seen so far in training.

Pair: the callback [`AutoClip`][lightning_tricks.AutoClip] calls [`auto_clip_`][lightning_tricks.functional.auto_clip_] with the
[`AutoClipper`][lightning_tricks.functional.AutoClipper] it keeps (and checkpoints); the clipper holds the norm history.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, cast

import torch

from lightning_tricks._compat import foreach_mul_
from lightning_tricks.functional._checks import (
    check_int,
    check_number,
    check_optional_int,
    check_tensor,
    describe,
)
from lightning_tricks.functional.optim._clip import (
    ClipResult,
    check_norm_type,
    empty_result,
    grads_of,
    total_norm,
)

__all__ = ["AutoClipper", "auto_clip_"]

_INITIAL_CAPACITY = 1024
_MAX_HISTORY = 2**31 - 1  # a float32 ring buffer of this many norms is 8 GiB


class AutoClipper:
    """The state of AutoClip: the history of gradient norms and the percentile to clip to.

    [`auto_clip_`][lightning_tricks.functional.auto_clip_] (or [`clip_`][lightning_tricks.functional.AutoClipper.clip_], the same call) records the total gradient norm
    (before clipping), then, if the norm exceeds the percentile of all recorded norms
    (the current one included, as in the paper), scales the gradients down to that norm (``threshold / (norm + 1e-6)``, like
    ``torch.nn.utils.clip_grad_norm_``).
    Non-finite norms (a step that ``GradScaler`` will skip) are neither recorded nor
    clipped, so they cannot poison the history. Everything stays on the gradients'
    device: no call synchronises with the host. The history is in [`state_dict`][lightning_tricks.functional.AutoClipper.state_dict].

    Args:
        percentile: the percentile (0-100) of past norms to clip to; the paper's best
            value is 10.
        history_size: keep only the last ``history_size`` norms; ``None`` keeps all
            (the paper's choice; the percentile then sorts the whole history each step).
        norm_type: order of the total gradient norm.

    Raises:
        ValueError: if ``percentile`` is outside [0, 100], ``history_size`` < 1, or
            ``norm_type`` <= 0.

    Example:
        >>> import torch
        >>> clipper = AutoClipper(percentile=50)
        >>> w = torch.nn.Parameter(torch.zeros(2))
        >>> for g in ([3.0, 4.0], [0.6, 0.8], [6.0, 8.0]):  # norms 5, 1, 10
        ...     w.grad = torch.tensor(g)
        ...     res = clipper.clip_([w])
        >>> round(float(res.norm_after), 4)  # median of (5, 1, 10)
        5.0
        >>> clipper.history().tolist()
        [5.0, 1.0, 10.0]
    """

    def __init__(self, percentile: float = 10.0, history_size: int | None = None, norm_type: float = 2.0):
        self.percentile = check_number("percentile", percentile, minimum=0.0, maximum=100.0)
        self.history_size = check_optional_int("history_size", history_size, minimum=1, maximum=_MAX_HISTORY)
        self.norm_type = check_norm_type(norm_type)
        self.reset()

    def reset(self) -> None:
        """Forget the history."""
        self._buffer: torch.Tensor | None = None  # NaN = empty slot
        self._n_valid: torch.Tensor | None = None  # number of finite norms ever recorded (device)
        self._n_calls = 0  # host-side upper bound of _n_valid
        self.last_threshold: torch.Tensor | None = None  # percentile used by the last call

    def _ensure_capacity(self, device: torch.device) -> torch.Tensor:
        if self.history_size is not None:
            needed = self.history_size
        else:
            needed = max(_INITIAL_CAPACITY, self._n_calls + 1)
        buf = self._buffer
        if buf is None:
            cap = needed if self.history_size is not None else _INITIAL_CAPACITY
            buf = torch.full((cap,), float("nan"), device=device)
            self._n_valid = torch.zeros((), dtype=torch.long, device=device)
        elif buf.device != device:
            buf = buf.to(device)
            self._n_valid = cast(torch.Tensor, self._n_valid).to(device)
        if buf.numel() < needed:  # unbounded history: double the capacity
            grown = torch.full((max(needed, 2 * buf.numel()),), float("nan"), device=device)
            grown[: buf.numel()] = buf
            buf = grown
        self._buffer = buf
        return buf

    def clip_(self, parameters: torch.Tensor | Iterable[torch.Tensor]) -> ClipResult:
        """Record the gradient norm of ``parameters`` and clip their gradients in place:
        ``auto_clip_(parameters, self)``.

        Args:
            parameters: tensors (or one tensor) whose ``.grad`` is clipped.

        Returns:
            A [`ClipResult`][lightning_tricks.functional.ClipResult]; ``norm_after`` is the norm the gradients were clipped to.

        Example:
            >>> import torch
            >>> w = torch.nn.Parameter(torch.zeros(2))
            >>> w.grad = torch.tensor([3.0, 4.0])
            >>> float(AutoClipper().clip_([w]).norm_before)
            5.0
        """
        return auto_clip_(parameters, self)

    @torch.no_grad()
    def record(self, norm: torch.Tensor) -> torch.Tensor:
        """Add one total gradient norm to the history (if finite) and return the threshold:
        the ``percentile`` of the history, the new norm included (NaN while it is empty).

        Args:
            norm: a 0-d tensor (or any tensor of one element); it stays on its device
                (no host sync).

        Raises:
            TypeError: ``norm`` is not a tensor.
            ValueError: ``norm`` has more or fewer than one element.

        Example:
            >>> import torch
            >>> clipper = AutoClipper(percentile=50)
            >>> thresholds = [float(clipper.record(torch.tensor(v))) for v in (4.0, 2.0, float("inf"))]
            >>> thresholds  # inf is not recorded: the median of (4, 2) again
            [4.0, 3.0, 3.0]
        """
        norm = check_tensor("norm", norm, numel=1).detach().float().reshape(())
        buf = self._ensure_capacity(norm.device)
        n_valid = cast(torch.Tensor, self._n_valid)
        finite = torch.isfinite(norm)
        idx = n_valid % buf.numel() if self.history_size is not None else n_valid
        idx = idx.reshape(1)
        buf.index_put_((idx,), torch.where(finite, norm, buf.index_select(0, idx)[0]).reshape(1))
        n_valid += finite.long()
        self._n_calls += 1
        threshold = torch.nanquantile(buf, self.percentile / 100.0)
        self.last_threshold = threshold
        return threshold

    def history(self) -> torch.Tensor:
        """The recorded gradient norms, oldest first (a copy; syncs with the host).

        Example:
            >>> AutoClipper().history().tolist()
            []
        """
        if self._buffer is None or self._n_valid is None:
            return torch.zeros(0)
        n = int(self._n_valid)
        if self.history_size is None or n <= self.history_size:
            return self._buffer[:n].clone()
        start = n % self.history_size
        return torch.cat([self._buffer[start:], self._buffer[:start]])

    def state_dict(self) -> dict[str, Any]:
        """The history, to be saved with a checkpoint.

        Example:
            >>> sorted(AutoClipper().state_dict())
            ['buffer', 'n_calls', 'n_valid']
        """
        return {
            "buffer": None if self._buffer is None else self._buffer.detach().cpu().clone(),
            "n_valid": 0 if self._n_valid is None else int(self._n_valid),
            "n_calls": self._n_calls,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the history saved by [`state_dict`][lightning_tricks.functional.AutoClipper.state_dict] (an empty dict resets it).

        Everything is checked before anything changes.

        Raises:
            TypeError: ``state`` is not a mapping, or holds values of the wrong type.
            ValueError: a history of another size than ``history_size``, or counts that
                are negative or do not fit the history.

        Example:
            >>> a, b = AutoClipper(), AutoClipper()
            >>> b.load_state_dict(a.state_dict())
        """
        if not isinstance(state, Mapping):
            raise TypeError(f"`state` must be a dict from AutoClipper.state_dict(); got {describe(state)}")
        buffer = state.get("buffer")
        if buffer is None:
            self.reset()
            return
        try:
            buffer = torch.as_tensor(buffer, dtype=torch.float32).clone()
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(
                f"`state['buffer']` must be a 1-d float tensor or None; got {describe(buffer)}"
            ) from None
        check_tensor("state['buffer']", buffer, ndim=1, nonempty=True)
        if self.history_size is not None and buffer.numel() != self.history_size:
            raise ValueError(
                f"`history_size` is {self.history_size} but the saved history holds {buffer.numel()} slots"
            )
        n_valid = check_int("state['n_valid']", state.get("n_valid", 0), minimum=0)
        n_calls = check_int("state['n_calls']", state.get("n_calls", n_valid), minimum=n_valid)
        if self.history_size is None and n_valid > buffer.numel():
            raise ValueError(
                f"`state['n_valid']` is {n_valid} but the saved (unbounded) history holds only "
                f"{buffer.numel()} slots"
            )
        self.reset()
        self._buffer = buffer
        self._n_valid = torch.tensor(n_valid, dtype=torch.long)
        self._n_calls = n_calls


@torch.no_grad()
def auto_clip_(parameters: torch.Tensor | Iterable[torch.Tensor], clipper: AutoClipper) -> ClipResult:
    """AutoClip: clip the gradients of ``parameters`` in place to a percentile of the
    gradient norms seen so far, kept by ``clipper``.

    Records the total gradient norm (before clipping) in ``clipper``'s history, then, if
    the norm exceeds the ``clipper.percentile``-th percentile of the history (the current
    norm included, as in the paper), scales the gradients down to that norm
    (``threshold / (norm + 1e-6)``, like ``torch.nn.utils.clip_grad_norm_``). A
    non-finite norm (a step that ``GradScaler`` will skip) is neither recorded nor
    clipped. Call it on *unscaled* gradients and, under DDP, after the all-reduce;
    nothing is copied to the host.

    Args:
        parameters: tensors (or one tensor) whose ``.grad`` is clipped; those without a
            gradient are ignored.
        clipper: the [`AutoClipper`][lightning_tricks.functional.AutoClipper] that holds the history (save its
            ``state_dict()`` with your checkpoints).

    Returns:
        A [`ClipResult`][lightning_tricks.functional.ClipResult]; ``norm_after`` is the norm the gradients were clipped to.

    Raises:
        TypeError: ``clipper`` is not an [`AutoClipper`][lightning_tricks.functional.AutoClipper], or ``parameters`` not a
            tensor or an iterable of tensors.

    Example:
        >>> import torch
        >>> clipper = AutoClipper(percentile=50)
        >>> w = torch.nn.Parameter(torch.zeros(2))
        >>> for g in ([3.0, 4.0], [0.6, 0.8], [6.0, 8.0]):  # norms 5, 1, 10
        ...     w.grad = torch.tensor(g)
        ...     res = auto_clip_([w], clipper)
        >>> round(float(res.norm_after), 4)  # median of (5, 1, 10)
        5.0
    """
    if not isinstance(clipper, AutoClipper):
        raise TypeError(f"`clipper` must be an AutoClipper; got {describe(clipper)}")
    grads = grads_of(parameters)
    if not grads:
        return empty_result()
    norm = total_norm(grads, clipper.norm_type)
    threshold = clipper.record(norm)
    clipped = torch.isfinite(norm) & (norm > threshold)  # False while the threshold is NaN
    coef = torch.where(clipped, threshold / (norm + 1e-6), torch.ones_like(norm))
    for device_grads in _by_device(grads).values():
        foreach_mul_(device_grads, coef.to(device_grads[0].device))
    return ClipResult(norm, norm * coef, clipped)


def _by_device(grads: list[torch.Tensor]) -> dict[torch.device, list[torch.Tensor]]:
    out: dict[torch.device, list[torch.Tensor]] = {}
    for g in grads:
        out.setdefault(g.device, []).append(g)
    return out
