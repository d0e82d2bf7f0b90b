"""The functional AGC core against a unit-by-unit reference computation."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lightning_tricks.functional import adaptive_clip_grad_, unitwise_norm


def reference_agc(params, clip_factor, eps):
    """timm's ``adaptive_clip_grad`` formula (timm/utils/agc.py), written unit by unit in
    Python: for every output unit, max_norm = max(||W_i||, eps) * clip_factor, and the
    gradient is scaled by max_norm / max(||G_i||, 1e-6) unless ||G_i|| < max_norm."""
    out = []
    for p in params:
        w, g = p.detach().double(), p.grad.detach().double()
        new = g.clone()
        units = [None] if w.ndim <= 1 else range(w.shape[0])
        for i in units:
            wi, gi = (w, g) if i is None else (w[i], g[i])
            max_norm = max(wi.norm().item(), eps) * clip_factor
            gnorm = gi.norm().item()
            if not gnorm < max_norm:
                scaled = gi * (max_norm / max(gnorm, 1e-6))
                if i is None:
                    new = scaled
                else:
                    new[i] = scaled
        out.append(new)
    return out


def _net():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 5), nn.LayerNorm(5))
    net.extra = nn.Parameter(torch.randn(2, 3, 4))  # 3-d parameter
    with torch.no_grad():
        net[2].weight[0].zero_()  # a zero unit: eps decides its threshold
    x = torch.randn(4, 3, 8, 8)
    loss = net(x).pow(2).sum() + (net.extra**2).sum() * 3
    loss.backward()
    with torch.no_grad():
        net[0].weight.grad[1] *= 1e-4  # a unit far below its threshold
    return net


@pytest.mark.parametrize("clip_factor,eps", [(0.01, 1e-3), (0.1, 1e-2), (1.0, 1e-3)])
def test_matches_reference(clip_factor, eps):
    net = _net()
    params = list(net.parameters())
    expected = reference_agc(params, clip_factor, eps)
    before = [p.grad.clone() for p in params]
    conv = next(i for i, p in enumerate(params) if p is net[0].weight)
    result = adaptive_clip_grad_(params, clip_factor=clip_factor, eps=eps)
    for p, e in zip(params, expected):
        torch.testing.assert_close(p.grad.double(), e, rtol=1e-5, atol=1e-9)
    # the unit far below its threshold is bit-for-bit untouched
    assert torch.equal(params[conv].grad[1], before[conv][1])
    assert bool(result.clipped)
    torch.testing.assert_close(result.norm_before, torch.nn.utils.get_total_norm(before), rtol=1e-5, atol=0)
    after = torch.nn.utils.get_total_norm([p.grad for p in params])
    torch.testing.assert_close(result.norm_after, after, rtol=1e-5, atol=0)
    assert float(result.norm_after) < float(result.norm_before)


def test_nothing_clipped_when_factor_large():
    net = _net()
    params = list(net.parameters())
    before = [p.grad.clone() for p in params]
    result = adaptive_clip_grad_(params, clip_factor=1e6)
    assert not bool(result.clipped)
    assert all(torch.equal(p.grad, b) for p, b in zip(params, before))
    assert float(result.norm_before) == pytest.approx(float(result.norm_after))


def test_params_without_grad_and_empty():
    p = nn.Parameter(torch.ones(3))
    res = adaptive_clip_grad_([p])
    assert float(res.norm_before) == 0.0 and not bool(res.clipped)
    q = nn.Parameter(torch.ones(3))
    q.grad = torch.full((3,), 10.0)
    adaptive_clip_grad_(q, clip_factor=0.5)  # a single tensor is accepted
    assert float(q.grad.norm()) == pytest.approx(0.5 * math.sqrt(3), rel=1e-5)


def test_inf_norm_type_and_unitwise_norm():
    w = torch.tensor([[1.0, -3.0], [2.0, 0.5]])
    assert unitwise_norm(w, math.inf).flatten().tolist() == [3.0, 2.0]
    assert unitwise_norm(torch.tensor([3.0, 4.0])).item() == 5.0
    p = nn.Parameter(w.clone())
    p.grad = torch.tensor([[10.0, 0.0], [0.0, 0.1]])
    res = adaptive_clip_grad_([p], clip_factor=0.5, norm_type=math.inf)
    assert p.grad[0, 0].item() == pytest.approx(1.5) and p.grad[1, 1].item() == pytest.approx(0.1)
    assert float(res.norm_before) == 10.0 and float(res.norm_after) == pytest.approx(1.5)


@pytest.mark.parametrize(
    "kwargs,name",
    [({"clip_factor": 0.0}, "clip_factor"), ({"eps": -1.0}, "eps"), ({"norm_type": 0}, "norm_type")],
)
def test_bad_arguments(kwargs, name):
    with pytest.raises((ValueError, TypeError), match=name):
        adaptive_clip_grad_([nn.Parameter(torch.ones(1))], **kwargs)
