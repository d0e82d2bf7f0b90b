"""tensor_checksums / first_divergence / save + load: exact, cheap, and naming the divergence."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from lightning_tricks.functional import (
    first_divergence,
    load_checksums,
    save_checksums,
    tensor_checksums,
)
from tests.helpers import SmallCNN


def test_one_flipped_bit_changes_the_hash_for_every_dtype():
    for dtype in (torch.float32, torch.float64, torch.bfloat16, torch.float16, torch.int64, torch.uint8):
        t = (torch.arange(30) % 7).to(dtype)
        flipped = t.clone()
        raw = flipped.view(torch.uint8)
        raw[5] ^= 1
        a, b = tensor_checksums({"t": t}), tensor_checksums({"t": flipped})
        assert a["t"]["hash"] != b["t"]["hash"], dtype
        assert tensor_checksums({"t": t.clone()})["t"] == a["t"], dtype


def test_hash_depends_on_element_order():
    a = tensor_checksums({"t": torch.tensor([1.0, 2.0, 3.0])})["t"]
    b = tensor_checksums({"t": torch.tensor([3.0, 2.0, 1.0])})["t"]
    assert a["sum"] == b["sum"] and a["hash"] != b["hash"]


def test_module_checksums_cover_parameters_and_optionally_buffers():
    net = SmallCNN()
    params = tensor_checksums(net)
    assert list(params) == [n for n, _ in net.named_parameters()]
    with_buffers = tensor_checksums(net, buffers=True)
    assert set(with_buffers) == set(params) | {n for n, _ in net.named_buffers()}
    w = dict(net.named_parameters())[next(iter(params))]
    assert params[next(iter(params))]["sum"] == pytest.approx(float(w.detach().double().sum()))
    assert params[next(iter(params))]["norm"] == pytest.approx(float(w.detach().double().norm()))


def test_one_device_to_host_transfer_for_all_tensors(monkeypatch):
    calls = []
    original = torch.Tensor.cpu

    def counting_cpu(self, *a, **k):
        calls.append(self.shape)
        return original(self, *a, **k)

    monkeypatch.setattr(torch.Tensor, "cpu", counting_cpu)
    sums = tensor_checksums(SmallCNN(), buffers=True)
    assert len(calls) == 1 and calls[0][0] == len(sums)


def test_large_tensor_is_hashed_in_chunks_consistently(monkeypatch):
    import lightning_tricks.functional.repro.checksums as mod

    monkeypatch.setattr(mod, "_BLOCK", 64)
    monkeypatch.setattr(mod, "_cache", {})
    t = torch.randn(1000)  # 15 full blocks and a tail
    whole = tensor_checksums({"t": t})["t"]
    monkeypatch.setattr(mod, "_CHUNK_BLOCKS", 1)
    assert tensor_checksums({"t": t})["t"] == whole
    t[999] += 1  # a change in the tail is seen
    assert tensor_checksums({"t": t})["t"]["hash"] != whole["hash"]


def test_first_divergence_names_first_epoch_and_parameter():
    net = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))
    ref = {0: tensor_checksums(net)}
    with torch.no_grad():
        net[0].weight[0, 0] += 1
    ref[1] = tensor_checksums(net)
    run = {0: ref[0], 1: dict(ref[1])}
    assert first_divergence(run, ref) is None
    with torch.no_grad():
        net[1].bias += 1e-3
    run[1] = tensor_checksums(net)
    run[2] = run[1]  # epochs missing from the reference are not compared
    found = first_divergence(run, ref)
    assert (found.epoch, found.name) == (1, "1.bias")
    assert "bitwise" in found.reason
    assert first_divergence(run, ref, atol=1e-2) is None
    assert first_divergence(run, ref, rtol=1e-9) is not None


def test_shape_and_missing_parameters_are_divergences():
    ref = {0: tensor_checksums({"a": torch.ones(2), "b": torch.ones(2)})}
    assert (
        "shape"
        in first_divergence({0: tensor_checksums({"a": torch.ones(3), "b": torch.ones(2)})}, ref).reason
    )
    missing = first_divergence({0: tensor_checksums({"a": torch.ones(2)})}, ref)
    assert missing.name == "b" and "missing" in missing.reason


def test_save_and_load_round_trip(tmp_path):
    records = {0: tensor_checksums(SmallCNN()), 3: tensor_checksums({"x": torch.zeros(1)})}
    path = tmp_path / "sub" / "c.json"
    save_checksums(path, records)
    assert json.loads(path.read_text())["format"] == "lightning-tricks/checksums"
    assert load_checksums(path) == records
    assert not [p for p in path.parent.iterdir() if p.name != "c.json"]  # no temp files left


def test_bad_input_is_named(tmp_path):
    with pytest.raises(TypeError, match="tensors"):
        tensor_checksums({"a": [1.0]})
    with pytest.raises(TypeError, match="tensors"):
        tensor_checksums(3)
    with pytest.raises(ValueError, match="rtol"):
        first_divergence({}, {}, rtol=-1)
    with pytest.raises(ValueError, match="atol"):
        first_divergence({}, {}, atol=float("nan"))
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "other"}')
    with pytest.raises(ValueError, match="not a checksum file"):
        load_checksums(bad)
    bad.write_text('{"format": "lightning-tricks/checksums", "version": 1, "epochs": []}')
    with pytest.raises(ValueError, match="version 1, whose hashes cannot be compared"):
        load_checksums(bad)
    bad.write_text("{")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_checksums(bad)


def _words(*values: int) -> torch.Tensor:
    """float32 tensor with these 32-bit patterns."""
    return torch.tensor(list(values), dtype=torch.int64).to(torch.int32).view(torch.float32)


STRUCTURED_PAIRS = {
    # words differing by exactly 2**31 - 1 (the old modulus): 0.0 vs the bit pattern 0x7FFFFFFF
    "zero_vs_7fffffff": (_words(0, 0, 0), _words(0, 0x7FFFFFFF, 0)),
    "one_vs_80000000": (_words(1, 5), _words(-0x80000000, 5)),  # 1 and 0x80000000 (== -2**31)
    "minus_one_vs_7ffffffe": (_words(-1), _words(0x7FFFFFFE)),  # 0xFFFFFFFF and 0x7FFFFFFE
    "two_words": (_words(0, 0), _words(0x7FFFFFFF, 0x7FFFFFFF)),
    # second differences (+1, -2, +1) cancel for weights linear in the position
    "second_difference": (_words(10, 10, 10, 10), _words(10, 11, 8, 11)),
    "third_difference": (_words(10, 10, 10, 10, 10), _words(10, 11, 7, 13, 9)),
}


@pytest.mark.parametrize("name", list(STRUCTURED_PAIRS))
def test_structured_word_patterns_do_not_collide(name):
    a, b = STRUCTURED_PAIRS[name]
    assert not torch.equal(a.view(torch.int32), b.view(torch.int32))
    assert tensor_checksums({"t": a})["t"]["hash"] != tensor_checksums({"t": b})["t"]["hash"]


def test_every_single_word_change_of_a_long_tensor_changes_the_hash():
    # a change of one 32-bit word by any amount is detected with certainty, at any position
    t = torch.zeros(4096, dtype=torch.int32)
    base = tensor_checksums({"t": t})["t"]["hash"]
    for pos, value in [(0, 0x7FFFFFFF), (1, -1), (4095, -0x80000000), (2048, 0x7FFFFFFF), (17, 1)]:
        changed = t.clone()
        changed[pos] = value
        assert tensor_checksums({"t": changed})["t"]["hash"] != base, (pos, value)


def test_first_divergence_finds_the_first_differing_tensor_despite_equal_sums():
    zero, pattern = STRUCTURED_PAIRS["zero_vs_7fffffff"]  # 0x7FFFFFFF is a NaN
    ref = {0: tensor_checksums({"a": torch.ones(2), "b": zero, "c": torch.ones(1)})}
    run = {0: tensor_checksums({"a": torch.ones(2), "b": pattern, "c": torch.zeros(1)})}
    found = first_divergence(run, ref)
    assert found is not None and (found.epoch, found.name) == (0, "b")


def test_an_equal_hash_with_different_sums_is_still_a_divergence():
    ref = {0: tensor_checksums({"a": torch.ones(2)})}
    run = {0: {"a": {**ref[0]["a"], "sum": 3.0}}}  # as if two different tensors' hashes collided
    found = first_divergence(run, ref)
    assert found is not None and found.name == "a" and "sum" in found.reason
