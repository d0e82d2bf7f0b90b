"""detect_syncs on plain tensors: what it recognises, what it leaves alone, where it points."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lightning_tricks.functional import SyncDetectedError, SyncReport, detect_syncs

X = torch.randn(8)

PATTERNS = {
    "item": lambda: X.sum().item(),
    "bool": lambda: bool(X.sum() > 0),
    "if": lambda: 1 if X.mean() > 0 else 0,
    "int": lambda: int(X.argmax()),
    "float": lambda: float(X[0]),
    "fstring": lambda: f"{X.sum():.2f}",
    "tolist": lambda: X.tolist(),
    "numpy": lambda: X.numpy(),
    "cpu": lambda: X.cpu(),
    "mask_index": lambda: X[X > 0],
    "mask_assign": lambda: X.clone().__setitem__(X < 0, 0.0),
    "masked_select": lambda: X.masked_select(X > 0),
    "where_one_arg": lambda: torch.where(X > 0),
    "nonzero": lambda: X.nonzero(),
    "unique": lambda: X.unique(),
    "bincount": lambda: torch.bincount(torch.arange(4)),
    "equal": lambda: torch.equal(X, X),
    "repeat_interleave": lambda: torch.arange(3).repeat_interleave(torch.full((3,), 2)),
    "tensor_to": lambda: torch.tensor([1.0, 2.0]).to(X),
    "zeros_to_device": lambda: torch.zeros(3).to("cpu"),
    "arange_type_as": lambda: torch.arange(3).type_as(X),
}


@pytest.mark.parametrize("name", sorted(PATTERNS))
def test_each_pattern_is_found_once_at_the_callers_line(name):
    with detect_syncs(device="cpu") as report:
        PATTERNS[name]()
    assert report.total == 1, report.format()
    finding = report.findings[0]
    assert finding["site"].startswith(__file__ + ":")
    assert finding["code"].startswith(f'"{name}"')  # the source line of the lambda
    assert finding["kind"] == ("cpu_built" if name.endswith(("_to", "to_device", "type_as")) else "sync")


def test_clean_training_code_is_silent():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten())
    head = torch.nn.MultiheadAttention(8, 2, batch_first=True)
    x, y = torch.randn(4, 3, 5, 5), torch.tensor([0, 1, 2, 3])  # built outside: not reported
    with detect_syncs(device="cpu") as report:
        logits = model(x)[:, :4]
        loss = F.cross_entropy(logits, y) + 0.5 * logits.pow(2).mean()
        noise = torch.randn(4, 4, device=x.device)
        mask = torch.zeros_like(logits, dtype=torch.bool)
        loss = loss + torch.where(mask, logits, noise).sum() * 0.0
        head(torch.randn(2, 3, 8), torch.randn(2, 3, 8), torch.randn(2, 3, 8))
        loss.backward()
    assert report.total == 0, report.format()


def test_findings_aggregate_per_site_across_blocks_and_name_the_line():
    report = SyncReport()
    for _ in range(3):
        with detect_syncs(report):
            X.sum().item()  # the line reported
    assert report.blocks == 3 and report.total == 3 and len(report.findings) == 1
    text = report.format()
    assert "X.sum().item()  # the line reported" in text and "(x3)" in text


def test_raise_on_first_names_the_call_site():
    match = r"test_sync_detect\.py:\d+.*\.item\(\)"
    with pytest.raises(SyncDetectedError, match=match), detect_syncs(raise_on_first=True):
        X.sum().item()


def test_ignore_skips_matching_call_sites():
    with detect_syncs(ignore=["test_sync_detect.py"]) as report:
        X.sum().item()
    assert report.total == 0


def test_modes_are_gone_after_the_block():
    with detect_syncs() as report:
        pass
    X.sum().item()
    assert report.total == 0 and report.format() == ""


def test_cuda_sync_debug_mode_is_scoped_and_restored(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_sync_debug_mode", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_sync_debug_mode", lambda mode: calls.append(mode))
    with detect_syncs(device="cuda"):
        assert calls == ["warn"]
    assert calls == ["warn", 1]
    with pytest.raises(ZeroDivisionError), detect_syncs(device="cuda", raise_on_first=True):
        1 / 0  # noqa: B018
    assert calls[-2:] == ["error", 1]
    calls.clear()
    with detect_syncs(device="cuda", cuda_sync_debug=False):
        pass
    assert calls == []


def test_bad_arguments_name_themselves():
    with pytest.raises(TypeError, match="raise_on_first"), detect_syncs(raise_on_first="yes"):
        pass
    with pytest.raises(TypeError, match="ignore"), detect_syncs(ignore=[3]):
        pass


@pytest.mark.gpu
def test_real_cuda_syncs_are_found_and_mode_restored():
    x = torch.randn(64, device="cuda")
    before = torch.cuda.get_sync_debug_mode()
    with pytest.warns(UserWarning, match="synchroniz"), detect_syncs(device="cuda") as report:
        x.sum().item()
        x[x > 0]
        torch.zeros(3).to("cuda")
        x.to("cpu")
    assert torch.cuda.get_sync_debug_mode() == before
    kinds = [f["what"] for f in report.findings]
    assert report.total == 4, report.format()
    assert any("device-to-host" in w for w in kinds) and any("built on the CPU" in w for w in kinds)


@pytest.mark.parametrize("how", ["print", "str", "repr"])
def test_print_and_str_of_a_tensor_are_found(how, capsys):
    with detect_syncs(device="cpu") as report:
        if how == "print":
            print(X.sum())
        elif how == "str":
            str(X.sum())
        else:
            repr(X.sum())
    assert report.total == 1, report.format()
    assert "print" in report.findings[0]["what"] and report.findings[0]["code"].startswith(how)
