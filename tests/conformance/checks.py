"""The conformance checks. Each raises ``AssertionError`` when a component fails it.

They are plain functions so that ``test_suite_can_fail.py`` can run deliberately
broken components through them and assert that each is caught.
"""

from __future__ import annotations

import contextlib
import copy
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

from tests.conformance.build import build_component, build_run, kind_of, resolve, trainer_kwargs
from tests.conformance.spec import Spec
from tests.helpers import params_equal, state_of

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
    name: str, spec: Spec, tmp: Path, component: Any = None, extra_callbacks=(), ckpt_path=None, **overrides
):
    model, dm, callbacks, plugins, component = build_run(name, spec, component)
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


def check_fit_twice(name: str, spec: Spec, tmp: Path) -> None:
    _, model1, component = fit(name, spec, tmp / "first")
    _, model2, _ = fit(name, spec, tmp / "second", component=component)
    if spec.fit_twice_same_weights:
        diff = params_equal(state_of(model1), state_of(model2))
        assert not diff, f"{name}: a second fit with the same instance gives different weights: {diff[:5]}"


def check_resume(name: str, spec: Spec, tmp: Path, epochs: int = 4, crash_epoch: int = 2) -> None:
    """Interrupted after ``crash_epoch`` epochs and resumed == run straight through."""

    def ckpt_cb(d: Path) -> ModelCheckpoint:
        return ModelCheckpoint(
            dirpath=str(d),
            filename="ep{epoch}",
            auto_insert_metric_name=False,
            save_top_k=-1,
            every_n_epochs=1,
        )

    _, straight, _ = fit(
        name, spec, tmp / "straight", extra_callbacks=[ckpt_cb(tmp / "ck_s")], max_epochs=epochs
    )
    try:
        fit(
            name,
            spec,
            tmp / "crashed",
            extra_callbacks=[ckpt_cb(tmp / "ck_c"), CrashAt(crash_epoch)],
            max_epochs=epochs,
        )
    except Interrupt:
        pass
    else:
        raise AssertionError("the interrupted run was not interrupted")
    ckpt = tmp / "ck_c" / f"ep{crash_epoch - 1}.ckpt"
    assert ckpt.exists(), f"no checkpoint after epoch {crash_epoch - 1}: {sorted(os.listdir(tmp / 'ck_c'))}"
    _, resumed, _ = fit(
        name,
        spec,
        tmp / "resumed",
        extra_callbacks=[ckpt_cb(tmp / "ck_r")],
        ckpt_path=str(ckpt),
        max_epochs=epochs,
    )
    diff = params_equal(state_of(straight), state_of(resumed))
    assert not diff, (
        f"{name}: resumed run differs from the uninterrupted run in {len(diff)} tensors: {diff[:5]}"
    )


def check_bf16(name: str, spec: Spec, tmp: Path) -> None:
    _, model, _ = fit(name, spec, tmp, precision="bf16-mixed")
    bad = [k for k, v in model.named_parameters() if not torch.isfinite(v).all()]
    assert not bad, f"{name}: non-finite weights after a bf16-mixed fit: {bad[:5]}"


# --------------------------------------------------------------------------- DDP
# All DDP fits share one 2-process world (starting processes is the expensive part);
# a spec whose fit breaks the shared world is retried in a world of its own.

DDP_TIMEOUT_S = 90


def _launch_world(job: dict[str, Any], out: Path, timeout: float) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out.mkdir(parents=True, exist_ok=True)
    (out / "job.json").write_text(json.dumps(job))
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
        procs.append(
            (
                subprocess.Popen(
                    [sys.executable, "-m", "tests.conformance.ddp_worker", str(out / "job.json"), str(out)],
                    cwd=str(REPO_ROOT),
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                ),
                log,
            )
        )
    import time

    deadline = time.monotonic() + timeout
    try:
        for p, _ in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        for p, log in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
            log.close()


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
    assert not result["error"], f"{name}: DDP fit failed:\n{textwrap.shorten(result['error'], 6000)}"
    w0 = torch.load(result["rank0"], weights_only=True)
    w1 = torch.load(result["rank1"], weights_only=True)
    diff = params_equal(w0, w1)
    assert not diff, f"{name}: after a 2-process DDP fit the ranks' weights differ in {diff[:5]}"
    assert all(math.isfinite(float(v.float().abs().sum())) for v in w0.values())
