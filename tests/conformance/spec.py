"""How the conformance suite builds a component: one :class:`Spec` per configuration."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

Kind = Literal["callback", "mixin", "plugin", "datamodule"]

CHECKS = ("construct", "pickle", "cli", "fit_twice", "resume", "ddp", "bf16", "fp16", "leftovers")


@dataclass
class Spec:
    """Settings for one component configuration.

    Args:
        init_args: constructor arguments of a callback, plugin or datamodule; for a
            mixin, class attributes set on the composed LightningModule class. They must
            be YAML-able (they are also written to the LightningCLI config).
        arch: test network of :class:`tests.helpers.ClassifierModule`.
        model_args: further ``ClassifierModule`` arguments.
        data_args: ``ImageDataModule`` arguments.
        trainer_args: extra ``Trainer`` arguments for every check (YAML-able).
        id: distinguishes several configurations of one component.
        factory: builds the component when ``init_args`` cannot express it
            (the CLI check then uses ``cli_init_args``).
        cli_init_args: ``init_args`` for the LightningCLI YAML, when they differ.
        fit_twice_same_weights: the second fit with the same instance must reproduce the
            first fit's weights. Only turn off with a reason in ``skip``.
        skip: check name -> reason. Every skip needs a reason a reviewer accepts.
        xfail: check name -> the known component defect it shows. The test is marked
            ``xfail(strict=True)``: it must keep failing until the defect is fixed (then
            remove the entry), so a defect stays visible without turning the suite red.
        zoo: build the LightningModule and data with ``tests.helpers.zoo`` (a zoo name such
            as ``"resnet"`` or ``"bert"``) instead of ``ClassifierModule``; ``arch`` and
            ``data_args`` are then unused, ``model_args`` go to ``zoo_module``.
        setup_time: the component (a callback) changes the model, its optimizer or the
            Trainer's accumulation when a fit sets up: weights, ``requires_grad``, memory
            format, ``forward`` wrappers, parameter groups. Such components are attached in
            pairs, in both orders, by ``test_order.py``, and must give the same model either
            way; ``test_order.py`` also checks that this flag is set exactly where the setup
            changes something.

    The ``leftovers`` check (``test_leftovers.py``) drives the component through failing
    runs; skip it (with the reason) for a component that cannot patch the model: no hooks,
    no ``forward`` or method wrappers, no swapped modules, no global state.
    """

    init_args: dict[str, Any] = field(default_factory=dict)
    arch: str = "cnn"
    model_args: dict[str, Any] = field(default_factory=dict)
    data_args: dict[str, Any] = field(default_factory=dict)
    trainer_args: dict[str, Any] = field(default_factory=dict)
    id: str = ""
    factory: Callable[[], Any] | None = None
    cli_init_args: dict[str, Any] | None = None
    fit_twice_same_weights: bool = True
    skip: dict[str, str] = field(default_factory=dict)
    xfail: dict[str, str] = field(default_factory=dict)
    zoo: str | None = None
    setup_time: bool = False

    def __post_init__(self) -> None:
        for attr in ("skip", "xfail"):
            entries = getattr(self, attr)
            unknown = set(entries) - set(CHECKS)
            if unknown:
                raise ValueError(f"Spec.{attr} names unknown checks {sorted(unknown)}; allowed: {CHECKS}")
            if any(not reason.strip() for reason in entries.values()):
                raise ValueError(f"every entry of Spec.{attr} needs a reason")
        both = set(self.skip) & set(self.xfail)
        if both:
            raise ValueError(f"checks {sorted(both)} are both skipped and expected to fail")
