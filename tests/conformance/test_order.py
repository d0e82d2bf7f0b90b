"""Order independence: callbacks that change the model or its optimizer when a fit sets up
(``Spec.setup_time`` in the settings) give the same model whichever is listed first.

Every pair of them is attached in both orders to one model, with the same seed: after setup
(weights, ``requires_grad``, memory format, ``forward`` wrappers, parameter groups, the
accumulation) and after a short fit (the whole state), the two orders must agree. A second
test keeps the ``setup_time`` flags true: a callback whose setup changes any of these must
carry the flag, and one that carries it must change something.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch import Callback

from tests.conformance.build import build_component, build_run, kind_of, resolve, trainer_kwargs
from tests.conformance.settings import SETTINGS, spec_ids
from tests.conformance.spec import Spec
from tests.helpers import ClassifierModule, ImageDataModule
from tests.helpers.utils import whole_state

PAIR_ARCH = "blocks"  # a convolution (channels-last), residual blocks (checkpointing), a backbone


class SetupProbe(Callback):
    """Listed last: records the model and the optimizer as the fit starts, after every
    component's ``setup`` and ``on_fit_start`` and after ``configure_optimizers``."""

    def __init__(self, stop: bool = False) -> None:
        self.stop = stop
        self.fingerprint: dict[str, Any] = {}
        self.steps = 0

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.fingerprint = fingerprint(trainer, pl_module)
        if self.stop:  # the fit ends before its first step
            trainer.should_stop = True

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.steps += 1


def _layouts(model: torch.nn.Module) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for n, p in model.named_parameters():
        out[f"requires_grad {n}"] = p.requires_grad
        channels_last = p.dim() == 4 and p.is_contiguous(memory_format=torch.channels_last)
        out[f"memory format {n}"] = ("channels_last" if channels_last else "contiguous", p.stride())
    return out


def fingerprint(trainer: L.Trainer, model: L.LightningModule) -> dict[str, Any]:
    """What a setup-time component changes: weights and buffers, ``requires_grad`` and memory
    format, the ``forward`` wrappers of each module (outermost first), the optimizers'
    parameter groups (parameter names and hyper-parameters), the accumulation."""
    out: dict[str, Any] = {f"state {k}": v.detach().clone() for k, v in model.state_dict().items()}
    out.update(_layouts(model))
    for n, m in model.named_modules():
        chain, w = [], m.__dict__.get("forward")
        while w is not None and len(chain) < 8:
            chain.append(type(w).__qualname__)
            w = getattr(w, "original", None)
        if chain:
            out[f"forward of {n or '<root>'}"] = chain
    names = {id(p): n for n, p in model.named_parameters()}
    for i, opt in enumerate(trainer.optimizers):
        for g, group in enumerate(opt.param_groups):
            out[f"optimizer{i} group{g} params"] = [names.get(id(p), "?") for p in group["params"]]
            for k, v in group.items():
                if k != "params":
                    out[f"optimizer{i} group{g} {k}"] = v
    out["accumulate_grad_batches"] = trainer.accumulate_grad_batches
    return out


def _differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    lines = [f"{k}: only in the first" for k in a if k not in b]
    lines += [f"{k}: only in the second" for k in b if k not in a]
    for k in a:
        if k not in b:
            continue
        x, y = a[k], b[k]
        if isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor):
            same = x.dtype == y.dtype and x.shape == y.shape and torch.equal(x, y)
        else:
            same = type(x) is type(y) and x == y
        if not same:
            shown = (
                (f"sum {float(x.double().sum()):.6g}", f"sum {float(y.double().sum()):.6g}")
                if isinstance(x, torch.Tensor)
                else (x, y)
            )
            lines.append(f"{k}: {shown[0]} != {shown[1]}")
    return lines


# --------------------------------------------------------------------------- pairs, both orders


def _pair_specs() -> dict[str, Spec]:
    """One spec per setup-time callback: the one for the pair model's architecture if any,
    else the first flagged one (its ``init_args`` build the callback; the pair model and
    data are the same for all)."""
    out: dict[str, Spec] = {}
    for name, specs in sorted(SETTINGS.items()):
        flagged = [s for s in specs if s.setup_time and kind_of(resolve(name)) == "callback"]
        if flagged:
            out[name] = next((s for s in flagged if s.arch == PAIR_ARCH), flagged[0])
    return out


PAIR_SPECS = _pair_specs()
PAIRS = [pytest.param(a, b, id=f"{a}+{b}") for a, b in itertools.combinations(PAIR_SPECS, 2)]


def _fit_with(callbacks: list, root: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(fingerprint after setup, whole state and layouts after a 2-batch fit)."""
    L.seed_everything(0, verbose=False)
    model = ClassifierModule(arch=PAIR_ARCH)
    probe = SetupProbe()
    trainer = L.Trainer(
        callbacks=[*callbacks, probe],
        **trainer_kwargs(
            Spec(), root, max_epochs=1, limit_train_batches=2, limit_val_batches=0, logger=False
        ),
    )
    trainer.fit(model, datamodule=ImageDataModule(n_train=32, batch_size=16))
    return probe.fingerprint, {**whole_state(trainer, model, ignore_callbacks=[probe]), **_layouts(model)}


def test_pairs_cover_the_setup_time_callbacks():
    """The pairs below are built from the settings: the flag is what puts a callback in them."""
    assert {"ChannelsLast", "Compile", "FreezeBackbone", "GradientCheckpointing", "WeightInit"} <= set(
        PAIR_SPECS
    )


@pytest.mark.parametrize(("first", "second"), PAIRS)
def test_setup_time_callbacks_give_the_same_model_in_either_order(first, second, tmp_path):
    def build(name):
        return build_component(name, PAIR_SPECS[name])

    setup_ab, fit_ab = _fit_with([build(first), build(second)], tmp_path / "ab")
    setup_ba, fit_ba = _fit_with([build(second), build(first)], tmp_path / "ba")
    diff = _differences(setup_ab, setup_ba)
    assert not diff, (
        f"[{first}, {second}] and [{second}, {first}] set up different models:\n  " + "\n  ".join(diff[:8])
    )
    diff = _differences(fit_ab, fit_ba)
    assert not diff, (
        f"[{first}, {second}] and [{second}, {first}] end a 2-batch fit in different states:\n  "
        + "\n  ".join(diff[:8])
    )


# --------------------------------------------------------------------------- the flag is true

_PLAIN: dict[str, dict[str, Any]] = {}


def _setup_only(name: str, spec: Spec, root: Path, with_component: bool) -> dict[str, Any]:
    model, dm, callbacks, plugins, _ = build_run(name, spec)
    probe = SetupProbe(stop=True)
    trainer = L.Trainer(
        callbacks=[*(callbacks if with_component else []), probe],
        plugins=plugins or None,
        **trainer_kwargs(spec, root, limit_val_batches=0, logger=False),
    )
    trainer.fit(model, datamodule=dm)
    assert probe.fingerprint and not probe.steps, "the probe did not stop the fit before its first step"
    return probe.fingerprint


CALLBACK_SPECS = [
    pytest.param(name, spec, id=tid) for name, spec, tid in spec_ids() if kind_of(resolve(name)) == "callback"
]


@pytest.mark.parametrize(("name", "spec"), CALLBACK_SPECS)
def test_setup_time_flag_says_whether_setup_changes_the_model(name, spec, tmp_path):
    key = repr((spec.arch, spec.zoo, sorted(spec.model_args.items()), sorted(spec.data_args.items())))
    if key not in _PLAIN:
        _PLAIN[key] = _setup_only(name, spec, tmp_path / "plain", with_component=False)
    changed = _differences(_PLAIN[key], _setup_only(name, spec, tmp_path / "with", with_component=True))
    if spec.setup_time:
        assert changed, f"{name} is marked setup_time in the settings, but its setup changes nothing"
    else:
        assert not changed, (
            f"{name}'s setup changes the model or its optimizer; mark its settings `setup_time=True` "
            "so that test_order attaches it in pairs:\n  " + "\n  ".join(changed[:8])
        )
