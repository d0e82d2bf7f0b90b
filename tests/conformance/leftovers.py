"""Leftovers after failures: a component that patches the model (hooks, ``forward`` or method
wrappers, compiled or swapped modules, global state) must undo it on every exit path.

:func:`check_leftovers` drives one component through runs that fail at chosen points (an
exception or a ``KeyboardInterrupt`` raised from the model's forward while the component's
patches are in place), checks after each that the model and the process are back to
plain, then that a later ``validate``, ``fit`` and ``predict`` with the same objects give
what fresh objects give.
"""

from __future__ import annotations

import contextlib
import copy
import signal
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch import Callback, LightningDataModule
from lightning.pytorch.utilities.model_helpers import is_overridden
from torch import nn

from tests.conformance.build import build_run, trainer_kwargs
from tests.conformance.spec import Spec
from tests.helpers.utils import state_diff, whole_state

# (stage, where the model's forward starts raising, what it raises). The fit points are
# reached with the component's patches in place: the first step (per-step hooks of
# monitors that sample step 0, wrapped training_step), the second (windows that start at
# step 1), the end of the first epoch (captures that run the model with hooks on; the
# trap is armed before the component's own epoch-end hook, so the capture meets it).
POINTS: tuple[tuple[str, str, type[BaseException]], ...] = (
    ("fit", "step0", RuntimeError),
    ("fit", "step0", KeyboardInterrupt),
    ("fit", "step1", RuntimeError),
    ("fit", "epoch_end", KeyboardInterrupt),
    ("validate", "validation_start", RuntimeError),
    ("predict", "predict_start", RuntimeError),
)

HOOK_DICTS = (
    "_forward_hooks",
    "_forward_hooks_always_called",
    "_forward_pre_hooks",
    "_backward_hooks",
    "_backward_pre_hooks",
    "_state_dict_hooks",
    "_state_dict_pre_hooks",
    "_load_state_dict_pre_hooks",
    "_load_state_dict_post_hooks",
)


class DeliberateFailure(RuntimeError):
    """Raised by :class:`Trap` from the model's forward."""


class Trap(Callback):
    """From the point ``where`` on, every call of the LightningModule raises ``exc`` (a
    forward pre-hook of its own, removed by :meth:`disarm`). Records the ``requires_grad``
    and train/eval flags of the model when it arms, and again when a training step starts
    while it is armed: a failure must leave them as they were."""

    def __init__(self, where: str, exc: type[BaseException]):
        self.where, self.exc = where, exc
        self.fired = 0
        self.flags: dict[str, tuple[bool, ...]] = {}
        self._handle: Any = None

    def _arm(self, pl_module: L.LightningModule) -> None:
        if self._handle is None:
            self.flags = _flags(pl_module)
            self._handle = pl_module.register_forward_pre_hook(self._raise)

    def _raise(self, module: nn.Module, args: Any) -> None:
        self.fired += 1
        exc = DeliberateFailure if self.exc is RuntimeError else self.exc
        raise exc(f"deliberate failure at {self.where}")

    def disarm(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self._handle is not None:  # the flags as this step starts (components may change them per epoch)
            self.flags = _flags(pl_module)
        if self.where == f"step{trainer.global_step}":
            self._arm(pl_module)

    def on_train_epoch_end(self, trainer, pl_module):
        if self.where == "epoch_end":
            self._arm(pl_module)

    def on_validation_start(self, trainer, pl_module):
        if self.where == "validation_start":
            self._arm(pl_module)

    def on_predict_start(self, trainer, pl_module):
        if self.where == "predict_start":
            self._arm(pl_module)


def _flags(model: nn.Module) -> dict[str, tuple[bool, ...]]:
    out = {f"requires_grad {n}": (p.requires_grad,) for n, p in model.named_parameters()}
    out.update({f"training {n or '<root>'}": (m.training,) for n, m in model.named_modules()})
    return out


def _shadowing(obj: Any) -> dict[str, str]:
    """Callable instance attributes that shadow an attribute of the class: patched methods."""
    return {
        k: type(v).__qualname__
        for k, v in vars(obj).items()
        if callable(v) and not isinstance(v, nn.Module | type) and hasattr(type(obj), k)
    }


def module_profile(model: nn.Module) -> dict[str, Any]:
    """What a patch changes, per submodule: its type, how many hooks of each kind it has,
    which methods are replaced on the instance; and the parameters' tensor hooks."""
    out: dict[str, Any] = {}
    for name, m in model.named_modules():
        entry: dict[str, Any] = {"type": f"{type(m).__module__}.{type(m).__qualname__}"}
        for attr in HOOK_DICTS:
            hooks = getattr(m, attr, None)
            entry[attr] = len(hooks) if hooks is not None else 0
        entry["methods replaced on the instance"] = _shadowing(m)
        out[name or "<root>"] = entry
    for name, p in model.named_parameters():
        n = len(p._backward_hooks or {}) + len(getattr(p, "_post_accumulate_grad_hooks", None) or {})
        if n:
            out[f"parameter {name}"] = {"tensor hooks": n}
    return out


def process_profile() -> dict[str, Any]:
    """Process-wide state a component may change: global module hooks, compile-event
    callbacks, dispatch and function modes, the profiler, grad/inference mode, the
    compiler's stance."""
    import torch.nn.modules.module as module_mod
    from torch.overrides import _get_current_function_mode_stack
    from torch.utils._python_dispatch import _get_current_dispatch_mode_stack

    out: dict[str, Any] = {
        name: len(value)
        for name in dir(module_mod)
        if name.startswith("_global") and isinstance(value := getattr(module_mod, name), dict)
    }
    handler = getattr(sys.modules.get("torch._dynamo.callback"), "callback_handler", None)
    for kind in ("start_callbacks", "end_callbacks"):
        out[f"compile event {kind}"] = len(getattr(handler, kind, ()))
    stance = getattr(sys.modules.get("torch._dynamo.eval_frame"), "_stance", None)
    out["compile stance"] = getattr(stance, "stance", "default")
    out["dispatch modes"] = len(_get_current_dispatch_mode_stack())
    out["function modes"] = len(_get_current_function_mode_stack())
    out["profiler running"] = bool(torch._C._autograd._profiler_enabled())
    out["grad enabled"] = torch.is_grad_enabled()
    out["inference mode"] = torch.is_inference_mode_enabled()
    return out


def _diff(what: str, expected: dict[str, Any], got: dict[str, Any]) -> list[str]:
    lines = [f"{what} {k}: missing" for k in expected if k not in got]
    lines += [f"{what} {k}: {got[k]!r} (not in a fresh one)" for k in got if k not in expected]
    for k in expected:
        if k in got and got[k] != expected[k]:
            if isinstance(got[k], dict) and isinstance(expected[k], dict):
                lines += [
                    f"{what} {k}: {a} is {got[k].get(a)!r}, {expected[k].get(a)!r} in a fresh one"
                    for a in sorted(set(got[k]) | set(expected[k]))
                    if got[k].get(a) != expected[k].get(a)
                ]
            else:
                lines.append(f"{what} {k}: {got[k]!r}, was {expected[k]!r}")
    return lines


@contextlib.contextmanager
def _quiet_interrupts() -> Iterator[None]:
    """Lightning answers a KeyboardInterrupt by ignoring SIGINT and calling ``sys.exit(1)``:
    give the test process its handler back."""
    handler = signal.getsignal(signal.SIGINT)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the components' advice is not under test here
            yield
    finally:
        signal.signal(signal.SIGINT, handler)


def _trainer(spec: Spec, run_dir: Path, callbacks: list, plugins: list, **overrides: Any) -> L.Trainer:
    kwargs = dict(max_epochs=2, limit_train_batches=2, limit_val_batches=1, limit_predict_batches=1)
    kwargs.update(overrides)
    return L.Trainer(callbacks=callbacks, plugins=plugins or None, **trainer_kwargs(spec, run_dir, **kwargs))


def _run(trainer: L.Trainer, stage: str, model: L.LightningModule, datamodule: Any) -> Any:
    L.seed_everything(0, verbose=False)
    if stage == "fit":
        return trainer.fit(model, datamodule=datamodule)
    return getattr(trainer, stage)(
        model, datamodule=datamodule, **({"verbose": False} if stage != "predict" else {})
    )


def check_leftovers(name: str, spec: Spec, tmp: Path) -> None:
    """Every failing run of :data:`POINTS` (on the same model and component) leaves the model
    and the process plain; then ``validate``, ``fit`` and ``predict`` with the same objects
    give what fresh ones give."""
    model, dm, callbacks, plugins, _ = build_run(name, spec)
    fresh = module_profile(build_run(name, spec)[0])
    before = process_profile()
    for stage, where, exc in POINTS:
        if stage == "predict" and not is_overridden("predict_dataloader", dm, LightningDataModule):
            continue  # the zoo data has no predict loader
        label = f"{name}: after a {exc.__name__} raised in {stage} ({where})"
        trap = Trap(where, exc)
        order = [trap, *callbacks] if where == "epoch_end" else [*callbacks, trap]
        run_dir = tmp / f"{stage}-{where}-{exc.__name__}"
        trainer = _trainer(spec, run_dir, order, plugins)
        caught: BaseException | None = None
        with _quiet_interrupts():
            try:
                _run(trainer, stage, model, dm)
            except BaseException as err:  # the deliberate failure, whatever its type
                caught = err
        trap.disarm()
        assert trap.fired, f"{label}: the run never reached the failure point"
        expected = SystemExit if exc is KeyboardInterrupt else DeliberateFailure
        assert isinstance(caught, expected), f"{label}: the run ended with {caught!r}, not the failure"
        problems = _diff("module", fresh, module_profile(model))
        problems += _diff("process:", before, process_profile())
        problems += _diff("model flag", trap.flags, _flags(model))
        for part in ("strategy", "precision_plugin", "accelerator"):
            obj = getattr(trainer, part)
            problems += [f"trainer.{part}.{k} is replaced by a {v}" for k, v in _shadowing(obj).items()]
        assert not problems, f"{label}, {len(problems)} thing(s) are not back to plain:\n  " + "\n  ".join(
            problems[:12]
        )
    _check_later_runs(name, spec, tmp, model, dm, callbacks, plugins)


def _check_later_runs(name, spec, tmp, model, dm, callbacks, plugins) -> None:
    """validate, fit and predict with the objects that went through the failures == with fresh
    ones (a fresh model carrying the same weights, ``requires_grad`` and train/eval flags: a
    failed validate or predict leaves the model in eval mode, and Lightning keeps the mode
    the model is in)."""
    ref_model, ref_dm, ref_callbacks, ref_plugins, _ = build_run(name, spec)
    ref_model.load_state_dict(copy.deepcopy(model.state_dict()))
    grads = dict(model.named_parameters())
    for n, p in ref_model.named_parameters():
        p.requires_grad_(grads[n].requires_grad)
    modes = dict(model.named_modules())
    for n, m in ref_model.named_modules():
        m.training = modes[n].training
    can_predict = is_overridden("predict_dataloader", dm, LightningDataModule)
    results = []
    for who, m, d, cbs, pl in (
        ("again", model, dm, callbacks, plugins),
        ("fresh", ref_model, ref_dm, ref_callbacks, ref_plugins),
    ):
        with _quiet_interrupts():
            metrics = _run(_trainer(spec, tmp / who / "validate", cbs, pl), "validate", m, d)[0]
            trainer = _trainer(spec, tmp / who / "fit", cbs, pl, max_epochs=1, limit_train_batches=1)
            _run(trainer, "fit", m, d)
            state = whole_state(trainer, m)
            preds = (
                _run(_trainer(spec, tmp / who / "predict", cbs, pl), "predict", m, d) if can_predict else None
            )
        results.append((metrics, state, preds))
    (m_again, s_again, p_again), (m_fresh, s_fresh, p_fresh) = results
    assert m_again.keys() == m_fresh.keys(), f"{name}: validate after the failures logs {sorted(m_again)}"
    off = {
        k: (m_again[k], m_fresh[k])
        for k in m_fresh
        if abs(m_again[k] - m_fresh[k]) > 1e-6 * (1 + abs(m_fresh[k]))
    }
    assert not off, f"{name}: validate after the failures differs from a fresh validate: {off}"
    if spec.fit_twice_same_weights:
        diff = state_diff(s_fresh, s_again)
        assert not diff, f"{name}: a fit after the failures differs from a fresh fit in:\n  " + "\n  ".join(
            diff[:8]
        )
    torch.testing.assert_close(
        p_again, p_fresh, rtol=1e-6, atol=1e-7, msg=lambda m: f"{name}: predict after the failures: {m}"
    )
