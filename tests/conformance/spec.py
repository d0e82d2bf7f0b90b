"""How the conformance suite builds a component: one :class:`Spec` per configuration."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

Kind = Literal["callback", "mixin", "plugin", "datamodule"]

CHECKS = ("construct", "pickle", "cli", "fit_twice", "resume", "ddp", "bf16")


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

    def __post_init__(self) -> None:
        unknown = set(self.skip) - set(CHECKS)
        if unknown:
            raise ValueError(f"Spec.skip names unknown checks {sorted(unknown)}; allowed: {CHECKS}")
        if any(not reason.strip() for reason in self.skip.values()):
            raise ValueError("every entry of Spec.skip needs a reason")
