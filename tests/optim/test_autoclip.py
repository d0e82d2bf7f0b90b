"""AutoClip: the functional core (percentile of the norm history, non-finite steps, state)
and the AutoClip callback through a real Trainer."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from lightning_tricks import AutoClip
from lightning_tricks.functional import AutoClipper, auto_clip_
from tests.helpers import ClassifierModule, ImageDataModule, cpu_trainer
from tests.optim.clip_helpers import (
    NormSpy,
    check_gpu_16_mixed_no_sync_on_non_logging_steps,
    check_logs_norms_and_fraction_on_logging_steps_only,
    fp16_cpu,
)


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


def test_auto_clip_is_the_clippers_call():
    """``auto_clip_(params, clipper)`` and ``clipper.clip_(params)`` are one entry point:
    the same gradients and the same history."""
    grads = _grads(12, seed=5)
    a, b = AutoClipper(percentile=30), AutoClipper(percentile=30)
    wa, wb = nn.Parameter(torch.zeros(3, 4)), nn.Parameter(torch.zeros(3, 4))
    for g in grads:
        wa.grad, wb.grad = g.clone(), g.clone()
        ra, rb = auto_clip_([wa], a), b.clip_(wb)
        assert torch.equal(wa.grad, wb.grad) and torch.equal(ra.norm_after, rb.norm_after)
    assert torch.equal(a.history(), b.history())
    assert float(a.record(torch.tensor(float("nan")))) == float(a.last_threshold)  # not recorded
    assert a.history().numel() == 12
    with pytest.raises(TypeError, match="`clipper` must be an AutoClipper; got"):
        auto_clip_([wa], {"percentile": 10})


# --------------------------------------------------------------------------- the callback


def test_logs_norms_and_fraction_on_logging_steps_only(tmp_path):
    logged = check_logs_norms_and_fraction_on_logging_steps_only(
        tmp_path, AutoClip(percentile=10), "auto_clip"
    )
    assert len(logged["auto_clip/clip_value"]) == 4
    assert not [k for k in logged if k.startswith("autoclip/")]


def test_exclude_leaves_parameters_out_of_the_norm(tmp_path):
    """Excluded gradients are neither clipped nor part of the recorded norm."""
    spy = NormSpy()

    class HeadNorm(NormSpy):
        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            grads = [p.grad for n, p in pl_module.named_parameters() if not n.startswith("head.")]
            self.norms.append(float(torch.nn.utils.get_total_norm(grads)))

    rest = HeadNorm()
    head_before, head_after = [], []

    class HeadSpy(NormSpy):
        def __init__(self, out):
            super().__init__()
            self.out = out

        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            self.out.append(pl_module.head.weight.grad.clone())

    cb = AutoClip(percentile=10, exclude="head")
    cpu_trainer(callbacks=[spy, rest, HeadSpy(head_before), cb, HeadSpy(head_after)], max_epochs=1).fit(
        ClassifierModule(arch="mlp"), ImageDataModule()
    )
    assert cb.clipper.history().tolist() == pytest.approx(rest.norms, rel=1e-5)
    assert rest.norms != pytest.approx(spy.norms, rel=1e-3)  # the head's gradient is not in it
    assert all(torch.equal(a, b) for a, b in zip(head_before, head_after))
    with pytest.raises(
        ValueError, match=r"`exclude` names no parameter or submodule 'haed'.*did you mean 'head'"
    ):
        cpu_trainer(callbacks=[AutoClip(exclude=["haed"])], max_epochs=1).fit(
            ClassifierModule(arch="mlp"), ImageDataModule()
        )


def test_autoclip_history_is_unscaled_and_skips_overflow_steps():
    """A huge initial loss scale overflows the first steps: GradScaler skips them, and
    AutoClip records exactly the unscaled norms of the other steps."""
    spy = NormSpy()
    cb = AutoClip(percentile=50)
    trainer = cpu_trainer(
        callbacks=[spy, cb], plugins=[fp16_cpu(init_scale=2.0**40, backoff_factor=2.0**-8)], max_epochs=1
    )
    trainer.fit(ClassifierModule(), ImageDataModule(n_train=128))
    finite = [n for n in spy.norms if n == n and n != float("inf")]
    assert 0 < len(finite) < len(spy.norms)  # some steps overflowed, some did not
    history = cb.clipper.history()
    assert torch.isfinite(history).all()
    assert history.tolist() == pytest.approx(finite, rel=1e-5)


def test_autoclip_state_in_checkpoint(tmp_path):
    cb = AutoClip(percentile=10, history_size=5)
    trainer = cpu_trainer(callbacks=[cb], max_epochs=1)
    trainer.fit(ClassifierModule(), ImageDataModule())
    path = tmp_path / "last.ckpt"
    trainer.save_checkpoint(path)
    ckpt = torch.load(path, weights_only=False)
    state = ckpt["callbacks"][cb.state_key]["clipper"]
    assert state["n_valid"] == 4 and torch.equal(state["buffer"][:4], cb.clipper.history())
    other = AutoClip(percentile=10, history_size=5)
    other.load_state_dict(ckpt["callbacks"][cb.state_key])
    assert torch.equal(other.clipper.history(), cb.clipper.history())


@pytest.mark.gpu
def test_gpu_16_mixed_no_sync_on_non_logging_steps():
    cb = AutoClip()
    norms = check_gpu_16_mixed_no_sync_on_non_logging_steps(cb)
    finite = [n for n in norms if n == n and n != float("inf")]
    assert cb.clipper.history().tolist() == pytest.approx(finite, rel=1e-4)
