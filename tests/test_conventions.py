"""The house conventions hold for every exported component, read back from real runs.

* Logging: every scalar a component logs reaches a CSVLogger (the channel EarlyStopping and
  ModelCheckpoint see) under ``<component>/<key>``.
* Files: a component that writes files and is given no ``dirpath`` writes under
  ``<log_dir>/<component>/``.
* Warn or raise: one argument, ``on_error``, with the same meaning everywhere.
* Names: every argument that names modules accepts the one naming rule.
"""

from __future__ import annotations

import csv
import inspect
import typing
import warnings
from pathlib import Path

import lightning as L
import pytest
from lightning.pytorch import Callback
from lightning.pytorch.loggers import CSVLogger

from lightning_tricks._logging import component_name
from lightning_tricks.functional._checks import ON_ERROR
from tests.conformance.build import build_run, exported_classes, kind_of
from tests.conformance.settings import SETTINGS

# Keys the demo model logs itself (lightning_tricks/demos.py) and Lightning's bookkeeping.
MODEL_KEYS = {"epoch", "step", "train_loss", "val_loss", "val_acc", "lr-SGD", "lr-AdamW"}

CALLBACKS = sorted(
    name for name, cls in exported_classes().items() if name in SETTINGS and kind_of(cls) == "callback"
)


def _fit_with_csv(name: str, tmp_path: Path):
    spec = SETTINGS[name][0]
    model, dm, callbacks, plugins, component = build_run(name, spec)
    logger = CSVLogger(str(tmp_path), name="csv")
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=1,
        limit_train_batches=2,
        limit_val_batches=1,
        logger=logger,
        log_every_n_steps=1,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=str(tmp_path),
        callbacks=callbacks,
        plugins=plugins or None,
        **{
            k: v
            for k, v in spec.trainer_args.items()
            if k not in ("max_epochs", "logger", "limit_train_batches", "limit_val_batches")
        },
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(model, datamodule=dm)
    return trainer, component, Path(logger.log_dir)


@pytest.mark.parametrize("name", CALLBACKS)
def test_scalars_are_logged_under_the_component_name_and_files_under_its_folder(name, tmp_path):
    _, component, log_dir = _fit_with_csv(name, tmp_path)
    prefix = component_name(component) + "/"
    metrics = log_dir / "metrics.csv"
    keys: set[str] = set()
    if metrics.exists():
        with open(metrics) as f:
            keys = set(next(csv.reader(f), []))
    foreign = sorted(k for k in keys - MODEL_KEYS if not k.startswith(prefix))
    assert not foreign, f"{name} logged keys outside `{prefix}`: {foreign}"
    written = [
        p
        for p in tmp_path.rglob("*")
        if p.is_file() and p.parent != log_dir and "checkpoints" not in p.parts and p.name != "hparams.yaml"
    ]
    stray = [str(p.relative_to(tmp_path)) for p in written if not p.is_relative_to(log_dir / prefix[:-1])]
    assert not stray, f"{name} wrote files outside <log_dir>/{prefix[:-1]}/: {stray}"


def _init_params(cls: type) -> dict[str, inspect.Parameter]:
    return dict(inspect.signature(cls.__init__).parameters)


def test_warn_or_raise_is_one_argument_with_one_meaning():
    offenders = []
    for name, cls in exported_classes().items():
        for pname, param in _init_params(cls).items():
            choices = (
                set(typing.get_args(param.annotation)) if not isinstance(param.annotation, str) else set()
            )
            if isinstance(param.annotation, str):
                hints = typing.get_type_hints(cls.__init__)
                choices = set(typing.get_args(hints.get(pname)))
            if {"warn", "raise"} <= choices and pname != "on_error":
                offenders.append(f"{name}({pname}=...)")
            if pname == "on_error" and (not choices <= set(ON_ERROR) or param.default != "warn"):
                offenders.append(f"{name}(on_error) choices {sorted(choices)} default {param.default!r}")
    assert not offenders, "warn/raise arguments not named `on_error` (default 'warn'): " + ", ".join(
        offenders
    )


def test_output_folders_are_called_dirpath():
    offenders = [
        f"{name}({p})"
        for name, cls in exported_classes().items()
        for p in _init_params(cls)
        if p in ("output_dir", "out_dir", "outdir", "log_dir", "save_dir")
    ]
    assert not offenders, f"output folders must be `dirpath`: {offenders}"


def test_callbacks_subclass_callback():
    for name in CALLBACKS:
        assert issubclass(exported_classes()[name], Callback)
