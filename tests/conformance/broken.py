"""Deliberately broken components: the conformance suite must catch each of them.

``GoodLRDecay`` is the control: the same idea done right, which must pass.
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch import Callback

from tests.conformance.spec import Spec


class GoodLRDecay(Callback):
    """Halves the learning rate at the start of every epoch after the first, keeping
    its count of epochs seen in ``state_dict`` so that a resumed run continues it."""

    def __init__(self, factor: float = 0.5):
        self.factor = factor
        self.epochs_seen = 0
        self.base_lrs: list[float] = []

    def on_fit_start(self, trainer, pl_module):
        self.base_lrs = [g["lr"] for g in trainer.optimizers[0].param_groups]

    def on_train_epoch_start(self, trainer, pl_module):
        for g, base in zip(trainer.optimizers[0].param_groups, self.base_lrs):
            g["lr"] = base * self.factor**self.epochs_seen
        self.epochs_seen += 1

    def on_fit_end(self, trainer, pl_module):
        self.epochs_seen = 0

    def state_dict(self) -> dict[str, Any]:
        return {"epochs_seen": self.epochs_seen}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.epochs_seen = state_dict.get("epochs_seen", 0)


class ForgetfulLRDecay(GoodLRDecay):
    """Broken: forgets how many epochs it has seen when a run resumes."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        pass


class OneRankNudge(Callback):
    """Broken: changes the weights on global rank 1 only."""

    def on_train_end(self, trainer, pl_module):
        if trainer.global_rank == 1:
            with torch.no_grad():
                next(pl_module.parameters()).add_(1e-3)


class StaleAfterFirstFit(Callback):
    """Broken: keeps state from the first fit, so a second fit behaves differently."""

    def __init__(self):
        self.fits = 0

    def on_fit_start(self, trainer, pl_module):
        self.fits += 1
        if self.fits > 1:
            for g in trainer.optimizers[0].param_groups:
                g["lr"] *= 0.1


CLASSES: dict[str, type] = {
    c.__name__: c for c in (GoodLRDecay, ForgetfulLRDecay, OneRankNudge, StaleAfterFirstFit)
}

BROKEN_SPECS: dict[str, tuple[str, Spec]] = {
    "broken:GoodLRDecay": ("GoodLRDecay", Spec()),
    "broken:OneRankNudge": ("OneRankNudge", Spec()),
}
