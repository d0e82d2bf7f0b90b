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

    t = torch.randn(1000)
    whole = tensor_checksums({"t": t})["t"]
    monkeypatch.setattr(mod, "_CHUNK", 64)
    assert tensor_checksums({"t": t})["t"] == whole


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
    bad.write_text("{")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_checksums(bad)
