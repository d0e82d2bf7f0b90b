"""The functional AutoClip core: percentile of the norm history, non-finite steps, state."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from lightning_tricks.functional import AutoClipper


def _grads(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(3, 4, generator=g) * float(torch.rand(1, generator=g) * 5) for _ in range(n)]


@pytest.mark.parametrize("percentile", [10.0, 50.0, 90.0])
def test_matches_numpy_reference(percentile):
    w = nn.Parameter(torch.zeros(3, 4))
    clipper = AutoClipper(percentile=percentile)
    history = []
    for g in _grads(30):
        norm = float(g.double().norm())
        history.append(norm)
        threshold = np.percentile(history, percentile)  # the paper's code: np.percentile, linear
        expected = g.double() * (threshold / (norm + 1e-6)) if norm > threshold else g.double()
        w.grad = g.clone()
        res = clipper.clip_([w])
        torch.testing.assert_close(w.grad.double(), expected, rtol=1e-5, atol=1e-7)
        assert bool(res.clipped) == (norm > threshold)
    np.testing.assert_allclose(clipper.history().numpy(), history, rtol=1e-6)


def test_non_finite_steps_leave_history_and_grads_alone():
    w = nn.Parameter(torch.zeros(2))
    clipper = AutoClipper(percentile=50)
    for g in ([3.0, 4.0], [30.0, 40.0]):
        w.grad = torch.tensor(g)
        clipper.clip_([w])
    for bad in (float("inf"), float("nan")):
        w.grad = torch.tensor([bad, 1.0])
        res = clipper.clip_([w])
        assert not bool(res.clipped)
        assert w.grad[1].item() == 1.0
    assert clipper.history().tolist() == [5.0, 50.0]
    w.grad = torch.tensor([300.0, 400.0])  # threshold: median of (5, 50, 500) = 50
    res = clipper.clip_([w])
    assert float(res.norm_after) == pytest.approx(50.0, rel=1e-5)


def test_ring_buffer_keeps_the_last_norms():
    w = nn.Parameter(torch.zeros(1))
    clipper = AutoClipper(percentile=0, history_size=3)
    for v in [1.0, 2.0, 3.0, float("inf"), 4.0, 5.0]:
        w.grad = torch.tensor([v])
        clipper.clip_([w])
    assert clipper.history().tolist() == [3.0, 4.0, 5.0]


def test_unbounded_history_grows_past_initial_capacity():
    w = nn.Parameter(torch.zeros(1))
    clipper = AutoClipper(percentile=100)
    for i in range(1100):
        w.grad = torch.tensor([float(i + 1)])
        clipper.clip_([w])
    hist = clipper.history()
    assert hist.numel() == 1100 and hist[0] == 1.0 and hist[-1] == 1100.0


def test_state_dict_resume_parity():
    grads = _grads(20, seed=3)
    w1, w2 = nn.Parameter(torch.zeros(3, 4)), nn.Parameter(torch.zeros(3, 4))
    straight = AutoClipper(percentile=25, history_size=8)
    first = AutoClipper(percentile=25, history_size=8)
    out_straight, out_resumed = [], []
    for g in grads:
        w1.grad = g.clone()
        straight.clip_([w1])
        out_straight.append(w1.grad.clone())
    for g in grads[:11]:
        w2.grad = g.clone()
        first.clip_([w2])
        out_resumed.append(w2.grad.clone())
    resumed = AutoClipper(percentile=25, history_size=8)
    resumed.load_state_dict(first.state_dict())
    for g in grads[11:]:
        w2.grad = g.clone()
        resumed.clip_([w2])
        out_resumed.append(w2.grad.clone())
    assert all(torch.equal(a, b) for a, b in zip(out_straight, out_resumed))
    assert torch.equal(straight.history(), resumed.history())
    fresh = AutoClipper()
    fresh.load_state_dict({})  # a checkpoint without the key
    assert fresh.history().numel() == 0


@pytest.mark.parametrize(
    "kwargs,name",
    [
        ({"percentile": 101}, "percentile"),
        ({"history_size": 0}, "history_size"),
        ({"norm_type": -2}, "norm_type"),
    ],
)
def test_bad_arguments(kwargs, name):
    with pytest.raises((ValueError, TypeError), match=name):
        AutoClipper(**kwargs)
