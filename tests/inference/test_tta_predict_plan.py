"""The automatic chunk size of tta_predict: planned once per key, cached, bypassed by a manual size.

No timings are asserted: the planner's clock is replaced where a decision is tested.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_tricks.functional import clear_tta_plans, tta_plans, tta_predict
from lightning_tricks.functional.inference import _tta_plan
from tests.helpers import SmallCNN


class Counting(nn.Module):
    """Records the batch size of every forward call."""

    def __init__(self) -> None:
        super().__init__()
        self.net = SmallCNN()
        self.calls: list[int] = []

    def forward(self, x):
        self.calls.append(x.shape[0])
        return self.net(x)


@pytest.fixture
def fake_clock(monkeypatch):
    """Replace the timing of candidates: ``cost(chunk)`` is the time of one full pass."""
    seen: list[list[int]] = []

    def install(cost):
        def fake_time(call, pieces, cands, device):
            seen.append(list(cands))
            return {c: cost(c) for c in cands}

        monkeypatch.setattr(_tta_plan, "_time", fake_time)
        return seen

    return install


def test_plan_is_made_once_per_key_and_reused(fake_clock):
    seen = fake_clock(lambda c: 1.0 / c)  # bigger chunks are faster
    model = Counting().eval()
    x = torch.randn(4, 3, 8, 8)
    tta_predict(model, x, ["hflip", "vflip", "rot90"])  # 16 images of one shape
    assert len(seen) == 1 and seen[0][-1] == 16
    assert list(tta_plans(model).values()) == [16]
    model.calls.clear()
    tta_predict(model, x, ["hflip", "vflip", "rot90"])
    assert len(seen) == 1 and model.calls == [16]  # cached: no timing, one forward
    tta_predict(model, torch.randn(4, 3, 8, 6), ["hflip"])  # another image shape: another key
    assert len(seen) == 2 and len(tta_plans(model)) == 2
    tta_predict(model, torch.randn(2, 3, 8, 8), ["hflip"])  # fewer images: the plan holds
    assert len(seen) == 2
    tta_predict(model, torch.randn(16, 3, 8, 8), ["hflip", "vflip", "rot90"])  # more images: re-plan
    assert len(seen) == 3 and seen[2][-1] == 64
    clear_tta_plans(model)
    assert tta_plans(model) == {}


def test_planning_a_large_call_times_chunks_of_at_most_256_images_or_one_view(fake_clock):
    seen = fake_clock(lambda c: 1.0 / c)
    model = Counting().eval()
    tta_predict(model, torch.randn(128, 3, 8, 8), ["hflip", "vflip", "rot90"])  # 512 images
    assert seen[-1][-1] == 256 and 128 in seen[-1]  # not 512: planning costs a few small passes
    tta_predict(model, torch.randn(300, 3, 8, 8), ["hflip"])  # one view is larger than the cap
    assert seen[-1][-1] == 300 and max(c for c in seen[-1] if c != 300) == 256


def test_planned_chunk_is_used_and_the_per_view_chunk_wins_ties(fake_clock):
    model = Counting().eval()
    x = torch.randn(4, 3, 8, 8)
    fake_clock(lambda c: {4: 1.0, 8: 0.5, 16: 0.9}[c])  # 8 images per forward is fastest
    model.calls.clear()
    tta_predict(model, x, ["hflip", "vflip", "rot90"])
    assert model.calls == [8, 8]
    clear_tta_plans(model)
    fake_clock(lambda c: {4: 1.0, 8: 0.99, 16: 0.98}[c])  # within 10% of one view per forward
    model.calls.clear()
    tta_predict(model, x, ["hflip", "vflip", "rot90"])
    assert model.calls == [4, 4, 4, 4]


def test_manual_chunk_size_bypasses_the_planner(fake_clock):
    seen = fake_clock(lambda c: 1.0)
    model = Counting().eval()
    x = torch.randn(5, 3, 8, 8)
    tta_predict(model, x, ["hflip", "vflip"], chunk_size=4)
    assert model.calls == [4, 4, 4, 3]
    model.calls.clear()
    tta_predict(model, x, ["hflip", "vflip"], chunk_size=None)
    assert model.calls == [15]
    assert seen == [] and tta_plans(model) == {}


def test_real_planner_times_candidates_and_picks_one_of_them():
    model = Counting().eval()
    x = torch.randn(2, 3, 8, 8)
    tta_predict(model, x, ["hflip", "vflip", "rot90"])  # 8 images: candidates 2, 4, 8
    (chunk,) = tta_plans(model).values()
    assert chunk in (2, 4, 8)
    timed = model.calls[: -(8 // chunk)]  # the planning passes, then the prediction itself
    assert set(timed) == {2, 4, 8} and sum(timed) == 8 * 3 * (1 + _tta_plan._ROUNDS)


@pytest.mark.parametrize("merge", ["mean", "vote"])
def test_outputs_are_the_same_for_every_chunk_size(merge):
    torch.manual_seed(0)
    model = SmallCNN().eval()
    x = torch.randn(5, 3, 8, 8)
    views = ["hflip", "rot90", "scale:0.75", "vflip+rot180"]
    ref = tta_predict(model, x, views, merge, chunk_size=None)
    for chunk in ("auto", 1, 3, 7, 64):
        torch.testing.assert_close(
            tta_predict(model, x, views, merge, chunk_size=chunk), ref, rtol=1e-5, atol=1e-6
        )


def test_model_already_in_eval_is_not_switched():
    writes: list[bool] = []

    class Watch(nn.Module):
        def __setattr__(self, name, value):
            if name == "training":
                writes.append(value)
            super().__setattr__(name, value)

        def forward(self, x):
            return x

    model = nn.Sequential(Watch(), SmallCNN()).eval()
    writes.clear()
    tta_predict(model, torch.randn(2, 3, 8, 8), ["hflip"], chunk_size=None)
    assert writes == []
    model[0].train()
    writes.clear()
    tta_predict(model, torch.randn(2, 3, 8, 8), ["hflip"], chunk_size=None)
    assert writes == [False, True] and model[0].training and not model[1].training


def test_bad_chunk_size_is_named():
    with pytest.raises(TypeError, match=r"`chunk_size` must be 'auto', None or an int >= 1; got 'fast'"):
        tta_predict(SmallCNN(), torch.randn(1, 3, 8, 8), ["hflip"], chunk_size="fast")
