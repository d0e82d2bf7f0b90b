"""Functional accumulation helpers."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_tricks.functional import WindowMean, accumulation_steps


@pytest.mark.parametrize("g,b,w,k", [(256, 32, 2, 4), (32, 32, 1, 1), (96, 16, 3, 2)])
def test_accumulation_steps(g, b, w, k):
    assert accumulation_steps(g, b, w) == k
    assert b * w * accumulation_steps(g, b, w) == g


@pytest.mark.parametrize("g,b,w", [(100, 32, 1), (16, 32, 1), (64, 16, 3)])
def test_accumulation_steps_impossible(g, b, w):
    with pytest.raises(ValueError, match=f"`global_batch_size` {g} is not a multiple of .* {b * w}"):
        accumulation_steps(g, b, w)


def test_window_mean():
    m = WindowMean()
    assert math.isnan(float(m.compute()))
    m.update(torch.tensor(1.0), weight=16)
    m.update(torch.tensor(4.0), weight=8)
    assert float(m.compute()) == pytest.approx((16 * 1 + 8 * 4) / 24)
    assert m.sums().tolist() == [48.0, 24.0]
    m.reset()
    m.update(torch.tensor(7.0))
    assert float(m.compute()) == 7.0 and m.num_updates == 1
    with pytest.raises(ValueError, match="weight"):
        m.update(torch.tensor(1.0), weight=-1)
