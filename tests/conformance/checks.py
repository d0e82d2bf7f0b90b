"""The conformance checks. Each raises ``AssertionError`` when a component fails it.

They are plain functions so that ``test_suite_can_fail.py`` can run deliberately
broken components through them and assert that each is caught.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import math
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch import Callback
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import Logger, TensorBoardLogger

from tests.conformance.build import build_component, build_run, kind_of, resolve, trainer_kwargs
from tests.conformance.spec import Spec
from tests.helpers import params_equal, state_of
from tests.helpers.utils import state_diff, whole_state

REPO_ROOT = Path(__file__).resolve().parents[2]


class Interrupt(RuntimeError):
    """Raised by :class:`CrashAt` to stop a run as a crash would."""


class CrashAt(Callback):
    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            raise Interrupt(f"deliberate interruption at the start of epoch {self.epoch}")


def fit(
    name: str,
    spec: Spec,
    tmp: Path,
    component: Any = None,
    extra_callbacks=(),
    ckpt_path=None,
    extra_plugins=(),
    **overrides,
):
    model, dm, callbacks, plugins, component = build_run(name, spec, component)
    plugins = [*plugins, *extra_plugins]
    if any(isinstance(c, ModelCheckpoint) for c in extra_callbacks):
        overrides.setdefault("enable_checkpointing", True)
    trainer = L.Trainer(
        callbacks=[*callbacks, *extra_callbacks],
        plugins=plugins or None,
        **trainer_kwargs(spec, tmp, **overrides),
    )
    trainer.fit(model, datamodule=dm, ckpt_path=ckpt_path)
    assert trainer.state.finished, f"{name}: fit did not finish (state {trainer.state.status})"
    return trainer, model, component


def check_construct(name: str, spec: Spec) -> None:
    cls = resolve(name)
    component = build_component(name, spec)
    if kind_of(cls) == "mixin":
        assert issubclass(component, cls)
        model = component(arch=spec.arch, **spec.model_args)
        assert isinstance(model, cls) and isinstance(model, L.LightningModule)
    else:
        assert isinstance(component, cls), f"{name}: settings built a {type(component)!r}"


def check_pickle(name: str, spec: Spec) -> None:
    cls = resolve(name)
    component = build_component(name, spec)
    obj = component(arch=spec.arch, **spec.model_args) if kind_of(cls) == "mixin" else component
    for clone in (pickle.loads(pickle.dumps(obj)), copy.deepcopy(obj)):
        assert type(clone) is type(obj)
        if hasattr(obj, "state_dict") and isinstance(obj, Callback):
            assert _same_state(clone.state_dict(), obj.state_dict()), f"{name}: state_dict changed by copying"
        if isinstance(obj, L.LightningModule):
            assert not params_equal(state_of(clone), state_of(obj)), f"{name}: weights changed by copying"


def _same_state(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same_state(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return type(a) is type(b) and len(a) == len(b) and all(_same_state(x, y) for x, y in zip(a, b))
    return a == b


def cli_config(name: str, spec: Spec, tmp: Path) -> dict[str, Any]:
    """A LightningCLI config that attaches the component by ``class_path``/``init_args``."""
    from tests.conformance.build import composed_class

    cls = resolve(name)
    kind = kind_of(cls)
    init_args = spec.cli_init_args if spec.cli_init_args is not None else spec.init_args
    class_path = f"{cls.__module__}.{cls.__name__}"
    model_cls = composed_class(cls, spec) if kind == "mixin" else None
    model = {
        "class_path": f"{model_cls.__module__}.{model_cls.__name__}"
        if model_cls
        else "tests.helpers.ClassifierModule",
        "init_args": {"arch": spec.arch, **spec.model_args},
    }
    data = {"class_path": "tests.helpers.ImageDataModule", "init_args": dict(spec.data_args)}
    if spec.zoo is not None:
        from tests.conformance.build import ZOO_MODELS

        path, kwargs = ZOO_MODELS[spec.zoo]
        model = {"class_path": path, "init_args": {**kwargs, **spec.model_args}}
        data = {
            "class_path": "tests.conformance.build.ZooDataModule",
            "init_args": {"name": spec.zoo, **spec.data_args},
        }
    if kind == "datamodule":
        data = {"class_path": class_path, "init_args": init_args}
    trainer: dict[str, Any] = {
        "accelerator": "cpu",
        "devices": 1,
        "max_epochs": 1,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
        "default_root_dir": str(tmp),
        **{k: v for k, v in spec.trainer_args.items() if k not in ("max_epochs",)},
    }
    if kind == "callback":
        trainer["callbacks"] = [{"class_path": class_path, "init_args": init_args}]
    if kind == "plugin":
        trainer["plugins"] = [{"class_path": class_path, "init_args": init_args}]
    return {"seed_everything": 0, "trainer": trainer, "model": model, "data": data}


def check_cli(name: str, spec: Spec, tmp: Path) -> None:
    import yaml
    from lightning.pytorch.cli import LightningCLI

    cls = resolve(name)
    tmp.mkdir(parents=True, exist_ok=True)
    config = tmp / "config.yaml"
    config.write_text(yaml.safe_dump(cli_config(name, spec, tmp)))
    cli = LightningCLI(
        L.LightningModule,
        L.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        args=["fit", "--config", str(config)],
        save_config_callback=None,
    )
    kind = kind_of(cls)
    if kind == "callback":
        assert any(isinstance(c, cls) for c in cli.trainer.callbacks), f"{name} not attached by the CLI"
    elif kind == "mixin":
        assert isinstance(cli.model, cls)
    elif kind == "datamodule":
        assert isinstance(cli.datamodule, cls)
    assert cli.trainer.state.finished


def _diff_message(diff: list[str], limit: int = 8) -> str:
    more = f"\n  ... and {len(diff) - limit} more" if len(diff) > limit else ""
    return "".join(f"\n  {line}" for line in diff[:limit]) + more


def check_fit_twice(name: str, spec: Spec, tmp: Path) -> None:
    """A second fit with the same component instance ends in the same whole state."""
    trainer1, model1, component = fit(name, spec, tmp / "first")
    first = whole_state(trainer1, model1)
    trainer2, model2, _ = fit(name, spec, tmp / "second", component=component)
    if spec.fit_twice_same_weights:
        diff = state_diff(first, whole_state(trainer2, model2))
        assert not diff, (
            f"{name}: a second fit with the same instance gives a different state in {len(diff)} entries:"
            + _diff_message(diff)
        )


def _ckpt_cb(d: Path) -> ModelCheckpoint:
    return ModelCheckpoint(
        dirpath=str(d), filename="ep{epoch}", auto_insert_metric_name=False, save_top_k=-1, every_n_epochs=1
    )


def _straight_crashed_resumed(
    name: str,
    spec: Spec,
    tmp: Path,
    epochs: int,
    crash_epoch: int,
    harness=lambda: [],
    plugins=lambda: [],
    overrides=lambda run_dir: {},
    resume_context=contextlib.nullcontext,
) -> tuple[tuple[L.Trainer, Any], Path, tuple[L.Trainer, Any]]:
    """Run straight through, crash at the start of ``crash_epoch``, resume from the last
    checkpoint. ``harness``/``plugins``/``overrides`` build fresh test-only callbacks,
    plugins and Trainer arguments per run; the resumed fit runs inside ``resume_context()``.
    Returns ((trainer, whole state) straight, the checkpoint, (trainer, whole state) resumed)."""
    extra = [_ckpt_cb(tmp / "ck_s"), *harness()]
    trainer_s, straight, _ = fit(
        name,
        spec,
        tmp / "straight",
        extra_callbacks=extra,
        extra_plugins=plugins(),
        max_epochs=epochs,
        **overrides(tmp / "straight"),
    )
    state_s = whole_state(trainer_s, straight, ignore_callbacks=extra)
    try:
        fit(
            name,
            spec,
            tmp / "crashed",
            extra_callbacks=[_ckpt_cb(tmp / "ck_c"), CrashAt(crash_epoch), *harness()],
            extra_plugins=plugins(),
            max_epochs=epochs,
            **overrides(tmp / "crashed"),
        )
    except Interrupt:
        pass
    else:
        raise AssertionError("the interrupted run was not interrupted")
    ckpt = tmp / "ck_c" / f"ep{crash_epoch - 1}.ckpt"
    assert ckpt.exists(), f"no checkpoint after epoch {crash_epoch - 1}: {sorted(os.listdir(tmp / 'ck_c'))}"
    extra = [_ckpt_cb(tmp / "ck_r"), *harness()]
    with resume_context():
        trainer_r, resumed, _ = fit(
            name,
            spec,
            tmp / "resumed",
            extra_callbacks=extra,
            extra_plugins=plugins(),
            ckpt_path=str(ckpt),
            max_epochs=epochs,
            **overrides(tmp / "resumed"),
        )
    state_r = whole_state(trainer_r, resumed, ignore_callbacks=extra)
    return (trainer_s, state_s), ckpt, (trainer_r, state_r)


def _assert_resume_parity(name: str, state_s: dict, state_r: dict, what: str = "") -> None:
    diff = state_diff(state_s, state_r)
    n_params = sum(1 for line in diff if line.startswith("model/"))
    assert not diff, (
        f"{name}: resumed run{what} differs from the uninterrupted run in {len(diff)} state entries "
        f"({n_params} in the model):" + _diff_message(diff)
    )


# The model of the resume check has dropout (see ``ClassifierModule(dropout=...)``), and the
# check attaches ExactResume, which checkpoints the random number generators: so a
# component's resume is checked on a model whose training draws random numbers every step.
RESUME_DROPOUT = 0.1


def check_resume(
    name: str,
    spec: Spec,
    tmp: Path,
    epochs: int = 4,
    crash_epoch: int = 2,
    plugins=lambda: [],
    resume_context=contextlib.nullcontext,
    exact: bool = True,
    dropout: float = RESUME_DROPOUT,
) -> None:
    """Interrupted after ``crash_epoch`` epochs and resumed == run straight through, in the
    whole state (weights, buffers, optimizer, LR schedulers, callbacks, datamodule).
    ``plugins`` builds extra Trainer plugins per run (e.g. a checkpoint plugin); the resumed
    fit runs inside ``resume_context()`` (e.g. with unpickling disabled). The model has
    ``dropout`` (not the zoo's models) and, with ``exact``, every run attaches
    :class:`~lightning_tricks.ExactResume` (unless it is the component under test)."""
    from lightning_tricks import ExactResume

    if spec.zoo is None and dropout:
        spec = dataclasses.replace(spec, model_args={**spec.model_args, "dropout": dropout})

    def harness() -> list:
        return [ExactResume()] if exact and name != "ExactResume" else []

    (_, state_s), _, (_, state_r) = _straight_crashed_resumed(
        name, spec, tmp, epochs, crash_epoch, harness=harness, plugins=plugins, resume_context=resume_context
    )
    _assert_resume_parity(name, state_s, state_r)


def check_bf16(name: str, spec: Spec, tmp: Path) -> None:
    _, model, _ = fit(name, spec, tmp, precision="bf16-mixed")
    bad = [k for k, v in model.named_parameters() if not torch.isfinite(v).all()]
    assert not bad, f"{name}: non-finite weights after a bf16-mixed fit: {bad[:5]}"


# --------------------------------------------------------------------------- fp16 loss scaling
# The GPU configuration's semantics on CPU: fp16 autocast with a real loss scaler.

# The global step whose gradient the harness makes infinite: step 0, which every
# component that samples steps (every N-th, step 0 included) looks at.
FP16_INF_STEP = 0
# Gradient statistics that components log (metric names containing "grad") must be of
# the same magnitude under fp16 loss scaling as in fp32: a component that reads the
# scaled gradients (in ``on_after_backward``, or in backward hooks) is off by the loss
# scale (2**15 to 2**16 here).
UNSCALED_TOLERANCE = 64.0


class MemoryLogger(Logger):
    """Test-only logger that keeps every ``log_metrics`` call in memory."""

    def __init__(self, root: Path):
        super().__init__()
        self._root = str(root)
        self.logged: list[tuple[int | None, dict[str, float]]] = []

    @property
    def name(self) -> str:
        return "memory"

    @property
    def version(self) -> int:
        return 0

    @property
    def root_dir(self) -> str:
        return self._root

    @property
    def log_dir(self) -> str:
        return self._root

    def log_metrics(self, metrics, step=None) -> None:
        self.logged.append((step, {k: float(v) for k, v in metrics.items()}))

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass

    def grad_medians(self, max_step: int) -> dict[str, float]:
        """Median of the finite values logged up to ``max_step`` per metric naming "grad"."""
        values: dict[str, list[float]] = {}
        for step, metrics in self.logged:
            if step is not None and step > max_step:
                continue
            for k, v in metrics.items():
                if "grad" in k.lower() and math.isfinite(v):
                    values.setdefault(k, []).append(v)
        return {k: float(torch.tensor(v).median()) for k, v in values.items()}


def _loggers(run_dir: Path) -> dict[str, Any]:
    return {"logger": [TensorBoardLogger(str(run_dir), name="logs"), MemoryLogger(run_dir)]}


def fp16_plugin():
    """``16-mixed`` on CPU with a real fp16 loss scaler (a fresh one per fit)."""
    from lightning.pytorch.plugins.precision import MixedPrecision

    return MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu"))


class InfGradAt(Callback):
    """Test-only: after the backward of global step ``step``, sets one gradient to ``inf``
    (so the loss scaler skips that optimizer step and lowers its scale), and records the
    scaler's scale before and after every optimizer step."""

    def __init__(self, step: int = FP16_INF_STEP):
        self.step = step
        self.injected = False
        self.scales: dict[int, tuple[float, float]] = {}  # global step -> (scale before, after)
        self._pending: tuple[int, float] | None = None

    @staticmethod
    def _scale(trainer) -> float:
        return float(trainer.precision_plugin.scaler.get_scale())

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self._pending is None:  # the first micro-batch of an optimizer step
            self._pending = (trainer.global_step, self._scale(trainer))

    def on_after_backward(self, trainer, pl_module):
        if trainer.global_step == self.step and not self.injected:
            p = next(p for p in pl_module.parameters() if p.grad is not None)
            p.grad.fill_(math.inf)
            self.injected = True

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self._pending is not None and trainer.global_step != self._pending[0]:
            self.scales[self._pending[0]] = (self._pending[1], self._scale(trainer))
            self._pending = None

    def skipped(self) -> list[int]:
        """Global steps after which the scale went down: the scaler skipped them."""
        return [s for s, (before, after) in sorted(self.scales.items()) if after < before]


def check_fp16(name: str, spec: Spec, tmp: Path, epochs: int = 2, crash_epoch: int = 1) -> None:
    """``16-mixed`` with a real loss scaler: the fit finishes with finite weights, the step
    whose gradient is made infinite is skipped (the scale goes down) and training goes on
    stepping after it, the scaler's state is in the checkpoint, and a run interrupted after
    ``crash_epoch`` epochs and resumed ends in the same whole state (scaler included)."""
    probes: list[InfGradAt] = []

    def harness():
        probes.append(InfGradAt())
        return [probes[-1]]

    (trainer, state_s), ckpt, (_, state_r) = _straight_crashed_resumed(
        name,
        spec,
        tmp,
        epochs,
        crash_epoch,
        harness=harness,
        plugins=lambda: [fp16_plugin()],
        overrides=_loggers,
    )
    model = trainer.lightning_module
    bad = [k for k, v in model.named_parameters() if not torch.isfinite(v).all()]
    assert not bad, f"{name}: non-finite weights after a 16-mixed fit with a loss scaler: {bad[:5]}"
    probe = probes[0]
    assert probe.injected, f"{name}: the fit never reached global step {FP16_INF_STEP} with gradients"
    before, after = probe.scales.get(FP16_INF_STEP, (math.nan, math.nan))
    assert after < before, (
        f"{name}: the loss scaler did not skip step {FP16_INF_STEP} whose gradient was inf "
        f"(scale {before} -> {after})"
    )
    others = [s for s in probe.skipped() if s != FP16_INF_STEP]
    assert len(others) <= len(probe.scales) // 4, (
        f"{name}: after the inf step the scaler keeps skipping: steps {others} of {len(probe.scales)} skipped "
        f"(scales {probe.scales})"
    )
    saved = trainer.strategy.checkpoint_io.load_checkpoint(ckpt, weights_only=False)  # the run's plugin
    prec = trainer.precision_plugin
    scaler_state = saved.get(type(prec).__qualname__)
    assert scaler_state and scaler_state.get("scale", math.inf) < 2.0**16, (
        f"{name}: the checkpoint lacks the loss scaler's state after the skipped step "
        f"(under {type(prec).__qualname__!r}: {scaler_state})"
    )
    _assert_resume_parity(name, state_s, state_r, " under 16-mixed")
    logged16 = trainer.loggers[1].grad_medians(max_step=3)
    if logged16:  # the component logs gradient statistics: compare them with an fp32 run
        trainer32, _, _ = fit(name, spec, tmp / "fp32", max_epochs=1, **_loggers(tmp / "fp32"))
        logged32 = trainer32.loggers[1].grad_medians(max_step=3)
        off = {
            k: (v, logged32[k])
            for k, v in logged16.items()
            if k in logged32
            and max(abs(v), abs(logged32[k])) > 1e-6
            and not (1 / UNSCALED_TOLERANCE <= abs(v) / max(abs(logged32[k]), 1e-12) <= UNSCALED_TOLERANCE)
        }
        assert not off, (
            f"{name}: gradient statistics logged under fp16 loss scaling are not those of the unscaled "
            f"gradients (median 16-mixed vs fp32 over the first steps): {dict(list(off.items())[:5])}"
        )


# --------------------------------------------------------------------------- DDP
# All DDP fits share one 2-process world (starting processes is the expensive part);
# a spec whose fit breaks the shared world is retried in a world of its own.

DDP_TIMEOUT_S = 90


def launch_two_ranks(args: list[str], out: Path, timeout: float) -> list[int | None]:
    """Run ``python <args>`` as ranks 0 and 1 of a 2-process gloo world on this machine
    (Lightning's ``ddp`` strategy, launched externally), logging to ``out/worker{rank}.log``;
    return the exit codes (``None`` for a process killed at the timeout)."""
    import socket
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out.mkdir(parents=True, exist_ok=True)
    procs = []
    for rank in range(2):
        env = dict(
            os.environ,
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
            WORLD_SIZE="2",
            NODE_RANK="0",
            LOCAL_RANK=str(rank),
            PYTHONPATH=os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
            OMP_NUM_THREADS="1",
        )
        log = open(out / f"worker{rank}.log", "w")  # noqa: SIM115
        cmd = [sys.executable, *args]
        procs.append(
            (subprocess.Popen(cmd, cwd=str(REPO_ROOT), env=env, stdout=log, stderr=subprocess.STDOUT), log)
        )
    deadline = time.monotonic() + timeout
    codes: list[int | None] = []
    try:
        for p, _ in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        for p, log in procs:
            codes.append(p.poll())
            if p.poll() is None:
                p.kill()
                p.wait()
            log.close()
    return codes


def _launch_world(job: dict[str, Any], out: Path, timeout: float) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "job.json").write_text(json.dumps(job))
    launch_two_ranks(["-m", "tests.conformance.ddp_worker", str(out / "job.json"), str(out)], out, timeout)


def run_ddp_fits(items: list[tuple[str, str]], out: Path) -> dict[str, dict[str, Any]]:
    """Fit every (test id, export name) under 2-process DDP; return per id the rank results.

    Result per id: ``{"rank0": path | None, "rank1": path | None, "error": str}``.
    """
    ids = [i for i, _ in items]
    _launch_world({"items": items}, out / "shared", timeout=60 + 45 * len(items))
    results = {i: _collect(i, out / "shared") for i in ids}
    for i, name in items:
        if results[i]["error"] or not (results[i]["rank0"] and results[i]["rank1"]):
            alone = out / f"alone_{len(results)}_{ids.index(i)}"
            _launch_world({"items": [(i, name)]}, alone, timeout=150)
            results[i] = _collect(i, alone)
    return results


def _collect(test_id: str, out: Path) -> dict[str, Any]:
    safe = _safe(test_id)
    res: dict[str, Any] = {"rank0": None, "rank1": None, "error": ""}
    for r in range(2):
        f = out / f"{safe}.rank{r}.pt"
        if f.exists():
            res[f"rank{r}"] = str(f)
        e = out / f"{safe}.rank{r}.err"
        if e.exists():
            res["error"] += f"--- rank {r}:\n{e.read_text()}\n"
    if not (res["rank0"] and res["rank1"]) and not res["error"]:
        logs = "".join(
            (out / f"worker{r}.log").read_text()[-3000:]
            for r in range(2)
            if (out / f"worker{r}.log").exists()
        )
        res["error"] = "no result (timeout or crash); worker logs:\n" + logs
    return res


def _safe(test_id: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in test_id)


def check_ddp_result(name: str, result: dict[str, Any]) -> None:
    """Both ranks end in the same whole state, and the logger wrote one run directory."""
    assert not result["error"], f"{name}: DDP fit failed:\n{textwrap.shorten(result['error'], 6000)}"
    r0 = torch.load(result["rank0"], weights_only=True)
    r1 = torch.load(result["rank1"], weights_only=True)
    diff = state_diff(r0["state"], r1["state"])
    n_params = sum(1 for line in diff if line.startswith("model/"))
    assert not diff, (
        f"{name}: after a 2-process DDP fit the ranks' states differ in {len(diff)} entries "
        f"({n_params} in the model):" + _diff_message(diff)
    )
    bad = [
        k for k, v in r0["state"].items() if k.startswith("model/") and not torch.isfinite(v.float()).all()
    ]
    assert not bad, f"{name}: non-finite weights after a 2-process DDP fit: {bad[:5]}"
    log_dir = Path(r0["log_dir"])
    assert r0["log_dir"] == r1["log_dir"], (
        f"{name}: the ranks disagree on log_dir: {r0['log_dir']} vs {r1['log_dir']}"
    )
    runs = sorted(p.name for p in log_dir.parent.iterdir()) if log_dir.parent.is_dir() else []
    assert runs == [log_dir.name], f"{name}: under DDP the logger made run directories {runs}, not one"
    assert any(log_dir.glob("events.out.tfevents.*")), f"{name}: rank 0 logged nothing to {log_dir}"
