"""The refusals of issue 18 in the data, finetune, optim, perf and repro areas: each bad
call fails with a TypeError/ValueError that names the argument, and leaves the user's
objects as they were (the fuzz in ``test_bad_input_functional`` finds these only by chance)."""

from __future__ import annotations

import copy
import os
import random

import pytest
import torch
from torch import nn

import lightning_tricks.functional as F


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_init_weights_refuses_zero_init_last_bn_before_writing_anything():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Linear(4, 2))
    before = _state(net)
    with pytest.raises(ValueError, match=r"`zero_init_last_bn=True`.*no residual block"):
        F.init_weights(net, zero_init_last_bn=True, skip_pretrained=False)
    assert _same(before, _state(net))


def test_model_to_channels_last_with_a_conv3d_converts_the_2d_part_and_never_fails():
    net = nn.Sequential(nn.Conv2d(3, 4, 1), nn.Conv3d(4, 4, 1))
    net[0].weight.grad = torch.ones_like(net[0].weight)
    before, weight = _state(net), net[0].weight
    assert F.model_to_channels_last(net) == 1
    assert net[0].weight is weight  # identity kept: an optimizer built before still sees it
    assert net[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert net[0].weight.grad.is_contiguous(memory_format=torch.channels_last)
    assert net[1].weight.is_contiguous()  # the 5-D kernel is left as it was
    assert _same(before, _state(net))  # values unchanged, only the layout


def test_autoclipper_load_state_dict_checks_the_whole_state_first():
    clipper = F.AutoClipper(percentile=50)
    for v in (1.0, 4.0):
        clipper.record(torch.tensor(v))
    good = clipper.state_dict()
    for bad, match in (
        ({**good, "n_valid": -1}, r"`state\['n_valid'\]` must be an int >= 0"),
        ({**good, "n_calls": 1}, r"`state\['n_calls'\]` must be an int >= 2"),
        ({**good, "buffer": "x"}, r"`state\['buffer'\]`"),
        (None, "`state` must be a dict"),
    ):
        with pytest.raises((TypeError, ValueError), match=match):
            clipper.load_state_dict(bad)
        assert clipper.history().tolist() == [1.0, 4.0]  # unchanged
    w = nn.Parameter(torch.zeros(2))
    w.grad = torch.tensor([3.0, 4.0])
    assert float(clipper.clip_([w]).norm_before) == 5.0  # and still working


def test_norm_type_must_be_a_norm():
    w = nn.Parameter(torch.ones(2, 2))
    w.grad = torch.ones(2, 2)
    for call in (
        lambda nt: F.adaptive_clip_grad_([w], norm_type=nt),
        lambda nt: F.AutoClipper(norm_type=nt),
        lambda nt: F.unitwise_norm(w, nt),
    ):
        for bad in (0, 0.5, -2, float("nan"), 1e4):
            with pytest.raises(ValueError, match="`norm_type` must be a number in"):
                call(bad)
        with pytest.raises(TypeError, match="`norm_type`"):
            call("2")
    assert torch.equal(w.grad, torch.ones(2, 2))


def test_clipping_refuses_what_is_not_parameters_before_clipping():
    net = nn.Linear(2, 2)
    net(torch.ones(1, 2)).sum().backward()
    grads = [p.grad.clone() for p in net.parameters()]
    for bad in (net, "weights", {"w": net.weight}, [net.weight, None]):
        with pytest.raises(TypeError, match="`parameters` must be a tensor or an iterable of tensors"):
            F.adaptive_clip_grad_(bad, clip_factor=1e-6)
        with pytest.raises(TypeError, match="`parameters`"):
            F.auto_clip_(bad, F.AutoClipper())
    assert all(torch.equal(p.grad, g) for p, g in zip(net.parameters(), grads))


@pytest.mark.parametrize(
    ("group", "match"),
    [
        ({"params": [torch.ones(2, requires_grad=True) * 2]}, "non-leaf"),
        ({"params": "weights"}, r"\['params'\]` must be a tensor or an iterable of tensors"),
        ({"params": [nn.Parameter(torch.ones(2))], "lr": float("nan")}, r"\['lr'\]` must be a finite number"),
        (
            {"params": [nn.Parameter(torch.ones(2))], "weight_decay": -1.0},
            r"\['weight_decay'\]` must be a number >= 0",
        ),
        ({"params": [torch.arange(3)]}, "floating-point"),
    ],
)
def test_param_groups_are_refused_before_the_optimizer_changes(group, match):
    net = nn.Linear(2, 2)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    groups_before = copy.deepcopy([{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups])
    with pytest.raises((TypeError, ValueError), match=match):
        F.add_param_groups(opt, [group])
    assert [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups] == groups_before
    assert len(opt.param_groups) == 1
    with pytest.raises((TypeError, ValueError), match="`group"):
        F.split_by_weight_decay({**group, "weight_decay": group.get("weight_decay", 0.1)}, net)


def test_unfreeze_into_optimizer_puts_everything_back_when_the_split_fails():
    net = nn.Module()
    net.backbone, net.head = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4)), nn.Linear(4, 2)
    F.freeze_modules(net, "backbone")
    opt = torch.optim.AdamW(net.head.parameters(), lr=1e-3, weight_decay=0.05)

    def bad_split(group):
        return [{**group, "lr": float("nan")}]

    with pytest.raises(ValueError, match="lr"):
        F.unfreeze_into_optimizer(net, "backbone", opt, split=bad_split)
    assert not any(p.requires_grad for p in net.backbone.parameters())
    assert not net.backbone[1].training  # the frozen BatchNorm stays in eval mode
    assert len(opt.param_groups) == 1 and len(opt.param_groups[0]["params"]) == 2
    with pytest.raises(TypeError, match="`split` must be a function"):
        F.unfreeze_into_optimizer(net, "backbone", opt, split="decay")
    assert len(F.unfreeze_into_optimizer(net, "backbone", opt)) == 4  # the valid call still works


def test_names_and_sizes_must_match():
    with pytest.raises(ValueError, match="`sizes` and `names` must have the same length; got 2 and 1"):
        F.resolve_split_sizes(10, [0.5, 0.5], names=["a"])
    with pytest.raises(ValueError, match="`sizes` and `names`"):
        F.split_indices(10, [0.5, 0.5], names="ab")  # a lone string is one name, not two
    with pytest.raises(TypeError, match="`sizes` must be a sequence"):
        F.resolve_split_sizes(10, 0.5)


@pytest.mark.parametrize("seed", [2**64, -1])
def test_seeds_out_of_range_are_refused(seed):
    with pytest.raises(ValueError, match="`seed`"):
        F.split_indices(10, [0.5, None], seed=seed)
    with pytest.raises(ValueError, match="`seed`"):
        F.SeededShuffleSampler(10, seed=seed)
    with pytest.raises(ValueError, match="`seed`"):
        F.freeze_seeds(seed)
    sampler = F.SeededShuffleSampler(4, seed=2**64 - 1)
    sampler.set_epoch(3)  # the largest seed plus an epoch still shuffles
    assert sorted(sampler) == [0, 1, 2, 3]


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_save_weights_of_nothing_reads_back(tmp_path, suffix):
    path = F.save_weights({}, tmp_path / f"empty{suffix}")
    assert F.read_weights(path) == {}


def test_paths_are_str_or_pathlike_never_file_descriptors(tmp_path):
    for call in (
        F.load_checksums,
        lambda p: F.save_checksums(p, {}),
        F.read_weights,
        lambda p: F.save_weights({}, p),
        F.is_safe_checkpoint,
        F.load_checkpoint,
        lambda p: F.save_checkpoint({}, p),
        lambda p: F.dump_memory_snapshot(p),
    ):
        for bad in (True, 1, 2, None, b"x.json", ""):
            with pytest.raises((TypeError, ValueError), match="`path`"):
                call(bad)
    for fd in (0, 1, 2):
        os.fstat(fd)  # the standard streams are still open
    with pytest.raises(IsADirectoryError, match="is a folder"):
        F.save_checksums(tmp_path, {})


def test_checksum_records_are_checked_before_writing(tmp_path):
    path = tmp_path / "sums.json"
    with pytest.raises(TypeError, match=r"`records\[0\]\['w'\]` must be a checksum"):
        F.save_checksums(path, {0: {"w": 1.0}})
    with pytest.raises(TypeError, match="`run` must have int epochs"):
        F.first_divergence({"0": {}}, {})
    assert not path.exists()
    path.write_text('{"format": "lightning-tricks/checksums", "version": 2, "epochs": [{"epoch": 0}]}')
    with pytest.raises(ValueError, match="is damaged"):
        F.load_checksums(path)


def test_restore_rng_state_sets_nothing_from_a_damaged_state():
    state = F.capture_rng_state()
    state["python"] = {**state["python"], "state": torch.tensor([1, 2, 3])}
    torch.manual_seed(123)  # a different torch state, which a half restore would overwrite
    torch_before, python_before = torch.get_rng_state(), random.getstate()
    with pytest.raises(ValueError, match="`state` is not a state from capture_rng_state"):
        F.restore_rng_state(state)
    assert torch.equal(torch.get_rng_state(), torch_before)
    assert random.getstate() == python_before


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU refusal")
def test_dump_memory_snapshot_on_cpu_says_it_needs_cuda(tmp_path):
    with pytest.raises(RuntimeError, match=r"needs CUDA.*dump_cpu_memory_profile"):
        F.dump_memory_snapshot(tmp_path / "snap.pickle")
    assert not any(tmp_path.iterdir())


def test_devices_and_steps_are_named():
    with pytest.raises(ValueError, match="`device` must name a device"), F.detect_syncs(device="gpu0"):
        pass
    with pytest.raises(TypeError, match="`step` must be an int"):
        F.MemoryWindow().contains("3")
    with pytest.raises(ValueError, match="`map_location` must name a device"):
        F.load_checkpoint(__file__, map_location="nowhere")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_adaptive_clip_grad_with_parameters_on_two_devices():
    a = nn.Parameter(torch.ones(2, 3))
    b = nn.Parameter(torch.ones(2, 3, device="cuda"))
    a.grad = torch.full((2, 3), 10.0)
    b.grad = torch.full((2, 3), 10.0, device="cuda")
    res = F.adaptive_clip_grad_([a, b], clip_factor=0.1)
    expected = 0.1  # every row clipped to norm 0.1 * ||W_i|| = 0.1 * sqrt(3): elements of 0.1
    assert torch.allclose(a.grad, torch.full((2, 3), expected))
    assert torch.allclose(b.grad.cpu(), torch.full((2, 3), expected))
    assert res.norm_before.device == a.grad.device and bool(res.clipped)
